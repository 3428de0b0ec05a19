package api_test

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"encoding/xml"
	"html"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	crewsaml "github.com/crewjam/saml"

	"github.com/ozo-platform/ozo-identity/api/apitest"
	"github.com/ozo-platform/ozo-identity/api/web"
	"github.com/ozo-platform/ozo-identity/audit"
	"github.com/ozo-platform/ozo-identity/config"
	"github.com/ozo-platform/ozo-identity/dezi"
	"github.com/ozo-platform/ozo-identity/dezi/dezitest"
	"github.com/ozo-platform/ozo-identity/dezi/oidctest"
	"github.com/ozo-platform/ozo-identity/lookup/mcsd/mcsdtest"
	"github.com/ozo-platform/ozo-identity/saml/samltest"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
)

// ssoWorld is ozo-identity with four IdPs: a SAML IdP trusted for UZI numbers (umcx), a SAML
// IdP that asserts them without being trusted (kliniek), an OpenID Provider (zkh) and Dezi.
type ssoWorld struct {
	h             *apitest.Harness
	umcx, kliniek *samltest.IdP
	op            *oidctest.OP
	dezi          *dezitest.Server
}

var (
	deziArts = dezitest.Professional{DeziNummer: "900000009", Voorletters: "B.B.", Voorvoegsel: "van der", Achternaam: "Jansen",
		AbonneeNummer: "87654321", AbonneeNaam: "Huisartsenpraktijk De Linde", RolCode: "01.015", LoA: dezi.LoAHigh}
	deziLaag = dezitest.Professional{DeziNummer: "900000017", Voorletters: "A.", Achternaam: "de Vries",
		AbonneeNummer: "17004512", AbonneeNaam: "Thuiszorg Oost", RolCode: "30.000", LoA: dezi.LoASubstantial}
)

func newSSOWorld(t *testing.T, engine sqlstore.Engine, configure ...func(*config.Config)) *ssoWorld {
	t.Helper()
	w := &ssoWorld{umcx: samltest.New(t), kliniek: samltest.New(t)}
	w.umcx.AddUser(t, "alice", "wachtwoord", "alice@umcx.nl", map[string]string{"uziNummer": "900000025"})
	w.kliniek.AddUser(t, "mallory", "wachtwoord", "mallory@kliniek.nl", map[string]string{"uziNummer": "900000033"})
	dir := t.TempDir()
	caFile := filepath.Join(dir, "idp-ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: w.umcx.Server.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	rpKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	der, _ := x509.MarshalPKCS8PrivateKey(rpKey)
	keyFile := filepath.Join(dir, "dezi-rp.pem")
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)

	w.h = apitest.New(t, engine, func(c *config.Config) {
		base := c.PublicBaseURL + "/_ozo/v1/sso/"
		w.op = oidctest.New(t, "ozo-identity", "geheim", base+"zkh/callback",
			oidctest.User{ID: "u-7", Username: "jan", Password: "welkom01", FirstName: "Jan", LastName: "Jansen",
				Email: "jan@zkh.nl", EmailVerified: true})
		w.dezi = dezitest.New(t, "ozo-identity", "geheim", base+"dezi/callback", &rpKey.PublicKey, deziArts, deziLaag)
		c.SSO.CAFile = caFile
		samlIdP := func(id string, idp *samltest.IdP, trusted bool) config.IdP {
			p := config.IdP{ID: id, Name: strings.ToUpper(id), Type: "saml", URAs: []string{"17004512"}, TrustedForUZI: trusted}
			p.SAML.MetadataURL = idp.MetadataURL()
			p.SAML.EmailVerified = true
			p.SAML.Attributes.Subject, p.SAML.Attributes.UZI, p.SAML.Attributes.Email = "uid", "uziNummer", "mail"
			return p
		}
		zkh := config.IdP{ID: "zkh", Name: "Ziekenhuis", Type: "oidc", URAs: []string{"12345678"}}
		zkh.OIDC.Issuer, zkh.OIDC.ClientID, zkh.OIDC.ClientSecret = w.op.Issuer, "ozo-identity", "geheim"
		dz := config.IdP{ID: "dezi", Name: "Dezi", Type: "dezi"}
		dz.Dezi = config.DeziIdP{Issuer: w.dezi.Issuer, ClientID: "ozo-identity", ClientSecret: "geheim",
			DecryptionKeyFile: keyFile, JKUAllowList: []string{w.dezi.Server.URL + "/verklaring/"}}
		c.SSO.IdPs = []config.IdP{samlIdP("umcx", w.umcx, true), samlIdP("kliniek", w.kliniek, false), zkh, dz}
		for _, f := range configure {
			f(c)
		}
	})
	for id, idp := range map[string]*samltest.IdP{"umcx": w.umcx, "kliniek": w.kliniek} {
		r := w.h.Get(t, "/_ozo/v1/sso/"+id+"/metadata", "").Want(t, http.StatusOK, "")
		var md crewsaml.EntityDescriptor
		if err := xml.Unmarshal(r.Body, &md); err != nil {
			t.Fatalf("SP metadata of %s: %v", id, err)
		}
		idp.RegisterSP(t, "ozo-identity", &md, false)
	}
	return w
}

