package email

import (
	"bytes"
	"errors"
	"fmt"
	htmltemplate "html/template"
	"io/fs"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/mail"
	"net/textproto"
	"regexp"
	"slices"
	"strings"
	texttemplate "text/template"
	"text/template/parse"
	"unicode/utf8"
)

// messageTemplate renders one kind of mail in one of the two template forms.
type messageTemplate interface {
	render(in renderInput) ([]byte, error)
	// headerNames are the header fields every rendered message must have,
	// in order (canonical form); anything else means injection.
	headerNames() []string
}

type renderInput struct {
	subs       map[string]string // every variable of the kind, cleaned
	to         string
	fromHeader string // RFC 5322 From value for the native form
}

// ---- Sydent form: a whole .eml message with %(name)s placeholders ----

type emlTemplate struct {
	format     *pyFormat
	headers    []string
	boundaries []string // literal MIME boundaries that no value may contain
}

var boundaryRE = regexp.MustCompile(`(?i)boundary\s*=\s*"?([^"\s;]+)"?`)

func loadEML(data []byte, known map[string]bool) (*emlTemplate, error) {
	if !utf8.Valid(data) {
		return nil, errors.New("template is not valid UTF-8")
	}
	src := strings.ReplaceAll(string(data), "\r\n", "\n")
	format, err := parsePyFormat(src)
	if err != nil {
		return nil, err
	}
	if err := format.check(src, known); err != nil {
		return nil, err
	}
	head, _, ok := strings.Cut(src, "\n\n")
	if !ok || head == "" {
		return nil, errors.New("no header section: a .eml template starts with headers, then a blank line")
	}
	var names []string
	for i, line := range strings.Split(head, "\n") {
		if line == "" {
			return nil, fmt.Errorf("line %d: empty line in the header section", i+1)
		}
		if line[0] == ' ' || line[0] == '\t' {
			if len(names) == 0 {
				return nil, fmt.Errorf("line %d: continuation line before any header", i+1)
			}
			continue
		}
		name, _, ok := strings.Cut(line, ":")
		if !ok || !validFieldName(name) {
			return nil, fmt.Errorf("line %d: %q is not a header line (Name: value); header names cannot come from placeholders", i+1, line)
		}
		names = append(names, textproto.CanonicalMIMEHeaderKey(name))
	}
	for _, h := range []string{"From", "To"} {
		if n := count(names, h); n != 1 {
			return nil, fmt.Errorf("template has %d %s headers, want exactly 1", n, h)
		}
	}
	t := &emlTemplate{format: format, headers: names}
	for _, m := range boundaryRE.FindAllStringSubmatch(src, -1) {
		if !strings.Contains(m[1], "%(") {
			t.boundaries = append(t.boundaries, m[1])
		}
	}
	return t, nil
}

func (t *emlTemplate) headerNames() []string { return t.headers }

func (t *emlTemplate) render(in renderInput) ([]byte, error) {
	var clash error
	out, err := t.format.expand(func(name string) (string, bool) {
		v, ok := lookupSydent(in.subs, name)
		for _, b := range t.boundaries {
			if strings.Contains(v, b) && clash == nil {
				clash = fmt.Errorf("value of %%(%s)s contains the template's MIME boundary", name)
			}
		}
		return v, ok
	})
	if err != nil {
		return nil, err
	}
	if clash != nil {
		return nil, clash
	}
	return crlf(out), nil
}

// crlf ends every line with CRLF, as Sydent does before sending: its
// templates are files with LF endings.
func crlf(s string) []byte {
	s = strings.ReplaceAll(s, "\r\n", "\n")
	s = strings.ReplaceAll(s, "\r", "\n")
	s = strings.TrimSuffix(s, "\n")
	return []byte(strings.ReplaceAll(s, "\n", "\r\n") + "\r\n")
}

// ---- native form: subject.txt, body.txt (text/template), body.html (html/template) ----

type nativeTemplate struct {
	subject *texttemplate.Template
	text    *texttemplate.Template
	html    *htmltemplate.Template
}

var nativeHeaders = []string{
	"From", "To", "Subject", "Date", "Message-Id", "Mime-Version", "Auto-Submitted", "Content-Type",
}

// maxSubjectRunes bounds the subject so a long room name cannot produce an
// over-long header line.
const maxSubjectRunes = 200

