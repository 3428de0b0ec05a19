package identity

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"time"

	"github.com/ozo-platform/ozo-identity/sso"
	"github.com/ozo-platform/ozo-identity/storage"
	"github.com/ozo-platform/ozo-identity/threepid"
)

// SSOStore keeps the validation sessions SSO logins complete.
type SSOStore interface {
	// CreateSSOSession stores sess (validated, its ThreePID the first of tps) with every 3PID
	// the login proved and the user who started it; storage.ErrAlreadyExists when the client
	// secret already has a session for that first 3PID.
	CreateSSOSession(ctx context.Context, sess storage.Session, userID, idp string, tps []storage.ThreePID) error
	// SSOSession returns the starting user and proven 3PIDs of an SSO session, the session's own
	// 3PID first; storage.ErrNotFound for any other session.
	SSOSession(ctx context.Context, sid string) (userID string, tps []storage.ThreePID, err error)
}

// SSOOptions are the tunables of SSO logins.
type SSOOptions struct {
	// LoginLifetime bounds the time between Start and the IdP's answer.
	LoginLifetime time.Duration
	// StartsPerAccount is how many logins one account may start per minute.
	StartsPerAccount int
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
	svc.ssoStore = store
	return &SSO{svc: svc, store: store, idps: idps, state: state, opts: opts, log: log}
}

// Registry returns the configured IdPs.
func (s *SSO) Registry() *sso.Registry { return s.idps }

// Start begins a login at IdP idpID for userID's validation session (client secret, next link)
// and returns the session ID and where to send the practitioner's browser.
func (s *SSO) Start(ctx context.Context, userID, clientSecret, idpID, nextLink string) (sid, redirectURL string, err error) {
	if !validSecret(clientSecret) {
		return "", "", errorf(CodeInvalidParam, "client_secret must be 1-255 characters of [0-9a-zA-Z.=_-]")
	}
	if nextLink != "" && !s.svc.AllowedNextLink(nextLink) {
		return "", "", errorf(CodeInvalidParam, "next_link must be an https URL on an allowed host (validation.next_link_hosts)")
	}
	idp, ok := s.idps.Get(idpID)
	if !ok {
		return "", "", errorf(CodeInvalidParam, "no identity provider %q is configured", truncate(idpID, 64))
	}
	if n := s.opts.StartsPerAccount; n > 0 {
		if ok, err := s.state.Throttle(ctx, "sso-start:"+userID, n, time.Minute); err != nil {
			return "", "", fmt.Errorf("sso start: %w", err)
		} else if !ok {
			return "", "", errorf(CodeLimitExceeded, "too many logins started; try again in a minute")
		}
	}
	f := sso.Flow{State: randomToken(24), IdP: idp.ID, Nonce: randomToken(24), PKCEVerifier: randomToken(32),
		SID: randomToken(12), ClientSecret: clientSecret, UserID: userID, NextLink: nextLink,
		ExpiresAt: s.svc.now().Add(s.opts.LoginLifetime)}
	switch c := idp.Connector.(type) {
	case sso.SAMLConnector:
		redirectURL, f.RequestID, err = c.AuthnRequest(ctx, f.State)
	case sso.RedirectConnector:
		redirectURL, err = c.LoginURL(ctx, f)
	}
	if err != nil {
		return "", "", fmt.Errorf("sso start at %s: %w", idp.ID, err)
	}
	if err := s.state.PutFlow(ctx, f); err != nil {
		return "", "", fmt.Errorf("sso start: %w", err)
	}
	s.log.Info("sso login started", "idp", idp.ID, "user_id", userID, "sid", f.SID)
	return f.SID, redirectURL, nil
}

// Reasons an SSO login fails, for the page the practitioner sees.
const (
	SSOUnknownIdP = "unknown_idp"
	SSOExpired    = "expired"   // no such login: expired, already used or never started
	SSOIdPError   = "idp_error" // the IdP reported an error (cancelled, denied)
	SSORefused    = "refused"   // the IdP's answer did not verify
	SSONothing    = "nothing"   // verified, but nothing usable was proven
	SSOInternal   = "internal"
)

// SSOError is a failed login.
type SSOError struct {
	Reason string
	IdP    string
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
	ThreePIDs []storage.ThreePID
	// Refused names what the IdP asserted but may not prove (an untrusted IdP's UZI number).
	Refused     []string
	DisplayName string
}

// FinishRedirect completes an OpenID Connect or Dezi login from its callback request.
func (s *SSO) FinishRedirect(ctx context.Context, idpID string, r *http.Request) (SSOResult, error) {
	return s.finish(ctx, idpID, r.URL.Query().Get("state"), func(idp sso.IdP, f sso.Flow) (sso.Identity, error) {
		c, ok := idp.Connector.(sso.RedirectConnector)
		if !ok {
			return sso.Identity{}, fmt.Errorf("%s is not a redirect IdP", idp.ID)
		}
		return c.HandleCallback(ctx, f, r)
	})
}

