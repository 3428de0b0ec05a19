// Package samltest runs a real SAML 2.0 IdP in process (crewjam/saml/samlidp) for tests: users
// with passwords, a login form, signed (and, for SPs with an encryption key, encrypted) assertions,
// and hooks that make it misbehave the way a hostile or broken IdP would.
package samltest

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/xml"
	"fmt"
	"html"
	"html/template"
	"io"
	"math/big"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	crewsaml "github.com/crewjam/saml"
	"github.com/crewjam/saml/samlidp"
	"golang.org/x/crypto/bcrypt"
)

// IdP is a running SAML identity provider.
type IdP struct {
	Server *httptest.Server
	// Key and Cert sign the IdP's assertions and responses.
	Key  *rsa.PrivateKey
	Cert *x509.Certificate
	idp  *samlidp.Server

	mu     sync.Mutex
	mutate func(req *crewsaml.IdpAuthnRequest)
	attrs  map[string][]crewsaml.Attribute // extra attributes per user
}

// loginForm posts the credentials back to /sso with the request, so the login completes in one
// round trip (samlidp's default form posts to /login, which only answers JSON).
var loginForm = template.Must(template.New("login").Parse(`<!doctype html>
<html lang="nl"><head><meta charset="utf-8"><title>Inloggen bij de testzorgaanbieder</title></head>
<body><main><h1>Inloggen bij de testzorgaanbieder</h1>
{{if .Toast}}<p role="alert">{{.Toast}}</p>{{end}}
<form method="post" action="sso">
<p><label for="user">Gebruikersnaam</label> <input id="user" type="text" name="user" autocomplete="username"></p>
<p><label for="password">Wachtwoord</label> <input id="password" type="password" name="password" autocomplete="current-password"></p>
<input type="hidden" name="SAMLRequest" value="{{.SAMLRequest}}">
<input type="hidden" name="RelayState" value="{{.RelayState}}">
<p><button type="submit">Inloggen</button></p>
</form></main></body></html>`))

// New starts an IdP on a TLS test server.
func New(t testing.TB) *IdP {
	t.Helper()
	key, cert := KeyPair(t, "samltest idp")
	p := &IdP{Key: key, Cert: cert, attrs: map[string][]crewsaml.Attribute{}}
	p.Server = httptest.NewUnstartedServer(nil)
	p.Server.StartTLS()
	t.Cleanup(p.Server.Close)
	u, _ := url.Parse(p.Server.URL)
	srv, err := samlidp.New(samlidp.Options{URL: *u, Key: key, Signer: key, Certificate: cert,
		Store: &samlidp.MemoryStore{}, LoginFormTemplate: loginForm, Logger: quietLogger{}})
	if err != nil {
		t.Fatal(err)
	}
	srv.IDP.AssertionMaker = p
	p.idp = srv
	p.Server.Config.Handler = srv
	return p
}

type quietLogger struct{}

func (quietLogger) Printf(string, ...any) {}
func (quietLogger) Print(...any)          {}
func (quietLogger) Println(...any)        {}
func (quietLogger) Fatal(...any)          {}
func (quietLogger) Fatalf(string, ...any) {}
func (quietLogger) Fatalln(...any)        {}
func (quietLogger) Panic(...any)          {}
func (quietLogger) Panicf(string, ...any) {}
func (quietLogger) Panicln(...any)        {}

// KeyPair makes an RSA key and a self-signed certificate.
func KeyPair(t testing.TB, cn string) (*rsa.PrivateKey, *x509.Certificate) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return key, cert
}

// MetadataURL is where the IdP publishes its metadata.
func (p *IdP) MetadataURL() string { return p.Server.URL + "/metadata" }

// Client trusts the IdP's test certificate and keeps cookies, like a browser.
func (p *IdP) Client() *http.Client {
	c := p.Server.Client()
	c.Jar, _ = cookiejar.New(nil)
	return c
}

// AddUser adds a user; email is asserted as the NameID and "email" attribute; attrs are extra
// attributes (for example a UZI number).
func (p *IdP) AddUser(t testing.TB, name, password, email string, attrs map[string]string) {
	t.Helper()
	hash, _ := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err := p.idp.Store.Put("/users/"+name, samlidp.User{Name: name, HashedPassword: hash, Email: email,
		CommonName: name, GivenName: name, Surname: "Test"}); err != nil {
		t.Fatal(err)
	}
	var extra []crewsaml.Attribute
	for k, v := range attrs {
		extra = append(extra, crewsaml.Attribute{Name: k, NameFormat: "urn:oasis:names:tc:SAML:2.0:attrname-format:basic",
			Values: []crewsaml.AttributeValue{{Type: "xs:string", Value: v}}})
	}
	p.mu.Lock()
	p.attrs[name] = extra
	p.mu.Unlock()
}

