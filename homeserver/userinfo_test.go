package homeserver

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

const testToken = "s3cr3t-openid-token"

// serveUserInfo answers userinfo for testToken with sub, 401 otherwise, and records the
// Host header it was addressed with.
func (hs *testHS) serveUserInfo(sub func() string, host *atomic.Value) {
	hs.mux.HandleFunc("GET /_matrix/federation/v1/openid/userinfo", func(w http.ResponseWriter, r *http.Request) {
		if host != nil {
			host.Store(r.Host)
		}
		if r.URL.Query().Get("access_token") != testToken {
			writeJSON(w, http.StatusUnauthorized, map[string]string{"errcode": "M_UNKNOWN_TOKEN", "error": "nope"})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"sub": sub()})
	})
}

func TestUserInfoIPLiteral(t *testing.T) {
	pki := newPKI(t)
	hs := newTestHS(t, pki)
	hs.serveUserInfo(func() string { return "@alice:" + hs.name }, nil)
	c := newTestClient(t, pki, Options{AllowedNetworks: loopback})

	got, err := c.UserInfo(context.Background(), hs.name, testToken)
	if err != nil {
		t.Fatal(err)
	}
	if want := "@alice:" + hs.name; got != want {
		t.Fatalf("user ID %q, want %q", got, want)
	}

	_, err = c.UserInfo(context.Background(), hs.name, "wrong-token")
	wantErr(t, err, ErrTokenRejected)
	if IsRetryable(err) {
		t.Error("token rejection is retryable")
	}
	before := hs.hits.Load()
	_, err = c.UserInfo(context.Background(), hs.name, "")
	wantErr(t, err, ErrTokenRejected)
	if hs.hits.Load() != before {
		t.Error("empty token was sent")
	}
}

func TestUserInfoRefusesNonPublicTargets(t *testing.T) {
	pki := newPKI(t)
	hs := newTestHS(t, pki)
	hs.serveUserInfo(func() string { return "@alice:" + hs.name }, nil)

	cases := []struct {
		name       string
		serverName string
		allowed    []netip.Prefix
	}{
		{"loopback not allowed", hs.name, nil},
		{"mapped loopback", "[::ffff:127.0.0.1]:" + hs.port, nil},
		{"unspecified reaches loopback on Linux", "0.0.0.0:" + hs.port, loopback},
		{"other allowed network only", hs.name, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestClient(t, pki, Options{AllowedNetworks: tc.allowed})
			_, err := c.UserInfo(context.Background(), tc.serverName, testToken)
			wantErr(t, err, ErrNotAllowed)
			if IsRetryable(err) {
				t.Error("SSRF refusal is retryable")
			}
		})
	}
	if n := hs.hits.Load(); n != 0 {
		t.Fatalf("homeserver reached %d times, want 0", n)
	}
}

func TestUserInfoInvalidServerName(t *testing.T) {
	pki := newPKI(t)
	c := newTestClient(t, pki, Options{AllowedNetworks: loopback})
	for _, name := range []string{"", "bad name", "evil.test/path", "@alice:hs.test", "hs.test:99999x", "[::1", "a_b.test", strings.Repeat("a", 300)} {
		_, err := c.UserInfo(context.Background(), name, testToken)
		wantErr(t, err, ErrInvalidServerName)
	}
}

