package identity

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"time"

	"github.com/ozo-platform/ozo-identity/audit"
	"github.com/ozo-platform/ozo-identity/sso"
	"github.com/ozo-platform/ozo-identity/threepid"
)

// SSOStore keeps the validation sessions SSO logins complete.
type SSOStore interface {
	// CreateSSOSession stores sess (validated, its ThreePID the first of tps) with every 3PID
	// the login proved and the user who started it; ErrAlreadyExists when the client
	// secret already has a session for that first 3PID.
	// recs are appended to the audit chain in the same transaction.
	CreateSSOSession(ctx context.Context, sess Session, userID, idp string, tps []threepid.ThreePID, recs ...audit.Record) error
	// SSOSession returns the starting user and proven 3PIDs of an SSO session, the session's own
	// 3PID first; ErrNotFound for any other session.
	SSOSession(ctx context.Context, sid string) (userID string, tps []threepid.ThreePID, err error)
}

// SSOOptions are the tunables of SSO logins.
type SSOOptions struct {
	// LoginLifetime bounds the time between Start and the IdP's answer.
	LoginLifetime time.Duration
	// StartsPerAccount is how many logins one account may start per minute.
	StartsPerAccount int
	// AuditRefused records a refused login (bounded per source, as refused admin calls are);
	// nil records none.
	AuditRefused func(ctx context.Context, rec audit.Record) error
	// Onboarding lets logins make Matrix accounts; its zero value makes none.
	Onboarding OnboardingOptions
}

// SSO validates practitioners' 3PIDs by a login at their care provider's IdP or at Dezi.
type SSO struct {
	svc   *Service
	store SSOStore
	idps  *sso.Registry
	state sso.StateStore
	opts  SSOOptions
	log   *slog.Logger
}

// NewSSO wires SSO validation into svc: its sessions then bind every 3PID they proved.
func NewSSO(svc *Service, store SSOStore, idps *sso.Registry, state sso.StateStore, opts SSOOptions, log *slog.Logger) *SSO {
	if opts.LoginLifetime <= 0 {
		opts.LoginLifetime = 10 * time.Minute
	}
	if opts.Onboarding.CodeLifetime <= 0 {
		opts.Onboarding.CodeLifetime = time.Minute
	}
	if opts.Onboarding.StartsPerClient <= 0 {
		opts.Onboarding.StartsPerClient = 10
	}
	svc.ssoStore = store
	return &SSO{svc: svc, store: store, idps: idps, state: state, opts: opts, log: log}
}

// Registry returns the configured IdPs.
func (s *SSO) Registry() *sso.Registry { return s.idps }

// Start begins a login for userID's validation session (client secret, next link), at IdP
// idpID or, when it is empty, at the IdP the practitioner picks. It returns the session ID and
// a one-time handle for the login page, where the practitioner sees which account the login
// is for before going to the IdP.
func (s *SSO) Start(ctx context.Context, userID, clientSecret, idpID, nextLink string) (sid, handle string, err error) {
	if !validSecret(clientSecret) {
		return "", "", errorf(CodeInvalidParam, "client_secret must be 1-255 characters of [0-9a-zA-Z.=_-]")
	}
	if nextLink != "" && !s.svc.AllowedNextLink(nextLink) {
		return "", "", errorf(CodeInvalidParam, "next_link must be an https URL on an allowed host (validation.next_link_hosts)")
	}
	if idpID != "" {
		if _, ok := s.idps.Get(idpID); !ok {
			return "", "", errorf(CodeInvalidParam, "no identity provider %q is configured", truncate(idpID, 64))
		}
	}
	if n := s.opts.StartsPerAccount; n > 0 {
		if ok, err := s.state.Throttle(ctx, "sso-start:"+userID, n, time.Minute); err != nil {
			return "", "", fmt.Errorf("sso start: %w", err)
		} else if !ok {
			return "", "", errorf(CodeLimitExceeded, "too many logins started; try again in a minute")
		}
	}
	f := sso.Flow{State: randomToken(24), IdP: idpID, SID: randomToken(12), ClientSecret: clientSecret, UserID: userID,
		NextLink: nextLink, ExpiresAt: s.svc.now().Add(s.opts.LoginLifetime)}
	if err := s.state.PutFlow(ctx, f); err != nil {
		return "", "", fmt.Errorf("sso start: %w", err)
	}
	s.log.Info("sso login started", "idp", idpID, "user_id", userID, "sid", f.SID)
	return f.SID, f.State, nil
}

