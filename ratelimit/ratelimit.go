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

func (m *Memory) Allow(_ context.Context, key string, limit int, window time.Duration) (bool, time.Duration, error) {
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
	w.count++
	if w.count > limit {
		return false, w.reset.Sub(now), nil
	}
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

// The first request of a window sets its expiry, atomically with the increment.
var incrScript = redis.NewScript(`
local n = redis.call("INCR", KEYS[1])
if n == 1 then redis.call("PEXPIRE", KEYS[1], ARGV[1]) end
return {n, redis.call("PTTL", KEYS[1])}
`)

func (r *Redis) Allow(ctx context.Context, key string, limit int, window time.Duration) (bool, time.Duration, error) {
	res, err := incrScript.Run(ctx, r.client, []string{r.prefix + key}, window.Milliseconds()).Int64Slice()
	if err != nil {
		return false, 0, fmt.Errorf("rate limit: %w", err)
	}
	if res[0] > int64(limit) {
		return false, time.Duration(max(res[1], 0)) * time.Millisecond, nil
	}
	return true, 0, nil
}
