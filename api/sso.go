package api

import (
	"crypto/rand"
	"errors"
	"html/template"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/ozo-platform/ozo-identity/identity"
	"github.com/ozo-platform/ozo-identity/sso"
)

// maxSAMLForm bounds the form an IdP posts to the ACS: an encrypted, signed assertion is larger
// than any JSON body this server accepts.
const maxSAMLForm = 512 << 10

// ssoBrowserCookie holds the secret that ties a login to the browser that chose the IdP.
const ssoBrowserCookie = "__Host-ozo_sso_browser"

// routesSSOStart serves POST /_ozo/v1/validate/sso/start: a client with an identity-server token
// starts a login whose success validates a session for the identifiers it proves.
func (s *Server) routesSSOStart(r chi.Router) {
	r.Use(s.authenticated(true))
	r.Post("/start", s.ssoStart)
}

// routesSSO serves what browsers and IdPs reach: the login page, OIDC callbacks, the SAML ACS
// and SP metadata.
func (s *Server) routesSSO(r chi.Router) {
	r.Use(s.limitSSOClient)
	r.Get("/login", s.ssoLoginPage)
	r.With(crossOriginProtection).Post("/login", s.ssoBegin)
	r.Get("/{idp}/callback", s.ssoCallback)
	r.Post("/{idp}/acs", s.ssoACS)
	r.Get("/{idp}/finish", s.ssoFinishSAML)
	r.Get("/{idp}/metadata", s.ssoMetadata)
}

// crossOriginProtection refuses a cross-site POST of the login form: a page elsewhere must not
// send a practitioner to an IdP for someone else's login.
func crossOriginProtection(next http.Handler) http.Handler {
	cop := http.NewCrossOriginProtection()
	cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		renderSSO(w, http.StatusForbidden, ssoPageData{Reason: "csrf"})
	}))
	return cop.Handler(next)
}

func (s *Server) limitSSOClient(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.limit(w, r, "sso:client:"+s.clientAddr(r).String(), s.cfg.RateLimits.PerClient) {
			next.ServeHTTP(w, r)
		}
	})
}

