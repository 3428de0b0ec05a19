package api_test

import (
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/pquerna/otp/totp"

	"github.com/ozo-platform/ozo-identity/api/apitest"
	"github.com/ozo-platform/ozo-identity/config"
	"github.com/ozo-platform/ozo-identity/internal/pkitest"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
)

// TestAccountHandoffHomeserverFails: when the OZO homeserver fails to sign the account in at
// redemption, POST /_ozo/v1/accounts/token answers 502 and puts the code back, so the client
// redeems the same code once the homeserver recovers, for an access token that works
// (/whoami). A redeemed code is not put back by anything: reused, it is refused.
func TestAccountHandoffHomeserverFails(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, engine sqlstore.Engine) {
		const app = "https://app.ozo.example.nl/login-done"
		ca := pkitest.NewCA(t)
		ozoHS := apitest.NewHomeserver(t, ca)
		h := apitest.New(t, engine, func(c *config.Config) {
			c.OZOAccounts.ClientURLs = []string{app}
			c.OZOAccounts.Homeserver = config.OZOHomeserver{ClientURL: ozoHS.URL, ServerName: ozoHS.Name,
				ASToken: apitest.ASToken, UserPrefix: "ozo_", CAFile: ca.CertFile}
		})
		const addr = "retry@example.org"
		const pw = "a long enough passphrase"
		h.Post(t, "/_ozo/admin/v1/accounts", apitest.AdminToken, map[string]any{"email": addr, "kind": "patient", "language": "en"}).
			Want(t, http.StatusCreated, "")
		tok := mailedAccountToken(t, h, addr, 1, "activate")
		secret := h.Post(t, "/_ozo/v1/accounts/activate", "", map[string]any{"token": tok, "password": pw}).Want(t, http.StatusOK, "").Str(t, "totp_secret")
		first, _ := totp.GenerateCode(secret, time.Now())
		var recovery []string
		for _, c := range h.Post(t, "/_ozo/v1/accounts/activate/confirm", "", map[string]any{"token": tok, "code": first}).
			Want(t, http.StatusOK, "").JSON(t)["recovery_codes"].([]any) {
			recovery = append(recovery, c.(string))
		}
		if len(ozoHS.Users()) != 1 {
			t.Fatalf("users on the OZO homeserver after activation: %v", ozoHS.Users())
		}
		verifier, challenge := pkcePair("retrying.")

		// login runs the pages in a new browser and returns the one-time code handed to the app.
		login := func(t *testing.T) string {
			t.Helper()
			jar, _ := cookiejar.New(nil)
			b := &http.Client{Transport: h.Client.Transport, Jar: jar, Timeout: 30 * time.Second,
				CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
			page := do(t, b, http.MethodGet, h.URL+"/_ozo/web/account/login?"+url.Values{"redirect_uri": {app}, "code_challenge": {challenge}}.Encode(), nil)
			csrf := csrfInput.FindSubmatch(page.Body)
			page = do(t, b, http.MethodPost, h.URL+"/_ozo/web/account/login", url.Values{"csrf_token": {string(csrf[1])}, "email": {addr}, "password": {pw}})
			wantPage(t, page, http.StatusOK, `id="code-form"`)
			csrf = csrfInput.FindSubmatch(page.Body)
			code := recovery[0]
			recovery = recovery[1:]
			page = do(t, b, http.MethodPost, h.URL+"/_ozo/web/account/login/code", url.Values{"csrf_token": {string(csrf[1])}, "recovery_code": {code}})
			m := toClientLink.FindSubmatch(page.Body)
			if page.Status != http.StatusOK || m == nil {
				t.Fatalf("no link to the app: %d\n%s", page.Status, page.Body)
			}
			link, _ := url.Parse(strings.ReplaceAll(string(m[1]), "&amp;", "&"))
			return link.Query().Get("code")
		}
		redeem := func(code, verifier string) *apitest.Response {
			return h.Post(t, "/_ozo/v1/accounts/token", "", map[string]any{"code": code, "code_verifier": verifier})
		}
		whoami := func(token string) *apitest.Response {
			req, _ := http.NewRequest(http.MethodGet, ozoHS.URL+"/_matrix/client/v3/account/whoami", nil)
			req.Header.Set("Authorization", "Bearer "+token)
			resp, err := (&http.Client{Transport: &http.Transport{TLSClientConfig: ca.ClientTLSConfig()}}).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			return &apitest.Response{Status: resp.StatusCode, Body: body}
		}

		code := login(t)
		ozoHS.FailLogins(2)
		for i := range 2 {
			r := redeem(code, verifier).Want(t, http.StatusBadGateway, "M_UNKNOWN")
			if !strings.Contains(r.Str(t, "error"), "same code") {
				t.Fatalf("failure %d does not tell the client to retry with the code: %s", i+1, r.Body)
			}
		}
		// Another client's verifier still cannot use the code that was put back.
		other, _ := pkcePair("stranger.")
		redeem(code, other).Want(t, http.StatusForbidden, "M_FORBIDDEN")
		ok := redeem(code, verifier).Want(t, http.StatusOK, "")
		token := ok.Str(t, "access_token")
		if w := whoami(token); w.Status != http.StatusOK || !strings.Contains(string(w.Body), ok.Str(t, "user_id")) {
			t.Fatalf("whoami with the handed-over token: %d %s", w.Status, w.Body)
		}
		if ozoHS.Logins() != 1 {
			t.Fatalf("%d sessions made, want 1", ozoHS.Logins())
		}
		// Redeemed: spent for good, even if the homeserver fails for the next try.
		ozoHS.FailLogins(1)
		redeem(code, verifier).Want(t, http.StatusForbidden, "M_FORBIDDEN")
		ozoHS.FailLogins(0)
		redeem(code, verifier).Want(t, http.StatusForbidden, "M_FORBIDDEN")
		if ozoHS.Logins() != 1 {
			t.Fatalf("%d sessions made after reusing a redeemed code, want 1", ozoHS.Logins())
		}

		// A code put back is still the account's one waiting login: a newer login replaces it.
		code = login(t)
		ozoHS.FailLogins(1)
		redeem(code, verifier).Want(t, http.StatusBadGateway, "M_UNKNOWN")
		if got := redeem(login(t), verifier).Want(t, http.StatusOK, ""); got.Str(t, "user_id") != ok.Str(t, "user_id") {
			t.Fatalf("new login: %s", got.Body)
		}
		// The newer login replaced the code that was put back.
		redeem(code, verifier).Want(t, http.StatusForbidden, "M_FORBIDDEN")

		// A password reset (the old one may be stolen) ends the account's Matrix sessions and
		// the login waiting for its client.
		if w := whoami(token); w.Status != http.StatusOK {
			t.Fatalf("whoami before the reset: %d %s", w.Status, w.Body)
		}
		waiting := login(t)
		h.Post(t, "/_ozo/v1/accounts/password/request_reset", "", map[string]any{"email": addr}).Want(t, http.StatusOK, "")
		reset := mailedAccountToken(t, h, addr, 2, "reset")
		h.Post(t, "/_ozo/v1/accounts/password/reset", "", map[string]any{"token": reset, "password": "another long passphrase"}).
			Want(t, http.StatusOK, "")
		if w := whoami(token); w.Status != http.StatusUnauthorized {
			t.Fatalf("whoami after the reset: %d %s", w.Status, w.Body)
		}
		redeem(waiting, verifier).Want(t, http.StatusForbidden, "M_FORBIDDEN")
	})
}
