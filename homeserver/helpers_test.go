package homeserver

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	"maunium.net/go/mautrix/federation"

	"github.com/ozo-platform/ozo-identity/internal/pkitest"
)

var loopback = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}

// testPKI is a throwaway CA and one server certificate for every name the tests use.
type testPKI struct {
	server *tls.Config // for test servers
	client *tls.Config // trusts only the test CA
}

func newPKI(t *testing.T) *testPKI {
	t.Helper()
	ca := pkitest.NewCA(t)
	return &testPKI{
		server: ca.ServerTLSConfig(t, "localhost", "hs.test", "wk.test", "srv.test", "legacy.test", "evil.test", "zero.test",
			"127.0.0.1", "::1"),
		client: ca.ClientTLSConfig(),
	}
}

// testHS is a homeserver stand-in on loopback over TLS. Every request is counted.
type testHS struct {
	srv  *httptest.Server
	mux  *http.ServeMux
	name string // server name: 127.0.0.1:port
	port string
	key  *federation.SigningKey
	hits atomic.Int64
}

func newTestHS(t *testing.T, pki *testPKI) *testHS {
	t.Helper()
	hs := &testHS{mux: http.NewServeMux(), key: federation.GenerateSigningKey()}
	hs.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hs.hits.Add(1)
		hs.mux.ServeHTTP(w, r)
	}))
	hs.srv.TLS = pki.server.Clone()
	hs.srv.StartTLS()
	t.Cleanup(hs.srv.Close)
	hs.name = hs.srv.Listener.Addr().String()
	_, hs.port, _ = net.SplitHostPort(hs.name)
	return hs
}

// serveKeys publishes hs.key for serverName at /_matrix/key/v2/server and counts fetches.
func (hs *testHS) serveKeys(serverName string, fetches *atomic.Int64) {
	hs.mux.HandleFunc("GET /_matrix/key/v2/server", func(w http.ResponseWriter, r *http.Request) {
		if fetches != nil {
			fetches.Add(1)
		}
		writeJSON(w, http.StatusOK, hs.key.GenerateKeyResponse(serverName, nil))
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// newTestClient builds a Client trusting the test CA, with a short default timeout.
func newTestClient(t *testing.T, pki *testPKI, opts Options) *Client {
	t.Helper()
	if opts.TLSConfig == nil {
		opts.TLSConfig = pki.client
	}
	if opts.Timeout == 0 {
		opts.Timeout = 5 * time.Second
	}
	return New(opts, nil)
}

// testDNS is an authoritative DNS server on loopback for the names the tests invent.
type testDNS struct {
	a   map[string][]netip.Addr // "hs.test." → addresses
	srv map[string][]net.SRV    // "_matrix-fed._tcp.srv.test." → records (Target absolute)
}

// start serves d on a loopback UDP port and returns a resolver that asks only it.
func (d *testDNS) start(t *testing.T) *net.Resolver {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return // closed
			}
			if resp := d.answer(buf[:n]); resp != nil {
				_, _ = pc.WriteTo(resp, from)
			}
		}
	}()
	addr := pc.LocalAddr().String()
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, "udp", addr)
		},
	}
}

func (d *testDNS) answer(query []byte) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(query)
	if err != nil {
		return nil
	}
	q, err := p.Question()
	if err != nil {
		return nil
	}
	name := strings.ToLower(q.Name.String())
	addrs, hasA := d.a[name]
	srvs, hasSRV := d.srv[name]
	rcode := dnsmessage.RCodeSuccess
	if !hasA && !hasSRV {
		rcode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{
		ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired, RCode: rcode,
	})
	_ = b.StartQuestions()
	_ = b.Question(q)
	_ = b.StartAnswers()
	rh := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 60}
	switch q.Type {
	case dnsmessage.TypeA:
		for _, a := range addrs {
			if a.Is4() {
				_ = b.AResource(rh, dnsmessage.AResource{A: a.As4()})
			}
		}
	case dnsmessage.TypeAAAA:
		for _, a := range addrs {
			if a.Is6() {
				_ = b.AAAAResource(rh, dnsmessage.AAAAResource{AAAA: a.As16()})
			}
		}
	case dnsmessage.TypeSRV:
		for _, s := range srvs {
			_ = b.SRVResource(rh, dnsmessage.SRVResource{
				Priority: s.Priority, Weight: s.Weight, Port: s.Port, Target: dnsmessage.MustNewName(s.Target),
			})
		}
	}
	msg, err := b.Finish()
	if err != nil {
		return nil
	}
	return msg
}

func mustAddrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

func mustPort(t *testing.T, s string) uint16 {
	t.Helper()
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		t.Fatal(err)
	}
	return ap.Port()
}

// closedAddr returns a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return addr
}

func wantErr(t *testing.T, err error, kinds ...error) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %v", kinds)
	}
	for _, k := range kinds {
		if !errors.Is(err, k) {
			t.Fatalf("error %q is not %q", err, k)
		}
	}
}