// PendingLogin is a started login, as the login page shows it.
type PendingLogin struct {
	// UserID is the account the login will validate identifiers for; empty with NewAccount.
	UserID string
	// NewAccount: the login makes the practitioner's Matrix account (onboarding).
	NewAccount bool
	// IdP is the IdP the client chose; empty when the practitioner picks one.
	IdP       string
	ExpiresAt time.Time
}

// browserHash keeps the browser's secret out of the state store.
func browserHash(secret string) string { return hashToken("sso-browser:" + secret) }

// Claim binds a started login to the browser that opens its page first (browser is a secret
// only that browser's session holds) and returns it; another browser is refused.
func (s *SSO) Claim(ctx context.Context, handle, browser string) (PendingLogin, error) {
	if handle == "" || len(handle) > 255 || browser == "" {
		return PendingLogin{}, &SSOError{Reason: SSOExpired, Err: errors.New("no login handle")}
	}
	f, err := s.state.TakeFlow(ctx, handle)
	if errors.Is(err, sso.ErrNotFound) || err == nil && (f.Proven != nil || f.RequestID != "" || f.Nonce != "" || isCode(f)) {
		if err == nil && isCode(f) {
			// A code is not a login handle: put it back for its client.
			if err := s.state.PutFlow(ctx, f); err != nil {
				s.log.Warn("sso: put back an onboarding code", "err", err)
			}
		}
		return PendingLogin{}, &SSOError{Reason: SSOExpired, Err: errors.New("no such pending login")}
	}
	if err != nil {
		return PendingLogin{}, &SSOError{Reason: SSOInternal, Err: err}
	}
	if f.Browser != "" && f.Browser != browserHash(browser) {
		if err := s.state.PutFlow(ctx, f); err != nil {
			s.log.Warn("sso: put back a login claimed by another browser", "err", err)
		}
		s.log.Warn("sso login opened in a second browser", "sid", f.SID, "user_id", f.UserID)
		return PendingLogin{}, &SSOError{Reason: SSOOtherBrowser, IdP: f.IdP, Err: errors.New("claimed by another browser")}
	}
	f.Browser = browserHash(browser)
	if err := s.state.PutFlow(ctx, f); err != nil {
		return PendingLogin{}, &SSOError{Reason: SSOInternal, Err: err}
	}
	return PendingLogin{UserID: f.UserID, NewAccount: f.Onboard != nil, IdP: f.IdP, ExpiresAt: f.ExpiresAt}, nil
}

