package api_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/api"
)

// /readyz names the dependency that fails, leaves out what ?exclude= names (and refuses a name it
// does not know, so a prober's typo shows), answers in time when a check hangs, and says
// "stopping" once the replica drains, whatever is excluded. /healthz is about the process only.
func TestReadyz(t *testing.T) {
	var dbDown, redisDown, stopping atomic.Bool
	check := func(down *atomic.Bool, what string) func(context.Context) error {
		return func(ctx context.Context) error {
			if down.Load() {
				return errors.New(what + " refused")
			}
			return nil
		}
	}
	hang := api.ReadyCheck{Name: "slow", Check: func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }}
	h := api.OpsHandler(api.NewMetrics(), []api.ReadyCheck{
		{Name: "database", Check: check(&dbDown, "database")},
		{Name: "redis", Check: check(&redisDown, "redis")},
	}, stopping.Load)
	get := func(path string) (int, map[string]any) {
		t.Helper()
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		var body map[string]any
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
			t.Fatalf("%s: %v %s", path, err, rec.Body)
		}
		return rec.Code, body
	}
	for _, c := range []struct {
		db, redis, stop bool
		path            string
		status          int
		error           string
	}{
		{path: "/readyz", status: 200},
		{redis: true, path: "/readyz", status: 503, error: "redis unreachable: redis refused"},
		{redis: true, path: "/readyz?exclude=redis", status: 200},
		{db: true, path: "/readyz?exclude=redis", status: 503, error: "database unreachable: database refused"},
		{db: true, redis: true, path: "/readyz", status: 503, error: "database unreachable: database refused; redis unreachable: redis refused"},
		{db: true, redis: true, path: "/readyz?exclude=redis&exclude=database", status: 200},
		{db: true, redis: true, path: "/readyz?exclude=redis,database", status: 200},
		{path: "/readyz?exclude=reddis", status: 400, error: `exclude="reddis": no such check (have database, redis)`},
		{stop: true, path: "/readyz?exclude=database,redis", status: 503, error: "the replica is shutting down"},
		{db: true, redis: true, stop: true, path: "/healthz", status: 200},
	} {
		dbDown.Store(c.db)
		redisDown.Store(c.redis)
		stopping.Store(c.stop)
		status, body := get(c.path)
		if status != c.status || (c.error != "" && body["error"] != c.error) || (c.error == "" && body["error"] != nil) {
			t.Errorf("db down %v, redis down %v, stopping %v: %s = %d %v, want %d %q", c.db, c.redis, c.stop, c.path, status, body, c.status, c.error)
		}
	}

	slow := api.OpsHandler(api.NewMetrics(), []api.ReadyCheck{hang}, nil)
	start := time.Now()
	rec := httptest.NewRecorder()
	slow.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	if rec.Code != 503 || !strings.Contains(rec.Body.String(), "slow unreachable: context deadline exceeded") || time.Since(start) > 4*time.Second {
		t.Errorf("hanging check: %d %s after %s", rec.Code, rec.Body, time.Since(start))
	}
}
