// Package ssotest is the conformance suite every sso.StateStore passes.
package ssotest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/sso"
)

// RunStateStore runs the suite; newStore returns an empty store for each subtest.
func RunStateStore(t *testing.T, newStore func(t *testing.T) sso.StateStore) {
	ctx := context.Background()
	t.Run("TakeOnce", func(t *testing.T) {
		s := newStore(t)
		f := sso.Flow{State: "st1", IdP: "ziekenhuis", Nonce: "n", PKCEVerifier: "v", RequestID: "id-1",
			SID: "sid", ClientSecret: "cs", UserID: "@a:hs.test", NextLink: "https://app.test/x", Browser: "b",
			Proven:    &sso.Identity{IdP: "ziekenhuis", Subject: "s", UZI: "900000009", AuthenticatedAt: time.Now().Truncate(time.Second).UTC()},
			ExpiresAt: time.Now().Add(time.Minute).Truncate(time.Millisecond)}
		if err := s.PutFlow(ctx, f); err != nil {
			t.Fatal(err)
		}
		got, err := s.TakeFlow(ctx, "st1")
		if err != nil {
			t.Fatal(err)
		}
		if !got.ExpiresAt.Equal(f.ExpiresAt) {
			t.Fatalf("expiry %v, want %v", got.ExpiresAt, f.ExpiresAt)
		}
		if got.Proven == nil || !got.Proven.AuthenticatedAt.Equal(f.Proven.AuthenticatedAt) {
			t.Fatalf("proven identity %+v, want %+v", got.Proven, f.Proven)
		}
		got.Proven.AuthenticatedAt = f.Proven.AuthenticatedAt
		if *got.Proven != *f.Proven {
			t.Fatalf("proven identity %+v, want %+v", got.Proven, f.Proven)
		}
		got.ExpiresAt, got.Proven = f.ExpiresAt, f.Proven
		if got != f {
			t.Fatalf("got %+v, want %+v", got, f)
		}
		if _, err := s.TakeFlow(ctx, "st1"); !errors.Is(err, sso.ErrNotFound) {
			t.Fatalf("second take: %v, want ErrNotFound", err)
		}
		if _, err := s.TakeFlow(ctx, "unknown"); !errors.Is(err, sso.ErrNotFound) {
			t.Fatalf("unknown state: %v, want ErrNotFound", err)
		}
	})
	t.Run("StateUnique", func(t *testing.T) {
		s := newStore(t)
		f := sso.Flow{State: "dup", IdP: "a", ExpiresAt: time.Now().Add(time.Minute)}
		if err := s.PutFlow(ctx, f); err != nil {
			t.Fatal(err)
		}
		f.IdP = "b"
		if err := s.PutFlow(ctx, f); !errors.Is(err, sso.ErrExists) {
			t.Fatalf("second put: %v, want ErrExists", err)
		}
		got, err := s.TakeFlow(ctx, "dup")
		if err != nil || got.IdP != "a" {
			t.Fatalf("the first flow must stay: %+v, %v", got, err)
		}
	})
	t.Run("Expiry", func(t *testing.T) {
		s := newStore(t)
		if err := s.PutFlow(ctx, sso.Flow{State: "short", ExpiresAt: time.Now().Add(50 * time.Millisecond)}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(120 * time.Millisecond)
		if _, err := s.TakeFlow(ctx, "short"); !errors.Is(err, sso.ErrNotFound) {
			t.Fatalf("expired flow: %v, want ErrNotFound", err)
		}
	})
	t.Run("ConcurrentTake", func(t *testing.T) {
		s := newStore(t)
		if err := s.PutFlow(ctx, sso.Flow{State: "race", ExpiresAt: time.Now().Add(time.Minute)}); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		var mu sync.Mutex
		won := 0
		for range 16 {
			wg.Go(func() {
				if _, err := s.TakeFlow(ctx, "race"); err == nil {
					mu.Lock()
					won++
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if won != 1 {
			t.Fatalf("%d takers got the flow, want exactly 1", won)
		}
	})
	t.Run("FirstUse", func(t *testing.T) {
		s := newStore(t)
		until := time.Now().Add(time.Minute)
		for i, want := range []bool{true, false, false} {
			ok, err := s.FirstUse(ctx, "saml:idp:_abc", until)
			if err != nil {
				t.Fatal(err)
			}
			if ok != want {
				t.Fatalf("use %d: first=%v, want %v", i, ok, want)
			}
		}
		if ok, err := s.FirstUse(ctx, "saml:idp:_other", until); err != nil || !ok {
			t.Fatalf("another ID: %v, %v", ok, err)
		}
		var wg sync.WaitGroup
		var mu sync.Mutex
		firsts := 0
		for range 16 {
			wg.Go(func() {
				if ok, err := s.FirstUse(ctx, "jti:race", until); err == nil && ok {
					mu.Lock()
					firsts++
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if firsts != 1 {
			t.Fatalf("%d concurrent first uses, want 1", firsts)
		}
	})
	t.Run("FirstUseExpires", func(t *testing.T) {
		s := newStore(t)
		if ok, _ := s.FirstUse(ctx, "k", time.Now().Add(50*time.Millisecond)); !ok {
			t.Fatal("first use refused")
		}
		time.Sleep(120 * time.Millisecond)
		if ok, err := s.FirstUse(ctx, "k", time.Now().Add(time.Minute)); err != nil || !ok {
			t.Fatalf("after expiry: %v, %v; the entry must be gone", ok, err)
		}
	})
	t.Run("Throttle", func(t *testing.T) {
		s := newStore(t)
		for i := range 5 {
			ok, err := s.Throttle(ctx, "login:1.2.3.4", 3, 200*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			if ok != (i < 3) {
				t.Fatalf("event %d: allowed=%v", i, ok)
			}
		}
		if ok, _ := s.Throttle(ctx, "login:5.6.7.8", 3, time.Minute); !ok {
			t.Fatal("another key must have its own count")
		}
		time.Sleep(300 * time.Millisecond)
		if ok, err := s.Throttle(ctx, "login:1.2.3.4", 3, 200*time.Millisecond); err != nil || !ok {
			t.Fatalf("a new window must allow again: %v, %v", ok, err)
		}
	})
	t.Run("Isolation", func(t *testing.T) {
		// Flows, replay keys and counters with the same name do not collide.
		s := newStore(t)
		name := fmt.Sprintf("same-%d", time.Now().UnixNano())
		if err := s.PutFlow(ctx, sso.Flow{State: name, ExpiresAt: time.Now().Add(time.Minute)}); err != nil {
			t.Fatal(err)
		}
		if ok, _ := s.FirstUse(ctx, name, time.Now().Add(time.Minute)); !ok {
			t.Fatal("replay key collided with a flow")
		}
		if ok, _ := s.Throttle(ctx, name, 1, time.Minute); !ok {
			t.Fatal("throttle collided")
		}
		if _, err := s.TakeFlow(ctx, name); err != nil {
			t.Fatal(err)
		}
	})
}
