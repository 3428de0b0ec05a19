package e2e

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/ozo-platform/ozo-identity/internal/pkitest"
)

// TestDendriteIdentityServerProtocol pins down, against real Dendrite
// v0.15.2 processes, what a homeserver sends to an identity server and
// accepts from it. The identity server here is a minimal recorder written for
// this test; the facts it checks are the contract ozo-identity must meet.
func TestDendriteIdentityServerProtocol(t *testing.T) {
	ca := pkitest.NewCA(t)
	is := newProbeIS(t, ca)
	fed := StartFederation(t, Options{CA: ca, IdentityServers: []string{is.name}})
	hs1, hs2 := fed.Homeservers[0], fed.Homeservers[1]
	alice := hs1.Register(t, "alice")
	ctx := t.Context()
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	if err != nil {
		t.Fatalf("create room: %v", err)
	}

	t.Run("untrusted id_server is refused before any call", func(t *testing.T) {
		is.reset()
		_, err := alice.InviteUserByThirdParty(ctx, room.RoomID, &mautrix.ReqInvite3PID{
			IDServer: "localhost:1", Medium: "email", Address: "x@example.org",
		})
		if !errors.Is(err, errServerNotTrusted) {
			t.Fatalf("invite via untrusted server: err = %v, want M_SERVER_NOT_TRUSTED", err)
		}
		// The scheme is not stripped: "https://host:port" is another, untrusted name.
		_, err = alice.InviteUserByThirdParty(ctx, room.RoomID, &mautrix.ReqInvite3PID{
			IDServer: "https://" + is.name, Medium: "email", Address: "x@example.org",
		})
		if !errors.Is(err, errServerNotTrusted) {
			t.Fatalf("invite via id_server with scheme: err = %v, want M_SERVER_NOT_TRUSTED", err)
		}
		if got := is.requests(); len(got) != 0 {
			t.Fatalf("identity server got %d requests, want none: %+v", len(got), got)
		}
	})

	t.Run("bound 3PID becomes a plain invite after a signed v1 lookup", func(t *testing.T) {
		bob := hs2.Register(t, "bob")
		is.bind("bob@example.org", bob.UserID)
		is.reset()
		if _, err := alice.InviteUserByThirdParty(ctx, room.RoomID, &mautrix.ReqInvite3PID{
			IDServer: is.name, Medium: "email", Address: "bob@example.org",
		}); err != nil {
			t.Fatalf("3PID invite: %v", err)
		}
		reqs := is.requests()
		if len(reqs) != 2 {
			t.Fatalf("identity server requests = %+v, want lookup then pubkey", reqs)
		}
		if r := reqs[0]; r.Method != http.MethodGet || r.Path != "/_matrix/identity/api/v1/lookup" ||
			r.Query != "medium=email&address=bob%40example.org" || r.Authorization != "" {
			t.Fatalf("lookup request = %+v", r)
		}
		if r := reqs[1]; r.Method != http.MethodGet || r.Path != "/_matrix/identity/api/v1/pubkey/ed25519:0" {
			t.Fatalf("pubkey request = %+v", r)
		}
		inv := SyncUntil(t, bob, 20*time.Second, "the invite", func(r *mautrix.RespSync) bool {
			_, ok := r.Rooms.Invite[room.RoomID]
			return ok
		})
		for _, ev := range inv.Rooms.Invite[room.RoomID].State.Events {
			if ev.Type == event.StateMember && ev.GetStateKey() == bob.UserID.String() {
				if membership(ev) != event.MembershipInvite || ev.Content.AsMember().ThirdPartyInvite != nil {
					t.Fatalf("invite event content = %s, want a plain invite", ev.Content.VeryRaw)
				}
			}
		}
	})

	t.Run("lookup with a bad signature fails the invite", func(t *testing.T) {
		mallory := hs2.UserID("mallory")
		is.bind("forged@example.org", mallory)
		is.forgeLookups(true)
		defer is.forgeLookups(false)
		is.reset()
		_, err := alice.InviteUserByThirdParty(ctx, room.RoomID, &mautrix.ReqInvite3PID{
			IDServer: is.name, Medium: "email", Address: "forged@example.org",
		})
		if err == nil {
			t.Fatal("invite with a forged lookup signature succeeded")
		}
		if n := len(is.requests()); n != 2 {
			t.Fatalf("identity server requests = %d, want lookup and pubkey", n)
		}
	})

	t.Run("unbound 3PID: form store-invite, then onbind turns it into an invite", func(t *testing.T) {
		is.reset()
		if _, err := alice.InviteUserByThirdParty(ctx, room.RoomID, &mautrix.ReqInvite3PID{
			IDServer: is.name, Medium: "email", Address: "carol@example.org",
		}); err != nil {
			t.Fatalf("3PID invite: %v", err)
		}
		reqs := is.requests()
		if len(reqs) != 2 || reqs[0].Path != "/_matrix/identity/api/v1/lookup" {
			t.Fatalf("identity server requests = %+v, want lookup then store-invite", reqs)
		}
		si := reqs[1]
		if si.Method != http.MethodPost || si.Path != "/_matrix/identity/api/v1/store-invite" ||
			si.ContentType != "application/x-www-form-urlencoded" || si.Authorization != "" {
			t.Fatalf("store-invite request = %+v", si)
		}
		wantForm := map[string]string{
			"medium": "email", "address": "carol@example.org", "room_id": room.RoomID.String(),
			"sender": alice.UserID.String(), "sender_display_name": "alice",
		}
		if fmt.Sprint(si.Form) != fmt.Sprint(wantForm) {
			t.Fatalf("store-invite form = %v, want %v", si.Form, wantForm)
		}

		// The room now holds an m.room.third_party_invite keyed by our token.
		var tpi event.ThirdPartyInviteEventContent
		if err := alice.StateEvent(ctx, room.RoomID, event.StateThirdPartyInvite, is.token, &tpi); err != nil {
			t.Fatalf("third-party invite state event: %v", err)
		}
		if want := "https://" + is.name + "/_matrix/identity/api/v1/pubkey/isvalid"; tpi.KeyValidityURL != want {
			t.Fatalf("key_validity_url = %q, want %q", tpi.KeyValidityURL, want)
		}
		if len(tpi.PublicKeys) != 1 || string(tpi.PublicKeys[0].PublicKey) != is.pubB64() {
			t.Fatalf("public_keys = %+v", tpi.PublicKeys)
		}

		// hs2 knows the room from bob's invite above; without that the onbind
		// fails (see the next subtest).
		carol := hs2.Register(t, "carol")
		client := fed.HTTPClient()
		// A forged "signed" block must not produce an invite.
		status, body := is.onbind(t, client, hs2, "carol@example.org", carol.UserID, room.RoomID, alice.UserID, true)
		if status == http.StatusOK {
			t.Fatalf("onbind with a forged signature: %d %s, want an error", status, body)
		}
		status, body = is.onbind(t, client, hs2, "carol@example.org", carol.UserID, room.RoomID, alice.UserID, false)
		if status != http.StatusOK {
			t.Fatalf("onbind: %d %s", status, body)
		}
		inv := SyncUntil(t, carol, 20*time.Second, "the invite from onbind", func(r *mautrix.RespSync) bool {
			_, ok := r.Rooms.Invite[room.RoomID]
			return ok
		})
		var found bool
		for _, ev := range inv.Rooms.Invite[room.RoomID].State.Events {
			if ev.Type == event.StateMember && ev.GetStateKey() == carol.UserID.String() {
				found = true
				if membership(ev) != event.MembershipInvite || ev.Content.AsMember().ThirdPartyInvite == nil ||
					ev.Content.AsMember().ThirdPartyInvite.Signed.Token != is.token {
					t.Fatalf("invite content = %s, want third_party_invite with our token", ev.Content.VeryRaw)
				}
			}
		}
		if !found {
			t.Fatal("invite state lacks carol's member event")
		}
		if _, err := carol.JoinRoomByID(ctx, room.RoomID); err != nil {
			t.Fatalf("carol joins: %v", err)
		}
		SyncUntil(t, alice, 20*time.Second, "carol joining", func(r *mautrix.RespSync) bool {
			return hasMembership(r, room.RoomID, carol.UserID, event.MembershipJoin)
		})
	})

	t.Run("onbind for a room the invitee's server never saw is refused", func(t *testing.T) {
		// Dendrite v0.15.2 looks the room version up locally before anything
		// else, so the onbind fails on a homeserver that knows nothing of the room.
		lone, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat"})
		if err != nil {
			t.Fatalf("create room: %v", err)
		}
		if _, err := alice.InviteUserByThirdParty(ctx, lone.RoomID, &mautrix.ReqInvite3PID{
			IDServer: is.name, Medium: "email", Address: "dave@example.org",
		}); err != nil {
			t.Fatalf("3PID invite: %v", err)
		}
		dave := hs2.Register(t, "dave")
		status, body := is.onbind(t, fed.HTTPClient(), hs2, "dave@example.org", dave.UserID, lone.RoomID, alice.UserID, false)
		if status != http.StatusBadRequest || !strings.Contains(body, "M_UNSUPPORTED_ROOM_VERSION") {
			t.Fatalf("onbind to a server outside the room: %d %s, want 400 M_UNSUPPORTED_ROOM_VERSION", status, body)
		}
		// The same onbind to the room's own server (where dave is not local) is refused too.
		status, body = is.onbind(t, fed.HTTPClient(), hs1, "dave@example.org", dave.UserID, lone.RoomID, alice.UserID, false)
		if status != http.StatusInternalServerError {
			t.Fatalf("onbind for a remote mxid: %d %s, want 500", status, body)
		}
	})

	t.Run("account 3PID: form requestToken, getValidated3pid, form bind", func(t *testing.T) {
		is.reset()
		var tok struct {
			SID string `json:"sid"`
		}
		if _, err := alice.MakeRequest(ctx, http.MethodPost, alice.BuildClientURL("v3", "account", "3pid", "email", "requestToken"), map[string]any{
			"id_server": is.name, "client_secret": "s3cret", "email": "alice@example.org", "send_attempt": 1,
		}, &tok); err != nil {
			t.Fatalf("requestToken: %v", err)
		}
		if tok.SID != "sid-1" {
			t.Fatalf("sid = %q, want the identity server's", tok.SID)
		}
		if _, err := alice.MakeRequest(ctx, http.MethodPost, alice.BuildClientURL("v3", "account", "3pid"), map[string]any{
			"three_pid_creds": map[string]any{"sid": "sid-1", "client_secret": "s3cret", "id_server": is.name, "id_access_token": "ignored"},
			"bind":            true,
		}, nil); err != nil {
			t.Fatalf("add 3PID: %v", err)
		}
		reqs := is.requests()
		want := []isRequest{
			{Method: http.MethodPost, Path: "/_matrix/identity/api/v1/validate/email/requestToken", ContentType: "application/x-www-form-urlencoded",
				Form: map[string]string{"client_secret": "s3cret", "email": "alice@example.org", "send_attempt": "1"}},
			{Method: http.MethodGet, Path: "/_matrix/identity/api/v1/3pid/getValidated3pid", Query: "sid=sid-1&client_secret=s3cret"},
			{Method: http.MethodPost, Path: "/_matrix/identity/api/v1/3pid/bind", ContentType: "application/x-www-form-urlencoded",
				Form: map[string]string{"sid": "sid-1", "client_secret": "s3cret", "mxid": alice.UserID.String()}},
		}
		if fmt.Sprintf("%+v", reqs) != fmt.Sprintf("%+v", want) {
			t.Fatalf("identity server requests:\n got %+v\nwant %+v", reqs, want)
		}
		// Dendrite has no /account/3pid/bind or /unbind, and /delete never calls the identity server.
		is.reset()
		if _, err := alice.MakeRequest(ctx, http.MethodPost, alice.BuildClientURL("v3", "account", "3pid", "unbind"), map[string]any{
			"id_server": is.name, "medium": "email", "address": "alice@example.org",
		}, nil); err == nil {
			t.Fatal("/account/3pid/unbind succeeded, want it unknown")
		}
		if _, err := alice.MakeRequest(ctx, http.MethodPost, alice.BuildClientURL("v3", "account", "3pid", "delete"), map[string]any{
			"id_server": is.name, "medium": "email", "address": "alice@example.org",
		}, nil); err != nil {
			t.Fatalf("/account/3pid/delete: %v", err)
		}
		if got := is.requests(); len(got) != 0 {
			t.Fatalf("identity server got %+v, want nothing", got)
		}
	})
}

