package e2e

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/ozo-platform/ozo-identity/internal/pkitest"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore/dbtest"
)

// Bounds for waits that cross processes: federation, onbind delivery, mail.
const (
	syncWait = 30 * time.Second
	mailWait = 15 * time.Second
)

// outsider is a loopback address outside the identity server's v1 networks
// (127.0.0.1/32 here): on Linux all of 127.0.0.0/8 is local.
var outsider = net.ParseIP("127.0.0.2")

// TestIdentityFlows runs the invite and binding flows of issue 3 between two
// real Dendrite homeservers and ozo-identity, over HTTPS on every hop. The
// flows share one federation, one identity server and Alice's rooms, and run
// in order: each builds on the state the previous ones left (who joined which
// room, which 3PIDs are bound). They run once with the identity server on
// SQLite and once on PostgreSQL.
func TestIdentityFlows(t *testing.T) {
	for _, engine := range []sqlstore.Engine{sqlstore.SQLite, sqlstore.Postgres} {
		t.Run(string(engine), func(t *testing.T) { runFlows(t, engine) })
	}
}

func runFlows(t *testing.T, engine sqlstore.Engine) {
	ca := pkitest.NewCA(t)
	dbURL := dbtest.URL(t, engine) // before the server, so the database outlives it
	is := StartIdentityServer(t, ca, ISOptions{V1Networks: []string{"127.0.0.1/32"}, DatabaseURL: dbURL})
	fed := StartFederation(t, Options{CA: ca, IdentityServers: []string{is.Name}})
	f := &flows{is: is, fed: fed, hs1: fed.Homeservers[0], hs2: fed.Homeservers[1]}
	f.alice = f.hs1.Register(t, "alice")
	room, err := f.alice.CreateRoom(t.Context(), &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "Zorgteam"})
	if err != nil {
		t.Fatalf("create room: %v", err)
	}
	f.room = room.RoomID

	// Each flow needs the ones before it; stop at the first that fails.
	for _, step := range []struct {
		name string
		run  func(*testing.T)
	}{
		{"b/bound email gives a plain invite", f.boundEmail},
		{"admin API refuses a missing or wrong token", f.adminRefused},
		{"c/uzi bound by the admin API gives a plain invite", f.uziViaAdmin},
		{"malformed uzi is refused at the lookup", f.malformedUZI},
		{"a/invite to an unbound email reaches Bob after he binds it", f.unboundEmail},
		{"e/after unbind the email is invited by 3PID again", f.unbindThenInvite},
		{"d/v1 is served only inside the configured networks", f.v1Gate},
		{"onbind is accepted only with the identity server's signature", f.forgedOnBind},
	} {
		if !t.Run(step.name, step.run) {
			t.FailNow()
		}
	}
}

type flows struct {
	is       *IdentityServer
	fed      *Federation
	hs1, hs2 *Homeserver
	alice    *mautrix.Client
	// room ("Zorgteam") is joined by Carol of hs2 in the first flow.
	room id.RoomID
	// pending ("Overleg") is known to hs2 only through Dave's pending invite:
	// the state in which Dendrite completes an onbind (see unboundEmail).
	pending id.RoomID

	carol *mautrix.Client
	bob   *mautrix.Client
	// bobSID and bobSecret are Bob's validated session, used later to unbind.
	bobSID, bobSecret string
}

// boundEmail is flow (b): Carol on hs2 validates and binds her email through
// her homeserver; Alice's invite to that email becomes an ordinary invite.
func (f *flows) boundEmail(t *testing.T) {
	ctx := t.Context()
	const addr = "carol@example.org"
	f.carol = f.hs2.Register(t, "carol")
	bindEmailThroughHomeserver(t, f.carol, f.is, addr)

	mails := len(f.is.Mail.To(addr))
	if _, err := f.alice.InviteUserByThirdParty(ctx, f.room, &mautrix.ReqInvite3PID{
		IDServer: f.is.Name, Medium: "email", Address: addr,
	}); err != nil {
		t.Fatalf("invite %s: %v", addr, err)
	}
	ev := waitInvite(t, f.carol, f.room)
	if ev.Sender != f.alice.UserID || ev.Content.AsMember().ThirdPartyInvite != nil {
		t.Fatalf("carol's invite = sender %s content %s, want a plain invite from alice", ev.Sender, ev.Content.VeryRaw)
	}
	if n := len(thirdPartyInvites(t, f.alice, f.room)); n != 0 {
		t.Fatalf("room has %d m.room.third_party_invite events, want none for a bound email", n)
	}
	// store-invite mails before it answers, so any invite mail would be here by now.
	if n := len(f.is.Mail.To(addr)); n != mails {
		t.Fatalf("%d new mails to %s, want none: a bound address is invited directly", n-mails, addr)
	}
	if _, err := f.carol.JoinRoomByID(ctx, f.room); err != nil {
		t.Fatalf("carol joins: %v", err)
	}
	SyncUntil(t, f.alice, syncWait, "carol joining", func(r *mautrix.RespSync) bool {
		return hasMembership(r, f.room, f.carol.UserID, event.MembershipJoin)
	})
}

