package web_test

import (
	"encoding/pem"
	"encoding/xml"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	crewsaml "github.com/crewjam/saml"

	"github.com/ozo-platform/ozo-identity/api/apitest"
	"github.com/ozo-platform/ozo-identity/config"
	"github.com/ozo-platform/ozo-identity/internal/browsertest"
	"github.com/ozo-platform/ozo-identity/saml/samltest"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
)

// waitFor polls a JavaScript condition in the page until it holds (the IdP's auto-posting form
// and our redirects take a few navigations).
func waitFor(t *testing.T, b *browsertest.Browser, cond string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !browsertest.Eval[bool](b, `(() => { try { return document.readyState === "complete" && (`+cond+`) } catch (e) { return false } })()`) {
		if time.Now().After(deadline) {
			t.Fatalf("waited in vain for %s at %s", cond, b.Location())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestSSOLoginInBrowser: a practitioner, in headless Chromium, opens the login page a client
// got from /_ozo/v1/validate/sso/start, sees which account it is for, finds their organisation
// by name, passes the SAML IdP's login form and ends validated; the session then binds and a
// lookup by uzi finds them. Every page of ours passes axe-core; screenshots are kept.
func TestSSOLoginInBrowser(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		idp := samltest.New(t)
		idp.AddUser(t, "alice", "wachtwoord", "alice@umcx.nl", map[string]string{"uziNummer": "900000025"})
		caFile := filepath.Join(t.TempDir(), "idp-ca.pem")
		if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: idp.Server.Certificate().Raw}), 0o600); err != nil {
			t.Fatal(err)
		}
		h := apitest.New(t, e, func(c *config.Config) {
			c.SSO.CAFile = caFile
			p := config.IdP{ID: "umcx", Name: "UMC Xanadu", Type: "saml", URAs: []string{"17004512"}, TrustedForUZI: true}
			p.SAML.MetadataURL = idp.MetadataURL()
			p.SAML.EmailVerified = true
			p.SAML.Attributes.Subject, p.SAML.Attributes.UZI, p.SAML.Attributes.Email = "uid", "uziNummer", "mail"
			other := config.IdP{ID: "zkh", Name: "Ziekenhuis Zuid", Type: "saml", URAs: []string{"12345678"}}
			other.SAML.MetadataURL = idp.MetadataURL()
			c.SSO.IdPs = []config.IdP{p, other}
		})
		for _, id := range []string{"umcx", "zkh"} {
			var md crewsaml.EntityDescriptor
			if err := xml.Unmarshal(h.Get(t, "/_ozo/v1/sso/"+id+"/metadata", "").Want(t, http.StatusOK, "").Body, &md); err != nil {
				t.Fatal(err)
			}
			idp.RegisterSP(t, id, &md, false)
		}
		alice := h.NewUser(t, "alice")
		secret := apitest.Secret()
		r := h.Post(t, "/_ozo/v1/validate/sso/start", alice.Token, map[string]any{"client_secret": secret}).Want(t, http.StatusOK, "")
		sid := r.Str(t, "sid")

		b := browsertest.New(t, browsertest.Options{AcceptLanguage: "nl-NL,nl;q=0.9", IgnoreCertErrors: true})
		if st := b.Open(r.Str(t, "redirect_url")); st != http.StatusOK {
			t.Fatalf("login page: HTTP %d", st)
		}
		checkPage(t, b, "nl", "Inloggen als zorgverlener")
		if got := b.Text("#account"); got != alice.MXID {
			t.Fatalf("the login page names %q, want %s", got, alice.MXID)
		}
		b.Fill("#q", "xanadu")
		if st := b.Submit(`form[role="search"] button`); st != http.StatusOK {
			t.Fatalf("search: HTTP %d", st)
		}
		if list := b.Text("ul.idps"); !strings.Contains(list, "UMC Xanadu") || strings.Contains(list, "Ziekenhuis Zuid") {
			t.Fatalf("search for xanadu lists %q", list)
		}
		checkPage(t, b, "nl", "Inloggen als zorgverlener")
		b.Screenshot("organisation-chosen")
		if st := b.Submit(`button[name="idp"][value="umcx"]`); st != http.StatusOK {
			t.Fatalf("choose: HTTP %d", st)
		}
		checkPage(t, b, "nl", "Verder naar uw organisatie")
		b.Submit("#continue")
		waitFor(t, b, `document.querySelector("#user") !== null`)
		b.Screenshot("idp-login-form")
		b.Fill("#user", "alice")
		b.Fill("#password", "wachtwoord")
		b.Submit(`button[type="submit"]`)
		waitFor(t, b, `location.pathname.endsWith("/finish") && document.querySelector("h1") !== null`)
		checkPage(t, b, "nl", "Identiteit bevestigd")
		if got := b.Text("#proven"); !strings.Contains(got, "UZI-nummer") {
			t.Fatalf("proven: %q", got)
		}
		b.Screenshot("validated")

		v := h.Get(t, apitest.V2+"/3pid/getValidated3pid?"+url.Values{"sid": {sid}, "client_secret": {secret}}.Encode(), alice.Token).
			Want(t, http.StatusOK, "").JSON(t)
		if v["address"] != "umcx:alice" {
			t.Fatalf("validated %v", v)
		}
		h.Post(t, apitest.V2+"/3pid/bind", alice.Token, map[string]any{"sid": sid, "client_secret": secret, "mxid": alice.MXID}).
			Want(t, http.StatusOK, "")
		if got := h.LookupOne(t, alice, "uzi", "900000025"); got != alice.MXID {
			t.Fatalf("lookup by uzi: %q", got)
		}

		// The IdP error page, in English: the same login page again is used up.
		if st := b.Open(r.Str(t, "redirect_url") + "&lang=en"); st != http.StatusBadRequest {
			t.Fatalf("used login page: HTTP %d", st)
		}
		checkPage(t, b, "en", "Something went wrong")
		if got := b.Text("#reason"); !strings.Contains(got, "expired or was already used") {
			t.Fatalf("reason %q", got)
		}
		b.Screenshot("used-login-en")
	})
}