// newBrowser is the practitioner's browser at ozo-identity: it trusts the test CA, keeps
// cookies and does not follow redirects.
func (w *ssoWorld) newBrowser() *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Transport: w.h.Client.Transport, Jar: jar, Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func do(t *testing.T, b *http.Client, method, rawURL string, form url.Values) *apitest.Response {
	t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, rawURL, body)
	if err != nil {
		t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	resp, err := b.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return &apitest.Response{Status: resp.StatusCode, Header: resp.Header, Body: data}
}

// start begins a login for u at idp through the API, opens the login page in a new browser,
// checks it names u's account and chooses idp; it returns the session, the browser and the IdP URL.
func (w *ssoWorld) start(t *testing.T, u apitest.User, idp string) (apitest.Session, *http.Client, string) {
	t.Helper()
	s := apitest.Session{ClientSecret: apitest.Secret()}
	r := w.h.Post(t, "/_ozo/v1/validate/sso/start", u.Token, map[string]any{"client_secret": s.ClientSecret, "idp": idp}).
		Want(t, http.StatusOK, "")
	s.SID = r.Str(t, "sid")
	b := w.newBrowser()
	return s, b, w.choose(t, b, r.Str(t, "redirect_url"), u, idp)
}

var (
	csrfInput    = regexp.MustCompile(`name="csrf_token" value="([^"]*)"`)
	continueLink = regexp.MustCompile(`id="continue" class="button" href="([^"]*)"`)
)

// choose opens the login page in b, checks it names u's account, picks idp (with the form's
// CSRF token) and returns the IdP URL the next page links to.
func (w *ssoWorld) choose(t *testing.T, b *http.Client, loginURL string, u apitest.User, idp string) string {
	t.Helper()
	page := do(t, b, http.MethodGet, loginURL, nil)
	wantPage(t, page, http.StatusOK, u.MXID)
	m := csrfInput.FindSubmatch(page.Body)
	if m == nil {
		t.Fatalf("no CSRF token on the login page:\n%s", page.Body)
	}
	lu, _ := url.Parse(loginURL)
	r := do(t, b, http.MethodPost, w.h.URL+web.SSOLoginPath, url.Values{"csrf_token": {string(m[1])},
		"login": {lu.Query().Get("login")}, "idp": {idp}})
	l := continueLink.FindSubmatch(r.Body)
	if r.Status != http.StatusOK || l == nil {
		t.Fatalf("choosing %s: %d %s", idp, r.Status, r.Body)
	}
	return html.UnescapeString(string(l[1]))
}

// samlLogin logs in at idp and posts its answer to ozo-identity as browser b would, following
// the redirect to the page that completes the login; it returns that page and the form posted.
func (w *ssoWorld) samlLogin(t *testing.T, b *http.Client, idp *samltest.IdP, redirect, user string) (*apitest.Response, url.Values) {
	t.Helper()
	acs, form := idp.Login(t, idp.Client(), redirect, user, "wachtwoord")
	if !strings.HasPrefix(acs, w.h.URL+"/_ozo/v1/sso/") {
		t.Fatalf("the IdP posts to %s", acs)
	}
	return w.postACS(t, b, acs, form), form
}

