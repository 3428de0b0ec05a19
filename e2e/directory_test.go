package e2e

import (
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"

	"github.com/ozo-platform/ozo-identity/config"
	"github.com/ozo-platform/ozo-identity/internal/pkitest"
	"github.com/ozo-platform/ozo-identity/lookup/mcsd/mcsdtest"
)

// From testdata/mcsd (see its README): Eva Mulder of Huisartsenpraktijk De
// Linde has an active PractitionerRole whose Endpoint is matrix:u/e.mulder:${hs2};
// A. Smit of the hospital has an active role whose Endpoint is off.
const (
	mulderUZI      = "900023457"
	mulderLocal    = "e.mulder"
	smitUZI        = "900012348"
	smitLocal      = "a.smit"
	delindeDir     = "huisartsenpraktijk-de-linde"
	mulderEndpoint = "ep-hp-mulder"
)

// TestDirectoryInvite is issue 4's acceptance: Alice on hs1 invites the UZI
// number of a practitioner who never used ozo-identity but whose provider
// publishes her, through the LRZA, in an mCSD directory with a Matrix
// Endpoint on hs2. The identity server resolves the number from its synced
// directory index, so Dendrite invites her Matrix ID directly. A practitioner
// whose Endpoint is off resolves to nothing and gets a third-party invite.
func TestDirectoryInvite(t *testing.T) {
	ctx := t.Context()
	ca := pkitest.NewCA(t)
	// The homeservers must trust the identity server's name before the FHIR
	// directories can name the homeservers, and those come before the identity
	// server's configuration: so reserve its port first.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	isName := fmt.Sprintf("localhost:%d", ln.Addr().(*net.TCPAddr).Port)
	fed := StartFederation(t, Options{CA: ca, IdentityServers: []string{isName}})
	hs1, hs2 := fed.Homeservers[0], fed.Homeservers[1]

	fhir := mcsdtest.Start(t, mcsdtest.Options{Homeservers: map[string]string{"hs1": hs1.ServerName, "hs2": hs2.ServerName}})
	dir := config.Defaults().Directory
	dir.LRZAURL = fhir.LRZAURL()
	dir.AllowedNetworks = []string{"127.0.0.0/8"}
	dir.CAFile = directoryCAFile(t, fhir)
	dir.SyncInterval = 0 // the test syncs when it wants to
	dir.RequestTimeout = 10 * time.Second
	is := StartIdentityServer(t, ca, ISOptions{Listener: ln, Directory: &dir})
	if is.Name != isName {
		t.Fatalf("identity server is %s, homeservers trust %s", is.Name, isName)
	}
	mulderID := hs2.UserID(mulderLocal).String()

	// Before any sync nothing knows the number.
	if status, resp := is.v1Lookup(t, nil, "uzi", mulderUZI); status != http.StatusOK || len(resp) != 0 {
		t.Fatalf("v1 lookup of uzi %s before the sync: %d %v, want 200 {}", mulderUZI, status, resp)
	}

	syncDirectories(t, is, fhir)

	// What the directories say, as Dendrite will ask it (v1 lookup from 127.0.0.1).
	for _, c := range []struct{ uzi, mxid, why string }{
		{mulderUZI, mulderID, "role Endpoint on hs2"},
		{"900023456", hs2.UserID("h.dekker").String(), "Practitioner telecom; the hospital's spoof on hs1 is not believed"},
		{"900012347", "", "inactive role"},
		{smitUZI, "", "Endpoint off"},
		{"900012349", "", "Endpoint period ended"},
		{"900099999", "", "not in any directory"},
	} {
		status, resp := is.v1Lookup(t, nil, "uzi", c.uzi)
		if c.mxid == "" {
			if status != http.StatusOK || len(resp) != 0 {
				t.Errorf("v1 lookup of uzi %s (%s): %d %v, want 200 {}", c.uzi, c.why, status, resp)
			}
			continue
		}
		if status != http.StatusOK || resp["mxid"] != c.mxid || resp["medium"] != "uzi" || resp["address"] != c.uzi {
			t.Errorf("v1 lookup of uzi %s (%s): %d %v, want %s", c.uzi, c.why, status, resp, c.mxid)
		}
		if _, ok := resp["signatures"].(map[string]any)[is.Name]; !ok {
			t.Errorf("v1 lookup of uzi %s is not signed by %s: %v", c.uzi, is.Name, resp)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	// Nobody bound anything: the answer comes from the directory index alone.
	assertNoUZIBindings(t, is)

	alice := hs1.Register(t, "alice")
	// Eva Mulder's account on hs2; she has never talked to ozo-identity.
	mulder := hs2.Register(t, mulderLocal)
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "Huisarts overleg"})
	if err != nil {
		t.Fatalf("create room: %v", err)
	}
	if _, err := alice.InviteUserByThirdParty(ctx, room.RoomID, &mautrix.ReqInvite3PID{
		IDServer: is.Name, Medium: "uzi", Address: mulderUZI,
	}); err != nil {
		t.Fatalf("invite uzi %s: %v", mulderUZI, err)
	}
	ev := waitInvite(t, mulder, room.RoomID)
	if ev.Sender != alice.UserID || ev.Content.AsMember().ThirdPartyInvite != nil {
		t.Fatalf("%s's invite = sender %s content %s, want a plain invite from alice", mulder.UserID, ev.Sender, ev.Content.VeryRaw)
	}
	if n := len(thirdPartyInvites(t, alice, room.RoomID)); n != 0 {
		t.Fatalf("room has %d m.room.third_party_invite events, want none for a practitioner the directory knows", n)
	}
	if _, err := mulder.JoinRoomByID(ctx, room.RoomID); err != nil {
		t.Fatalf("%s joins over federation: %v", mulder.UserID, err)
	}
	SyncUntil(t, alice, syncWait, mulder.UserID.String()+" joining", func(r *mautrix.RespSync) bool {
		return hasMembership(r, room.RoomID, mulder.UserID, event.MembershipJoin)
	})

	// A. Smit has an account on hs1 and the directory names her Matrix ID,
	// but on an Endpoint that is off: she is invited by 3PID, not directly.
	smit := hs1.Register(t, smitLocal)
	if _, err := alice.InviteUserByThirdParty(ctx, room.RoomID, &mautrix.ReqInvite3PID{
		IDServer: is.Name, Medium: "uzi", Address: smitUZI,
	}); err != nil {
		t.Fatalf("invite uzi %s: %v", smitUZI, err)
	}
	tpis := thirdPartyInvites(t, alice, room.RoomID)
	if len(tpis) != 1 {
		t.Fatalf("room has %d m.room.third_party_invite events, want 1 for uzi %s", len(tpis), smitUZI)
	}
	for token := range tpis {
		stored, err := is.App.Store.GetInvite(ctx, token)
		if err != nil || stored.ThreePID.Medium != "uzi" || stored.ThreePID.Address != smitUZI || stored.RoomID != room.RoomID.String() {
			t.Fatalf("invite %s at the identity server = %+v, %v; want uzi %s in %s", token, stored, err, smitUZI, room.RoomID)
		}
	}
	// Both users are on hs1, so a direct invite would be in the room state by now.
	var member event.MemberEventContent
	if err := alice.StateEvent(ctx, room.RoomID, event.StateMember, smit.UserID.String(), &member); !errors.Is(err, mautrix.MNotFound) {
		t.Fatalf("%s's member event: %+v, err %v; want none", smit.UserID, member, err)
	}
	resp, err := smit.SyncRequest(ctx, 0, "", "", false, event.PresenceOffline)
	if err != nil {
		t.Fatalf("%s: sync: %v", smit.UserID, err)
	}
	if _, ok := resp.Rooms.Invite[room.RoomID]; ok {
		t.Fatalf("%s was invited to %s directly; her Endpoint is off", smit.UserID, room.RoomID)
	}

	// The provider switches Eva Mulder's Endpoint off: after the next
	// (incremental) sync her number resolves to nothing any more.
	setStatus(t, fhir.Directory(delindeDir), "Endpoint", mulderEndpoint, "off")
	syncDirectories(t, is, fhir)
	if status, resp := is.v1Lookup(t, nil, "uzi", mulderUZI); status != http.StatusOK || len(resp) != 0 {
		t.Fatalf("v1 lookup of uzi %s after her Endpoint went off: %d %v, want 200 {}", mulderUZI, status, resp)
	}
	assertNoUZIBindings(t, is)
}

