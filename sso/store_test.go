package sso_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ozo-platform/ozo-identity/sso"
	"github.com/ozo-platform/ozo-identity/sso/ssotest"
)

func TestMemoryStore(t *testing.T) {
	ssotest.RunStateStore(t, func(t *testing.T) sso.StateStore { return sso.NewMemoryStore() })
}

// TestRedisStore runs the suite against the real Redis on 127.0.0.1:6379, each subtest under its own prefix.
func TestRedisStore(t *testing.T) {
	client := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	t.Cleanup(func() { client.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := client.Ping(ctx).Err(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("Redis on 127.0.0.1:6379: %v", err)
		}
		t.Skipf("no Redis on 127.0.0.1:6379: %v", err)
	}
	ssotest.RunStateStore(t, func(t *testing.T) sso.StateStore {
		prefix := fmt.Sprintf("ozo-test-sso-%d:", time.Now().UnixNano())
		t.Cleanup(func() {
			keys, _ := client.Keys(context.Background(), prefix+"*").Result()
			if len(keys) > 0 {
				client.Del(context.Background(), keys...)
			}
		})
		return sso.NewRedisStore(client, prefix)
	})
}