// Begin sends the browser that claimed login handle to IdP idpID and returns the IdP's URL.
func (s *SSO) Begin(ctx context.Context, handle, idpID, browser string) (string, error) {
	fail := func(reason string, err error) (string, error) {
		s.log.Warn("sso login refused", "idp", idpID, "reason", reason, "err", err)
		return "", &SSOError{Reason: reason, IdP: idpID, Err: err}
	}
	idp, ok := s.idps.Get(idpID)
	if !ok {
		return fail(SSOUnknownIdP, errors.New("not configured"))
	}
	p, err := s.state.TakeFlow(ctx, handle)
	switch {
	case err == nil && isCode(p):
		if err := s.state.PutFlow(ctx, p); err != nil {
			s.log.Warn("sso: put back an onboarding code", "err", err)
		}
		return fail(SSOExpired, errors.New("an onboarding code is not a login handle"))
	case errors.Is(err, sso.ErrNotFound) || err == nil && (p.Proven != nil || p.Nonce != ""):
		return fail(SSOExpired, errors.New("no such pending login"))
	case err != nil:
		return fail(SSOInternal, err)
	case p.Browser == "" || p.Browser != browserHash(browser) || p.IdP != "" && p.IdP != idp.ID:
		// Put back: a stranger who learnt the handle must not end the practitioner's login.
		if err := s.state.PutFlow(ctx, p); err != nil {
			s.log.Warn("sso: put back a pending login", "err", err)
		}
		if p.IdP != "" && p.IdP != idp.ID {
			return fail(SSORefused, fmt.Errorf("the client chose %s", p.IdP))
		}
		return fail(SSOOtherBrowser, errors.New("the login page was opened in another browser"))
	}
	f := p
	f.State, f.IdP, f.Nonce, f.PKCEVerifier = randomToken(24), idp.ID, randomToken(24), randomToken(32)
	var redirectURL string
	switch c := idp.Connector.(type) {
	case sso.SAMLConnector:
		redirectURL, f.RequestID, err = c.AuthnRequest(ctx, f.State)
	case sso.RedirectConnector:
		redirectURL, err = c.LoginURL(ctx, f)
	}
	if err != nil {
		return fail(SSOInternal, err)
	}
	if err := s.state.PutFlow(ctx, f); err != nil {
		return fail(SSOInternal, err)
	}
	return redirectURL, nil
}

// Reasons an SSO login fails, for the page the practitioner sees.
const (
	SSOUnknownIdP = "unknown_idp"
	SSOExpired    = "expired"   // no such login: expired, already used or never started
	SSOIdPError   = "idp_error" // the IdP reported an error (cancelled, denied)
	SSORefused    = "refused"   // the IdP's answer did not verify
	SSONothing    = "nothing"   // verified, but nothing usable was proven
	SSOInternal   = "internal"
	// SSOOtherBrowser: the login is finished in another browser than the one that chose the
	// IdP (a login link forwarded to someone else).
	SSOOtherBrowser = "other_browser"
)

// SSOError is a failed login.
type SSOError struct {
	Reason string
	IdP    string
	// UserID is the account a practitioner already has (SSOHasAccount), shown to them.
	UserID string
	Err    error
}

func (e *SSOError) Error() string {
	return "sso login at " + e.IdP + ": " + e.Reason + ": " + e.Err.Error()
}
func (e *SSOError) Unwrap() error { return e.Err }

// SSOResult is what a completed login validated.
type SSOResult struct {
	SID       string
	NextLink  string
	IdP       sso.IdP
	ThreePIDs []threepid.ThreePID
	// Refused names what the IdP asserted but may not prove (an untrusted IdP's UZI number).
	Refused     []string
	DisplayName string
	// UserID is the account the proven 3PIDs were bound to, for an onboarding login.
	UserID string
	// Redirect is where an onboarding login sends the browser: the client's redirect URI with
	// the one-time code.
	Redirect string
}

// FinishRedirect completes an OpenID Connect or Dezi login from its callback request, in the
// browser whose secret is browser.
func (s *SSO) FinishRedirect(ctx context.Context, idpID string, r *http.Request, browser string) (SSOResult, error) {
	idp, f, err := s.take(ctx, idpID, r.URL.Query().Get("state"), browser)
	if err != nil {
		return SSOResult{}, err
	}
	c, ok := idp.Connector.(sso.RedirectConnector)
	if !ok || f.Proven != nil {
		return s.fail(ctx, idpID, SSORefused, fmt.Errorf("%s is not a redirect IdP", idp.ID))
	}
	id, err := c.HandleCallback(ctx, f, r)
	if err != nil {
		return s.refused(ctx, idpID, err)
	}
	return s.complete(ctx, idp, f, id)
}

