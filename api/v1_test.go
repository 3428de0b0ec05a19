package api_test

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"maunium.net/go/mautrix/federation/signutil"
	"maunium.net/go/mautrix/id"

	"github.com/ozo-platform/ozo-identity/api/apitest"
	"github.com/ozo-platform/ozo-identity/config"
	"github.com/ozo-platform/ozo-identity/email/smtptest"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
)

const v1 = "/_matrix/identity/api/v1"

func TestV1Gate(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		t.Run("off by default", func(t *testing.T) {
			h := apitest.New(t, e)
			for _, path := range []string{v1, v1 + "/lookup" + q("medium", "email", "address", "a@example.org"), v1 + "/pubkey/ed25519:0"} {
				h.Get(t, path, "").Want(t, http.StatusNotFound, "M_UNRECOGNIZED")
			}
			h.Do(t, apitest.Request{Method: http.MethodPost, Path: v1 + "/store-invite", Body: url.Values{"medium": {"email"}}}).
				Want(t, http.StatusNotFound, "M_UNRECOGNIZED")
		})
		t.Run("on for other networks", func(t *testing.T) {
			h := apitest.New(t, e, func(c *config.Config) {
				c.V1.Enabled = true
				c.V1.Networks = []string{"10.0.0.0/8"}
			})
			h.Get(t, v1+"/pubkey/ed25519:0", "").Want(t, http.StatusForbidden, "M_FORBIDDEN")
			// X-Forwarded-For from a peer that is not a trusted proxy is not believed.
			h.Do(t, apitest.Request{Path: v1 + "/pubkey/ed25519:0", Header: http.Header{"X-Forwarded-For": {"10.1.2.3"}}}).
				Want(t, http.StatusForbidden, "M_FORBIDDEN")
			h.Do(t, apitest.Request{Method: http.MethodPost, Path: v1 + "/store-invite", Body: url.Values{
				"medium": {"email"}, "address": {"x@example.org"}, "room_id": {"!r:hs"}, "sender": {"@a:hs"}}}).
				Want(t, http.StatusForbidden, "M_FORBIDDEN")
			if n := len(h.Mail.Messages()); n != 0 {
				t.Fatalf("%d mails sent through a refused v1 call", n)
			}
		})
		t.Run("on for the homeserver network", func(t *testing.T) {
			h := apitest.New(t, e, func(c *config.Config) {
				c.V1.Enabled = true
				c.V1.Networks = []string{"127.0.0.0/8"}
			})
			alice := h.NewUser(t, "alice")
			h.Bind(t, alice, "alice@example.org")
			h.Get(t, v1, "").Want(t, http.StatusOK, "")

			r := h.Get(t, v1+"/lookup"+q("medium", "email", "address", "alice@example.org"), "").Want(t, http.StatusOK, "")
			wantKeys(t, r.Body, "address", "medium", "mxid", "not_before", "not_after", "ts", "signatures")
			verifyServerSigned(t, h, r.Body)
			if r.JSON(t)["mxid"] != alice.MXID {
				t.Fatalf("v1 lookup: %s", r.Body)
			}
			if got := string(h.Get(t, v1+"/lookup"+q("medium", "email", "address", "nobody@example.org"), "").Want(t, http.StatusOK, "").Body); got != "{}\n" {
				t.Fatalf("v1 lookup of an unbound address: %s", got)
			}
			h.Get(t, v1+"/lookup"+q("medium", "email"), "").Want(t, http.StatusBadRequest, "M_MISSING_PARAMS")
			bulk := h.Post(t, v1+"/bulk_lookup", "", map[string]any{"threepids": [][]string{{"email", "alice@example.org"}, {"email", "nobody@example.org"}}}).
				Want(t, http.StatusOK, "")
			if !strings.Contains(string(bulk.Body), alice.MXID) || strings.Contains(string(bulk.Body), "nobody") {
				t.Fatalf("bulk_lookup: %s", bulk.Body)
			}

			pub := h.Get(t, v1+"/pubkey/ed25519:0", "").Want(t, http.StatusOK, "").Str(t, "public_key")
			if pub != publicKey(t, h) {
				t.Fatal("v1 and v2 publish different keys")
			}
			if !valid(t, h.Get(t, v1+"/pubkey/isvalid"+q("public_key", pub), "").Want(t, http.StatusOK, "")) {
				t.Fatal("v1 isvalid: the server key is not valid")
			}

			// Dendrite v0.15 posts store-invite form-encoded.
			addr := "carol@example.org"
			r = h.Do(t, apitest.Request{Method: http.MethodPost, Path: v1 + "/store-invite", Body: url.Values{
				"medium": {"email"}, "address": {addr}, "room_id": {"!room:hs.ozo.test"}, "sender": {alice.MXID},
				"room_name": {"Zorgteam"}, "sender_display_name": {"Dr. Alice"}}}).Want(t, http.StatusOK, "")
			var inv invite
			if err := json.Unmarshal(r.Body, &inv); err != nil || inv.Token == "" || len(inv.PublicKeys) != 2 {
				t.Fatalf("v1 store-invite: %s", r.Body)
			}
			if inv.PublicKeys[1].KeyValidityURL != h.URL+v1+"/pubkey/ephemeral/isvalid" {
				t.Fatalf("v1 store-invite validity URL %q", inv.PublicKeys[1].KeyValidityURL)
			}
			eph := inv.PublicKeys[1].PublicKey
			if !valid(t, h.Get(t, v1+"/pubkey/ephemeral/isvalid"+q("public_key", eph), "").Want(t, http.StatusOK, "")) {
				t.Fatal("v1 ephemeral isvalid: the invite's key is not valid")
			}

			// The invite mail carries the token and the ephemeral private key in the sign URL.
			m := h.Mail.Wait(t, addr, 1, apitest.MailWait)
			signURL := inviteSignURL(t, m)
			if signURL.Query().Get("token") != inv.Token || signURL.Query().Get("private_key") == "" {
				t.Fatalf("sign URL %s does not carry the invite token %s", signURL, inv.Token)
			}
			// Element (matrix-js-sdk) adds mxid to that URL and POSTs it without a body.
			qs := signURL.Query()
			qs.Set("mxid", "@carol:hs.ozo.test")
			signed := h.Do(t, apitest.Request{Method: http.MethodPost, Path: signURL.Path + "?" + qs.Encode()}).Want(t, http.StatusOK, "")
			wantKeys(t, signed.Body, "mxid", "sender", "token", "signatures")
			if err := signutil.VerifyJSON(h.Config.ServerName, "ed25519:0", id.SigningKey(eph), json.RawMessage(signed.Body)); err != nil {
				t.Fatalf("the mailed private key does not match the ephemeral public key: %v\n%s", err, signed.Body)
			}
			// And as a form, the way older clients call it.
			h.Do(t, apitest.Request{Method: http.MethodPost, Path: v1 + "/sign-ed25519", Body: url.Values{
				"mxid": {"@carol:hs.ozo.test"}, "token": {inv.Token}, "private_key": {signURL.Query().Get("private_key")}}}).Want(t, http.StatusOK, "")
			h.Do(t, apitest.Request{Method: http.MethodPost, Path: v1 + "/sign-ed25519", Body: url.Values{
				"mxid": {"@carol:hs.ozo.test"}, "token": {"guess"}, "private_key": {signURL.Query().Get("private_key")}}}).Want(t, http.StatusNotFound, "M_NOT_FOUND")

			// With v1 on, a v2 store-invite mails the token the same way.
			v2inv := storeInvite(t, h, alice, emailInvite(alice, "dave@example.org"))
			if got := inviteSignURL(t, h.Mail.Wait(t, "dave@example.org", 1, apitest.MailWait)).Query().Get("token"); got != v2inv.Token {
				t.Fatalf("v2 invite mail carries token %q, want %q", got, v2inv.Token)
			}

			// v1 validation and bind, form-encoded, as old homeservers proxy them.
			secret := apitest.Secret()
			sid := h.Do(t, apitest.Request{Method: http.MethodPost, Path: v1 + "/validate/email/requestToken", Body: url.Values{
				"client_secret": {secret}, "email": {addr}, "send_attempt": {"1"}}}).Want(t, http.StatusOK, "").Str(t, "sid")
			token := apitest.ValidationLink(t, h.Mail.Wait(t, addr, 2, apitest.MailWait)).Get("token")
			h.Do(t, apitest.Request{Method: http.MethodPost, Path: v1 + "/validate/email/submitToken", Body: url.Values{
				"sid": {sid}, "client_secret": {secret}, "token": {token}}}).Want(t, http.StatusOK, "")
			r = h.Do(t, apitest.Request{Method: http.MethodPost, Path: v1 + "/3pid/bind", Body: url.Values{
				"sid": {sid}, "client_secret": {secret}, "mxid": {"@carol:" + h.HS.Name}}}).Want(t, http.StatusOK, "")
			verifyServerSigned(t, h, r.Body)
			if got := h.LookupOne(t, alice, "email", addr); got != "@carol:"+h.HS.Name {
				t.Fatalf("after v1 bind: %q", got)
			}
			ob := waitDelivered(t, h, 1)
			if !strings.Contains(string(ob.Body), inv.Token) {
				t.Fatalf("onbind lacks the v1 invite: %s", ob.Body)
			}
		})
	})
}

var signURLRE = regexp.MustCompile(`signurl=([^&\s"]+)`)

// inviteSignURL returns the sign URL from the invite link in the mail text.
func inviteSignURL(t *testing.T, m smtptest.Message) *url.URL {
	t.Helper()
	match := signURLRE.FindStringSubmatch(m.Text)
	if match == nil {
		t.Fatalf("no signurl in the invite mail:\n%s", m.Text)
	}
	raw, err := url.QueryUnescape(match[1])
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(raw)
	if err != nil || u.Path != v1+"/sign-ed25519" {
		t.Fatalf("signurl %q: %v", raw, err)
	}
	if _, err := base64.RawURLEncoding.DecodeString(u.Query().Get("private_key")); err != nil {
		t.Fatalf("private_key in the signurl is not unpadded URL-safe base64: %v", err)
	}
	return u
}
