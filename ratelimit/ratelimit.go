// Package ratelimit counts requests per key in fixed windows, in memory for a single instance
// or in Redis so that replicas behind one load balancer share the counts.
package ratelimit

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Limiter decides whether one more request for key fits in limit per window.
type Limiter interface {
	// Allow counts the request and reports whether it is within the limit; when it is not,
	// retryAfter says when the window resets.
	Allow(ctx context.Context, key string, limit int, window time.Duration) (ok bool, retryAfter time.Duration, err error)
	// AllowN charges n units (a lookup of n addresses) when they fit in what is left of the
	// window and reports whether they did; a refused charge costs nothing. n = 0 only asks
	// whether the window is still within limit.
	AllowN(ctx context.Context, key string, n, limit int, window time.Duration) (ok bool, retryAfter time.Duration, err error)
}

// Memory is a Limiter for one process.
type Memory struct {
	mu      sync.Mutex
	windows map[string]*memWindow
	now     func() time.Time
	sweep   time.Time
}

type memWindow struct {
	count int
	reset time.Time
}

// NewMemory returns an in-memory Limiter.
func NewMemory() *Memory { return &Memory{windows: map[string]*memWindow{}, now: time.Now} }

func (m *Memory) Allow(ctx context.Context, key string, limit int, window time.Duration) (bool, time.Duration, error) {
	return m.AllowN(ctx, key, 1, limit, window)
}

func (m *Memory) AllowN(_ context.Context, key string, n, limit int, window time.Duration) (bool, time.Duration, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	// Expired windows are dropped now and then so that memory follows active keys only.
	if now.After(m.sweep) {
		for k, w := range m.windows {
			if now.After(w.reset) {
				delete(m.windows, k)
			}
		}
		m.sweep = now.Add(time.Minute)
	}
	w := m.windows[key]
	if w == nil || !now.Before(w.reset) {
		w = &memWindow{reset: now.Add(window)}
		m.windows[key] = w
	}
	if w.count+n > limit {
		return false, w.reset.Sub(now), nil
	}
	w.count += n
	return true, 0, nil
}

// Redis is a Limiter shared by every replica using the same Redis.
type Redis struct {
	client redis.UniversalClient
	prefix string
}

// NewRedis returns a Limiter on client; keys are stored under prefix.
func NewRedis(client redis.UniversalClient, prefix string) *Redis {
	return &Redis{client: client, prefix: prefix}
}

// The charge and the window's expiry are set atomically; a charge that does not fit is not made.
// ARGV: window in ms, n, limit. Returns {allowed, ms until the window resets}.
var chargeScript = redis.NewScript(`
local cur = tonumber(redis.call("GET", KEYS[1]) or "0")
local n, limit = tonumber(ARGV[2]), tonumber(ARGV[3])
if cur + n > limit then
  local ttl = redis.call("PTTL", KEYS[1])
  if ttl < 0 then ttl = tonumber(ARGV[1]) end
  return {0, ttl}
end
if n > 0 then
  redis.call("INCRBY", KEYS[1], n)
  if redis.call("PTTL", KEYS[1]) < 0 then redis.call("PEXPIRE", KEYS[1], ARGV[1]) end
end
return {1, 0}
`)

func (r *Redis) Allow(ctx context.Context, key string, limit int, window time.Duration) (bool, time.Duration, error) {
	return r.AllowN(ctx, key, 1, limit, window)
}

func (r *Redis) AllowN(ctx context.Context, key string, n, limit int, window time.Duration) (bool, time.Duration, error) {
	res, err := chargeScript.Run(ctx, r.client, []string{r.prefix + key}, window.Milliseconds(), n, limit).Int64Slice()
	if err != nil {
		return false, 0, fmt.Errorf("rate limit: %w", err)
	}
	if len(res) != 2 {
		return false, 0, fmt.Errorf("rate limit: unexpected script result %v", res)
	}
	if res[0] == 0 {
		return false, time.Duration(max(res[1], 1)) * time.Millisecond, nil
	}
	return true, 0, nil
}
