package apitest

import (
	"net/url"
	"regexp"
	"testing"

	"github.com/ozo-platform/ozo-identity/email/smtptest"
)

var signURLRE = regexp.MustCompile(`signurl=([^&\s"]+)`)

// InviteSignURL returns the sign URL (with the invite's token and ephemeral private key) from the
// invite link in an invitation mail's text.
func InviteSignURL(t testing.TB, m smtptest.Message) *url.URL {
	t.Helper()
	match := signURLRE.FindStringSubmatch(m.Text)
	if match == nil {
		t.Fatalf("no signurl in the invite mail:\n%s", m.Text)
	}
	raw, err := url.QueryUnescape(match[1])
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatalf("signurl %q: %v", raw, err)
	}
	return u
}