const daveUZI = "123456789"

// adminRefused: admin calls without a token, with a wrong one or with another
// scheme are refused, audited, and bind nothing.
func (f *flows) adminRefused(t *testing.T) {
	body := map[string]string{"medium": "uzi", "address": daveUZI, "mxid": f.hs2.UserID("mallory").String()}
	for _, tc := range []struct {
		name, auth string
		status     int
		errcode    string
	}{
		{"no token", "", http.StatusUnauthorized, "M_UNAUTHORIZED"},
		{"wrong token", "Bearer " + f.is.AdminToken + "x", http.StatusForbidden, "M_FORBIDDEN"},
		{"basic auth", "Basic " + base64.StdEncoding.EncodeToString([]byte("admin:"+f.is.AdminToken)), http.StatusUnauthorized, "M_UNAUTHORIZED"},
	} {
		status, resp := f.is.call(t, nil, http.MethodPost, "/_ozo/admin/v1/bindings", tc.auth, body)
		if status != tc.status || resp["errcode"] != tc.errcode {
			t.Errorf("%s: %d %v, want %d %s", tc.name, status, resp, tc.status, tc.errcode)
		}
	}
	if status, resp := f.is.call(t, nil, http.MethodGet, "/_ozo/admin/v1/bindings?medium=uzi", "", nil); status != http.StatusUnauthorized {
		t.Errorf("list bindings without a token: %d %v, want 401", status, resp)
	}
	// Nothing changed: no uzi binding, and the lookup homeservers make finds nothing.
	status, resp := f.is.call(t, nil, http.MethodGet, "/_ozo/admin/v1/bindings?medium=uzi", "Bearer "+f.is.AdminToken, nil)
	if list, ok := resp["bindings"].([]any); status != http.StatusOK || !ok || len(list) != 0 {
		t.Fatalf("uzi bindings after refused calls: %d %v, want none", status, resp)
	}
	if status, resp := f.is.v1Lookup(t, nil, "uzi", daveUZI); status != http.StatusOK || len(resp) != 0 {
		t.Fatalf("v1 lookup of uzi %s: %d %v, want 200 {}", daveUZI, status, resp)
	}
	// Each refusal is in the audit trail, under who tried: the first of each kind per client
	// and interval at once, the rest counted into one record when the interval ends.
	if err := f.is.App.Lookups.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	if rep, err := f.is.App.VerifyAudit(t.Context(), nil); err != nil {
		t.Fatalf("audit chain: %+v %v", rep, err)
	}
	status, resp = f.is.call(t, nil, http.MethodGet, "/_ozo/admin/v1/audit?limit=1000", "Bearer "+f.is.AdminToken, nil)
	if status != http.StatusOK {
		t.Fatalf("audit: %d %v", status, resp)
	}
	attempts := map[string]float64{}
	firstPOST := ""
	for _, r := range resp["records"].([]any) {
		rec := r.(map[string]any)
		if rec["action"] != "admin.call" || rec["outcome"] != "refused" {
			continue
		}
		who := rec["actor"].(map[string]any)["id"].(string)
		attempts[who] += rec["count"].(float64)
		if firstPOST == "" && rec["resource"] == "POST /_ozo/admin/v1/bindings" {
			status, _, _ := strings.Cut(rec["detail"].(string), " ")
			firstPOST = who + " " + status
		}
	}
	// No token, Basic, and the GET without a token; one wrong token.
	want := map[string]float64{"no-token": 3, "wrong-token": 1}
	if !maps.Equal(attempts, want) || firstPOST != "no-token status=401" {
		t.Fatalf("audited refused admin attempts = %v (first POST %q), want %v", attempts, firstPOST, want)
	}
}

