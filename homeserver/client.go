// Package homeserver is the identity server's outbound and inbound link with Matrix
// homeservers: OpenID userinfo for account registration, X-Matrix authentication of
// homeserver calls, and 3PID onbind delivery. Server discovery and request signing come
// from maunium.net/go/mautrix/federation; every connection goes through an SSRF guard.
package homeserver

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"sync"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/federation"

	"go.mau.fi/util/exhttp"

	"github.com/ozo-platform/ozo-identity/internal/httpguard"
)

const (
	// DefaultTimeout bounds one whole operation: resolution, connection and response.
	DefaultTimeout = httpguard.DefaultTimeout
	// DefaultMaxResponseBytes caps every response body read from a homeserver.
	DefaultMaxResponseBytes = httpguard.DefaultMaxResponseBytes
)

// Errors returned by Client. Every error wraps exactly one of the "kind" sentinels below
// (plus, for X-Matrix failures, ErrUnauthorized), so callers can map them to responses.
var (
	ErrInvalidServerName = errors.New("invalid server name")
	ErrNotAllowed        = httpguard.ErrNotAllowed
	ErrTokenRejected     = errors.New("access token rejected by homeserver")
	ErrForeignUser       = errors.New("homeserver vouched for a user of another server")
	ErrUnreachable       = errors.New("homeserver unreachable")
	ErrTimeout           = errors.New("homeserver timed out")
	ErrServerError       = errors.New("homeserver failed") // 5xx
	ErrRateLimited       = errors.New("homeserver rate limited the request")
	ErrRejected          = errors.New("homeserver rejected the request") // other 4xx
	ErrBadResponse       = errors.New("invalid response from homeserver")
	ErrInvalidBody       = errors.New("body is not valid JSON")
	// ErrResponseTooLarge and ErrPinMismatch are the guard's (package internal/httpguard).
	ErrResponseTooLarge = httpguard.ErrResponseTooLarge
	ErrPinMismatch      = httpguard.ErrPinMismatch
)

// IsRetryable reports whether the failed operation may succeed when tried again later:
// network errors, timeouts, 5xx and 429. Anything else is permanent.
func IsRetryable(err error) bool {
	return errors.Is(err, ErrUnreachable) || errors.Is(err, ErrTimeout) ||
		errors.Is(err, ErrServerError) || errors.Is(err, ErrRateLimited)
}

// Options configures a Client.
type Options struct {
	// AllowedNetworks are outbound targets allowed despite being loopback, private or
	// otherwise non-global (tests, homeservers on an internal network).
	AllowedNetworks []netip.Prefix
	// TLSConfig is used for every outbound connection; nil means system roots.
	TLSConfig *tls.Config
	// Timeout bounds one whole operation; 0 means DefaultTimeout.
	Timeout time.Duration
	// MaxResponseBytes caps response bodies; 0 means DefaultMaxResponseBytes.
	MaxResponseBytes int64
	// ServerName is our own name: the X-Matrix destination we accept.
	ServerName string
	// AllowOrigin says whether an X-Matrix origin may be verified (its keys fetched); nil
	// allows every origin. The service passes its homeservers.allowed list.
	AllowOrigin func(serverName string) bool
	// Resolver resolves host names and SRV records; nil means net.DefaultResolver.
	Resolver *net.Resolver
	// UserAgent is sent on outbound requests; empty means "ozo-identity".
	UserAgent string
	// PinnedCerts maps "host:port" or "host" to the SHA-256 of the one certificate (or of its
	// SubjectPublicKeyInfo) accepted there instead of the usual verification.
	PinnedCerts map[string][32]byte
}

// guard is the part of o the SSRF guard takes.
func (o Options) guard() httpguard.Options {
	return httpguard.Options{AllowedNetworks: o.AllowedNetworks, TLSConfig: o.TLSConfig, Timeout: o.Timeout,
		MaxResponseBytes: o.MaxResponseBytes, Resolver: o.Resolver, UserAgent: o.UserAgent, PinnedCerts: o.PinnedCerts}
}

