package web

import (
	"bytes"
	"context"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"path"
	"strings"
)

//go:embed templates/*.html static/*
var assets embed.FS

// StaticPrefix is where the pages' stylesheet is served.
const StaticPrefix = "/_ozo/web/static/"

// PagePrefix is where pages that have no spec-given path live (form targets and future pages).
const PagePrefix = "/_ozo/web/"

// Config holds what pages need from the server.
type Config struct {
	// Key is the server secret (at least 32 bytes) from which the cookie and CSRF keys are derived.
	Key []byte
	// SubmitTemplate is an operator's page for the validation result (validation.submit_page); "" uses ours.
	SubmitTemplate string
	// Tokens checks the mailed validation tokens.
	Tokens TokenSubmitter
	// SSO runs practitioners' logins (the sso pages); nil leaves them out.
	SSO SSOLogins
	// Accounts serves the OZO account pages (activation, login, reset); nil leaves them out.
	Accounts Accounts
	// ClientURLs are the clients (the OZO app) an OZO login may hand its Matrix access token
	// to, as ?redirect_uri= of the login page; exact URLs.
	ClientURLs []string
	// MinPasswordLength is shown on the password forms.
	MinPasswordLength int
	// Unavailable reports errors that mean the database is gone for the moment
	// (sqlstore.Unavailable): pages answer 503 with Retry-After for them instead of 500.
	Unavailable func(error) bool
	Log         *slog.Logger
}

// Handler renders pages and serves their static files and form targets.
type Handler struct {
	pages      map[string]map[string]*template.Template // language → page → layout+page, "t" bound to the language
	submit     *submitPage
	tokens     TokenSubmitter
	sso        SSOLogins
	sessionKey []byte
	csrfKey    []byte
	log        *slog.Logger
	static     http.Handler
	served     http.Handler // mux behind Pages

	accounts    Accounts
	clientURLs  []string
	minPassword int
	unavailable func(error) bool
}

// New parses the embedded templates and derives the cookie keys.
func New(cfg Config) (*Handler, error) {
	if len(cfg.Key) < 32 {
		return nil, fmt.Errorf("web: key of %d bytes, want at least 32", len(cfg.Key))
	}
	if cfg.Tokens == nil {
		return nil, fmt.Errorf("web: no token submitter")
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &Handler{pages: map[string]map[string]*template.Template{}, tokens: cfg.Tokens, sso: cfg.SSO, log: log,
		accounts: cfg.Accounts, clientURLs: cfg.ClientURLs, minPassword: cfg.MinPasswordLength, unavailable: cfg.Unavailable}
	var err error
	if h.sessionKey, err = hkdf.Key(sha256.New, cfg.Key, nil, "ozo-identity web session v1", 32); err != nil {
		return nil, fmt.Errorf("web: derive session key: %w", err)
	}
	if h.csrfKey, err = hkdf.Key(sha256.New, cfg.Key, nil, "ozo-identity web csrf v1", 32); err != nil {
		return nil, fmt.Errorf("web: derive csrf key: %w", err)
	}
	names, err := fs.Glob(assets, "templates/*.html")
	if err != nil {
		return nil, fmt.Errorf("web: list templates: %w", err)
	}
	for _, lang := range languages {
		base, err := template.New("layout.html").Funcs(template.FuncMap{"t": translator(lang)}).
			ParseFS(assets, "templates/layout.html")
		if err != nil {
			return nil, fmt.Errorf("web: parse layout: %w", err)
		}
		h.pages[lang] = map[string]*template.Template{}
		for _, name := range names {
			page := strings.TrimSuffix(path.Base(name), ".html")
			if page == "layout" {
				continue
			}
			t, err := template.Must(base.Clone()).ParseFS(assets, name)
			if err != nil {
				return nil, fmt.Errorf("web: parse %s: %w", name, err)
			}
			h.pages[lang][page] = t
		}
	}
	if h.submit, err = loadSubmitPage(cfg.SubmitTemplate); err != nil {
		return nil, err
	}
	static, _ := fs.Sub(assets, "static")
	h.static = http.StripPrefix(StaticPrefix, http.FileServerFS(static))
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+PagePrefix+"validate/email", h.confirmEmail)
	mux.HandleFunc("GET "+SSOLoginPath, h.ssoLogin)
	mux.HandleFunc("POST "+SSOLoginPath, h.ssoBegin)
	mux.Handle("GET "+StaticPrefix, h.staticFiles())
	if h.accounts != nil {
		h.mountAccounts(mux)
	}
	mux.HandleFunc(PagePrefix, func(w http.ResponseWriter, r *http.Request) {
		h.Error(w, r, http.StatusNotFound, "error.notfound", nil)
	})
	h.served = h.Pages(mux)
	return h, nil
}

// ServeHTTP serves everything under PagePrefix: static files and form targets.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.served.ServeHTTP(w, r)
}

func (h *Handler) staticFiles() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "public, max-age=3600")
		h.static.ServeHTTP(w, r)
	})
}

// maxFormBytes bounds a page's form; ours carry a few short fields.
const maxFormBytes = 64 << 10

type ctxKey int

const reqKey ctxKey = 0

// request is what Pages learns about a request before the page runs.
type request struct {
	id    string
	lang  string
	csrf  string // the form token for this browser's CSRF cookie
	style []string
}

func fromContext(ctx context.Context) *request {
	if pr, ok := ctx.Value(reqKey).(*request); ok {
		return pr
	}
	return &request{id: "-", lang: languages[0]}
}

// Pages wraps page handlers: security headers, a request id, the language, a CSRF cookie, a CSRF
// check on every state-changing method, and panics answered with an HTML 500.
func (h *Handler) Pages(next http.Handler) http.Handler { return h.wrap(next, true) }

