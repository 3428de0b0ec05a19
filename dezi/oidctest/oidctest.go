// Package oidctest runs a real OpenID Provider in process for tests: zitadel/oidc's example OP
// (discovery, authorize with PKCE, a login form, token, userinfo, JWKS) on a TLS test server,
// with a hook that rewrites the ID token on its way out, as a hostile network or IdP would.
package oidctest

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/zitadel/oidc/v3/example/server/exampleop"
	"github.com/zitadel/oidc/v3/example/server/storage"
)

// User is a person who can log in at the OP.
type User struct {
	ID, Username, Password, FirstName, LastName, Email string
	EmailVerified                                      bool
}

// OP is a running OpenID Provider.
type OP struct {
	Server *httptest.Server
	Issuer string

	mu     sync.Mutex
	tamper func(idToken string) string
}

// New starts an OP with one confidential client (PKCE allowed) and users.
func New(t testing.TB, clientID, clientSecret, redirectURI string, users ...User) *OP {
	t.Helper()
	op := &OP{}
	op.Server = httptest.NewUnstartedServer(nil)
	op.Server.StartTLS()
	t.Cleanup(op.Server.Close)
	op.Issuer = op.Server.URL

	// The example's user store reads users from a JSON file.
	byID := map[string]storage.User{}
	for _, u := range users {
		byID[u.ID] = storage.User{ID: u.ID, Username: u.Username, Password: u.Password, FirstName: u.FirstName,
			LastName: u.LastName, Email: u.Email, EmailVerified: u.EmailVerified}
	}
	data, _ := json.Marshal(byID)
	path := filepath.Join(t.TempDir(), "users.json")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	us, err := storage.StoreFromFile(path)
	if err != nil {
		t.Fatal(err)
	}
	st := storage.NewStorageWithClients(us, map[string]*storage.Client{
		clientID: storage.WebClient(clientID, clientSecret, redirectURI),
	})
	router := exampleop.SetupServer(op.Issuer, st, nil, false)
	op.Server.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		op.mu.Lock()
		tamper := op.tamper
		op.mu.Unlock()
		if tamper == nil || r.URL.Path != "/oauth/token" {
			router.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		router.ServeHTTP(rec, r)
		body := rec.Body.Bytes()
		var tok map[string]any
		if rec.Code == http.StatusOK && json.Unmarshal(body, &tok) == nil {
			if id, ok := tok["id_token"].(string); ok {
				tok["id_token"] = tamper(id)
				body, _ = json.Marshal(tok)
			}
		}
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.Header().Del("Content-Length")
		w.WriteHeader(rec.Code)
		w.Write(body)
	})
	return op
}

// TamperIDToken rewrites every following ID token the token endpoint returns (nil: stop).
func (op *OP) TamperIDToken(f func(idToken string) string) {
	op.mu.Lock()
	op.tamper = f
	op.mu.Unlock()
}

// Browser is an HTTP client that trusts the OP's certificate, keeps cookies and stops at the
// first redirect away from the OP (to the relying party's callback).
func (op *OP) Browser() *http.Client {
	c := op.Server.Client()
	c.Jar, _ = cookiejar.New(nil)
	opURL, _ := url.Parse(op.Server.URL)
	c.CheckRedirect = func(req *http.Request, _ []*http.Request) error {
		if req.URL.Host != opURL.Host {
			return http.ErrUseLastResponse
		}
		return nil
	}
	return c
}

var idInput = regexp.MustCompile(`name="id" value="([^"]*)"`)

// Login follows loginURL, fills in the OP's login form and returns the callback URL the OP
// redirects the browser to (with code and state, or error).
func (op *OP) Login(t testing.TB, loginURL, username, password string) *url.URL {
	t.Helper()
	b := op.Browser()
	resp, err := b.Get(loginURL)
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	m := idInput.FindSubmatch(page)
	if m == nil {
		t.Fatalf("no login form at the OP: %s %s", resp.Status, page)
	}
	form := url.Values{"id": {string(m[1])}, "username": {username}, "password": {password}}
	resp, err = b.PostForm(op.Server.URL+"/login/username", form)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	loc, err := resp.Location()
	if errors.Is(err, http.ErrNoLocation) {
		t.Fatalf("the OP did not redirect back: %s %s", resp.Status, bytes.TrimSpace(body))
	}
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(loc.RawQuery, "state=") {
		t.Fatalf("callback without state: %s", loc)
	}
	return loc
}
