// Package api serves ozo-identity over HTTP: the Matrix Identity Service API v2, the gated v1
// compatibility API, the /_ozo extensions and the admin API.
package api

import (
	"cmp"
	"context"
	"crypto/rand"
	"log/slog"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/ozo-platform/ozo-identity/api/web"
	"github.com/ozo-platform/ozo-identity/audit"
	"github.com/ozo-platform/ozo-identity/identity"
	"github.com/ozo-platform/ozo-identity/internal/matrixid"
	"github.com/ozo-platform/ozo-identity/ozoaccount"
)

// Homeservers is what the API needs from the homeserver client.
type Homeservers interface {
	identity.UserInfoer
	// Authenticate verifies an X-Matrix signed request and returns the origin server and body.
	Authenticate(r *http.Request) (origin string, body []byte, err error)
}

// Config holds the API's settings.
type Config struct {
	PublicBaseURL string
	MaxBodyBytes  int64
	// RequestTimeout bounds each request's context (database, homeserver, mail, IdP); 0: none.
	RequestTimeout    time.Duration
	MaxLookupBatch    int
	CORSOrigins       []string
	TrustedProxies    []netip.Prefix
	AllowedHomeserver []string
	V1Enabled         bool
	V1Networks        []netip.Prefix
	AdminToken        string
	RateLimits        RateLimits
	// Directory answers /_ozo/v1/directory; nil leaves those routes out.
	Directory Directory
	// DirectorySync serves POST /_ozo/admin/v1/directory/sync; nil answers 404.
	DirectorySync DirectorySyncer
	// Pages serves every HTML page; nil builds one with a per-process key (sessions do not
	// survive a restart nor cross replicas).
	Pages *web.Handler
	// SSO validates 3PIDs by logins at care providers' IdPs and Dezi; nil disables it.
	SSO *identity.SSO
	// Accounts serves OZO accounts (/_ozo/v1/accounts, /_ozo/admin/v1/accounts and
	// /_ozo/admin/v1/fhir); nil leaves them out.
	Accounts *ozoaccount.Service
	// Audit keeps the audit trail of lookups and admin calls.
	Audit Audit
	// Unavailable reports store errors that mean the database is gone for the moment (the
	// storage's drivers know their words for it); they answer 503 with Retry-After. Lost and
	// refused network connections are recognised without it.
	Unavailable func(error) bool
}

// Server routes HTTP requests to the identity service.
type Server struct {
	svc     *identity.Service
	hs      Homeservers
	cfg     Config
	log     *slog.Logger
	metrics *Metrics
	router  chi.Router
	pages   *web.Handler
	buffers buffers       // lookup bodies
	imports chan struct{} // import slots (adminImportBindings)
}

// New builds the HTTP handler. metrics may be nil.
func New(svc *identity.Service, hs Homeservers, cfg Config, metrics *Metrics, log *slog.Logger) *Server {
	s := &Server{svc: svc, hs: hs, cfg: cfg, log: logger(log), metrics: metrics, pages: cfg.Pages,
		imports: make(chan struct{}, importSlots)}
	if s.pages == nil {
		key := make([]byte, 32)
		rand.Read(key)
		p, err := web.New(web.Config{Key: key, Tokens: svc, Log: s.log})
		if err != nil {
			panic(err) // only the embedded templates can fail here, and tests parse them
		}
		s.pages = p
	}
	r := chi.NewRouter()
	r.Use(s.requestID, s.recoverer, s.instrument, s.deadline, s.auditScope, s.cors)
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		markUnmatched(r)
		matrixError(w, http.StatusNotFound, "M_UNRECOGNIZED", "unrecognised request")
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		markUnmatched(r)
		matrixError(w, http.StatusMethodNotAllowed, "M_UNRECOGNIZED", "method not allowed")
	})
	r.Get("/_matrix/identity/versions", s.versions)
	r.Route("/_matrix/identity/v2", s.routesV2)
	r.Route("/_matrix/identity/api/v1", s.routesV1)
	r.Route("/_ozo/admin/v1", s.routesAdmin)
	if cfg.Directory != nil {
		r.Route("/_ozo/v1/directory", s.routesDirectory)
	}
	if cfg.SSO != nil {
		r.Route("/_ozo/v1/validate/sso", s.routesSSOStart)
		r.Route("/_ozo/v1/sso", s.routesSSO)
		if cfg.SSO.Onboarding() {
			r.Route("/_ozo/v1/onboard", s.routesOnboard)
		}
	}
	if cfg.Accounts != nil {
		r.Route("/_ozo/v1/accounts", s.routesAccounts)
	}
	r.Handle(web.PagePrefix+"*", s.limitAccountPages(s.pages))
	s.router = r
	return s
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.router.ServeHTTP(w, r) }

func (s *Server) versions(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"versions": []string{
		"r0.1.0", "r0.2.0", "r0.2.1", "r0.3.0", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8",
		"v1.9", "v1.10", "v1.11", "v1.12", "v1.13", "v1.14", "v1.15", "v1.16"}})
}

// deadline ends a request's work after RequestTimeout: a database that holds its connections
// open without answering then fails the request as unavailable (503, Retry-After) instead of
// holding it, and a pool connection, for as long as the caller waits.
func (s *Server) deadline(next http.Handler) http.Handler {
	if s.cfg.RequestTimeout <= 0 {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), s.cfg.RequestTimeout)
		defer cancel()
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// detached is r's context without its cancellation, for records that must be written although
// the client hung up, bounded as a request is.
func (s *Server) detached(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(r.Context()), cmp.Or(s.cfg.RequestTimeout, 30*time.Second))
}

