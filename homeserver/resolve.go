package homeserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"

	"go.mau.fi/util/exhttp"
	"maunium.net/go/mautrix/federation"
)

// resolvingTransport sends matrix-federation:// requests to the address the server-server
// spec's resolution gives, as federation.ServerResolvingTransport does. That one keeps a lock
// per server name forever, and names come from unauthenticated X-Matrix headers: 100,000
// invented origins grew the heap by 63 MB. Here concurrent resolutions of one name share one
// call, which is forgotten when it ends, and results go to the bounded cache.
type resolvingTransport struct {
	opts      *federation.ResolveServerNameOpts
	cache     *resolutionCache
	transport *http.Transport
	dial      exhttp.DialerFunc

	mu    sync.Mutex
	calls map[string]*resolveCall // resolutions in flight only
}

type resolveCall struct {
	done chan struct{}
	res  *federation.ResolvedServerName
	err  error
}

type resolvedAddrKey struct{}

func newResolvingTransport(cache *resolutionCache, dial exhttp.DialerFunc, settings exhttp.ClientSettings) *resolvingTransport {
	rt := &resolvingTransport{cache: cache, dial: dial, calls: make(map[string]*resolveCall)}
	rt.transport = settings.WithDial(rt.dialResolved).Configure(&http.Transport{})
	return rt
}

func (rt *resolvingTransport) dialResolved(ctx context.Context, network, _ string) (net.Conn, error) {
	addr, ok := ctx.Value(resolvedAddrKey{}).(string)
	if !ok {
		return nil, errors.New("no resolved address in the request context")
	}
	return rt.dial(ctx, network, addr)
}

func (rt *resolvingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != "matrix-federation" {
		return nil, fmt.Errorf("unsupported scheme: %s", req.URL.Scheme)
	}
	res, err := rt.resolve(req.Context(), req.URL.Host)
	if err != nil {
		return nil, fmt.Errorf("failed to resolve server name: %w", err)
	}
	if len(res.IPPort) == 0 {
		return nil, fmt.Errorf("failed to resolve server name: no address for %s", truncate(req.URL.Host))
	}
	req = req.WithContext(context.WithValue(req.Context(), resolvedAddrKey{}, res.IPPort[0]))
	req.URL.Scheme = "https"
	req.URL.Host = res.HostHeader
	req.Host = res.HostHeader
	return rt.transport.RoundTrip(req)
}

func (rt *resolvingTransport) resolve(ctx context.Context, serverName string) (*federation.ResolvedServerName, error) {
	if res, _ := rt.cache.LoadResolution(serverName); res != nil {
		return res, nil
	}
	rt.mu.Lock()
	if c, ok := rt.calls[serverName]; ok {
		rt.mu.Unlock()
		select {
		case <-c.done:
			return c.res, c.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	c := &resolveCall{done: make(chan struct{})}
	rt.calls[serverName] = c
	rt.mu.Unlock()

	c.res, c.err = federation.ResolveServerName(ctx, serverName, rt.opts)
	if c.err == nil {
		rt.cache.StoreResolution(c.res)
	}
	rt.mu.Lock()
	delete(rt.calls, serverName)
	rt.mu.Unlock()
	close(c.done)
	return c.res, c.err
}

// inFlight counts the resolutions under way (tests check that none is left behind).
func (rt *resolvingTransport) inFlight() int {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return len(rt.calls)
}

// CloseIdleConnections lets http.Client.CloseIdleConnections reach the pooled connections.
func (rt *resolvingTransport) CloseIdleConnections() { rt.transport.CloseIdleConnections() }
