package web

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"time"

	"github.com/ozo-platform/ozo-identity/ozoaccount"
)

// Accounts is what the OZO account pages need; *ozoaccount.Service is one.
type Accounts interface {
	CheckActivation(ctx context.Context, token string) (ozoaccount.Account, error)
	BeginActivation(ctx context.Context, token, password string) (ozoaccount.Enrolment, error)
	PendingEnrolment(ctx context.Context, token string) (ozoaccount.Enrolment, error)
	CompleteActivation(ctx context.Context, token, code string) ([]string, ozoaccount.Account, error)
	Login(ctx context.Context, email, password string) (string, error)
	SecondFactorHandoff(ctx context.Context, ticket, code, recoveryCode, codeChallenge string) (ozoaccount.LoginResult, ozoaccount.Handoff, error)
	RequestReset(ctx context.Context, email string) error
	CheckReset(ctx context.Context, token string) error
	ResetPassword(ctx context.Context, token, password string) error
}

// Paths of the account pages. The mailed links open AccountActivatePath and AccountResetPath
// (ozoaccount.ActivatePath, ResetPath).
const (
	AccountActivatePath = PagePrefix + "account/activate"
	AccountResetPath    = PagePrefix + "account/reset"
	accountPrefix       = PagePrefix + "account/"
)

// Session keys of the account flows. A flow's session also ends absoluteFlow after it began,
// however active it is (the cookie's own expiry is the idle one).
const (
	sessActivation = "ozo_activation" // the activation link's token, kept out of later URLs
	sessTicket     = "ozo_ticket"     // between a right password and the second factor
	sessReset      = "ozo_reset"
	sessRedirect   = "ozo_redirect"  // the client that gets the login's one-time code
	sessChallenge  = "ozo_challenge" // the client's PKCE S256 challenge the code is bound to
	sessBegan      = "ozo_began"
	absoluteFlow   = time.Hour
)

func (h *Handler) mountAccounts(mux *http.ServeMux) {
	mux.HandleFunc("GET "+AccountActivatePath, h.activateForm)
	mux.HandleFunc("POST "+AccountActivatePath, h.activateSetPassword)
	mux.HandleFunc("GET "+accountPrefix+"qr.png", h.activateQR)
	mux.HandleFunc("POST "+accountPrefix+"activate/confirm", h.activateConfirm)
	mux.HandleFunc("GET "+accountPrefix+"login", h.loginForm)
	mux.HandleFunc("POST "+accountPrefix+"login", h.loginPassword)
	mux.HandleFunc("POST "+accountPrefix+"login/code", h.loginCode)
	mux.HandleFunc("GET "+accountPrefix+"forgot", h.forgotForm)
	mux.HandleFunc("POST "+accountPrefix+"forgot", h.forgotSend)
	mux.HandleFunc("GET "+AccountResetPath, h.resetForm)
	mux.HandleFunc("POST "+AccountResetPath, h.resetSet)
}

// accountData is what the account templates get.
type accountData struct {
	Error         string // a catalog key, shown as an alert above the form
	Email         string
	Secret        string
	QR            string
	RecoveryCodes []string
	UserID        string
	ClientLink    string // the client with the login's one-time code (never a token)
	Sent          bool   // forgot: the (possible) mail is on its way
	Done          bool   // reset: the new password is set
	MinLength     int
	RetryMinutes  int
}

// flowSession returns the session of an account flow, empty when its absolute lifetime is over.
func (h *Handler) flowSession(r *http.Request) *Session {
	s := h.LoadSession(r)
	began, _ := strconv.ParseInt(s.Values[sessBegan], 10, 64)
	if began == 0 || time.Since(time.Unix(began, 0)) > absoluteFlow {
		return &Session{Values: map[string]string{}}
	}
	return s
}

func (h *Handler) beginFlow(w http.ResponseWriter, values map[string]string) {
	s := &Session{Values: map[string]string{sessBegan: strconv.FormatInt(time.Now().Unix(), 10)}}
	for k, v := range values {
		s.Values[k] = v
	}
	h.SaveSession(w, s)
}

// accountErrorKey names an ozoaccount error for the page, or "" for an unexpected one.
func accountErrorKey(err error, data *accountData) string {
	var locked *ozoaccount.LockedError
	switch {
	case errors.As(err, &locked):
		data.RetryMinutes = int(time.Until(locked.Until).Minutes()) + 1
		return "account.err.locked"
	case errors.Is(err, ozoaccount.ErrLinkUsed):
		return "account.err.link_used"
	case errors.Is(err, ozoaccount.ErrLinkExpired):
		return "account.err.link_expired"
	case errors.Is(err, ozoaccount.ErrInvalidLink):
		return "account.err.link_invalid"
	case errors.Is(err, ozoaccount.ErrInvalidCredentials):
		return "account.err.credentials"
	case errors.Is(err, ozoaccount.ErrEnrolmentRequired):
		return "account.err.enrol"
	case errors.Is(err, ozoaccount.ErrWrongCode):
		return "account.err.code"
	case errors.Is(err, ozoaccount.ErrWeakPassword):
		return "account.err.weak"
	case errors.Is(err, ozoaccount.ErrInvalid):
		return "account.err.invalid"
	}
	return ""
}

