package homeserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.mau.fi/util/exhttp"
	"go.mau.fi/util/jsontime"
	"maunium.net/go/mautrix/federation"
	"maunium.net/go/mautrix/id"
)

const (
	unbindPath = "/_matrix/identity/v2/3pid/unbind"
	isName     = "is.ozo.test"
	unbindBody = `{"mxid":"@alice:HS","threepid":{"medium":"email","address":"alice@example.nl"}}`
)

// identityPath lets mautrix's federation client sign and send to an identity server path.
type identityPath []any

func (p identityPath) FullPath() []any { return p }

// A real mautrix federation client signs a request and sends it over TLS to an identity
// server stand-in whose handler uses Authenticate; the keys are fetched from the origin.
func TestAuthenticateMautrixSignedRequest(t *testing.T) {
	pki := newPKI(t)
	hs := newTestHS(t, pki)
	var keyFetches atomic.Int64
	hs.serveKeys(hs.name, &keyFetches)

	var c *Client
	is := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin, body, err := c.Authenticate(r)
		if err != nil {
			writeJSON(w, http.StatusUnauthorized, map[string]string{"errcode": "M_UNAUTHORIZED", "error": err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"origin": origin, "body": json.RawMessage(body)})
	}))
	is.TLS = pki.server.Clone()
	is.StartTLS()
	t.Cleanup(is.Close)
	c = newTestClient(t, pki, Options{AllowedNetworks: loopback, ServerName: is.Listener.Addr().String()})

	fc := federation.NewClient(hs.name, hs.key, nil, exhttp.SensibleClientSettings.WithTLSConfig(pki.client))
	fc.AllowIP = func(net.IP) bool { return true }
	send := func(body map[string]any) (map[string]any, error) {
		var out map[string]any
		_, _, err := fc.MakeFullRequest(context.Background(), federation.RequestParams{
			ServerName:   is.Listener.Addr().String(),
			Method:       http.MethodPost,
			Path:         identityPath{"_matrix", "identity", "v2", "3pid", "unbind"},
			Authenticate: true,
			RequestJSON:  body,
			ResponseJSON: &out,
		})
		return out, err
	}
	for i := range 3 {
		out, err := send(map[string]any{"mxid": "@alice:" + hs.name, "n": i})
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if out["origin"] != hs.name {
			t.Fatalf("origin %v, want %s", out["origin"], hs.name)
		}
		if b, _ := out["body"].(map[string]any); b["mxid"] != "@alice:"+hs.name {
			t.Fatalf("body %v", out["body"])
		}
	}
	if n := keyFetches.Load(); n != 1 {
		t.Fatalf("keys fetched %d times for 3 requests, want 1 (cached)", n)
	}

	// The same client signing with another key under the same key ID is refused.
	other := federation.GenerateSigningKey()
	other.ID = hs.key.ID
	fc.Key = other
	_, err := send(map[string]any{"mxid": "@alice:" + hs.name})
	if err == nil || !strings.Contains(err.Error(), ErrBadSignature.Error()) {
		t.Fatalf("forged request: err = %v, want a bad-signature 401", err)
	}
}

// xmatrixFixture signs requests by hand, the way Synapse and others do.
type xmatrixFixture struct {
	t          *testing.T
	hs         *testHS
	c          *Client
	keyFetches atomic.Int64
}

func newXMatrixFixture(t *testing.T) *xmatrixFixture {
	pki := newPKI(t)
	f := &xmatrixFixture{t: t, hs: newTestHS(t, pki)}
	f.hs.serveKeys(f.hs.name, &f.keyFetches)
	f.c = newTestClient(t, pki, Options{AllowedNetworks: loopback, ServerName: isName})
	return f
}

