package api

import (
	"encoding/base64"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/ozo-platform/ozo-identity/api/web"
	"github.com/ozo-platform/ozo-identity/identity"
	"github.com/ozo-platform/ozo-identity/ozoaccount"
)

// routesAccounts is the JSON API of OZO accounts (the OZO app, and the pages' fallback):
// activation, login with both factors, password reset. Every call is limited per client
// address; failed passwords and codes also lock the email out (ozoaccount).
func (s *Server) routesAccounts(r chi.Router) {
	r.Use(s.limitClient("accounts"))
	r.Post("/activate", s.accountActivate)
	r.Post("/activate/confirm", s.accountActivateConfirm)
	r.Post("/login", s.accountLogin)
	r.Post("/login/second_factor", s.accountSecondFactor)
	r.Post("/token", s.accountToken)
	r.Post("/password/request_reset", s.accountRequestReset)
	r.Post("/password/reset", s.accountReset)
}

// limitAccountPages bounds the account pages' form posts per client address, as the JSON API
// is bounded: the per-email lockout does not stop one client trying a password on many emails.
func (s *Server) limitAccountPages(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && strings.HasPrefix(r.URL.Path, web.PagePrefix+"account/") &&
			s.cfg.RateLimits.Limiter != nil && s.cfg.RateLimits.PerClient > 0 {
			ok, retry, err := s.cfg.RateLimits.Limiter.AllowN(r.Context(), "client:accounts:"+clientKey(s.clientAddr(r)), 1,
				s.cfg.RateLimits.PerClient, time.Minute)
			if err != nil || !ok {
				w.Header().Set("Retry-After", strconv.Itoa(int(retry.Seconds())+1))
				s.pages.Error(w, r, http.StatusTooManyRequests, "error.toomany", err)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// writeAccountError answers an ozoaccount error as a Matrix error.
func (s *Server) writeAccountError(w http.ResponseWriter, r *http.Request, err error) {
	var locked *ozoaccount.LockedError
	switch {
	case errors.As(err, &locked):
		retry := time.Until(locked.Until)
		w.Header().Set("Retry-After", strconv.Itoa(int(retry.Seconds())+1))
		writeJSON(w, http.StatusTooManyRequests, map[string]any{"errcode": identity.CodeLimitExceeded,
			"error": "too many failed attempts; try again later", "retry_after_ms": retry.Milliseconds()})
	case errors.Is(err, ozoaccount.ErrInvalidCredentials):
		matrixError(w, http.StatusForbidden, identity.CodeForbidden, err.Error())
	case errors.Is(err, ozoaccount.ErrHomeserver):
		s.log.WarnContext(r.Context(), "ozo account: homeserver login failed", "err", err)
		matrixError(w, http.StatusBadGateway, identity.CodeUnknown, "the homeserver did not sign the account in; log in again")
	case errors.Is(err, ozoaccount.ErrEnrolmentRequired):
		matrixError(w, http.StatusForbidden, identity.CodeForbidden, err.Error())
	case errors.Is(err, ozoaccount.ErrInvalidLink), errors.Is(err, ozoaccount.ErrHandoffRefused):
		matrixError(w, http.StatusForbidden, identity.CodeForbidden, err.Error())
	case errors.Is(err, ozoaccount.ErrWrongCode):
		matrixError(w, http.StatusForbidden, identity.CodeForbidden, "wrong code")
	case errors.Is(err, ozoaccount.ErrWeakPassword):
		matrixError(w, http.StatusBadRequest, "M_WEAK_PASSWORD", err.Error())
	case errors.Is(err, ozoaccount.ErrEmailInUse):
		matrixError(w, http.StatusBadRequest, identity.CodeThreePIDInUse, err.Error())
	case errors.Is(err, ozoaccount.ErrInvalid):
		matrixError(w, http.StatusBadRequest, identity.CodeInvalidParam, err.Error())
	case errors.Is(err, ozoaccount.ErrNotFound):
		matrixError(w, http.StatusNotFound, identity.CodeNotFound, "no such account")
	case errors.Is(err, ozoaccount.ErrMailNotSent):
		matrixError(w, http.StatusInternalServerError, identity.CodeEmailSendError, "the mail could not be sent")
	default:
		s.writeError(w, r, err)
	}
}

func (s *Server) accountActivate(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Token    string `json:"token"`
		Password string `json:"password"`
	}
	if err := s.decodeJSON(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := required(map[string]string{"token": req.Token, "password": req.Password}, "token", "password"); err != nil {
		s.writeError(w, r, err)
		return
	}
	enrol, err := s.cfg.Accounts.BeginActivation(r.Context(), req.Token, req.Password)
	if err != nil {
		s.writeAccountError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"totp_secret": enrol.Secret, "otpauth_url": enrol.OTPAuthURL,
		"qr_png": base64.StdEncoding.EncodeToString(enrol.QRPNG)})
}

func (s *Server) accountActivateConfirm(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Token string `json:"token"`
		Code  string `json:"code"`
	}
	if err := s.decodeJSON(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := required(map[string]string{"token": req.Token, "code": req.Code}, "token", "code"); err != nil {
		s.writeError(w, r, err)
		return
	}
	codes, a, err := s.cfg.Accounts.CompleteActivation(r.Context(), req.Token, req.Code)
	if err != nil {
		s.writeAccountError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"recovery_codes": codes, "user_id": a.MXID})
}

func (s *Server) accountLogin(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Email    string `json:"email"`
		Password string `json:"password"`
	}
	if err := s.decodeJSON(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	ticket, err := s.cfg.Accounts.Login(r.Context(), req.Email, req.Password)
	if err != nil {
		s.writeAccountError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"ticket": ticket})
}

