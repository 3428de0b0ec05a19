package app_test

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"testing"

	"maunium.net/go/mautrix/federation/signutil"
	"maunium.net/go/mautrix/id"

	"github.com/ozo-platform/ozo-identity/api/apitest"
	"github.com/ozo-platform/ozo-identity/app"
	"github.com/ozo-platform/ozo-identity/identity"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
)

// beside opens the deployment's database as another process would (the CLI's `admin
// signing-key rotate`, `admin pepper rotate`), next to the running server h.
func beside(t *testing.T, h *apitest.Harness) *app.App {
	t.Helper()
	a, err := app.New(context.Background(), h.Config, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

func isValid(t *testing.T, h *apitest.Harness, key string) bool {
	t.Helper()
	var out struct{ Valid bool }
	r := h.Get(t, v2+"/pubkey/isvalid?public_key="+url.QueryEscape(key), "").Want(t, http.StatusOK, "")
	if err := json.Unmarshal(r.Body, &out); err != nil {
		t.Fatal(err)
	}
	return out.Valid
}

// A signing key rotated by another process while the server runs: the server serves the new key
// and the previous one by id at once (from the database), reports both valid, signs with the new
// one within seconds, and co-signs the invites of an onbind with the previous one, so an invite
// stored before the rotation (whose room lists the old key) is accepted by the homeserver. An
// audit checkpoint signed before still verifies. Retired, the old key is neither served, valid,
// nor used; the current key cannot be retired.
func TestSigningKeyRotation(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		ctx := context.Background()
		h := apitest.New(t, e)
		alice, bob := h.NewUser(t, "alice"), h.NewUser(t, "bob")
		old := pubkey(t, h)
		inv := storeInvite(t, h, alice, "bob@example.org")
		if inv.PublicKeys[0].PublicKey != old {
			t.Fatalf("the invite lists %q, not the long-term key %q", inv.PublicKeys[0].PublicKey, old)
		}
		cp, err := h.App.Checkpoint(ctx)
		if err != nil {
			t.Fatal(err)
		}

		k, err := beside(t, h).Service.RotateSigningKey(ctx)
		if err != nil || k.ID != "ed25519:1" || k.PublicKey == old {
			t.Fatalf("rotate: %+v %v", k, err)
		}
		if got := h.Get(t, v2+"/pubkey/ed25519:1", "").Want(t, http.StatusOK, "").Str(t, "public_key"); got != k.PublicKey {
			t.Fatalf("/pubkey/ed25519:1 = %q, want %q", got, k.PublicKey)
		}
		if got := pubkey(t, h); got != old {
			t.Fatalf("/pubkey/ed25519:0 after the rotation = %q, want the previous key %q", got, old)
		}
		h.Get(t, v2+"/pubkey/ed25519:2", "").Want(t, http.StatusNotFound, "M_NOT_FOUND")
		if !isValid(t, h, old) || !isValid(t, h, k.PublicKey) || isValid(t, h, "AAAA"+old[4:]) {
			t.Fatal("isvalid: want the previous and the new key valid, another not")
		}
		waitFor(t, "the server signing with ed25519:1", func() bool { return h.App.Service.Signer().KeyID() == "ed25519:1" })

		assoc := h.Bind(t, bob, "bob@example.org")
		sigs, _ := assoc["signatures"].(map[string]any)[h.App.Config.ServerName].(map[string]any)
		if _, ok := sigs["ed25519:1"]; !ok || len(sigs) != 1 {
			t.Fatalf("association signed with %v, want ed25519:1", sigs)
		}
		// The onbind's invite is signed with both keys, and each signature verifies.
		waitFor(t, "the onbind", func() bool { return len(h.HS.Delivered()) > 0 })
		var body struct {
			Invites []struct {
				Token  string          `json:"token"`
				Signed json.RawMessage `json:"signed"`
			} `json:"invites"`
		}
		if err := json.Unmarshal(h.HS.Delivered()[0].Body, &body); err != nil || len(body.Invites) != 1 || body.Invites[0].Token != inv.Token {
			t.Fatalf("onbind: %v %s", err, h.HS.Delivered()[0].Body)
		}
		for keyID, pub := range map[string]string{"ed25519:0": old, "ed25519:1": k.PublicKey} {
			if err := signutil.VerifyJSON(h.App.Config.ServerName, id.KeyID(keyID), id.SigningKey(pub), body.Invites[0].Signed); err != nil {
				t.Errorf("the invite's signature by %s: %v (%s)", keyID, err, body.Invites[0].Signed)
			}
		}
		if _, err := h.App.VerifyAudit(ctx, &cp); err != nil {
			t.Errorf("a checkpoint signed with ed25519:0 after the rotation: %v", err)
		}

		cli := beside(t, h)
		if err := cli.Service.RetireSigningKey(ctx, "ed25519:1"); err == nil {
			t.Fatal("the current key was retired")
		}
		var ie *identity.Error
		if err := cli.Service.RetireSigningKey(ctx, "ed25519:7"); !errors.As(err, &ie) || ie.Code != identity.CodeNotFound {
			t.Fatalf("retire an unknown key: %v", err)
		}
		if err := cli.Service.RetireSigningKey(ctx, "ed25519:0"); err != nil {
			t.Fatal(err)
		}
		h.Get(t, v2+"/pubkey/ed25519:0", "").Want(t, http.StatusNotFound, "M_NOT_FOUND")
		if isValid(t, h, old) || !isValid(t, h, k.PublicKey) {
			t.Fatal("isvalid after the retirement: want the old key invalid, the current valid")
		}
		if _, err := h.App.VerifyAudit(ctx, &cp); err != nil {
			t.Errorf("a checkpoint signed with a retired key: %v", err)
		}
		// The retired key no longer co-signs, once the server looked again.
		waitFor(t, "the retired key to stop signing", func() bool {
			obj := map[string]any{"mxid": "@x:hs", "token": "t"}
			h.App.Service.Signer().SignInvite(obj)
			return len(obj["signatures"].(map[string]any)[h.App.Config.ServerName].(map[string]any)) == 1
		})
	})
}

