package app_test

import (
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/api/apitest"
)

var (
	pageCSRF       = regexp.MustCompile(`name="csrf_token" value="([^"]*)"`)
	activationLink = regexp.MustCompile(`https://[^\s"'<>]+/_ozo/web/account/activate\?token=([A-Za-z0-9_%-]+)`)
)

// TestPagesDatabaseLost: with PostgreSQL cut, the account pages that need it (an activation
// link, a login, a password form) answer a 503 page with Retry-After in the person's language,
// never a 500; a page that needs no database still works; once PostgreSQL is back, the same
// link and login work.
func TestPagesDatabaseLost(t *testing.T) {
	h, p := postgresBehindProxy(t, nil)
	const addr = "cut@example.org"
	h.Post(t, "/_ozo/admin/v1/accounts", apitest.AdminToken, map[string]any{"email": addr, "kind": "patient", "language": "en"}).
		Want(t, http.StatusCreated, "")
	m := activationLink.FindStringSubmatch(h.Mail.Wait(t, addr, 1, 10*time.Second).Text)
	if m == nil {
		t.Fatal("no activation link in the invitation")
	}
	token, _ := url.QueryUnescape(m[1])

	jar, _ := cookiejar.New(nil)
	browser := &http.Client{Transport: h.Client.Transport, Jar: jar, Timeout: 60 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	type page struct {
		status int
		retry  string
		lang   string
		body   string
	}
	do := func(method, path, acceptLanguage string, form url.Values) page {
		t.Helper()
		var body io.Reader
		if form != nil {
			body = strings.NewReader(form.Encode())
		}
		req, _ := http.NewRequest(method, h.URL+path, body)
		if form != nil {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
		if acceptLanguage != "" {
			req.Header.Set("Accept-Language", acceptLanguage)
		}
		resp, err := browser.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return page{resp.StatusCode, resp.Header.Get("Retry-After"), resp.Header.Get("Content-Language"), string(b)}
	}
	wantUnavailable := func(what string, got page, lang, text string) {
		t.Helper()
		if got.status != http.StatusServiceUnavailable || got.retry == "" || got.lang != lang ||
			!strings.Contains(got.body, text) || !strings.Contains(got.body, `id="request-id"`) {
			t.Errorf("%s with PostgreSQL cut: %d, Retry-After %q, language %q:\n%s", what, got.status, got.retry, got.lang, got.body)
		}
	}
	const nl, en = "Deze dienst is even niet bereikbaar", "This service is briefly unavailable"

	// The login form needs no database: the browser gets its CSRF token before the cut.
	login := do(http.MethodGet, "/_ozo/web/account/login", "en", nil)
	csrf := pageCSRF.FindStringSubmatch(login.body)
	if login.status != http.StatusOK || csrf == nil {
		t.Fatalf("login form: %d\n%s", login.status, login.body)
	}

	p.Cut()
	wantUnavailable("activation link (nl)", do(http.MethodGet, "/_ozo/web/account/activate?token="+url.QueryEscape(token), "nl", nil), "nl", nl)
	wantUnavailable("activation link (en)", do(http.MethodGet, "/_ozo/web/account/activate?lang=en&token="+url.QueryEscape(token), "", nil), "en", en)
	wantUnavailable("login", do(http.MethodPost, "/_ozo/web/account/login", "", url.Values{"csrf_token": {csrf[1]},
		"email": {addr}, "password": {"a long enough passphrase"}}), "en", en)
	wantUnavailable("reset link", do(http.MethodGet, "/_ozo/web/account/reset?token=whatever", "", nil), "en", en)
	if got := do(http.MethodGet, "/_ozo/web/account/forgot", "", nil); got.status != http.StatusOK {
		t.Errorf("a page without the database while PostgreSQL is cut: %d", got.status)
	}
	p.Restore()

	// The same link works once PostgreSQL is back (the pool reconnects on its own).
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := do(http.MethodGet, "/_ozo/web/account/activate?token="+url.QueryEscape(token), "", nil)
		if got.status == http.StatusSeeOther {
			break
		}
		if got.status != http.StatusServiceUnavailable || time.Now().After(deadline) {
			t.Fatalf("activation link after PostgreSQL came back: %d\n%s", got.status, got.body)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if got := do(http.MethodGet, "/_ozo/web/account/activate", "", nil); got.status != http.StatusOK || !strings.Contains(got.body, addr) {
		t.Fatalf("activation page after PostgreSQL came back: %d\n%s", got.status, got.body)
	}
	if strings.Contains(h.Logs(), "level=ERROR msg=\"page error\"") {
		t.Error("a page logged the lost database as an internal error")
	}
}
