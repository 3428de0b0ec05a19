// Package apitest runs the whole ozo-identity (app.New on a real database) over HTTPS on
// loopback, with a real SMTP server and a homeserver stand-in, for tests that drive the HTTP API
// the way clients and homeservers do.
package apitest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/app"
	"github.com/ozo-platform/ozo-identity/config"
	"github.com/ozo-platform/ozo-identity/email/smtptest"
	"github.com/ozo-platform/ozo-identity/internal/pkitest"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore/dbtest"
)

// AdminToken is the admin API token of every harness.
const AdminToken = "apitest-admin-token-0123456789"

// MailWait bounds how long a test waits for a mail the service sends.
const MailWait = 10 * time.Second

// Policy URLs configured by default; a user accepts one language of each.
const (
	PrivacyURLEn = "https://ozo.test/privacy-1.0-en.html"
	PrivacyURLNl = "https://ozo.test/privacy-1.0-nl.html"
	TermsURLEn   = "https://ozo.test/terms-2.1-en.html"
)

// ForEachEngine runs fn as a parallel subtest on SQLite and on PostgreSQL. Every harness is
// independent, so the calling test runs in parallel with other tests too.
func ForEachEngine(t *testing.T, fn func(t *testing.T, engine sqlstore.Engine)) {
	t.Helper()
	t.Parallel()
	for _, e := range dbtest.Engines {
		t.Run(string(e), func(t *testing.T) {
			t.Parallel()
			fn(t, e)
		})
	}
}

// Harness is a running ozo-identity with its SMTP server and homeserver stand-in.
type Harness struct {
	Engine sqlstore.Engine
	CA     *pkitest.CA
	Mail   *smtptest.Server
	HS     *Homeserver
	Config config.Config
	App    *app.App
	// URL is the public base URL, https://127.0.0.1:port; it stays the same across restarts.
	URL string
	// Client trusts the test CA and does not follow redirects.
	Client *http.Client

	t    testing.TB
	logs *syncBuffer
	stop func()
}

// New starts ozo-identity on engine with the test configuration, changed by configure.
func New(t testing.TB, engine sqlstore.Engine, configure ...func(*config.Config)) *Harness {
	t.Helper()
	h := &Harness{Engine: engine, t: t, logs: &syncBuffer{}}
	h.CA = pkitest.NewCA(t)
	h.Mail = smtptest.Start(t)
	h.HS = NewHomeserver(t, h.CA)
	h.Client = &http.Client{
		Transport: &http.Transport{TLSClientConfig: h.CA.ClientTLSConfig(), ForceAttemptHTTP2: true},
		Timeout:   90 * time.Second, // a 10,000-address lookup under -race on a busy machine takes tens of seconds
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
	t.Cleanup(h.Client.CloseIdleConnections)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.URL = "https://" + ln.Addr().String()

	cfg := config.Defaults()
	cfg.Listen = ln.Addr().String()
	cfg.DataDir = t.TempDir()
	cfg.Database.URL = dbtest.URL(t, engine)
	cfg.PublicBaseURL = h.URL
	cfg.HTTP.MaxBodyBytes = 16 << 10
	cfg.Lookup.MaxBatch = 50
	cfg.Validation.MaxFailedAttempts = 3
	cfg.Invites.OnBindRetryFor = time.Hour
	cfg.Email.SMTP = config.SMTP{Host: h.Mail.Host, Port: h.Mail.Port, Security: "none"}
	cfg.Email.From = "OZO test <noreply@ozo.test>"
	cfg.Terms.Policies = map[string]config.Policy{
		"privacy_policy": {Version: "1.0", Languages: map[string]config.PolicyLanguage{
			"en": {Name: "Privacy policy", URL: PrivacyURLEn},
			"nl": {Name: "Privacyverklaring", URL: PrivacyURLNl},
		}},
		"terms_of_service": {Version: "2.1", Languages: map[string]config.PolicyLanguage{
			"en": {Name: "Terms of service", URL: TermsURLEn},
		}},
	}
	cfg.Homeservers = config.Homeservers{
		Allowed:         []string{h.HS.Name},
		AllowedNetworks: []string{"127.0.0.0/8", "::1/128"},
		CAFile:          h.CA.CertFile,
		Timeout:         5 * time.Second,
	}
	cfg.Admin.Token = AdminToken
	// Tests make many calls from one address; a test of the limits turns them on.
	cfg.RateLimits = config.RateLimits{}
	for _, fn := range configure {
		fn(&cfg)
	}
	// config.Load validates; so does the harness (it also derives server_name).
	if err := cfg.Validate(); err != nil {
		t.Fatalf("test configuration: %v", err)
	}
	h.Config = cfg
	h.start(ln)
	t.Cleanup(func() {
		h.Stop()
		if t.Failed() {
			t.Logf("ozo-identity log:\n%s", h.logs.tail(150))
		}
	})
	return h
}

// start builds the app on h.Config and serves it on ln until Stop.
func (h *Harness) start(ln net.Listener) {
	h.t.Helper()
	log := slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	a, err := app.New(context.Background(), h.Config, log)
	if err != nil {
		ln.Close()
		h.t.Fatalf("app.New: %v", err)
	}
	h.App = a
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Serve(ctx, ln, h.CA.ServerTLSConfig(h.t)) }()
	h.stop = func() {
		// A connection the client opened but never used is "new" to the server, and Shutdown
		// waits 5 s for such connections: close the client's side first.
		h.Client.CloseIdleConnections()
		cancel()
		if err := <-done; err != nil && !errors.Is(err, http.ErrServerClosed) {
			h.t.Errorf("serve: %v", err)
		}
		a.Close()
	}
}

