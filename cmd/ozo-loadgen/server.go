package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // PostgreSQL driver, for the benchmark's own schema
)

// server is an ozo-identity process the tool started, with its homeserver stand-in.
type server struct {
	url, adminToken string
	pid             int
	hs              *homeserver
	stop            func()
}

// startServer runs bin serve on a free loopback port with a configuration made for the
// benchmark: the stand-in is the only allowed homeserver, rate limits and directory sync are
// off, lookups take 10,000 addresses. On PostgreSQL it works in a schema of its own.
func startServer(ctx context.Context, bin, cpus, databaseURL string, stderr io.Writer) (*server, error) {
	dir, err := os.MkdirTemp("", "ozo-loadgen-")
	if err != nil {
		return nil, err
	}
	var cleanups []func()
	cleanup := func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}
	cleanups = append(cleanups, func() { os.RemoveAll(dir) })
	fail := func(err error) (*server, error) {
		cleanup()
		return nil, err
	}

	hs, err := startHomeserver(dir)
	if err != nil {
		return fail(err)
	}
	cleanups = append(cleanups, hs.close)
	if strings.HasPrefix(databaseURL, "postgres") {
		u, drop, err := freshSchema(ctx, databaseURL)
		if err != nil {
			return fail(err)
		}
		databaseURL = u
		cleanups = append(cleanups, drop)
	}
	addr, err := freePort()
	if err != nil {
		return fail(err)
	}
	token := randomHex(24)
	cfg := map[string]any{
		"listen": addr, "public_base_url": "http://" + addr, "data_dir": filepath.Join(dir, "data"),
		"log_level": "warn",
		"database":  map[string]any{"url": databaseURL},
		"lookup":    map[string]any{"max_batch": 10000},
		"admin":     map[string]any{"token": token},
		"homeservers": map[string]any{"allowed": []string{hs.name}, "allowed_networks": []string{"127.0.0.0/8"},
			"ca_file": hs.caFile},
		"rate_limits": map[string]any{"lookup_per_account": 0, "lookup_per_server": 0, "directory_per_account": 0, "per_client": 0},
		"directory":   map[string]any{"sync_interval": "0s"},
	}
	// JSON is YAML; the server reads it with its ordinary configuration loader.
	data, _ := json.MarshalIndent(cfg, "", "  ")
	cfgFile := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfgFile, data, 0o600); err != nil {
		return fail(err)
	}
	logFile, err := os.Create(filepath.Join(dir, "server.log"))
	if err != nil {
		return fail(err)
	}
	cmd := exec.Command(bin, "serve", "--config", cfgFile)
	if cpus != "" {
		// taskset execs the server in its own process, so the pid (and its memory) stay the server's.
		cmd = exec.Command("taskset", "-c", cpus, bin, "serve", "--config", cfgFile)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// OZO_* variables of the caller would override the benchmark's configuration.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "OZO_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fail(fmt.Errorf("start %s: %w", bin, err))
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	cleanups = append(cleanups, func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		logFile.Close()
	})
	s := &server{url: "http://" + addr, adminToken: token, pid: cmd.Process.Pid, hs: hs, stop: cleanup}
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(s.url + "/_matrix/identity/versions")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s, nil
			}
		}
		select {
		case <-exited:
			log, _ := os.ReadFile(filepath.Join(dir, "server.log"))
			return fail(fmt.Errorf("the server exited:\n%s", log))
		case <-ctx.Done():
			return fail(ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fail(fmt.Errorf("the server did not answer within 60 s"))
		}
	}
}

func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// freshSchema creates a schema of its own on the PostgreSQL server and returns a URL using it.
func freshSchema(ctx context.Context, databaseURL string) (string, func(), error) {
	admin, err := sql.Open("pgx", databaseURL)
	if err != nil {
		return "", nil, err
	}
	schema := "ozo_loadgen_" + randomHex(6)
	if _, err := admin.ExecContext(ctx, `CREATE SCHEMA `+schema); err != nil {
		admin.Close()
		return "", nil, fmt.Errorf("create schema: %w", err)
	}
	u, err := url.Parse(databaseURL)
	if err != nil {
		admin.Close()
		return "", nil, err
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String(), func() {
		admin.Exec(`DROP SCHEMA ` + schema + ` CASCADE`)
		admin.Close()
	}, nil
}

// homeserver answers OpenID userinfo for the tokens it issued, over TLS on loopback, like the
// homeserver of a user registering at an identity server.
type homeserver struct {
	name, caFile string
	srv          *http.Server
	mu           sync.Mutex
	tokens       map[string]string
}

func startHomeserver(dir string) (*homeserver, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	cert, certPEM, err := selfSigned()
	if err != nil {
		ln.Close()
		return nil, err
	}
	hs := &homeserver{name: ln.Addr().String(), caFile: filepath.Join(dir, "homeserver-ca.pem"), tokens: map[string]string{}}
	if err := os.WriteFile(hs.caFile, certPEM, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_matrix/federation/v1/openid/userinfo", func(w http.ResponseWriter, r *http.Request) {
		hs.mu.Lock()
		user, ok := hs.tokens[r.URL.Query().Get("access_token")]
		hs.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if !ok {
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"errcode":"M_UNKNOWN_TOKEN","error":"unknown token"}`)
			return
		}
		json.NewEncoder(w).Encode(map[string]string{"sub": user})
	})
	hs.srv = &http.Server{Handler: mux, TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 10 * time.Second}
	go hs.srv.ServeTLS(ln, "", "")
	return hs, nil
}

func (hs *homeserver) close() { hs.srv.Close() }

// issue returns an OpenID token for @localpart on the stand-in.
func (hs *homeserver) issue(localpart string) string {
	b := make([]byte, 18)
	rand.Read(b)
	token := base64.RawURLEncoding.EncodeToString(b)
	hs.mu.Lock()
	hs.tokens[token] = "@" + localpart + ":" + hs.name
	hs.mu.Unlock()
	return token
}

// selfSigned returns a certificate for 127.0.0.1 that is its own CA.
func selfSigned() (tls.Certificate, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: "ozo-loadgen homeserver"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true,
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	cert, err := tls.X509KeyPair(certPEM, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}))
	return cert, certPEM, err
}

// register obtains an identity-server access token the way a client does: an OpenID token
// from the homeserver, exchanged at account/register (which verifies it at the homeserver).
func register(ctx context.Context, client *http.Client, base string, hs *homeserver) (string, error) {
	body, _ := json.Marshal(map[string]any{"access_token": hs.issue("loadgen"), "token_type": "Bearer",
		"matrix_server_name": hs.name, "expires_in": 3600})
	t := &target{url: base, client: client}
	var out struct {
		Token string `json:"token"`
	}
	if err := t.post(ctx, "/_matrix/identity/v2/account/register", "", body, &out); err != nil {
		return "", fmt.Errorf("register: %w", err)
	}
	return out.Token, nil
}
