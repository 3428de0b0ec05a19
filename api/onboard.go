package api

import (
	"errors"
	"net/http"
	"net/url"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/ozo-platform/ozo-identity/api/web"
	"github.com/ozo-platform/ozo-identity/identity"
)

// routesOnboard serves onboarding: a practitioner without a Matrix account logs in and the client
// receives a session of the account the login made. No identity-server token: there is no
// account yet. Both calls count against the client address's budget.
func (s *Server) routesOnboard(r chi.Router) {
	r.Use(s.limitClient("onboard"))
	r.Post("/sso/start", s.onboardStart)
	r.Post("/token", s.onboardToken)
}

func (s *Server) onboardStart(w http.ResponseWriter, r *http.Request) {
	var req struct {
		IdP                 string `json:"idp"`
		RedirectURI         string `json:"redirect_uri"`
		CodeChallenge       string `json:"code_challenge"`
		CodeChallengeMethod string `json:"code_challenge_method"`
	}
	if err := s.decodeJSON(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := required(map[string]string{"redirect_uri": req.RedirectURI, "code_challenge": req.CodeChallenge},
		"redirect_uri", "code_challenge"); err != nil {
		s.writeError(w, r, err)
		return
	}
	if req.CodeChallengeMethod != "" && req.CodeChallengeMethod != "S256" {
		matrixError(w, http.StatusBadRequest, identity.CodeInvalidParam, "code_challenge_method must be S256")
		return
	}
	handle, err := s.cfg.SSO.StartOnboarding(r.Context(), clientKey(s.clientAddr(r)), req.IdP, req.RedirectURI, req.CodeChallenge)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	redirect := strings.TrimRight(s.cfg.PublicBaseURL, "/") + web.SSOLoginPath + "?" + url.Values{"login": {handle}}.Encode()
	writeJSON(w, http.StatusOK, map[string]string{"redirect_url": redirect})
}

func (s *Server) onboardToken(w http.ResponseWriter, r *http.Request) {
	code, verifier, ok := s.decodeRedemption(w, r)
	if !ok {
		return
	}
	l, err := s.cfg.SSO.Redeem(r.Context(), code, verifier)
	if errors.Is(err, identity.ErrHomeserverFailed) {
		s.log.WarnContext(r.Context(), "onboarding: homeserver login failed", "err", err)
		matrixError(w, http.StatusBadGateway, identity.CodeUnknown, "the homeserver did not sign the account in; try again")
		return
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeSession(w, map[string]string{"user_id": l.UserID, "access_token": l.AccessToken,
		"device_id": l.DeviceID, "home_server": l.HomeServer})
}
