package ozoaccount

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/ozo-platform/ozo-identity/audit"
)

// ErrHomeserver wraps the homeserver's failure to sign the account's Matrix user in.
var ErrHomeserver = errors.New("the homeserver did not sign the account in")

// ErrHandoffRefused is the one answer to a code that is unknown, spent, expired or sent with a
// code_verifier that does not belong to it: which of these is not told.
var ErrHandoffRefused = errors.New("the code is unknown, expired or already used, or the code_verifier is not its own")

var (
	// pkceChallenge is an RFC 7636 S256 code_challenge: unpadded base64url of 32 bytes.
	pkceChallenge = regexp.MustCompile(`^[A-Za-z0-9_-]{43}$`)
	// pkceVerifier is RFC 7636 §4.1's code_verifier.
	pkceVerifier = regexp.MustCompile(`^[A-Za-z0-9._~-]{43,128}$`)
)

// ValidChallenge reports whether c is a PKCE S256 code_challenge (RFC 7636 §4.2).
func ValidChallenge(c string) bool { return pkceChallenge.MatchString(c) }

// Handoff is a completed login waiting for its client: a one-time code and when it stops working.
type Handoff struct {
	Code      string
	ExpiresAt time.Time
}

// handoffHash is what is stored of a code: the hash of the code together with the client's
// challenge, so that only the verifier's holder can even name the stored row.
func handoffHash(code, challenge string) string {
	return hashToken("handoff." + challenge + "." + code)
}

// SecondFactorHandoff completes a login as SecondFactor does, but makes no Matrix session yet.
// With a codeChallenge (a client is waiting for the login), it returns a one-time code that
// RedeemHandoff exchanges for the session, once, and only with the challenge's verifier; the
// code is all that travels through the browser, never an access token. Without a challenge the
// login is checked and recorded and nothing is handed over.
func (s *Service) SecondFactorHandoff(ctx context.Context, ticket, code, recoveryCode, codeChallenge string) (LoginResult, Handoff, error) {
	if codeChallenge != "" && !ValidChallenge(codeChallenge) {
		// Checked before the ticket is spent: a client's mistake does not cost the person their login.
		return LoginResult{}, Handoff{}, fmt.Errorf("%w: code_challenge must be the unpadded base64url SHA-256 of a code_verifier (PKCE S256)", ErrInvalid)
	}
	a, err := s.completeLogin(ctx, ticket, code, recoveryCode)
	if err != nil {
		return LoginResult{}, Handoff{}, err
	}
	res := LoginResult{Account: a, UserID: a.MXID}
	if codeChallenge == "" {
		return res, Handoff{}, nil
	}
	// One waiting login per account: a newer login's code replaces an unredeemed older one, so
	// the codes of an account never pile up.
	if err := s.store.DeleteTokens(ctx, a.ID, PurposeHandoff); err != nil {
		return LoginResult{}, Handoff{}, err
	}
	h := Handoff{Code: randomToken()}
	now := s.now().UTC()
	h.ExpiresAt = now.Add(s.opts.HandoffLifetime)
	if err := s.store.CreateToken(ctx, Token{Hash: handoffHash(h.Code, codeChallenge), AccountID: a.ID,
		Purpose: PurposeHandoff, CreatedAt: now, ExpiresAt: h.ExpiresAt}); err != nil {
		return LoginResult{}, Handoff{}, err
	}
	return res, h, nil
}

// RedeemHandoff hands the client that waited for a login the session of its account: for the
// one-time code of SecondFactorHandoff and the verifier of its challenge, a Matrix access token
// (when a homeserver is configured). A code works once, on any replica (the store decides), and
// only while the account stays active. The login itself was recorded when it completed; a
// refused redemption is recorded as a failed login.
func (s *Service) RedeemHandoff(ctx context.Context, code, verifier string) (LoginResult, error) {
	if code == "" || len(code) > 255 || !pkceVerifier.MatchString(verifier) {
		s.refused(ctx, audit.ActionLoginFailure, Account{}, "handoff: malformed code or code_verifier")
		return LoginResult{}, ErrHandoffRefused
	}
	sum := sha256.Sum256([]byte(verifier))
	challenge := base64.RawURLEncoding.EncodeToString(sum[:])
	t, err := s.store.UseToken(ctx, handoffHash(code, challenge), PurposeHandoff, s.now())
	if err != nil {
		if errors.Is(err, ErrNotFound) || errors.Is(err, ErrTokenUsed) || errors.Is(err, ErrTokenExpired) {
			why := "unknown, or not of this code_verifier"
			if errors.Is(err, ErrTokenUsed) {
				why = "already used"
			} else if errors.Is(err, ErrTokenExpired) {
				why = "expired"
			}
			a := Account{ID: t.AccountID}
			if t.AccountID != "" {
				if got, gerr := s.store.GetAccount(ctx, t.AccountID); gerr == nil {
					a = got
				}
			}
			s.refused(ctx, audit.ActionLoginFailure, a, "handoff: code "+why)
			return LoginResult{}, ErrHandoffRefused
		}
		return LoginResult{}, err
	}
	// giveBack puts the code back after a failure that is not the client's (the homeserver or
	// the database), so the client may try again while it lives, as onboarding does.
	giveBack := func(cause error) error {
		ok, err := s.store.ReleaseToken(context.WithoutCancel(ctx), t.Hash, PurposeHandoff, t.UsedAt, s.now())
		if err != nil || !ok {
			s.log.WarnContext(ctx, "ozo account: handoff code not put back after a failed redemption", "account", t.AccountID,
				"released", ok, "err", err)
		}
		return cause
	}
	a, err := s.store.GetAccount(ctx, t.AccountID)
	if errors.Is(err, ErrNotFound) {
		s.refused(ctx, audit.ActionLoginFailure, Account{ID: t.AccountID}, "handoff: the account is gone")
		return LoginResult{}, ErrInvalidCredentials
	}
	if err != nil {
		return LoginResult{}, giveBack(err)
	}
	if a.Status != StatusActive {
		s.refused(ctx, audit.ActionLoginFailure, a, "handoff: the account is "+string(a.Status))
		return LoginResult{}, ErrInvalidCredentials
	}
	res := LoginResult{Account: a, UserID: a.MXID}
	if s.hs == nil {
		return res, nil
	}
	if a, err = s.ensureMatrix(ctx, a); err != nil {
		return LoginResult{}, giveBack(err)
	}
	res.Account, res.UserID = a, a.MXID
	if res.AccessToken, res.DeviceID, err = s.hs.Login(ctx, a.MXID); err != nil {
		return LoginResult{}, giveBack(fmt.Errorf("%w: %v", ErrHomeserver, err))
	}
	// From here the code stays spent: a session exists (or was ended below), so it is never put back.
	// Disabled or deleted while the homeserver signed in: the new session must not outlive it
	// (Disable logged the user out before this device existed).
	if now, err := s.store.GetAccount(ctx, a.ID); err != nil || now.Status != StatusActive {
		if lerr := s.hs.LogoutAll(context.WithoutCancel(ctx), a.MXID); lerr != nil {
			s.log.ErrorContext(ctx, "ozo account: session of an account disabled during its handoff not ended", "account", a.ID, "err", lerr)
		}
		s.refused(ctx, audit.ActionLoginFailure, a, "handoff: the account was disabled or deleted while it was signed in")
		return LoginResult{}, ErrInvalidCredentials
	}
	s.log.InfoContext(ctx, "ozo account login handed over", "account", a.ID, "device_id", res.DeviceID)
	return res, nil
}