// RegisterSP tells the IdP about a service provider by its metadata. With plain, the SP's
// encryption keys are left out, so its assertions travel unencrypted (tests that tamper with them).
func (p *IdP) RegisterSP(t testing.TB, name string, md *crewsaml.EntityDescriptor, plain bool) {
	t.Helper()
	if plain {
		c := *md
		c.SPSSODescriptors = append([]crewsaml.SPSSODescriptor(nil), md.SPSSODescriptors...)
		for i := range c.SPSSODescriptors {
			var keep []crewsaml.KeyDescriptor
			for _, k := range c.SPSSODescriptors[i].KeyDescriptors {
				if k.Use != "encryption" {
					keep = append(keep, k)
				}
			}
			c.SPSSODescriptors[i].KeyDescriptors = keep
		}
		md = &c
	}
	body, err := xml.Marshal(md)
	if err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest(http.MethodPut, "/services/"+name, bytes.NewReader(body))
	req.SetPathValue("id", name)
	w := httptest.NewRecorder()
	p.idp.HandlePutService(w, req)
	if w.Code != http.StatusNoContent {
		t.Fatalf("register SP: %d %s", w.Code, w.Body)
	}
}

// Misbehave makes every following assertion pass through f after it is made and before it is
// signed (nil: behave again).
func (p *IdP) Misbehave(f func(req *crewsaml.IdpAuthnRequest)) {
	p.mu.Lock()
	p.mutate = f
	p.mu.Unlock()
}

// MakeAssertion implements crewsaml.AssertionMaker: the default assertion, the user's extra
// attributes, then the misbehaviour.
func (p *IdP) MakeAssertion(req *crewsaml.IdpAuthnRequest, session *crewsaml.Session) error {
	if err := (crewsaml.DefaultAssertionMaker{}).MakeAssertion(req, session); err != nil {
		return err
	}
	p.mu.Lock()
	extra, f := p.attrs[session.UserName], p.mutate
	p.mu.Unlock()
	if len(extra) > 0 {
		if len(req.Assertion.AttributeStatements) == 0 {
			req.Assertion.AttributeStatements = []crewsaml.AttributeStatement{{}}
		}
		st := &req.Assertion.AttributeStatements[0]
		st.Attributes = append(st.Attributes, extra...)
	}
	// samlidp names the IdP by its metadata URL in the response; the assertion must agree.
	if f != nil {
		f(req)
	}
	return nil
}

var inputRe = regexp.MustCompile(`<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"`)

// Form reads the hidden inputs and the action of the first form in an HTML page.
func Form(page string) (action string, values url.Values) {
	values = url.Values{}
	for _, m := range inputRe.FindAllStringSubmatch(page, -1) {
		values.Set(html.UnescapeString(m[1]), html.UnescapeString(m[2]))
	}
	if m := regexp.MustCompile(`<form[^>]*action="([^"]*)"`).FindStringSubmatch(page); m != nil {
		action = html.UnescapeString(m[1])
	}
	return action, values
}

// Login follows redirectURL as a browser would, fills in the login form and returns the
// auto-posting form the IdP answers with: its action (the SP's ACS), SAMLResponse and RelayState.
func (p *IdP) Login(t testing.TB, client *http.Client, redirectURL, user, password string) (acs string, form url.Values) {
	t.Helper()
	resp, err := client.Get(redirectURL)
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("IdP login page: %s: %s", resp.Status, page)
	}
	_, vals := Form(string(page))
	vals.Set("user", user)
	vals.Set("password", password)
	resp, err = client.PostForm(p.Server.URL+"/sso", vals)
	if err != nil {
		t.Fatal(err)
	}
	page, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(page), "SAMLResponse") {
		t.Fatalf("IdP login: %s: %s", resp.Status, page)
	}
	acs, form = Form(string(page))
	if form.Get("SAMLResponse") == "" {
		t.Fatalf("no SAMLResponse in %s", page)
	}
	return acs, form
}

// String describes the IdP in test failures.
func (p *IdP) String() string { return fmt.Sprintf("samltest IdP at %s", p.Server.URL) }
