package email

import (
	"crypto/tls"
	"mime"
	"testing"

	"github.com/ozo-platform/ozo-identity/email/smtptest"
	"github.com/ozo-platform/ozo-identity/internal/pkitest"
)

// testCA returns a server configuration with a certificate for loopback from a fresh CA, and
// a client configuration trusting only that CA.
func testCA(t *testing.T) (server, client *tls.Config) {
	t.Helper()
	ca := pkitest.NewCA(t)
	return ca.ServerTLSConfig(t), ca.ClientTLSConfig()
}

// parseMessage takes raw apart and fails unless it is what the mailer sends: multipart/alternative
// with a text and an HTML part, nothing else.
func parseMessage(t *testing.T, raw []byte) smtptest.Message {
	t.Helper()
	p, err := smtptest.Parse(raw)
	if err != nil {
		t.Fatalf("cannot take the message apart: %v\n%s", err, raw)
	}
	if mt, _, err := mime.ParseMediaType(p.Header.Get("Content-Type")); err != nil || mt != "multipart/alternative" {
		t.Fatalf("Content-Type %q: %v", p.Header.Get("Content-Type"), err)
	}
	if p.Text == "" || p.HTML == "" {
		t.Fatalf("want a text and an html part, got text=%q html=%q", p.Text, p.HTML)
	}
	return p
}

func validationVars() map[string]string {
	return map[string]string{
		"token":         "T0k3nValue",
		"link":          "https://id.example.nl/_matrix/identity/v2/validate/email/submitToken?token=T0k3nValue&client_secret=cs&sid=42",
		"client_secret": "cs",
		"sid":           "42",
		"ipaddress":     "192.0.2.7",
	}
}

func inviteVars() map[string]string {
	return map[string]string{
		"token":                 "InviteTokenABC",
		"room_id":               "!abc:hs.example.nl",
		"sender":                "@alice:hs.example.nl",
		"sender_display_name":   "Alice",
		"verified_sender":       "@alice:hs.example.nl",
		"room_name":             "Zorgteam",
		"ephemeral_private_key": "EphKey_-123",
	}
}
