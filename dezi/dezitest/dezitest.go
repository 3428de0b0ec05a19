// Package dezitest is a Dezi stand-in for tests. Dezi is a national service without a public
// test instance, so this speaks its protocol as dezi/doc.go describes it: OIDC discovery,
// authorize with PKCE S256 and a login page, token, a userinfo that is a JWE around a JWS, a
// JWKS for the OP and another one behind the verklaring's jku, and realistic verklaring JWTs.
package dezitest

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"html"
	"html/template"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwe"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"
	"github.com/lestrrat-go/jwx/v2/jwt"
)

// Professional is a care professional registered in the stand-in's Dezi register.
type Professional struct {
	DeziNummer    string // 9 digits
	Voorletters   string
	Voorvoegsel   string
	Achternaam    string
	AbonneeNummer string // URA of the care provider they act for
	AbonneeNaam   string
	RolCode       string // UZI role code, e.g. 01.015 (huisarts)
	LoA           string // loa_dezi
}

// Tamper makes the stand-in misbehave.
type Tamper struct {
	// JKU replaces the verklaring's jku; the verklaring is then signed with the key served there
	// (the stand-in also serves an attacker's JWKS at /evil/jwks.json).
	JKU string
	// DeziNummer puts another number in the verklaring than in the userinfo.
	DeziNummer string
	// LoA replaces loa_dezi in the verklaring.
	LoA string
	// Expired issues a verklaring that expired an hour ago.
	Expired bool
}

// Server is a running Dezi stand-in.
type Server struct {
	Server   *httptest.Server
	Issuer   string
	ClientID string
	secret   string
	redirect string
	rpKey    *rsa.PublicKey // the relying party's encryption key; nil: userinfo only signed
	opKey    jwk.Key
	vKey     jwk.Key // verklaring signing key (behind the jku)
	evilKey  jwk.Key

	mu      sync.Mutex
	users   []Professional
	pending map[string]authz // code → authorization
	tokens  map[string]authz // access token → authorization
	tamper  Tamper
}

type authz struct {
	user                          Professional
	nonce, challenge, redirectURI string
	expires                       time.Time
}

// New starts the stand-in with one registered relying party. rpKey is the key the userinfo is
// encrypted to (nil: a signed-only userinfo, as in acceptance environments).
func New(t testing.TB, clientID, clientSecret, redirectURI string, rpKey *rsa.PublicKey, users ...Professional) *Server {
	t.Helper()
	s := &Server{ClientID: clientID, secret: clientSecret, redirect: redirectURI, rpKey: rpKey, users: users,
		pending: map[string]authz{}, tokens: map[string]authz{}}
	s.opKey, s.vKey, s.evilKey = newKey(t, "dezi-op-"), newKey(t, "dezi-verklaring-"), newKey(t, "dezi-verklaring-")
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", s.discovery)
	mux.HandleFunc("GET /authorize", s.authorize)
	mux.HandleFunc("POST /authorize", s.login)
	mux.HandleFunc("POST /token", s.token)
	mux.HandleFunc("GET /userinfo", s.userinfo)
	mux.HandleFunc("GET /jwks", jwks(s.opKey))
	mux.HandleFunc("GET /verklaring/jwks.json", jwks(s.vKey))
	mux.HandleFunc("GET /evil/jwks.json", jwks(s.evilKey))
	s.Server = httptest.NewTLSServer(mux)
	t.Cleanup(s.Server.Close)
	s.Issuer = s.Server.URL
	return s
}

func newKey(t testing.TB, prefix string) jwk.Key {
	raw, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	k, err := jwk.FromRaw(raw)
	if err != nil {
		t.Fatal(err)
	}
	k.Set(jwk.KeyIDKey, prefix+rand.Text()[:8])
	k.Set(jwk.AlgorithmKey, jwa.RS256)
	k.Set(jwk.KeyUsageKey, "sig")
	return k
}

func jwks(k jwk.Key) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		pub, _ := k.PublicKey()
		set := jwk.NewSet()
		set.AddKey(pub)
		w.Header().Set("Content-Type", "application/jwk-set+json")
		json.NewEncoder(w).Encode(set)
	}
}

// JKU is the genuine URL of the verklaring keys, for the relying party's allow-list.
func (s *Server) JKU() string { return s.Server.URL + "/verklaring/jwks.json" }

// Misbehave sets how following logins misbehave (the zero Tamper: behave).
func (s *Server) Misbehave(t Tamper) {
	s.mu.Lock()
	s.tamper = t
	s.mu.Unlock()
}