func (w *ssoWorld) postACS(t *testing.T, b *http.Client, acs string, form url.Values) *apitest.Response {
	t.Helper()
	r := do(t, b, http.MethodPost, acs, form)
	if r.Status != http.StatusSeeOther {
		return r
	}
	base, _ := url.Parse(acs)
	loc, err := base.Parse(r.Header.Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	return do(t, b, http.MethodGet, loc.String(), nil)
}

func (w *ssoWorld) callback(t *testing.T, b *http.Client, cb *url.URL) *apitest.Response {
	t.Helper()
	if cb.Host != strings.TrimPrefix(w.h.URL, "https://") {
		t.Fatalf("the IdP redirects to %s", cb)
	}
	return do(t, b, http.MethodGet, cb.String(), nil)
}

func (w *ssoWorld) validated(t *testing.T, u apitest.User, s apitest.Session) map[string]any {
	t.Helper()
	return w.h.Get(t, apitest.V2+"/3pid/getValidated3pid?"+url.Values{"sid": {s.SID}, "client_secret": {s.ClientSecret}}.Encode(), u.Token).
		Want(t, http.StatusOK, "").JSON(t)
}

func (w *ssoWorld) bind(t *testing.T, u apitest.User, s apitest.Session) *apitest.Response {
	t.Helper()
	return w.h.Post(t, apitest.V2+"/3pid/bind", u.Token, map[string]any{"sid": s.SID, "client_secret": s.ClientSecret, "mxid": u.MXID})
}

func wantPage(t *testing.T, r *apitest.Response, status int, text string) {
	t.Helper()
	if r.Status != status || !strings.Contains(string(r.Body), text) {
		t.Fatalf("page %d, want %d with %q:\n%s", r.Status, status, text, r.Body)
	}
}

// TestSSOValidation: a practitioner logs in at each kind of IdP; the session is validated for
// what the login proved, binds to the account that started it, and a v2 lookup by uzi finds them.
func TestSSOValidation(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, engine sqlstore.Engine) {
		w := newSSOWorld(t, engine)
		h := w.h

		t.Run("SAMLTrustedForUZI", func(t *testing.T) {
			alice := h.NewUser(t, "alice")
			s, b, redirect := w.start(t, alice, "umcx")
			page, _ := w.samlLogin(t, b, w.umcx, redirect, "alice")
			wantPage(t, page, http.StatusOK, "Identiteit bevestigd")
			v := w.validated(t, alice, s)
			if v["medium"] != "idp" || v["address"] != "umcx:alice" {
				t.Fatalf("getValidated3pid: %v", v)
			}
			a := w.bind(t, alice, s).Want(t, http.StatusOK, "").JSON(t)
			if a["medium"] != "idp" || a["address"] != "umcx:alice" || a["mxid"] != alice.MXID {
				t.Fatalf("association %v", a)
			}
			for _, tp := range [][2]string{{"uzi", "900000025"}, {"idp", "umcx:alice"}, {"email", "alice@umcx.nl"}} {
				if got := h.LookupOne(t, alice, tp[0], tp[1]); got != alice.MXID {
					t.Errorf("lookup %s %s: %q, want %s", tp[0], tp[1], got, alice.MXID)
				}
			}
		})

		t.Run("SAMLUntrustedUZI", func(t *testing.T) {
			// kliniek asserts a UZI number it is not trusted for: idp and email are validated, uzi is not.
			mallory := h.NewUser(t, "mallory")
			s, b, redirect := w.start(t, mallory, "kliniek")
			page, _ := w.samlLogin(t, b, w.kliniek, redirect, "mallory")
			wantPage(t, page, http.StatusOK, "Identiteit bevestigd")
			w.bind(t, mallory, s).Want(t, http.StatusOK, "")
			if got := h.LookupOne(t, mallory, "uzi", "900000033"); got != "" {
				t.Fatalf("an untrusted IdP's UZI number was bound to %s", got)
			}
			if got := h.LookupOne(t, mallory, "idp", "kliniek:mallory"); got != mallory.MXID {
				t.Fatalf("idp binding: %q", got)
			}
		})

		t.Run("OIDC", func(t *testing.T) {
			jan := h.NewUser(t, "jan")
			s, b, redirect := w.start(t, jan, "zkh")
			cb := w.op.Login(t, redirect, "jan", "welkom01")
			wantPage(t, w.callback(t, b, cb), http.StatusOK, "Identiteit bevestigd")
			if v := w.validated(t, jan, s); v["address"] != "zkh:u-7" {
				t.Fatalf("getValidated3pid: %v", v)
			}
			w.bind(t, jan, s).Want(t, http.StatusOK, "")
			if got := h.LookupOne(t, jan, "email", "jan@zkh.nl"); got != jan.MXID {
				t.Fatalf("email from a verified claim: %q", got)
			}
			// The same callback again: its state was used.
			wantPage(t, w.callback(t, b, cb), http.StatusBadRequest, "verlopen of al gebruikt")
		})

		t.Run("UnbindWithSession", func(t *testing.T) {
			// The session that proved a UZI number may unbind it again (spec: unbind with sid).
			carla := h.NewUser(t, "carla")
			w.dezi.Misbehave(dezitest.Tamper{LoA: dezi.LoAHigh}) // this nurse logs in at level high today
			defer w.dezi.Misbehave(dezitest.Tamper{})
			s, b, redirect := w.start(t, carla, "dezi")
			wantPage(t, w.callback(t, b, w.dezi.Login(t, redirect, deziLaag.DeziNummer)), http.StatusOK, "Identiteit bevestigd")
			w.bind(t, carla, s).Want(t, http.StatusOK, "")
			if got := h.LookupOne(t, carla, "uzi", deziLaag.DeziNummer); got != carla.MXID {
				t.Fatalf("lookup: %q", got)
			}
			h.Post(t, apitest.V2+"/3pid/unbind", carla.Token, map[string]any{"sid": s.SID, "client_secret": s.ClientSecret,
				"mxid": carla.MXID, "threepid": map[string]string{"medium": "uzi", "address": deziLaag.DeziNummer}}).Want(t, http.StatusOK, "")
			if got := h.LookupOne(t, carla, "uzi", deziLaag.DeziNummer); got != "" {
				t.Fatalf("still bound to %q", got)
			}
			// A 3PID the session did not prove: refused.
			h.Post(t, apitest.V2+"/3pid/unbind", carla.Token, map[string]any{"sid": s.SID, "client_secret": s.ClientSecret,
				"mxid": carla.MXID, "threepid": map[string]string{"medium": "uzi", "address": deziArts.DeziNummer}}).
				Want(t, http.StatusForbidden, "M_FORBIDDEN")
		})

		t.Run("DeziWithPendingInvite", func(t *testing.T) {
			bob := h.NewUser(t, "bob")
			h.Post(t, apitest.V2+"/store-invite", bob.Token, map[string]any{"medium": "uzi", "address": deziArts.DeziNummer,
				"room_id": "!zorgteam:hs.test", "sender": bob.MXID}).Want(t, http.StatusOK, "")
			arts := h.NewUser(t, "arts")
			s, b, redirect := w.start(t, arts, "dezi")
			wantPage(t, w.callback(t, b, w.dezi.Login(t, redirect, deziArts.DeziNummer)), http.StatusOK, "Identiteit bevestigd")
			w.bind(t, arts, s).Want(t, http.StatusOK, "")
			if got := h.LookupOne(t, bob, "uzi", deziArts.DeziNummer); got != arts.MXID {
				t.Fatalf("v2 lookup by uzi: %q, want %s", got, arts.MXID)
			}
			deadline := time.After(apitest.MailWait)
			for {
				delivered := false
				for _, ob := range h.HS.Delivered() {
					if strings.Contains(string(ob.Body), deziArts.DeziNummer) && strings.Contains(string(ob.Body), "!zorgteam:hs.test") {
						delivered = true
					}
				}
				if delivered {
					break
				}
				select {
				case <-h.HS.Notify():
				case <-deadline:
					t.Fatal("the pending invite for the proven UZI number was not delivered")
				}
			}
		})

		t.Run("AuditRecords", func(t *testing.T) {
			// Each login is recorded with the session it validated, under the IdP's subject on
			// behalf of the account; the replayed callback is recorded as a refused login.
			h.App.Lookups.Flush(t.Context())
			recs := auditRecords(t, h)
			logins := map[string]audit.Record{}
			failures := 0
			for _, r := range recs {
				switch r.Action {
				case audit.ActionLogin:
					logins[r.Actor.ID] = r
				case audit.ActionLoginFailure:
					if r.Resource == "idp zkh" && strings.Contains(r.Detail, "reason=") {
						failures++
					}
				}
			}
			alice, jan := logins["umcx:alice"], logins["zkh:u-7"]
			if alice.Actor.Kind != audit.AgentIdP || alice.Medium != "idp" || alice.Address != "umcx:alice" ||
				!strings.HasPrefix(alice.OnBehalfOf, "@alice:") || jan.Address != "zkh:u-7" || failures == 0 {
				t.Fatalf("login records %+v, %d refused at zkh", logins, failures)
			}
			if _, err := h.App.VerifyAudit(t.Context(), nil); err != nil {
				t.Fatal(err)
			}
		})
	})
}