func loadNative(fsys fs.FS, known []string) (*nativeTemplate, error) {
	funcs := map[string]any{"urlquote": pyQuote}
	read := func(name string) (string, error) {
		b, err := fs.ReadFile(fsys, name)
		if err != nil {
			return "", err
		}
		if !utf8.Valid(b) {
			return "", fmt.Errorf("%s is not valid UTF-8", name)
		}
		return string(b), nil
	}
	t := &nativeTemplate{}
	for _, f := range []struct {
		name string
		dst  **texttemplate.Template
	}{{"subject.txt", &t.subject}, {"body.txt", &t.text}} {
		src, err := read(f.name)
		if err != nil {
			return nil, err
		}
		tt, err := texttemplate.New(f.name).Option("missingkey=error").Funcs(funcs).Parse(src)
		if err != nil {
			return nil, err
		}
		for _, sub := range tt.Templates() {
			if err := checkFields(sub.Tree, known); err != nil {
				return nil, fmt.Errorf("%s: %w", f.name, err)
			}
		}
		*f.dst = tt
	}
	src, err := read("body.html")
	if err != nil {
		return nil, err
	}
	ht, err := htmltemplate.New("body.html").Option("missingkey=error").Funcs(funcs).Parse(src)
	if err != nil {
		return nil, err
	}
	for _, sub := range ht.Templates() {
		if err := checkFields(sub.Tree, known); err != nil {
			return nil, fmt.Errorf("body.html: %w", err)
		}
	}
	t.html = ht
	return t, nil
}

// checkFields finds every {{.name}} in a template, so a typo fails at
// start-up even inside a branch the sample render does not take.
func checkFields(tree *parse.Tree, known []string) error {
	if tree == nil || tree.Root == nil {
		return nil
	}
	var unknown []string
	walkFields(tree.Root, func(f *parse.FieldNode) {
		if !slices.Contains(known, f.Ident[0]) && !slices.Contains(unknown, f.Ident[0]) {
			unknown = append(unknown, f.Ident[0])
		}
	})
	if len(unknown) > 0 {
		return fmt.Errorf("unknown variable(s) %s", strings.Join(unknown, ", "))
	}
	return nil
}

func walkFields(n parse.Node, fn func(*parse.FieldNode)) {
	switch n := n.(type) {
	case *parse.ListNode:
		if n != nil {
			for _, c := range n.Nodes {
				walkFields(c, fn)
			}
		}
	case *parse.ActionNode:
		walkFields(n.Pipe, fn)
	case *parse.IfNode:
		walkBranch(&n.BranchNode, fn)
	case *parse.RangeNode:
		walkBranch(&n.BranchNode, fn)
	case *parse.WithNode:
		walkBranch(&n.BranchNode, fn)
	case *parse.TemplateNode:
		walkFields(n.Pipe, fn)
	case *parse.PipeNode:
		if n != nil {
			for _, c := range n.Cmds {
				walkFields(c, fn)
			}
		}
	case *parse.CommandNode:
		for _, a := range n.Args {
			walkFields(a, fn)
		}
	case *parse.ChainNode:
		walkFields(n.Node, fn)
	case *parse.FieldNode:
		fn(n)
	}
}

func walkBranch(b *parse.BranchNode, fn func(*parse.FieldNode)) {
	walkFields(b.Pipe, fn)
	walkFields(b.List, fn)
	if b.ElseList != nil {
		walkFields(b.ElseList, fn)
	}
}

func (t *nativeTemplate) headerNames() []string { return nativeHeaders }

