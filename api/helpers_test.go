package api_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"

	"maunium.net/go/mautrix/federation/signutil"
	"maunium.net/go/mautrix/id"

	"github.com/ozo-platform/ozo-identity/api/apitest"
	"github.com/ozo-platform/ozo-identity/email/smtptest"
)

const v2 = apitest.V2

// sha256Hash computes a v2 lookup hash independently of the server's code.
func sha256Hash(address, medium, pepper string) string {
	sum := sha256.Sum256([]byte(address + " " + medium + " " + pepper))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// publicKey fetches the server's long-term key from GET /v2/pubkey/ed25519:0.
func publicKey(t *testing.T, h *apitest.Harness) string {
	t.Helper()
	return h.Get(t, v2+"/pubkey/ed25519:0", "").Want(t, http.StatusOK, "").Str(t, "public_key")
}

// verifyServerSigned checks the server's ed25519:0 signature on raw JSON against the published key.
func verifyServerSigned(t *testing.T, h *apitest.Harness, raw []byte) {
	t.Helper()
	if err := signutil.VerifyJSON(h.Config.ServerName, id.KeyID("ed25519:0"), id.SigningKey(publicKey(t, h)), json.RawMessage(raw)); err != nil {
		t.Fatalf("signature of %s does not verify against the published key: %v\n%s", h.Config.ServerName, err, raw)
	}
}

// keys returns the sorted member names of a JSON object.
func keys(t *testing.T, raw []byte) []string {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("not an object: %v: %s", err, raw)
	}
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func wantKeys(t *testing.T, raw []byte, want ...string) {
	t.Helper()
	slices.Sort(want)
	if got := keys(t, raw); !slices.Equal(got, want) {
		t.Fatalf("members %v, want exactly %v: %s", got, want, raw)
	}
}

// lookupHashed resolves sha256 hashes and returns the mappings.
func lookupHashed(t *testing.T, h *apitest.Harness, u apitest.User, hashes ...string) map[string]string {
	t.Helper()
	r := h.Post(t, v2+"/lookup", u.Token, map[string]any{
		"addresses": hashes, "algorithm": "sha256", "pepper": h.Pepper(t, u),
	}).Want(t, http.StatusOK, "")
	var out struct {
		Mappings map[string]string `json:"mappings"`
	}
	if err := json.Unmarshal(r.Body, &out); err != nil {
		t.Fatal(err)
	}
	return out.Mappings
}

// invite is what store-invite answered.
type invite struct {
	Token       string `json:"token"`
	DisplayName string `json:"display_name"`
	PublicKey   string `json:"public_key"`
	PublicKeys  []struct {
		PublicKey      string `json:"public_key"`
		KeyValidityURL string `json:"key_validity_url"`
	} `json:"public_keys"`
}

func storeInvite(t *testing.T, h *apitest.Harness, u apitest.User, body map[string]any) invite {
	t.Helper()
	r := h.Post(t, v2+"/store-invite", u.Token, body).Want(t, http.StatusOK, "")
	var inv invite
	if err := json.Unmarshal(r.Body, &inv); err != nil {
		t.Fatal(err)
	}
	if inv.Token == "" || len(inv.PublicKeys) != 2 {
		t.Fatalf("store-invite answered %s", r.Body)
	}
	return inv
}

func emailInvite(u apitest.User, address string) map[string]any {
	return map[string]any{"medium": "email", "address": address, "room_id": "!zorgteam:hs.ozo.test",
		"sender": u.MXID, "room_name": "Zorgteam Jansen", "sender_display_name": "Dr. Alice"}
}

// ephemeralKey is a caller-side Ed25519 key for sign-ed25519, as base64 of the seed.
func ephemeralKey(t *testing.T) (priv string, pub ed25519.PublicKey) {
	t.Helper()
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return base64.RawStdEncoding.EncodeToString(key.Seed()), pub
}

func q(kv ...string) string {
	v := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		v.Set(kv[i], kv[i+1])
	}
	return "?" + v.Encode()
}

func valid(t *testing.T, r *apitest.Response) bool {
	t.Helper()
	v, ok := r.JSON(t)["valid"].(bool)
	if !ok {
		t.Fatalf("no boolean valid: %s", r.Body)
	}
	return v
}

func hasHeader(m smtptest.Message, name string) bool {
	for _, n := range m.HeaderNames {
		if strings.EqualFold(n, name) {
			return true
		}
	}
	return false
}
