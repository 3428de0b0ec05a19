package api

import (
	"errors"
	"net/http"
	"strconv"

	"github.com/go-chi/chi/v5"

	"github.com/ozo-platform/ozo-identity/identity"
	"github.com/ozo-platform/ozo-identity/ozoaccount"
)

// routesAdminAccounts provisions OZO accounts: by hand, or from the platform's FHIR
// RelatedPerson and Patient resources. adminAuth audits every call (method, path, status);
// the audit target is the account ID, never an email or a BSN.
func (s *Server) routesAdminAccounts(r chi.Router) {
	r.Post("/accounts", s.adminCreateAccount)
	r.Get("/accounts", s.adminListAccounts)
	r.Get("/accounts/{id}", s.adminShowAccount)
	r.Delete("/accounts/{id}", s.adminDeleteAccount)
	r.Post("/accounts/{id}/disable", s.adminAccountAction("disable"))
	r.Post("/accounts/{id}/enable", s.adminAccountAction("enable"))
	r.Post("/accounts/{id}/reset-2fa", s.adminAccountAction("reset-2fa"))
	r.Post("/accounts/{id}/resend", s.adminAccountAction("resend"))
	r.Post("/fhir/RelatedPerson", s.adminFHIR(ozoaccount.KindRelatedPerson))
	r.Post("/fhir/Patient", s.adminFHIR(ozoaccount.KindPatient))
}

// AccountJSON is an account as the admin API shows it: no secrets, no hashes.
type AccountJSON struct {
	ID                string `json:"id"`
	Email             string `json:"email"`
	DisplayName       string `json:"display_name"`
	Kind              string `json:"kind"`
	Status            string `json:"status"`
	FHIRReference     string `json:"fhir_reference,omitempty"`
	Language          string `json:"language"`
	MatrixUserID      string `json:"matrix_user_id,omitempty"`
	TOTPEnrolled      bool   `json:"totp_enrolled"`
	RecoveryCodesLeft *int   `json:"recovery_codes_left,omitempty"`
	CreatedAt         int64  `json:"created_at"`
	ActivatedAt       int64  `json:"activated_at,omitempty"`
}

func accountJSON(a ozoaccount.Account) AccountJSON {
	out := AccountJSON{ID: a.ID, Email: a.Email, DisplayName: a.DisplayName, Kind: string(a.Kind), Status: string(a.Status),
		FHIRReference: a.FHIRRef, Language: a.Language, MatrixUserID: a.MXID, TOTPEnrolled: a.TOTPSecret != "",
		CreatedAt: a.CreatedAt.UnixMilli()}
	if !a.ActivatedAt.IsZero() {
		out.ActivatedAt = a.ActivatedAt.UnixMilli()
	}
	return out
}

func (s *Server) accountsEnabled(w http.ResponseWriter) bool {
	if s.cfg.Accounts == nil {
		matrixError(w, http.StatusNotFound, "M_UNRECOGNIZED", "OZO accounts are not enabled")
		return false
	}
	return true
}

