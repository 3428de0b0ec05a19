package homeserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
	"maunium.net/go/mautrix/crypto/canonicaljson"
	"maunium.net/go/mautrix/federation"
	"maunium.net/go/mautrix/federation/signutil"
	"maunium.net/go/mautrix/id"
)

// X-Matrix authentication errors. All but ErrRequestTooLarge and ErrInvalidBody also
// wrap ErrUnauthorized (answer 401 M_UNAUTHORIZED).
var (
	ErrUnauthorized     = errors.New("homeserver request not authenticated")
	ErrNoAuth           = errors.New("no X-Matrix Authorization header")
	ErrMalformedAuth    = errors.New("malformed X-Matrix Authorization header")
	ErrWrongDestination = errors.New("X-Matrix destination is not this server")
	ErrUnknownKey       = errors.New("signing key not published by origin")
	ErrBadSignature     = errors.New("invalid request signature")
	ErrRequestTooLarge  = errors.New("request body too large")
	ErrOriginNotAllowed = errors.New("origin may not use this identity server")
)

const (
	maxRequestBytes = 64 << 10
	maxAuthHeaders  = 8
	// keyRefetchInterval limits how often an origin's keys are fetched again, so
	// requests naming unknown keys cannot make us hammer a server.
	keyRefetchInterval = time.Minute
	// maxKeyCacheTime caps how long keys are trusted regardless of valid_until_ts, so a
	// revoked key stops working within a day.
	maxKeyCacheTime = 24 * time.Hour
)

// Authenticate verifies a request a homeserver signed with X-Matrix (e.g. POST
// /_matrix/identity/v2/3pid/unbind) against the origin's published keys, fetched through
// the guarded client and cached. It returns the origin server name and the request body
// (read up to 64 KiB; it must be JSON when present). The signature must cover our
// ServerName either as "destination" (federation style, as mautrix signs) or as
// "destination_is" (what Synapse and Sydent use for identity servers); a destination in
// the header must equal ServerName, a missing one is accepted as Sydent does.
func (c *Client) Authenticate(r *http.Request) (string, []byte, error) {
	unauthorized := func(kind error, detail string) error {
		if detail != "" {
			return fmt.Errorf("%w: %w: %s", ErrUnauthorized, kind, detail)
		}
		return fmt.Errorf("%w: %w", ErrUnauthorized, kind)
	}
	if c.opts.ServerName == "" {
		return "", nil, unauthorized(ErrWrongDestination, "no server name configured")
	}
	auths, err := parseAuthHeaders(r.Header.Values("Authorization"))
	if err != nil {
		return "", nil, unauthorized(err, "")
	}
	origin := auths[0].Origin
	for _, a := range auths {
		if a.Origin != origin {
			return "", nil, unauthorized(ErrMalformedAuth, "headers name different origins")
		}
		if a.Destination != "" && a.Destination != c.opts.ServerName {
			return "", nil, unauthorized(ErrWrongDestination, truncate(a.Destination))
		}
	}
	if err := checkServerName(origin); err != nil {
		return "", nil, unauthorized(ErrMalformedAuth, err.Error())
	}
	// Keys are fetched only from homeservers that may use us at all, so that the header's
	// origin cannot point our requests at arbitrary hosts and ports.
	if c.opts.AllowOrigin != nil && !c.opts.AllowOrigin(origin) {
		return "", nil, unauthorized(ErrOriginNotAllowed, truncate(origin))
	}

	body, err := readBody(r)
	if err != nil {
		return "", nil, err
	}
	req := signedRequest{
		Method:  r.Method,
		URI:     r.URL.RequestURI(),
		Origin:  origin,
		Content: body,
	}
	lastErr := ErrBadSignature
	for _, a := range auths {
		key, err := c.keys.get(r.Context(), origin, a.KeyID)
		if errors.Is(err, ErrUnknownKey) {
			lastErr = ErrUnknownKey
			continue
		} else if err != nil {
			c.log.DebugContext(r.Context(), "x-matrix key fetch failed", "origin", origin, "err", err)
			return "", nil, fmt.Errorf("%w: keys of %s: %w", ErrUnauthorized, origin, err)
		}
		if req.verify(key, a.Signature, c.opts.ServerName) {
			return origin, body, nil
		}
		lastErr = ErrBadSignature
	}
	c.log.DebugContext(r.Context(), "x-matrix authentication failed", "origin", origin, "err", lastErr)
	return "", nil, unauthorized(lastErr, "origin "+origin)
}

func parseAuthHeaders(values []string) ([]federation.XMatrixAuth, error) {
	var auths []federation.XMatrixAuth
	for _, v := range values {
		scheme, params, _ := strings.Cut(strings.TrimSpace(v), " ")
		if !strings.EqualFold(scheme, "X-Matrix") {
			continue
		}
		if len(auths) == maxAuthHeaders {
			return nil, ErrMalformedAuth
		}
		a := federation.ParseXMatrixAuth(params)
		if a.Origin == "" || a.KeyID == "" || a.Signature == "" {
			return nil, ErrMalformedAuth
		}
		auths = append(auths, a)
	}
	if len(auths) == 0 {
		return nil, ErrNoAuth
	}
	return auths, nil
}

func readBody(r *http.Request) ([]byte, error) {
	if r.Body == nil {
		return nil, nil
	}
	defer r.Body.Close()
	if r.ContentLength > maxRequestBytes {
		return nil, ErrRequestTooLarge
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxRequestBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read request body: %w", err)
	}
	if len(body) > maxRequestBytes {
		return nil, ErrRequestTooLarge
	}
	if len(body) > 0 && !json.Valid(body) {
		return nil, ErrInvalidBody
	}
	return body, nil
}