func TestUserInfoWellKnownDelegation(t *testing.T) {
	pki := newPKI(t)
	hs := newTestHS(t, pki)
	var host atomic.Value
	hs.serveUserInfo(func() string { return "@alice:wk.test" }, &host)

	// wk.test delegates to hs.test:<port> through https://wk.test/.well-known/matrix/server.
	wk := newTestHS(t, pki)
	wk.mux.HandleFunc("GET /.well-known/matrix/server", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"m.server": "hs.test:" + hs.port})
	})
	dns := &testDNS{a: map[string][]netip.Addr{
		"wk.test.": mustAddrs("127.0.0.1"),
		"hs.test.": mustAddrs("127.0.0.1"),
	}}
	c := newTestClient(t, pki, Options{AllowedNetworks: loopback, Resolver: dns.start(t)})
	c.rewriteAddr = func(addr string) string {
		if addr == "wk.test:443" {
			return "wk.test:" + wk.port
		}
		return addr
	}

	got, err := c.UserInfo(context.Background(), "wk.test", testToken)
	if err != nil {
		t.Fatal(err)
	}
	if got != "@alice:wk.test" {
		t.Fatalf("user ID %q", got)
	}
	if h, _ := host.Load().(string); h != "hs.test:"+hs.port {
		t.Fatalf("Host header %q, want the delegated name", h)
	}
	if n := wk.hits.Load(); n != 1 {
		t.Fatalf(".well-known fetched %d times, want 1", n)
	}
	// The resolution is cached.
	if _, err := c.UserInfo(context.Background(), "wk.test", testToken); err != nil {
		t.Fatal(err)
	}
	if n := wk.hits.Load(); n != 1 {
		t.Fatalf(".well-known fetched %d times after a cached resolution, want 1", n)
	}

	// Without loopback allowed, the .well-known fetch itself is refused too.
	wkBefore, hsBefore := wk.hits.Load(), hs.hits.Load()
	refusing := newTestClient(t, pki, Options{Resolver: c.opts.Resolver})
	refusing.rewriteAddr = c.rewriteAddr
	_, err = refusing.UserInfo(context.Background(), "wk.test", testToken)
	wantErr(t, err, ErrNotAllowed)
	if wk.hits.Load() != wkBefore || hs.hits.Load() != hsBefore {
		t.Fatal("refusing client reached a server")
	}
}

func TestUserInfoWellKnownRedirectRefused(t *testing.T) {
	pki := newPKI(t)
	hs := newTestHS(t, pki)
	hs.serveUserInfo(func() string { return "@alice:wk.test" }, nil)
	wk := newTestHS(t, pki)
	var followed atomic.Int64
	wk.mux.HandleFunc("GET /.well-known/matrix/server", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/elsewhere", http.StatusFound)
	})
	wk.mux.HandleFunc("GET /elsewhere", func(w http.ResponseWriter, r *http.Request) {
		followed.Add(1)
		writeJSON(w, http.StatusOK, map[string]string{"m.server": "hs.test:" + hs.port})
	})
	dns := &testDNS{a: map[string][]netip.Addr{"wk.test.": mustAddrs("127.0.0.1"), "hs.test.": mustAddrs("127.0.0.1")}}
	c := newTestClient(t, pki, Options{AllowedNetworks: loopback, Resolver: dns.start(t)})
	c.rewriteAddr = func(addr string) string { return strings.Replace(addr, "wk.test:443", "wk.test:"+wk.port, 1) }

	// Without delegation the name falls back to wk.test:8448, where nothing listens.
	_, err := c.UserInfo(context.Background(), "wk.test", testToken)
	wantErr(t, err, ErrUnreachable)
	if followed.Load() != 0 || hs.hits.Load() != 0 {
		t.Fatal("redirected .well-known was followed")
	}
}

func TestUserInfoSRV(t *testing.T) {
	pki := newPKI(t)
	hs := newTestHS(t, pki)
	var host atomic.Value
	hs.serveUserInfo(func() string { return "@bob:" + host.Load().(string) }, &host)
	port := mustPort(t, hs.name)
	dns := &testDNS{
		a: map[string][]netip.Addr{"hs.test.": mustAddrs("127.0.0.1")},
		srv: map[string][]net.SRV{
			"_matrix-fed._tcp.srv.test.": {{Target: "hs.test.", Port: port, Priority: 10, Weight: 5}},
			"_matrix._tcp.legacy.test.":  {{Target: "hs.test.", Port: port, Priority: 10, Weight: 5}},
		},
	}
	c := newTestClient(t, pki, Options{AllowedNetworks: loopback, Resolver: dns.start(t)})
	for _, name := range []string{"srv.test", "legacy.test"} {
		got, err := c.UserInfo(context.Background(), name, testToken)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got != "@bob:"+name {
			t.Fatalf("%s: user ID %q", name, got)
		}
	}
}

