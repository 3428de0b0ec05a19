package web

import (
	"context"
	"crypto/rand"
	"errors"
	"net/http"

	"github.com/ozo-platform/ozo-identity/identity"
	"github.com/ozo-platform/ozo-identity/sso"
)

// SSOLogins runs practitioners' logins; *identity.SSO is one.
type SSOLogins interface {
	Claim(ctx context.Context, handle, browser string) (identity.PendingLogin, error)
	Begin(ctx context.Context, handle, idpID, browser string) (string, error)
	FinishRedirect(ctx context.Context, idpID string, r *http.Request, browser string) (identity.SSOResult, error)
	VerifySAML(ctx context.Context, idpID, relayState, samlResponse string) (string, error)
	FinishSAML(ctx context.Context, idpID, handle, browser string) (identity.SSOResult, error)
	Registry() *sso.Registry
}

// SSOLoginPath is the login page a client's redirect_url opens (?login=<handle>).
const SSOLoginPath = PagePrefix + "sso/login"

// ssoBrowserKey holds, in the sealed session, the secret that ties a login to this browser.
const ssoBrowserKey = "sso_browser"

type ssoLoginData struct {
	Handle, UserID, Query string
	// NewAccount: the login makes the practitioner's Matrix account; no account is named.
	NewAccount bool
	Chosen     bool
	IdPs       []sso.IdP
}

type ssoContinueData struct {
	IdP, URL string
}

type ssoDoneData struct {
	IdP    string
	Proven []string
}

// browserSecret returns this browser's login secret, giving it one (in its session) if it has none.
func (h *Handler) browserSecret(w http.ResponseWriter, r *http.Request) string {
	s := h.LoadSession(r)
	if v := s.Values[ssoBrowserKey]; v != "" {
		return v
	}
	s.Values[ssoBrowserKey] = rand.Text()
	h.SaveSession(w, s)
	return s.Values[ssoBrowserKey]
}

// existingBrowserSecret never creates one: a browser that did not choose the IdP cannot finish.
func (h *Handler) existingBrowserSecret(r *http.Request) string {
	if v := h.LoadSession(r).Values[ssoBrowserKey]; v != "" {
		return v
	}
	return "-"
}

// ssoLogin names the account the login is for and lets the practitioner choose their
// organisation (by name or URA), or go on to the IdP the client chose.
func (h *Handler) ssoLogin(w http.ResponseWriter, r *http.Request) {
	if h.sso == nil {
		h.Error(w, r, http.StatusNotFound, "error.notfound", nil)
		return
	}
	handle := r.URL.Query().Get("login")
	p, err := h.sso.Claim(r.Context(), handle, h.browserSecret(w, r))
	if err != nil {
		h.ssoError(w, r, err)
		return
	}
	data := ssoLoginData{Handle: handle, UserID: p.UserID, NewAccount: p.NewAccount, Query: r.URL.Query().Get("q")}
	if idp, ok := h.sso.Registry().Get(p.IdP); ok {
		data.IdPs, data.Chosen = []sso.IdP{idp}, true
	} else {
		data.IdPs = h.sso.Registry().Search(data.Query)
	}
	h.Render(w, r, http.StatusOK, "sso_login", data)
}

// ssoBegin is the login form's target (Pages checked its CSRF token). The IdP is reached by a
// link, not a redirect: the pages' CSP allows forms to post to this server only, redirects included.
func (h *Handler) ssoBegin(w http.ResponseWriter, r *http.Request) {
	if h.sso == nil {
		h.Error(w, r, http.StatusNotFound, "error.notfound", nil)
		return
	}
	idpID := r.PostFormValue("idp")
	u, err := h.sso.Begin(r.Context(), r.PostFormValue("login"), idpID, h.existingBrowserSecret(r))
	if err != nil {
		h.ssoError(w, r, err)
		return
	}
	idp, _ := h.sso.Registry().Get(idpID)
	h.Render(w, r, http.StatusOK, "sso_continue", ssoContinueData{IdP: idp.Name, URL: u})
}

