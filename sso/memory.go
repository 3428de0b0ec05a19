package sso

import (
	"context"
	"sync"
	"time"
)

// MemoryStore is a StateStore for a single replica.
type MemoryStore struct {
	mu       sync.Mutex
	now      func() time.Time
	flows    map[string]Flow
	seen     map[string]time.Time
	counters map[string]memCounter
	sweep    time.Time
}

type memCounter struct {
	n     int
	reset time.Time
}

// NewMemoryStore returns an empty in-memory StateStore.
func NewMemoryStore() *MemoryStore {
	return &MemoryStore{now: time.Now, flows: map[string]Flow{}, seen: map[string]time.Time{}, counters: map[string]memCounter{}}
}

// gc drops expired entries now and then, so memory follows live logins only. Called with mu held.
func (m *MemoryStore) gc(now time.Time) {
	if now.Before(m.sweep) {
		return
	}
	for k, f := range m.flows {
		if !now.Before(f.ExpiresAt) {
			delete(m.flows, k)
		}
	}
	for k, until := range m.seen {
		if !now.Before(until) {
			delete(m.seen, k)
		}
	}
	for k, c := range m.counters {
		if !now.Before(c.reset) {
			delete(m.counters, k)
		}
	}
	m.sweep = now.Add(time.Minute)
}

func (m *MemoryStore) PutFlow(_ context.Context, f Flow) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	m.gc(now)
	if old, ok := m.flows[f.State]; ok && now.Before(old.ExpiresAt) {
		return ErrExists
	}
	m.flows[f.State] = f
	return nil
}

func (m *MemoryStore) TakeFlow(_ context.Context, state string) (Flow, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f, ok := m.flows[state]
	delete(m.flows, state)
	if !ok || !m.now().Before(f.ExpiresAt) {
		return Flow{}, ErrNotFound
	}
	return f, nil
}

func (m *MemoryStore) FirstUse(_ context.Context, key string, until time.Time) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	m.gc(now)
	if t, ok := m.seen[key]; ok && now.Before(t) {
		return false, nil
	}
	m.seen[key] = until
	return true, nil
}

func (m *MemoryStore) Throttle(_ context.Context, key string, limit int, window time.Duration) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	m.gc(now)
	c := m.counters[key]
	if !now.Before(c.reset) {
		c = memCounter{reset: now.Add(window)}
	}
	if c.n >= limit {
		return false, nil
	}
	c.n++
	m.counters[key] = c
	return true, nil
}