// FinishSAML completes a SAML login from the response the browser posted to the ACS.
func (s *SSO) FinishSAML(ctx context.Context, idpID, relayState, samlResponse string) (SSOResult, error) {
	return s.finish(ctx, idpID, relayState, func(idp sso.IdP, f sso.Flow) (sso.Identity, error) {
		c, ok := idp.Connector.(sso.SAMLConnector)
		if !ok {
			return sso.Identity{}, fmt.Errorf("%s is not a SAML IdP", idp.ID)
		}
		return c.HandlePOST(ctx, f, samlResponse)
	})
}

func (s *SSO) finish(ctx context.Context, idpID, state string, verify func(sso.IdP, sso.Flow) (sso.Identity, error)) (SSOResult, error) {
	fail := func(reason string, err error) (SSOResult, error) {
		// Audit: every refused login belongs in the audit trail (issue 7); logged until audit/ lands.
		s.log.Warn("sso login refused", "idp", idpID, "reason", reason, "err", err)
		return SSOResult{}, &SSOError{Reason: reason, IdP: idpID, Err: err}
	}
	idp, ok := s.idps.Get(idpID)
	if !ok {
		return fail(SSOUnknownIdP, errors.New("not configured"))
	}
	if state == "" || len(state) > 255 {
		return fail(SSOExpired, errors.New("no state"))
	}
	// Taken, not read: a state completes one login, whatever happens next.
	f, err := s.state.TakeFlow(ctx, state)
	if errors.Is(err, sso.ErrNotFound) {
		return fail(SSOExpired, err)
	}
	if err != nil {
		return fail(SSOInternal, err)
	}
	if f.IdP != idp.ID {
		return fail(SSORefused, fmt.Errorf("the login was started at %s", f.IdP))
	}
	id, err := verify(idp, f)
	if err != nil {
		if errors.Is(err, sso.ErrIdPReported) {
			return fail(SSOIdPError, err)
		}
		return fail(SSORefused, err)
	}
	if id.IdP != idp.ID || id.Subject == "" {
		return fail(SSORefused, errors.New("the connector returned no subject for this IdP"))
	}
	claims, refused := idp.Proven(id)
	var tps []storage.ThreePID
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
		return fail(SSONothing, fmt.Errorf("no usable idp 3PID (%v)", refused))
	}
	now := s.svc.now()
	sess := storage.Session{SID: f.SID, ClientSecret: f.ClientSecret, ThreePID: tps[0], NextLink: f.NextLink,
		CreatedAt: now, ValidatedAt: now}
	if err := s.store.CreateSSOSession(ctx, sess, f.UserID, idp.ID, tps); err != nil {
		if errors.Is(err, storage.ErrAlreadyExists) {
			return fail(SSOExpired, errors.New("this client secret already validated this identity; start again with a new one"))
		}
		return fail(SSOInternal, err)
	}
	// Audit: the login and what it validated belong in the audit trail (issue 7).
	s.log.Info("sso login validated", "idp", idp.ID, "user_id", f.UserID, "sid", f.SID,
		"threepids", describeThreePIDs(tps), "refused", refused, "authn_level", id.AuthnLevel)
	return SSOResult{SID: f.SID, NextLink: f.NextLink, IdP: idp, ThreePIDs: tps, Refused: refused, DisplayName: id.DisplayName}, nil
}

// describeThreePIDs names media only for the log: addresses are personal data.
func describeThreePIDs(tps []storage.ThreePID) []string {
	out := make([]string, len(tps))
	for i, tp := range tps {
		out[i] = tp.Medium
	}
	return out
}

// ssoThreePIDs returns the 3PIDs and starting user of an SSO session, or ok=false for any other session.
func (s *Service) ssoThreePIDs(ctx context.Context, sid string) (userID string, tps []storage.ThreePID, ok bool, err error) {
	if s.ssoStore == nil {
		return "", nil, false, nil
	}
	userID, tps, err = s.ssoStore.SSOSession(ctx, sid)
	if errors.Is(err, storage.ErrNotFound) {
		return "", nil, false, nil
	}
	if err != nil {
		return "", nil, false, err
	}
	return userID, tps, true, nil
}

// ValidatedThreePIDs returns a validated session and every 3PID it validated (one, unless an
// SSO login proved several).
func (s *Service) ValidatedThreePIDs(ctx context.Context, sid, clientSecret string) (storage.Session, []storage.ThreePID, error) {
	sess, err := s.Validated(ctx, sid, clientSecret)
	if err != nil {
		return sess, nil, err
	}
	_, tps, ok, err := s.ssoThreePIDs(ctx, sess.SID)
	if err != nil {
		return sess, nil, err
	}
	if !ok {
		tps = []storage.ThreePID{sess.ThreePID}
	}
	return sess, tps, nil
}
