package web

import (
	"context"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"
)

// refuseAll stands in for the identity service where no token is ever checked.
type refuseAll struct{}

func (refuseAll) SubmitToken(context.Context, string, string, string) (string, error) {
	panic("no token is checked in these tests")
}
func (refuseAll) AllowedNextLink(string) bool { return false }

func newHandler(t *testing.T) *Handler {
	t.Helper()
	h, err := New(Config{Key: []byte(strings.Repeat("k", 32)), Tokens: refuseAll{}})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// Every key exists in every language, and every key a template uses is in the catalog.
func TestCatalogComplete(t *testing.T) {
	for _, lang := range languages {
		for _, other := range languages {
			for key := range catalog[other] {
				if _, ok := catalog[lang][key]; !ok {
					t.Errorf("%s lacks %q (in %s)", lang, key, other)
				}
			}
		}
	}
	names, _ := assets.ReadDir("templates")
	for _, n := range names {
		data, _ := assets.ReadFile("templates/" + n.Name())
		for _, part := range strings.Split(string(data), `{{t "`)[1:] {
			key := part[:strings.IndexByte(part, '"')]
			if _, ok := catalog["nl"][key]; !ok {
				t.Errorf("%s uses %q, which is not in the catalog", n.Name(), key)
			}
		}
	}
}

func TestLanguage(t *testing.T) {
	h := newHandler(t)
	for _, tc := range []struct{ query, cookie, accept, want string }{
		{"", "", "", "nl"},
		{"", "", "en-US,en;q=0.9", "en"},
		{"", "", "de-DE, en;q=0.5", "en"},
		{"", "", "fr", "nl"},
		{"", "", "nl-BE", "nl"},
		{"", "en", "nl", "en"},
		{"nl", "en", "en", "nl"},
		{"xx", "", "en", "en"},
		{"", "xx", "en", "en"},
	} {
		r := httptest.NewRequest("GET", "/x?lang="+tc.query, nil)
		if tc.query == "" {
			r = httptest.NewRequest("GET", "/x", nil)
		}
		r.Header.Set("Accept-Language", tc.accept)
		if tc.cookie != "" {
			r.AddCookie(&http.Cookie{Name: langCookie, Value: tc.cookie})
		}
		w := httptest.NewRecorder()
		if got := h.language(w, r); got != tc.want {
			t.Errorf("lang=%q cookie=%q Accept-Language=%q: %s, want %s", tc.query, tc.cookie, tc.accept, got, tc.want)
		}
		set := w.Result().Cookies()
		if (tc.query == "nl" || tc.query == "en") != (len(set) == 1) {
			t.Errorf("lang=%q set cookies %v", tc.query, set)
		}
	}
}

// A session cookie round-trips; a changed byte, another server's key or an expired session
// gives an empty session.
func TestSession(t *testing.T) {
	h := newHandler(t)
	w := httptest.NewRecorder()
	h.SaveSession(w, &Session{Values: map[string]string{"org": "URA 123"}})
	c := w.Result().Cookies()[0]
	if c.Name != sessionCookie || !c.Secure || !c.HttpOnly || c.SameSite != http.SameSiteLaxMode || c.Path != "/" || c.Domain != "" {
		t.Fatalf("cookie %+v", c)
	}
	if strings.Contains(c.Value, "URA") {
		t.Fatal("the session is readable in the cookie")
	}
	load := func(h *Handler, value string) *Session {
		r := httptest.NewRequest("GET", "/", nil)
		r.AddCookie(&http.Cookie{Name: sessionCookie, Value: value})
		return h.LoadSession(r)
	}
	if got := load(h, c.Value).Values["org"]; got != "URA 123" {
		t.Fatalf("round trip: %q", got)
	}
	tampered := []byte(c.Value)
	tampered[len(tampered)/2] ^= 1
	other, _ := New(Config{Key: []byte(strings.Repeat("o", 32)), Tokens: refuseAll{}})
	for name, s := range map[string]*Session{
		"tampered": load(h, string(tampered)), "other key": load(other, c.Value), "garbage": load(h, "!!"),
	} {
		if len(s.Values) != 0 {
			t.Errorf("%s: %v", name, s.Values)
		}
	}
	expired := h.seal([]byte(`{"v":{"org":"x"},"e":"` + time.Now().Add(-time.Second).Format(time.RFC3339) + `"}`))
	if len(load(h, expired).Values) != 0 {
		t.Error("an expired session loaded")
	}
}

// Every POST needs the token that belongs to this browser's cookie; the refusal is an HTML page
// with a request id and no Go error text, and the page behind it never runs.
func TestCSRF(t *testing.T) {
	h := newHandler(t)
	ran := 0
	page := h.Pages(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ran++
		if r.Method == "GET" {
			w.Write([]byte(fromContext(r.Context()).csrf)) // what {{template "csrf" .}} puts in a form
		}
	}))
	w := httptest.NewRecorder()
	page.ServeHTTP(w, httptest.NewRequest("GET", "https://id.test/p", nil))
	var cookie *http.Cookie
	for _, c := range w.Result().Cookies() {
		if c.Name == csrfCookie {
			cookie = c
		}
	}
	if cookie == nil || !cookie.Secure || !cookie.HttpOnly || cookie.SameSite != http.SameSiteStrictMode {
		t.Fatalf("CSRF cookie %+v", cookie)
	}
	token := w.Body.String()
	if len(token) != 43 {
		t.Fatalf("token %q", token)
	}
	post := func(form string, c *http.Cookie, hdr map[string]string) *httptest.ResponseRecorder {
		r := httptest.NewRequest("POST", "https://id.test/p", strings.NewReader(form))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		for k, v := range hdr {
			r.Header.Set(k, v)
		}
		if c != nil {
			r.AddCookie(c)
		}
		w := httptest.NewRecorder()
		page.ServeHTTP(w, r)
		return w
	}
	other := &http.Cookie{Name: csrfCookie, Value: strings.Repeat("A", 43)}
	for name, w := range map[string]*httptest.ResponseRecorder{
		"no token":         post("a=1", cookie, nil),
		"wrong token":      post("csrf_token=x", cookie, nil),
		"no cookie":        post("csrf_token="+token, nil, nil),
		"another cookie":   post("csrf_token="+token, other, nil),
		"cross-site fetch": post("csrf_token="+token, cookie, map[string]string{"Sec-Fetch-Site": "cross-site"}),
		"foreign origin":   post("csrf_token="+token, cookie, map[string]string{"Origin": "https://evil.test"}),
	} {
		body := w.Body.String()
		if w.Code != http.StatusForbidden || !strings.HasPrefix(w.Header().Get("Content-Type"), "text/html") ||
			!strings.Contains(body, `id="request-id"`) || strings.Contains(body, "CSRF token") || strings.Contains(body, "cross-origin") {
			t.Errorf("%s: HTTP %d %s\n%s", name, w.Code, w.Header().Get("Content-Type"), body)
		}
	}
	if ran != 1 {
		t.Fatalf("the page ran %d times behind refused POSTs", ran-1)
	}
	if w := post("csrf_token="+token, cookie, map[string]string{"Sec-Fetch-Site": "same-origin"}); w.Code != 200 || ran != 2 {
		t.Fatalf("a good POST: HTTP %d, ran %d", w.Code, ran)
	}
}