// withDefaults fills in the zero fields as the guard does.
func (o Options) withDefaults() Options {
	g := o.guard().WithDefaults()
	o.Timeout, o.MaxResponseBytes, o.UserAgent = g.Timeout, g.MaxResponseBytes, g.UserAgent
	return o
}

// Client talks to homeservers. It is safe for concurrent use.
type Client struct {
	opts Options
	log  *slog.Logger
	fed  *federation.Client
	dial *net.Dialer
	keys *keyCache
	// resolver resolves and dials server names; its state is bounded (see resolvingTransport).
	resolver *resolvingTransport

	// rewriteAddr, when set (tests only), changes a dial address before it is resolved
	// and checked, so a .well-known fetch on port 443 can reach a test server.
	rewriteAddr func(addr string) string
}

// New returns a Client. A nil log discards log records.
func New(opts Options, log *slog.Logger) *Client {
	opts = opts.withDefaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Client{opts: opts, log: log, dial: httpguard.NewDialer(opts.guard())}

	settings := exhttp.ClientSettings{
		TLSHandshakeTimeout:   opts.Timeout,
		ResponseHeaderTimeout: opts.Timeout,
		IdleConnTimeout:       90 * time.Second,
		TLSConfig:             opts.TLSConfig.Clone(),
	}
	c.resolver = newResolvingTransport(newResolutionCache(maxCacheEntries), c.dialContext, settings)
	srt := c.resolver
	srt.transport.MaxResponseHeaderBytes = httpguard.MaxHeaderBytes
	if len(opts.PinnedCerts) > 0 {
		srt.transport.DialTLSContext = httpguard.DialTLS(opts.TLSConfig, opts.PinnedCerts, srt.dialResolved)
	}
	// mautrix fetches .well-known with http.DefaultClient unless told otherwise: give it
	// the guarded client, with half the budget so a black-holed port 443 leaves time for
	// the SRV / port 8448 fallback.
	srt.opts = &federation.ResolveServerNameOpts{
		HTTPClient: httpguard.NewClient(opts.guard(), c.dialContext, opts.Timeout/2),
		DNSClient:  opts.Resolver,
	}
	c.fed = &federation.Client{
		HTTP: &http.Client{
			Transport: httpguard.LimitBodies(srt, opts.MaxResponseBytes),
			Timeout:   opts.Timeout,
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse // federation requests never follow redirects
			},
		},
		UserAgent:         opts.UserAgent,
		ResponseSizeLimit: opts.MaxResponseBytes,
	}
	c.keys = newKeyCache(c)
	return c
}

func (c *Client) dialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if c.rewriteAddr != nil {
		addr = c.rewriteAddr(addr)
	}
	return c.dial.DialContext(ctx, network, addr)
}

// UserInfo asks the homeserver serverName who owns an OpenID access token, as
// POST /_matrix/identity/v2/account/register requires, and returns that user ID. The user
// must belong to serverName itself: a homeserver may only vouch for its own users.
func (c *Client) UserInfo(ctx context.Context, serverName, accessToken string) (string, error) {
	if err := checkServerName(serverName); err != nil {
		return "", err
	}
	if accessToken == "" {
		return "", fmt.Errorf("openid userinfo: %w: empty access token", ErrTokenRejected)
	}
	ctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
	defer cancel()
	resp, err := c.fed.GetOpenIDUserInfo(ctx, serverName, accessToken)
	if err != nil {
		err = classify(err, func(status int) error {
			if status == http.StatusUnauthorized || status == http.StatusForbidden || status == http.StatusNotFound {
				return ErrTokenRejected
			}
			return nil
		})
		c.log.DebugContext(ctx, "openid userinfo failed", "server_name", serverName, "err", err)
		return "", fmt.Errorf("openid userinfo from %s: %w", serverName, err)
	}
	if resp == nil || resp.Sub == "" {
		return "", fmt.Errorf("openid userinfo from %s: %w: no sub", serverName, ErrBadResponse)
	}
	localpart, server, err := resp.Sub.ParseAndValidateRelaxed()
	if err != nil || localpart == "" {
		return "", fmt.Errorf("openid userinfo from %s: %w: sub %q is not a user ID", serverName, ErrBadResponse, truncate(string(resp.Sub)))
	}
	if server != serverName {
		c.log.WarnContext(ctx, "homeserver vouched for a foreign user", "server_name", serverName, "sub", truncate(string(resp.Sub)))
		return "", fmt.Errorf("openid userinfo from %s: %w: %s", serverName, ErrForeignUser, truncate(string(resp.Sub)))
	}
	return string(resp.Sub), nil
}