func (s *Server) accountSecondFactor(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Ticket       string `json:"ticket"`
		Code         string `json:"code"`
		RecoveryCode string `json:"recovery_code"`
	}
	if err := s.decodeJSON(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if req.Ticket == "" || (req.Code == "") == (req.RecoveryCode == "") {
		s.writeError(w, r, badRequest(identity.CodeMissingParams, "give ticket and either code or recovery_code"))
		return
	}
	res, err := s.cfg.Accounts.SecondFactor(r.Context(), req.Ticket, req.Code, req.RecoveryCode)
	if err != nil {
		s.writeAccountError(w, r, err)
		return
	}
	writeSession(w, accountSession(res))
}

// accountToken redeems the one-time code the login page handed the client (in its redirect)
// for a session of the account: the client proves with the PKCE verifier that it started the
// login. The access token leaves only in this response body.
func (s *Server) accountToken(w http.ResponseWriter, r *http.Request) {
	code, verifier, ok := s.decodeRedemption(w, r)
	if !ok {
		return
	}
	res, err := s.cfg.Accounts.RedeemHandoff(r.Context(), code, verifier)
	if errors.Is(err, ozoaccount.ErrHomeserver) {
		// The code was put back: the client retries with it rather than start a new login.
		s.log.WarnContext(r.Context(), "ozo account: homeserver login failed at redemption", "err", err)
		matrixError(w, http.StatusBadGateway, identity.CodeUnknown, "the homeserver did not sign the account in; try again with the same code while it is valid")
		return
	}
	if err != nil {
		s.writeAccountError(w, r, err)
		return
	}
	writeSession(w, accountSession(res))
}

// accountSession is the answer of a completed login: the Matrix session when the OZO homeserver
// is configured, the user ID alone otherwise.
func accountSession(res ozoaccount.LoginResult) map[string]any {
	out := map[string]any{"user_id": res.UserID}
	if res.AccessToken != "" {
		out["access_token"], out["device_id"], out["home_server"] = res.AccessToken, res.DeviceID, res.HomeServer()
	}
	return out
}

// decodeRedemption reads {code, code_verifier}, the redemption of a one-time code handed to a
// client in its redirect (OZO account logins, onboarding); false: the error is written.
func (s *Server) decodeRedemption(w http.ResponseWriter, r *http.Request) (code, verifier string, ok bool) {
	var req struct {
		Code         string `json:"code"`
		CodeVerifier string `json:"code_verifier"`
	}
	if err := s.decodeJSON(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return "", "", false
	}
	if err := required(map[string]string{"code": req.Code, "code_verifier": req.CodeVerifier}, "code", "code_verifier"); err != nil {
		s.writeError(w, r, err)
		return "", "", false
	}
	return req.Code, req.CodeVerifier, true
}

// writeSession answers a Matrix session: the access token is a credential, so nothing on the
// way may keep the response.
func writeSession(w http.ResponseWriter, session any) {
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, session)
}

func (s *Server) accountRequestReset(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Email string `json:"email"`
	}
	if err := s.decodeJSON(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.cfg.Accounts.RequestReset(r.Context(), req.Email); err != nil {
		s.writeAccountError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{})
}

func (s *Server) accountReset(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Token    string `json:"token"`
		Password string `json:"password"`
	}
	if err := s.decodeJSON(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := required(map[string]string{"token": req.Token, "password": req.Password}, "token", "password"); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.cfg.Accounts.ResetPassword(r.Context(), req.Token, req.Password); err != nil {
		s.writeAccountError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{})
}