// uziViaAdmin is flow (c): an operator binds Dave's UZI number; Alice's invite
// to medium uzi reaches Dave as an ordinary invite. It happens in a second
// room, which Dave leaves pending for the unbound-email flow.
func (f *flows) uziViaAdmin(t *testing.T) {
	ctx := t.Context()
	room, err := f.alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "Overleg"})
	if err != nil {
		t.Fatalf("create room: %v", err)
	}
	f.pending = room.RoomID
	dave := f.hs2.Register(t, "dave")
	status, assoc := f.is.call(t, nil, http.MethodPost, "/_ozo/admin/v1/bindings", "Bearer "+f.is.AdminToken,
		map[string]string{"medium": "uzi", "address": daveUZI, "mxid": dave.UserID.String()})
	if status != http.StatusOK || assoc["mxid"] != dave.UserID.String() || assoc["address"] != daveUZI {
		t.Fatalf("admin bind: %d %v", status, assoc)
	}
	if _, err := f.alice.InviteUserByThirdParty(ctx, f.pending, &mautrix.ReqInvite3PID{
		IDServer: f.is.Name, Medium: "uzi", Address: daveUZI,
	}); err != nil {
		t.Fatalf("invite uzi %s: %v", daveUZI, err)
	}
	ev := waitInvite(t, dave, f.pending)
	if ev.Sender != f.alice.UserID || ev.Content.AsMember().ThirdPartyInvite != nil {
		t.Fatalf("dave's invite = sender %s content %s, want a plain invite from alice", ev.Sender, ev.Content.VeryRaw)
	}
	if n := len(thirdPartyInvites(t, f.alice, f.pending)); n != 0 {
		t.Fatalf("room has %d m.room.third_party_invite events, want none", n)
	}
}

// malformedUZI: a UZI number must have nine digits. The identity server
// answers Dendrite's v1 lookup with M_INVALID_PARAM, so the invite fails and
// leaves nothing in the room.
func (f *flows) malformedUZI(t *testing.T) {
	status, resp := f.is.v1Lookup(t, nil, "uzi", "12345")
	if status != http.StatusBadRequest || resp["errcode"] != "M_INVALID_PARAM" {
		t.Fatalf("v1 lookup of uzi 12345: %d %v, want 400 M_INVALID_PARAM", status, resp)
	}
	before := stateCount(t, f.alice, f.room)
	_, err := f.alice.InviteUserByThirdParty(t.Context(), f.room, &mautrix.ReqInvite3PID{
		IDServer: f.is.Name, Medium: "uzi", Address: "12345",
	})
	var httpErr mautrix.HTTPError
	if !errors.As(err, &httpErr) || httpErr.Response == nil || httpErr.Response.StatusCode < 400 {
		t.Fatalf("invite uzi 12345: err = %v, want an HTTP error from the homeserver", err)
	}
	if after := stateCount(t, f.alice, f.room); after != before {
		t.Fatalf("room state went from %d to %d events after a failed invite", before, after)
	}
}