func (s *Server) ssoStart(w http.ResponseWriter, r *http.Request) {
	var req struct {
		ClientSecret string `json:"client_secret"`
		IdP          string `json:"idp"`
		NextLink     string `json:"next_link"`
	}
	if err := s.decodeJSON(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := required(map[string]string{"client_secret": req.ClientSecret}, "client_secret"); err != nil {
		s.writeError(w, r, err)
		return
	}
	sid, handle, err := s.cfg.SSO.Start(r.Context(), account(r).UserID, req.ClientSecret, req.IdP, req.NextLink)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	redirect := strings.TrimRight(s.cfg.PublicBaseURL, "/") + "/_ozo/v1/sso/login?" + url.Values{"login": {handle}}.Encode()
	writeJSON(w, http.StatusOK, map[string]string{"sid": sid, "redirect_url": redirect})
}

// browserSecret returns this browser's login secret, giving it one if it has none.
func (s *Server) browserSecret(w http.ResponseWriter, r *http.Request) string {
	if c, err := r.Cookie(ssoBrowserCookie); err == nil && len(c.Value) >= 20 && len(c.Value) <= 64 {
		return c.Value
	}
	v := rand.Text()
	// Lax: sent when the IdP sends the browser back (a top-level GET), never with a cross-site POST.
	http.SetCookie(w, &http.Cookie{Name: ssoBrowserCookie, Value: v, Path: "/", Secure: true, HttpOnly: true,
		SameSite: http.SameSiteLaxMode, MaxAge: int(time.Hour / time.Second)})
	return v
}

// existingBrowserSecret is the browser's secret without giving it one: a callback in a browser
// that never saw the login page fails.
func existingBrowserSecret(r *http.Request) string {
	if c, err := r.Cookie(ssoBrowserCookie); err == nil {
		return c.Value
	}
	return "-"
}

// ssoLoginPage shows which account the login is for and lets the practitioner choose their
// organisation's IdP (by name or URA) or continue to the one the client chose.
func (s *Server) ssoLoginPage(w http.ResponseWriter, r *http.Request) {
	handle := r.URL.Query().Get("login")
	p, err := s.cfg.SSO.Claim(r.Context(), handle, s.browserSecret(w, r))
	if err != nil {
		s.ssoDone(w, r, identity.SSOResult{}, err)
		return
	}
	data := ssoPageData{Login: true, Handle: handle, UserID: p.UserID, Query: r.URL.Query().Get("q")}
	reg := s.cfg.SSO.Registry()
	if p.IdP != "" {
		idp, _ := reg.Get(p.IdP)
		data.IdPs = []sso.IdP{idp}
		data.Chosen = true
	} else {
		data.IdPs = reg.Search(data.Query)
	}
	renderSSO(w, http.StatusOK, data)
}

func (s *Server) ssoBegin(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
	if err := r.ParseForm(); err != nil {
		renderSSO(w, http.StatusBadRequest, ssoPageData{Reason: identity.SSOExpired})
		return
	}
	u, err := s.cfg.SSO.Begin(r.Context(), r.PostForm.Get("login"), r.PostForm.Get("idp"), existingBrowserSecret(r))
	if err != nil {
		s.ssoDone(w, r, identity.SSOResult{}, err)
		return
	}
	http.Redirect(w, r, u, http.StatusSeeOther)
}

func (s *Server) ssoCallback(w http.ResponseWriter, r *http.Request) {
	res, err := s.cfg.SSO.FinishRedirect(r.Context(), chi.URLParam(r, "idp"), r, existingBrowserSecret(r))
	s.ssoDone(w, r, res, err)
}

// ssoACS verifies the IdP's POST, which carries no cookies of the browser, and sends the browser
// on to a GET that does, where the login completes.
func (s *Server) ssoACS(w http.ResponseWriter, r *http.Request) {
	idp := chi.URLParam(r, "idp")
	r.Body = http.MaxBytesReader(w, r.Body, maxSAMLForm)
	if err := r.ParseForm(); err != nil {
		s.ssoDone(w, r, identity.SSOResult{}, &identity.SSOError{Reason: identity.SSORefused, IdP: idp, Err: err})
		return
	}
	h, err := s.cfg.SSO.VerifySAML(r.Context(), idp, r.PostForm.Get("RelayState"), r.PostForm.Get("SAMLResponse"))
	if err != nil {
		s.ssoDone(w, r, identity.SSOResult{}, err)
		return
	}
	http.Redirect(w, r, strings.TrimRight(s.cfg.PublicBaseURL, "/")+"/_ozo/v1/sso/"+url.PathEscape(idp)+"/finish?"+
		url.Values{"h": {h}}.Encode(), http.StatusSeeOther)
}

func (s *Server) ssoFinishSAML(w http.ResponseWriter, r *http.Request) {
	res, err := s.cfg.SSO.FinishSAML(r.Context(), chi.URLParam(r, "idp"), r.URL.Query().Get("h"), existingBrowserSecret(r))
	s.ssoDone(w, r, res, err)
}

func (s *Server) ssoMetadata(w http.ResponseWriter, r *http.Request) {
	idp, ok := s.cfg.SSO.Registry().Get(chi.URLParam(r, "idp"))
	md, isSAML := idp.Connector.(interface{ MetadataXML() ([]byte, error) })
	if !ok || !isSAML {
		matrixError(w, http.StatusNotFound, identity.CodeNotFound, "no SAML identity provider by this id")
		return
	}
	body, err := md.MetadataXML()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/samlmetadata+xml")
	w.Write(body)
}

// ssoDone sends the browser on to the client's next_link, or shows what happened.
func (s *Server) ssoDone(w http.ResponseWriter, r *http.Request, res identity.SSOResult, err error) {
	if err == nil && res.NextLink != "" && s.svc.AllowedNextLink(res.NextLink) {
		http.Redirect(w, r, res.NextLink, http.StatusFound)
		return
	}
	data := ssoPageData{Success: err == nil, IdP: res.IdP.Name}
	status := http.StatusOK
	if err != nil {
		var se *identity.SSOError
		data.Reason = identity.SSOInternal
		if errors.As(err, &se) {
			data.Reason = se.Reason
		}
		status = http.StatusBadRequest
		if data.Reason == identity.SSOInternal {
			status = http.StatusInternalServerError
		}
	} else {
		for _, tp := range res.ThreePIDs {
			data.Proven = append(data.Proven, tp.Medium)
		}
	}
	renderSSO(w, status, data)
}

type ssoPageData struct {
	Success bool
	IdP     string
	Reason  string
	Proven  []string

	// The login page.
	Login  bool
	Handle string
	UserID string
	Query  string
	Chosen bool
	IdPs   []sso.IdP
}

func renderSSO(w http.ResponseWriter, status int, data ssoPageData) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self' https:; frame-ancestors 'none'")
	w.Header().Set("X-Frame-Options", "DENY")
	w.WriteHeader(status)
	ssoPage.Execute(w, data)
}

