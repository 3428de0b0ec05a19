package email

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/ozo-platform/ozo-identity/email/smtptest"
)

// fuzzMailers are the built-in templates and the Sydent .eml ones, so both renderers are fuzzed.
func fuzzMailers(f *testing.F) []*Mailer {
	var out []*Mailer
	for _, templates := range []map[Kind]string{nil, {
		KindInvite:     filepath.Join("testdata", "invite.eml"),
		KindValidation: filepath.Join("testdata", "verification.eml"),
	}} {
		m, err := New(Config{Host: "127.0.0.1", From: "OZO <noreply@id.example.nl>", HeloName: "id.example.nl",
			PublicBaseURL: "https://id.example.nl", Templates: templates}, nil)
		if err != nil {
			f.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

// checkRendered fails unless msg is one message to exactly to: its header names appear once
// each, no header adds a recipient, and the parts are valid UTF-8 without markup from values.
func checkRendered(t *testing.T, msg []byte, to string) smtptest.Message {
	t.Helper()
	p, err := smtptest.Parse(msg)
	if err != nil {
		t.Fatalf("rendered message does not parse: %v\n%s", err, msg)
	}
	seen := map[string]bool{}
	for _, n := range p.HeaderNames {
		k := strings.ToLower(n)
		if seen[k] {
			t.Fatalf("header %s twice:\n%s", n, msg)
		}
		seen[k] = true
		if slices.Contains([]string{"bcc", "cc", "resent-to", "resent-cc", "resent-bcc", "reply-to"}, k) {
			t.Fatalf("header %s present:\n%s", n, msg)
		}
	}
	list, err := p.Header.AddressList("To")
	if err != nil || len(list) != 1 || list[0].Address != to {
		t.Fatalf("To %q (%v), want only %s", p.Header.Get("To"), err, to)
	}
	if strings.ContainsAny(p.Subject, "\r\n\x00") {
		t.Fatalf("subject %q holds control characters", p.Subject)
	}
	for _, part := range []string{p.Text, p.HTML} {
		if !utf8.ValidString(part) {
			t.Fatalf("part is not valid UTF-8: %q", part)
		}
	}
	if html := strings.ToLower(p.HTML); strings.Contains(html, "<script") || strings.Contains(html, "<img") || strings.Contains(html, "javascript:") {
		t.Fatalf("markup from a value reached the html part:\n%s", p.HTML)
	}
	return p
}

// FuzzRenderInvite renders invite mails with hostile user-controlled fields: whatever the
// values, the mail is refused or it is one well-formed message to the one recipient.
func FuzzRenderInvite(f *testing.F) {
	mailers := fuzzMailers(f)
	f.Add("carol@example.org", "Zorgteam", "Dr. Alice", "!abc:hs.example.nl", "https://app.element.io", "mxc://hs/a")
	f.Add("carol@example.org", "Hi\r\nBcc: evil@example.com", "Eve\r\n\r\n<b>x</b>", "!a:b", "javascript:alert(1)//", `mxc://x"onload="a`)
	f.Add("carol@example.org", "<script>alert(1)</script>", "Alice\u202egnp.exe", "!a\x00b:x.example", "https://evil.example/\"><img src=x>", "")
	f.Add("carol@example.org", "=?utf-8?q?=0D=0ABcc:_evil@example.com?=", "%(to)s", "!r%0D%0A:hs", "https://x.example/%(token)s", "")
	f.Add("carol@example.org", strings.Repeat("ü", 40), strings.Repeat("\u00a0", 30), "!r:hs", "http://127.0.0.1:9999/admin", "")
	f.Fuzz(func(t *testing.T, to, roomName, senderName, roomID, webClient, avatar string) {
		vars := inviteVars()
		vars["room_name"], vars["sender_display_name"], vars["room_id"] = roomName, senderName, roomID
		vars["org.matrix.web_client_location"], vars["room_avatar_url"] = webClient, avatar
		for _, m := range mailers {
			msg, err := m.Render(KindInvite, to, vars)
			if err != nil {
				if checkRecipient(to) == nil && roomID != "" && cleanValue(roomID) != "" {
					t.Fatalf("valid recipient refused: %v", err)
				}
				continue
			}
			p := checkRendered(t, msg, to)
			if !strings.Contains(p.Text, "InviteTokenABC") {
				t.Fatalf("token missing from the text part:\n%s", p.Text)
			}
		}
	})
}

// FuzzRenderValidation does the same for validation mails, whose ipaddress and link come
// from the request.
func FuzzRenderValidation(f *testing.F) {
	mailers := fuzzMailers(f)
	f.Add("bob@example.org", "https://id.example.nl/_matrix/identity/v2/validate/email/submitToken?token=T", "192.0.2.7")
	f.Add("bob@example.org", "https://id.example.nl/x\r\nBcc: evil@example.com", "1.2.3.4\r\nCc: evil@example.com")
	f.Add("bob@example.org\r\nBcc: evil@example.com", "https://id.example.nl/", "")
	f.Add("Bob <bob@example.org>", "javascript:alert(1)", "<script>")
	f.Fuzz(func(t *testing.T, to, link, ip string) {
		vars := validationVars()
		vars["link"], vars["ipaddress"] = link, ip
		for _, m := range mailers {
			msg, err := m.Render(KindValidation, to, vars)
			if err != nil {
				continue
			}
			p := checkRendered(t, msg, to)
			if !strings.Contains(p.Text, "T0k3nValue") {
				t.Fatalf("token missing from the text part:\n%s", p.Text)
			}
		}
	})
}
