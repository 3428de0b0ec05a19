// Package httpguard owns the SSRF-guarded HTTP client every outbound call uses (homeservers,
// mCSD directories, peer identity servers): public addresses only, checked at dial time, no
// proxies, no redirects, bounded time, headers and bodies, optional certificate pins.
package httpguard

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"syscall"
	"time"
)

const (
	// DefaultTimeout bounds one whole operation: resolution, connection and response.
	DefaultTimeout = 10 * time.Second
	// DefaultMaxResponseBytes caps every response body.
	DefaultMaxResponseBytes = 64 << 10
)

// ErrNotAllowed: the destination is not a public address nor in Options.AllowedNetworks.
var ErrNotAllowed = errors.New("destination not allowed")

// ErrResponseTooLarge is returned when reading a response body past the configured limit.
var ErrResponseTooLarge = errors.New("response body too large")

// errRedirect refuses redirects: a homeserver could otherwise bounce us to any URL.
var errRedirect = errors.New("redirects are not followed")

// nonGlobal lists special-purpose ranges (IANA IPv4/IPv6 special-purpose registries) that
// never host a public homeserver, on top of what netip's predicates already catch.
var nonGlobal = mustPrefixes(
	"0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
	"172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16",
	"198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
	"::/96", "::ffff:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48", "100::/64", "2001::/23",
	"2001:db8::/32", "2002::/16", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
)

func mustPrefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

// AddrAllowed reports whether an outbound connection to addr may be made: addr must be a
// global unicast address, or fall inside one of the allowed networks.
func AddrAllowed(addr netip.Addr, allowed []netip.Prefix) bool {
	addr = addr.WithZone("") // Prefix.Contains never matches zoned addresses
	unmapped := addr.Unmap()
	for _, p := range allowed {
		if p.Contains(addr) || p.Contains(unmapped) {
			return true
		}
	}
	if !unmapped.IsValid() || !unmapped.IsGlobalUnicast() || unmapped.IsPrivate() ||
		unmapped.IsLoopback() || unmapped.IsLinkLocalUnicast() || unmapped.IsMulticast() ||
		unmapped.IsUnspecified() {
		return false
	}
	for _, p := range nonGlobal {
		if p.Contains(unmapped) {
			return false
		}
	}
	return true
}

// dialControl checks the address the socket is about to connect to, after DNS resolution,
// so that a name re-resolving to an internal address (DNS rebinding) is still refused.
func dialControl(allowed []netip.Prefix) func(context.Context, string, string, syscall.RawConn) error {
	return func(_ context.Context, network, address string, _ syscall.RawConn) error {
		switch network {
		case "tcp4", "tcp6":
		default:
			return fmt.Errorf("%w: network %s", ErrNotAllowed, network)
		}
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return fmt.Errorf("%w: address %q", ErrNotAllowed, address)
		}
		if !AddrAllowed(ap.Addr(), allowed) {
			return fmt.Errorf("%w: %s is not a public address", ErrNotAllowed, ap.Addr())
		}
		return nil
	}
}

// Options configures a guarded client.
type Options struct {
	// AllowedNetworks are outbound targets allowed despite being loopback, private or
	// otherwise non-global (tests, servers on an internal network).
	AllowedNetworks []netip.Prefix
	// TLSConfig is used for every outbound connection; nil means system roots.
	TLSConfig *tls.Config
	// Timeout bounds one whole operation; 0 means DefaultTimeout.
	Timeout time.Duration
	// MaxResponseBytes caps response bodies; 0 means DefaultMaxResponseBytes.
	MaxResponseBytes int64
	// Resolver resolves host names; nil means net.DefaultResolver.
	Resolver *net.Resolver
	// UserAgent is sent on outbound requests; empty means "ozo-identity".
	UserAgent string
	// PinnedCerts maps "host:port" or "host" to the SHA-256 of the one certificate (or of its
	// SubjectPublicKeyInfo) accepted there instead of the usual verification.
	PinnedCerts map[string][32]byte
}

// WithDefaults fills in the zero fields.
func (o Options) WithDefaults() Options {
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.MaxResponseBytes <= 0 {
		o.MaxResponseBytes = DefaultMaxResponseBytes
	}
	if o.UserAgent == "" {
		o.UserAgent = "ozo-identity"
	}
	return o
}

// NewDialer dials only addresses the guard allows, checked after DNS resolution.
func NewDialer(o Options) *net.Dialer {
	return &net.Dialer{
		Timeout:        o.Timeout,
		KeepAlive:      30 * time.Second,
		Resolver:       o.Resolver,
		ControlContext: dialControl(o.AllowedNetworks),
	}
}

// New returns a plain HTTP client with the guard: connections only to public addresses (or
// AllowedNetworks), no proxies, no redirects, the configured timeout, and response bodies that
// fail with ErrResponseTooLarge past MaxResponseBytes.
func New(opts Options) *http.Client {
	opts = opts.WithDefaults()
	return NewClient(opts, NewDialer(opts).DialContext, opts.Timeout)
}

// NewClient is New over another dial function (one that resolves Matrix server names first).
func NewClient(o Options, dial func(context.Context, string, string) (net.Conn, error), timeout time.Duration) *http.Client {
	tr := &http.Transport{
		Proxy:                  nil, // a proxy would make the dial-time check meaningless
		DialContext:            dial,
		TLSClientConfig:        o.TLSConfig.Clone(),
		TLSHandshakeTimeout:    timeout,
		ResponseHeaderTimeout:  timeout,
		IdleConnTimeout:        90 * time.Second,
		MaxResponseHeaderBytes: MaxHeaderBytes,
		ForceAttemptHTTP2:      true,
	}
	if len(o.PinnedCerts) > 0 {
		tr.DialTLSContext = DialTLS(o.TLSConfig, o.PinnedCerts, dial)
	}
	return &http.Client{
		Transport: LimitBodies(tr, o.MaxResponseBytes),
		Timeout:   timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return errRedirect
		},
	}
}

// MaxHeaderBytes caps response headers.
const MaxHeaderBytes = 64 << 10

// limitTransport caps every response body, including error bodies that mautrix would
// otherwise read up to 512 KiB.
// LimitBodies makes response bodies of next fail with ErrResponseTooLarge past max bytes.
func LimitBodies(next http.RoundTripper, max int64) http.RoundTripper {
	return &limitTransport{next: next, max: max}
}

type limitTransport struct {
	next http.RoundTripper
	max  int64
}

func (t *limitTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(r)
	if err != nil {
		return nil, err
	}
	resp.Body = &limitedBody{rc: resp.Body, n: t.max}
	return resp, nil
}

type limitedBody struct {
	rc io.ReadCloser
	n  int64
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.n <= 0 {
		// At the limit: only a clean EOF is acceptable.
		var probe [1]byte
		n, err := b.rc.Read(probe[:])
		if n > 0 {
			return 0, ErrResponseTooLarge
		}
		return 0, err
	}
	if int64(len(p)) > b.n {
		p = p[:b.n]
	}
	n, err := b.rc.Read(p)
	b.n -= int64(n)
	return n, err
}

func (b *limitedBody) Close() error { return b.rc.Close() }