// formError re-renders page with the error above its form, or the error page for the unexpected.
func (h *Handler) formError(w http.ResponseWriter, r *http.Request, page string, data accountData, err error) {
	key := accountErrorKey(err, &data)
	if key == "" {
		h.Error(w, r, http.StatusInternalServerError, "error.internal", err)
		return
	}
	data.Error = key
	status := http.StatusBadRequest
	if key == "account.err.locked" {
		status = http.StatusTooManyRequests
	}
	if key == "account.err.credentials" {
		status = http.StatusForbidden
	}
	h.Render(w, r, status, page, data)
}

// linkError shows why a mailed link cannot be used, with no form.
func (h *Handler) linkError(w http.ResponseWriter, r *http.Request, err error) {
	data := accountData{}
	key := accountErrorKey(err, &data)
	if key == "" {
		h.Error(w, r, http.StatusInternalServerError, "error.internal", err)
		return
	}
	h.Error(w, r, http.StatusBadRequest, key, nil)
}

func (h *Handler) activateForm(w http.ResponseWriter, r *http.Request) {
	token := r.URL.Query().Get("token")
	if token == "" {
		// The language switch and a reload come back without the token: it is in the session.
		token = h.flowSession(r).Values[sessActivation]
	}
	a, err := h.accounts.CheckActivation(r.Context(), token)
	if err != nil {
		h.linkError(w, r, err)
		return
	}
	h.beginFlow(w, map[string]string{sessActivation: token})
	if r.URL.Query().Has("token") {
		// Keep the token out of the address bar and history.
		http.Redirect(w, r, AccountActivatePath, http.StatusSeeOther)
		return
	}
	h.Render(w, r, http.StatusOK, "account_activate", accountData{Email: a.Email, MinLength: h.minPassword})
}

func (h *Handler) activateSetPassword(w http.ResponseWriter, r *http.Request) {
	token := h.flowSession(r).Values[sessActivation]
	a, err := h.accounts.CheckActivation(r.Context(), token)
	if err != nil {
		h.linkError(w, r, err)
		return
	}
	data := accountData{Email: a.Email, MinLength: h.minPassword}
	pw := r.PostFormValue("password")
	if pw != r.PostFormValue("password2") {
		data.Error = "account.err.mismatch"
		h.Render(w, r, http.StatusBadRequest, "account_activate", data)
		return
	}
	enrol, err := h.accounts.BeginActivation(r.Context(), token, pw)
	if err != nil {
		h.formError(w, r, "account_activate", data, err)
		return
	}
	h.Render(w, r, http.StatusOK, "account_enrol", accountData{Email: a.Email, Secret: enrol.Secret, QR: accountPrefix + "qr.png"})
}