// Stop shuts the service down and closes its database; it is safe to call twice.
func (h *Harness) Stop() {
	if h.stop != nil {
		h.stop()
		h.stop = nil
		h.Client.CloseIdleConnections()
	}
}

// Restart stops the service and starts a new app.New on the same configuration, database and
// address, as an operator restarting the process would.
func (h *Harness) Restart() {
	h.t.Helper()
	h.Stop()
	var ln net.Listener
	var err error
	for range 50 { // the port was just released; give the kernel a moment if it objects
		if ln, err = net.Listen("tcp", h.Config.Listen); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		h.t.Fatalf("listen again on %s: %v", h.Config.Listen, err)
	}
	h.start(ln)
}

// Logs returns what the service logged so far.
func (h *Harness) Logs() string { return h.logs.String() }

// Response is an HTTP response, read whole.
type Response struct {
	Status int
	Header http.Header
	Body   []byte
}

// JSON decodes the body as a JSON object.
func (r *Response) JSON(t testing.TB) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.Body, &m); err != nil {
		t.Fatalf("response is not a JSON object (HTTP %d): %v\n%s", r.Status, err, r.Body)
	}
	return m
}

// Str returns a string member of the JSON body, failing if it is absent or not a string.
func (r *Response) Str(t testing.TB, key string) string {
	t.Helper()
	v, ok := r.JSON(t)[key].(string)
	if !ok {
		t.Fatalf("response has no string %q: %s", key, r.Body)
	}
	return v
}

// Errcode returns the Matrix errcode of the body, or "".
func (r *Response) Errcode() string {
	var m struct {
		Errcode string `json:"errcode"`
	}
	json.Unmarshal(r.Body, &m)
	return m.Errcode
}

// Want fails unless the response has status and, for errors, errcode ("" asserts no errcode).
func (r *Response) Want(t testing.TB, status int, errcode string) *Response {
	t.Helper()
	if r.Status != status || r.Errcode() != errcode {
		t.Fatalf("got HTTP %d %q, want HTTP %d %q; body: %s", r.Status, r.Errcode(), status, errcode, truncate(r.Body))
	}
	return r
}

