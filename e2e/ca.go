package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// CA is a throw-away certificate authority for one test. Dendrite processes
// trust it (through SSL_CERT_FILE), so an identity server started with a
// certificate from Issue is reachable over real, verified HTTPS.
type CA struct {
	Cert *x509.Certificate
	// CertFile is a PEM bundle holding only Cert.
	CertFile string
	// Pool holds only Cert, for Go clients (e.g. an identity server calling
	// a homeserver's federation API).
	Pool *x509.CertPool

	key *ecdsa.PrivateKey
}

// NewCA creates a CA whose files live in a directory removed with the test.
func NewCA(t testing.TB) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("e2e: generate CA key: %v", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(t),
		Subject:               pkix.Name{CommonName: "ozo-identity e2e test CA", Organization: []string{"ozo-identity tests"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("e2e: create CA certificate: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("e2e: parse CA certificate: %v", err)
	}
	// A directory of its own, so it can also serve as SSL_CERT_DIR holding only this CA.
	dir := filepath.Join(t.TempDir(), "ca")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatalf("e2e: %v", err)
	}
	certFile := filepath.Join(dir, "ca.pem")
	writePEM(t, certFile, "CERTIFICATE", der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &CA{Cert: cert, CertFile: certFile, Pool: pool, key: key}
}

// Issue returns a server certificate for hosts (DNS names or IP literals),
// by default localhost, 127.0.0.1 and ::1.
func (ca *CA) Issue(t testing.TB, hosts ...string) tls.Certificate {
	t.Helper()
	certPEM, keyPEM := ca.issuePEM(t, hosts)
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatalf("e2e: load issued key pair: %v", err)
	}
	return cert
}

// ServerTLSConfig is a TLS configuration for a loopback test server (for
// example httptest.Server.TLS) with a certificate from this CA.
func (ca *CA) ServerTLSConfig(t testing.TB) *tls.Config {
	t.Helper()
	return &tls.Config{Certificates: []tls.Certificate{ca.Issue(t)}, MinVersion: tls.VersionTLS12}
}

// ClientTLSConfig trusts only this CA.
func (ca *CA) ClientTLSConfig() *tls.Config {
	return &tls.Config{RootCAs: ca.Pool, MinVersion: tls.VersionTLS12}
}

// writeLeaf writes a loopback server certificate and its key into dir.
func (ca *CA) writeLeaf(t testing.TB, dir string) (certFile, keyFile string) {
	t.Helper()
	certPEM, keyPEM := ca.issuePEM(t, nil)
	certFile = filepath.Join(dir, "tls.crt")
	keyFile = filepath.Join(dir, "tls.key")
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		t.Fatalf("e2e: write certificate: %v", err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatalf("e2e: write key: %v", err)
	}
	return certFile, keyFile
}

func (ca *CA) issuePEM(t testing.TB, hosts []string) (certPEM, keyPEM []byte) {
	t.Helper()
	if len(hosts) == 0 {
		hosts = []string{"localhost", "127.0.0.1", "::1"}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("e2e: generate leaf key: %v", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(t),
		Subject:      pkix.Name{CommonName: hosts[0]},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatalf("e2e: create leaf certificate: %v", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatalf("e2e: marshal leaf key: %v", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
}

func randomSerial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatalf("e2e: serial number: %v", err)
	}
	return n
}

func writePEM(t testing.TB, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatalf("e2e: %v", fmt.Errorf("write %s: %w", path, err))
	}
}