// ssoPage is the plain login and result page until the pages of api/web replace it.
var ssoPage = template.Must(template.New("sso").Funcs(template.FuncMap{"join": strings.Join}).Parse(`<!doctype html>
<html lang="nl"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{if .Login}}Inloggen als zorgverlener{{else if .Success}}Identiteit bevestigd{{else}}Inloggen mislukt{{end}}</title>
<style>body{font-family:system-ui,sans-serif;max-width:36em;margin:4em auto;padding:0 1em;color:#1b2733}h1{font-size:1.4em}.ok{color:#1a7f37}.err{color:#b42318}</style></head>
<body><main>{{if .Login}}<h1>Inloggen als zorgverlener</h1>
<p>U koppelt uw zorgidentiteit aan het Matrix-account <strong id="account">{{.UserID}}</strong>. Is dat niet uw account? Sluit dan dit venster.</p>
<p lang="en">You are linking your care identity to the Matrix account <strong>{{.UserID}}</strong>. Not your account? Close this window.</p>
{{if not .Chosen}}<form method="get" action="/_ozo/v1/sso/login"><input type="hidden" name="login" value="{{.Handle}}">
<p><label for="q">Zoek uw organisatie op naam of URA</label> <input id="q" name="q" value="{{.Query}}"> <button type="submit">Zoeken</button></p></form>{{end}}
<form method="post" action="/_ozo/v1/sso/login"><input type="hidden" name="login" value="{{.Handle}}">
<ul>{{range .IdPs}}<li><button type="submit" name="idp" value="{{.ID}}">{{.Name}}</button></li>{{else}}<li>Geen organisatie gevonden.</li>{{end}}</ul></form>
{{else if .Success}}<h1 class="ok">Identiteit bevestigd</h1>
<p>Uw inlog{{with .IdP}} bij {{.}}{{end}} is gelukt. U kunt dit venster sluiten en teruggaan naar uw chat-app.</p>
<p lang="en">Your login{{with .IdP}} at {{.}}{{end}} succeeded ({{join .Proven ", "}}). You can close this window and return to your chat app.</p>
{{else}}<h1 class="err">Inloggen mislukt</h1>
{{if eq .Reason "expired"}}<p>Deze inlogpoging is verlopen of al gebruikt. Begin opnieuw in uw chat-app.</p><p lang="en">This login has expired or was already used. Start again in your chat app.</p>
{{else if eq .Reason "other_browser"}}<p>Deze inlogpoging is in een andere browser begonnen. Begin opnieuw in uw eigen chat-app.</p><p lang="en">This login was started in another browser. Start again in your own chat app.</p>
{{else if eq .Reason "idp_error"}}<p>De identiteitsprovider heeft het inloggen afgebroken.</p><p lang="en">The identity provider cancelled the login.</p>
{{else if eq .Reason "unknown_idp"}}<p>Deze identiteitsprovider is niet bekend.</p><p lang="en">This identity provider is not known here.</p>
{{else if eq .Reason "csrf"}}<p>Dit formulier kwam niet van deze site.</p><p lang="en">This form did not come from this site.</p>
{{else if eq .Reason "internal"}}<p>Er ging bij ons iets mis. Probeer het later opnieuw.</p><p lang="en">Something went wrong on our side. Please try again later.</p>
{{else}}<p>Het antwoord van de identiteitsprovider kon niet worden gecontroleerd; er is niets gekoppeld.</p><p lang="en">The identity provider's answer could not be verified; nothing was linked.</p>{{end}}
{{end}}</main></body></html>`))