// TestOnboardingPagesInBrowser: the login page of an onboarding start (no token, no account)
// says a new account will be made and names none, in Dutch and English; a practitioner whom no
// homeserver of this server is for (the IdP has none, the directory places them nowhere) ends on
// an error page that says so, with no redirect to the client. Every page passes axe-core.
func TestOnboardingPagesInBrowser(t *testing.T) {
	idp := samltest.New(t)
	idp.AddUser(t, "alice", "wachtwoord", "alice@umcx.nl", map[string]string{"uziNummer": "900000025"})
	caFile := filepath.Join(t.TempDir(), "idp-ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: idp.Server.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	const redirect = "https://app.ozo.test/onboarded"
	h := apitest.New(t, sqlstore.SQLite, func(c *config.Config) {
		c.SSO.CAFile = caFile
		p := config.IdP{ID: "umcx", Name: "UMC Xanadu", Type: "saml", URAs: []string{"17004512"}, TrustedForUZI: true}
		p.SAML.MetadataURL = idp.MetadataURL()
		p.SAML.Attributes.Subject, p.SAML.Attributes.UZI = "uid", "uziNummer"
		c.SSO.IdPs = []config.IdP{p}
		// A homeserver this server could make accounts on, but not the IdP's.
		c.SSO.Onboarding.RedirectURIs = []string{redirect}
		c.SSO.Onboarding.Homeservers = []config.OnboardingHomeserver{{ServerName: "ozo.test", ClientURL: "https://127.0.0.1:1",
			ASToken: "unused", UserPrefix: "zv_", Localpart: "uzi"}}
	})
	var md crewsaml.EntityDescriptor
	if err := xml.Unmarshal(h.Get(t, "/_ozo/v1/sso/umcx/metadata", "").Want(t, http.StatusOK, "").Body, &md); err != nil {
		t.Fatal(err)
	}
	idp.RegisterSP(t, "umcx", &md, false)
	start := h.Post(t, "/_ozo/v1/onboard/sso/start", "", map[string]any{"redirect_uri": redirect,
		"code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"}).Want(t, http.StatusOK, "")

	b := browsertest.New(t, browsertest.Options{AcceptLanguage: "en-GB,en;q=0.9", IgnoreCertErrors: true})
	if st := b.Open(start.Str(t, "redirect_url")); st != http.StatusOK {
		t.Fatalf("login page: HTTP %d", st)
	}
	checkPage(t, b, "en", "Log in as a care professional")
	if got := b.Text("#newaccount"); !strings.Contains(got, "a new Matrix account will be created") {
		t.Fatalf("the onboarding page says %q", got)
	}
	if n := browsertest.Eval[int](b, `document.querySelectorAll("#account").length`); n != 0 {
		t.Fatal("the onboarding page names an account")
	}
	b.Screenshot("onboarding-en")
	if st := b.Open(start.Str(t, "redirect_url") + "&lang=nl"); st != http.StatusOK {
		t.Fatalf("login page in Dutch: HTTP %d", st)
	}
	checkPage(t, b, "nl", "Inloggen als zorgverlener")
	if got := b.Text("#newaccount"); !strings.Contains(got, "nieuw Matrix-account") {
		t.Fatalf("the Dutch onboarding page says %q", got)
	}
	if st := b.Submit(`button[name="idp"][value="umcx"]`); st != http.StatusOK {
		t.Fatalf("choose: HTTP %d", st)
	}
	b.Submit("#continue")
	waitFor(t, b, `document.querySelector("#user") !== null`)
	b.Fill("#user", "alice")
	b.Fill("#password", "wachtwoord")
	b.Submit(`button[type="submit"]`)
	waitFor(t, b, `location.pathname.endsWith("/finish") && document.querySelector("h1") !== null`)
	checkPage(t, b, "nl", "Er ging iets mis")
	if got := b.Text("#reason"); !strings.Contains(got, "andere Matrix-server") {
		t.Fatalf("reason %q", got)
	}
	b.Screenshot("onboarding-no-homeserver")
	if got := h.LookupOne(t, h.NewUser(t, "bob"), "uzi", "900000025"); got != "" {
		t.Fatalf("a refused onboarding bound the UZI number to %s", got)
	}
}
