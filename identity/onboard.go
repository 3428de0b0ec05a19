package identity

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/ozo-platform/ozo-identity/audit"
	"github.com/ozo-platform/ozo-identity/sso"
	"github.com/ozo-platform/ozo-identity/threepid"
)

// MatrixAccounts makes and signs in users on one homeserver through its application-service
// registration (m.login.application_service); *homeserver.AppService is one.
type MatrixAccounts interface {
	// RegisterNew creates the user; created is false when it existed (M_USER_IN_USE).
	RegisterNew(ctx context.Context, localpart string) (userID string, created bool, err error)
	// Login returns a new access token and device of the user.
	Login(ctx context.Context, userID string) (accessToken, deviceID string, err error)
	SetDisplayName(ctx context.Context, userID, name string) error
}

// Placements says on which homeserver the directory (mCSD) places the practitioner with a UZI
// number now; "" when it places them nowhere.
type Placements interface {
	PlacedOn(ctx context.Context, uzi string) (string, error)
}

// Localpart schemes of onboarding homeservers: what follows the user prefix.
const (
	// LocalpartUZI is the proven UZI number: one account per practitioner, whichever IdP they
	// log in at; a login that proves no UZI number gets no account.
	LocalpartUZI = "uzi"
	// LocalpartIdP is a hash of the idp 3PID (<idp>:<subject>): one account per IdP login.
	LocalpartIdP = "idp"
)

// OnboardingHomeserver is a homeserver where onboarding makes accounts.
type OnboardingHomeserver struct {
	ServerName string
	// UserPrefix starts every localpart: the registration's exclusive user namespace.
	UserPrefix string
	// Localpart is LocalpartUZI or LocalpartIdP.
	Localpart string
	Accounts  MatrixAccounts
}

// OnboardingOptions configure onboarding; without Homeservers there is none.
type OnboardingOptions struct {
	Homeservers []OnboardingHomeserver
	// RedirectURIs are the exact URIs a start may name to receive the one-time code.
	RedirectURIs []string
	// CodeLifetime bounds the time between the redirect and the code's redemption.
	CodeLifetime time.Duration
	// StartsPerClient is how many onboarding logins one client address may start per minute.
	StartsPerClient int
	// Placements is the directory's placement of practitioners; nil without directories.
	Placements Placements
}

// OnboardedLogin is what a redeemed code hands the client: a session of its new account.
type OnboardedLogin struct {
	UserID      string
	AccessToken string
	DeviceID    string
	HomeServer  string
}

// ErrHomeserverFailed wraps a homeserver's failure to make or sign in an account.
var ErrHomeserverFailed = errors.New("the homeserver did not complete the request")

// Reasons an onboarding login fails, besides those of every login.
const (
	// SSONoHomeserver: no homeserver this server makes accounts on is the practitioner's.
	SSONoHomeserver = "no_homeserver"
	// SSONoUZI: the homeserver names accounts by UZI number, and the login proved none.
	SSONoUZI = "no_uzi"
	// SSOHomeserverDown: the homeserver did not make the account.
	SSOHomeserverDown = "homeserver"
	// SSOHasAccount: a proven uzi or idp 3PID resolves to an account this server did not make.
	SSOHasAccount = "has_account"
)

// onboardCodePrefix keeps codes apart from login states in the one StateStore.
const onboardCodePrefix = "onboard-code:"

var pkceChallenge = regexp.MustCompile(`^[A-Za-z0-9_-]{43}$`)

// pkceVerifier is RFC 7636 §4.1's code_verifier.
var pkceVerifier = regexp.MustCompile(`^[A-Za-z0-9._~-]{43,128}$`)

// Onboarding reports whether logins may make Matrix accounts.
func (s *SSO) Onboarding() bool { return len(s.opts.Onboarding.Homeservers) > 0 }