func (s *Server) adminCreateAccount(w http.ResponseWriter, r *http.Request) {
	if !s.accountsEnabled(w) {
		return
	}
	var req struct {
		Email         string `json:"email"`
		DisplayName   string `json:"display_name"`
		Kind          string `json:"kind"`
		FHIRReference string `json:"fhir_reference"`
		Language      string `json:"language"`
	}
	if err := s.decodeJSON(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := required(map[string]string{"email": req.Email, "kind": req.Kind}, "email", "kind"); err != nil {
		s.writeError(w, r, err)
		return
	}
	a, created, err := s.cfg.Accounts.Provision(r.Context(), ozoaccount.ProvisionRequest{Email: req.Email, DisplayName: req.DisplayName,
		Kind: ozoaccount.Kind(req.Kind), FHIRRef: req.FHIRReference, Language: req.Language})
	s.answerProvision(w, r, a, created, err)
}

// answerProvision: 201 for a new account, 200 for an update; a new account whose mail failed
// is kept (resend it) and answered 500 M_EMAIL_SEND_ERROR with the account.
func (s *Server) answerProvision(w http.ResponseWriter, r *http.Request, a ozoaccount.Account, created bool, err error) {
	if a.ID != "" {
		setAuditTarget(r, "ozo_account:"+a.ID)
	}
	if errors.Is(err, ozoaccount.ErrMailNotSent) && a.ID != "" {
		writeJSON(w, http.StatusInternalServerError, map[string]any{"errcode": identity.CodeEmailSendError,
			"error": "the account is stored but its invitation could not be sent; POST …/resend to try again", "account": accountJSON(a)})
		return
	}
	if err != nil {
		s.writeAccountError(w, r, err)
		return
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	writeJSON(w, status, map[string]any{"account": accountJSON(a), "created": created})
}

func (s *Server) adminFHIR(kind ozoaccount.Kind) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !s.accountsEnabled(w) {
			return
		}
		body, err := s.readBody(w, r)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		p, err := ozoaccount.ParseFHIR(kind, body)
		if err != nil {
			s.writeAccountError(w, r, err)
			return
		}
		a, created, err := s.cfg.Accounts.Provision(r.Context(), p.Request)
		if err == nil && !p.Active && a.Status != ozoaccount.StatusDisabled {
			a, err = s.cfg.Accounts.Disable(r.Context(), a.ID)
		}
		s.answerProvision(w, r, a, created, err)
	}
}

func (s *Server) adminListAccounts(w http.ResponseWriter, r *http.Request) {
	if !s.accountsEnabled(w) {
		return
	}
	limit := 100
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			s.writeError(w, r, badRequest(identity.CodeInvalidParam, "limit must be 1-1000"))
			return
		}
		limit = n
	}
	list, err := s.cfg.Accounts.List(r.Context(), r.URL.Query().Get("after"), limit)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := make([]AccountJSON, 0, len(list))
	for _, a := range list {
		out = append(out, accountJSON(a))
	}
	resp := map[string]any{"accounts": out}
	if len(list) == limit {
		resp["next_after"] = list[len(list)-1].ID
	}
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) adminShowAccount(w http.ResponseWriter, r *http.Request) {
	if !s.accountsEnabled(w) {
		return
	}
	id := chi.URLParam(r, "id")
	setAuditTarget(r, "ozo_account:"+id)
	a, err := s.cfg.Accounts.Get(r.Context(), id)
	if err != nil {
		s.writeAccountError(w, r, err)
		return
	}
	out := accountJSON(a)
	if n, err := s.cfg.Accounts.RecoveryCodesLeft(r.Context(), a.ID); err == nil && a.TOTPSecret != "" {
		out.RecoveryCodesLeft = &n
	}
	writeJSON(w, http.StatusOK, map[string]any{"account": out})
}

func (s *Server) adminDeleteAccount(w http.ResponseWriter, r *http.Request) {
	if !s.accountsEnabled(w) {
		return
	}
	id := chi.URLParam(r, "id")
	setAuditTarget(r, "ozo_account:"+id)
	if err := s.cfg.Accounts.Delete(r.Context(), id); err != nil {
		s.writeAccountError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{})
}

func (s *Server) adminAccountAction(action string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s.accountAction(w, r, action)
	}
}

func (s *Server) accountAction(w http.ResponseWriter, r *http.Request, action string) {
	if !s.accountsEnabled(w) {
		return
	}
	id := chi.URLParam(r, "id")
	setAuditTarget(r, "ozo_account:"+id)
	var (
		a   ozoaccount.Account
		err error
	)
	switch action {
	case "disable":
		a, err = s.cfg.Accounts.Disable(r.Context(), id)
	case "enable":
		a, err = s.cfg.Accounts.Enable(r.Context(), id)
	case "reset-2fa":
		a, err = s.cfg.Accounts.ResetSecondFactor(r.Context(), id)
	case "resend":
		if err = s.cfg.Accounts.Resend(r.Context(), id); err == nil {
			a, err = s.cfg.Accounts.Get(r.Context(), id)
		}
	}
	if err != nil {
		s.writeAccountError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"account": accountJSON(a)})
}
