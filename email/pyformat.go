package email

import (
	"fmt"
	"strings"
)

// pyFormat is a parsed Python "%"-format string with a mapping, the form of
// Sydent's .eml templates and invite subjects: only %(name)s and %% occur.
type pyFormat struct {
	parts []pyPart
}

type pyPart struct {
	text   string // literal text, or the variable name when isVar
	isVar  bool
	offset int // byte offset of the placeholder, for error messages
}

// parsePyFormat parses s. Any other conversion (%d, %r, %-10s, a lone %)
// is an error, as it would be in Python or would render differently.
func parsePyFormat(s string) (*pyFormat, error) {
	f := &pyFormat{}
	var lit strings.Builder
	for i := 0; i < len(s); {
		j := strings.IndexByte(s[i:], '%')
		if j < 0 {
			lit.WriteString(s[i:])
			break
		}
		lit.WriteString(s[i : i+j])
		i += j
		if i+1 >= len(s) {
			return nil, fmt.Errorf("line %d: incomplete format: lone %%", lineOf(s, i))
		}
		switch s[i+1] {
		case '%':
			lit.WriteByte('%')
			i += 2
			continue
		case '(':
		default:
			return nil, fmt.Errorf("line %d: unsupported format %q: only %%(name)s and %%%% are allowed", lineOf(s, i), s[i:i+2])
		}
		end := strings.IndexByte(s[i:], ')')
		if end < 0 {
			return nil, fmt.Errorf("line %d: unterminated %%( placeholder", lineOf(s, i))
		}
		name := s[i+2 : i+end]
		if i+end+1 >= len(s) || s[i+end+1] != 's' {
			return nil, fmt.Errorf("line %d: placeholder %%(%s) must end in s (only %%(name)s is supported)", lineOf(s, i), name)
		}
		if lit.Len() > 0 {
			f.parts = append(f.parts, pyPart{text: lit.String()})
			lit.Reset()
		}
		f.parts = append(f.parts, pyPart{text: name, isVar: true, offset: i})
		i += end + 2
	}
	if lit.Len() > 0 {
		f.parts = append(f.parts, pyPart{text: lit.String()})
	}
	return f, nil
}

// check returns an error naming every placeholder that known lacks, so an
// operator sees all typos at start-up, not one mail at a time.
func (f *pyFormat) check(src string, known map[string]bool) error {
	var unknown []string
	for _, p := range f.parts {
		if p.isVar && !known[p.text] {
			unknown = append(unknown, fmt.Sprintf("%%(%s)s on line %d", p.text, lineOf(src, p.offset)))
		}
	}
	if len(unknown) > 0 {
		return fmt.Errorf("unknown placeholder(s): %s", strings.Join(unknown, ", "))
	}
	return nil
}

// names returns the variables the format uses.
func (f *pyFormat) names() []string {
	var n []string
	for _, p := range f.parts {
		if p.isVar {
			n = append(n, p.text)
		}
	}
	return n
}

// expand substitutes the variables; every name was checked at load time.
func (f *pyFormat) expand(lookup func(string) (string, bool)) (string, error) {
	var b strings.Builder
	for _, p := range f.parts {
		if !p.isVar {
			b.WriteString(p.text)
			continue
		}
		v, ok := lookup(p.text)
		if !ok {
			return "", fmt.Errorf("no value for %%(%s)s", p.text)
		}
		b.WriteString(v)
	}
	return b.String(), nil
}

func lineOf(s string, offset int) int {
	return strings.Count(s[:offset], "\n") + 1
}