func truncate(b []byte) string {
	if len(b) > 600 {
		return string(b[:600]) + "…"
	}
	return string(b)
}

// Request describes a call; the zero value is a GET without a body.
type Request struct {
	Method string
	Path   string // relative to URL, with query
	Token  string // identity-server access token, sent as a bearer token
	// Body is sent as is when it is a string or []byte (Content-Type application/json unless set
	// in Header), form-encoded when url.Values, and otherwise marshalled as JSON.
	Body   any
	Header http.Header
}

// Do sends req and reads the whole response.
func (h *Harness) Do(t testing.TB, req Request) *Response {
	t.Helper()
	if req.Method == "" {
		req.Method = http.MethodGet
	}
	var body io.Reader
	ct := "application/json"
	switch b := req.Body.(type) {
	case nil:
	case string:
		body = strings.NewReader(b)
	case []byte:
		body = bytes.NewReader(b)
	case url.Values:
		body, ct = strings.NewReader(b.Encode()), "application/x-www-form-urlencoded"
	default:
		data, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		body = bytes.NewReader(data)
	}
	r, err := http.NewRequestWithContext(context.Background(), req.Method, h.URL+req.Path, body)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		r.Header.Set("Content-Type", ct)
	}
	if req.Token != "" {
		r.Header.Set("Authorization", "Bearer "+req.Token)
	}
	for k, vs := range req.Header {
		r.Header.Del(k)
		for _, v := range vs {
			r.Header.Add(k, v)
		}
	}
	resp, err := h.Client.Do(r)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.Path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", req.Method, req.Path, err)
	}
	return &Response{Status: resp.StatusCode, Header: resp.Header, Body: data}
}

// Get is Do for a GET with an optional token.
func (h *Harness) Get(t testing.TB, path, token string) *Response {
	t.Helper()
	return h.Do(t, Request{Method: http.MethodGet, Path: path, Token: token})
}

// Post is Do for a POST with an optional token.
func (h *Harness) Post(t testing.TB, path, token string, body any) *Response {
	t.Helper()
	return h.Do(t, Request{Method: http.MethodPost, Path: path, Token: token, Body: body})
}

// V2 is the prefix of the Identity Service API v2.
const V2 = "/_matrix/identity/v2"

// User is a Matrix user of the stand-in homeserver with an identity-server account.
type User struct {
	MXID  string
	Token string
}

// Register exchanges a fresh OpenID token from the stand-in for an identity-server token.
func (h *Harness) Register(t testing.TB, localpart string) User {
	t.Helper()
	openID, mxid := h.HS.IssueOpenIDToken(localpart)
	r := h.Post(t, V2+"/account/register", "", map[string]any{
		"access_token": openID, "token_type": "Bearer", "matrix_server_name": h.HS.Name, "expires_in": 3600,
	}).Want(t, http.StatusOK, "")
	return User{MXID: mxid, Token: r.Str(t, "token")}
}

// AcceptTerms accepts the first language of every policy GET /terms lists.
func (h *Harness) AcceptTerms(t testing.TB, u User) {
	t.Helper()
	var terms struct {
		Policies map[string]map[string]json.RawMessage `json:"policies"`
	}
	r := h.Get(t, V2+"/terms", "").Want(t, http.StatusOK, "")
	if err := json.Unmarshal(r.Body, &terms); err != nil {
		t.Fatalf("terms: %v", err)
	}
	accepts := []string{}
	for _, p := range terms.Policies {
		for lang, raw := range p {
			var doc struct{ URL string }
			if lang == "version" || json.Unmarshal(raw, &doc) != nil || doc.URL == "" {
				continue
			}
			accepts = append(accepts, doc.URL)
			break
		}
	}
	h.Post(t, V2+"/terms", u.Token, map[string]any{"user_accepts": accepts}).Want(t, http.StatusOK, "")
}

