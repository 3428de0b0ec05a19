package api_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/ozo-platform/ozo-identity/api/apitest"
	"github.com/ozo-platform/ozo-identity/config"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
)

func TestCORS(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		t.Run("any origin", func(t *testing.T) {
			h := apitest.New(t, e)
			origin := http.Header{"Origin": {"https://app.element.io"}}
			for _, r := range []*apitest.Response{
				h.Do(t, apitest.Request{Path: "/_matrix/identity/versions", Header: origin}).Want(t, http.StatusOK, ""),
				// Errors carry the headers too, or a browser could not read them.
				h.Do(t, apitest.Request{Path: v2 + "/account", Header: origin}).Want(t, http.StatusUnauthorized, "M_UNAUTHORIZED"),
				h.Do(t, apitest.Request{Path: v2 + "/nope", Header: origin}).Want(t, http.StatusNotFound, "M_UNRECOGNIZED"),
			} {
				if got := r.Header.Get("Access-Control-Allow-Origin"); got != "*" {
					t.Fatalf("Access-Control-Allow-Origin %q", got)
				}
			}
			// A preflight for an authenticated JSON POST succeeds without a token.
			pre := h.Do(t, apitest.Request{Method: http.MethodOptions, Path: v2 + "/lookup", Header: http.Header{
				"Origin":                         {"https://app.element.io"},
				"Access-Control-Request-Method":  {"POST"},
				"Access-Control-Request-Headers": {"authorization, content-type"},
			}}).Want(t, http.StatusOK, "")
			if pre.Header.Get("Access-Control-Allow-Origin") != "*" {
				t.Fatalf("preflight Allow-Origin %q", pre.Header.Get("Access-Control-Allow-Origin"))
			}
			methods := pre.Header.Get("Access-Control-Allow-Methods")
			allowed := strings.ToLower(pre.Header.Get("Access-Control-Allow-Headers"))
			if !strings.Contains(methods, "POST") || !strings.Contains(methods, "GET") ||
				!strings.Contains(allowed, "authorization") || !strings.Contains(allowed, "content-type") {
				t.Fatalf("preflight Allow-Methods %q Allow-Headers %q", methods, allowed)
			}
			h.Do(t, apitest.Request{Method: http.MethodOptions, Path: "/_matrix/identity/versions"}).Want(t, http.StatusOK, "")
		})
		// Only the JSON API is for other sites: pages (the mailed link, form targets, static files)
		// and the admin API answer without CORS headers, preflights included.
		t.Run("pages and admin get none", func(t *testing.T) {
			h := apitest.New(t, e)
			u := h.NewUser(t, "corsy")
			s, _ := h.RequestToken(t, u, "corsy@example.org")
			origin := http.Header{"Origin": {"https://app.element.io"}}
			for _, r := range []*apitest.Response{
				h.Do(t, apitest.Request{Path: v2 + "/validate/email/submitToken" + q("sid", s.SID, "client_secret", s.ClientSecret, "token", "x"), Header: origin}).Want(t, http.StatusBadRequest, ""),
				h.Do(t, apitest.Request{Path: "/_matrix/identity/api/v1/validate/email/submitToken", Header: origin}),
				h.Do(t, apitest.Request{Path: "/_ozo/web/static/ozo.css", Header: origin}).Want(t, http.StatusOK, ""),
				h.Do(t, apitest.Request{Method: http.MethodOptions, Path: "/_ozo/web/validate/email", Header: http.Header{
					"Origin": {"https://app.element.io"}, "Access-Control-Request-Method": {"POST"}}}),
				h.Do(t, apitest.Request{Path: "/_ozo/admin/v1/bindings", Header: http.Header{
					"Origin": {"https://app.element.io"}, "Authorization": {"Bearer " + apitest.AdminToken}}}).Want(t, http.StatusOK, ""),
				h.Do(t, apitest.Request{Method: http.MethodOptions, Path: "/_ozo/admin/v1/bindings", Header: http.Header{
					"Origin": {"https://app.element.io"}, "Access-Control-Request-Method": {"POST"}}}),
			} {
				for k := range r.Header {
					if strings.HasPrefix(k, "Access-Control-") {
						t.Fatalf("HTTP %d carries %s: %q\n%s", r.Status, k, r.Header.Get(k), r.Body)
					}
				}
			}
			// POST submitToken is JSON API and keeps CORS.
			r := h.Do(t, apitest.Request{Method: http.MethodPost, Path: v2 + "/validate/email/submitToken", Header: http.Header{
				"Origin": {"https://app.element.io"}, "Authorization": {"Bearer " + u.Token}, "Content-Type": {"application/json"}},
				Body: map[string]any{"sid": s.SID, "client_secret": s.ClientSecret, "token": "x"}}).Want(t, http.StatusBadRequest, "M_TOKEN_INCORRECT")
			if r.Header.Get("Access-Control-Allow-Origin") != "*" {
				t.Fatalf("POST submitToken: Allow-Origin %q", r.Header.Get("Access-Control-Allow-Origin"))
			}
			pre := h.Do(t, apitest.Request{Method: http.MethodOptions, Path: v2 + "/validate/email/submitToken", Header: http.Header{
				"Origin": {"https://app.element.io"}, "Access-Control-Request-Method": {"POST"}}}).Want(t, http.StatusOK, "")
			if pre.Header.Get("Access-Control-Allow-Origin") != "*" {
				t.Fatalf("preflight of POST submitToken: Allow-Origin %q", pre.Header.Get("Access-Control-Allow-Origin"))
			}
		})
		t.Run("listed origins", func(t *testing.T) {
			h := apitest.New(t, e, func(c *config.Config) { c.HTTP.CORSOrigins = []string{"https://app.ozo.test"} })
			r := h.Do(t, apitest.Request{Path: "/_matrix/identity/versions", Header: http.Header{"Origin": {"https://app.ozo.test"}}})
			if r.Header.Get("Access-Control-Allow-Origin") != "https://app.ozo.test" || !strings.Contains(r.Header.Get("Vary"), "Origin") {
				t.Fatalf("listed origin: Allow-Origin %q Vary %q", r.Header.Get("Access-Control-Allow-Origin"), r.Header.Get("Vary"))
			}
			r = h.Do(t, apitest.Request{Path: "/_matrix/identity/versions", Header: http.Header{"Origin": {"https://evil.test"}}})
			if got := r.Header.Get("Access-Control-Allow-Origin"); got != "" {
				t.Fatalf("unlisted origin allowed: %q", got)
			}
		})
	})
}

// Lookups are bounded per account; the limit answers 429 and stores nothing, and other
// accounts keep working.
func TestLookupRateLimit(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		h := apitest.New(t, e, func(c *config.Config) { c.RateLimits.LookupPerAccount = 3 })
		alice := h.NewUser(t, "alice")
		bob := h.NewUser(t, "bob")
		h.Bind(t, alice, "alice@example.org")
		pepper := h.Pepper(t, bob)
		lookup := func(u apitest.User) *apitest.Response {
			return h.Post(t, v2+"/lookup", u.Token, map[string]any{"addresses": []string{"alice@example.org email"}, "algorithm": "none", "pepper": pepper})
		}
		for range 3 {
			lookup(bob).Want(t, http.StatusOK, "")
		}
		r := lookup(bob).Want(t, http.StatusTooManyRequests, "M_LIMIT_EXCEEDED")
		if r.Header.Get("Retry-After") == "" {
			t.Fatal("429 without Retry-After")
		}
		if !strings.Contains(string(lookup(alice).Want(t, http.StatusOK, "").Body), alice.MXID) {
			t.Fatal("another account was limited too")
		}
	})
}
