package ratelimit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ozo-platform/ozo-identity/internal/proxytest"
)

func redisAddr(t *testing.T) string {
	t.Helper()
	addr := os.Getenv("OZO_TEST_REDIS_ADDR")
	if addr == "" {
		addr = "127.0.0.1:6379"
	}
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	if err := c.Ping(context.Background()).Err(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("Redis is required in CI: %v", err)
		}
		t.Skipf("Redis not reachable: %v", err)
	}
	return addr
}

func uniqueKey(prefix string) string {
	b := make([]byte, 6)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// overLimit makes limit+extra requests for key and counts the refused ones.
func overLimit(t *testing.T, l Limiter, key string, limit, extra int) int {
	t.Helper()
	refused := 0
	for range limit + extra {
		ok, _, err := l.Allow(context.Background(), key, limit, time.Minute)
		if err != nil {
			t.Fatalf("limiter failed open with an error: %v", err)
		}
		if !ok {
			refused++
		}
	}
	return refused
}

// The attack of the issue: 80 registrations against a limit of 60 with Redis unreachable.
func TestFallbackRedisRefusesConnections(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now: connections are refused
	client := redis.NewClient(&redis.Options{Addr: addr, DialTimeout: 200 * time.Millisecond, MaxRetries: -1})
	defer client.Close()
	f := NewFallback(NewRedis(client, uniqueKey("fb:")+":"), NewMemory(), time.Hour, nil)
	if f.Degraded() != nil {
		t.Fatal("degraded before any request")
	}
	if refused := overLimit(t, f, "client:register:192.0.2.1", 60, 20); refused != 20 {
		t.Fatalf("%d of 80 registrations refused, want 20", refused)
	}
	var de *DegradedError
	if err := f.Degraded(); !errors.As(err, &de) || de.Err == nil {
		t.Fatalf("Degraded() = %v, want a DegradedError with the cause", err)
	}
	if f.FallbackDecisions() != 80 {
		t.Fatalf("%d decisions in memory, want 80", f.FallbackDecisions())
	}
}

// Redis works, then becomes unreachable mid-window: the limits keep holding, and when Redis is
// back the shared counts are used again.
func TestFallbackRedisGoesAway(t *testing.T) {
	target := redisAddr(t)
	proxy := proxytest.New(t, target)
	client := redis.NewClient(&redis.Options{Addr: proxy.Addr(), DialTimeout: 200 * time.Millisecond,
		ReadTimeout: 500 * time.Millisecond, MaxRetries: -1})
	defer client.Close()
	prefix := uniqueKey("ozo-identity-test:fb:") + ":"
	f := NewFallback(NewRedis(client, prefix), NewMemory(), 50*time.Millisecond, nil)

	// The attack: 80 registrations against a limit of 60, Redis lost after the first 30.
	key := "client:register:192.0.2.7"
	if refused := overLimit(t, f, key, 60, -30); refused != 0 {
		t.Fatalf("%d refused within the limit", refused)
	}
	if f.Degraded() != nil || f.FallbackDecisions() != 0 {
		t.Fatalf("degraded while Redis answers: %v", f.Degraded())
	}
	proxy.Cut()
	if refused := overLimit(t, f, key, 60, -10); refused != 20 {
		t.Fatalf("with Redis gone after 30, %d of the next 50 refused, want 20", refused)
	}
	if f.Degraded() == nil {
		t.Fatal("not reported degraded with Redis gone")
	}

	// Redis is back (a new proxy address stands for it): the shared count of key is used again.
	back := redis.NewClient(&redis.Options{Addr: target})
	defer back.Close()
	f.primary = NewRedis(back, prefix)
	time.Sleep(100 * time.Millisecond)
	// Redis counted 30 of key: 30 more fit, the 31st does not.
	if refused := overLimit(t, f, key, 60, -29); refused != 1 {
		t.Fatalf("after recovery, %d of 31 refused, want 1 (the shared count was lost)", refused)
	}
	if err := f.Degraded(); err != nil {
		t.Fatalf("still degraded after Redis answered: %v", err)
	}
}
