package api_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/api/apitest"
	"github.com/ozo-platform/ozo-identity/lookup/mcsd"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
	"github.com/ozo-platform/ozo-identity/threepid"
)

// POST /_ozo/admin/v1/directory/sync {full, uras} re-reads a directory whose index rows were
// lost; while another sync holds the lease it answers 409 and changes nothing.
func TestAdminDirectorySync(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		h, srv := directoryHarness(t, e)
		ctx := context.Background()
		uzi := threepid.ThreePID{Medium: "uzi", Address: "900023457"} // at the GP practice, URA 17004512
		resolves := func() string {
			got, err := h.App.Index.Resolve(ctx, []threepid.ThreePID{uzi})
			if err != nil {
				t.Fatal(err)
			}
			return got[uzi]
		}
		want := resolves()
		if want == "" {
			t.Fatal("test premise: the GP practitioner resolves after the first sync")
		}
		sum := sha256.Sum256([]byte(srv.URL("huisartsenpraktijk-de-linde")))
		for _, tbl := range []string{"mcsd_resources", "mcsd_refs", "mcsd_identifiers", "mcsd_addresses", "mcsd_hashes"} {
			if _, err := h.App.DB.ExecContext(ctx, `DELETE FROM `+tbl+` WHERE dir = $1`, hex.EncodeToString(sum[:8])); err != nil {
				t.Fatal(err)
			}
		}
		if resolves() != "" {
			t.Fatal("test premise: the corrupted directory resolves nothing")
		}
		call := func(token string, body any) *apitest.Response {
			t.Helper()
			r := apitest.Request{Method: http.MethodPost, Path: admin + "/directory/sync", Body: body}
			if token != "" {
				r.Header = http.Header{"Authorization": {"Bearer " + token}}
			}
			return h.Do(t, r)
		}
		full := map[string]any{"full": true, "uras": []string{"17004512"}}
		call("", full).Want(t, http.StatusUnauthorized, "M_UNAUTHORIZED")
		call(apitest.AdminToken, map[string]any{"full": true, "uras": []string{"1700"}}).Want(t, http.StatusBadRequest, "M_INVALID_PARAM")
		call(apitest.AdminToken, map[string]any{"uras": []string{"17004512"}}).Want(t, http.StatusBadRequest, "M_INVALID_PARAM")
		call(apitest.AdminToken, map[string]any{"full": "yes"}).Want(t, http.StatusBadRequest, "M_BAD_JSON")

		// The CLI (or a replica) is syncing: 409, and nothing runs.
		other, err := h.App.DB.AcquireLease(ctx, mcsd.LeaseName, "ops-host/pid-42/cli", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		r := call(apitest.AdminToken, full).Want(t, http.StatusConflict, "M_UNKNOWN")
		if msg := r.JSON(t)["error"].(string); !strings.Contains(msg, "another directory sync is running") || !strings.Contains(msg, "ops-host/pid-42/cli") {
			t.Errorf("409 message %q", msg)
		}
		time.Sleep(200 * time.Millisecond)
		if resolves() != "" {
			t.Fatal("a refused sync ran")
		}
		if err := other.Release(ctx); err != nil {
			t.Fatal(err)
		}

		r = call(apitest.AdminToken, full).Want(t, http.StatusAccepted, "")
		if r.JSON(t)["started"] != true {
			t.Errorf("202 body %s", r.Body)
		}
		deadline := time.Now().Add(20 * time.Second)
		for resolves() != want {
			if time.Now().After(deadline) {
				t.Fatalf("the full re-read did not recover the directory\n%s", h.Logs())
			}
			time.Sleep(50 * time.Millisecond)
		}
		// The lease is given back once the sync is done.
		for {
			l, err := h.App.DB.AcquireLease(ctx, mcsd.LeaseName, "after", time.Minute)
			if err == nil {
				l.Release(ctx)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("lease still held: %v", err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}
