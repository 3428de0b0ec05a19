package api

import (
	"errors"
	"html/template"
	"net/http"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/ozo-platform/ozo-identity/identity"
)

// maxSAMLForm bounds the form an IdP posts to the ACS: an encrypted, signed assertion is larger
// than any JSON body this server accepts.
const maxSAMLForm = 512 << 10

// routesSSOStart serves POST /_ozo/v1/validate/sso/start: a client with an identity-server token
// starts a login whose success validates a session for the identifiers it proves.
func (s *Server) routesSSOStart(r chi.Router) {
	r.Use(s.authenticated(true))
	r.Post("/start", s.ssoStart)
}

// routesSSO serves what IdPs and browsers reach: OIDC callbacks, the SAML ACS and SP metadata.
func (s *Server) routesSSO(r chi.Router) {
	r.Use(s.limitSSOClient)
	r.Get("/{idp}/callback", s.ssoCallback)
	r.Post("/{idp}/acs", s.ssoACS)
	r.Get("/{idp}/metadata", s.ssoMetadata)
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
	if err := required(map[string]string{"client_secret": req.ClientSecret, "idp": req.IdP}, "client_secret", "idp"); err != nil {
		s.writeError(w, r, err)
		return
	}
	sid, redirect, err := s.cfg.SSO.Start(r.Context(), account(r).UserID, req.ClientSecret, req.IdP, req.NextLink)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"sid": sid, "redirect_url": redirect})
}

func (s *Server) ssoCallback(w http.ResponseWriter, r *http.Request) {
	res, err := s.cfg.SSO.FinishRedirect(r.Context(), chi.URLParam(r, "idp"), r)
	s.ssoDone(w, r, res, err)
}

func (s *Server) ssoACS(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxSAMLForm)
	if err := r.ParseForm(); err != nil {
		s.ssoDone(w, r, identity.SSOResult{}, &identity.SSOError{Reason: identity.SSORefused, IdP: chi.URLParam(r, "idp"), Err: err})
		return
	}
	res, err := s.cfg.SSO.FinishSAML(r.Context(), chi.URLParam(r, "idp"), r.PostForm.Get("RelayState"), r.PostForm.Get("SAMLResponse"))
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
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
	w.WriteHeader(status)
	ssoPage.Execute(w, data)
}

type ssoPageData struct {
	Success bool
	IdP     string
	Reason  string
	Proven  []string
}

// ssoPage is the plain result page until the pages of api/web replace it.
var ssoPage = template.Must(template.New("sso").Funcs(template.FuncMap{"join": strings.Join}).Parse(`<!doctype html>
<html lang="nl"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{if .Success}}Identiteit bevestigd{{else}}Inloggen mislukt{{end}}</title>
<style>body{font-family:system-ui,sans-serif;max-width:36em;margin:4em auto;padding:0 1em;color:#1b2733}h1{font-size:1.4em}.ok{color:#1a7f37}.err{color:#b42318}</style></head>
<body><main>{{if .Success}}<h1 class="ok">Identiteit bevestigd</h1>
<p>Uw inlog{{with .IdP}} bij {{.}}{{end}} is gelukt. U kunt dit venster sluiten en teruggaan naar uw chat-app.</p>
<p lang="en">Your login{{with .IdP}} at {{.}}{{end}} succeeded ({{join .Proven ", "}}). You can close this window and return to your chat app.</p>
{{else}}<h1 class="err">Inloggen mislukt</h1>
{{if eq .Reason "expired"}}<p>Deze inlogpoging is verlopen of al gebruikt. Begin opnieuw in uw chat-app.</p><p lang="en">This login has expired or was already used. Start again in your chat app.</p>
{{else if eq .Reason "idp_error"}}<p>De identiteitsprovider heeft het inloggen afgebroken.</p><p lang="en">The identity provider cancelled the login.</p>
{{else if eq .Reason "unknown_idp"}}<p>Deze identiteitsprovider is niet bekend.</p><p lang="en">This identity provider is not known here.</p>
{{else if eq .Reason "internal"}}<p>Er ging bij ons iets mis. Probeer het later opnieuw.</p><p lang="en">Something went wrong on our side. Please try again later.</p>
{{else}}<p>Het antwoord van de identiteitsprovider kon niet worden gecontroleerd; er is niets gekoppeld.</p><p lang="en">The identity provider's answer could not be verified; nothing was linked.</p>{{end}}
{{end}}</main></body></html>`))
