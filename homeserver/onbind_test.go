package homeserver

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

const onbindBody = `{"medium":"email","address":"alice@example.nl","mxid":"@alice:hs.test","invites":[]}`

func TestOnBindDelivers(t *testing.T) {
	pki := newPKI(t)
	hs := newTestHS(t, pki)
	var got atomic.Value
	hs.mux.HandleFunc("POST /_matrix/federation/v1/3pid/onbind", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got.Store(struct {
			body, ctype, auth string
		}{string(b), r.Header.Get("Content-Type"), r.Header.Get("Authorization")})
		// A large success body must not turn delivery into a failure.
		_, _ = io.WriteString(w, strings.Repeat(" ", 200<<10))
	})
	c := newTestClient(t, pki, Options{AllowedNetworks: loopback})
	if err := c.OnBind(context.Background(), hs.name, []byte(onbindBody)); err != nil {
		t.Fatal(err)
	}
	req := got.Load().(struct{ body, ctype, auth string })
	var want, have any
	_ = json.Unmarshal([]byte(onbindBody), &want)
	if err := json.Unmarshal([]byte(req.body), &have); err != nil || !reflect.DeepEqual(want, have) {
		t.Fatalf("homeserver got body %q (%v)", req.body, err)
	}
	if req.ctype != "application/json" {
		t.Errorf("Content-Type %q", req.ctype)
	}
	if req.auth != "" {
		t.Errorf("onbind carried Authorization %q", req.auth)
	}
}

func TestOnBindFailures(t *testing.T) {
	pki := newPKI(t)
	hs := newTestHS(t, pki)
	var status atomic.Int64
	hs.mux.HandleFunc("POST /_matrix/federation/v1/3pid/onbind", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, int(status.Load()), map[string]string{"errcode": "M_UNKNOWN", "error": strings.Repeat("e", 100<<10)})
	})
	c := newTestClient(t, pki, Options{AllowedNetworks: loopback})
	for code, retry := range map[int]bool{500: true, 502: true, 503: true, 429: true, 400: false, 403: false, 404: false, 302: false} {
		status.Store(int64(code))
		err := c.OnBind(context.Background(), hs.name, []byte(onbindBody))
		if err == nil {
			t.Fatalf("HTTP %d: no error", code)
		}
		if IsRetryable(err) != retry {
			t.Errorf("HTTP %d: retryable = %v, want %v (%v)", code, !retry, retry, err)
		}
	}

	// Network failure: retry.
	err := c.OnBind(context.Background(), closedAddr(t), []byte(onbindBody))
	wantErr(t, err, ErrUnreachable)
	if !IsRetryable(err) {
		t.Error("connection refused is not retryable")
	}

	// Bad input and SSRF refusal: permanent, and nothing is sent.
	before := hs.hits.Load()
	err = c.OnBind(context.Background(), hs.name, []byte(`{"medium":`))
	wantErr(t, err, ErrInvalidBody)
	if IsRetryable(err) {
		t.Error("invalid body is retryable")
	}
	err = newTestClient(t, pki, Options{}).OnBind(context.Background(), hs.name, []byte(onbindBody))
	wantErr(t, err, ErrNotAllowed)
	if IsRetryable(err) {
		t.Error("SSRF refusal is retryable")
	}
	err = c.OnBind(context.Background(), "not a server", []byte(onbindBody))
	wantErr(t, err, ErrInvalidServerName)
	if hs.hits.Load() != before {
		t.Fatal("a refused onbind reached the homeserver")
	}
}

func TestOnBindTimeout(t *testing.T) {
	pki := newPKI(t)
	hs := newTestHS(t, pki)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	hs.mux.HandleFunc("POST /_matrix/federation/v1/3pid/onbind", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	})
	c := newTestClient(t, pki, Options{AllowedNetworks: loopback, Timeout: 300 * time.Millisecond})
	start := time.Now()
	err := c.OnBind(context.Background(), hs.name, []byte(onbindBody))
	wantErr(t, err, ErrTimeout)
	if !IsRetryable(err) {
		t.Error("timeout is not retryable")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("took %v with a 300ms timeout", d)
	}
}