// VerifySAML checks the response a browser posted to the SAML ACS (which carries none of the
// browser's cookies) and returns a handle for FinishSAML, which the same browser must call.
func (s *SSO) VerifySAML(ctx context.Context, idpID, relayState, samlResponse string) (string, error) {
	idp, f, err := s.take(ctx, idpID, relayState, "")
	if err != nil {
		return "", err
	}
	c, ok := idp.Connector.(sso.SAMLConnector)
	if !ok || f.Proven != nil {
		_, err := s.fail(ctx, idpID, SSORefused, fmt.Errorf("%s is not a SAML IdP", idp.ID))
		return "", err
	}
	id, err := c.HandlePOST(ctx, f, samlResponse)
	if err != nil {
		_, err := s.refused(ctx, idpID, err)
		return "", err
	}
	f.Proven = &id
	f.State = randomToken(24)
	// The browser follows the ACS's redirect at once; the verified answer does not wait long.
	if short := s.svc.now().Add(2 * time.Minute); short.Before(f.ExpiresAt) {
		f.ExpiresAt = short
	}
	if err := s.state.PutFlow(ctx, f); err != nil {
		_, err := s.fail(ctx, idpID, SSOInternal, err)
		return "", err
	}
	return f.State, nil
}

// FinishSAML completes a SAML login VerifySAML verified, in the browser whose secret is browser.
func (s *SSO) FinishSAML(ctx context.Context, idpID, handle, browser string) (SSOResult, error) {
	idp, f, err := s.take(ctx, idpID, handle, browser)
	if err != nil {
		return SSOResult{}, err
	}
	if f.Proven == nil {
		return s.fail(ctx, idpID, SSOExpired, errors.New("no verified SAML answer for this handle"))
	}
	return s.complete(ctx, idp, f, *f.Proven)
}

func (s *SSO) fail(ctx context.Context, idpID, reason string, err error) (SSOResult, error) {
	s.log.Warn("sso login refused", "idp", idpID, "reason", reason, "err", err)
	if s.opts.AuditRefused != nil {
		outcome := audit.OutcomeRefused
		if reason == SSOInternal {
			outcome = audit.OutcomeError
		}
		rec := audit.ScopeFrom(ctx).Record(audit.ActionLoginFailure, outcome)
		rec.Resource, rec.Detail = "idp "+idpID, "reason="+reason
		// A browser that hangs up does not take the record of its refused login with it.
		actx, cancel := detached(ctx)
		if aerr := s.opts.AuditRefused(actx, rec); aerr != nil {
			s.log.Error("audit record of a refused login not written", "err", aerr)
		}
		cancel()
	}
	return SSOResult{}, &SSOError{Reason: reason, IdP: idpID, Err: err}
}

func (s *SSO) refused(ctx context.Context, idpID string, err error) (SSOResult, error) {
	if errors.Is(err, sso.ErrIdPReported) {
		return s.fail(ctx, idpID, SSOIdPError, err)
	}
	return s.fail(ctx, idpID, SSORefused, err)
}

// take removes the flow of state (a state completes one login, whatever happens next) and
// checks it belongs to idpID and, unless browser is empty (the SAML POST), to this browser.
func (s *SSO) take(ctx context.Context, idpID, state, browser string) (sso.IdP, sso.Flow, error) {
	idp, ok := s.idps.Get(idpID)
	if !ok {
		_, err := s.fail(ctx, idpID, SSOUnknownIdP, errors.New("not configured"))
		return idp, sso.Flow{}, err
	}
	if state == "" || len(state) > 255 {
		_, err := s.fail(ctx, idpID, SSOExpired, errors.New("no state"))
		return idp, sso.Flow{}, err
	}
	f, err := s.state.TakeFlow(ctx, state)
	switch {
	case errors.Is(err, sso.ErrNotFound) || err == nil && f.Nonce == "":
		_, err = s.fail(ctx, idpID, SSOExpired, errors.New("no such login"))
	case err != nil:
		_, err = s.fail(ctx, idpID, SSOInternal, err)
	case f.IdP != idp.ID:
		_, err = s.fail(ctx, idpID, SSORefused, fmt.Errorf("the login was started at %s", f.IdP))
	case browser != "" && f.Browser != browserHash(browser):
		_, err = s.fail(ctx, idpID, SSOOtherBrowser, errors.New("the login was started in another browser"))
	}
	return idp, f, err
}

