package email

import (
	"context"
	"net/mail"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ozo-platform/ozo-identity/email/smtptest"
)

// TestHostileInvite sends an invite whose user-controlled fields try to
// inject markup and headers, through a real SMTP server.
func TestHostileInvite(t *testing.T) {
	sink := smtptest.Start(t)
	m := newMailer(t, Config{Host: "127.0.0.1", Port: sink.Port, PublicBaseURL: "https://id.example.nl"})

	for _, tc := range []struct {
		name string
		vars map[string]string
	}{
		{"script in room name", map[string]string{"room_name": "<script>alert(1)</script>"}},
		{"header in room name", map[string]string{"room_name": "Hi\r\nBcc: evil@example.com"}},
		{"header in sender name", map[string]string{"sender_display_name": "Eve\r\nBcc: evil@example.com\r\n\r\n<b>body</b>"}},
		{"bare LF and NUL", map[string]string{"room_name": "Hi\nCc: evil@example.com\x00", "sender_display_name": "x\rTo: evil@example.com"}},
		{"quote breaks attribute", map[string]string{"room_name": `"><img src=x onerror=alert(1)>`, "room_avatar_url": `mxc://x"onload="alert(1)`}},
		{"bidi override", map[string]string{"sender_display_name": "Alice\u202egnp.exe"}},
		{"bad web client", map[string]string{"org.matrix.web_client_location": `javascript:alert(1)//"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(sink.Messages())
			vars := inviteVars()
			for k, v := range tc.vars {
				vars[k] = v
			}
			to := "carol@example.org"
			if err := m.Send(context.Background(), KindInvite, to, vars); err != nil {
				t.Fatalf("Send: %v", err)
			}
			msgs := sink.Messages()
			if len(msgs) != before+1 {
				t.Fatalf("got %d new messages", len(msgs)-before)
			}
			got := msgs[len(msgs)-1]
			if !slices.Equal(got.To, []string{to}) {
				t.Fatalf("envelope recipients %q, want only %s", got.To, to)
			}
			p := parseMessage(t, got.Raw)
			if names := p.HeaderNames; !slices.Equal(names, []string{
				"From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Auto-Submitted", "Content-Type",
			}) {
				t.Fatalf("headers %q", names)
			}
			for _, h := range []string{"Bcc", "Cc"} {
				if v := p.Header.Get(h); v != "" {
					t.Errorf("%s header injected: %q", h, v)
				}
			}
			if list, err := p.Header.AddressList("To"); err != nil || len(list) != 1 || list[0].Address != to {
				t.Errorf("To = %v (%v)", list, err)
			}
			if strings.ContainsAny(p.Subject, "\r\n\x00") || strings.Contains(p.Subject, "\u202e") {
				t.Errorf("subject holds control characters: %q", p.Subject)
			}
			for _, bad := range []string{"<script", "<img", "<b>", `"onload="`, "javascript:", "\u202e"} {
				if strings.Contains(p.HTML, bad) {
					t.Errorf("html part holds %q:\n%s", bad, p.HTML)
				}
			}
			if !strings.Contains(p.Text, "InviteTokenABC") || !strings.Contains(p.HTML, "InviteTokenABC") {
				t.Errorf("token missing")
			}
			if !strings.Contains(p.HTML, `href="https://app.element.io/#/room/%21abc%3Ahs.example.nl?email=carol%40example.org&amp;signurl=https%3A//id.example.nl/`) {
				t.Errorf("invite link missing from html:\n%s", p.HTML)
			}
		})
	}

	// The escaped forms are there, not just the raw ones gone.
	msgs := sink.Messages()
	p := parseMessage(t, msgs[0].Raw)
	if !strings.Contains(p.HTML, "(&lt;script&gt;alert(1)&lt;/script&gt;)") {
		t.Errorf("html part lacks the escaped room name:\n%s", p.HTML)
	}
	if !strings.Contains(p.Text, "(<script>alert(1)</script>)") {
		t.Errorf("text part should show the room name as written:\n%s", p.Text)
	}
	p = parseMessage(t, msgs[1].Raw)
	if !strings.Contains(p.Text, "(Hi Bcc: evil@example.com)") {
		t.Errorf("text part lacks the cleaned room name:\n%s", p.Text)
	}
}