// A name that resolves to loopback (or 0.0.0.0) is refused at dial time, wherever in the
// discovery chain the name comes from.
func TestUserInfoDNSRebinding(t *testing.T) {
	pki := newPKI(t)
	hs := newTestHS(t, pki)
	hs.serveUserInfo(func() string { return "@alice:evil.test" }, nil)
	dns := &testDNS{
		a: map[string][]netip.Addr{
			"evil.test.": mustAddrs("127.0.0.1"),
			"hs.test.":   mustAddrs("127.0.0.1"),
			"zero.test.": mustAddrs("0.0.0.0"),
		},
		srv: map[string][]net.SRV{
			"_matrix-fed._tcp.evil.test.": {{Target: "hs.test.", Port: mustPort(t, hs.name)}},
		},
	}
	resolver := dns.start(t)
	for _, tc := range []struct {
		serverName string
		allowed    []netip.Prefix
	}{
		{"evil.test", nil},
		{"hs.test:" + hs.port, nil},
		{"zero.test:" + hs.port, loopback},
	} {
		c := newTestClient(t, pki, Options{AllowedNetworks: tc.allowed, Resolver: resolver})
		_, err := c.UserInfo(context.Background(), tc.serverName, testToken)
		wantErr(t, err, ErrNotAllowed)
	}
	if n := hs.hits.Load(); n != 0 {
		t.Fatalf("homeserver reached %d times, want 0", n)
	}
}

func TestUserInfoForeignUser(t *testing.T) {
	pki := newPKI(t)
	hs := newTestHS(t, pki)
	var sub atomic.Value
	hs.serveUserInfo(func() string { return sub.Load().(string) }, nil)
	c := newTestClient(t, pki, Options{AllowedNetworks: loopback})
	for _, s := range []string{
		"@mallory:other.example",
		"@mallory:127.0.0.1",            // same host, other server name
		"@mallory:" + hs.name + ".evil", // suffix trick
		"@mallory:" + hs.name + ":1",    // not a valid server part
	} {
		sub.Store(s)
		_, err := c.UserInfo(context.Background(), hs.name, testToken)
		if err == nil {
			t.Fatalf("sub %q accepted", s)
		}
		if IsRetryable(err) {
			t.Fatalf("sub %q: retryable error %v", s, err)
		}
	}
	sub.Store("@mallory:other.example")
	_, err := c.UserInfo(context.Background(), hs.name, testToken)
	wantErr(t, err, ErrForeignUser)
}

func TestUserInfoStatusErrors(t *testing.T) {
	pki := newPKI(t)
	hs := newTestHS(t, pki)
	var status atomic.Int64
	hs.mux.HandleFunc("GET /_matrix/federation/v1/openid/userinfo", func(w http.ResponseWriter, r *http.Request) {
		if status.Load() == http.StatusFound {
			http.Redirect(w, r, "/_matrix/federation/v1/openid/elsewhere", http.StatusFound)
			return
		}
		writeJSON(w, int(status.Load()), map[string]string{"errcode": "M_UNKNOWN", "error": "x"})
	})
	var followed atomic.Int64
	hs.mux.HandleFunc("GET /_matrix/federation/v1/openid/elsewhere", func(w http.ResponseWriter, r *http.Request) {
		followed.Add(1)
	})
	c := newTestClient(t, pki, Options{AllowedNetworks: loopback})
	for code, kind := range map[int]error{
		401: ErrTokenRejected, 403: ErrTokenRejected, 404: ErrTokenRejected,
		400: ErrRejected, 429: ErrRateLimited, 500: ErrServerError, 503: ErrServerError,
		302: ErrBadResponse,
	} {
		status.Store(int64(code))
		_, err := c.UserInfo(context.Background(), hs.name, testToken)
		wantErr(t, err, kind)
		if strings.Contains(err.Error(), testToken) {
			t.Fatalf("error leaks the token: %v", err)
		}
	}
	if followed.Load() != 0 {
		t.Fatal("redirect followed")
	}
}

