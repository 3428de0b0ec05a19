package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/email/smtptest"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startServe runs "ozo-identity serve" as main would, with env as its environment, until the test ends.
func startServe(t *testing.T, env []string) string {
	t.Helper()
	addr := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	logs := &syncWriter{w: &bytes.Buffer{}}
	go func() {
		done <- run(ctx, []string{"serve", "--listen", addr, "--data-dir", t.TempDir()}, env, io.Discard, logs)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve returned %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("serve did not stop")
		}
	})
	base := "http://" + addr
	for i := 0; i < 100; i++ {
		resp, err := http.Get(base + "/_matrix/identity/v2")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || strings.TrimSpace(string(body)) != "{}" {
				t.Fatalf("GET /_matrix/identity/v2: %d %s", resp.StatusCode, body)
			}
			return base
		}
		select {
		case err := <-done:
			t.Fatalf("serve exited: %v\n%s", err, logs.String())
		case <-time.After(100 * time.Millisecond):
		}
	}
	t.Fatalf("serve did not answer\n%s", logs.String())
	return ""
}

// syncWriter lets serve's goroutines log while the test reads what was logged.
type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func (s *syncWriter) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.String()
}

// The README promise: serve with no configuration starts on SQLite and answers {}.
func TestServeWithoutConfig(t *testing.T) {
	startServe(t, nil)
}

func TestUnknownCommandAndBadEnvFail(t *testing.T) {
	if err := run(context.Background(), []string{"frobnicate"}, nil, io.Discard, io.Discard); err == nil {
		t.Error("unknown command accepted")
	}
	if err := run(context.Background(), []string{"serve"}, []string{"OZO_LISTN=:1"}, io.Discard, io.Discard); err == nil {
		t.Error("misspelt variable accepted")
	}
	if err := run(context.Background(), []string{"migrate", "--data-dir", t.TempDir()}, nil, io.Discard, io.Discard); err != nil {
		t.Errorf("migrate: %v", err)
	}
}

// chromium returns the headless browser, failing in CI when it is missing.
func chromium(t *testing.T) string {
	for _, p := range []string{"/usr/bin/chromium", "/usr/bin/chromium-browser"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("chromium is required in CI (apt-get install chromium)")
	}
	t.Skip("chromium not installed")
	return ""
}

// renderedDOM loads url in headless Chromium, as a Dutch browser, and returns the DOM it rendered.
func renderedDOM(t *testing.T, url string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, chromium(t), "--headless", "--no-sandbox", "--disable-gpu",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
		"--disable-quic", "--accept-lang=nl-NL,nl", "--user-data-dir="+t.TempDir(), "--dump-dom", url)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium: %v\n%s", err, stderr.String())
	}
	return out.String()
}

// A person clicks the link in the validation mail: the page, as Chromium renders it, confirms
// the address; a tampered link shows why it failed. Configured through OZO_* variables only.
func TestValidationPageInBrowser(t *testing.T) {
	chromium(t)
	mail := smtptest.Start(t)
	base := startServe(t, []string{
		"OZO_EMAIL_SMTP_HOST=" + mail.Host, fmt.Sprintf("OZO_EMAIL_SMTP_PORT=%d", mail.Port),
		"OZO_V1_ENABLED=true", "OZO_V1_NETWORKS=127.0.0.0/8",
	})
	form := url.Values{"client_secret": {"browserSecret1"}, "email": {"Mantelzorger@Example.nl"}, "send_attempt": {"1"}}
	resp, err := http.PostForm(base+"/_matrix/identity/api/v1/validate/email/requestToken", form)
	if err != nil {
		t.Fatal(err)
	}
	var got struct{ SID string }
	json.NewDecoder(resp.Body).Decode(&got)
	resp.Body.Close()
	if resp.StatusCode != 200 || got.SID == "" {
		t.Fatalf("requestToken: %d", resp.StatusCode)
	}
	msg := mail.Wait(t, "mantelzorger@example.nl", 1, 10*time.Second)
	link := msg.ValidationLink()
	if link == "" {
		t.Fatalf("no link in mail:\n%s", msg.Raw)
	}
	// The mail links to public_base_url; this test serves on another port.
	u, _ := url.Parse(link)
	target := base + u.Path + "?" + u.RawQuery

	bad := strings.Replace(target, "token=", "token=x", 1)
	if dom := renderedDOM(t, bad); !strings.Contains(dom, "Bevestigen mislukt") || !strings.Contains(dom, "klopt niet") {
		t.Fatalf("tampered link page:\n%s", dom)
	}
	if dom := renderedDOM(t, target); !strings.Contains(dom, "E-mailadres bevestigd") {
		t.Fatalf("validation page:\n%s", dom)
	}
	resp, err = http.Get(base + "/_matrix/identity/api/v1/3pid/getValidated3pid?sid=" + got.SID + "&client_secret=browserSecret1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"address":"mantelzorger@example.nl"`) {
		t.Fatalf("getValidated3pid after the click: %d %s", resp.StatusCode, body)
	}
}
