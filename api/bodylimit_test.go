package api_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/ozo-platform/ozo-identity/api/apitest"
	"github.com/ozo-platform/ozo-identity/config"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
	"github.com/ozo-platform/ozo-identity/threepid"
)

// lookup.max_batch promised 10,000 addresses while the 64 KiB body limit refused about 1,400
// hashes: the lookup endpoints' body limit now follows max_batch, even for the longest addresses
// in plain ("none") form, while every other endpoint keeps the small limit.
func TestLookupBodyLimitFollowsMaxBatch(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		const maxBatch = 10000
		h := apitest.New(t, e, func(c *config.Config) {
			c.Lookup.MaxBatch = maxBatch
			c.HTTP.MaxBodyBytes = 64 << 10
			c.V1.Enabled, c.V1.Networks = true, []string{"127.0.0.0/8"}
		})
		alice := h.NewUser(t, "alice")
		bob := h.NewUser(t, "bob")
		longIdP := "hospital:" + strings.Repeat("s", threepid.MaxAddressLength-len("hospital:"))
		for _, b := range [][2]string{{"email", "alice@example.org"}, {"idp", longIdP}} {
			h.Do(t, apitest.Request{Method: http.MethodPost, Path: "/_ozo/admin/v1/bindings",
				Header: http.Header{"Authorization": {"Bearer " + apitest.AdminToken}},
				Body:   map[string]string{"medium": b[0], "address": b[1], "mxid": alice.MXID}}).Want(t, http.StatusOK, "")
		}
		pepper := h.Pepper(t, bob)

		// A full batch of hashes: about 450 KiB, seven times the small limit.
		hashes := make([]string, maxBatch)
		for i := range hashes {
			hashes[i] = sha256Hash(fmt.Sprintf("u%d@example.org", i), "email", pepper)
		}
		hashes[maxBatch-1] = sha256Hash("alice@example.org", "email", pepper)
		if got := lookupHashed(t, h, bob, hashes...); len(got) != 1 || got[hashes[maxBatch-1]] != alice.MXID {
			t.Fatalf("max_batch sha256 lookup: %v", got)
		}
		h.Post(t, v2+"/lookup", bob.Token, map[string]any{"addresses": append(hashes, hashes[0]), "algorithm": "sha256",
			"pepper": pepper}).Want(t, http.StatusRequestEntityTooLarge, "M_TOO_LARGE")

		// A full batch of the longest accepted plain addresses fits too.
		plain := make([]string, maxBatch)
		for i := range plain {
			plain[i] = longIdP + " idp"
		}
		r := h.Post(t, v2+"/lookup", bob.Token, map[string]any{"addresses": plain, "algorithm": "none",
			"pepper": pepper}).Want(t, http.StatusOK, "")
		if !strings.Contains(string(r.Body), alice.MXID) {
			t.Fatalf("max_batch plain lookup of the longest address did not resolve: %.200s", r.Body)
		}
		// v1 bulk_lookup has the same bound.
		pairs := make([][]string, maxBatch)
		for i := range pairs {
			pairs[i] = []string{"idp", longIdP}
		}
		h.Post(t, "/_matrix/identity/api/v1/bulk_lookup", "", map[string]any{"threepids": pairs}).Want(t, http.StatusOK, "")

		// The bound still holds: padding beyond it is refused before it is read whole.
		huge := `{"algorithm":"sha256","pepper":"` + pepper + `","addresses":[]` + strings.Repeat(" ", 6<<20) + `}`
		h.Post(t, v2+"/lookup", bob.Token, huge).Want(t, http.StatusRequestEntityTooLarge, "M_TOO_LARGE")
		// Other endpoints keep http.max_body_bytes.
		h.Post(t, v2+"/terms", bob.Token, `{"user_accepts":[]`+strings.Repeat(" ", 64<<10)+`}`).
			Want(t, http.StatusRequestEntityTooLarge, "M_TOO_LARGE")
		h.Post(t, "/_matrix/identity/v2/account/register", "", `{"access_token":"`+strings.Repeat("a", 64<<10)+`"}`).
			Want(t, http.StatusRequestEntityTooLarge, "M_TOO_LARGE")

		// Nothing stored was lost.
		if got := h.LookupOne(t, bob, "email", "alice@example.org"); got != alice.MXID {
			t.Fatalf("binding lost: %q", got)
		}
	})
}