// unboundEmail is flow (a): Alice invites Bob's email before Bob has an
// account. The identity server stores the invite and mails Bob; Bob registers
// on hs2, validates and binds his email through hs2, the identity server
// calls hs2's onbind, and Bob gets the invite, joins, and Alice sees it.
//
// It runs in the pending room because of two Dendrite v0.15.2 limitations
// (docs/homeservers.md): the invitee's server refuses an onbind for a room it
// does not know at all (400 M_UNSUPPORTED_ROOM_VERSION), and when it is
// joined to the room it builds the invite itself, signed by itself only, so
// the inviter's server rejects it and the invitee can never join. Only when it
// knows the room without being in it does it ask the inviter's server to
// build the invite (exchange_third_party_invite), which works.
func (f *flows) unboundEmail(t *testing.T) {
	ctx := t.Context()
	const addr = "bob@example.org"
	mails := len(f.is.Mail.To(addr))
	if _, err := f.alice.InviteUserByThirdParty(ctx, f.pending, &mautrix.ReqInvite3PID{
		IDServer: f.is.Name, Medium: "email", Address: addr,
	}); err != nil {
		t.Fatalf("invite %s: %v", addr, err)
	}

	// hs1 stored the invite at the identity server and put its token in the room.
	tpis := thirdPartyInvites(t, f.alice, f.pending)
	if len(tpis) != 1 {
		t.Fatalf("room has %d m.room.third_party_invite events, want 1", len(tpis))
	}
	var token string
	var tpi *event.ThirdPartyInviteEventContent
	for k, v := range tpis {
		token, tpi = k, v
	}
	if tpi.DisplayName != "bob...@exa..." {
		t.Errorf("third-party invite display_name = %q, want the redacted address", tpi.DisplayName)
	}
	stored, err := f.is.App.Store.GetInvite(ctx, token)
	if err != nil || stored.ThreePID.Medium != "email" || stored.ThreePID.Address != addr ||
		stored.RoomID != f.pending.String() || stored.Sender != f.alice.UserID.String() {
		t.Fatalf("invite %s at the identity server = %+v, %v", token, stored, err)
	}
	pub := id.Ed25519(f.is.App.Service.Signer().PublicKey())
	wantKey := event.ThirdPartyInviteKey{PublicKey: pub, KeyValidityURL: f.is.URL + "/_matrix/identity/api/v1/pubkey/isvalid"}
	if tpi.PublicKey != pub || !slices.Contains(tpi.PublicKeys, wantKey) {
		t.Errorf("third-party invite keys = %s %+v, want the identity server's key %s", tpi.PublicKey, tpi.PublicKeys, pub)
	}

	// The invite mail reached Bob's mailbox.
	invite := f.is.Mail.Wait(t, addr, mails+1, mailWait)
	if !strings.Contains(invite.Subject, "Invitation from alice") || !strings.Contains(invite.Text, "https://chat.ozo.example.org") {
		t.Fatalf("invite mail: subject %q, text:\n%s", invite.Subject, invite.Text)
	}
	if !slices.Equal(invite.To, []string{addr}) {
		t.Fatalf("invite mail recipients = %v, want only %s", invite.To, addr)
	}

	f.bob = f.hs2.Register(t, "bob")
	f.bobSID, f.bobSecret = bindEmailThroughHomeserver(t, f.bob, f.is, addr)

	// The identity server's onbind turned the stored invite into Bob's invite.
	ev := waitInvite(t, f.bob, f.pending)
	tp := ev.Content.AsMember().ThirdPartyInvite
	if ev.Sender != f.alice.UserID || tp == nil || tp.Signed.Token != token || tp.Signed.MXID != f.bob.UserID.String() {
		t.Fatalf("bob's invite = sender %s content %s, want alice's third-party invite with token %s", ev.Sender, ev.Content.VeryRaw, token)
	}
	if _, ok := tp.Signed.Signatures[f.is.Name]["ed25519:0"]; !ok {
		t.Fatalf("invite's signed block lacks the identity server's signature: %s", ev.Content.VeryRaw)
	}
	// hs1 sends hs2 the invite before it stores the event itself; a join
	// before that is refused, so wait until the room's server has it.
	SyncUntil(t, f.alice, syncWait, "bob's invite", func(r *mautrix.RespSync) bool {
		return hasMembership(r, f.pending, f.bob.UserID, event.MembershipInvite)
	})
	if _, err := f.bob.JoinRoomByID(ctx, f.pending); err != nil {
		t.Fatalf("bob joins: %v", err)
	}
	SyncUntil(t, f.alice, syncWait, "bob joining", func(r *mautrix.RespSync) bool {
		return hasMembership(r, f.pending, f.bob.UserID, event.MembershipJoin)
	})
}

