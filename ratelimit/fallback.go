package ratelimit

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultProbeInterval is how long Fallback keeps to its secondary before trying the primary again.
const DefaultProbeInterval = 5 * time.Second

// Fallback uses primary (Redis) and, while that fails, secondary (memory), so that limits
// hold per replica instead of failing open. It reports the degraded state for /readyz and metrics.
type Fallback struct {
	primary, secondary Limiter
	probe              time.Duration
	log                *slog.Logger

	decisions atomic.Uint64 // answered by secondary while primary failed

	mu        sync.Mutex
	downSince time.Time
	lastErr   error
	nextProbe time.Time
}

// NewFallback returns a Limiter asking primary and falling back to secondary; probe is how
// long to wait before trying primary again after it failed (0: DefaultProbeInterval).
func NewFallback(primary, secondary Limiter, probe time.Duration, log *slog.Logger) *Fallback {
	if probe <= 0 {
		probe = DefaultProbeInterval
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Fallback{primary: primary, secondary: secondary, probe: probe, log: log}
}

func (f *Fallback) Allow(ctx context.Context, key string, limit int, window time.Duration) (bool, time.Duration, error) {
	return f.AllowN(ctx, key, 1, limit, window)
}

func (f *Fallback) AllowN(ctx context.Context, key string, n, limit int, window time.Duration) (bool, time.Duration, error) {
	now := time.Now()
	f.mu.Lock()
	skip := !f.downSince.IsZero() && now.Before(f.nextProbe)
	f.mu.Unlock()
	if !skip {
		ok, retry, err := f.primary.AllowN(ctx, key, n, limit, window)
		if err == nil {
			f.recovered()
			if ok && n > 0 {
				// Mirror what this replica let through, so that a failover mid-window starts
				// from this replica's count rather than from zero.
				f.secondary.AllowN(ctx, key, n, limit, window)
			}
			return ok, retry, nil
		}
		if ctx.Err() != nil {
			// The caller gave up; that says nothing about the primary.
			return false, 0, err
		}
		f.failed(now, err)
	}
	f.decisions.Add(1)
	return f.secondary.AllowN(ctx, key, n, limit, window)
}

func (f *Fallback) failed(now time.Time, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.downSince.IsZero() {
		f.downSince = now
		f.log.Warn("shared rate limiter unreachable: limits now held in memory per replica", "err", err)
	}
	f.lastErr = err
	f.nextProbe = now.Add(f.probe)
}

func (f *Fallback) recovered() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.downSince.IsZero() {
		f.log.Info("shared rate limiter reachable again", "down_for", time.Since(f.downSince).Round(time.Second))
		f.downSince, f.lastErr = time.Time{}, nil
	}
}

// Degraded reports why limits are held in memory instead of the primary, or nil when they are not.
func (f *Fallback) Degraded() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.downSince.IsZero() {
		return nil
	}
	return &DegradedError{Since: f.downSince, Err: f.lastErr}
}

// FallbackDecisions counts the requests the secondary limiter answered.
func (f *Fallback) FallbackDecisions() uint64 { return f.decisions.Load() }

// DegradedError says since when the primary limiter has been failing and its last error.
type DegradedError struct {
	Since time.Time
	Err   error
}

func (e *DegradedError) Error() string {
	return "shared rate limiter (Redis) unreachable since " + e.Since.UTC().Format(time.RFC3339) +
		"; limits are held in memory per replica: " + e.Err.Error()
}

func (e *DegradedError) Unwrap() error { return e.Err }