// activateQR serves the pending enrolment's QR code (the CSP allows images from here only).
func (h *Handler) activateQR(w http.ResponseWriter, r *http.Request) {
	enrol, err := h.accounts.PendingEnrolment(r.Context(), h.flowSession(r).Values[sessActivation])
	if err != nil {
		h.linkError(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "image/png")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(enrol.QRPNG)
}

func (h *Handler) activateConfirm(w http.ResponseWriter, r *http.Request) {
	token := h.flowSession(r).Values[sessActivation]
	codes, a, err := h.accounts.CompleteActivation(r.Context(), token, r.PostFormValue("code"))
	if errors.Is(err, ozoaccount.ErrWrongCode) {
		enrol, perr := h.accounts.PendingEnrolment(r.Context(), token)
		if perr == nil {
			h.Render(w, r, http.StatusBadRequest, "account_enrol", accountData{Error: "account.err.code", Secret: enrol.Secret, QR: accountPrefix + "qr.png"})
			return
		}
	}
	if err != nil {
		h.linkError(w, r, err)
		return
	}
	h.ClearSession(w)
	h.Render(w, r, http.StatusOK, "account_codes", accountData{Email: a.Email, RecoveryCodes: codes, UserID: a.MXID})
}

// loginForm starts a login. A client that wants the login (the OZO app) names its page
// (redirect_uri, one of the configured client URLs) and a PKCE S256 code_challenge: it receives
// a one-time code that only the challenge's verifier redeems (POST /_ozo/v1/accounts/token).
func (h *Handler) loginForm(w http.ResponseWriter, r *http.Request) {
	values := map[string]string{}
	q := r.URL.Query()
	if ru := q.Get("redirect_uri"); ru != "" {
		if !h.allowedClient(ru) {
			h.Error(w, r, http.StatusBadRequest, "account.err.client", nil)
			return
		}
		if m := q.Get("code_challenge_method"); !ozoaccount.ValidChallenge(q.Get("code_challenge")) || m != "" && m != "S256" {
			h.Error(w, r, http.StatusBadRequest, "account.err.challenge", nil)
			return
		}
		values[sessRedirect], values[sessChallenge] = ru, q.Get("code_challenge")
	} else if prev := h.flowSession(r); prev.Values[sessRedirect] != "" {
		// A language switch keeps the client.
		values[sessRedirect], values[sessChallenge] = prev.Values[sessRedirect], prev.Values[sessChallenge]
	}
	h.beginFlow(w, values)
	h.Render(w, r, http.StatusOK, "account_login", accountData{})
}

func (h *Handler) allowedClient(u string) bool {
	pu, err := url.Parse(u)
	return err == nil && pu.Fragment == "" && slices.Contains(h.clientURLs, u)
}

func (h *Handler) loginPassword(w http.ResponseWriter, r *http.Request) {
	s := h.flowSession(r)
	email := r.PostFormValue("email")
	ticket, err := h.accounts.Login(r.Context(), email, r.PostFormValue("password"))
	if err != nil {
		h.formError(w, r, "account_login", accountData{Email: email}, err)
		return
	}
	s.Values[sessTicket] = ticket
	if s.Values[sessBegan] == "" {
		s.Values[sessBegan] = strconv.FormatInt(time.Now().Unix(), 10)
	}
	h.SaveSession(w, s)
	h.Render(w, r, http.StatusOK, "account_code", accountData{})
}

func (h *Handler) loginCode(w http.ResponseWriter, r *http.Request) {
	s := h.flowSession(r)
	recovery := r.PostFormValue("recovery_code")
	redirect, challenge := s.Values[sessRedirect], s.Values[sessChallenge]
	if redirect == "" || !h.allowedClient(redirect) {
		// No client waits (or it is no longer configured): nothing is handed over.
		redirect, challenge = "", ""
	}
	res, handoff, err := h.accounts.SecondFactorHandoff(r.Context(), s.Values[sessTicket], r.PostFormValue("code"), recovery, challenge)
	if errors.Is(err, ozoaccount.ErrInvalidLink) {
		// The ticket is gone (expired, used): start again.
		h.formError(w, r, "account_login", accountData{}, ozoaccount.ErrInvalidCredentials)
		return
	}
	if err != nil {
		h.formError(w, r, "account_code", accountData{}, err)
		return
	}
	h.ClearSession(w)
	data := accountData{UserID: res.UserID}
	if handoff.Code != "" {
		// Only the one-time code travels in the URL; the client redeems it with its PKCE
		// verifier. The person follows the link (a redirect after a form is held to
		// form-action 'self').
		u, err := url.Parse(redirect)
		if err != nil {
			h.Error(w, r, http.StatusInternalServerError, "error.internal", err)
			return
		}
		q := u.Query()
		q.Set("code", handoff.Code)
		u.RawQuery = q.Encode()
		data.ClientLink = u.String()
	}
	h.Render(w, r, http.StatusOK, "account_done", data)
}

func (h *Handler) forgotForm(w http.ResponseWriter, r *http.Request) {
	h.Render(w, r, http.StatusOK, "account_forgot", accountData{})
}

func (h *Handler) forgotSend(w http.ResponseWriter, r *http.Request) {
	email := r.PostFormValue("email")
	if err := h.accounts.RequestReset(r.Context(), email); err != nil {
		h.formError(w, r, "account_forgot", accountData{Email: email}, err)
		return
	}
	// The same page whether or not the address has an account.
	h.Render(w, r, http.StatusOK, "account_forgot", accountData{Email: email, Sent: true})
}

func (h *Handler) resetForm(w http.ResponseWriter, r *http.Request) {
	token := r.URL.Query().Get("token")
	if token == "" {
		token = h.flowSession(r).Values[sessReset]
	}
	if err := h.accounts.CheckReset(r.Context(), token); err != nil {
		h.linkError(w, r, err)
		return
	}
	h.beginFlow(w, map[string]string{sessReset: token})
	if r.URL.Query().Has("token") {
		http.Redirect(w, r, AccountResetPath, http.StatusSeeOther)
		return
	}
	h.Render(w, r, http.StatusOK, "account_reset", accountData{MinLength: h.minPassword})
}

func (h *Handler) resetSet(w http.ResponseWriter, r *http.Request) {
	token := h.flowSession(r).Values[sessReset]
	data := accountData{MinLength: h.minPassword}
	pw := r.PostFormValue("password")
	if pw != r.PostFormValue("password2") {
		data.Error = "account.err.mismatch"
		h.Render(w, r, http.StatusBadRequest, "account_reset", data)
		return
	}
	if err := h.accounts.ResetPassword(r.Context(), token, pw); err != nil {
		if errors.Is(err, ozoaccount.ErrWeakPassword) || errors.Is(err, ozoaccount.ErrInvalid) {
			h.formError(w, r, "account_reset", data, err)
			return
		}
		h.linkError(w, r, err)
		return
	}
	h.ClearSession(w)
	data.Done = true
	h.Render(w, r, http.StatusOK, "account_reset", data)
}