// signedRequest is the JSON object an X-Matrix signature covers.
type signedRequest struct {
	Method        string          `json:"method"`
	URI           string          `json:"uri"`
	Origin        string          `json:"origin"`
	Destination   string          `json:"destination,omitempty"`
	DestinationIS string          `json:"destination_is,omitempty"`
	Content       json.RawMessage `json:"content,omitempty"`
}

func (req signedRequest) verify(key id.SigningKey, sig, us string) bool {
	asFederation, asIdentity := req, req
	asFederation.Destination = us
	asIdentity.DestinationIS = us
	for _, form := range []signedRequest{asFederation, asIdentity} {
		msg, err := canonicaljson.Marshal(form)
		if err == nil && signutil.VerifyJSONCanonical(key, sig, msg) == nil {
			return true
		}
	}
	return false
}

// keyCache holds the verify keys each origin published at /_matrix/key/v2/server.
// Entries are keyed by the name we asked, never by the name a response claims, so one
// server cannot plant keys for another.
type keyCache struct {
	c     *Client
	group singleflight.Group

	mu      sync.Mutex
	entries map[string]*keyEntry
}

type keyEntry struct {
	keys      map[id.KeyID]id.SigningKey
	expires   time.Time
	attempted time.Time
	err       error // last fetch failure, while no valid keys are held
}

func newKeyCache(c *Client) *keyCache {
	return &keyCache{c: c, entries: make(map[string]*keyEntry)}
}

func (kc *keyCache) len() int {
	kc.mu.Lock()
	defer kc.mu.Unlock()
	return len(kc.entries)
}

func (kc *keyCache) get(ctx context.Context, origin string, keyID id.KeyID) (id.SigningKey, error) {
	now := time.Now()
	kc.mu.Lock()
	e := kc.entries[origin]
	if e != nil && now.Before(e.expires) {
		if k, ok := e.keys[keyID]; ok {
			kc.mu.Unlock()
			return k, nil
		}
	}
	recent := e != nil && now.Sub(e.attempted) < keyRefetchInterval
	kc.mu.Unlock()
	if recent {
		if e.err != nil && !now.Before(e.expires) {
			return "", e.err
		}
		return "", ErrUnknownKey
	}

	// One fetch per origin at a time; it outlives a caller that gives up.
	v, err, _ := kc.group.Do(origin, func() (any, error) {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), kc.c.opts.Timeout)
		defer cancel()
		return kc.fetch(fctx, origin), nil
	})
	if err != nil {
		return "", err
	}
	e = v.(*keyEntry)
	if e.err != nil {
		return "", e.err
	}
	if k, ok := e.keys[keyID]; ok {
		return k, nil
	}
	return "", ErrUnknownKey
}

// fetch gets and checks origin's keys and stores the outcome, failure included.
func (kc *keyCache) fetch(ctx context.Context, origin string) *keyEntry {
	now := time.Now()
	e := &keyEntry{attempted: now}
	keys, expires, err := kc.fetchKeys(ctx, origin)
	if err != nil {
		kc.c.log.DebugContext(ctx, "fetching server keys failed", "origin", origin, "err", err)
		e.err = err
	} else {
		e.keys, e.expires = keys, expires
	}

	kc.mu.Lock()
	defer kc.mu.Unlock()
	if old := kc.entries[origin]; err != nil && old != nil && now.Before(old.expires) {
		// Keep still-valid keys after a failed refresh.
		e.keys, e.expires, e.err = old.keys, old.expires, nil
	}
	if len(kc.entries) >= maxCacheEntries {
		for k, v := range kc.entries {
			if now.After(v.expires) && now.Sub(v.attempted) >= keyRefetchInterval {
				delete(kc.entries, k)
			}
		}
		for k := range kc.entries {
			if len(kc.entries) < maxCacheEntries {
				break
			}
			delete(kc.entries, k)
		}
	}
	kc.entries[origin] = e
	return e
}

func (kc *keyCache) fetchKeys(ctx context.Context, origin string) (map[id.KeyID]id.SigningKey, time.Time, error) {
	resp, err := kc.c.fed.ServerKeys(ctx, origin)
	if err != nil {
		return nil, time.Time{}, classify(err, nil)
	}
	now := time.Now()
	switch {
	case resp == nil:
		return nil, time.Time{}, fmt.Errorf("%w: empty key response", ErrBadResponse)
	case resp.ServerName != origin:
		return nil, time.Time{}, fmt.Errorf("%w: key response is for %q", ErrBadResponse, truncate(resp.ServerName))
	case len(resp.VerifyKeys) == 0:
		return nil, time.Time{}, fmt.Errorf("%w: no verify keys", ErrBadResponse)
	case !resp.ValidUntilTS.After(now):
		return nil, time.Time{}, fmt.Errorf("%w: keys expired", ErrBadResponse)
	}
	// Every published key must have signed the response (mautrix checks exactly that).
	if err := resp.VerifySelfSignature(); err != nil {
		return nil, time.Time{}, fmt.Errorf("%w: %w", ErrBadResponse, err)
	}
	keys := make(map[id.KeyID]id.SigningKey, len(resp.VerifyKeys))
	for keyID, k := range resp.VerifyKeys {
		keys[keyID] = k.Key
	}
	expires := resp.ValidUntilTS.Time
	if limit := now.Add(maxKeyCacheTime); expires.After(limit) {
		expires = limit
	}
	return keys, expires, nil
}