// sign returns the signature of key over the request object with the given extra fields.
func sign(t *testing.T, key *federation.SigningKey, method, uri, origin, body string, extra map[string]string) string {
	t.Helper()
	obj := map[string]any{"method": method, "uri": uri, "origin": origin}
	if body != "" {
		obj["content"] = json.RawMessage(body)
	}
	for k, v := range extra {
		obj[k] = v
	}
	sig, err := key.SignJSON(obj)
	if err != nil {
		t.Fatal(err)
	}
	return sig
}

func unbindRequest(body string, auth ...string) *http.Request {
	r := httptest.NewRequest(http.MethodPost, unbindPath, strings.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	for _, a := range auth {
		r.Header.Add("Authorization", a)
	}
	return r
}

func TestAuthenticateSynapseStyle(t *testing.T) {
	f := newXMatrixFixture(t)
	body := strings.ReplaceAll(unbindBody, "HS", f.hs.name)
	sig := sign(t, f.hs.key, "POST", unbindPath, f.hs.name, body, map[string]string{"destination_is": isName})

	for _, header := range []string{
		// Synapse before 1.x: unquoted origin, no destination.
		fmt.Sprintf(`X-Matrix origin=%s,key="%s",sig="%s"`, f.hs.name, f.hs.key.ID, sig),
		// Current Synapse: destination repeated in the header.
		fmt.Sprintf(`X-Matrix origin="%s",key="%s",sig="%s",destination="%s"`, f.hs.name, f.hs.key.ID, sig, isName),
		// Scheme and parameter names are case-insensitive.
		fmt.Sprintf(`x-matrix Origin="%s",Key="%s",Sig="%s"`, f.hs.name, f.hs.key.ID, sig),
	} {
		origin, got, err := f.c.Authenticate(unbindRequest(body, header))
		if err != nil {
			t.Fatalf("%s: %v", header, err)
		}
		if origin != f.hs.name || string(got) != body {
			t.Fatalf("origin %q body %q", origin, got)
		}
	}
	if n := f.keyFetches.Load(); n != 1 {
		t.Fatalf("keys fetched %d times, want 1", n)
	}
}

func TestAuthenticateRejects(t *testing.T) {
	f := newXMatrixFixture(t)
	name, keyID := f.hs.name, f.hs.key.ID
	body := strings.ReplaceAll(unbindBody, "HS", name)
	header := func(origin string, key id.KeyID, sig, dest string) string {
		h := fmt.Sprintf(`X-Matrix origin="%s",key="%s",sig="%s"`, origin, key, sig)
		if dest != "" {
			h += `,destination="` + dest + `"`
		}
		return h
	}
	good := sign(t, f.hs.key, "POST", unbindPath, name, body, map[string]string{"destination": isName})
	forger := federation.GenerateSigningKey()

	cases := []struct {
		name string
		req  *http.Request
		want []error
	}{
		{"no header", unbindRequest(body), []error{ErrUnauthorized, ErrNoAuth}},
		{"bearer only", unbindRequest(body, "Bearer abc"), []error{ErrUnauthorized, ErrNoAuth}},
		{"no signature", unbindRequest(body, fmt.Sprintf(`X-Matrix origin="%s",key="%s"`, name, keyID)), []error{ErrUnauthorized, ErrMalformedAuth}},
		{"invalid origin", unbindRequest(body, header("bad name", keyID, good, "")), []error{ErrUnauthorized, ErrMalformedAuth}},
		{"two origins", unbindRequest(body, header(name, keyID, good, ""), header("other.test", keyID, good, "")), []error{ErrUnauthorized, ErrMalformedAuth}},
		{"wrong destination in header", unbindRequest(body, header(name, keyID, good, "other.test")), []error{ErrUnauthorized, ErrWrongDestination}},
		{"signed for another destination", unbindRequest(body, header(name, keyID,
			sign(t, f.hs.key, "POST", unbindPath, name, body, map[string]string{"destination": "other.test"}), "")),
			[]error{ErrUnauthorized, ErrBadSignature}},
		{"signed without destination", unbindRequest(body, header(name, keyID,
			sign(t, f.hs.key, "POST", unbindPath, name, body, nil), "")), []error{ErrUnauthorized, ErrBadSignature}},
		{"forged signature", unbindRequest(body, header(name, keyID,
			sign(t, forger, "POST", unbindPath, name, body, map[string]string{"destination": isName}), isName)),
			[]error{ErrUnauthorized, ErrBadSignature}},
		{"garbage signature", unbindRequest(body, header(name, keyID, "!!!", isName)), []error{ErrUnauthorized, ErrBadSignature}},
		{"tampered body", unbindRequest(strings.Replace(body, "alice@", "mallory@", 1), header(name, keyID, good, isName)),
			[]error{ErrUnauthorized, ErrBadSignature}},
		{"other path", func() *http.Request {
			r := unbindRequest(body, header(name, keyID, good, isName))
			r.URL.Path = "/_matrix/identity/v2/3pid/bind"
			return r
		}(), []error{ErrUnauthorized, ErrBadSignature}},
		{"other method", func() *http.Request {
			r := unbindRequest(body, header(name, keyID, good, isName))
			r.Method = http.MethodPut
			return r
		}(), []error{ErrUnauthorized, ErrBadSignature}},
		{"unknown key", unbindRequest(body, header(name, "ed25519:nope", good, isName)), []error{ErrUnauthorized, ErrUnknownKey}},
		{"body not JSON", unbindRequest("mxid=@alice", header(name, keyID, good, isName)), []error{ErrInvalidBody}},
		{"body too large", unbindRequest(`{"pad":"`+strings.Repeat("x", 70<<10)+`"}`, header(name, keyID, good, isName)), []error{ErrRequestTooLarge}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			origin, _, err := f.c.Authenticate(tc.req)
			if origin != "" {
				t.Fatalf("origin %q returned on failure", origin)
			}
			wantErr(t, err, tc.want...)
		})
	}
	// The good signature does verify, so the failures above are about what they changed.
	if _, _, err := f.c.Authenticate(unbindRequest(body, header(name, keyID, good, isName))); err != nil {
		t.Fatalf("control request: %v", err)
	}
	// Unknown key IDs do not trigger a refetch every time.
	if n := f.keyFetches.Load(); n != 1 {
		t.Fatalf("keys fetched %d times, want 1", n)
	}
	// One header with an unknown key and one good one: accepted.
	if _, _, err := f.c.Authenticate(unbindRequest(body, header(name, "ed25519:old", good, isName), header(name, keyID, good, isName))); err != nil {
		t.Fatalf("second header not tried: %v", err)
	}
}