func TestSydentTemplates(t *testing.T) {
	sink := smtptest.Start(t)
	m := newMailer(t, Config{
		Host: "127.0.0.1", Port: sink.Port, From: "Sydent Validation <noreply@id.example.nl>",
		Templates: map[Kind]string{
			KindInvite:     "testdata/invite.eml",
			KindValidation: "testdata/verification.eml",
		},
		WebClientLocation: "https://chat.example.nl/",
		InviteSubject:     "%(sender_display_name)s nodigt u uit voor %(room_name)s",
	})

	vars := inviteVars()
	vars["room_name"] = "Zorg & Welzijn/Team ü"
	to := "dave+zorg@example.org"
	if err := m.Send(context.Background(), KindInvite, to, vars); err != nil {
		t.Fatal(err)
	}
	got := sink.Messages()[0]
	p := parseMessage(t, got.Raw)
	if names := p.HeaderNames; !slices.Equal(names, []string{
		"Date", "From", "To", "Message-ID", "Subject", "X-Room", "MIME-Version", "Content-Type",
	}) {
		t.Fatalf("headers %q", names)
	}
	if p.Header.Get("From") != "Sydent Validation <noreply@id.example.nl>" {
		t.Errorf("%%(from)s = %q, want Config.From as written", p.Header.Get("From"))
	}
	if p.Subject != "Alice nodigt u uit voor Zorg & Welzijn/Team ü" {
		t.Errorf("subject %q", p.Subject)
	}
	if raw := p.Header.Get("Subject"); !strings.HasPrefix(raw, "=?utf-8?q?") {
		t.Errorf("non-ASCII subject not encoded: %q", raw)
	}
	for _, want := range []string{
		"Alice (@alice:hs.example.nl) invited you to a room\r\n(Zorg & Welzijn/Team ü) on Matrix. Progress: 100%.",
		// %(x_forurl)s is Python's urllib.parse.quote; location loses its trailing /.
		"https://chat.example.nl/#/room/%21abc%3Ahs.example.nl?email=dave%2Bzorg%40example.org&room_name=Zorg%20%26%20Welzijn/Team%20%C3%BC&token=InviteTokenABC&private_key=EphKey_-123",
	} {
		if !strings.Contains(p.Text, want) {
			t.Errorf("text part lacks %q:\n%s", want, p.Text)
		}
	}
	// %(x_forhtml)s is Python's html.escape.
	if want := "<p>Alice (@alice:hs.example.nl) invited you to a room (Zorg &amp; Welzijn/Team ü) on Matrix.</p>"; !strings.Contains(p.HTML, want) {
		t.Errorf("html part lacks %q:\n%s", want, p.HTML)
	}

	// Hostile values in a template that puts a user value in a header.
	vars["room_name"] = "Hi\r\nBcc: evil@example.com"
	vars["sender_display_name"] = `<script>x</script>'`
	if err := m.Send(context.Background(), KindInvite, to, vars); err != nil {
		t.Fatal(err)
	}
	got = sink.Messages()[1]
	if !slices.Equal(got.To, []string{to}) {
		t.Fatalf("recipients %q", got.To)
	}
	p = parseMessage(t, got.Raw)
	if p.Header.Get("Bcc") != "" || p.Header.Get("X-Room") != "Hi Bcc: evil@example.com" {
		t.Errorf("Bcc %q X-Room %q", p.Header.Get("Bcc"), p.Header.Get("X-Room"))
	}
	if !strings.Contains(p.HTML, "<p>&lt;script&gt;x&lt;/script&gt;&#x27; ") {
		t.Errorf("html part:\n%s", p.HTML)
	}

	// Validation mail, old-style template with a fixed boundary.
	if err := m.Send(context.Background(), KindValidation, to, validationVars()); err != nil {
		t.Fatal(err)
	}
	p = parseMessage(t, sink.Messages()[2].Raw)
	if p.Subject != "Confirm your email address" {
		t.Errorf("subject %q", p.Subject)
	}
	if !strings.Contains(p.Text, "A request came from 192.0.2.7. Open "+validationVars()["link"]) ||
		!strings.Contains(p.Text, "code T0k3nValue.") {
		t.Errorf("text part:\n%s", p.Text)
	}
	if !strings.Contains(p.HTML, `<a href="`+validationVars()["link"]+`">`) {
		t.Errorf("html part:\n%s", p.HTML)
	}
	// A value carrying the fixed boundary could forge a MIME part.
	vv := validationVars()
	vv["ipaddress"] = "x\r\n--FIXEDb0undaryFromAnOldTemplate\r\nContent-Type: text/html"
	if _, err := m.Render(KindValidation, to, vv); err == nil || !strings.Contains(err.Error(), "boundary") {
		t.Errorf("boundary in a value: err = %v", err)
	}
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const goodEML = "Date: %(date)s\nFrom: %(from)s\nTo: %(to)s\nSubject: Hi\n\nCode %(token)s\n"

func TestTemplateLoadErrors(t *testing.T) {
	dir := t.TempDir()
	nativeDir := func(subject, text, html string) string {
		d, err := os.MkdirTemp(dir, "native")
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, d, "subject.txt", subject)
		writeFile(t, d, "body.txt", text)
		writeFile(t, d, "body.html", html)
		return d
	}
	for _, tc := range []struct {
		name, path, want string
		kind             Kind
	}{
		{"unknown placeholder", writeFile(t, dir, "a.eml", goodEML+"%(tokne)s and %(room_nme_forhtml)s\n"), "%(tokne)s on line 7", KindValidation},
		{"invite-only variable in validation", writeFile(t, dir, "b.eml", goodEML+"%(room_name)s\n"), "%(room_name)s", KindValidation},
		{"unsupported conversion", writeFile(t, dir, "c.eml", goodEML+"100%\n"), "unsupported format", KindValidation},
		{"numeric conversion", writeFile(t, dir, "d.eml", goodEML+"%(token)d\n"), "must end in s", KindValidation},
		{"placeholder as header name", writeFile(t, dir, "e.eml", "%(room_name)s: x\n"+goodEML), "not a header line", KindInvite},
		{"no To header", writeFile(t, dir, "f.eml", "From: %(from)s\nSubject: x\n\nbody\n"), "To headers", KindValidation},
		{"two To headers", writeFile(t, dir, "g.eml", "From: %(from)s\nTo: %(to)s\nTo: boss@example.com\n\nbody\n"), "To headers", KindValidation},
		{"To with another recipient", writeFile(t, dir, "h.eml", "From: %(from)s\nTo: %(to)s, boss@example.com\n\nbody\n"), "To header", KindValidation},
		{"no header section", writeFile(t, dir, "i.eml", "\nHello %(token)s\n"), "header", KindValidation},
		{"not UTF-8", writeFile(t, dir, "j.eml", goodEML+"\xff\xfe\n"), "UTF-8", KindValidation},
		{"jinja", writeFile(t, dir, "k.eml.j2", goodEML), "Jinja2", KindValidation},
		{"other extension", writeFile(t, dir, "l.txt", goodEML), ".eml", KindValidation},
		{"missing file", filepath.Join(dir, "nope.eml"), "no such file", KindValidation},
		{"native unknown field in untaken branch", nativeDir("s", `{{if eq .room_type "m.space"}}{{.room_nmae}}{{end}}`, "<p>{{.token}}</p>"), "room_nmae", KindInvite},
		{"native unknown field in html", nativeDir("s", "{{.token}}", "<p>{{.tokne}}</p>"), "tokne", KindValidation},
		{"native syntax error", nativeDir("s", "{{.token", "x"), "body.txt", KindValidation},
		{"native missing file", func() string { d := nativeDir("s", "b", "h"); os.Remove(filepath.Join(d, "body.html")); return d }(), "body.html", KindValidation},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(Config{Templates: map[Kind]string{tc.kind: tc.path}}, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New err = %v, want it to mention %q", err, tc.want)
			}
		})
	}

	t.Run("unknown kind", func(t *testing.T) {
		if _, err := New(Config{Templates: map[Kind]string{"welcome": ""}}, nil); err == nil {
			t.Fatal("New accepted a template for an unknown kind")
		}
	})
	t.Run("bad invite subject", func(t *testing.T) {
		if _, err := New(Config{InviteSubject: "%(sender_name)s invites you"}, nil); err == nil || !strings.Contains(err.Error(), "sender_name") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("good templates load", func(t *testing.T) {
		d := nativeDir("Code for {{.to}}", "Code {{.token}} {{urlquote .link}}", `<a href="{{.link}}">{{.token}}</a>`)
		m, err := New(Config{Templates: map[Kind]string{
			KindValidation: d, KindInvite: writeFile(t, dir, "ok.eml", goodEML),
		}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		msg, err := m.Render(KindValidation, "x@example.org", validationVars())
		if err != nil {
			t.Fatal(err)
		}
		p := parseMessage(t, msg)
		if p.Subject != "Code for x@example.org" || !strings.Contains(p.Text, "Code T0k3nValue https%3A//id.example.nl/") {
			t.Errorf("subject %q text %q", p.Subject, p.Text)
		}
	})
}

func TestConfigErrors(t *testing.T) {
	for name, cfg := range map[string]Config{
		"security":          {Security: "ssl"},
		"from":              {From: "not an address"},
		"from with CRLF":    {From: "a@example.org\r\nBcc: evil@example.com"},
		"helo":              {HeloName: "bad name"},
		"password only":     {Password: "x"},
		"web client":        {WebClientLocation: "javascript:alert(1)"},
		"public base URL":   {PublicBaseURL: "ftp://x"},
		"port":              {Port: 70000},
		"host with newline": {Host: "mail\r\nexample.org"},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := New(cfg, nil); err == nil {
				t.Fatalf("New(%+v) succeeded", cfg)
			}
		})
	}
}

func TestRenderRejects(t *testing.T) {
	m := newMailer(t, Config{})
	for _, to := range []string{
		"", "bob", "a@example.org, evil@example.com", "Bob <bob@example.org>", "bob@example.org\r\nBcc: evil@example.com",
		" bob@example.org", "<bob@example.org>", "undisclosed:;", strings.Repeat("a", 250) + "@example.org",
	} {
		if _, err := m.Render(KindValidation, to, validationVars()); err == nil {
			t.Errorf("recipient %q accepted", to)
		}
	}
	for name, mod := range map[string]func(map[string]string){
		"unknown variable":   func(v map[string]string) { v["tokne"] = "x" },
		"missing token":      func(v map[string]string) { delete(v, "token") },
		"missing link":       func(v map[string]string) { delete(v, "link") },
		"javascript link":    func(v map[string]string) { v["link"] = "javascript:alert(1)" },
		"link with quote":    func(v map[string]string) { v["link"] = `https://x.example/"onclick="x` },
		"token with markup":  func(v map[string]string) { v["token"] = "<b>x</b>" },
		"secret with space":  func(v map[string]string) { v["client_secret"] = "a b" },
		"invite-only on val": func(v map[string]string) { v["room_name"] = "x" },
	} {
		v := validationVars()
		mod(v)
		if _, err := m.Render(KindValidation, "bob@example.org", v); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := m.Render("welcome", "bob@example.org", nil); err == nil {
		t.Error("unknown kind accepted")
	}
	inv := inviteVars()
	delete(inv, "room_id")
	if _, err := m.Render(KindInvite, "bob@example.org", inv); err == nil {
		t.Error("invite without room_id accepted")
	}
}

func TestInviteDerived(t *testing.T) {
	m := newMailer(t, Config{PublicBaseURL: "https://id.example.nl/"})
	v := inviteVars()
	v["room_name"] = "Een hele lange naam voor een zorgkamer" // 38 runes
	v["sender_display_name"] = "Dr. Wilhelmina Bakker-Ünal"   // 26 runes
	v["room_type"] = "m.space"
	subs, err := m.substitutions(KindInvite, "e@example.org", v)
	if err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]string{
		"room_name":                 "Een hele lange naam voor …",
		"bracketed_room_name":       "(Een hele lange naam voor …) ",
		"sender_display_name":       "Dr. Wilhelmina Bakk…",
		"bracketed_verified_sender": "(@alice:hs.example.nl) ",
		"web_client_location":       "https://app.element.io",
		"signurl":                   "https://id.example.nl/_matrix/identity/api/v1/sign-ed25519?token=InviteTokenABC&private_key=EphKey_-123",
		"subject_header_value":      "=?utf-8?q?Dr._Wilhelmina_Bakk=E2=80=A6_has_invited_you_to_a_space?=",
	} {
		if subs[k] != want {
			t.Errorf("%s = %q, want %q", k, subs[k], want)
		}
	}
	// Without a display name the sender's ID stands in; a valid request
	// location overrides the configured one.
	v = inviteVars()
	delete(v, "sender_display_name")
	delete(v, "verified_sender")
	v["web_client_location"] = "https://chat.zorg.example/"
	subs, err = m.substitutions(KindInvite, "e@example.org", v)
	if err != nil {
		t.Fatal(err)
	}
	if subs["sender_display_name"] != "@alice:hs.example.nl" || subs["bracketed_verified_sender"] != "" ||
		subs["web_client_location"] != "https://chat.zorg.example" || subs["subject_header_value"] != "@alice:hs.example.nl has invited you to chat" {
		t.Errorf("subs %q", subs)
	}
	if !strings.HasPrefix(subs["invite_link"], "https://chat.zorg.example/#/room/%21abc%3Ahs.example.nl?email=e%40example.org&signurl=https%3A//id.example.nl/") {
		t.Errorf("invite_link %q", subs["invite_link"])
	}
}

func TestPythonCompat(t *testing.T) {
	// Expected values produced by CPython 3 urllib.parse.quote and html.escape.
	for in, want := range map[string][2]string{
		"Zorg & Welzijn/Team ü":     {"Zorg%20%26%20Welzijn/Team%20%C3%BC", "Zorg &amp; Welzijn/Team ü"},
		"!room:example.org":         {"%21room%3Aexample.org", "!room:example.org"},
		"<script>alert(1)</script>": {"%3Cscript%3Ealert%281%29%3C/script%3E", "&lt;script&gt;alert(1)&lt;/script&gt;"},
		"~._-/ +?#%":                {"~._-/%20%2B%3F%23%25", "~._-/ +?#%"},
		`"it's"`:                    {"%22it%27s%22", "&quot;it&#x27;s&quot;"},
		"é\u2026":                   {"%C3%A9%E2%80%A6", "é\u2026"},
	} {
		if got := pyQuote(in); got != want[0] {
			t.Errorf("pyQuote(%q) = %q, want %q", in, got, want[0])
		}
		if got := pyHTMLEscape(in); got != want[1] {
			t.Errorf("pyHTMLEscape(%q) = %q, want %q", in, got, want[1])
		}
	}
	f, err := parsePyFormat("a %(x)s %% b %(x_forurl)s%(y)s")
	if err != nil {
		t.Fatal(err)
	}
	got, err := f.expand(func(n string) (string, bool) { return lookupSydent(map[string]string{"x": "1 2", "y": "z"}, n) })
	if err != nil || got != "a 1 2 % b 1%202z" {
		t.Errorf("expand = %q, %v", got, err)
	}
	if !slices.Equal(f.names(), []string{"x", "x_forurl", "y"}) {
		t.Errorf("names %q", f.names())
	}
	for _, bad := range []string{"%", "%(x", "%(x)", "%(x)d", "%s", "%-5s"} {
		if _, err := parsePyFormat(bad); err == nil {
			t.Errorf("parsePyFormat(%q) accepted", bad)
		}
	}
}

// TestCheckMessage exercises the last line of defence directly: a message
// with one header more than its template, or a second recipient, is refused.
func TestCheckMessage(t *testing.T) {
	want := []string{"From", "To", "Subject"}
	ok := "From: a@example.org\r\nTo: b@example.org\r\nSubject: x\r\n\r\nbody\r\n"
	if err := checkMessage([]byte(ok), want, "b@example.org"); err != nil {
		t.Fatalf("good message refused: %v", err)
	}
	for name, msg := range map[string]string{
		"extra Bcc":      "From: a@example.org\r\nTo: b@example.org\r\nBcc: evil@example.com\r\nSubject: x\r\n\r\nbody\r\n",
		"second address": "From: a@example.org\r\nTo: b@example.org, evil@example.com\r\nSubject: x\r\n\r\nbody\r\n",
		"other address":  "From: a@example.org\r\nTo: evil@example.com\r\nSubject: x\r\n\r\nbody\r\n",
		"bare LF":        "From: a@example.org\r\nTo: b@example.org\nBcc: evil@example.com\r\nSubject: x\r\n\r\nbody\r\n",
		"blank fold":     "From: a@example.org\r\nTo: b@example.org\r\nSubject: x\r\n \r\n\r\nbody\r\n",
		"no body":        "From: a@example.org\r\nTo: b@example.org\r\nSubject: x\r\n",
		"long line":      "From: a@example.org\r\nTo: b@example.org\r\nSubject: x\r\n\r\n" + strings.Repeat("x", 999) + "\r\n",
	} {
		if err := checkMessage([]byte(msg), want, "b@example.org"); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := mail.ParseAddress("b@example.org"); err != nil {
		t.Fatal(err)
	}
}

func TestCleanValue(t *testing.T) {
	for in, want := range map[string]string{
		"plain":              "plain",
		"a\r\nb":             "a b",
		"a\r\n\r\n\tb":       "a b",
		"\x00lead":           "lead",
		"x\u2028y\u2029z":    "x y z",
		"Alice\u202egnp.exe": "Alice gnp.exe",
		"bad \xff utf8":      "bad \uFFFD utf8",
		"emoji 👩‍⚕️ stays":   "emoji 👩‍⚕️ stays",
	} {
		if got := cleanValue(in); got != want {
			t.Errorf("cleanValue(%q) = %q, want %q", in, got, want)
		}
	}
}
