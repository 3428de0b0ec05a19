package homeserver

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/ozo-platform/ozo-identity/internal/httpguard"
)

// TestHTTPClientGuard checks the guard of internal/httpguard against a homeserver stand-in.
func TestHTTPClientGuard(t *testing.T) {
	pki := newPKI(t)
	hs := newTestHS(t, pki)
	hs.mux.HandleFunc("GET /ok", func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") })
	hs.mux.HandleFunc("GET /big", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, strings.Repeat("x", 2000))
	})
	var redirected atomic.Int64
	hs.mux.HandleFunc("GET /redirect", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/target", http.StatusFound)
	})
	hs.mux.HandleFunc("GET /target", func(w http.ResponseWriter, r *http.Request) { redirected.Add(1) })
	// A proxy from the environment must not be used: it would bypass the dial check.
	t.Setenv("HTTPS_PROXY", "http://"+closedAddr(t))

	get := func(c *http.Client, path string) (*http.Response, error) {
		req, err := http.NewRequestWithContext(context.Background(), http.MethodGet, "https://"+hs.name+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		return c.Do(req)
	}

	refused := httpguard.New(httpguard.Options{TLSConfig: pki.client})
	if _, err := get(refused, "/ok"); !errors.Is(err, ErrNotAllowed) {
		t.Fatalf("loopback without allowed networks: err = %v, want ErrNotAllowed", err)
	}
	if n := hs.hits.Load(); n != 0 {
		t.Fatalf("refused client reached the server %d times", n)
	}

	c := httpguard.New(httpguard.Options{TLSConfig: pki.client, AllowedNetworks: loopback, MaxResponseBytes: 1000})
	resp, err := get(c, "/ok")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if err != nil || string(body) != "ok" {
		t.Fatalf("body %q, err %v", body, err)
	}

	resp, err = get(c, "/big")
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if !errors.Is(err, ErrResponseTooLarge) {
		t.Fatalf("oversize body: err = %v, want ErrResponseTooLarge", err)
	}

	if _, err := get(c, "/redirect"); err == nil {
		t.Fatal("redirect followed")
	}
	if n := redirected.Load(); n != 0 {
		t.Fatalf("redirect target reached %d times", n)
	}
}