func TestAuthenticateNotConfigured(t *testing.T) {
	pki := newPKI(t)
	hs := newTestHS(t, pki)
	hs.serveKeys(hs.name, nil)
	c := newTestClient(t, pki, Options{AllowedNetworks: loopback})
	sig := sign(t, hs.key, "POST", unbindPath, hs.name, unbindBody, map[string]string{"destination": ""})
	_, _, err := c.Authenticate(unbindRequest(unbindBody, fmt.Sprintf(`X-Matrix origin="%s",key="%s",sig="%s"`, hs.name, hs.key.ID, sig)))
	wantErr(t, err, ErrUnauthorized)
	if hs.hits.Load() != 0 {
		t.Fatal("keys fetched without a server name configured")
	}
}

func TestAuthenticateKeyFetchGuarded(t *testing.T) {
	pki := newPKI(t)
	hs := newTestHS(t, pki)
	hs.serveKeys(hs.name, nil)
	c := newTestClient(t, pki, Options{ServerName: isName}) // loopback not allowed
	sig := sign(t, hs.key, "POST", unbindPath, hs.name, unbindBody, map[string]string{"destination": isName})
	_, _, err := c.Authenticate(unbindRequest(unbindBody, fmt.Sprintf(`X-Matrix origin="%s",key="%s",sig="%s"`, hs.name, hs.key.ID, sig)))
	wantErr(t, err, ErrUnauthorized, ErrNotAllowed)
	if n := hs.hits.Load(); n != 0 {
		t.Fatalf("key server reached %d times", n)
	}
}