// TestSSOHostile: refused logins validate nothing and bind nothing; earlier bindings stay.
func TestSSOHostile(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, engine sqlstore.Engine) {
		w := newSSOWorld(t, engine)
		h := w.h
		alice := h.NewUser(t, "alice")
		email := h.Bind(t, alice, "alice@example.org")

		notValidated := func(t *testing.T, s apitest.Session) {
			t.Helper()
			r := h.Get(t, apitest.V2+"/3pid/getValidated3pid?"+url.Values{"sid": {s.SID}, "client_secret": {s.ClientSecret}}.Encode(), alice.Token)
			if r.Status == http.StatusOK {
				t.Fatalf("session validated: %s", r.Body)
			}
			w.bind(t, alice, s).Want(t, r.Status, r.Errcode())
		}
		intact := func(t *testing.T) {
			t.Helper()
			if got := h.LookupOne(t, alice, "email", "alice@example.org"); got != alice.MXID || email["mxid"] != alice.MXID {
				t.Fatalf("earlier binding lost: %q", got)
			}
			for _, u := range []string{deziArts.DeziNummer, deziLaag.DeziNummer, "900000025"} {
				if got := h.LookupOne(t, alice, "uzi", u); got != "" {
					t.Fatalf("uzi %s bound to %s by a refused login", u, got)
				}
			}
		}

		t.Run("SAMLWrongAudienceThenReplay", func(t *testing.T) {
			s, b, redirect := w.start(t, alice, "umcx")
			w.umcx.Misbehave(func(req *crewsaml.IdpAuthnRequest) {
				req.Assertion.Conditions.AudienceRestrictions[0].Audience.Value = "https://other-sp.example/metadata"
			})
			page, _ := w.samlLogin(t, b, w.umcx, redirect, "alice")
			w.umcx.Misbehave(nil)
			wantPage(t, page, http.StatusBadRequest, "niets gekoppeld")
			notValidated(t, s)
			// A genuine response replayed after its login completed.
			_, b, redirect = w.start(t, alice, "umcx")
			page, form := w.samlLogin(t, b, w.umcx, redirect, "alice")
			wantPage(t, page, http.StatusOK, "Identiteit bevestigd")
			wantPage(t, w.postACS(t, b, h.URL+"/_ozo/v1/sso/umcx/acs", form), http.StatusBadRequest, "verlopen of al gebruikt")
			intact(t)
		})

		t.Run("DeziHostile", func(t *testing.T) {
			for name, tamper := range map[string]dezitest.Tamper{
				"jku outside the allow-list": {JKU: w.dezi.EvilJKU()},
				"verklaring for another":     {DeziNummer: deziLaag.DeziNummer},
			} {
				w.dezi.Misbehave(tamper)
				s, b, redirect := w.start(t, alice, "dezi")
				wantPage(t, w.callback(t, b, w.dezi.Login(t, redirect, deziArts.DeziNummer)), http.StatusBadRequest, "niets gekoppeld")
				notValidated(t, s)
				if t.Failed() {
					t.Fatalf("%s", name)
				}
			}
			w.dezi.Misbehave(dezitest.Tamper{})
			s, b, redirect := w.start(t, alice, "dezi")
			wantPage(t, w.callback(t, b, w.dezi.Login(t, redirect, deziLaag.DeziNummer)), http.StatusBadRequest, "niets gekoppeld")
			notValidated(t, s)
			intact(t)
		})

		t.Run("OIDCAlgNone", func(t *testing.T) {
			w.op.TamperIDToken(func(tok string) string {
				parts := strings.Split(tok, ".")
				return "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0." + parts[1] + "."
			})
			defer w.op.TamperIDToken(nil)
			s, b, redirect := w.start(t, alice, "zkh")
			wantPage(t, w.callback(t, b, w.op.Login(t, redirect, "jan", "welkom01")), http.StatusBadRequest, "niets gekoppeld")
			notValidated(t, s)
			intact(t)
		})

		t.Run("BindByAnotherUser", func(t *testing.T) {
			// Alice's login link, completed and then bound by Bob: refused.
			s, b, redirect := w.start(t, alice, "umcx")
			page, _ := w.samlLogin(t, b, w.umcx, redirect, "alice")
			wantPage(t, page, http.StatusOK, "Identiteit bevestigd")
			bob := h.NewUser(t, "bob")
			w.bind(t, bob, s).Want(t, http.StatusForbidden, "M_FORBIDDEN")
			intact(t)
		})

		t.Run("Start", func(t *testing.T) {
			h.Post(t, "/_ozo/v1/validate/sso/start", alice.Token, map[string]any{"client_secret": apitest.Secret(), "idp": "nope"}).
				Want(t, http.StatusBadRequest, "M_INVALID_PARAM")
			h.Post(t, "/_ozo/v1/validate/sso/start", "", map[string]any{"client_secret": apitest.Secret(), "idp": "umcx"}).
				Want(t, http.StatusUnauthorized, "M_UNAUTHORIZED")
			h.Post(t, "/_ozo/v1/validate/sso/start", alice.Token, map[string]any{"client_secret": apitest.Secret(), "idp": "umcx",
				"next_link": "https://evil.example/"}).Want(t, http.StatusBadRequest, "M_INVALID_PARAM")
			wantPage(t, h.Get(t, "/_ozo/v1/sso/zkh/callback?state=forged&code=x", ""), http.StatusBadRequest, "verlopen of al gebruikt")
		})

		t.Run("StartsThrottled", func(t *testing.T) {
			eve := h.NewUser(t, "eve")
			for i := range 11 {
				r := h.Post(t, "/_ozo/v1/validate/sso/start", eve.Token, map[string]any{"client_secret": apitest.Secret(), "idp": "umcx"})
				if i < 10 {
					r.Want(t, http.StatusOK, "")
				} else {
					r.Want(t, http.StatusTooManyRequests, "M_LIMIT_EXCEEDED")
				}
			}
		})

		t.Run("LoginLinkForwarded", func(t *testing.T) {
			// Mallory starts a login with her token and sends the page to Alice: Alice sees
			// Mallory's account named; and a login Mallory's browser chose, finished in Alice's
			// browser, validates nothing.
			mallory := h.NewUser(t, "mallory")
			s := apitest.Session{ClientSecret: apitest.Secret()}
			r := h.Post(t, "/_ozo/v1/validate/sso/start", mallory.Token, map[string]any{"client_secret": s.ClientSecret, "idp": "dezi"}).
				Want(t, http.StatusOK, "")
			s.SID = r.Str(t, "sid")
			malloryBrowser, aliceBrowser := w.newBrowser(), w.newBrowser()
			wantPage(t, do(t, malloryBrowser, http.MethodGet, r.Str(t, "redirect_url"), nil), http.StatusOK, mallory.MXID)
			// The login page a second time, in Alice's browser: refused.
			wantPage(t, do(t, aliceBrowser, http.MethodGet, r.Str(t, "redirect_url"), nil), http.StatusBadRequest, "andere browser")
			// Choosing from another browser (its own CSRF token, the handle learnt): refused, and
			// the login stays usable for the browser that claimed it.
			own := h.Post(t, "/_ozo/v1/validate/sso/start", alice.Token, map[string]any{"client_secret": apitest.Secret()}).
				Want(t, http.StatusOK, "")
			tok := csrfInput.FindSubmatch(do(t, aliceBrowser, http.MethodGet, own.Str(t, "redirect_url"), nil).Body)
			if tok == nil {
				t.Fatal("no CSRF token for the second browser")
			}
			lu, _ := url.Parse(r.Str(t, "redirect_url"))
			wantPage(t, do(t, aliceBrowser, http.MethodPost, h.URL+web.SSOLoginPath, url.Values{"csrf_token": {string(tok[1])},
				"login": {lu.Query().Get("login")}, "idp": {"dezi"}}), http.StatusBadRequest, "andere browser")
			redirect := w.choose(t, malloryBrowser, r.Str(t, "redirect_url"), mallory, "dezi")
			// Once chosen, the login page is used up.
			wantPage(t, do(t, aliceBrowser, http.MethodGet, r.Str(t, "redirect_url"), nil), http.StatusBadRequest, "verlopen of al gebruikt")
			cb := w.dezi.Login(t, redirect, deziArts.DeziNummer)
			wantPage(t, w.callback(t, aliceBrowser, cb), http.StatusBadRequest, "andere browser")
			h.Get(t, apitest.V2+"/3pid/getValidated3pid?"+url.Values{"sid": {s.SID}, "client_secret": {s.ClientSecret}}.Encode(), mallory.Token).
				Want(t, http.StatusNotFound, "M_NO_VALID_SESSION")
			if got := h.LookupOne(t, mallory, "uzi", deziArts.DeziNummer); got != "" {
				t.Fatalf("a forwarded login bound the UZI number to %s", got)
			}
			intact(t)
		})

		t.Run("ChooserByURA", func(t *testing.T) {
			// Without idp the practitioner picks their organisation, found by URA.
			r := h.Post(t, "/_ozo/v1/validate/sso/start", alice.Token, map[string]any{"client_secret": apitest.Secret()}).
				Want(t, http.StatusOK, "")
			b := w.newBrowser()
			page := do(t, b, http.MethodGet, r.Str(t, "redirect_url")+"&q=1234", nil)
			wantPage(t, page, http.StatusOK, "Ziekenhuis")
			if strings.Contains(string(page.Body), "UMCX") {
				t.Fatalf("the search for URA 1234… lists UMCX:\n%s", page.Body)
			}
		})
	})
}