var errServerNotTrusted = mautrix.RespError{ErrCode: "M_SERVER_NOT_TRUSTED"}

// probeIS is a minimal identity server speaking the v1 calls Dendrite makes,
// recording each request.
type probeIS struct {
	name  string // host:port, as clients pass it in id_server
	key   ed25519.PrivateKey
	token string

	mu       sync.Mutex
	reqs     []isRequest
	bindings map[string]id.UserID
	forge    bool
}

type isRequest struct {
	Method, Path, Query, ContentType, Authorization string
	Form                                            map[string]string
}

func newProbeIS(t *testing.T, ca *pkitest.CA) *probeIS {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	is := &probeIS{key: key, token: "tok" + fmt.Sprint(time.Now().UnixNano()), bindings: map[string]id.UserID{}}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(is.serve))
	srv.TLS = ca.ServerTLSConfig(t)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	is.name = strings.Replace(srv.Listener.Addr().String(), "127.0.0.1", "localhost", 1)
	return is
}

func (is *probeIS) pubB64() string {
	return base64.RawStdEncoding.EncodeToString(is.key.Public().(ed25519.PublicKey))
}

func (is *probeIS) bind(address string, mxid id.UserID) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.bindings[address] = mxid
}

func (is *probeIS) forgeLookups(on bool) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.forge = on
}