// A server must not be able to plant keys for another server name: responses are
// checked against, and cached under, the name we asked.
func TestAuthenticateKeyResponseForOtherServer(t *testing.T) {
	pki := newPKI(t)
	victim := newTestHS(t, pki)
	victim.serveKeys(victim.name, nil)
	evil := newTestHS(t, pki)
	evil.serveKeys(victim.name, nil) // evil's key, claimed for the victim's name
	c := newTestClient(t, pki, Options{AllowedNetworks: loopback, ServerName: isName})

	authAs := func(origin string) error {
		sig := sign(t, evil.key, "POST", unbindPath, origin, unbindBody, map[string]string{"destination": isName})
		_, _, err := c.Authenticate(unbindRequest(unbindBody, fmt.Sprintf(`X-Matrix origin="%s",key="%s",sig="%s"`, origin, evil.key.ID, sig)))
		return err
	}
	err := authAs(evil.name)
	wantErr(t, err, ErrUnauthorized, ErrBadResponse)
	err = authAs(victim.name)
	if err == nil {
		t.Fatal("request as the victim, signed with the evil key, was accepted")
	}
	wantErr(t, err, ErrUnauthorized)
}

func TestAuthenticateBadKeyResponses(t *testing.T) {
	pki := newPKI(t)
	for _, tc := range []struct {
		name string
		resp func(hs *testHS) any
	}{
		{"expired", func(hs *testHS) any {
			skr := &federation.ServerKeyResponse{
				ServerName:   hs.name,
				VerifyKeys:   map[id.KeyID]federation.ServerVerifyKey{hs.key.ID: {Key: hs.key.Pub}},
				ValidUntilTS: jsontime.UM(time.Now().Add(-time.Minute)),
			}
			sig, err := hs.key.SignJSON(skr)
			if err != nil {
				t.Fatal(err)
			}
			skr.Signatures = map[string]map[id.KeyID]string{hs.name: {hs.key.ID: sig}}
			return skr
		}},
		{"not self-signed", func(hs *testHS) any {
			skr := federation.GenerateSigningKey().GenerateKeyResponse(hs.name, nil)
			skr.VerifyKeys = map[id.KeyID]federation.ServerVerifyKey{hs.key.ID: {Key: hs.key.Pub}}
			return skr
		}},
		{"no keys", func(hs *testHS) any {
			return map[string]any{"server_name": hs.name, "verify_keys": map[string]any{}, "valid_until_ts": time.Now().Add(time.Hour).UnixMilli()}
		}},
		{"not json", func(hs *testHS) any { return "nope" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hs := newTestHS(t, pki)
			hs.mux.HandleFunc("GET /_matrix/key/v2/server", func(w http.ResponseWriter, r *http.Request) {
				writeJSON(w, http.StatusOK, tc.resp(hs))
			})
			c := newTestClient(t, pki, Options{AllowedNetworks: loopback, ServerName: isName})
			sig := sign(t, hs.key, "POST", unbindPath, hs.name, unbindBody, map[string]string{"destination": isName})
			_, _, err := c.Authenticate(unbindRequest(unbindBody, fmt.Sprintf(`X-Matrix origin="%s",key="%s",sig="%s"`, hs.name, hs.key.ID, sig)))
			wantErr(t, err, ErrUnauthorized, ErrBadResponse)
			// The failure is remembered: a retry within the refetch interval asks nobody.
			before := hs.hits.Load()
			_, _, err = c.Authenticate(unbindRequest(unbindBody, fmt.Sprintf(`X-Matrix origin="%s",key="%s",sig="%s"`, hs.name, hs.key.ID, sig)))
			if !errors.Is(err, ErrUnauthorized) || hs.hits.Load() != before {
				t.Fatalf("second attempt: err %v, extra fetches %d", err, hs.hits.Load()-before)
			}
		})
	}
}