// unbindThenInvite is flow (e): Bob unbinds his email at the identity server
// with his validated session (Dendrite never calls unbind), and a new invite
// to that email is a 3PID invite again, with a new mail.
func (f *flows) unbindThenInvite(t *testing.T) {
	ctx := t.Context()
	const addr = "bob@example.org"
	unbind := func(secret string) (int, map[string]any) {
		return f.is.call(t, nil, http.MethodPost, "/_matrix/identity/v2/3pid/unbind", "", map[string]any{
			"sid": f.bobSID, "client_secret": secret, "mxid": f.bob.UserID.String(),
			"threepid": map[string]string{"medium": "email", "address": addr},
		})
	}
	// A wrong client secret unbinds nothing.
	if status, resp := unbind(f.bobSecret + "x"); status != http.StatusNotFound || resp["errcode"] != "M_NO_VALID_SESSION" {
		t.Fatalf("unbind with a wrong secret: %d %v, want 404 M_NO_VALID_SESSION", status, resp)
	}
	if status, resp := f.is.v1Lookup(t, nil, "email", addr); status != http.StatusOK || resp["mxid"] != f.bob.UserID.String() {
		t.Fatalf("lookup after a refused unbind: %d %v, want still bound to bob", status, resp)
	}
	if status, resp := unbind(f.bobSecret); status != http.StatusOK {
		t.Fatalf("unbind: %d %v", status, resp)
	}
	if status, resp := f.is.v1Lookup(t, nil, "email", addr); status != http.StatusOK || len(resp) != 0 {
		t.Fatalf("lookup after unbind: %d %v, want 200 {}", status, resp)
	}

	room, err := f.alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "Overdracht"})
	if err != nil {
		t.Fatalf("create room: %v", err)
	}
	mails := len(f.is.Mail.To(addr))
	if _, err := f.alice.InviteUserByThirdParty(ctx, room.RoomID, &mautrix.ReqInvite3PID{
		IDServer: f.is.Name, Medium: "email", Address: addr,
	}); err != nil {
		t.Fatalf("invite %s: %v", addr, err)
	}
	if n := len(thirdPartyInvites(t, f.alice, room.RoomID)); n != 1 {
		t.Fatalf("new room has %d m.room.third_party_invite events, want 1", n)
	}
	var member event.MemberEventContent
	err = f.alice.StateEvent(ctx, room.RoomID, event.StateMember, f.bob.UserID.String(), &member)
	if !errors.Is(err, mautrix.MNotFound) {
		t.Fatalf("bob's member event in the new room: %+v, err %v; want none", member, err)
	}
	invite := f.is.Mail.Wait(t, addr, mails+1, mailWait)
	if !strings.Contains(invite.Subject, "Invitation from alice") {
		t.Fatalf("new mail to %s has subject %q, want an invite", addr, invite.Subject)
	}
}