func (is *probeIS) reset() {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.reqs = nil
}

func (is *probeIS) requests() []isRequest {
	is.mu.Lock()
	defer is.mu.Unlock()
	return append([]isRequest(nil), is.reqs...)
}

func (is *probeIS) serve(w http.ResponseWriter, r *http.Request) {
	rec := isRequest{
		Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery,
		ContentType: r.Header.Get("Content-Type"), Authorization: r.Header.Get("Authorization"),
	}
	r.Body = http.MaxBytesReader(w, r.Body, 1<<16)
	if r.Method == http.MethodPost && rec.ContentType == "application/x-www-form-urlencoded" {
		if err := r.ParseForm(); err == nil {
			rec.Form = map[string]string{}
			for k, v := range r.PostForm {
				rec.Form[k] = strings.Join(v, ",")
			}
		}
	}
	is.mu.Lock()
	is.reqs = append(is.reqs, rec)
	mxid, bound := is.bindings[r.URL.Query().Get("address")]
	forge := is.forge
	is.mu.Unlock()

	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/_matrix/identity/api/v1/lookup":
		if !bound {
			writeJSON(w, http.StatusOK, map[string]any{})
			return
		}
		now := time.Now().UnixMilli()
		res := map[string]any{
			"address": r.URL.Query().Get("address"), "medium": r.URL.Query().Get("medium"),
			"mxid": mxid.String(), "not_before": now - 60_000, "not_after": now + 3_600_000, "ts": now,
		}
		is.sign(res, forge)
		writeJSON(w, http.StatusOK, res)
	case r.Method == http.MethodGet && r.URL.Path == "/_matrix/identity/api/v1/pubkey/ed25519:0":
		writeJSON(w, http.StatusOK, map[string]any{"public_key": is.pubB64()})
	case r.Method == http.MethodPost && r.URL.Path == "/_matrix/identity/api/v1/store-invite":
		pub := is.pubB64()
		writeJSON(w, http.StatusOK, map[string]any{
			"token": is.token, "public_key": pub, "display_name": "c...@e...",
			"public_keys": []any{map[string]any{
				"public_key": pub, "key_validity_url": "https://" + is.name + "/_matrix/identity/api/v1/pubkey/isvalid",
			}},
		})
	case r.Method == http.MethodPost && r.URL.Path == "/_matrix/identity/api/v1/validate/email/requestToken":
		writeJSON(w, http.StatusOK, map[string]any{"sid": "sid-1"})
	case r.Method == http.MethodGet && r.URL.Path == "/_matrix/identity/api/v1/3pid/getValidated3pid":
		writeJSON(w, http.StatusOK, map[string]any{"medium": "email", "address": "alice@example.org", "validated_at": time.Now().UnixMilli()})
	case r.Method == http.MethodPost && r.URL.Path == "/_matrix/identity/api/v1/3pid/bind":
		writeJSON(w, http.StatusOK, map[string]any{})
	default:
		writeJSON(w, http.StatusNotFound, map[string]any{"errcode": "M_UNRECOGNIZED", "error": "not in this probe"})
	}
}

