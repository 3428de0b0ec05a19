package api_test

import (
	"encoding/json"
	"net/http"
	"testing"

	"maunium.net/go/mautrix/federation/signutil"
	"maunium.net/go/mautrix/id"

	"github.com/ozo-platform/ozo-identity/api/apitest"
	"github.com/ozo-platform/ozo-identity/config"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
)

// TestMailedSignURLWithV1Off follows the invitation mail's sign URL as the invitee's browser does
// through matrix-js-sdk (joinRoom with inviteSignUrl: POST, mxid added to the query, no body, no
// identity-server token) while the v1 API is off. It signs with the mailed key only, for a stored
// invite only, within the per-client limit; the rest of v1 stays closed; the invite is intact.
func TestMailedSignURLWithV1Off(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		h := apitest.New(t, e, func(c *config.Config) {
			c.V1.Enabled = false
			c.RateLimits.PerClient = 8
		})
		alice := h.NewUser(t, "alice")
		addr := "carol@example.org"
		inv := storeInvite(t, h, alice, emailInvite(alice, addr))
		eph := inv.PublicKeys[1].PublicKey
		signURL := apitest.InviteSignURL(t, h.Mail.Wait(t, addr, 1, apitest.MailWait))
		if signURL.Path != v1+"/sign-ed25519" || signURL.Query().Get("token") != inv.Token {
			t.Fatalf("mailed sign URL %s", signURL)
		}
		carol := "@carol:hs.ozo.test"
		follow := func(method string, mutate func(q map[string]string)) *apitest.Response {
			t.Helper()
			fields := map[string]string{"token": signURL.Query().Get("token"), "private_key": signURL.Query().Get("private_key"), "mxid": carol}
			if mutate != nil {
				mutate(fields)
			}
			return h.Do(t, apitest.Request{Method: method, Path: signURL.Path + q("token", fields["token"], "private_key", fields["private_key"], "mxid", fields["mxid"])})
		}

		signed := follow(http.MethodPost, nil).Want(t, http.StatusOK, "") // 1
		wantKeys(t, signed.Body, "mxid", "sender", "token", "signatures")
		if err := signutil.VerifyJSON(h.Config.ServerName, "ed25519:0", id.SigningKey(eph), json.RawMessage(signed.Body)); err != nil {
			t.Fatalf("signed with another key than the invite's ephemeral key: %v\n%s", err, signed.Body)
		}
		if s := signed.JSON(t); s["mxid"] != carol || s["sender"] != alice.MXID || s["token"] != inv.Token {
			t.Fatalf("signed object: %s", signed.Body)
		}
		follow(http.MethodGet, nil).Want(t, http.StatusOK, "") // 2: a browser opening the link

		// Another invite's key, a key of nobody, an unknown token: refused.
		otherInv := storeInvite(t, h, alice, emailInvite(alice, "dave@example.org"))
		otherKey := apitest.InviteSignURL(t, h.Mail.Wait(t, "dave@example.org", 1, apitest.MailWait)).Query().Get("private_key")
		follow(http.MethodPost, func(f map[string]string) { f["private_key"] = otherKey }).Want(t, http.StatusForbidden, "M_FORBIDDEN") // 3
		stranger, _ := ephemeralKey(t)
		follow(http.MethodPost, func(f map[string]string) { f["private_key"] = stranger }).Want(t, http.StatusForbidden, "M_FORBIDDEN")      // 4
		follow(http.MethodPost, func(f map[string]string) { f["token"] = otherInv.Token + "x" }).Want(t, http.StatusNotFound, "M_NOT_FOUND") // 5

		// The rest of v1 stays behind its gate.
		h.Get(t, v1+"/lookup"+q("medium", "email", "address", addr), "").Want(t, http.StatusNotFound, "M_UNRECOGNIZED")
		h.Post(t, v1+"/store-invite", "", map[string]any{}).Want(t, http.StatusNotFound, "M_UNRECOGNIZED")

		// Bounded per client: with 8 a minute, the 9th call is refused.
		for range 3 { // 6, 7, 8
			follow(http.MethodPost, nil).Want(t, http.StatusOK, "")
		}
		follow(http.MethodPost, nil).Want(t, http.StatusTooManyRequests, "M_LIMIT_EXCEEDED")

		// Nothing was lost: the invite's key is valid and the address is unbound.
		if !valid(t, h.Get(t, v2+"/pubkey/ephemeral/isvalid"+q("public_key", eph), "").Want(t, http.StatusOK, "")) {
			t.Fatal("the invite's ephemeral key is no longer valid")
		}
		if got := h.LookupOne(t, alice, "email", addr); got != "" {
			t.Fatalf("%s resolves to %q", addr, got)
		}
	})
}
