// Package e2e runs real Dendrite homeservers on loopback for end-to-end tests:
// two (or more) federating instances whose identity-server traffic goes to a
// server the test controls, typically ozo-identity itself (StartIdentityServer,
// on HTTPS, mailing to an in-process SMTP server).
//
// Build the homeserver once with scripts/build-dendrite.sh; tests find it at
// <repo root>/.cache/bin/dendrite or at $OZO_DENDRITE_BIN. Without it tests
// skip, except when $CI is set, where they fail.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/ozo-platform/ozo-identity/internal/pkitest"
)

const modulePath = "github.com/ozo-platform/ozo-identity"

// Options configures StartFederation. The zero value starts two homeservers
// that trust no identity server.
type Options struct {
	// Homeservers is how many Dendrite instances to start; 0 means 2.
	Homeservers int
	// IdentityServers are written to global.trusted_third_party_id_servers as
	// given: "host:port" with no scheme, exactly what clients pass as id_server.
	IdentityServers []string
	// CA signs the homeservers' TLS certificates and is the only CA their
	// processes trust. Nil means a new one; pass one to have it before the
	// identity server starts.
	CA *pkitest.CA
	// StartTimeout bounds the wait for all homeservers to serve; 0 means 30s.
	StartTimeout time.Duration
	// AppService, when set, is registered on one homeserver (app_service_api.config_files):
	// the OZO homeserver, where OZO accounts get their Matrix users.
	AppService *AppService
}

// AppService is an application-service registration owning the users whose localparts start
// with UserPrefix, exclusively. It pushes no events (no URL).
type AppService struct {
	// Homeserver is the index in Federation.Homeservers it is registered on.
	Homeserver      int
	ID              string
	ASToken         string
	HSToken         string
	SenderLocalpart string
	UserPrefix      string
}

// Federation is a set of running homeservers that federate with each other.
type Federation struct {
	CA          *pkitest.CA
	Homeservers []*Homeserver
}

// Homeserver is one running Dendrite process.
type Homeserver struct {
	// ServerName is "localhost:<federation port>", the domain of its user IDs.
	ServerName string
	// ClientURL is the plain-HTTP client-server API base, http://127.0.0.1:<port>.
	ClientURL string
	// FederationURL is the HTTPS base of the federation API (and of the client
	// API too), https://localhost:<port>, served with a certificate from the CA.
	FederationURL string
	// Dir holds its configuration, databases and LogFile.
	Dir     string
	LogFile string

	cmd    *exec.Cmd
	exited chan struct{} // closed once the process has exited
	errMu  sync.Mutex
	err    error // exit status, valid once exited is closed
}

// StartFederation starts the homeservers, waits until each serves both its
// client and federation APIs, and stops them when the test ends. On a test
// failure it prints the end of each homeserver's log.
func StartFederation(t testing.TB, opts Options) *Federation {
	t.Helper()
	bin := DendriteBinary(t)
	n := opts.Homeservers
	if n == 0 {
		n = 2
	}
	ca := opts.CA
	if ca == nil {
		ca = pkitest.NewCA(t)
	}
	timeout := opts.StartTimeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}

	ports := freePorts(t, 2*n)
	base := t.TempDir()
	fed := &Federation{CA: ca}
	for i := range n {
		hs := &Homeserver{
			ServerName:    fmt.Sprintf("localhost:%d", ports[2*i+1]),
			ClientURL:     fmt.Sprintf("http://127.0.0.1:%d", ports[2*i]),
			FederationURL: fmt.Sprintf("https://localhost:%d", ports[2*i+1]),
			Dir:           filepath.Join(base, fmt.Sprintf("hs%d", i+1)),
		}
		hs.LogFile = filepath.Join(hs.Dir, "dendrite.log")
		if err := os.Mkdir(hs.Dir, 0o700); err != nil {
			t.Fatalf("e2e: %v", err)
		}
		var as *AppService
		if opts.AppService != nil && opts.AppService.Homeserver == i {
			as = opts.AppService
		}
		hs.start(t, bin, ca, ports[2*i], ports[2*i+1], opts.IdentityServers, as)
		fed.Homeservers = append(fed.Homeservers, hs)
	}

	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, hs := range fed.Homeservers {
		wg.Go(func() { errs[i] = hs.waitReady(ctx, ca) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("e2e: homeservers did not start (limit %s): %v", timeout, err)
	}
	return fed
}

// DendriteBinary returns the path of the Dendrite binary: $OZO_DENDRITE_BIN,
// or <repo root>/.cache/bin/dendrite. When it is missing the test is skipped,
// or fails when $CI is set, since CI must run these tests.
func DendriteBinary(t testing.TB) string {
	t.Helper()
	bin := os.Getenv("OZO_DENDRITE_BIN")
	if bin == "" {
		root, err := repoRoot()
		if err != nil {
			t.Fatalf("e2e: %v", err)
		}
		bin = filepath.Join(root, ".cache", "bin", "dendrite")
	}
	fi, err := os.Stat(bin)
	if err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
		return bin
	}
	msg := fmt.Sprintf("e2e: no Dendrite binary at %s; build it with `bash scripts/build-dendrite.sh` (or set OZO_DENDRITE_BIN)", bin)
	if os.Getenv("CI") != "" {
		t.Fatal(msg + "; CI is set, so this is a failure, not a skip")
	}
	t.Skip(msg)
	return ""
}

