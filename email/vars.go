package email

import (
	"crypto/rand"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// kindSpec lists the variables of one kind of mail, by Sydent's names.
type kindSpec struct {
	inputs   []string // the caller may pass these
	required []string // and must pass these
	derived  []string // computed by the package
}

// systemVars are set for every mail, as Sydent's sendEmail does.
var systemVars = []string{"to", "from", "messageid", "date", "multipart_boundary"}

var specs = map[Kind]kindSpec{
	KindValidation: {
		inputs:   []string{"token", "link", "ipaddress", "client_secret", "sid"},
		required: []string{"token", "link"},
	},
	KindInvite: {
		inputs: []string{
			"medium", "address", "room_id", "sender", "token", "ephemeral_private_key",
			"sender_display_name", "sender_avatar_url", "verified_sender",
			"room_name", "room_alias", "room_avatar_url", "room_join_rules", "room_type",
			"guest_user_id", "guest_access_token",
			"web_client_location", "org.matrix.web_client_location",
		},
		required: []string{"token", "room_id", "sender"},
		derived: []string{
			"bracketed_room_name", "bracketed_verified_sender",
			"signurl", "invite_link", "subject_header_value",
		},
	},
	KindAccountInvite: {
		inputs:   []string{"link", "display_name", "lang", "expires", "reenrol"},
		required: []string{"link"},
	},
	KindAccountReset: {
		inputs:   []string{"link", "display_name", "lang", "expires"},
		required: []string{"link"},
	},
}

// baseVars is every variable a template of this kind may use, without the
// _forhtml and _forurl variants.
func (s kindSpec) baseVars() []string {
	v := slices.Concat(s.inputs, s.derived, systemVars)
	slices.Sort(v)
	return slices.Compact(v)
}

// sydentVars adds Sydent's _forhtml and _forurl variants of every variable.
func (s kindSpec) sydentVars() map[string]bool {
	known := make(map[string]bool)
	for _, k := range s.baseVars() {
		known[k] = true
		known[k+"_forhtml"] = true
		known[k+"_forurl"] = true
	}
	return known
}

// lookupSydent resolves a %(name)s placeholder the way Sydent fills its
// substitution dict: x, x_forhtml (html.escape) and x_forurl (urllib quote).
func lookupSydent(subs map[string]string, name string) (string, bool) {
	if v, ok := subs[name]; ok {
		return v, true
	}
	if base, ok := strings.CutSuffix(name, "_forhtml"); ok {
		v, ok := subs[base]
		return pyHTMLEscape(v), ok
	}
	if base, ok := strings.CutSuffix(name, "_forurl"); ok {
		v, ok := subs[base]
		return pyQuote(v), ok
	}
	return "", false
}

var pyHTMLEscaper = strings.NewReplacer(
	"&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;", "'", "&#x27;",
)

// pyHTMLEscape matches Python's html.escape(v, quote=True), so Sydent
// templates render byte for byte as they did.
func pyHTMLEscape(v string) string { return pyHTMLEscaper.Replace(v) }

// pyQuote matches Python's urllib.parse.quote(v) (safe="/"): UTF-8 bytes
// other than letters, digits, "_.-~" and "/" are percent-encoded.
func pyQuote(v string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		c := v[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
			c == '_' || c == '.' || c == '-' || c == '~' || c == '/' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
	}
	return b.String()
}

// unsafeRune reports runes that must never reach a mail: control characters
// (CR and LF above all, which would start a new header), Unicode line
// separators, and bidi overrides that can make a name read as another.
func unsafeRune(r rune) bool {
	switch {
	case unicode.IsControl(r):
		return true
	case r == '\u2028' || r == '\u2029':
		return true
	case r >= '\u202a' && r <= '\u202e', r >= '\u2066' && r <= '\u2069':
		return true
	}
	return false
}

// cleanValue makes a caller value safe for any place in a mail: invalid
// UTF-8 is replaced and each run of unsafe runes becomes one space.
func cleanValue(v string) string {
	v = strings.ToValidUTF8(v, "\uFFFD")
	if !strings.ContainsFunc(v, unsafeRune) {
		return v
	}
	var b strings.Builder
	space := false
	for _, r := range v {
		if unsafeRune(r) {
			if !space {
				b.WriteByte(' ')
			}
			space = true
			continue
		}
		space = false
		b.WriteRune(r)
	}
	return strings.TrimSpace(b.String())
}

// truncate shortens v to keep runes followed by an ellipsis when it has
// more than max runes, as Sydent does for room and sender names.
func truncate(v string, max, keep int) string {
	if utf8.RuneCountInString(v) <= max {
		return v
	}
	r := []rune(v)
	return string(r[:keep]) + "\u2026"
}

// opaqueOK reports whether v only holds the spec's token characters
// [0-9a-zA-Z.=_-] (and ~): Sydent templates paste token and key raw into
// URLs nested in URLs, where "+" or "/" would be misread. So the ephemeral
// key must be URL-safe base64, as Sydent makes it.
func opaqueOK(v string) bool {
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
			strings.IndexByte("._=~-", c) >= 0) {
			return false
		}
	}
	return len(v) <= 1024
}

// checkURL accepts an absolute http(s) URL that is safe to paste raw into
// an HTML attribute or a text line, as Sydent templates do with link and
// web_client_location.
func checkURL(v string) error {
	if strings.ContainsAny(v, "\"'<>\\` ") || strings.ContainsFunc(v, unsafeRune) {
		return fmt.Errorf("URL %q holds characters not allowed in a mail link", v)
	}
	u, err := url.Parse(v)
	if err != nil {
		return fmt.Errorf("URL %q: %w", v, err)
	}
	if u.Scheme != "https" && u.Scheme != "http" || u.Host == "" {
		return fmt.Errorf("URL %q is not an absolute http(s) URL", v)
	}
	return nil
}

// randomAlnum returns n random letters and digits, like Sydent's
// generateAlphanumericTokenOfLength, for MIME boundaries and Message-IDs.
func randomAlnum(n int) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	out := make([]byte, 0, n)
	buf := make([]byte, n+16)
	for len(out) < n {
		rand.Read(buf) // never returns an error (crypto/rand, Go 1.24+)
		for _, b := range buf {
			if b < 248 && len(out) < n { // 248 = 4*62: no modulo bias
				out = append(out, alphabet[int(b)%len(alphabet)])
			}
		}
	}
	return string(out)
}
