package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pquerna/otp/totp"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/ozo-platform/ozo-identity/config"
	"github.com/ozo-platform/ozo-identity/internal/pkitest"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore/dbtest"
)

// OZOStack is ozo-identity with OZO accounts whose Matrix users live on hs2, the OZO
// homeserver, through an application-service registration; hs1 is a care provider's.
type OZOStack struct {
	IS       *IdentityServer
	Fed      *Federation
	HS1, HS2 *Homeserver
	ASToken  string
}

// StartOZOStack starts the identity server (database engine) and two homeservers, hs2 with
// ozo-identity's application service registered; configure, if any, changes the identity
// server's configuration.
func StartOZOStack(t *testing.T, engine sqlstore.Engine, configure ...func(*config.Config)) *OZOStack {
	t.Helper()
	ca := pkitest.NewCA(t)
	dbURL := dbtest.URL(t, engine)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("localhost:%d", ln.Addr().(*net.TCPAddr).Port)
	as := &AppService{Homeserver: 1, ID: "ozo-identity", ASToken: randomHex(t, 16), HSToken: randomHex(t, 16),
		SenderLocalpart: "ozo-identity", UserPrefix: "ozo_"}
	fed := StartFederation(t, Options{CA: ca, IdentityServers: []string{name}, AppService: as})
	hs2 := fed.Homeservers[1]
	is := StartIdentityServer(t, ca, ISOptions{Listener: ln, DatabaseURL: dbURL, Configure: func(c *config.Config) {
		c.OZOAccounts.Homeserver = config.OZOHomeserver{ClientURL: hs2.ClientURL, ServerName: hs2.ServerName,
			ASToken: as.ASToken, UserPrefix: as.UserPrefix}
		for _, fn := range configure {
			fn(c)
		}
	}})
	return &OZOStack{IS: is, Fed: fed, HS1: fed.Homeservers[0], HS2: hs2, ASToken: as.ASToken}
}

var activationLinkRE = regexp.MustCompile(`https://[^\s"'<>]+/_ozo/web/account/activate\?token=([A-Za-z0-9_%-]+)`)

// ActivationLink returns the activation link of the n-th mail to addr.
func (s *OZOStack) ActivationLink(t testing.TB, addr string, n int) string {
	t.Helper()
	msg := s.IS.Mail.Wait(t, addr, n, mailWait)
	link := activationLinkRE.FindString(msg.Text)
	if link == "" {
		t.Fatalf("mail %d to %s holds no activation link:\n%s", n, addr, msg.Text)
	}
	return link
}

// TestOZOAccountMatrix is issue 16's Matrix acceptance at the API level: Alice, a practitioner
// on hs1, invites a caregiver's email before any account exists; the OZO platform provisions
// the caregiver from a FHIR RelatedPerson (with a BSN, kept nowhere); the caregiver activates
// (password, TOTP, first code), which makes their Matrix user on hs2 through the application
// service and binds their email, so Alice's waiting invite is delivered; they log in with
// password and code, the access token handed over works (/whoami) and they join, which Alice
// sees. Disabling the account logs the Matrix user out and unbinds the email.
func TestOZOAccountMatrix(t *testing.T) {
	for _, engine := range dbtest.Engines {
		t.Run(string(engine), func(t *testing.T) { runOZOAccountMatrix(t, engine) })
	}
}