// StartOnboarding begins a login, at IdP idpID or at the one the practitioner picks, whose
// success makes the practitioner's Matrix account and sends the browser to redirectURI with a
// one-time code; only the holder of the PKCE verifier of codeChallenge (S256) redeems it.
// client is the caller's address, which the starts are counted by. It returns the login page's handle.
func (s *SSO) StartOnboarding(ctx context.Context, client, idpID, redirectURI, codeChallenge string) (string, error) {
	o := s.opts.Onboarding
	if !s.Onboarding() {
		return "", errorf(CodeNotFound, "this server does not make Matrix accounts (sso.onboarding)")
	}
	if !slices.Contains(o.RedirectURIs, redirectURI) {
		return "", errorf(CodeInvalidParam, "redirect_uri is not one of the redirect URIs this server allows")
	}
	if !pkceChallenge.MatchString(codeChallenge) {
		return "", errorf(CodeInvalidParam, "code_challenge must be the unpadded base64url SHA-256 of a code_verifier (PKCE S256, 43 characters)")
	}
	if idpID != "" {
		if _, ok := s.idps.Get(idpID); !ok {
			return "", errorf(CodeInvalidParam, "no identity provider %q is configured", truncate(idpID, 64))
		}
	}
	if ok, err := s.state.Throttle(ctx, "onboard-start:"+client, o.StartsPerClient, time.Minute); err != nil {
		return "", fmt.Errorf("onboarding start: %w", err)
	} else if !ok {
		return "", errorf(CodeLimitExceeded, "too many logins started from this address; try again in a minute")
	}
	f := sso.Flow{State: randomToken(24), IdP: idpID, SID: randomToken(12), ClientSecret: randomToken(24),
		Onboard:   &sso.Onboard{RedirectURI: redirectURI, CodeChallenge: codeChallenge},
		ExpiresAt: s.svc.now().Add(s.opts.LoginLifetime)}
	if err := s.state.PutFlow(ctx, f); err != nil {
		return "", fmt.Errorf("onboarding start: %w", err)
	}
	s.log.Info("sso onboarding login started", "idp", idpID, "sid", f.SID)
	return f.State, nil
}

// isCode reports whether f is an onboarding code rather than a login in progress.
func isCode(f sso.Flow) bool { return f.Onboard != nil && f.Onboard.UserID != "" }

// onboard completes an onboarding login that proved tps: it makes (or finds) the account on
// the practitioner's homeserver, validates a session for it, binds what was proven and leaves
// a one-time code for the client.
func (s *SSO) onboard(ctx context.Context, idp sso.IdP, f sso.Flow, id sso.Identity, tps []threepid.ThreePID, refused []string) (SSOResult, error) {
	existing, bound, err := s.existingAccount(ctx, tps)
	if err != nil {
		return s.fail(ctx, idp.ID, SSOInternal, err)
	}
	// Only this server's own binding hands out an account of ours: a directory or a peer
	// naming one for this UZI number must not sign the practitioner in as someone else.
	hs, localpart, ours := s.ownAccount(existing)
	if !ours || !bound {
		if hs, err = s.onboardingHomeserver(ctx, idp, tps); err != nil {
			return SSOResult{}, err
		}
		if existing != "" {
			// The practitioner has an account elsewhere (bound, or published by their care
			// provider): a second one would take their identifiers away from it.
			res, err := s.fail(ctx, idp.ID, SSOHasAccount, fmt.Errorf("the proven identifiers resolve to %s", existing))
			var se *SSOError
			if errors.As(err, &se) {
				se.UserID = existing
			}
			return res, err
		}
		if localpart, err = onboardingLocalpart(hs, tps); err != nil {
			return s.fail(ctx, idp.ID, SSONoUZI, err)
		}
	}
	userID, created, err := hs.Accounts.RegisterNew(ctx, localpart)
	if err != nil {
		return s.fail(ctx, idp.ID, SSOHomeserverDown, err)
	}
	if created && id.DisplayName != "" {
		// Colleagues see the name the IdP asserted, not the generated localpart; the account
		// works without it.
		if err := hs.Accounts.SetDisplayName(ctx, userID, id.DisplayName); err != nil {
			s.log.Warn("onboarding: display name not set", "user_id", userID, "err", err)
		}
	}
	now := s.svc.now()
	sess := Session{SID: f.SID, ClientSecret: f.ClientSecret, ThreePID: tps[0], CreatedAt: now, ValidatedAt: now}
	rec := s.loginRecord(ctx, idp, f, id, tps, refused, userID)
	rec.Detail += fmt.Sprintf(" onboarding=%s homeserver=%s", map[bool]string{true: "created", false: "existing"}[created], hs.ServerName)
	if err := s.store.CreateSSOSession(ctx, sess, userID, idp.ID, tps, rec); err != nil {
		return s.fail(ctx, idp.ID, SSOInternal, err)
	}
	// Bound as an SSO session is: source sso, one audit record each, pending invites delivered.
	if _, err := s.svc.Bind(ctx, f.SID, f.ClientSecret, userID, userID); err != nil {
		return s.fail(ctx, idp.ID, SSOInternal, fmt.Errorf("bind proven 3PIDs to %s: %w", userID, err))
	}
	code := randomToken(32)
	cf := sso.Flow{State: onboardCodePrefix + code, IdP: idp.ID, ExpiresAt: now.Add(s.opts.Onboarding.CodeLifetime),
		Onboard: &sso.Onboard{RedirectURI: f.Onboard.RedirectURI, CodeChallenge: f.Onboard.CodeChallenge,
			UserID: userID, HomeServer: hs.ServerName}}
	if err := s.state.PutFlow(ctx, cf); err != nil {
		return s.fail(ctx, idp.ID, SSOInternal, err)
	}
	redirect, err := withCode(f.Onboard.RedirectURI, code)
	if err != nil {
		return s.fail(ctx, idp.ID, SSOInternal, err)
	}
	s.log.Info("sso onboarding completed", "idp", idp.ID, "user_id", userID, "created", created, "sid", f.SID,
		"threepids", describeThreePIDs(tps), "refused", refused)
	return SSOResult{SID: f.SID, IdP: idp, ThreePIDs: tps, Refused: refused, DisplayName: id.DisplayName,
		UserID: userID, Redirect: redirect}, nil
}

