package api_test

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"net/http"
	"testing"

	"github.com/ozo-platform/ozo-identity/api/apitest"
	"github.com/ozo-platform/ozo-identity/config"
	"github.com/ozo-platform/ozo-identity/internal/pkitest"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
)

// TestPinnedHomeserverCertificate: a test homeserver whose self-signed certificate has no
// subjectAltName can be trusted only through homeservers.pinned_certs. Pinned (by certificate
// or by public key), registration works; the same homeserver unpinned, or one presenting another
// certificate under a pinned name, is refused; the CA-verified homeserver keeps working.
func TestPinnedHomeserverCertificate(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		byCert := pkitest.SelfSigned(t, "hs.test.internal")
		byKey := pkitest.SelfSigned(t, "hs2.test.internal")
		impostor := pkitest.SelfSigned(t, "hs.test.internal")
		pinnedCert := apitest.NewHomeserverTLS(t, &tls.Config{Certificates: []tls.Certificate{byCert}})
		pinnedKey := apitest.NewHomeserverTLS(t, &tls.Config{Certificates: []tls.Certificate{byKey}})
		unpinned := apitest.NewHomeserverTLS(t, &tls.Config{Certificates: []tls.Certificate{pkitest.SelfSigned(t, "x")}})
		wrong := apitest.NewHomeserverTLS(t, &tls.Config{Certificates: []tls.Certificate{impostor}})

		certSum := sha256.Sum256(byCert.Leaf.Raw)
		spkiSum := sha256.Sum256(byKey.Leaf.RawSubjectPublicKeyInfo)
		h := apitest.New(t, e, func(c *config.Config) {
			c.Homeservers.Allowed = append(c.Homeservers.Allowed, pinnedCert.Name, pinnedKey.Name, unpinned.Name, wrong.Name)
			c.Homeservers.PinnedCerts = map[string]string{
				pinnedCert.Name: "sha256/" + hex.EncodeToString(certSum[:]),
				pinnedKey.Name:  "sha256/" + base64.StdEncoding.EncodeToString(spkiSum[:]),
				// The impostor's name is pinned to the first certificate, not its own.
				wrong.Name: "sha256/" + base64.RawURLEncoding.EncodeToString(certSum[:]),
			}
		})
		register := func(hs *apitest.Homeserver) *apitest.Response {
			t.Helper()
			token, _ := hs.IssueOpenIDToken("dr.jansen")
			return h.Post(t, v2+"/account/register", "", map[string]any{"access_token": token, "token_type": "Bearer",
				"matrix_server_name": hs.Name, "expires_in": 3600})
		}
		for _, hs := range []*apitest.Homeserver{pinnedCert, pinnedKey} {
			tok := register(hs).Want(t, http.StatusOK, "").Str(t, "token")
			if got := h.Get(t, v2+"/account", tok).Want(t, http.StatusOK, "").Str(t, "user_id"); got != "@dr.jansen:"+hs.Name {
				t.Fatalf("registered as %q", got)
			}
		}
		for _, hs := range []*apitest.Homeserver{unpinned, wrong} {
			r := register(hs)
			if r.Status == http.StatusOK {
				t.Fatalf("registration through %s succeeded: %s", hs.Name, r.Body)
			}
			if r.Errcode() == "" {
				t.Fatalf("refusal without a Matrix error: %d %s", r.Status, r.Body)
			}
			if hs.Hits() != 0 && hs == wrong {
				t.Fatalf("the impostor answered %d requests", hs.Hits())
			}
		}
		// The CA-verified homeserver is unaffected.
		h.NewUser(t, "alice")
	})
}