// v1Gate is flow (d). The identity server serves v1 to 127.0.0.1/32 only:
// Dendrite, calling from 127.0.0.1, stores an invite through v1 lookup and
// store-invite; the same calls from 127.0.0.2 are refused, while v2 still
// answers that address.
func (f *flows) v1Gate(t *testing.T) {
	const inside, outside = "gate@example.org", "outside@example.org"
	mails := len(f.is.Mail.To(inside))
	f.inviteEmail(t, f.room, inside)
	f.is.Mail.Wait(t, inside, mails+1, mailWait)
	if status, resp := f.is.v1Lookup(t, nil, "email", "carol@example.org"); status != http.StatusOK || resp["mxid"] != f.carol.UserID.String() {
		t.Fatalf("v1 lookup from 127.0.0.1: %d %v, want carol", status, resp)
	}

	if status, resp := f.is.v1Lookup(t, outsider, "email", "carol@example.org"); status != http.StatusForbidden || resp["errcode"] != "M_FORBIDDEN" {
		t.Fatalf("v1 lookup from %s: %d %v, want 403 M_FORBIDDEN", outsider, status, resp)
	}
	form := url.Values{"medium": {"email"}, "address": {outside}, "room_id": {f.room.String()},
		"sender": {f.alice.UserID.String()}}
	for _, c := range []struct{ method, path, contentType, body string }{
		{http.MethodPost, "/_matrix/identity/api/v1/store-invite", "application/x-www-form-urlencoded", form.Encode()},
		{http.MethodGet, "/_matrix/identity/api/v1/pubkey/ed25519:0", "", ""},
		{http.MethodPost, "/_matrix/identity/api/v1/validate/email/requestToken", "application/x-www-form-urlencoded",
			url.Values{"client_secret": {"s3cret"}, "email": {outside}, "send_attempt": {"1"}}.Encode()},
		{http.MethodPost, "/_matrix/identity/api/v1/3pid/bind", "application/x-www-form-urlencoded",
			url.Values{"sid": {f.bobSID}, "client_secret": {f.bobSecret}, "mxid": {f.hs2.UserID("mallory").String()}}.Encode()},
		{http.MethodGet, "/_matrix/identity/api/v1", "", ""},
	} {
		status, resp := f.is.raw(t, outsider, c.method, c.path, "", c.contentType, c.body)
		if status != http.StatusForbidden || resp["errcode"] != "M_FORBIDDEN" {
			t.Errorf("%s %s from %s: %d %v, want 403 M_FORBIDDEN", c.method, c.path, outsider, status, resp)
		}
	}
	if n := len(f.is.Mail.To(outside)); n != 0 {
		t.Errorf("refused v1 calls still mailed %s %d times", outside, n)
	}
	if status, resp := f.is.v1Lookup(t, nil, "email", "bob@example.org"); status != http.StatusOK || len(resp) != 0 {
		t.Errorf("bob's address after a refused v1 bind: %d %v, want unbound", status, resp)
	}
	// A forwarded-for header naming an inside address is not believed from a client that is no trusted proxy.
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet,
		f.is.URL+"/_matrix/identity/api/v1/lookup?medium=email&address=carol%40example.org", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Forwarded-For", "127.0.0.1")
	resp, err := f.is.HTTPClient(outsider).Do(req)
	if err != nil {
		t.Fatalf("v1 lookup with X-Forwarded-For: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("v1 lookup from %s claiming X-Forwarded-For 127.0.0.1: %s, want 403", outsider, resp.Status)
	}
	// The refusal is the v1 gate, not the address: v2 answers it.
	if status, resp := f.is.call(t, outsider, http.MethodGet, "/_matrix/identity/v2/pubkey/ed25519:0", "", nil); status != http.StatusOK || resp["public_key"] == nil {
		t.Errorf("v2 pubkey from %s: %d %v, want 200", outsider, status, resp)
	}
}

// forgedOnBind posts onbind bodies to hs2 that differ only in their
// signature. Signed by another Ed25519 key under the identity server's name,
// hs2 refuses them and the room gets no member event, on both of Dendrite's
// paths: in a room hs2 is joined to it checks the signature itself; in a room
// it only knows it asks the room's server (hs1), which checks it. Signed by
// the identity server, the same body produces an invite that Erin can join.
func (f *flows) forgedOnBind(t *testing.T) {
	ctx := t.Context()
	const addr = "erin@example.org"
	erin := f.hs2.Register(t, "erin")

	// A third room, known to hs2 through Carol's pending invite only.
	created, err := f.alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "Verwijzing"})
	if err != nil {
		t.Fatalf("create room: %v", err)
	}
	known := created.RoomID
	if _, err := f.alice.InviteUser(ctx, known, &mautrix.ReqInviteUser{UserID: f.carol.UserID}); err != nil {
		t.Fatalf("invite carol: %v", err)
	}
	waitInvite(t, f.carol, known)

	_, otherKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	forge := func(token string) map[string]any {
		signed := map[string]any{"mxid": erin.UserID.String(), "token": token}
		sig := base64.RawStdEncoding.EncodeToString(ed25519.Sign(otherKey, canonical(signed)))
		signed["signatures"] = map[string]any{f.is.Name: map[string]any{"ed25519:0": sig}}
		return signed
	}
	genuine := func(token string) map[string]any {
		signed := map[string]any{"mxid": erin.UserID.String(), "token": token}
		if err := f.is.App.Service.Signer().Sign(signed); err != nil {
			t.Fatal(err)
		}
		return signed
	}

	// Joined room: hs2 builds the event and its own auth check refuses it.
	joinedToken := f.inviteEmail(t, f.room, addr)
	if status, body := f.onbind(t, erin.UserID, addr, f.room, joinedToken, forge(joinedToken)); status == http.StatusOK {
		t.Fatalf("forged onbind, joined room: %d %s, want it refused", status, body)
	}
	// hs2 handles onbind synchronously: had it accepted the event, Carol (on hs2) would see it now.
	var member event.MemberEventContent
	if err := f.carol.StateEvent(ctx, f.room, event.StateMember, erin.UserID.String(), &member); !errors.Is(err, mautrix.MNotFound) {
		t.Fatalf("erin's member event after a forged onbind: %+v, err %v; want none", member, err)
	}

	// Known room: hs1 builds the event on hs2's request and refuses it.
	token := f.inviteEmail(t, known, addr)
	if status, body := f.onbind(t, erin.UserID, addr, known, token, forge(token)); status == http.StatusOK {
		t.Fatalf("forged onbind, known room: %d %s, want it refused", status, body)
	}
	// hs1 answered hs2 before hs2 answered us, so Alice's server has decided.
	if err := f.alice.StateEvent(ctx, known, event.StateMember, erin.UserID.String(), &member); !errors.Is(err, mautrix.MNotFound) {
		t.Fatalf("erin's member event after a forged onbind: %+v, err %v; want none", member, err)
	}

	// The same body with the identity server's signature is accepted.
	signed := genuine(token)
	if status, body := f.onbind(t, erin.UserID, addr, known, token, signed); status != http.StatusOK {
		t.Fatalf("onbind signed by the identity server: %d %s", status, body)
	}
	if err := f.alice.StateEvent(ctx, known, event.StateMember, erin.UserID.String(), &member); err != nil {
		t.Fatalf("erin's member event after the onbind: %v", err)
	}
	want := signed["signatures"].(map[string]any)[f.is.Name].(map[string]any)["ed25519:0"]
	if member.Membership != event.MembershipInvite || member.ThirdPartyInvite == nil ||
		member.ThirdPartyInvite.Signed.Signatures[f.is.Name]["ed25519:0"] != want {
		t.Fatalf("erin's member event = %+v, want an invite with the identity server's signature", member)
	}
	if _, err := erin.JoinRoomByID(ctx, known); err != nil {
		t.Fatalf("erin joins: %v", err)
	}
	SyncUntil(t, f.alice, syncWait, "erin joining", func(r *mautrix.RespSync) bool {
		return hasMembership(r, known, erin.UserID, event.MembershipJoin)
	})
}