// repoRoot walks up from the working directory (a package directory under go
// test) to the main module's go.mod, past nested modules such as tools/dendrite.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find repository root: %w", err)
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && modFileDeclares(data, modulePath) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("find repository root: no go.mod for %s above the working directory", modulePath)
		}
		dir = parent
	}
}

func modFileDeclares(data []byte, module string) bool {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == "module" && strings.Trim(f[1], `"`) == module {
			return true
		}
	}
	return false
}

// freePorts reserves n distinct loopback ports. They are released before the
// homeservers bind them, so another process could in theory take one first;
// startup then fails loudly rather than talking to a stranger.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("e2e: reserve a port: %v", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

func (hs *Homeserver) start(t testing.TB, bin string, ca *pkitest.CA, clientPort, fedPort int, idServers []string, as *AppService) {
	t.Helper()
	keyFile := filepath.Join(hs.Dir, "matrix_key.pem")
	writeMatrixKey(t, keyFile)
	certFile, tlsKeyFile := ca.WriteLeaf(t, hs.Dir)
	cfgFile := filepath.Join(hs.Dir, "dendrite.yaml")
	dc := dendriteConfig(hs.ServerName, hs.Dir, keyFile, idServers)
	if as != nil {
		dc["app_service_api"] = map[string]any{"config_files": []string{writeAppService(t, hs.Dir, hs.ServerName, as)}}
	}
	cfg, err := yaml.Marshal(dc)
	if err != nil {
		t.Fatalf("e2e: marshal dendrite config: %v", err)
	}
	if err := os.WriteFile(cfgFile, cfg, 0o600); err != nil {
		t.Fatalf("e2e: write dendrite config: %v", err)
	}
	logf, err := os.Create(hs.LogFile)
	if err != nil {
		t.Fatalf("e2e: create log file: %v", err)
	}

	cmd := exec.Command(bin,
		"-config", cfgFile,
		"-really-enable-open-registration",
		"-http-bind-address", fmt.Sprintf("127.0.0.1:%d", clientPort),
		"-https-bind-address", fmt.Sprintf("127.0.0.1:%d", fedPort),
		"-tls-cert", certFile,
		"-tls-key", tlsKeyFile,
	)
	cmd.Dir = hs.Dir
	cmd.Stdout = logf
	cmd.Stderr = logf
	// Dendrite calls identity servers with Go's default TLS roots: point them at
	// the test CA only, so a trusted identity server must hold one of its certificates.
	cmd.Env = append(filteredEnv("SSL_CERT_FILE", "SSL_CERT_DIR", "PPROFLISTEN"),
		"SSL_CERT_FILE="+ca.CertFile, "SSL_CERT_DIR="+filepath.Dir(ca.CertFile))
	setDeathSignal(cmd)
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("e2e: start dendrite: %v", err)
	}
	hs.cmd = cmd
	hs.exited = make(chan struct{})
	go func() {
		err := cmd.Wait()
		logf.Close()
		hs.errMu.Lock()
		hs.err = err
		hs.errMu.Unlock()
		close(hs.exited)
	}()
	t.Cleanup(func() {
		hs.stop()
		if t.Failed() {
			t.Logf("e2e: log of %s (%s), last lines:\n%s", hs.ServerName, hs.LogFile, tail(hs.LogFile, 150))
		}
	})
}

// stop asks Dendrite to shut down and kills it if it takes too long.
func (hs *Homeserver) stop() {
	select {
	case <-hs.exited:
		return
	default:
	}
	_ = hs.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-hs.exited:
	case <-time.After(5 * time.Second):
		_ = hs.cmd.Process.Kill()
		<-hs.exited
	}
}

// Exited reports whether the process has ended, and how.
func (hs *Homeserver) Exited() (bool, error) {
	select {
	case <-hs.exited:
		hs.errMu.Lock()
		defer hs.errMu.Unlock()
		return true, hs.err
	default:
		return false, nil
	}
}

// waitReady polls the client API over HTTP and the federation key endpoint
// over verified HTTPS until both answer 200, the process dies, or ctx ends.
func (hs *Homeserver) waitReady(ctx context.Context, ca *pkitest.CA) error {
	client := &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{TLSClientConfig: ca.ClientTLSConfig(), DisableKeepAlives: true},
	}
	urls := []string{
		hs.ClientURL + "/_matrix/client/versions",
		hs.FederationURL + "/_matrix/key/v2/server",
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		last = nil
		for _, u := range urls {
			if err := get200(ctx, client, u); err != nil {
				last = err
				break
			}
		}
		if last == nil {
			return nil
		}
		select {
		case <-hs.exited:
			_, err := hs.Exited()
			return fmt.Errorf("%s exited during startup (%v); its log follows at cleanup", hs.ServerName, err)
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %w (last error: %v)", hs.ServerName, ctx.Err(), last)
		case <-tick.C:
		}
	}
}

