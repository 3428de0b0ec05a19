package web_test

import (
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pquerna/otp/totp"

	"github.com/ozo-platform/ozo-identity/api/apitest"
	"github.com/ozo-platform/ozo-identity/internal/browsertest"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
)

var resetLinkRE = regexp.MustCompile(`https://[^\s"'<>]+/_ozo/web/account/(activate|reset)\?token=[A-Za-z0-9_%-]+`)

// TestAccountPagesInBrowser: the forgotten-password page answers alike for an unknown address;
// the mailed reset link sets a new password once (the reused link says so); wrong passwords on
// the login page lock the email out with a page saying when to try again, the right password
// included; all in Chromium, Dutch and English, each page passing axe-core.
func TestAccountPagesInBrowser(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		h := apitest.New(t, e)
		const addr = "bo@example.org"
		h.Post(t, "/_ozo/admin/v1/accounts", apitest.AdminToken, map[string]any{"email": addr, "kind": "patient", "language": "en"}).
			Want(t, http.StatusCreated, "")
		act := resetLinkRE.FindString(h.Mail.Wait(t, addr, 1, 10*time.Second).Text)
		u, _ := url.Parse(act)
		tok := u.Query().Get("token")
		const pw = "the first long passphrase"
		secret := h.Post(t, "/_ozo/v1/accounts/activate", "", map[string]any{"token": tok, "password": pw}).Want(t, http.StatusOK, "").Str(t, "totp_secret")
		code, _ := totp.GenerateCode(secret, time.Now())
		h.Post(t, "/_ozo/v1/accounts/activate/confirm", "", map[string]any{"token": tok, "code": code}).Want(t, http.StatusOK, "")

		b := browsertest.New(t, browsertest.Options{AcceptLanguage: "en", IgnoreCertErrors: true})
		// Forgotten password: the same page for an unknown address and a known one.
		var sent []string
		for _, a := range []string{"nobody@example.org", addr} {
			b.Open(h.URL + "/_ozo/web/account/forgot")
			checkPage(t, b, "en", "Forgot your password")
			b.Fill("#email", a)
			if st := b.Submit(`button[type="submit"]`); st != http.StatusOK {
				t.Fatalf("forgot %s: HTTP %d", a, st)
			}
			sent = append(sent, b.Text("main"))
		}
		if sent[0] != sent[1] {
			t.Fatalf("the forgot page tells addresses apart:\n%q\n%q", sent[0], sent[1])
		}
		link := resetLinkRE.FindString(h.Mail.Wait(t, addr, 2, 10*time.Second).Text)
		if !strings.Contains(link, "/_ozo/web/account/reset?token=") {
			t.Fatalf("reset mail link %q", link)
		}
		if st := b.Open(link); st != http.StatusOK {
			t.Fatalf("reset link: HTTP %d", st)
		}
		checkPage(t, b, "en", "Choose a new password")
		const pw2 = "the second long passphrase"
		b.Fill("#password", pw2)
		b.Fill("#password2", pw2+"x")
		if st := b.Submit(`button[type="submit"]`); st != http.StatusBadRequest || !strings.Contains(b.Text("#form-error"), "not the same") {
			t.Fatalf("mismatched passwords: HTTP %d", st)
		}
		b.Fill("#password", pw2)
		b.Fill("#password2", pw2)
		if st := b.Submit(`button[type="submit"]`); st != http.StatusOK || b.Text("#reset-done") == "" {
			t.Fatalf("reset: HTTP %d", st)
		}
		checkPage(t, b, "en", "Choose a new password")
		if st := b.Open(link); st != http.StatusBadRequest || !strings.Contains(b.Text("#reason"), "already used") {
			t.Fatalf("reused reset link: HTTP %d %q", st, b.Text("#reason"))
		}
		checkPage(t, b, "en", "Something went wrong")
		h.Post(t, "/_ozo/v1/accounts/login", "", map[string]any{"email": addr, "password": pw2}).Want(t, http.StatusOK, "")

		// Lockout on the login page, in Dutch: five wrong passwords, then even the right one waits.
		b.Open(h.URL + "/_ozo/web/account/login?lang=nl")
		for i := range 5 {
			b.Fill("#email", addr)
			b.Fill("#password", "wrong password number "+string(rune('a'+i)))
			if st := b.Submit(`button[type="submit"]`); st != http.StatusForbidden {
				t.Fatalf("wrong password %d: HTTP %d", i, st)
			}
		}
		checkPage(t, b, "nl", "Inloggen bij OZO")
		b.Fill("#email", addr)
		b.Fill("#password", pw2)
		if st := b.Submit(`button[type="submit"]`); st != http.StatusTooManyRequests || !strings.Contains(b.Text("#form-error"), "Te veel mislukte pogingen") {
			t.Fatalf("right password while locked: HTTP %d %q", st, b.Text("#form-error"))
		}
		checkPage(t, b, "nl", "Inloggen bij OZO")
	})
}
