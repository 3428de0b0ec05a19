package identity

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
)

// UserInfoer verifies an OpenID token at the homeserver that issued it.
type UserInfoer interface {
	UserInfo(ctx context.Context, serverName, accessToken string) (string, error)
}

// Register exchanges a homeserver-issued OpenID token for an identity-server access token.
// Only homeservers in allowed may register ("*" allows any).
func (s *Service) Register(ctx context.Context, hs UserInfoer, allowed []string, serverName, openIDToken string) (string, error) {
	if serverName == "" || openIDToken == "" {
		return "", errorf(CodeMissingParams, "matrix_server_name and access_token are required")
	}
	if !HomeserverAllowed(allowed, serverName) {
		return "", errorf(CodeForbidden, "homeserver %q may not use this identity server", serverName)
	}
	userID, err := hs.UserInfo(ctx, serverName, openIDToken)
	if err != nil {
		return "", err
	}
	token := randomToken(32)
	if err := s.store.CreateAccessToken(ctx, AccessToken{TokenHash: hashToken(token), UserID: userID, CreatedAt: s.now()}); err != nil {
		return "", err
	}
	return token, nil
}

// HomeserverAllowed reports whether serverName is on the allow-list ("*" allows all).
func HomeserverAllowed(allowed []string, serverName string) bool {
	return slices.Contains(allowed, "*") || slices.Contains(allowed, strings.ToLower(serverName)) || slices.Contains(allowed, serverName)
}

// Authenticate returns the account of an access token.
func (s *Service) Authenticate(ctx context.Context, token string) (AccessToken, error) {
	if token == "" {
		return AccessToken{}, errorf(CodeUnauthorized, "an identity server access token is required")
	}
	h := hashToken(token)
	var epoch uint64
	if s.mirror != nil {
		if a, ok := s.mirror.token(ctx, h); ok {
			return a, nil
		}
		epoch = s.mirror.tokens.epoch.Load()
	}
	a, err := s.store.GetAccessToken(ctx, h)
	if errors.Is(err, ErrNotFound) {
		return a, errorf(CodeUnauthorized, "unrecognised access token")
	}
	if err == nil && s.mirror != nil {
		s.mirror.tokens.put(h, a, epoch, s.now())
	}
	return a, err
}

// Logout revokes an access token: at once on this replica, through the change log on others.
func (s *Service) Logout(ctx context.Context, token string) error {
	h := hashToken(token)
	err := s.store.DeleteAccessToken(ctx, h)
	if s.mirror != nil {
		// Also when the database no longer had it: another replica may have revoked it first.
		s.mirror.tokens.revoke(h)
	}
	if errors.Is(err, ErrNotFound) {
		return errorf(CodeUnauthorized, "unrecognised access token")
	}
	return err
}

// Policies returns the configured policies.
func (s *Service) Policies() map[string]Policy { return s.opts.Policies }

// policyURLs returns every URL of every current policy version.
func (s *Service) policyURLs() map[string]bool {
	urls := map[string]bool{}
	for _, p := range s.opts.Policies {
		for _, d := range p.Languages {
			urls[d.URL] = true
		}
	}
	return urls
}

// AcceptTerms records the policy URLs a user accepted; unknown URLs are an error.
func (s *Service) AcceptTerms(ctx context.Context, userID string, urls []string) error {
	known := s.policyURLs()
	for _, u := range urls {
		if !known[u] {
			return errorf(CodeInvalidParam, "%q is not the URL of a current policy", u)
		}
	}
	return s.store.AcceptTerms(ctx, userID, urls)
}

// TermsAccepted reports whether userID accepted every current policy in at least one language.
func (s *Service) TermsAccepted(ctx context.Context, userID string) (bool, error) {
	if len(s.opts.Policies) == 0 {
		return true, nil
	}
	if s.terms.has(userID) {
		return true, nil
	}
	accepted, err := s.store.AcceptedTerms(ctx, userID)
	if err != nil {
		return false, err
	}
	for _, p := range s.opts.Policies {
		ok := false
		for _, d := range p.Languages {
			if slices.Contains(accepted, d.URL) {
				ok = true
				break
			}
		}
		if !ok {
			return false, nil
		}
	}
	s.terms.add(userID)
	return true, nil
}

// acceptedSet remembers the users who accepted every current policy. Acceptances are never
// withdrawn and the policies are fixed for the life of the process, so a yes stays a yes and
// every lookup need not ask the database again.
type acceptedSet struct {
	mu sync.RWMutex
	m  map[string]struct{}
}

// maxAccepted bounds the set; when full it starts over, and the database answers again.
const maxAccepted = 100_000

func (a *acceptedSet) has(userID string) bool {
	a.mu.RLock()
	defer a.mu.RUnlock()
	_, ok := a.m[userID]
	return ok
}

func (a *acceptedSet) add(userID string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.m == nil || len(a.m) >= maxAccepted {
		a.m = make(map[string]struct{})
	}
	a.m[userID] = struct{}{}
}