// syncDirectories runs one directory sync of the identity server and checks
// that every directory synced and that the provider directories were read
// from the FHIR server (through the identity server's own HTTP client).
func syncDirectories(t *testing.T, is *IdentityServer, fhir *mcsdtest.Server) {
	t.Helper()
	fhir.ResetRequests()
	reports, err := is.App.SyncDirectories(ctxTimeout(t, 30*time.Second))
	if err != nil {
		t.Fatalf("directory sync: %v", err)
	}
	synced := map[string]bool{}
	for _, r := range reports {
		if r.Err != nil || r.Skipped != "" {
			t.Fatalf("directory sync of %s: err %v, skipped %q", r.Directory, r.Err, r.Skipped)
		}
		synced[r.Directory] = true
	}
	if !synced[fhir.LRZAURL()] || !synced[fhir.URL(delindeDir)] {
		t.Fatalf("directory sync reported %v, want the LRZA and %s", reports, fhir.URL(delindeDir))
	}
	if !slices.ContainsFunc(fhir.Requests(), func(uri string) bool {
		return strings.HasPrefix(uri, "/"+delindeDir+"/fhir/Endpoint/_history")
	}) {
		t.Fatalf("the identity server never asked %s for Endpoints: %v", delindeDir, fhir.Requests())
	}
}

// assertNoUZIBindings checks through the admin API that no uzi is bound.
func assertNoUZIBindings(t *testing.T, is *IdentityServer) {
	t.Helper()
	status, resp := is.call(t, nil, http.MethodGet, "/_ozo/admin/v1/bindings?medium=uzi", "Bearer "+is.AdminToken, nil)
	if list, ok := resp["bindings"].([]any); status != http.StatusOK || !ok || len(list) != 0 {
		t.Fatalf("uzi bindings: %d %v, want none", status, resp)
	}
}

// setStatus publishes a new version of a resource with another status.
func setStatus(t *testing.T, d *mcsdtest.Directory, typ, id, status string) {
	t.Helper()
	var res map[string]any
	if err := json.Unmarshal(d.Get(typ, id), &res); err != nil {
		t.Fatalf("%s/%s: %v", typ, id, err)
	}
	res["status"] = status
	b, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Put(b); err != nil {
		t.Fatalf("put %s/%s: %v", typ, id, err)
	}
}

// directoryCAFile writes the certificate the FHIR test server presents,
// verified by the client mcsdtest provides, as the identity server's
// directory.ca_file.
func directoryCAFile(t *testing.T, fhir *mcsdtest.Server) string {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, fhir.LRZAURL()+"/Endpoint/_history?_count=1", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := fhir.Client().Do(req)
	if err != nil {
		t.Fatalf("FHIR test server: %v", err)
	}
	resp.Body.Close()
	if resp.TLS == nil || len(resp.TLS.PeerCertificates) == 0 {
		t.Fatalf("FHIR test server presented no certificate")
	}
	chain := resp.TLS.PeerCertificates
	file := filepath.Join(t.TempDir(), "directory-ca.pem")
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: chain[len(chain)-1].Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}