// TestSSOBeatsDirectory: a UZI number proven through Dezi and bound wins over the care
// provider's directory entry for it (design.md §7: proven bindings beat any directory).
func TestSSOBeatsDirectory(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, engine sqlstore.Engine) {
		srv := mcsdtest.Start(t, mcsdtest.Options{Homeservers: map[string]string{"hs1": "hs1.ozo.test", "hs2": "hs2.ozo.test"}})
		ca := directoryCA(t, srv)
		w := newSSOWorld(t, engine, func(c *config.Config) {
			c.Directory.LRZAURL = srv.LRZAURL()
			c.Directory.AllowedNetworks = []string{"127.0.0.0/8"}
			c.Directory.CAFile = ca
			c.Directory.SyncInterval = 0
		})
		h := w.h
		publishPractitioner(t, srv.Directory(gpDir), "arts", "hp-de-linde", deziArts.DeziNummer, "matrix:u/arts.directory:hs-a.example")
		syncAll(t, h)
		arts := h.NewUser(t, "arts")
		if got := h.LookupOne(t, arts, "uzi", deziArts.DeziNummer); got != "@arts.directory:hs-a.example" {
			t.Fatalf("before the login the directory answers: %q", got)
		}
		s, b, redirect := w.start(t, arts, "dezi")
		wantPage(t, w.callback(t, b, w.dezi.Login(t, redirect, deziArts.DeziNummer)), http.StatusOK, "Identiteit bevestigd")
		w.bind(t, arts, s).Want(t, http.StatusOK, "")
		if got := h.LookupOne(t, arts, "uzi", deziArts.DeziNummer); got != arts.MXID {
			t.Fatalf("after the login: %q, want the proven binding %s", got, arts.MXID)
		}
	})
}

