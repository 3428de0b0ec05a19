package sso

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisStore is a StateStore shared by every replica using one Redis.
type RedisStore struct {
	client redis.UniversalClient
	prefix string
}

// NewRedisStore returns a StateStore on client; every key starts with prefix.
func NewRedisStore(client redis.UniversalClient, prefix string) *RedisStore {
	return &RedisStore{client: client, prefix: prefix}
}

// ttl is at least a millisecond: Redis refuses a zero expiry.
func ttl(until time.Time) time.Duration {
	return max(time.Until(until), time.Millisecond)
}

func (r *RedisStore) PutFlow(ctx context.Context, f Flow) error {
	if !time.Now().Before(f.ExpiresAt) {
		return fmt.Errorf("sso: flow expires in the past")
	}
	b, err := json.Marshal(f)
	if err != nil {
		return fmt.Errorf("sso: encode flow: %w", err)
	}
	ok, err := r.client.SetNX(ctx, r.prefix+"flow:"+f.State, b, ttl(f.ExpiresAt)).Result()
	if err != nil {
		return fmt.Errorf("sso: store flow: %w", err)
	}
	if !ok {
		return ErrExists
	}
	return nil
}

func (r *RedisStore) TakeFlow(ctx context.Context, state string) (Flow, error) {
	// GETDEL is atomic: of two replicas handling the same callback only one gets the flow.
	b, err := r.client.GetDel(ctx, r.prefix+"flow:"+state).Bytes()
	if errors.Is(err, redis.Nil) {
		return Flow{}, ErrNotFound
	}
	if err != nil {
		return Flow{}, fmt.Errorf("sso: take flow: %w", err)
	}
	var f Flow
	if err := json.Unmarshal(b, &f); err != nil {
		return Flow{}, fmt.Errorf("sso: decode flow: %w", err)
	}
	if !time.Now().Before(f.ExpiresAt) {
		return Flow{}, ErrNotFound
	}
	return f, nil
}

func (r *RedisStore) FirstUse(ctx context.Context, key string, until time.Time) (bool, error) {
	ok, err := r.client.SetNX(ctx, r.prefix+"seen:"+key, 1, ttl(until)).Result()
	if err != nil {
		return false, fmt.Errorf("sso: replay cache: %w", err)
	}
	return ok, nil
}

// throttleScript counts within a fixed window and sets the window's expiry with the first count.
var throttleScript = redis.NewScript(`
local n = redis.call("INCR", KEYS[1])
if n == 1 then redis.call("PEXPIRE", KEYS[1], ARGV[1]) end
if n > tonumber(ARGV[2]) then return 0 end
return 1
`)

func (r *RedisStore) Throttle(ctx context.Context, key string, limit int, window time.Duration) (bool, error) {
	ok, err := throttleScript.Run(ctx, r.client, []string{r.prefix + "throttle:" + key}, window.Milliseconds(), limit).Int()
	if err != nil {
		return false, fmt.Errorf("sso: throttle: %w", err)
	}
	return ok == 1, nil
}