// OnBind delivers a 3PID onbind notification (body is the JSON the caller built) to
// POST /_matrix/federation/v1/3pid/onbind on serverName. It is unauthenticated, as the
// spec has it. Use IsRetryable on the error to decide whether to try again.
func (c *Client) OnBind(ctx context.Context, serverName string, body []byte) error {
	if err := checkServerName(serverName); err != nil {
		return err
	}
	if !json.Valid(body) {
		return fmt.Errorf("onbind to %s: %w", serverName, ErrInvalidBody)
	}
	ctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
	defer cancel()
	// Built by hand rather than with MakeFullRequest so the body goes out verbatim with a
	// Content-Type; the matrix-federation scheme still routes it through mautrix's
	// resolving transport.
	target := url.URL{Scheme: "matrix-federation", Host: serverName, Path: "/_matrix/federation/v1/3pid/onbind"}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target.String(), bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("onbind to %s: %w", serverName, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", c.opts.UserAgent)
	resp, err := c.fed.HTTP.Do(req)
	if err == nil {
		// Drain (bounded by limitTransport) so the connection can be reused; keep the start of
		// an error body for its errcode and error.
		var head []byte
		if resp.StatusCode >= 300 {
			head, _ = io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode >= 300 {
			err = newHTTPError(resp.StatusCode, head)
		}
	} else {
		err = classify(err, nil)
	}
	if err != nil {
		c.log.DebugContext(ctx, "onbind failed", "server_name", serverName, "retryable", IsRetryable(err), "err", err)
		return fmt.Errorf("onbind to %s: %w", serverName, err)
	}
	return nil
}

func checkServerName(serverName string) error {
	if _, _, ok := federation.ParseServerName(serverName); !ok {
		return fmt.Errorf("%w: %q", ErrInvalidServerName, truncate(serverName))
	}
	return nil
}

// classify maps a mautrix federation error to one of our kinds. byStatus may claim a
// status code first. The result never contains the request URL, which may carry a token.
func classify(err error, byStatus func(int) error) error {
	var httpErr mautrix.HTTPError
	if errors.As(err, &httpErr) && httpErr.Response != nil && httpErr.Response.StatusCode >= 300 {
		status := httpErr.Response.StatusCode
		detail := fmt.Sprintf("HTTP %d", status)
		if httpErr.RespError != nil && httpErr.RespError.ErrCode != "" {
			detail += " " + truncate(httpErr.RespError.ErrCode)
		}
		if byStatus != nil {
			if kind := byStatus(status); kind != nil {
				return fmt.Errorf("%w: %s", kind, detail)
			}
		}
		return fmt.Errorf("%w: %s", statusKind(status), detail)
	}
	cause := err
	var urlErr *url.Error
	if errors.As(err, &urlErr) {
		cause = urlErr.Err
	}
	var netErr net.Error
	switch {
	case errors.Is(err, ErrNotAllowed):
		return fmt.Errorf("%w: %w", ErrNotAllowed, cause)
	case errors.Is(err, federation.ErrInvalidServerName):
		return fmt.Errorf("%w: %w", ErrInvalidServerName, cause)
	case errors.Is(err, ErrResponseTooLarge), errors.Is(err, mautrix.ErrResponseTooLong),
		errors.Is(err, mautrix.ErrBodyReadReachedLimit):
		return fmt.Errorf("%w: %w", ErrBadResponse, ErrResponseTooLarge)
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return fmt.Errorf("%w: %w", ErrTimeout, cause)
	case httpErr.Response != nil:
		// A 2xx whose body could not be read or decoded.
		var syntaxErr *json.SyntaxError
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &syntaxErr) || errors.As(err, &typeErr) || httpErr.Message == "failed to unmarshal response JSON" {
			return fmt.Errorf("%w: %s", ErrBadResponse, httpErr.Message)
		}
		return fmt.Errorf("%w: %w", ErrUnreachable, cause)
	default:
		return fmt.Errorf("%w: %w", ErrUnreachable, cause)
	}
}

// HTTPError is a homeserver's error answer: its status and, when the body is a Matrix error,
// its errcode and error (both shortened, as the homeserver chooses them).
type HTTPError struct {
	Status  int
	Errcode string
	Message string
}

func newHTTPError(status int, body []byte) *HTTPError {
	e := &HTTPError{Status: status}
	var m struct {
		Errcode string `json:"errcode"`
		Error   string `json:"error"`
	}
	if json.Unmarshal(body, &m) == nil {
		e.Errcode, e.Message = truncate(m.Errcode), truncate(m.Error)
	}
	return e
}

func (e *HTTPError) Error() string {
	if e.Errcode == "" {
		return fmt.Sprintf("HTTP %d", e.Status)
	}
	return fmt.Sprintf("HTTP %d %s: %s", e.Status, e.Errcode, e.Message)
}

// Unwrap classifies the status (ErrRejected, ErrRateLimited, ...).
func (e *HTTPError) Unwrap() error { return statusKind(e.Status) }

// MatrixError returns the errcode and error the homeserver answered.
func (e *HTTPError) MatrixError() (errcode, message string) { return e.Errcode, e.Message }

func statusKind(status int) error {
	switch {
	case status == http.StatusTooManyRequests:
		return ErrRateLimited
	case status >= 500:
		return ErrServerError
	case status >= 400:
		return ErrRejected
	default:
		return ErrBadResponse // 3xx: redirects are not followed
	}
}

// truncate keeps attacker-supplied strings short in errors and logs.
func truncate(s string) string {
	const max = 256
	if len(s) > max {
		return s[:max] + "…"
	}
	return s
}

const maxCacheEntries = 4096

// resolutionCache is federation.ResolutionCache with a size bound: server names come
// from unauthenticated requests, so an unbounded map would grow without limit.
type resolutionCache struct {
	mu      sync.Mutex
	max     int
	entries map[string]*federation.ResolvedServerName
}

func newResolutionCache(max int) *resolutionCache {
	return &resolutionCache{max: max, entries: make(map[string]*federation.ResolvedServerName)}
}

func (rc *resolutionCache) StoreResolution(res *federation.ResolvedServerName) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if len(rc.entries) >= rc.max {
		now := time.Now()
		for k, v := range rc.entries {
			if now.After(v.Expires) {
				delete(rc.entries, k)
			}
		}
		for k := range rc.entries {
			if len(rc.entries) < rc.max {
				break
			}
			delete(rc.entries, k)
		}
	}
	rc.entries[res.ServerName] = res
}

func (rc *resolutionCache) len() int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return len(rc.entries)
}

func (rc *resolutionCache) LoadResolution(serverName string) (*federation.ResolvedServerName, error) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	res, ok := rc.entries[serverName]
	if !ok || time.Now().After(res.Expires) {
		return nil, nil
	}
	return res, nil
}

var _ federation.ResolutionCache = (*resolutionCache)(nil)