// NewUser registers localpart and accepts the terms.
func (h *Harness) NewUser(t testing.TB, localpart string) User {
	t.Helper()
	u := h.Register(t, localpart)
	h.AcceptTerms(t, u)
	return u
}

// Session is an email validation session.
type Session struct {
	SID, ClientSecret, Address string
}

// Secret returns a fresh client secret.
func Secret() string {
	b := make([]byte, 16)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// RequestToken starts an email validation (send_attempt 1) and returns the session and the
// token from the mail that arrived.
func (h *Harness) RequestToken(t testing.TB, u User, address string) (Session, string) {
	t.Helper()
	before := len(h.Mail.To(address))
	s := Session{ClientSecret: Secret(), Address: address}
	r := h.Post(t, V2+"/validate/email/requestToken", u.Token, map[string]any{
		"client_secret": s.ClientSecret, "email": address, "send_attempt": 1,
	}).Want(t, http.StatusOK, "")
	s.SID = r.Str(t, "sid")
	link := ValidationLink(t, h.Mail.Wait(t, address, before+1, MailWait))
	if link.Get("sid") != s.SID || link.Get("client_secret") != s.ClientSecret {
		t.Fatalf("mail link has sid %q secret %q, want %q %q", link.Get("sid"), link.Get("client_secret"), s.SID, s.ClientSecret)
	}
	return s, link.Get("token")
}

// ValidateEmail validates address for u with the token from the mail.
func (h *Harness) ValidateEmail(t testing.TB, u User, address string) Session {
	t.Helper()
	s, token := h.RequestToken(t, u, address)
	h.Post(t, V2+"/validate/email/submitToken", u.Token, map[string]any{
		"sid": s.SID, "client_secret": s.ClientSecret, "token": token,
	}).Want(t, http.StatusOK, "")
	return s
}

// Bind validates address and binds it to u's MXID, returning the signed association.
func (h *Harness) Bind(t testing.TB, u User, address string) map[string]any {
	t.Helper()
	s := h.ValidateEmail(t, u, address)
	return h.Post(t, V2+"/3pid/bind", u.Token, map[string]any{
		"sid": s.SID, "client_secret": s.ClientSecret, "mxid": u.MXID,
	}).Want(t, http.StatusOK, "").JSON(t)
}

// ValidationLink returns the query of the submitToken link in a validation mail's text part.
func ValidationLink(t testing.TB, m smtptest.Message) url.Values {
	t.Helper()
	found := m.ValidationLink()
	if found == "" {
		t.Fatalf("no submitToken link in the mail text:\n%s", m.Text)
	}
	u, err := url.Parse(found)
	if err != nil {
		t.Fatal(err)
	}
	if u.Query().Get("token") == "" {
		t.Fatalf("link without token: %s", found)
	}
	return u.Query()
}

// Pepper returns the current lookup pepper.
func (h *Harness) Pepper(t testing.TB, u User) string {
	t.Helper()
	return h.Get(t, V2+"/hash_details", u.Token).Want(t, http.StatusOK, "").Str(t, "lookup_pepper")
}

// LookupOne resolves one "address medium" with algorithm none and returns the MXID or "".
func (h *Harness) LookupOne(t testing.TB, u User, medium, address string) string {
	t.Helper()
	key := address + " " + medium
	r := h.Post(t, V2+"/lookup", u.Token, map[string]any{
		"addresses": []string{key}, "algorithm": "none", "pepper": h.Pepper(t, u),
	}).Want(t, http.StatusOK, "")
	var out struct {
		Mappings map[string]string `json:"mappings"`
	}
	if err := json.Unmarshal(r.Body, &out); err != nil {
		t.Fatal(err)
	}
	return out.Mappings[key]
}

// syncBuffer is a log sink safe for the service's goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *syncBuffer) tail(n int) string {
	lines := strings.Split(strings.TrimRight(b.String(), "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("… %d lines skipped", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}
