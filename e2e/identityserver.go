package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/app"
	"github.com/ozo-platform/ozo-identity/config"
	"github.com/ozo-platform/ozo-identity/email/smtptest"
	"github.com/ozo-platform/ozo-identity/internal/pkitest"
)

// IdentityServer is an in-process ozo-identity served over HTTPS with a
// certificate from the test CA, sending its mail to an in-process SMTP server.
type IdentityServer struct {
	// Name is "localhost:<port>": what homeservers and clients pass as
	// id_server, and the server name its signatures are made under.
	Name string
	// URL is https://localhost:<port>.
	URL        string
	App        *app.App
	AdminToken string
	Mail       *smtptest.Server
	LogFile    string

	ca *pkitest.CA
}

// ISOptions configures StartIdentityServer.
type ISOptions struct {
	// V1Networks are the networks allowed to call the v1 API (the
	// homeservers); nil means 127.0.0.0/8.
	V1Networks []string
	// DatabaseURL is database.url: a postgres:// URL or a SQLite file path;
	// empty means a SQLite file in a temporary directory.
	DatabaseURL string
	// Listener is where it serves; its port makes the name, localhost:<port>.
	// Nil means a new one on 127.0.0.1. A test passes its own when the
	// homeservers, which must trust that name, have to start first.
	Listener net.Listener
	// Directory, when set, is the directory section of the configuration
	// (LRZA, allowed networks, CA, sync interval); start from
	// config.Defaults().Directory. Nil means no directories.
	Directory *config.Directory
	// Terms are the policies users must accept; nil means none.
	Terms map[string]config.Policy
	// Configure, when set, changes the configuration last (before validation).
	Configure func(*config.Config)
}

// StartIdentityServer builds ozo-identity from its configuration, as the
// binary does, and serves it on a free loopback port until the test ends.
func StartIdentityServer(t testing.TB, ca *pkitest.CA, opts ISOptions) *IdentityServer {
	t.Helper()
	ln := opts.Listener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatalf("e2e: identity server listener: %v", err)
		}
	}
	port := ln.Addr().(*net.TCPAddr).Port
	dir := t.TempDir()
	is := &IdentityServer{
		Name:       fmt.Sprintf("localhost:%d", port),
		URL:        fmt.Sprintf("https://localhost:%d", port),
		AdminToken: randomHex(t, 24),
		Mail:       smtptest.Start(t),
		LogFile:    filepath.Join(dir, "ozo-identity.log"),
		ca:         ca,
	}
	v1 := opts.V1Networks
	if v1 == nil {
		v1 = []string{"127.0.0.0/8"}
	}
	cfg := config.Defaults()
	cfg.Listen = ln.Addr().String()
	cfg.DataDir = dir
	cfg.PublicBaseURL = is.URL
	cfg.ServerName = is.Name
	cfg.LogLevel = "debug"
	cfg.Database.URL = opts.DatabaseURL
	cfg.V1.Enabled = true
	cfg.V1.Networks = v1
	cfg.Homeservers.Allowed = []string{"*"}
	cfg.Homeservers.AllowedNetworks = []string{"127.0.0.0/8", "::1/128"}
	cfg.Homeservers.CAFile = ca.CertFile
	cfg.Admin.Token = is.AdminToken
	cfg.Email.SMTP = config.SMTP{Host: is.Mail.Host, Port: is.Mail.Port, Security: "none"}
	cfg.Email.From = "OZO e2e <noreply@ozo.example.org>"
	cfg.Invites.WebClientLocation = "https://chat.ozo.example.org"
	cfg.Terms.Policies = opts.Terms
	if opts.Directory != nil {
		cfg.Directory = *opts.Directory
	}
	if opts.Configure != nil {
		opts.Configure(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		ln.Close()
		t.Fatalf("e2e: identity server config: %v", err)
	}
	serverTLS := ca.ServerTLSConfig(t)

	logf, err := os.Create(is.LogFile)
	if err != nil {
		ln.Close()
		t.Fatalf("e2e: identity server log: %v", err)
	}
	logger := slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithCancel(context.Background())
	a, err := app.New(ctx, cfg, logger)
	if err != nil {
		cancel()
		ln.Close()
		logf.Close()
		t.Fatalf("e2e: build identity server: %v", err)
	}
	is.App = a
	served := make(chan error, 1)
	go func() { served <- a.Serve(ctx, ln, serverTLS) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-served:
			if err != nil && !errors.Is(err, http.ErrServerClosed) {
				t.Errorf("e2e: identity server: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Errorf("e2e: identity server did not shut down within 15s")
		}
		_ = a.Close()
		_ = logf.Close()
		if t.Failed() {
			t.Logf("e2e: log of identity server %s (%s), last lines:\n%s", is.Name, is.LogFile, tail(is.LogFile, 100))
		}
	})
	if err := get200(ctxTimeout(t, 10*time.Second), is.HTTPClient(nil), is.URL+"/_matrix/identity/v2"); err != nil {
		t.Fatalf("e2e: identity server not serving: %v", err)
	}
	return is
}

// HTTPClient trusts only the test CA and does not follow redirects. A
// non-nil localAddr is the source address of its connections, so a test can
// call from an address outside the v1 networks (e.g. 127.0.0.2).
func (is *IdentityServer) HTTPClient(localAddr net.IP) *http.Client {
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	if localAddr != nil {
		dialer.LocalAddr = &net.TCPAddr{IP: localAddr}
	}
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:   is.ca.ClientTLSConfig(),
			DialContext:       dialer.DialContext,
			DisableKeepAlives: true,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func randomHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("e2e: random: %v", err)
	}
	return hex.EncodeToString(b)
}
