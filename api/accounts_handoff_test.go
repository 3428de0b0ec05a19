package api_test

import (
	"crypto/sha256"
	"encoding/base64"
	"html"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pquerna/otp/totp"

	"github.com/ozo-platform/ozo-identity/api/apitest"
	"github.com/ozo-platform/ozo-identity/audit"
	"github.com/ozo-platform/ozo-identity/config"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
)

var toClientLink = regexp.MustCompile(`href="([^"]*)" id="to-client"`)

// pkcePair returns a PKCE verifier made from seed and its S256 challenge.
func pkcePair(seed string) (verifier, challenge string) {
	verifier = strings.Repeat(seed, 64)[:64]
	sum := sha256.Sum256([]byte(verifier))
	return verifier, base64.RawURLEncoding.EncodeToString(sum[:])
}

// TestAccountHandoff: the OZO app starts a login on the page with its redirect_uri and a PKCE
// challenge; after password and code the page links to the app with a one-time code and no
// token; POST /_ozo/v1/accounts/token redeems it once, with the verifier only, and answers
// uncacheably. A client not configured, a missing or malformed challenge, a wrong verifier, a
// reused, foreign or expired code are refused with Matrix errors, and leave failed-login
// records. (e2e.TestOZOAccountInBrowser redeems a code for a working Matrix token on Dendrite.)
func TestAccountHandoff(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, engine sqlstore.Engine) {
		const app = "https://app.ozo.example.nl/login-done?from=ozo"
		h := apitest.New(t, engine, func(c *config.Config) {
			c.OZOAccounts.ClientURLs = []string{app}
			c.OZOAccounts.CodeLifetime = 10 * time.Second
		})
		const addr = "hand@example.org"
		const pw = "a long enough passphrase"
		h.Post(t, "/_ozo/admin/v1/accounts", apitest.AdminToken, map[string]any{"email": addr, "kind": "patient", "language": "en"}).
			Want(t, http.StatusCreated, "")
		tok := mailedAccountToken(t, h, addr, 1, "activate")
		secret := h.Post(t, "/_ozo/v1/accounts/activate", "", map[string]any{"token": tok, "password": pw}).Want(t, http.StatusOK, "").Str(t, "totp_secret")
		first, _ := totp.GenerateCode(secret, time.Now())
		var recovery []string // each login below takes one: no waiting for the next TOTP step
		for _, c := range h.Post(t, "/_ozo/v1/accounts/activate/confirm", "", map[string]any{"token": tok, "code": first}).
			Want(t, http.StatusOK, "").JSON(t)["recovery_codes"].([]any) {
			recovery = append(recovery, c.(string))
		}
		verifier, challenge := pkcePair("client-A.")

		newBrowser := func() *http.Client {
			jar, _ := cookiejar.New(nil)
			return &http.Client{Transport: h.Client.Transport, Jar: jar, Timeout: 30 * time.Second,
				CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		}
		loginURL := func(q url.Values) string { return h.URL + "/_ozo/web/account/login?" + q.Encode() }
		// login runs the pages in a new browser from start and returns the last page.
		login := func(t *testing.T, start string, switchLanguage bool) *apitest.Response {
			t.Helper()
			b := newBrowser()
			page := do(t, b, http.MethodGet, start, nil)
			wantPage(t, page, http.StatusOK, `id="password"`)
			if switchLanguage {
				// The language switch comes back without the client's parameters: the session keeps them.
				page = do(t, b, http.MethodGet, h.URL+"/_ozo/web/account/login?lang=nl", nil)
				wantPage(t, page, http.StatusOK, "Inloggen")
			}
			csrf := csrfInput.FindSubmatch(page.Body)
			page = do(t, b, http.MethodPost, h.URL+"/_ozo/web/account/login", url.Values{"csrf_token": {string(csrf[1])},
				"email": {addr}, "password": {pw}})
			wantPage(t, page, http.StatusOK, `id="code-form"`)
			code := recovery[0]
			recovery = recovery[1:]
			csrf = csrfInput.FindSubmatch(page.Body)
			return do(t, b, http.MethodPost, h.URL+"/_ozo/web/account/login/code", url.Values{"csrf_token": {string(csrf[1])}, "recovery_code": {code}})
		}
		// codeFrom returns the one-time code of the page's link to the app, checking the link.
		codeFrom := func(t *testing.T, page *apitest.Response) string {
			t.Helper()
			m := toClientLink.FindSubmatch(page.Body)
			if page.Status != http.StatusOK || m == nil {
				t.Fatalf("no link to the app: %d\n%s", page.Status, page.Body)
			}
			link, err := url.Parse(html.UnescapeString(string(m[1])))
			if err != nil {
				t.Fatal(err)
			}
			q := link.Query()
			if link.Fragment != "" || link.Scheme+"://"+link.Host+link.Path != "https://app.ozo.example.nl/login-done" ||
				q.Get("from") != "ozo" || len(q) != 2 || len(q.Get("code")) != 43 {
				t.Fatalf("link to the app: %s", link)
			}
			if strings.Contains(string(page.Body), "access_token") {
				t.Fatalf("the page carries an access token:\n%s", page.Body)
			}
			return q.Get("code")
		}
		redeem := func(code, verifier string) *apitest.Response {
			return h.Post(t, "/_ozo/v1/accounts/token", "", map[string]any{"code": code, "code_verifier": verifier})
		}

		// Clients the page refuses, before anything is asked of the person.
		for name, q := range map[string]url.Values{
			"unknown client":        {"redirect_uri": {"https://evil.example/steal"}, "code_challenge": {challenge}},
			"client with fragment":  {"redirect_uri": {app + "#x"}, "code_challenge": {challenge}},
			"no challenge":          {"redirect_uri": {app}},
			"short challenge":       {"redirect_uri": {app}, "code_challenge": {challenge[:42]}},
			"padded challenge":      {"redirect_uri": {app}, "code_challenge": {challenge[:42] + "="}},
			"plain method":          {"redirect_uri": {app}, "code_challenge": {challenge}, "code_challenge_method": {"plain"}},
			"verifier as challenge": {"redirect_uri": {app}, "code_challenge": {verifier}},
		} {
			page := do(t, newBrowser(), http.MethodGet, loginURL(q), nil)
			if page.Status != http.StatusBadRequest || strings.Contains(string(page.Body), `id="password"`) {
				t.Fatalf("%s: %d\n%s", name, page.Status, page.Body)
			}
		}

		// The whole flow, with a language switch on the way.
		page := login(t, loginURL(url.Values{"redirect_uri": {app}, "code_challenge": {challenge}, "code_challenge_method": {"S256"}}), true)
		code := codeFrom(t, page)
		if !strings.Contains(string(page.Body), "Doorgaan naar de OZO-app") {
			t.Fatalf("the done page is not in the language switched to:\n%s", page.Body)
		}

		redeem("", verifier).Want(t, http.StatusBadRequest, "M_MISSING_PARAMS")
		redeem(code, "").Want(t, http.StatusBadRequest, "M_MISSING_PARAMS")
		h.Post(t, "/_ozo/v1/accounts/token", "", `{"code": 7, "code_verifier": "x"}`).Want(t, http.StatusBadRequest, "M_BAD_JSON")
		other, _ := pkcePair("client-B.")
		redeem(code, other).Want(t, http.StatusForbidden, "M_FORBIDDEN")
		redeem(code, verifier[:40]).Want(t, http.StatusForbidden, "M_FORBIDDEN")
		redeem(code+"A", verifier).Want(t, http.StatusForbidden, "M_FORBIDDEN")
		ok := redeem(code, verifier).Want(t, http.StatusOK, "")
		if cc := ok.Header.Get("Cache-Control"); cc != "no-store" {
			t.Fatalf("Cache-Control %q on the redemption", cc)
		}
		if _, has := ok.JSON(t)["user_id"]; !has {
			t.Fatalf("redemption: %s", ok.Body)
		}
		redeem(code, verifier).Want(t, http.StatusForbidden, "M_FORBIDDEN")

		// Without a client the page completes the login and hands nothing over.
		page = login(t, h.URL+"/_ozo/web/account/login", false)
		wantPage(t, page, http.StatusOK, `id="user-id"`)
		if toClientLink.Match(page.Body) {
			t.Fatalf("a link to a client nobody named:\n%s", page.Body)
		}

		// A code outlives neither its lifetime nor the account's disabling.
		code = codeFrom(t, login(t, loginURL(url.Values{"redirect_uri": {app}, "code_challenge": {challenge}}), false))
		time.Sleep(10 * time.Second)
		redeem(code, verifier).Want(t, http.StatusForbidden, "M_FORBIDDEN")
		code = codeFrom(t, login(t, loginURL(url.Values{"redirect_uri": {app}, "code_challenge": {challenge}}), false))
		id := h.Get(t, "/_ozo/admin/v1/accounts?limit=10", apitest.AdminToken).Want(t, http.StatusOK, "").JSON(t)["accounts"].([]any)[0].(map[string]any)["id"].(string)
		h.Post(t, "/_ozo/admin/v1/accounts/"+id+"/disable", apitest.AdminToken, map[string]any{}).Want(t, http.StatusOK, "")
		redeem(code, verifier).Want(t, http.StatusForbidden, "M_FORBIDDEN")

		// The refusals are failed logins in the trail; the code and verifier are in no record.
		if err := h.App.Lookups.Flush(t.Context()); err != nil {
			t.Fatal(err)
		}
		refused := 0
		for _, r := range auditRecords(t, h) {
			if r.Action == audit.ActionLoginFailure && strings.Contains(r.Detail, "handoff: ") {
				refused += int(r.Count)
			}
			if strings.Contains(r.Detail, code) || strings.Contains(r.Detail, verifier) {
				t.Fatalf("a record carries the code or verifier: %+v", r)
			}
		}
		if refused != 6 {
			t.Fatalf("%d refused redemptions recorded, want 6", refused)
		}
		if logs := h.Logs(); strings.Contains(logs, code) || strings.Contains(logs, verifier) {
			t.Fatal("the code or verifier is logged")
		}
	})
}
