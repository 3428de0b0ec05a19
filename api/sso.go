package api

import (
	"net/http"
	"net/url"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/ozo-platform/ozo-identity/api/web"
	"github.com/ozo-platform/ozo-identity/identity"
)

// routesSSOStart serves POST /_ozo/v1/validate/sso/start: a client with an identity-server token
// starts a login whose success validates a session for the identifiers it proves.
func (s *Server) routesSSOStart(r chi.Router) {
	r.Use(s.authenticated(true))
	r.Post("/start", s.ssoStart)
}

// routesSSO serves what IdPs and browsers reach: OIDC callbacks, the SAML ACS and the page it
// hands over to (pages of api/web), and the SP metadata.
func (s *Server) routesSSO(r chi.Router) {
	r.Use(s.limitSSOClient)
	page := func(h http.HandlerFunc, wrap func(http.Handler) http.Handler) http.HandlerFunc {
		wrapped := wrap(h)
		return func(w http.ResponseWriter, r *http.Request) {
			r.SetPathValue("idp", chi.URLParam(r, "idp"))
			wrapped.ServeHTTP(w, r)
		}
	}
	r.Get("/{idp}/callback", page(s.pages.SSOCallback, s.pages.Pages))
	r.Post("/{idp}/acs", page(s.pages.SSOACS, s.pages.Callback))
	r.Get("/{idp}/finish", page(s.pages.SSOFinish, s.pages.Pages))
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
	if err := required(map[string]string{"client_secret": req.ClientSecret}, "client_secret"); err != nil {
		s.writeError(w, r, err)
		return
	}
	sid, handle, err := s.cfg.SSO.Start(r.Context(), account(r).UserID, req.ClientSecret, req.IdP, req.NextLink)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	redirect := strings.TrimRight(s.cfg.PublicBaseURL, "/") + web.SSOLoginPath + "?" + url.Values{"login": {handle}}.Encode()
	writeJSON(w, http.StatusOK, map[string]string{"sid": sid, "redirect_url": redirect})
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
