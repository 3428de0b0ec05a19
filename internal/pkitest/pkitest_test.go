package pkitest

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func get(t *testing.T, client *tls.Config, url string) error {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: client}}
	defer c.CloseIdleConnections()
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if string(body) != "ok" {
		t.Fatalf("body %q", body)
	}
	return nil
}

func TestServerAndClientConfigs(t *testing.T) {
	ca := NewCA(t)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }))
	srv.TLS = ca.ServerTLSConfig(t)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())

	for _, host := range []string{"127.0.0.1", "localhost"} {
		if err := get(t, ca.ClientTLSConfig(), "https://"+net.JoinHostPort(host, port)); err != nil {
			t.Errorf("trusting the CA, %s: %v", host, err)
		}
	}
	// Another CA's client, or the system roots, must refuse the certificate.
	for name, cfg := range map[string]*tls.Config{"other CA": NewCA(t).ClientTLSConfig(), "system roots": {}} {
		err := get(t, cfg, "https://127.0.0.1:"+port)
		if err == nil || !strings.Contains(err.Error(), "certificate") {
			t.Errorf("%s: err = %v, want a certificate error", name, err)
		}
	}
}

func TestIssueNamesOnlyItsHosts(t *testing.T) {
	ca := NewCA(t)
	cert := ca.Issue(t, "hs.test", "192.0.2.1")
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	opts := x509.VerifyOptions{Roots: ca.Pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	for _, name := range []string{"hs.test", "192.0.2.1"} {
		opts.DNSName = name
		if _, err := leaf.Verify(opts); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	for _, name := range []string{"localhost", "127.0.0.1", "evil.test", "x.hs.test"} {
		opts.DNSName = name
		if _, err := leaf.Verify(opts); err == nil {
			t.Errorf("certificate for hs.test verifies for %s", name)
		}
	}
	if leaf.IsCA {
		t.Error("leaf is a CA")
	}
}

func TestFilesOnDisk(t *testing.T) {
	ca := NewCA(t)
	data, err := os.ReadFile(ca.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	block, rest := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" || len(strings.TrimSpace(string(rest))) != 0 {
		t.Fatalf("CertFile is not one PEM certificate:\n%s", data)
	}
	if !ca.Cert.Equal(mustParse(t, block.Bytes)) {
		t.Fatal("CertFile does not hold Cert")
	}
	if entries, err := os.ReadDir(filepath.Dir(ca.CertFile)); err != nil || len(entries) != 1 {
		t.Fatalf("CA directory holds %d entries (%v), want only the certificate", len(entries), err)
	}

	certFile, keyFile := ca.WriteLeaf(t, t.TempDir(), "dendrite.test")
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mustParse(t, pair.Certificate[0]).Verify(x509.VerifyOptions{Roots: ca.Pool, DNSName: "dendrite.test"}); err != nil {
		t.Fatal(err)
	}
}

func mustParse(t *testing.T, der []byte) *x509.Certificate {
	t.Helper()
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
