package api_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/ozo-platform/ozo-identity/api/apitest"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
	"github.com/ozo-platform/ozo-identity/threepid"
)

// TestMixedCaseIDPHashedLookup: matrix-js-sdk lower-cases "address medium" before hashing, so an
// idp subject with capitals is looked up by the hash of its lower-case form. That finds the
// binding while it is the only one folding to that form; once a second binding folds to it too,
// the lower-cased hash answers nothing (the spec keeps idp subjects case-sensitive), while exact
// hashes keep answering both.
func TestMixedCaseIDPHashedLookup(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		h := apitest.New(t, e)
		bob := h.NewUser(t, "bob")
		adminBind := func(address, mxid string) {
			t.Helper()
			h.Do(t, apitest.Request{Method: http.MethodPost, Path: admin + "/bindings",
				Header: http.Header{"Authorization": {"Bearer " + apitest.AdminToken}},
				Body:   map[string]any{"medium": "idp", "address": address, "mxid": mxid}}).Want(t, http.StatusOK, "")
		}
		hashed := func(addresses ...string) map[string]string {
			t.Helper()
			pepper := h.Pepper(t, bob)
			var hashes []string
			byHash := map[string]string{}
			for _, a := range addresses {
				// What the SDK sends: sha256 of the lower-cased "address medium pepper".
				hh := threepid.LookupHash(strings.ToLower(a), "idp", pepper)
				hashes = append(hashes, hh)
				byHash[hh] = a
			}
			r := h.Post(t, v2+"/lookup", bob.Token, map[string]any{"addresses": hashes, "algorithm": "sha256", "pepper": pepper}).
				Want(t, http.StatusOK, "")
			var out struct {
				Mappings map[string]string `json:"mappings"`
			}
			if err := json.Unmarshal(r.Body, &out); err != nil {
				t.Fatal(err)
			}
			found := map[string]string{}
			for hh, mxid := range out.Mappings {
				found[byHash[hh]] = mxid
			}
			return found
		}
		alice := "@alice:" + h.HS.Name
		adminBind("zorgnet:Alice.DeVries", alice)
		if got := hashed("zorgnet:Alice.DeVries"); got["zorgnet:Alice.DeVries"] != alice {
			t.Fatalf("lower-cased hash of a mixed-case idp subject: %v", got)
		}
		// Exact (case-sensitive) hashes and plain lookups still work.
		if got := h.LookupOne(t, bob, "idp", "zorgnet:Alice.DeVries"); got != alice {
			t.Fatalf("exact lookup: %q", got)
		}
		if got := h.LookupOne(t, bob, "idp", "zorgnet:alice.devries"); got != "" {
			t.Fatalf("plain lookup of the lower-case subject found %q; only hashed lookups fold", got)
		}

		// A second subject differing only in case makes the folded hash ambiguous.
		mallory := "@mallory:" + h.HS.Name
		adminBind("zorgnet:ALICE.DEVRIES", mallory)
		if got := hashed("zorgnet:Alice.DeVries"); len(got) != 0 {
			t.Fatalf("ambiguous lower-cased hash answered: %v", got)
		}
		if got := h.LookupOne(t, bob, "idp", "zorgnet:Alice.DeVries"); got != alice {
			t.Fatalf("exact lookup after the second binding: %q", got)
		}
		if got := h.LookupOne(t, bob, "idp", "zorgnet:ALICE.DEVRIES"); got != mallory {
			t.Fatalf("exact lookup of the second binding: %q", got)
		}
		// Once the other is unbound, the folded hash is unambiguous again.
		h.Do(t, apitest.Request{Method: http.MethodDelete, Path: admin + "/bindings/idp/zorgnet:ALICE.DEVRIES",
			Header: http.Header{"Authorization": {"Bearer " + apitest.AdminToken}}}).Want(t, http.StatusOK, "")
		if got := hashed("zorgnet:Alice.DeVries"); got["zorgnet:Alice.DeVries"] != alice {
			t.Fatalf("after unbinding the other subject: %v", got)
		}
	})
}