func get200(ctx context.Context, client *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}

// dendriteConfig is a config version 2 document for one test homeserver:
// SQLite files in dir, federation limited to loopback, no notary servers,
// and no rate limits.
func dendriteConfig(serverName, dir, keyFile string, idServers []string) map[string]any {
	db := func(name string) map[string]any {
		return map[string]any{"connection_string": "file:" + filepath.Join(dir, name+".db")}
	}
	if idServers == nil {
		idServers = []string{}
	}
	return map[string]any{
		"version": 2,
		"global": map[string]any{
			"server_name":                    serverName,
			"private_key":                    keyFile,
			"key_validity_period":            "168h0m0s",
			"cache":                          map[string]any{"max_size_estimated": "64mb", "max_age": "1h"},
			"trusted_third_party_id_servers": idServers,
			"disable_federation":             false,
			"presence":                       map[string]any{"enable_inbound": false, "enable_outbound": false},
			"report_stats":                   map[string]any{"enabled": false},
			"server_notices":                 map[string]any{"enabled": false},
			"jetstream":                      map[string]any{"in_memory": true, "storage_path": dir, "topic_prefix": "Dendrite"},
			"metrics":                        map[string]any{"enabled": false},
			"dns_cache":                      map[string]any{"enabled": false},
		},
		"client_api": map[string]any{
			"registration_disabled": false,
			"guests_disabled":       true,
			"rate_limiting":         map[string]any{"enabled": false},
		},
		"federation_api": map[string]any{
			"database":         db("federationapi"),
			"send_max_retries": 16,
			// Validation on: Dendrite checks other homeservers' and (for requestToken and bind,
			// which go through its federation client) ozo-identity's certificates against the
			// test CA it is given through SSL_CERT_FILE.
			"disable_tls_validation": false,
			"key_perspectives":       []any{},
			"prefer_direct_fetch":    true,
			// Dendrite denies loopback by default; allow only loopback, so a
			// test homeserver never dials anything else.
			"deny_networks":  []string{},
			"allow_networks": []string{"127.0.0.0/8", "::1/128"},
		},
		"key_server":  map[string]any{"database": db("keyserver")},
		"media_api":   map[string]any{"database": db("mediaapi"), "base_path": filepath.Join(dir, "media")},
		"mscs":        map[string]any{"database": db("mscs"), "mscs": []string{}},
		"relay_api":   map[string]any{"database": db("relayapi")},
		"room_server": map[string]any{"database": db("roomserver")},
		"sync_api": map[string]any{
			"database": db("syncapi"),
			"search":   map[string]any{"enabled": false, "index_path": filepath.Join(dir, "searchindex")},
		},
		"user_api": map[string]any{
			"account_database": db("userapi"),
			"bcrypt_cost":      4, // the minimum: registration is on the test's critical path
		},
		"tracing": map[string]any{"enabled": false},
		"logging": []any{map[string]any{"type": "std", "level": "info"}},
	}
}

// writeAppService writes the registration file of as for serverName and returns its path.
func writeAppService(t testing.TB, dir, serverName string, as *AppService) string {
	t.Helper()
	reg := map[string]any{
		"id":               as.ID,
		"url":              "",
		"as_token":         as.ASToken,
		"hs_token":         as.HSToken,
		"sender_localpart": as.SenderLocalpart,
		"rate_limited":     false,
		"namespaces": map[string]any{
			"users": []any{map[string]any{"exclusive": true,
				"regex": "@" + regexp.QuoteMeta(as.UserPrefix) + ".*:" + regexp.QuoteMeta(serverName)}},
			"aliases": []any{},
			"rooms":   []any{},
		},
	}
	data, err := yaml.Marshal(reg)
	if err != nil {
		t.Fatalf("e2e: marshal appservice registration: %v", err)
	}
	path := filepath.Join(dir, "appservice-"+as.ID+".yaml")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatalf("e2e: write appservice registration: %v", err)
	}
	return path
}

// writeMatrixKey writes a signing key in Dendrite's format: a PEM block of type
// "MATRIX PRIVATE KEY" with a Key-ID header, holding the 32-byte ed25519 seed.
func writeMatrixKey(t testing.TB, path string) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatalf("e2e: generate signing key: %v", err)
	}
	block := &pem.Block{
		Type:    "MATRIX PRIVATE KEY",
		Headers: map[string]string{"Key-ID": "ed25519:e2e"},
		Bytes:   priv.Seed(),
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatalf("e2e: write signing key: %v", err)
	}
}

func filteredEnv(drop ...string) []string {
	var env []string
outer:
	for _, kv := range os.Environ() {
		for _, d := range drop {
			if strings.HasPrefix(kv, d+"=") {
				continue outer
			}
		}
		env = append(env, kv)
	}
	return env
}

// tail returns up to the last n lines of a file, for failure messages.
func tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{"… " + strconv.Itoa(len(lines)-n) + " earlier lines in the file"}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

// HTTPClient trusts only the test CA, for calls from a test (or an identity
// server under test) to a homeserver's federation API.
func (f *Federation) HTTPClient() *http.Client {
	return &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: f.CA.ClientTLSConfig()},
	}
}