func (t *nativeTemplate) render(in renderInput) ([]byte, error) {
	var subj, text, html strings.Builder
	if err := t.subject.Execute(&subj, in.subs); err != nil {
		return nil, fmt.Errorf("subject: %w", err)
	}
	if err := t.text.Execute(&text, in.subs); err != nil {
		return nil, fmt.Errorf("text body: %w", err)
	}
	if err := t.html.Execute(&html, in.subs); err != nil {
		return nil, fmt.Errorf("html body: %w", err)
	}
	subject := encodeHeader(truncate(cleanValue(subj.String()), maxSubjectRunes, maxSubjectRunes-1))

	var b bytes.Buffer
	header := func(k, v string) { b.WriteString(k + ": " + v + "\r\n") }
	header("From", in.fromHeader)
	header("To", in.to)
	header("Subject", subject)
	header("Date", in.subs["date"])
	header("Message-ID", in.subs["messageid"])
	header("MIME-Version", "1.0")
	header("Auto-Submitted", "auto-generated") // RFC 3834: no auto-replies to us
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	if err := mw.SetBoundary(in.subs["multipart_boundary"]); err != nil {
		return nil, err
	}
	header("Content-Type", mime.FormatMediaType("multipart/alternative", map[string]string{"boundary": mw.Boundary()}))
	b.WriteString("\r\n")
	for _, p := range []struct{ ctype, content string }{
		{"text/plain; charset=UTF-8", text.String()},
		{"text/html; charset=UTF-8", html.String()},
	} {
		w, err := mw.CreatePart(textproto.MIMEHeader{
			"Content-Type":              {p.ctype},
			"Content-Transfer-Encoding": {"quoted-printable"},
		})
		if err != nil {
			return nil, err
		}
		qp := quotedprintable.NewWriter(w)
		// Text mode: qp turns each LF into a CRLF line break.
		content := strings.ReplaceAll(strings.ReplaceAll(p.content, "\r\n", "\n"), "\r", "\n")
		if _, err := qp.Write([]byte(content)); err != nil {
			return nil, err
		}
		if err := qp.Close(); err != nil {
			return nil, err
		}
	}
	if err := mw.Close(); err != nil {
		return nil, err
	}
	b.Write(body.Bytes())
	return b.Bytes(), nil
}

// encodeHeader returns v as a header value: as is when printable ASCII,
// else as RFC 2047 Q-encoded words, one per folded line.
func encodeHeader(v string) string {
	enc := mime.QEncoding.Encode("utf-8", v)
	return strings.ReplaceAll(enc, "?= =?", "?=\r\n =?")
}

// ---- checks on the final message ----

// maxLine is RFC 5322's limit on a line, without its CRLF.
const maxLine = 998

// checkMessage verifies a rendered message before it is sent: CRLF line
// endings only, no over-long line, exactly the template's header fields
// and a To header naming exactly the recipient.
func checkMessage(msg []byte, want []string, to string) error {
	for i, line := range bytes.Split(msg, []byte("\r\n")) {
		if bytes.ContainsAny(line, "\r\n") {
			return fmt.Errorf("line %d: bare CR or LF", i+1)
		}
		if len(line) > maxLine {
			return fmt.Errorf("line %d: %d octets, more than %d", i+1, len(line), maxLine)
		}
	}
	head, _, ok := bytes.Cut(msg, []byte("\r\n\r\n"))
	if !ok {
		return errors.New("no blank line after the headers")
	}
	var names []string
	for i, line := range strings.Split(string(head), "\r\n") {
		if line == "" || line[0] == ' ' || line[0] == '\t' {
			if len(names) == 0 || strings.TrimSpace(line) == "" {
				return fmt.Errorf("header line %d: empty or misplaced continuation", i+1)
			}
			continue
		}
		name, _, ok := strings.Cut(line, ":")
		if !ok || !validFieldName(name) {
			return fmt.Errorf("header line %d is not Name: value", i+1)
		}
		names = append(names, textproto.CanonicalMIMEHeaderKey(name))
	}
	if !slices.Equal(names, want) {
		return fmt.Errorf("headers %v differ from the template's %v", names, want)
	}
	m, err := mail.ReadMessage(bytes.NewReader(msg))
	if err != nil {
		return fmt.Errorf("parse: %w", err)
	}
	list, err := m.Header.AddressList("To")
	if err != nil {
		return fmt.Errorf("To header: %w", err)
	}
	if len(list) != 1 || list[0].Address != to {
		return fmt.Errorf("To header names %d address(es), want only %s", len(list), to)
	}
	return nil
}

// validFieldName follows RFC 5322 ftext (printable ASCII but colon), minus
// "%" so that a placeholder can never become a header name.
func validFieldName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 33 || c > 126 || c == ':' || c == '%' {
			return false
		}
	}
	return true
}

func count(list []string, v string) int {
	n := 0
	for _, s := range list {
		if s == v {
			n++
		}
	}
	return n
}