func TestUserInfoBadResponses(t *testing.T) {
	pki := newPKI(t)
	hs := newTestHS(t, pki)
	var body atomic.Value
	hs.mux.HandleFunc("GET /_matrix/federation/v1/openid/userinfo", func(w http.ResponseWriter, r *http.Request) {
		b := body.Load().(string)
		if strings.HasPrefix(b, "chunked:") {
			// No Content-Length: the limit must hold while streaming.
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"sub":"@alice:`+hs.name+`","pad":"`)
			for range 100 {
				_, _ = io.WriteString(w, strings.Repeat("x", 1024))
				w.(http.Flusher).Flush()
			}
			_, _ = io.WriteString(w, `"}`)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, b)
	})
	c := newTestClient(t, pki, Options{AllowedNetworks: loopback})
	for _, b := range []string{
		`not json`,
		`{"sub": 42}`,
		`{}`,
		`{"sub":"alice"}`,
		`{"sub":"@:` + hs.name + `"}`,
		`{"sub":"@alice:` + hs.name + `","pad":"` + strings.Repeat("x", 70<<10) + `"}`,
		`chunked:`,
	} {
		body.Store(b)
		_, err := c.UserInfo(context.Background(), hs.name, testToken)
		if err == nil {
			t.Fatalf("body %.40q accepted", b)
		}
		wantErr(t, err, ErrBadResponse)
	}
}

func TestUserInfoTimeout(t *testing.T) {
	pki := newPKI(t)
	hs := newTestHS(t, pki)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	hs.mux.HandleFunc("GET /_matrix/federation/v1/openid/userinfo", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	})
	c := newTestClient(t, pki, Options{AllowedNetworks: loopback, Timeout: 300 * time.Millisecond})
	start := time.Now()
	_, err := c.UserInfo(context.Background(), hs.name, testToken)
	elapsed := time.Since(start)
	wantErr(t, err, ErrTimeout)
	if !IsRetryable(err) {
		t.Error("timeout is not retryable")
	}
	if elapsed > 3*time.Second {
		t.Fatalf("took %v with a 300ms timeout", elapsed)
	}
}

func TestUserInfoUnreachable(t *testing.T) {
	pki := newPKI(t)
	c := newTestClient(t, pki, Options{AllowedNetworks: loopback})
	_, err := c.UserInfo(context.Background(), closedAddr(t), testToken)
	wantErr(t, err, ErrUnreachable)
	if strings.Contains(err.Error(), testToken) {
		t.Fatalf("error leaks the token: %v", err)
	}

	// A certificate not signed by a trusted CA is a failed connection, never a success.
	untrusted := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"sub": "@alice:" + r.Host})
	}))
	untrusted.Config.ErrorLog = log.New(io.Discard, "", 0) // the failed handshake is expected
	untrusted.StartTLS()
	t.Cleanup(untrusted.Close)
	_, err = c.UserInfo(context.Background(), untrusted.Listener.Addr().String(), testToken)
	wantErr(t, err, ErrUnreachable)
}

func TestUserInfoCallerCancel(t *testing.T) {
	pki := newPKI(t)
	hs := newTestHS(t, pki)
	hs.serveUserInfo(func() string { return "@alice:" + hs.name }, nil)
	c := newTestClient(t, pki, Options{AllowedNetworks: loopback})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := c.UserInfo(ctx, hs.name, testToken)
	if err == nil || !strings.Contains(fmt.Sprint(err), "canceled") {
		t.Fatalf("err = %v, want a cancellation", err)
	}
}