// SSOCallback completes an OpenID Connect or Dezi login; the IdP id is r.PathValue("idp").
// Mount it behind Pages.
func (h *Handler) SSOCallback(w http.ResponseWriter, r *http.Request) {
	if h.sso == nil {
		h.Error(w, r, http.StatusNotFound, "error.notfound", nil)
		return
	}
	res, err := h.sso.FinishRedirect(r.Context(), r.PathValue("idp"), r, h.existingBrowserSecret(r))
	h.ssoDone(w, r, res, err)
}

// SSOACS takes a SAML IdP's POST, which carries none of the browser's cookies, and sends the
// browser on to SSOFinish, a GET that carries them. Mount it behind Callback.
func (h *Handler) SSOACS(w http.ResponseWriter, r *http.Request) {
	if h.sso == nil {
		h.Error(w, r, http.StatusNotFound, "error.notfound", nil)
		return
	}
	idp := r.PathValue("idp")
	handle, err := h.sso.VerifySAML(r.Context(), idp, r.PostFormValue("RelayState"), r.PostFormValue("SAMLResponse"))
	if err != nil {
		h.ssoError(w, r, err)
		return
	}
	http.Redirect(w, r, "finish?h="+handle, http.StatusSeeOther)
}

// SSOFinish completes a SAML login SSOACS verified. Mount it behind Pages.
func (h *Handler) SSOFinish(w http.ResponseWriter, r *http.Request) {
	if h.sso == nil {
		h.Error(w, r, http.StatusNotFound, "error.notfound", nil)
		return
	}
	res, err := h.sso.FinishSAML(r.Context(), r.PathValue("idp"), r.URL.Query().Get("h"), h.existingBrowserSecret(r))
	h.ssoDone(w, r, res, err)
}

func (h *Handler) ssoDone(w http.ResponseWriter, r *http.Request, res identity.SSOResult, err error) {
	if err != nil {
		h.ssoError(w, r, err)
		return
	}
	if res.Redirect != "" {
		// Onboarding: the client's redirect URI with the one-time code (an allow-listed URI,
		// checked at the start); the access token itself never travels in a URL.
		http.Redirect(w, r, res.Redirect, http.StatusSeeOther)
		return
	}
	if res.NextLink != "" && h.tokens.AllowedNextLink(res.NextLink) {
		http.Redirect(w, r, res.NextLink, http.StatusFound)
		return
	}
	data := ssoDoneData{IdP: res.IdP.Name}
	for _, tp := range res.ThreePIDs {
		data.Proven = append(data.Proven, "sso.proven."+tp.Medium)
	}
	h.Render(w, r, http.StatusOK, "sso_done", data)
}

// ssoError shows why a login failed, in the page's language; the detail goes to the log.
func (h *Handler) ssoError(w http.ResponseWriter, r *http.Request, err error) {
	reason := identity.SSOInternal
	var se *identity.SSOError
	if errors.As(err, &se) {
		reason = se.Reason
	}
	switch reason {
	case identity.SSOInternal:
		h.Error(w, r, http.StatusInternalServerError, "error.internal", err)
	case identity.SSOUnknownIdP:
		h.Error(w, r, http.StatusNotFound, "sso.err.unknown_idp", err)
	case identity.SSOExpired, identity.SSOOtherBrowser, identity.SSOIdPError, identity.SSONothing,
		identity.SSONoHomeserver, identity.SSONoUZI:
		h.Error(w, r, http.StatusBadRequest, "sso.err."+reason, err)
	case identity.SSOHasAccount:
		// Shown only after the login proved who is asking: it is their own account.
		h.log.InfoContext(r.Context(), "page error", "status", http.StatusConflict, "path", r.URL.Path, "err", err)
		h.Render(w, r, http.StatusConflict, "error", errorData{Status: http.StatusConflict, Message: "sso.err.has_account", Account: se.UserID})
	case identity.SSOHomeserverDown:
		h.Error(w, r, http.StatusBadGateway, "sso.err.homeserver", err)
	default:
		h.Error(w, r, http.StatusBadRequest, "sso.err.refused", err)
	}
}
