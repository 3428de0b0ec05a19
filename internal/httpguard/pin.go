package httpguard

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
)

// ErrPinMismatch: a pinned server presented another certificate than the pinned one.
var ErrPinMismatch = errors.New("certificate does not match its pin")

// DialTLS dials, then does the TLS handshake itself so that a pinned destination is checked
// against its pin alone (self-signed, no subjectAltName) and every other one as usual.
func DialTLS(base *tls.Config, pins map[string][32]byte, dial func(context.Context, string, string) (net.Conn, error)) func(context.Context, string, string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, fmt.Errorf("dial %s: %w", addr, err)
		}
		conn, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		cfg := &tls.Config{}
		if base != nil {
			cfg = base.Clone()
		}
		cfg.ServerName = host
		if pin, ok := pinFor(pins, addr); ok {
			// Verification is replaced, not skipped: the handshake fails unless the leaf is the
			// pinned certificate or carries the pinned public key.
			cfg.InsecureSkipVerify = true
			cfg.VerifyConnection = func(cs tls.ConnectionState) error {
				if len(cs.PeerCertificates) == 0 {
					return fmt.Errorf("%s: %w", addr, ErrPinMismatch)
				}
				leaf := cs.PeerCertificates[0]
				certSum, spkiSum := sha256.Sum256(leaf.Raw), sha256.Sum256(leaf.RawSubjectPublicKeyInfo)
				if !bytes.Equal(certSum[:], pin[:]) && !bytes.Equal(spkiSum[:], pin[:]) {
					return fmt.Errorf("%s: %w", addr, ErrPinMismatch)
				}
				return nil
			}
		}
		tc := tls.Client(conn, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			return nil, err
		}
		return tc, nil
	}
}

// pinFor finds the pin of a destination "host:port": pinned under host:port, or under the bare
// host (a server name without a port).
func pinFor(pins map[string][32]byte, addr string) ([32]byte, bool) {
	if pin, ok := pins[addr]; ok {
		return pin, true
	}
	host, _, _ := net.SplitHostPort(addr)
	pin, ok := pins[host]
	return pin, ok
}