// inviteEmail has Alice invite an unbound email to room and returns the
// token of the m.room.third_party_invite it adds.
func (f *flows) inviteEmail(t *testing.T, room id.RoomID, addr string) string {
	t.Helper()
	before := thirdPartyInvites(t, f.alice, room)
	if _, err := f.alice.InviteUserByThirdParty(t.Context(), room, &mautrix.ReqInvite3PID{
		IDServer: f.is.Name, Medium: "email", Address: addr,
	}); err != nil {
		t.Fatalf("invite %s: %v", addr, err)
	}
	for k := range thirdPartyInvites(t, f.alice, room) {
		if _, ok := before[k]; !ok {
			return k
		}
	}
	t.Fatalf("no new m.room.third_party_invite in %s for %s", room, addr)
	return ""
}

// onbind posts an onbind body, as the identity server builds it, to hs2.
func (f *flows) onbind(t *testing.T, mxid id.UserID, addr string, room id.RoomID, token string, signed map[string]any) (int, string) {
	t.Helper()
	body, err := json.Marshal(map[string]any{
		"medium": "email", "address": addr, "mxid": mxid.String(),
		"invites": []any{map[string]any{
			"medium": "email", "address": addr, "mxid": mxid.String(), "room_id": room.String(),
			"sender": f.alice.UserID.String(), "token": token, "signed": signed,
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, f.hs2.FederationURL+"/_matrix/federation/v1/3pid/onbind", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := f.fed.HTTPClient().Do(req)
	if err != nil {
		t.Fatalf("onbind: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	return resp.StatusCode, string(b)
}

// bindEmailThroughHomeserver does what a client does to add and bind an
// email: ask the homeserver for a validation mail (hs → identity server v1
// requestToken), open the link in the mail, then add the 3PID with bind
// (hs → v1 getValidated3pid and 3pid/bind). It returns the session.
func bindEmailThroughHomeserver(t *testing.T, cli *mautrix.Client, is *IdentityServer, addr string) (sid, secret string) {
	t.Helper()
	ctx := t.Context()
	secret = "e2e" + randomHex(t, 8)
	mails := len(is.Mail.To(addr))
	var tok struct {
		SID string `json:"sid"`
	}
	if _, err := cli.MakeRequest(ctx, http.MethodPost, cli.BuildClientURL("v3", "account", "3pid", "email", "requestToken"), map[string]any{
		"id_server": is.Name, "client_secret": secret, "email": addr, "send_attempt": 1,
	}, &tok); err != nil {
		t.Fatalf("%s: requestToken for %s: %v", cli.UserID, addr, err)
	}
	if tok.SID == "" {
		t.Fatalf("%s: requestToken for %s gave no sid", cli.UserID, addr)
	}

	msg := is.Mail.Wait(t, addr, mails+1, mailWait)
	link := msg.ValidationLink()
	u, err := url.Parse(link)
	if link == "" || err != nil || u.Scheme != "https" || !strings.HasSuffix(u.Path, "/_matrix/identity/v2/validate/email/submitToken") {
		t.Fatalf("validation mail to %s holds no https v2 submitToken link:\n%s", addr, msg.Text)
	}
	if u.Query().Get("sid") != tok.SID || u.Query().Get("client_secret") != secret {
		t.Fatalf("validation link %s does not carry sid %s and our client secret", link, tok.SID)
	}
	// Opened as a person would: a browser GET, no identity-server token.
	status, page := getPage(t, is.HTTPClient(nil), link)
	if status != http.StatusOK || !strings.Contains(page, "E-mailadres bevestigd") {
		t.Fatalf("GET %s: %d\n%s", link, status, page)
	}

	if _, err := cli.MakeRequest(ctx, http.MethodPost, cli.BuildClientURL("v3", "account", "3pid"), map[string]any{
		"three_pid_creds": map[string]any{"sid": tok.SID, "client_secret": secret, "id_server": is.Name},
		"bind":            true,
	}, nil); err != nil {
		t.Fatalf("%s: add and bind %s: %v", cli.UserID, addr, err)
	}
	if status, resp := is.v1Lookup(t, nil, "email", addr); status != http.StatusOK || resp["mxid"] != cli.UserID.String() {
		t.Fatalf("lookup of %s after binding: %d %v, want %s", addr, status, resp, cli.UserID)
	}
	return tok.SID, secret
}

func getPage(t *testing.T, client *http.Client, link string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, link, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", link, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	return resp.StatusCode, string(b)
}

// waitInvite waits for cli's invite to room and returns its member event.
func waitInvite(t *testing.T, cli *mautrix.Client, room id.RoomID) *event.Event {
	t.Helper()
	var found *event.Event
	SyncUntil(t, cli, syncWait, "the invite to "+room.String(), func(r *mautrix.RespSync) bool {
		inv, ok := r.Rooms.Invite[room]
		if !ok {
			return false
		}
		for _, ev := range inv.State.Events {
			if ev.Type == event.StateMember && ev.GetStateKey() == cli.UserID.String() && membership(ev) == event.MembershipInvite {
				found = ev
				return true
			}
		}
		return false
	})
	return found
}

// thirdPartyInvites returns the room's m.room.third_party_invite events by token.
func thirdPartyInvites(t *testing.T, cli *mautrix.Client, room id.RoomID) map[string]*event.ThirdPartyInviteEventContent {
	t.Helper()
	state, err := cli.State(t.Context(), room)
	if err != nil {
		t.Fatalf("room state: %v", err)
	}
	out := map[string]*event.ThirdPartyInviteEventContent{}
	for key, ev := range state[event.StateThirdPartyInvite] {
		var c event.ThirdPartyInviteEventContent
		if err := json.Unmarshal(ev.Content.VeryRaw, &c); err != nil {
			t.Fatalf("third-party invite %s: %v", key, err)
		}
		out[key] = &c
	}
	return out
}

func stateCount(t *testing.T, cli *mautrix.Client, room id.RoomID) int {
	t.Helper()
	state, err := cli.State(t.Context(), room)
	if err != nil {
		t.Fatalf("room state: %v", err)
	}
	n := 0
	for _, evs := range state {
		n += len(evs)
	}
	return n
}

// v1Lookup calls the lookup Dendrite makes, from localAddr (nil: 127.0.0.1).
func (is *IdentityServer) v1Lookup(t *testing.T, localAddr net.IP, medium, address string) (int, map[string]any) {
	t.Helper()
	q := url.Values{"medium": {medium}, "address": {address}}
	return is.call(t, localAddr, http.MethodGet, "/_matrix/identity/api/v1/lookup?"+q.Encode(), "", nil)
}

// call makes a JSON request to the identity server and decodes a JSON object answer.
func (is *IdentityServer) call(t *testing.T, localAddr net.IP, method, path, auth string, body any) (int, map[string]any) {
	t.Helper()
	var data, contentType string
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		data, contentType = string(b), "application/json"
	}
	return is.raw(t, localAddr, method, path, auth, contentType, data)
}

func (is *IdentityServer) raw(t *testing.T, localAddr net.IP, method, path, auth, contentType, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, is.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := is.HTTPClient(localAddr).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		t.Fatalf("%s %s: read: %v", method, path, err)
	}
	out := map[string]any{}
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("%s %s: %d, not a JSON object: %s", method, path, resp.StatusCode, b)
	}
	return resp.StatusCode, out
}
