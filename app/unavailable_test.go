package app_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/api/apitest"
	"github.com/ozo-platform/ozo-identity/config"
	"github.com/ozo-platform/ozo-identity/internal/proxytest"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
)

// postgresBehindProxy is a server on PostgreSQL reached through a proxy the test can cut or
// stall; configure adjusts the rest of the configuration (nil: nothing).
func postgresBehindProxy(t *testing.T, configure func(*config.Config)) (*apitest.Harness, *proxytest.Proxy) {
	var p *proxytest.Proxy
	h := apitest.New(t, sqlstore.Postgres, func(c *config.Config) {
		u, err := url.Parse(c.Database.URL)
		if err != nil {
			t.Fatal(err)
		}
		p = proxytest.New(t, u.Host)
		u.Host = p.Addr()
		c.Database.URL = u.String()
		if configure != nil {
			configure(c)
		}
	})
	return h, p
}

// PostgreSQL is cut three times under binds, store-invites and lookups, with statements and
// transactions in flight: every request that fails answers 503 M_UNKNOWN "temporarily
// unavailable" with Retry-After (pgx's "conn closed", a lost connection, a refused or timed-out
// connect alike), never 500; /readyz names the database meanwhile; service resumes by itself and
// every acknowledged binding is there.
func TestDatabaseLostMidRequest(t *testing.T) {
	h, p := postgresBehindProxy(t, nil)
	alice := h.NewUser(t, "alice")
	pepper := h.Pepper(t, alice)

	type result struct {
		what   string
		status int
		body   string
		retry  string
	}
	var (
		mu       sync.Mutex
		results  []result
		bindings = map[string]string{}
	)
	send := func(what, path, token string, body any) (int, []byte) {
		data, _ := json.Marshal(body)
		req, _ := http.NewRequest(http.MethodPost, h.URL+path, bytes.NewReader(data))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := h.Client.Do(req)
		if err != nil {
			mu.Lock()
			results = append(results, result{what: what, body: err.Error()})
			mu.Unlock()
			return 0, nil
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		mu.Lock()
		results = append(results, result{what, resp.StatusCode, string(b), resp.Header.Get("Retry-After")})
		mu.Unlock()
		return resp.StatusCode, b
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				addr := fmt.Sprintf("m%d-%d@patient.example", w, i)
				send("store-invite", apitest.V2+"/store-invite", alice.Token, map[string]any{
					"medium": "email", "address": addr, "room_id": "!room:hs.ozo.test", "sender": alice.MXID})
				mxid := fmt.Sprintf("@m%d-%d:%s", w, i, h.HS.Name)
				if status, _ := send("bind", "/_ozo/admin/v1/bindings", apitest.AdminToken,
					map[string]any{"medium": "email", "address": addr, "mxid": mxid}); status == http.StatusOK {
					mu.Lock()
					bindings[addr] = mxid
					mu.Unlock()
				}
				send("lookup", apitest.V2+"/lookup", alice.Token, map[string]any{
					"addresses": []string{addr + " email"}, "algorithm": "none", "pepper": pepper})
			}
		})
	}
	ready := func() (int, string) { return ops(t, h, "/readyz") }
	for round := range 3 {
		time.Sleep(700 * time.Millisecond)
		p.Cut()
		time.Sleep(600 * time.Millisecond)
		if status, body := ready(); status != http.StatusServiceUnavailable || !strings.Contains(body, `"error":"database unreachable`) {
			t.Errorf("round %d: /readyz with PostgreSQL cut: %d %s", round, status, body)
		}
		time.Sleep(400 * time.Millisecond)
		p.Restore()
	}
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()

	byStatus := map[int]int{}
	for _, r := range results {
		byStatus[r.status]++
		switch r.status {
		case http.StatusOK:
		case http.StatusServiceUnavailable:
			var e struct{ Errcode, Error string }
			json.Unmarshal([]byte(r.body), &e)
			if e.Errcode != "M_UNKNOWN" || !strings.HasPrefix(e.Error, "temporarily unavailable") || r.retry == "" {
				t.Errorf("%s: 503 without M_UNKNOWN, the message or Retry-After (%q): %s", r.what, r.retry, r.body)
			}
		default:
			t.Errorf("%s while PostgreSQL came and went: HTTP %d %s", r.what, r.status, r.body)
		}
	}
	t.Logf("%d requests: %v", len(results), byStatus)
	if byStatus[http.StatusServiceUnavailable] == 0 {
		t.Fatal("no request met the cuts")
	}
	if byStatus[http.StatusOK] == 0 {
		t.Fatal("nothing succeeded")
	}
	if status, body := ready(); status != http.StatusOK {
		t.Errorf("/readyz after PostgreSQL came back: %d %s", status, body)
	}
	for addr, mxid := range bindings {
		if got := h.LookupOne(t, alice, "email", addr); got != mxid {
			t.Errorf("acknowledged binding %s → %s lost (%q)", addr, mxid, got)
		}
	}
}

