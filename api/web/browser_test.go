package web_test

import (
	"fmt"
	"html"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/ozo-platform/ozo-identity/api/apitest"
	"github.com/ozo-platform/ozo-identity/internal/browsertest"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
)

// A person opens the mailed link in a browser, in Dutch or in English: a wrong token shows why
// and offers the code form; the form with a forged CSRF token is refused with an HTML 403 that
// shows a request id and validates nothing; the form with the right code validates the address.
// Each page passes axe-core without serious or critical violations and runs under our CSP.
func TestValidationPageInBrowser(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		h := apitest.New(t, e)
		u := h.NewUser(t, "carla")
		for _, tc := range []struct {
			lang, acceptLanguage                            string
			failTitle, reason, csrfText, okTitle, otherLang string
		}{
			{"nl", "nl-NL,nl;q=0.9", "Bevestigen mislukt", "De code in de link klopt niet.",
				"Dit formulier is verlopen", "E-mailadres bevestigd", "English"},
			{"en", "en-GB,en;q=0.9", "Verification failed", "The code in the link is not correct.",
				"This form has expired", "Email address verified", "Nederlands"},
		} {
			t.Run(tc.lang, func(t *testing.T) {
				addr := "carla-" + tc.lang + "@example.org"
				s, token := h.RequestToken(t, u, addr)
				b := browsertest.New(t, browsertest.Options{AcceptLanguage: tc.acceptLanguage, IgnoreCertErrors: true})
				link := h.URL + apitest.V2 + "/validate/email/submitToken?" + url.Values{
					"sid": {s.SID}, "client_secret": {s.ClientSecret}, "token": {"wrong"}}.Encode()

				if st := b.Open(link); st != http.StatusBadRequest {
					t.Fatalf("wrong token: HTTP %d", st)
				}
				checkPage(t, b, tc.lang, tc.failTitle)
				if got := b.Text("#reason"); got != tc.reason {
					t.Fatalf("reason %q, want %q", got, tc.reason)
				}
				if !strings.Contains(b.Text("nav"), tc.otherLang) {
					t.Fatalf("no switch to %s: %q", tc.otherLang, b.Text("nav"))
				}
				b.Screenshot(tc.lang + "-failed")

				// The form with a forged CSRF token: refused before the token is checked.
				b.Fill("#token", token)
				b.SetValue(`input[name="csrf_token"]`, "forged")
				if st := b.Submit(`button[type="submit"]`); st != http.StatusForbidden {
					t.Fatalf("forged CSRF token: HTTP %d", st)
				}
				checkPage(t, b, tc.lang, "")
				if got := b.Text("#reason"); !strings.HasPrefix(got, tc.csrfText) {
					t.Fatalf("CSRF page says %q", got)
				}
				id := b.Text("#request-id")
				if len(id) != 16 || strings.Contains(b.HTML(), "CSRF token") {
					t.Fatalf("CSRF page: request id %q, page:\n%s", id, b.HTML())
				}
				if !strings.Contains(h.Logs(), id) {
					t.Fatalf("request id %s not in the log", id)
				}
				b.Screenshot(tc.lang + "-csrf")
				h.Get(t, apitest.V2+"/3pid/getValidated3pid?sid="+s.SID+"&client_secret="+url.QueryEscape(s.ClientSecret), u.Token).
					Want(t, http.StatusBadRequest, "M_SESSION_NOT_VALIDATED")

				// The same form, untouched, with the mailed code.
				b.Open(link)
				b.Fill("#token", token)
				if st := b.Submit(`button[type="submit"]`); st != http.StatusOK {
					t.Fatalf("code form: HTTP %d", st)
				}
				checkPage(t, b, tc.lang, tc.okTitle)
				b.Screenshot(tc.lang + "-verified")
				r := h.Get(t, apitest.V2+"/3pid/getValidated3pid?sid="+s.SID+"&client_secret="+url.QueryEscape(s.ClientSecret), u.Token).
					Want(t, http.StatusOK, "").JSON(t)
				if r["address"] != addr {
					t.Fatalf("getValidated3pid: %v", r)
				}
			})
		}

		// Another site's page posts the code form with the right code (the attacker read it from a
		// forwarded mail): refused with the HTML 403, and the address stays unvalidated.
		t.Run("cross-site form", func(t *testing.T) {
			s, token := h.RequestToken(t, u, "carla-xsite@example.org")
			evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				fmt.Fprintf(w, `<!doctype html><html lang="en"><title>win</title><main><h1>Win</h1>`+
					`<form method="post" action="%s/_ozo/web/validate/email"><input type="hidden" name="sid" value="%s">`+
					`<input type="hidden" name="client_secret" value="%s"><input type="hidden" name="token" value="%s">`+
					`<input type="hidden" name="csrf_token" value="guess"><button type="submit">Claim</button></form></main></html>`,
					h.URL, html.EscapeString(s.SID), html.EscapeString(s.ClientSecret), html.EscapeString(token))
			}))
			defer evil.Close()
			b := browsertest.New(t, browsertest.Options{AcceptLanguage: "en", IgnoreCertErrors: true})
			// The browser has been on the real page first, so it holds a CSRF cookie of its own.
			b.Open(h.URL + "/_ozo/web/static/ozo.css")
			b.Open(evil.URL)
			if st := b.Submit(`button[type="submit"]`); st != http.StatusForbidden {
				t.Fatalf("cross-site form: HTTP %d", st)
			}
			checkPage(t, b, "en", "Something went wrong")
			h.Get(t, apitest.V2+"/3pid/getValidated3pid?sid="+s.SID+"&client_secret="+url.QueryEscape(s.ClientSecret), u.Token).
				Want(t, http.StatusBadRequest, "M_SESSION_NOT_VALIDATED")
		})

		// The switch: a Dutch browser picks English, and the choice holds on the next page.
		t.Run("switch", func(t *testing.T) {
			s, _ := h.RequestToken(t, u, "carla-switch@example.org")
			b := browsertest.New(t, browsertest.Options{AcceptLanguage: "nl", IgnoreCertErrors: true})
			b.Open(h.URL + apitest.V2 + "/validate/email/submitToken?" + url.Values{
				"sid": {s.SID}, "client_secret": {s.ClientSecret}, "token": {"wrong"}}.Encode())
			checkPage(t, b, "nl", "Bevestigen mislukt")
			if st := b.Submit(`nav a[hreflang="en"]`); st != http.StatusBadRequest {
				t.Fatalf("switch: HTTP %d", st)
			}
			checkPage(t, b, "en", "Verification failed")
			if st := b.Open(h.URL + "/_ozo/web/no-such-page"); st != http.StatusNotFound {
				t.Fatalf("unknown page: HTTP %d", st)
			}
			checkPage(t, b, "en", "Something went wrong")
			if got := b.Text("#reason"); got != "This page does not exist." {
				t.Fatalf("404 page says %q", got)
			}
			b.Open(h.URL + "/_ozo/web/no-such-page?lang=nl")
			checkPage(t, b, "nl", "Er ging iets mis")
		})
	})
}

// checkPage asserts the page's language and heading, that our stylesheet applied (the CSP let it
// in), that nothing inline is there for the CSP to block, and that axe-core finds nothing serious.
func checkPage(t *testing.T, b *browsertest.Browser, lang, title string) {
	t.Helper()
	if got := browsertest.Eval[string](b, `document.documentElement.lang`); got != lang {
		t.Fatalf("html lang %q, want %q", got, lang)
	}
	if title != "" {
		if got := b.Text("h1"); got != title {
			t.Fatalf("h1 %q, want %q", got, title)
		}
	}
	if n := browsertest.Eval[int](b, `document.querySelectorAll("script, style, [style]").length`); n != 0 {
		t.Fatalf("%d inline script or style elements", n)
	}
	if got := browsertest.Eval[string](b, `getComputedStyle(document.body).maxWidth`); got == "none" {
		t.Fatal("the stylesheet did not apply")
	}
	b.RequireAccessible(b.Location())
}