// Pages carry a CSP without inline script or style and the other protective headers; a panic
// becomes an HTML 500 that shows a request id, not the panic.
func TestHeadersAndPanic(t *testing.T) {
	h := newHandler(t)
	page := h.Pages(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic("secret detail") }))
	w := httptest.NewRecorder()
	page.ServeHTTP(w, httptest.NewRequest("GET", "/p", nil))
	if w.Code != 500 || strings.Contains(w.Body.String(), "secret detail") || !strings.Contains(w.Body.String(), `id="request-id"`) {
		t.Fatalf("panic page: %d\n%s", w.Code, w.Body)
	}
	csp := w.Header().Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "style-src 'self'", "frame-ancestors 'none'", "form-action 'self'", "base-uri 'none'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("CSP %q lacks %q", csp, want)
		}
	}
	if strings.Contains(csp, "unsafe-inline") || strings.Contains(csp, "script-src") {
		t.Errorf("CSP %q allows inline or script", csp)
	}
	for k, v := range map[string]string{"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"} {
		if got := w.Header().Get(k); got != v {
			t.Errorf("%s: %q", k, got)
		}
	}
	if !slices.Contains(languages, w.Header().Get("Content-Language")) {
		t.Errorf("Content-Language %q", w.Header().Get("Content-Language"))
	}
}

// Callback takes an identity provider's cross-site POST without a CSRF token, and still sends
// the page headers; Pages refuses the same request.
func TestCallback(t *testing.T) {
	h := newHandler(t)
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusSeeOther) })
	req := func() *http.Request {
		r := httptest.NewRequest("POST", "https://id.test/acs", strings.NewReader("SAMLResponse=x"))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		r.Header.Set("Sec-Fetch-Site", "cross-site")
		return r
	}
	w := httptest.NewRecorder()
	h.Callback(ok).ServeHTTP(w, req())
	if w.Code != http.StatusSeeOther || w.Header().Get("Content-Security-Policy") == "" {
		t.Fatalf("Callback: HTTP %d, CSP %q", w.Code, w.Header().Get("Content-Security-Policy"))
	}
	w = httptest.NewRecorder()
	h.Pages(ok).ServeHTTP(w, req())
	if w.Code != http.StatusForbidden {
		t.Fatalf("Pages: HTTP %d", w.Code)
	}
}