// existingAccount is the account a proven uzi, else idp, 3PID belongs to now: bound here
// (bound is true), else as the directory or a peer resolves it; "" for none.
func (s *SSO) existingAccount(ctx context.Context, tps []threepid.ThreePID) (mxid string, bound bool, err error) {
	var mine []threepid.ThreePID
	for _, medium := range []string{threepid.MediumUZI, threepid.MediumIDP} {
		for _, tp := range tps {
			if tp.Medium == medium {
				mine = append(mine, tp)
			}
		}
	}
	for _, tp := range mine {
		b, err := s.svc.store.GetBinding(ctx, tp)
		if err == nil {
			return b.MXID, true, nil
		}
		if !errors.Is(err, ErrNotFound) {
			return "", false, fmt.Errorf("binding of the proven %s: %w", tp.Medium, err)
		}
	}
	for _, tp := range mine {
		_, mxid, err := s.svc.LookupOne(ctx, tp.Medium, tp.Address)
		if err != nil {
			return "", false, fmt.Errorf("look up the proven %s: %w", tp.Medium, err)
		}
		if mxid != "" {
			return mxid, false, nil
		}
	}
	return "", false, nil
}

// ownAccount reports whether userID is in the namespace of an onboarding homeserver: an
// account onboarding made before, which the practitioner gets again.
func (s *SSO) ownAccount(userID string) (OnboardingHomeserver, string, bool) {
	local, server, ok := strings.Cut(strings.TrimPrefix(userID, "@"), ":")
	if !ok || !strings.HasPrefix(userID, "@") {
		return OnboardingHomeserver{}, "", false
	}
	for _, hs := range s.opts.Onboarding.Homeservers {
		if hs.ServerName == server && strings.HasPrefix(local, hs.UserPrefix) {
			return hs, local, true
		}
	}
	return OnboardingHomeserver{}, "", false
}

// onboardingHomeserver is where the practitioner's account lives: where the directory places
// the proven UZI number, else the IdP's homeserver; only homeservers with an application service here.
func (s *SSO) onboardingHomeserver(ctx context.Context, idp sso.IdP, tps []threepid.ThreePID) (OnboardingHomeserver, error) {
	o := s.opts.Onboarding
	byName := func(name string) (OnboardingHomeserver, bool) {
		i := slices.IndexFunc(o.Homeservers, func(h OnboardingHomeserver) bool { return h.ServerName == name })
		if i < 0 {
			return OnboardingHomeserver{}, false
		}
		return o.Homeservers[i], true
	}
	// Only a UZI number this IdP may prove chooses the homeserver: tps holds no other.
	if i := slices.IndexFunc(tps, func(tp threepid.ThreePID) bool { return tp.Medium == threepid.MediumUZI }); i >= 0 && o.Placements != nil {
		placed, err := o.Placements.PlacedOn(ctx, tps[i].Address)
		if err != nil {
			_, err = s.fail(ctx, idp.ID, SSOInternal, fmt.Errorf("directory placement: %w", err))
			return OnboardingHomeserver{}, err
		}
		if placed != "" {
			if hs, ok := byName(placed); ok {
				return hs, nil
			}
			// The practitioner's care provider runs their account elsewhere: a second account
			// here would split them in two.
			_, err = s.fail(ctx, idp.ID, SSONoHomeserver, fmt.Errorf("the directory places this UZI number on %s, where this server makes no accounts", placed))
			return OnboardingHomeserver{}, err
		}
	}
	if hs, ok := byName(idp.Homeserver); ok {
		return hs, nil
	}
	_, err := s.fail(ctx, idp.ID, SSONoHomeserver, errors.New("the directory places the practitioner nowhere and the IdP has no onboarding homeserver"))
	return OnboardingHomeserver{}, err
}