func (s *Server) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.log.ErrorContext(r.Context(), "panic serving request", "path", r.URL.Path, "panic", v)
				matrixError(w, http.StatusInternalServerError, identity.CodeUnknown, "internal server error")
			}
		}()
		next.ServeHTTP(w, r)
	})
}

// cors lets browser clients (Element, the OZO app) call the JSON API, as the spec requires.
// Pages and the admin API get none: no other site has reason to read them.
func (s *Server) cors(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !corsRoute(r) {
			next.ServeHTTP(w, r)
			return
		}
		origin := r.Header.Get("Origin")
		switch {
		case slices.Contains(s.cfg.CORSOrigins, "*"):
			w.Header().Set("Access-Control-Allow-Origin", "*")
		case origin != "" && slices.Contains(s.cfg.CORSOrigins, origin):
			w.Header().Set("Access-Control-Allow-Origin", origin)
			w.Header().Add("Vary", "Origin")
		}
		w.Header().Set("Access-Control-Allow-Methods", "GET, POST, PUT, DELETE, OPTIONS")
		w.Header().Set("Access-Control-Allow-Headers", "Origin, X-Requested-With, Content-Type, Accept, Authorization")
		if r.Method == http.MethodOptions {
			writeJSON(w, http.StatusOK, map[string]any{})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// corsRoute tells the Matrix and /_ozo/v1 JSON routes from pages and the admin API. The mailed
// validation link (GET submitToken) is a page although it sits under /_matrix.
func corsRoute(r *http.Request) bool {
	p := r.URL.Path
	if !strings.HasPrefix(p, "/_matrix/identity/") && !strings.HasPrefix(p, "/_ozo/v1/") {
		return false
	}
	if strings.HasPrefix(p, "/_ozo/v1/sso/") && !strings.HasSuffix(p, "/metadata") {
		return false // the IdPs' way back into the SSO pages
	}
	return !((r.Method == http.MethodGet || r.Method == http.MethodHead) && isSubmitTokenPage(p))
}

func isSubmitTokenPage(path string) bool {
	return path == "/_matrix/identity/v2/validate/email/submitToken" ||
		path == "/_matrix/identity/api/v1/validate/email/submitToken"
}

// clientAddr is the caller's address: the connection's peer or, when that is a trusted proxy,
// the nearest X-Forwarded-For hop that is not. Every X-Forwarded-For line counts (a client may
// send its own line before the proxy appends one), walked from the right; a hop that is not
// an address makes the client unknown (the zero Addr), which no network gate admits.
func (s *Server) clientAddr(r *http.Request) netip.Addr {
	addr, ok := parseHop(r.RemoteAddr)
	if !ok {
		return netip.Addr{}
	}
	if !inAny(addr, s.cfg.TrustedProxies) {
		return addr
	}
	lines := r.Header.Values("X-Forwarded-For")
	for i := len(lines) - 1; i >= 0; i-- {
		hops := strings.Split(lines[i], ",")
		for j := len(hops) - 1; j >= 0; j-- {
			hop := strings.TrimSpace(hops[j])
			if hop == "" && len(hops) == 1 {
				continue // an empty line adds no hop
			}
			a, ok := parseHop(hop)
			if !ok {
				return netip.Addr{}
			}
			if !inAny(a, s.cfg.TrustedProxies) {
				return a
			}
			addr = a
		}
	}
	return addr
}

// parseHop reads an address as proxies write it: bare, with a port, or IPv6 in brackets.
func parseHop(s string) (netip.Addr, bool) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap(), true
	}
	a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(s, "["), "]"))
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}

func inAny(a netip.Addr, nets []netip.Prefix) bool {
	for _, p := range nets {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

type ctxKey int

// The request context keys of this package, in one place so that no two share a value.
const (
	accountKey ctxKey = iota
	recorderKey
	bodyLimitKey
	unmatchedKey
)

// bearerToken reads the access token from the Authorization header or the deprecated query parameter.
func bearerToken(r *http.Request) string {
	if h := r.Header.Get("Authorization"); h != "" {
		if t, ok := strings.CutPrefix(h, "Bearer "); ok {
			return strings.TrimSpace(t)
		}
		return ""
	}
	return r.URL.Query().Get("access_token")
}

// authenticated requires an identity-server access token; withTerms also requires accepted terms.
func (s *Server) authenticated(withTerms bool) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// The token check and what the request then reads share one view of the database.
			r = r.WithContext(s.svc.Arrived(r.Context()))
			acct, err := s.svc.Authenticate(r.Context(), bearerToken(r))
			if err != nil {
				s.writeError(w, r, err)
				return
			}
			// A homeserver taken off the allow-list loses access at once, not when its tokens expire.
			if !identity.HomeserverAllowed(s.cfg.AllowedHomeserver, matrixid.ServerOf(acct.UserID)) {
				matrixError(w, http.StatusForbidden, identity.CodeForbidden, "your homeserver may no longer use this identity server")
				return
			}
			if withTerms {
				ok, err := s.svc.TermsAccepted(r.Context(), acct.UserID)
				if err != nil {
					s.writeError(w, r, err)
					return
				}
				if !ok {
					matrixError(w, http.StatusForbidden, identity.CodeTermsNotSigned, "accept the terms of service first: GET /_matrix/identity/v2/terms")
					return
				}
			}
			audit.ScopeFrom(r.Context()).Actor = audit.Agent{Kind: audit.AgentUser, ID: acct.UserID}
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), accountKey, acct)))
		})
	}
}

func account(r *http.Request) identity.AccessToken {
	a, _ := r.Context().Value(accountKey).(identity.AccessToken)
	return a
}

// since is a small helper for latency metrics.
func since(t time.Time) float64 { return time.Since(t).Seconds() }
