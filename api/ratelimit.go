package api

import (
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/ozo-platform/ozo-identity/identity"
	"github.com/ozo-platform/ozo-identity/ratelimit"
)

// RateLimits are the per-minute budgets; zero disables that limit.
type RateLimits struct {
	Limiter ratelimit.Limiter
	// LookupPerAccount and LookupPerServer bound lookups (uzi and ura are enumerable).
	LookupPerAccount int
	LookupPerServer  int
	// DirectoryPerAccount bounds /_ozo/v1/directory calls per account.
	DirectoryPerAccount int
	// PerClient bounds unauthenticated and mail-sending calls per client address.
	PerClient int
}

// limit answers 429 M_LIMIT_EXCEEDED when key has used its budget for this minute.
func (s *Server) limit(w http.ResponseWriter, r *http.Request, key string, perMinute int) bool {
	if s.cfg.RateLimits.Limiter == nil || perMinute <= 0 {
		return true
	}
	ok, retry, err := s.cfg.RateLimits.Limiter.Allow(r.Context(), key, perMinute, time.Minute)
	if err != nil {
		// Failing open keeps lookups working when Redis blips; the error is logged for operators.
		s.log.WarnContext(r.Context(), "rate limiter unavailable", "err", err)
		return true
	}
	if ok {
		return true
	}
	w.Header().Set("Retry-After", strconv.Itoa(int(retry.Seconds())+1))
	writeJSON(w, http.StatusTooManyRequests, map[string]any{"errcode": identity.CodeLimitExceeded,
		"error": "too many requests", "retry_after_ms": retry.Milliseconds()})
	return false
}

// limitClient is middleware bounding requests per client address for a route group.
func (s *Server) limitClient(name string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if s.limit(w, r, fmt.Sprintf("client:%s:%s", name, s.clientAddr(r)), s.cfg.RateLimits.PerClient) {
				next.ServeHTTP(w, r)
			}
		})
	}
}

// limitLookup bounds lookups per account and per homeserver of the account.
func (s *Server) limitLookup(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user := account(r).UserID
		if s.limit(w, r, "lookup:account:"+user, s.cfg.RateLimits.LookupPerAccount) &&
			s.limit(w, r, "lookup:server:"+identity.ServerOf(user), s.cfg.RateLimits.LookupPerServer) {
			next.ServeHTTP(w, r)
		}
	})
}