// TestSSOIdPUnavailableAtStart: an IdP whose metadata cannot be fetched when the service starts
// is left out (and logged); the service and the other IdPs work.
func TestSSOIdPUnavailableAtStart(t *testing.T) {
	t.Parallel()
	idp := samltest.New(t)
	caFile := filepath.Join(t.TempDir(), "idp-ca.pem")
	os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: idp.Server.Certificate().Raw}), 0o600)
	h := apitest.New(t, sqlstore.SQLite, func(c *config.Config) {
		c.SSO.CAFile = caFile
		down := config.IdP{ID: "down", Type: "saml"}
		down.SAML.MetadataURL = "https://127.0.0.1:1/metadata"
		up := config.IdP{ID: "up", Type: "saml"}
		up.SAML.MetadataURL = idp.MetadataURL()
		c.SSO.IdPs = []config.IdP{down, up}
	})
	u := h.NewUser(t, "alice")
	h.Post(t, "/_ozo/v1/validate/sso/start", u.Token, map[string]any{"client_secret": apitest.Secret(), "idp": "down"}).
		Want(t, http.StatusBadRequest, "M_INVALID_PARAM")
	h.Post(t, "/_ozo/v1/validate/sso/start", u.Token, map[string]any{"client_secret": apitest.Secret(), "idp": "up"}).
		Want(t, http.StatusOK, "")
	if !strings.Contains(h.Logs(), `msg="identity provider left out" component=sso idp=down`) {
		t.Fatalf("the left-out IdP is not logged:\n%s", h.Logs())
	}
}
