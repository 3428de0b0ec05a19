package apitest

import (
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"maunium.net/go/mautrix/federation"

	"github.com/ozo-platform/ozo-identity/internal/pkitest"
)

// Homeserver is a homeserver stand-in over TLS on 127.0.0.1: it answers OpenID userinfo for the
// tokens it issued, records 3PID onbind calls, publishes its signing key and serves the
// client-server calls of an application service (ASToken) that OZO accounts make.
type Homeserver struct {
	// Name is the server name, 127.0.0.1:port.
	Name string
	// URL is https://Name.
	URL string
	// Key is published at /_matrix/key/v2/server; requests it signs pass X-Matrix checks.
	Key *federation.SigningKey

	hits         atomic.Int64
	onbindStatus atomic.Int32
	delay        atomic.Int64 // time.Duration before answering userinfo and onbind

	mu         sync.Mutex
	tokens     map[string]string // OpenID token → user ID
	onbinds    []OnBind
	onbindRule func(body []byte) int
	// onbindError is the error body answered with a non-200 onbind status; nil means M_UNKNOWN.
	onbindError map[string]string
	notify      chan struct{}
	as          appService
}

// OnBind is one /3pid/onbind call the stand-in received.
type OnBind struct {
	Body []byte
	// Status is what the stand-in answered.
	Status int
}

// NewHomeserver starts a stand-in; it stops when the test ends.
func NewHomeserver(t testing.TB, ca *pkitest.CA) *Homeserver {
	t.Helper()
	return NewHomeserverTLS(t, ca.ServerTLSConfig(t))
}

// NewHomeserverTLS starts a stand-in serving with the given TLS configuration (a self-signed
// certificate, say); it stops when the test ends.
func NewHomeserverTLS(t testing.TB, tlsConfig *tls.Config) *Homeserver {
	t.Helper()
	hs := &Homeserver{Key: federation.GenerateSigningKey(), tokens: map[string]string{}, notify: make(chan struct{}, 1)}
	hs.onbindStatus.Store(http.StatusOK)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_matrix/federation/v1/openid/userinfo", hs.userinfo)
	mux.HandleFunc("POST /_matrix/federation/v1/3pid/onbind", hs.onbind)
	mux.HandleFunc("GET /_matrix/key/v2/server", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, hs.Key.GenerateKeyResponse(hs.Name, nil))
	})
	hs.mountAppService(mux)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hs.hits.Add(1)
		mux.ServeHTTP(w, r)
	}))
	srv.TLS = tlsConfig
	srv.StartTLS()
	t.Cleanup(srv.Close)
	hs.Name = srv.Listener.Addr().String()
	hs.URL = "https://" + hs.Name
	return hs
}

// Hits counts every request the stand-in received.
func (hs *Homeserver) Hits() int64 { return hs.hits.Load() }

// IssueOpenIDToken returns a fresh OpenID token the stand-in vouches for as @localpart:Name.
func (hs *Homeserver) IssueOpenIDToken(localpart string) (token, userID string) {
	b := make([]byte, 18)
	rand.Read(b)
	token = base64.RawURLEncoding.EncodeToString(b)
	userID = fmt.Sprintf("@%s:%s", localpart, hs.Name)
	hs.mu.Lock()
	hs.tokens[token] = userID
	hs.mu.Unlock()
	return token, userID
}

// SetDelay makes the stand-in answer OpenID userinfo and onbind calls only after d, as a slow
// homeserver would: requests and deliveries are then in flight for that long.
func (hs *Homeserver) SetDelay(d time.Duration) { hs.delay.Store(int64(d)) }

// wait sleeps the configured delay, or until the caller hangs up.
func (hs *Homeserver) wait(r *http.Request) {
	if d := time.Duration(hs.delay.Load()); d > 0 {
		select {
		case <-time.After(d):
		case <-r.Context().Done():
		}
	}
}

// SetOnBindStatus sets the status the onbind endpoint answers with (200 at first).
func (hs *Homeserver) SetOnBindStatus(status int) { hs.onbindStatus.Store(int32(status)) }

// SetOnBindRule makes the onbind endpoint answer rule(body) when that is not 0 (otherwise the
// status of SetOnBindStatus), to refuse some requests as a real homeserver would: too large (413)
// or holding an invite it rejects.
func (hs *Homeserver) SetOnBindRule(rule func(body []byte) int) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	hs.onbindRule = rule
}

// SetOnBindError makes the onbind endpoint answer status with a Matrix error {errcode, error}.
func (hs *Homeserver) SetOnBindError(status int, errcode, message string) {
	hs.mu.Lock()
	hs.onbindError = map[string]string{"errcode": errcode, "error": message}
	hs.mu.Unlock()
	hs.onbindStatus.Store(int32(status))
}

// OnBinds returns every onbind call received so far.
func (hs *Homeserver) OnBinds() []OnBind {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	return append([]OnBind(nil), hs.onbinds...)
}

// Delivered returns the onbind calls answered 200.
func (hs *Homeserver) Delivered() []OnBind {
	var out []OnBind
	for _, ob := range hs.OnBinds() {
		if ob.Status == http.StatusOK {
			out = append(out, ob)
		}
	}
	return out
}

// Notify is signalled after each onbind call.
func (hs *Homeserver) Notify() <-chan struct{} { return hs.notify }

func (hs *Homeserver) userinfo(w http.ResponseWriter, r *http.Request) {
	hs.wait(r)
	hs.mu.Lock()
	userID, ok := hs.tokens[r.URL.Query().Get("access_token")]
	hs.mu.Unlock()
	if !ok {
		writeJSON(w, http.StatusUnauthorized, map[string]string{"errcode": "M_UNKNOWN_TOKEN", "error": "unknown token"})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"sub": userID})
}

func (hs *Homeserver) onbind(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 4<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	status := int(hs.onbindStatus.Load())
	hs.mu.Lock()
	if hs.onbindRule != nil {
		if st := hs.onbindRule(body); st != 0 {
			status = st
		}
	}
	hs.onbinds = append(hs.onbinds, OnBind{Body: body, Status: status})
	hs.mu.Unlock()
	select {
	case hs.notify <- struct{}{}:
	default:
	}
	// Recorded on arrival: a homeserver acts on an onbind whether or not its answer arrives.
	hs.wait(r)
	if status != http.StatusOK {
		hs.mu.Lock()
		answer := hs.onbindError
		hs.mu.Unlock()
		if answer == nil {
			answer = map[string]string{"errcode": "M_UNKNOWN", "error": "try again later"}
		}
		writeJSON(w, status, answer)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{})
}

// SignRequest signs a request to the identity server with the stand-in's key, the way Synapse
// does, and returns the Authorization header value.
func (hs *Homeserver) SignRequest(t testing.TB, method, uri, destination string, body []byte) string {
	t.Helper()
	return SignXMatrix(t, hs.Key, hs.Name, method, uri, destination, body)
}

// SignXMatrix returns an X-Matrix Authorization header for a request from origin signed with key;
// the signed object names the identity server as destination_is, as Synapse and Sydent do.
func SignXMatrix(t testing.TB, key *federation.SigningKey, origin, method, uri, destination string, body []byte) string {
	t.Helper()
	obj := map[string]any{"method": method, "uri": uri, "origin": origin, "destination_is": destination}
	if len(body) > 0 {
		obj["content"] = json.RawMessage(body)
	}
	sig, err := key.SignJSON(obj)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf(`X-Matrix origin="%s",key="%s",sig="%s",destination="%s"`, origin, key.ID, sig, destination)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}