// Callback wraps a page that receives a cross-site POST from an identity provider (a SAML
// assertion consumer, an OIDC form_post): Pages without the CSRF and cross-origin checks, which
// such a POST cannot pass. The handler must authenticate the POST itself (a signed response
// answering a request it issued) and should answer with a 303 to a GET page: the Lax session
// cookie is not sent with a cross-site POST, but is with that GET.
func (h *Handler) Callback(next http.Handler) http.Handler { return h.wrap(next, false) }

func (h *Handler) wrap(next http.Handler, csrf bool) http.Handler {
	cop := http.NewCrossOriginProtection()
	cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.Error(w, r, http.StatusForbidden, "error.csrf", fmt.Errorf("cross-origin %s refused", r.Method))
	}))
	checked := cop.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !safeMethod(r.Method) && !h.validCSRF(r) {
			h.Error(w, r, http.StatusForbidden, "error.csrf", fmt.Errorf("missing or wrong CSRF token"))
			return
		}
		next.ServeHTTP(w, r)
	}))
	if !csrf {
		checked = next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !safeMethod(r.Method) {
			r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
		}
		pr := &request{id: newID(), lang: h.language(w, r)}
		pr.csrf = h.csrfToken(w, r)
		r = r.WithContext(context.WithValue(r.Context(), reqKey, pr))
		setSecurityHeaders(w.Header(), nil)
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				h.Error(w, r, http.StatusInternalServerError, "error.internal", fmt.Errorf("panic: %v", v))
			}
		}()
		checked.ServeHTTP(w, r)
	})
}

func safeMethod(m string) bool {
	return m == http.MethodGet || m == http.MethodHead || m == http.MethodOptions
}

// setSecurityHeaders sends a policy that allows our stylesheet and nothing else: no script at all,
// inline style only with a listed hash (an operator's template may carry <style> blocks).
func setSecurityHeaders(hd http.Header, styleHashes []string) {
	style := "'self'"
	for _, s := range styleHashes {
		style += " '" + s + "'"
	}
	hd.Set("Content-Security-Policy", "default-src 'none'; style-src "+style+"; img-src 'self'; form-action 'self'; "+
		"frame-ancestors 'none'; base-uri 'none'")
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("X-Frame-Options", "DENY")
	hd.Set("Cross-Origin-Opener-Policy", "same-origin")
	hd.Set("Cache-Control", "no-store")
}

// view is what every template sees: .Data is the page's own data.
type view struct {
	Lang      string
	Switch    []langLink
	CSRF      string
	RequestID string
	Data      any
}

type langLink struct {
	Lang, Label, URL string
}

// Render writes page name (templates/<name>.html) in the request's language.
func (h *Handler) Render(w http.ResponseWriter, r *http.Request, status int, name string, data any) {
	pr := fromContext(r.Context())
	v := view{Lang: pr.lang, Switch: switchLinks(r, pr.lang), CSRF: pr.csrf, RequestID: pr.id, Data: data}
	t := h.pages[pr.lang][name]
	if t == nil {
		h.log.ErrorContext(r.Context(), "no such page template", "page", name, "request_id", pr.id)
		status, t = http.StatusInternalServerError, h.pages[pr.lang]["error"]
		v.Data = errorData{Status: http.StatusInternalServerError, Message: "error.internal"}
	}
	var buf bytes.Buffer
	if err := t.Execute(&buf, v); err != nil {
		// Nothing was sent yet, so the person still gets a whole page, just a plain one.
		h.log.ErrorContext(r.Context(), "render page", "page", name, "request_id", pr.id, "err", err)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusInternalServerError)
		fmt.Fprintf(w, "%s (%s)\n", translator(pr.lang)("error.internal"), pr.id)
		return
	}
	setSecurityHeaders(w.Header(), pr.style)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Language", pr.lang)
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

type errorData struct {
	Status  int
	Message string // a catalog key
	// Account is a Matrix user ID the person should use instead (their existing account).
	Account string
}

// Error renders the error page: msgKey (a catalog key) and the request id, never err; err is
// logged with the id so that an operator can find it.
func (h *Handler) Error(w http.ResponseWriter, r *http.Request, status int, msgKey string, err error) {
	pr := fromContext(r.Context())
	if status == http.StatusInternalServerError && err != nil && h.unavailable != nil && h.unavailable(err) {
		// The database is gone for the moment: the person tries again shortly, here or at
		// another replica, and the operator looks at the database rather than at this service.
		status, msgKey = http.StatusServiceUnavailable, "error.unavailable"
		w.Header().Set("Retry-After", "5")
		h.log.WarnContext(r.Context(), "page error: database unreachable", "status", status, "path", r.URL.Path, "request_id", pr.id, "err", err)
		h.Render(w, r, status, "error", errorData{Status: status, Message: msgKey})
		return
	}
	if err != nil {
		level := slog.LevelInfo
		if status >= 500 {
			level = slog.LevelError
		}
		h.log.Log(r.Context(), level, "page error", "status", status, "path", r.URL.Path, "request_id", pr.id, "err", err)
	}
	h.Render(w, r, status, "error", errorData{Status: status, Message: msgKey})
}

func newID() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// switchLinks point at the same page in the other languages; the query is kept, so a GET page
// shows the same result again. A POST's answer has no address to go back to, so it offers none.
func switchLinks(r *http.Request, current string) []langLink {
	if r.Method != http.MethodGet {
		return nil
	}
	var out []langLink
	for _, l := range languages {
		if l == current {
			continue
		}
		q := r.URL.Query()
		q.Set("lang", l)
		out = append(out, langLink{Lang: l, Label: languageNames[l], URL: r.URL.Path + "?" + q.Encode()})
	}
	return out
}
