package api

import (
	"fmt"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/ozo-platform/ozo-identity/identity"
	"github.com/ozo-platform/ozo-identity/internal/matrixid"
	"github.com/ozo-platform/ozo-identity/ratelimit"
)

// RateLimits are the per-minute budgets; zero disables that limit.
type RateLimits struct {
	Limiter ratelimit.Limiter
	// LookupPerAccount and LookupPerServer bound the addresses looked up (uzi and ura are
	// enumerable): every address of a v2 lookup, every directory localisation and store-invite.
	// LookupPerServer also bounds v1 lookups and store-invites per client address (the homeserver's).
	LookupPerAccount int
	LookupPerServer  int
	// DirectoryPerAccount bounds /_ozo/v1/directory calls per account.
	DirectoryPerAccount int
	// PerClient bounds unauthenticated and mail-sending calls per client address.
	PerClient int
	// AdminFailuresPerClient bounds wrong admin tokens per client address.
	AdminFailuresPerClient int
}

// limit answers 429 M_LIMIT_EXCEEDED when key has used its budget for this minute.
func (s *Server) limit(w http.ResponseWriter, r *http.Request, key string, perMinute int) bool {
	return s.limitN(w, r, key, 1, perMinute)
}

// limitN charges n units to key's budget in one limiter call, answering 429 when they do not fit.
func (s *Server) limitN(w http.ResponseWriter, r *http.Request, key string, n, perMinute int) bool {
	if s.cfg.RateLimits.Limiter == nil || perMinute <= 0 {
		return true
	}
	ok, retry, err := s.cfg.RateLimits.Limiter.AllowN(r.Context(), key, n, perMinute, time.Minute)
	if err != nil {
		// The limiter falls back to memory itself (ratelimit.Fallback); an error here is the
		// request's own context ending, or a limiter without a fallback.
		s.log.WarnContext(r.Context(), "rate limiter failed", "err", err)
		matrixError(w, http.StatusServiceUnavailable, identity.CodeUnknown, "rate limiter unavailable; try again")
		return false
	}
	if ok {
		return true
	}
	tooMany(w, retry)
	return false
}

func tooMany(w http.ResponseWriter, retry time.Duration) {
	w.Header().Set("Retry-After", strconv.Itoa(int(retry.Seconds())+1))
	writeJSON(w, http.StatusTooManyRequests, map[string]any{"errcode": identity.CodeLimitExceeded,
		"error": "too many requests", "retry_after_ms": retry.Milliseconds()})
}

// clientKey names a client address for rate limits: IPv4 per address, IPv6 per /64, the
// smallest network one subscriber gets, so rotating through it gains nothing.
func clientKey(a netip.Addr) string {
	if a.Is6() {
		return netip.PrefixFrom(a, 64).Masked().String()
	}
	return a.String()
}

// limitClient is middleware bounding requests per client address for a route group.
func (s *Server) limitClient(name string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if s.limit(w, r, fmt.Sprintf("client:%s:%s", name, clientKey(s.clientAddr(r))), s.cfg.RateLimits.PerClient) {
				next.ServeHTTP(w, r)
			}
		})
	}
}

// maxLookup is the most addresses one lookup may carry: the batch size, and no more than any
// of budgets, since a batch larger than its budget could never be answered.
func (s *Server) maxLookup(budgets ...int) int {
	n := s.cfg.MaxLookupBatch
	if s.cfg.RateLimits.Limiter == nil {
		return n
	}
	for _, b := range budgets {
		if b > 0 && b < n {
			n = b
		}
	}
	return n
}

// chargeLookup charges n addresses to the account's and its homeserver's lookup budgets.
func (s *Server) chargeLookup(w http.ResponseWriter, r *http.Request, n int) bool {
	user := account(r).UserID
	return s.limitN(w, r, "lookup:account:"+user, n, s.cfg.RateLimits.LookupPerAccount) &&
		s.limitN(w, r, "lookup:server:"+matrixid.ServerOf(user), n, s.cfg.RateLimits.LookupPerServer)
}

// chargeClientLookup charges n addresses of an unauthenticated v1 lookup to the client
// address, which is a homeserver's (v1 is only served to their networks).
func (s *Server) chargeClientLookup(w http.ResponseWriter, r *http.Request, n int) bool {
	return s.limitN(w, r, "lookup:client:"+clientKey(s.clientAddr(r)), n, s.cfg.RateLimits.LookupPerServer)
}