func (s *Server) discovery(w http.ResponseWriter, _ *http.Request) {
	u := s.Server.URL
	doc := map[string]any{
		"issuer": s.Issuer, "authorization_endpoint": u + "/authorize", "token_endpoint": u + "/token",
		"userinfo_endpoint": u + "/userinfo", "jwks_uri": u + "/jwks",
		"response_types_supported": []string{"code"}, "grant_types_supported": []string{"authorization_code"},
		"subject_types_supported": []string{"pairwise"}, "id_token_signing_alg_values_supported": []string{"RS256"},
		"code_challenge_methods_supported":         []string{"S256"},
		"token_endpoint_auth_methods_supported":    []string{"client_secret_basic", "client_secret_post"},
		"userinfo_signing_alg_values_supported":    []string{"RS256"},
		"userinfo_encryption_alg_values_supported": []string{"RSA-OAEP-256"},
		"userinfo_encryption_enc_values_supported": []string{"A256GCM"},
		"scopes_supported":                         []string{"openid", "profile"},
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(doc)
}

var loginPage = template.Must(template.New("login").Parse(`<!doctype html>
<html lang="nl"><head><meta charset="utf-8"><title>Inloggen met Dezi (testomgeving)</title></head>
<body><main><h1>Inloggen met Dezi (testomgeving)</h1>
<form method="post" action="/authorize">
<fieldset><legend>Kies uw zorgidentiteit</legend>
{{range $i, $u := .Users}}<p><input type="radio" id="u{{$i}}" name="dezi_nummer" value="{{$u.DeziNummer}}"{{if eq $i 0}} checked{{end}}>
<label for="u{{$i}}">{{$u.Voorletters}} {{$u.Voorvoegsel}} {{$u.Achternaam}} ({{$u.AbonneeNaam}})</label></p>
{{end}}</fieldset>
{{range $k, $v := .Params}}<input type="hidden" name="{{$k}}" value="{{$v}}">
{{end}}<p><button type="submit">Inloggen</button></p>
</form></main></body></html>`))

func (s *Server) authorize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	switch {
	case q.Get("client_id") != s.ClientID:
		http.Error(w, "unknown client_id", http.StatusBadRequest)
		return
	case q.Get("redirect_uri") != s.redirect:
		http.Error(w, "redirect_uri is not registered", http.StatusBadRequest)
		return
	case q.Get("response_type") != "code" || q.Get("code_challenge_method") != "S256" || q.Get("code_challenge") == "" ||
		q.Get("state") == "" || q.Get("nonce") == "" || !strings.Contains(" "+q.Get("scope")+" ", " openid "):
		redirectError(w, r, s.redirect, q.Get("state"), "invalid_request")
		return
	}
	params := map[string]string{}
	for _, k := range []string{"state", "nonce", "code_challenge", "redirect_uri"} {
		params[k] = q.Get(k)
	}
	s.mu.Lock()
	users := append([]Professional(nil), s.users...)
	s.mu.Unlock()
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	loginPage.Execute(w, map[string]any{"Users": users, "Params": params})
}

func redirectError(w http.ResponseWriter, r *http.Request, redirect, state, code string) {
	http.Redirect(w, r, redirect+"?"+url.Values{"error": {code}, "state": {state}}.Encode(), http.StatusFound)
}

func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil || r.PostForm.Get("redirect_uri") != s.redirect {
		http.Error(w, "bad login form", http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var user *Professional
	for i := range s.users {
		if s.users[i].DeziNummer == r.PostForm.Get("dezi_nummer") {
			user = &s.users[i]
		}
	}
	if user == nil {
		redirectError(w, r, s.redirect, r.PostForm.Get("state"), "access_denied")
		return
	}
	code := rand.Text()
	s.pending[code] = authz{user: *user, nonce: r.PostForm.Get("nonce"), challenge: r.PostForm.Get("code_challenge"),
		redirectURI: s.redirect, expires: time.Now().Add(time.Minute)}
	http.Redirect(w, r, s.redirect+"?"+url.Values{"code": {code}, "state": {r.PostForm.Get("state")}}.Encode(), http.StatusFound)
}

func tokenError(w http.ResponseWriter, code string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusBadRequest)
	json.NewEncoder(w).Encode(map[string]string{"error": code})
}

func (s *Server) token(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		tokenError(w, "invalid_request")
		return
	}
	id, secret, ok := r.BasicAuth()
	if !ok {
		id, secret = r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	}
	if id != s.ClientID || secret != s.secret {
		tokenError(w, "invalid_client")
		return
	}
	s.mu.Lock()
	a, ok := s.pending[r.PostForm.Get("code")]
	delete(s.pending, r.PostForm.Get("code")) // a code works once
	s.mu.Unlock()
	sum := sha256.Sum256([]byte(r.PostForm.Get("code_verifier")))
	switch {
	case !ok || time.Now().After(a.expires) || r.PostForm.Get("grant_type") != "authorization_code":
		tokenError(w, "invalid_grant")
		return
	case r.PostForm.Get("redirect_uri") != a.redirectURI:
		tokenError(w, "invalid_grant")
		return
	case base64.RawURLEncoding.EncodeToString(sum[:]) != a.challenge:
		tokenError(w, "invalid_grant")
		return
	}
	now := time.Now()
	idt := jwt.New()
	for k, v := range map[string]any{"iss": s.Issuer, "aud": s.ClientID, "sub": s.subject(a.user), "nonce": a.nonce,
		"iat": now, "exp": now.Add(5 * time.Minute), "jti": rand.Text(), "acr": a.user.LoA, "auth_time": now.Unix()} {
		idt.Set(k, v)
	}
	signed, err := jwt.Sign(idt, jwt.WithKey(jwa.RS256, s.opKey))
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	access := rand.Text()
	s.mu.Lock()
	a.expires = now.Add(5 * time.Minute)
	s.tokens[access] = a
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	json.NewEncoder(w).Encode(map[string]any{"access_token": access, "token_type": "Bearer", "expires_in": 300, "id_token": string(signed)})
}