// PostgreSQL stops answering without closing its connections (a hung server, a partition that
// drops packets): binds, lookups and token checks answer 503 M_UNKNOWN with Retry-After once
// http.request_timeout has passed, instead of holding the request as long as the caller waits;
// when it answers again, so does the service, and a binding made then is found.
func TestDatabaseSilent(t *testing.T) {
	const timeout = 2 * time.Second
	h, p := postgresBehindProxy(t, func(c *config.Config) { c.HTTP.RequestTimeout = timeout })
	alice := h.NewUser(t, "alice")
	pepper := h.Pepper(t, alice)
	send := func(path, token, body string) (int, string, string) {
		method := http.MethodPost
		if body == "" {
			method = http.MethodGet
		}
		req, _ := http.NewRequest(method, h.URL+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := h.Client.Do(req)
		if err != nil {
			return 0, err.Error(), ""
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), resp.Header.Get("Retry-After")
	}
	bind := func(addr string) string {
		return fmt.Sprintf(`{"medium":"email","address":%q,"mxid":"@silent:%s"}`, addr, h.HS.Name)
	}
	requests := []struct{ what, path, token, body string }{
		{"bind", "/_ozo/admin/v1/bindings", apitest.AdminToken, bind("during@patient.example")},
		{"lookup", apitest.V2 + "/lookup", alice.Token,
			fmt.Sprintf(`{"addresses":["someone@patient.example email"],"algorithm":"none","pepper":%q}`, pepper)},
		{"account", apitest.V2 + "/account", alice.Token, ""},
	}

	p.Stall()
	var wg sync.WaitGroup
	for _, r := range requests {
		wg.Go(func() {
			start := time.Now()
			status, body, retry := send(r.path, r.token, r.body)
			took := time.Since(start)
			var e struct{ Errcode, Error string }
			json.Unmarshal([]byte(body), &e)
			if status != http.StatusServiceUnavailable || e.Errcode != "M_UNKNOWN" || !strings.HasPrefix(e.Error, "temporarily unavailable") || retry == "" {
				t.Errorf("%s with PostgreSQL silent: %d %s (Retry-After %q) after %v", r.what, status, body, retry, took)
			}
			// The request's own deadline ended it, not the client's.
			if took > timeout+5*time.Second {
				t.Errorf("%s with PostgreSQL silent took %v; request_timeout is %v", r.what, took, timeout)
			}
		})
	}
	wg.Wait()
	if status, body := ops(t, h, "/readyz"); status != http.StatusServiceUnavailable {
		t.Errorf("/readyz with PostgreSQL silent: %d %s", status, body)
	}
	p.Resume()

	deadline := time.Now().Add(20 * time.Second)
	for {
		status, body, _ := send("/_ozo/admin/v1/bindings", apitest.AdminToken, bind("after@patient.example"))
		if status == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("bind after PostgreSQL answered again: %d %s", status, body)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if got := h.LookupOne(t, alice, "email", "after@patient.example"); got != "@silent:"+h.HS.Name {
		t.Errorf("binding made after PostgreSQL answered again looked up as %q", got)
	}
}