// sign adds an ed25519:0 signature of obj's canonical JSON under is.name;
// forge signs different bytes.
func (is *probeIS) sign(obj map[string]any, forge bool) {
	msg := canonical(obj)
	if forge {
		msg = append(msg, ' ')
	}
	sig := base64.RawStdEncoding.EncodeToString(ed25519.Sign(is.key, msg))
	obj["signatures"] = map[string]any{is.name: map[string]any{"ed25519:0": sig}}
}

// onbind plays the identity server's callback to the invitee's homeserver.
func (is *probeIS) onbind(t *testing.T, client *http.Client, hs *Homeserver, address string, mxid id.UserID, room id.RoomID, sender id.UserID, forge bool) (int, string) {
	t.Helper()
	signed := map[string]any{"mxid": mxid.String(), "token": is.token}
	is.sign(signed, forge)
	body, err := json.Marshal(map[string]any{
		"medium": "email", "address": address, "mxid": mxid.String(),
		"invites": []any{map[string]any{
			"medium": "email", "address": address, "mxid": mxid.String(),
			"room_id": room.String(), "sender": sender.String(), "token": is.token, "signed": signed,
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, hs.FederationURL+"/_matrix/federation/v1/3pid/onbind", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("onbind: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	return resp.StatusCode, string(b)
}

// canonical is Matrix canonical JSON for the flat test objects used here:
// sorted keys (encoding/json sorts map keys), no spaces, no HTML escaping.
func canonical(obj map[string]any) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(obj); err != nil {
		panic(err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