// onboardingLocalpart names the account by hs's scheme.
func onboardingLocalpart(hs OnboardingHomeserver, tps []threepid.ThreePID) (string, error) {
	switch hs.Localpart {
	case LocalpartUZI:
		for _, tp := range tps {
			if tp.Medium == threepid.MediumUZI {
				return hs.UserPrefix + tp.Address, nil
			}
		}
		return "", fmt.Errorf("%s names accounts by UZI number and the login proved none", hs.ServerName)
	default:
		// tps[0] is the idp 3PID; 120 bits of its hash, in localpart characters.
		sum := sha256.Sum256([]byte(tps[0].Address))
		return hs.UserPrefix + strings.ToLower(base32.StdEncoding.EncodeToString(sum[:15])), nil
	}
}

// withCode adds the code to the redirect URI's query.
func withCode(redirectURI, code string) (string, error) {
	u, err := url.Parse(redirectURI)
	if err != nil {
		return "", fmt.Errorf("redirect uri: %w", err)
	}
	q := u.Query()
	q.Set("code", code)
	u.RawQuery = q.Encode()
	return u.String(), nil
}

// Redeem hands the client that started an onboarding login a session of the account it made,
// for the one-time code its redirect carried and the PKCE verifier of its start. A code works
// once, on any replica; a wrong verifier uses it up too.
func (s *SSO) Redeem(ctx context.Context, code, verifier string) (OnboardedLogin, error) {
	if !s.Onboarding() {
		return OnboardedLogin{}, errorf(CodeNotFound, "this server does not make Matrix accounts (sso.onboarding)")
	}
	if code == "" || len(code) > 255 {
		return OnboardedLogin{}, errorf(CodeForbidden, "the code is unknown, expired or already used")
	}
	f, err := s.state.TakeFlow(ctx, onboardCodePrefix+code)
	if errors.Is(err, sso.ErrNotFound) || err == nil && !isCode(f) {
		s.log.Warn("onboarding code refused: unknown, expired or used")
		return OnboardedLogin{}, errorf(CodeForbidden, "the code is unknown, expired or already used")
	}
	if err != nil {
		return OnboardedLogin{}, fmt.Errorf("redeem onboarding code: %w", err)
	}
	sum := sha256.Sum256([]byte(verifier))
	if !pkceVerifier.MatchString(verifier) ||
		subtle.ConstantTimeCompare([]byte(base64.RawURLEncoding.EncodeToString(sum[:])), []byte(f.Onboard.CodeChallenge)) != 1 {
		s.log.Warn("onboarding code refused: wrong code_verifier", "user_id", f.Onboard.UserID)
		return OnboardedLogin{}, errorf(CodeForbidden, "the code_verifier does not belong to the login that made this code")
	}
	i := slices.IndexFunc(s.opts.Onboarding.Homeservers, func(h OnboardingHomeserver) bool { return h.ServerName == f.Onboard.HomeServer })
	if i < 0 {
		return OnboardedLogin{}, fmt.Errorf("redeem onboarding code: homeserver %s is no longer configured", f.Onboard.HomeServer)
	}
	token, device, err := s.opts.Onboarding.Homeservers[i].Accounts.Login(ctx, f.Onboard.UserID)
	if err != nil {
		// The client may try again with the same code while it lives.
		pctx, cancel := detached(ctx)
		if perr := s.state.PutFlow(pctx, f); perr != nil && !errors.Is(perr, sso.ErrExists) {
			s.log.Warn("onboarding: code not put back after a failed login", "err", perr)
		}
		cancel()
		return OnboardedLogin{}, fmt.Errorf("%w: %v", ErrHomeserverFailed, err)
	}
	s.log.Info("onboarding code redeemed", "user_id", f.Onboard.UserID, "device_id", device)
	return OnboardedLogin{UserID: f.Onboard.UserID, AccessToken: token, DeviceID: device, HomeServer: f.Onboard.HomeServer}, nil
}

// loginRecord is the audit record of a login that proved tps, for the account userID.
func (s *SSO) loginRecord(ctx context.Context, idp sso.IdP, f sso.Flow, id sso.Identity, tps []threepid.ThreePID, refused []string, userID string) audit.Record {
	rec := audit.ScopeFrom(ctx).Record(audit.ActionLogin, audit.OutcomeSuccess)
	rec.Actor = audit.Agent{Kind: audit.AgentIdP, ID: idp.ID + ":" + id.Subject}
	rec.OnBehalfOf, rec.Medium, rec.Address = userID, tps[0].Medium, tps[0].Address
	rec.Resource = "idp " + idp.ID
	rec.Detail = fmt.Sprintf("sid=%s media=%s authn_level=%s refused_claims=%d", f.SID,
		strings.Join(describeThreePIDs(tps), ","), id.AuthnLevel, len(refused))
	return rec
}