func runOZOAccountMatrix(t *testing.T, engine sqlstore.Engine) {
	ctx := t.Context()
	s := StartOZOStack(t, engine)
	const addr = "els.devries@example.org"
	alice := s.HS1.Register(t, "alice")
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "Zorg voor moeder"})
	if err != nil {
		t.Fatal(err)
	}
	// hs2 must know the room without being in it for Dendrite to complete an onbind
	// (docs/homeservers.md): a colleague on hs2 holds a pending invite.
	ward := s.HS2.Register(t, "ward")
	if _, err := alice.InviteUser(ctx, room.RoomID, &mautrix.ReqInviteUser{UserID: ward.UserID}); err != nil {
		t.Fatal(err)
	}
	waitInvite(t, ward, room.RoomID)
	if _, err := alice.InviteUserByThirdParty(ctx, room.RoomID, &mautrix.ReqInvite3PID{IDServer: s.IS.Name, Medium: "email", Address: addr}); err != nil {
		t.Fatalf("invite %s: %v", addr, err)
	}
	s.IS.Mail.Wait(t, addr, 1, mailWait) // the room invite mail

	resource := `{"resourceType": "RelatedPerson", "id": "rp-4711", "active": true,
		"identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": "999911120"}],
		"patient": {"reference": "Patient/p-1"},
		"name": [{"use": "official", "given": ["Els"], "family": "de Vries"}],
		"telecom": [{"system": "email", "value": "` + addr + `"}]}`
	status, resp := s.IS.raw(t, nil, http.MethodPost, "/_ozo/admin/v1/fhir/RelatedPerson", "Bearer "+s.IS.AdminToken, "application/fhir+json", resource)
	if status != http.StatusCreated {
		t.Fatalf("provision: %d %v", status, resp)
	}
	link := s.ActivationLink(t, addr, 2)
	u, _ := url.Parse(link)
	token := u.Query().Get("token")

	const password = "Moeder's zorg 2026!"
	status, enrol := s.IS.call(t, nil, http.MethodPost, "/_ozo/v1/accounts/activate", "", map[string]any{"token": token, "password": password})
	if status != http.StatusOK {
		t.Fatalf("activate: %d %v", status, enrol)
	}
	secret := enrol["totp_secret"].(string)
	now := time.Now()
	code, _ := totp.GenerateCode(secret, now)
	status, done := s.IS.call(t, nil, http.MethodPost, "/_ozo/v1/accounts/activate/confirm", "", map[string]any{"token": token, "code": code})
	if status != http.StatusOK || !strings.HasPrefix(done["user_id"].(string), "@ozo_") || !strings.HasSuffix(done["user_id"].(string), ":"+s.HS2.ServerName) {
		t.Fatalf("confirm: %d %v", status, done)
	}
	mxid := id.UserID(done["user_id"].(string))
	if st, lk := s.IS.v1Lookup(t, nil, "email", addr); st != http.StatusOK || lk["mxid"] != mxid.String() {
		t.Fatalf("lookup of %s after activation: %d %v, want %s", addr, st, lk, mxid)
	}

	next, _ := totp.GenerateCode(secret, now.Add(30*time.Second)) // within the accepted skew
	cli := loginOZO(t, s, addr, password, map[string]any{"code": next})
	if cli.UserID != mxid {
		t.Fatalf("logged in as %s, want %s", cli.UserID, mxid)
	}
	who, err := cli.Whoami(ctx)
	if err != nil || who.UserID != mxid {
		t.Fatalf("whoami with the handed-over token: %v %v", who, err)
	}
	// Practitioners see the platform's name for the caregiver, not the generated localpart.
	if prof, err := alice.GetProfile(ctx, mxid); err != nil || prof.DisplayName != "Els de Vries" {
		t.Fatalf("caregiver's profile seen from hs1: %+v %v", prof, err)
	}

	// Alice's invite, waiting for the email, reached the caregiver; they join, Alice sees it.
	ev := waitInvite(t, cli, room.RoomID)
	if ev.Sender != alice.UserID {
		t.Fatalf("invite from %s, want alice", ev.Sender)
	}
	SyncUntil(t, alice, syncWait, "the caregiver's invite", func(r *mautrix.RespSync) bool {
		return hasMembership(r, room.RoomID, mxid, event.MembershipInvite)
	})
	if _, err := cli.JoinRoomByID(ctx, room.RoomID); err != nil {
		t.Fatalf("caregiver joins: %v", err)
	}
	SyncUntil(t, alice, syncWait, "the caregiver joining", func(r *mautrix.RespSync) bool {
		return hasMembership(r, room.RoomID, mxid, event.MembershipJoin)
	})

	// Disable: the token stops working and the email no longer resolves.
	id := resp["account"].(map[string]any)["id"].(string)
	if st, r := s.IS.call(t, nil, http.MethodPost, "/_ozo/admin/v1/accounts/"+id+"/disable", "Bearer "+s.IS.AdminToken, map[string]any{}); st != http.StatusOK {
		t.Fatalf("disable: %d %v", st, r)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := cli.Whoami(wctx); err == nil {
		t.Fatal("the Matrix token still works after the account was disabled")
	}
	if st, lk := s.IS.v1Lookup(t, nil, "email", addr); st != http.StatusOK || len(lk) != 0 {
		t.Fatalf("lookup of %s after disabling: %d %v, want nothing", addr, st, lk)
	}
	if st, r := s.IS.call(t, nil, http.MethodPost, "/_ozo/v1/accounts/login", "", map[string]any{"email": addr, "password": password}); st != http.StatusForbidden {
		t.Fatalf("login of a disabled account: %d %v", st, r)
	}
	// Enabled again: the email resolves again and a new login works.
	if st, r := s.IS.call(t, nil, http.MethodPost, "/_ozo/admin/v1/accounts/"+id+"/enable", "Bearer "+s.IS.AdminToken, map[string]any{}); st != http.StatusOK {
		t.Fatalf("enable: %d %v", st, r)
	}
	if st, lk := s.IS.v1Lookup(t, nil, "email", addr); st != http.StatusOK || lk["mxid"] != mxid.String() {
		t.Fatalf("lookup after enabling: %d %v", st, lk)
	}
	// The TOTP steps at hand are spent; a recovery code stands in.
	cli2 := loginOZO(t, s, addr, password, map[string]any{"recovery_code": done["recovery_codes"].([]any)[0]})
	if who, err := cli2.Whoami(ctx); err != nil || who.UserID != mxid {
		t.Fatalf("whoami after enabling: %v %v", who, err)
	}
	// Delete: logged out, unbound, and the account's personal data gone.
	if st, r := s.IS.raw(t, nil, http.MethodDelete, "/_ozo/admin/v1/accounts/"+id, "Bearer "+s.IS.AdminToken, "", ""); st != http.StatusOK {
		t.Fatalf("delete: %d %v", st, r)
	}
	if _, err := cli2.Whoami(wctx); err == nil {
		t.Fatal("the Matrix token still works after the account was deleted")
	}
	if st, lk := s.IS.v1Lookup(t, nil, "email", addr); st != http.StatusOK || len(lk) != 0 {
		t.Fatalf("lookup of %s after deleting: %d %v, want nothing", addr, st, lk)
	}
	if _, err := s.IS.App.Accounts.Get(ctx, id); err == nil {
		t.Fatal("the deleted account is still stored")
	}
}

// loginOZO logs in with password and second factor (code or recovery_code), and returns a
// Matrix client with the access token ozo-identity handed over.
func loginOZO(t *testing.T, s *OZOStack, addr, password string, factor map[string]any) *mautrix.Client {
	t.Helper()
	status, resp := s.IS.call(t, nil, http.MethodPost, "/_ozo/v1/accounts/login", "", map[string]any{"email": addr, "password": password})
	if status != http.StatusOK {
		t.Fatalf("login: %d %v", status, resp)
	}
	factor["ticket"] = resp["ticket"]
	status, resp = s.IS.call(t, nil, http.MethodPost, "/_ozo/v1/accounts/login/second_factor", "", factor)
	if status != http.StatusOK || resp["access_token"] == nil || resp["home_server"] != s.HS2.ServerName {
		t.Fatalf("second factor: %d %v", status, resp)
	}
	cli, err := mautrix.NewClient(s.HS2.ClientURL, id.UserID(resp["user_id"].(string)), resp["access_token"].(string))
	if err != nil {
		t.Fatal(err)
	}
	return cli
}