// complete validates the session for what id proves at idp.
func (s *SSO) complete(ctx context.Context, idp sso.IdP, f sso.Flow, id sso.Identity) (SSOResult, error) {
	if id.IdP != idp.ID || id.Subject == "" {
		return s.fail(ctx, idp.ID, SSORefused, errors.New("the connector returned no subject for this IdP"))
	}
	claims, refused := idp.Proven(id)
	var tps []threepid.ThreePID
	for _, c := range claims {
		tp, err := threepid.Normalize(c.Medium, c.Address)
		if err != nil {
			refused = append(refused, fmt.Sprintf("%s: %v", c.Medium, err))
			continue
		}
		if !slices.Contains(tps, tp) {
			tps = append(tps, tp)
		}
	}
	if len(tps) == 0 || tps[0].Medium != threepid.MediumIDP {
		return s.fail(ctx, idp.ID, SSONothing, fmt.Errorf("no usable idp 3PID (%v)", refused))
	}
	if f.Onboard != nil {
		return s.onboard(ctx, idp, f, id, tps, refused)
	}
	now := s.svc.now()
	sess := Session{SID: f.SID, ClientSecret: f.ClientSecret, ThreePID: tps[0], NextLink: f.NextLink,
		CreatedAt: now, ValidatedAt: now}
	// The login's record is written with the session it validated.
	rec := s.loginRecord(ctx, idp, f, id, tps, refused, f.UserID)
	if err := s.store.CreateSSOSession(ctx, sess, f.UserID, idp.ID, tps, rec); err != nil {
		if errors.Is(err, ErrAlreadyExists) {
			return s.fail(ctx, idp.ID, SSOExpired, errors.New("this client secret already validated this identity; start again with a new one"))
		}
		return s.fail(ctx, idp.ID, SSOInternal, err)
	}
	s.log.Info("sso login validated", "idp", idp.ID, "user_id", f.UserID, "sid", f.SID,
		"threepids", describeThreePIDs(tps), "refused", refused, "authn_level", id.AuthnLevel)
	return SSOResult{SID: f.SID, NextLink: f.NextLink, IdP: idp, ThreePIDs: tps, Refused: refused, DisplayName: id.DisplayName}, nil
}

// describeThreePIDs names media only for the log: addresses are personal data.
func describeThreePIDs(tps []threepid.ThreePID) []string {
	out := make([]string, len(tps))
	for i, tp := range tps {
		out[i] = tp.Medium
	}
	return out
}

// ssoThreePIDs returns the 3PIDs and starting user of an SSO session, or ok=false for any other session.
func (s *Service) ssoThreePIDs(ctx context.Context, sid string) (userID string, tps []threepid.ThreePID, ok bool, err error) {
	if s.ssoStore == nil {
		return "", nil, false, nil
	}
	userID, tps, err = s.ssoStore.SSOSession(ctx, sid)
	if errors.Is(err, ErrNotFound) {
		return "", nil, false, nil
	}
	if err != nil {
		return "", nil, false, err
	}
	return userID, tps, true, nil
}

// ValidatedThreePIDs returns a validated session and every 3PID it validated (one, unless an
// SSO login proved several).
func (s *Service) ValidatedThreePIDs(ctx context.Context, sid, clientSecret string) (Session, []threepid.ThreePID, error) {
	sess, err := s.Validated(ctx, sid, clientSecret)
	if err != nil {
		return sess, nil, err
	}
	_, tps, ok, err := s.ssoThreePIDs(ctx, sess.SID)
	if err != nil {
		return sess, nil, err
	}
	if !ok {
		tps = []threepid.ThreePID{sess.ThreePID}
	}
	return sess, tps, nil
}