// A pepper rotated by another process while the server runs: a lookup with the new pepper is
// answered at once (the server looks before refusing it), hash_details turns to it within
// seconds, a lookup with the old one is then refused with M_INVALID_PEPPER, and every binding
// is found under the new pepper.
func TestPepperRotation(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		ctx := context.Background()
		h := apitest.New(t, e)
		alice := h.NewUser(t, "alice")
		h.Bind(t, alice, "alice@example.org")
		old := h.Pepper(t, alice)
		lookup := func(pepper string) *apitest.Response {
			hash := lookupHash("alice@example.org", "email", pepper)
			return h.Post(t, v2+"/lookup", alice.Token, map[string]any{"addresses": []string{hash}, "algorithm": "sha256", "pepper": pepper})
		}
		found := func(r *apitest.Response, pepper string) bool {
			m, _ := r.JSON(t)["mappings"].(map[string]any)
			return m[lookupHash("alice@example.org", "email", pepper)] == alice.MXID
		}
		if r := lookup(old).Want(t, http.StatusOK, ""); !found(r, old) {
			t.Fatalf("before: %s", r.Body)
		}
		fresh, err := beside(t, h).Service.RotatePepper(ctx)
		if err != nil || fresh == old {
			t.Fatalf("rotate: %q %v", fresh, err)
		}
		if r := lookup(fresh).Want(t, http.StatusOK, ""); !found(r, fresh) {
			t.Fatalf("with the new pepper, at once: %s", r.Body)
		}
		waitFor(t, "hash_details with the new pepper", func() bool { return h.Pepper(t, alice) == fresh })
		lookup(old).Want(t, http.StatusBadRequest, "M_INVALID_PEPPER")
	})
}

func lookupHash(address, medium, pepper string) string {
	sum := sha256.Sum256([]byte(address + " " + medium + " " + pepper))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}
