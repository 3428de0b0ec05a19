package ratelimit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// conformance is what every Limiter must do.
func conformance(t *testing.T, l Limiter) {
	ctx := context.Background()
	b := make([]byte, 6)
	rand.Read(b)
	key := "test:" + hex.EncodeToString(b)

	t.Run("limit", func(t *testing.T) {
		for i := range 3 {
			if ok, _, err := l.Allow(ctx, key, 3, time.Minute); err != nil || !ok {
				t.Fatalf("request %d refused: %v", i+1, err)
			}
		}
		ok, retry, err := l.Allow(ctx, key, 3, time.Minute)
		if err != nil || ok || retry <= 0 || retry > time.Minute {
			t.Fatalf("fourth request: ok=%v retry=%v err=%v", ok, retry, err)
		}
		if ok, _, _ := l.Allow(ctx, key+"-other", 3, time.Minute); !ok {
			t.Fatal("another key is limited too")
		}
	})
	t.Run("window resets", func(t *testing.T) {
		k := key + "-short"
		l.Allow(ctx, k, 1, 200*time.Millisecond)
		if ok, _, _ := l.Allow(ctx, k, 1, 200*time.Millisecond); ok {
			t.Fatal("second request in window allowed")
		}
		time.Sleep(300 * time.Millisecond)
		if ok, _, _ := l.Allow(ctx, k, 1, 200*time.Millisecond); !ok {
			t.Fatal("new window still limited")
		}
	})
	t.Run("charge n", func(t *testing.T) {
		k := key + "-n"
		if ok, _, err := l.AllowN(ctx, k, 0, 10, time.Minute); err != nil || !ok {
			t.Fatalf("asking an unused window: ok=%v err=%v", ok, err)
		}
		if ok, _, err := l.AllowN(ctx, k, 7, 10, time.Minute); err != nil || !ok {
			t.Fatalf("7 of 10 refused: %v", err)
		}
		// 4 more do not fit; the refusal costs nothing, so 3 still do.
		if ok, retry, err := l.AllowN(ctx, k, 4, 10, time.Minute); err != nil || ok || retry <= 0 || retry > time.Minute {
			t.Fatalf("11 of 10: ok=%v retry=%v err=%v", ok, retry, err)
		}
		if ok, _, err := l.AllowN(ctx, k, 3, 10, time.Minute); err != nil || !ok {
			t.Fatalf("10 of 10 refused: %v", err)
		}
		if ok, _, _ := l.AllowN(ctx, k, 0, 10, time.Minute); !ok {
			t.Fatal("a full window reads as over the limit")
		}
		if ok, _, _ := l.AllowN(ctx, k, 1, 10, time.Minute); ok {
			t.Fatal("a full window allowed one more")
		}
		if ok, _, _ := l.AllowN(ctx, k+"-big", 11, 10, time.Minute); ok {
			t.Fatal("a charge larger than the limit allowed")
		}
	})
	t.Run("concurrent", func(t *testing.T) {
		k := key + "-conc"
		var allowed atomic.Int32
		var wg sync.WaitGroup
		for range 50 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if ok, _, err := l.Allow(ctx, k, 20, time.Minute); err == nil && ok {
					allowed.Add(1)
				}
			}()
		}
		wg.Wait()
		if allowed.Load() != 20 {
			t.Fatalf("%d of 50 allowed, want exactly 20", allowed.Load())
		}
	})
}

func TestMemory(t *testing.T) { conformance(t, NewMemory()) }

func TestRedis(t *testing.T) {
	addr := os.Getenv("OZO_TEST_REDIS_ADDR")
	if addr == "" {
		addr = "127.0.0.1:6379"
	}
	client := redis.NewClient(&redis.Options{Addr: addr})
	defer client.Close()
	if err := client.Ping(context.Background()).Err(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("Redis is required in CI: %v", err)
		}
		t.Skipf("Redis not reachable: %v", err)
	}
	conformance(t, NewRedis(client, "ozo-identity-test:"))
}

func TestRedisDownIsAnError(t *testing.T) {
	client := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", DialTimeout: 200 * time.Millisecond, MaxRetries: -1})
	defer client.Close()
	if _, _, err := NewRedis(client, "x:").Allow(context.Background(), "k", 1, time.Second); err == nil {
		t.Fatal("no error with Redis unreachable")
	}
}

func TestMemorySweepsExpiredKeys(t *testing.T) {
	m := NewMemory()
	now := time.Now()
	m.now = func() time.Time { return now }
	for i := range 100 {
		m.Allow(context.Background(), string(rune('a'+i)), 1, time.Second)
	}
	now = now.Add(2 * time.Minute)
	m.Allow(context.Background(), "z", 1, time.Second)
	if len(m.windows) != 1 {
		t.Fatalf("%d windows kept after they expired", len(m.windows))
	}
}
