package e2e

import (
	"net/http"
	"testing"

	"maunium.net/go/mautrix"

	"github.com/ozo-platform/ozo-identity/internal/pkitest"
)

// TestDendriteChecksIdentityServerCertificate: with federation_api.disable_tls_validation false
// (as every e2e test runs), Dendrite refuses an identity server whose certificate its CA did not
// issue, both on the client-proxied path (requestToken goes through Dendrite's federation
// client) and for invites (lookup and store-invite); the identity server is never reached.
func TestDendriteChecksIdentityServerCertificate(t *testing.T) {
	hsCA, otherCA := pkitest.NewCA(t), pkitest.NewCA(t)
	is := StartIdentityServer(t, otherCA, ISOptions{V1Networks: []string{"127.0.0.1/32"}})
	fed := StartFederation(t, Options{CA: hsCA, IdentityServers: []string{is.Name}})
	alice := fed.Homeservers[0].Register(t, "alice")
	ctx := t.Context()

	_, err := alice.MakeRequest(ctx, http.MethodPost, alice.BuildClientURL("v3", "account", "3pid", "email", "requestToken"), map[string]any{
		"id_server": is.Name, "client_secret": "e2e" + randomHex(t, 8), "email": "alice@example.org", "send_attempt": 1,
	}, nil)
	if err == nil {
		t.Fatal("requestToken through Dendrite reached an identity server with an untrusted certificate")
	}
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "TLS"})
	if err != nil {
		t.Fatalf("create room: %v", err)
	}
	if _, err := alice.InviteUserByThirdParty(ctx, room.RoomID, &mautrix.ReqInvite3PID{
		IDServer: is.Name, Medium: "email", Address: "bob@example.org"}); err == nil {
		t.Fatal("an invite by email went through an identity server with an untrusted certificate")
	}
	if n := len(is.Mail.Messages()); n != 0 {
		t.Fatalf("the identity server sent %d mails", n)
	}
	if n := len(thirdPartyInvites(t, alice, room.RoomID)); n != 0 {
		t.Fatalf("the room has %d third-party invites", n)
	}
}