// subject is pairwise: stable for this relying party, not the Dezi number itself.
func (s *Server) subject(p Professional) string {
	sum := sha256.Sum256([]byte(s.ClientID + "|" + p.DeziNummer))
	return hex.EncodeToString(sum[:16])
}

func (s *Server) userinfo(w http.ResponseWriter, r *http.Request) {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	s.mu.Lock()
	a, found := s.tokens[tok]
	tamper := s.tamper
	s.mu.Unlock()
	if !ok || !found || time.Now().After(a.expires) {
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		http.Error(w, "invalid token", http.StatusUnauthorized)
		return
	}
	v, err := s.verklaring(a.user, tamper)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	now := time.Now()
	ui := jwt.New()
	for k, val := range map[string]any{"iss": s.Issuer, "aud": s.ClientID, "sub": s.subject(a.user), "iat": now,
		"exp": now.Add(5 * time.Minute), "dezi_nummer": a.user.DeziNummer, "verklaring": v} {
		ui.Set(k, val)
	}
	signed, err := jwt.Sign(ui, jwt.WithKey(jwa.RS256, s.opKey))
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	body := signed
	if s.rpKey != nil {
		hdr := jwe.NewHeaders()
		hdr.Set(jwe.ContentTypeKey, "JWT")
		if body, err = jwe.Encrypt(signed, jwe.WithKey(jwa.RSA_OAEP_256, s.rpKey), jwe.WithContentEncryption(jwa.A256GCM),
			jwe.WithProtectedHeaders(hdr)); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
	}
	w.Header().Set("Content-Type", "application/jwt")
	w.Write(body)
}

// verklaring is the signed statement about p, with its key's location in the jku header.
func (s *Server) verklaring(p Professional, t Tamper) (string, error) {
	now := time.Now()
	if t.Expired {
		now = now.Add(-2 * time.Hour)
	}
	claims := map[string]any{"iss": s.Issuer, "aud": s.ClientID, "iat": now, "nbf": now, "exp": now.Add(time.Hour),
		"jti": rand.Text(), "verklaring_id": rand.Text(),
		"dezi_nummer": p.DeziNummer, "voorletters": p.Voorletters, "voorvoegsel": p.Voorvoegsel, "achternaam": p.Achternaam,
		"abonnee_nummer": p.AbonneeNummer, "abonnee_naam": p.AbonneeNaam, "rol_code": p.RolCode, "loa_dezi": p.LoA}
	if t.DeziNummer != "" {
		claims["dezi_nummer"] = t.DeziNummer
	}
	if t.LoA != "" {
		claims["loa_dezi"] = t.LoA
	}
	v := jwt.New()
	for k, val := range claims {
		v.Set(k, val)
	}
	key, jku := s.vKey, s.JKU()
	if t.JKU != "" {
		key, jku = s.evilKey, t.JKU
	}
	hdr := jws.NewHeaders()
	hdr.Set(jws.JWKSetURLKey, jku)
	hdr.Set(jws.KeyIDKey, key.KeyID())
	hdr.Set(jws.TypeKey, "JWT")
	out, err := jwt.Sign(v, jwt.WithKey(jwa.RS256, key, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		return "", fmt.Errorf("sign verklaring: %w", err)
	}
	return string(out), nil
}

// EvilJKU is a JWKS the stand-in serves with an attacker's key, outside any sane allow-list.
func (s *Server) EvilJKU() string { return s.Server.URL + "/evil/jwks.json" }

// Browser trusts the stand-in's certificate and stops at the redirect back to the relying party.
func (s *Server) Browser() *http.Client {
	c := s.Server.Client()
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return c
}

// Login follows loginURL, picks the professional with deziNummer on the login page and returns
// the callback URL the stand-in redirects to.
func (s *Server) Login(t testing.TB, loginURL, deziNummer string) *url.URL {
	t.Helper()
	b := s.Browser()
	resp, err := b.Get(loginURL)
	if err != nil {
		t.Fatal(err)
	}
	page := new(strings.Builder)
	io.Copy(page, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("Dezi authorize: %s %s", resp.Status, page)
	}
	form := url.Values{"dezi_nummer": {deziNummer}}
	for _, m := range hiddenRe.FindAllStringSubmatch(page.String(), -1) {
		form.Set(html.UnescapeString(m[1]), html.UnescapeString(m[2]))
	}
	resp, err = b.PostForm(s.Server.URL+"/authorize", form)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc, err := resp.Location()
	if err != nil {
		t.Fatalf("Dezi login did not redirect back: %s: %v", resp.Status, err)
	}
	return loc
}

var hiddenRe = regexp.MustCompile(`<input type="hidden" name="([^"]+)" value="([^"]*)">`)
