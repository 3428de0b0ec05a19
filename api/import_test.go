package api_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/api"
	"github.com/ozo-platform/ozo-identity/api/apitest"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
)

type importAnswer struct {
	Created, Updated, Unchanged, Superseded int
	Invalid                                 []struct {
		Index   int    `json:"index"`
		Errcode string `json:"errcode"`
	}
}

// The batch endpoint imports thousands of bindings per call with the rules of POST /bindings,
// skips and reports hostile entries, is idempotent, and leaves one audit record per batch.
func TestAdminImportBindings(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		h := apitest.New(t, e)
		alice := h.NewUser(t, "alice")
		h.Bind(t, alice, "alice@example.org")
		bob := h.NewUser(t, "bob")
		batches := 0
		post := func(path, token string, body any) *apitest.Response {
			t.Helper()
			batches++
			r := apitest.Request{Method: http.MethodPost, Path: admin + path, Body: body}
			if token != "" {
				r.Header = http.Header{"Authorization": {"Bearer " + token}}
			}
			return h.Do(t, r)
		}
		answer := func(r *apitest.Response) importAnswer {
			t.Helper()
			var a importAnswer
			if err := json.Unmarshal(r.Body, &a); err != nil {
				t.Fatal(err)
			}
			return a
		}
		hs := h.HS.Name
		entries := []map[string]string{}
		for i := range 3000 {
			entries = append(entries, map[string]string{"medium": "email", "address": fmt.Sprintf("User%d@Example.org", i), "mxid": fmt.Sprintf("@u%d:%s", i, hs)})
		}
		hostile := []map[string]string{
			{"medium": "uzi", "address": "12345", "mxid": "@p:" + hs},              // 3000: not 9 digits
			{"medium": "email", "address": "a@b@c.org", "mxid": "@p:" + hs},        // 3001: M_INVALID_EMAIL
			{"medium": "msisdn", "address": "31612345678", "mxid": "@p:" + hs},     // 3002: unsupported medium
			{"medium": "email", "address": "x@example.org", "mxid": "not-an-mxid"}, // 3003
			{"address": "y@example.org", "mxid": "@p:" + hs},                       // 3004: no medium
			// The same 3PID twice with different MXIDs: the later wins, as a second bind would.
			{"medium": "uzi_nr", "address": "012345678", "mxid": "@first:" + hs},
			{"medium": "uzi", "address": "012345678", "mxid": "@second:" + hs},
			// The earlier binding of alice, rebound by the import: POST /bindings does the same.
			{"medium": "email", "address": "alice@example.org", "mxid": alice.MXID},
		}
		entries = append(entries, hostile...)

		post("/bindings/batch", "", entries).Want(t, http.StatusUnauthorized, "M_UNAUTHORIZED")
		post("/bindings/batch", "wrong-token", entries).Want(t, http.StatusForbidden, "M_FORBIDDEN")
		if got := h.LookupOne(t, bob, "email", "user1@example.org"); got != "" {
			t.Fatalf("refused batch bound %q", got)
		}

		a := answer(post("/bindings/batch", apitest.AdminToken, entries).Want(t, http.StatusOK, ""))
		if a.Created != 3001 || a.Unchanged != 1 || a.Updated != 0 || a.Superseded != 1 || len(a.Invalid) != 5 {
			t.Fatalf("first batch: %+v", a)
		}
		wantCodes := map[int]string{3000: "M_INVALID_PARAM", 3001: "M_INVALID_EMAIL", 3002: "M_INVALID_PARAM", 3003: "M_INVALID_PARAM", 3004: "M_INVALID_PARAM"}
		for _, inv := range a.Invalid {
			if wantCodes[inv.Index] != inv.Errcode {
				t.Fatalf("invalid entry %d reported as %s, want %v", inv.Index, inv.Errcode, wantCodes)
			}
		}
		pepper := h.Pepper(t, bob)
		got := lookupHashed(t, h, bob, sha256Hash("user2999@example.org", "email", pepper), sha256Hash("012345678", "uzi_nr", pepper))
		if got[sha256Hash("user2999@example.org", "email", pepper)] != "@u2999:"+hs || got[sha256Hash("012345678", "uzi_nr", pepper)] != "@second:"+hs {
			t.Fatalf("lookups after import: %v", got)
		}

		// Idempotent: the same batch again changes nothing.
		a = answer(post("/bindings/batch", apitest.AdminToken, entries).Want(t, http.StatusOK, ""))
		if a.Created != 0 || a.Updated != 0 || a.Unchanged != 3002 || len(a.Invalid) != 5 {
			t.Fatalf("re-import: %+v", a)
		}
		// A different MXID for a bound 3PID rebinds it.
		a = answer(post("/bindings/batch", apitest.AdminToken, []map[string]string{
			{"medium": "email", "address": "user7@example.org", "mxid": "@moved:" + hs}}).Want(t, http.StatusOK, ""))
		if a.Updated != 1 {
			t.Fatalf("rebind: %+v", a)
		}
		if got := h.LookupOne(t, bob, "email", "user7@example.org"); got != "@moved:"+hs {
			t.Fatalf("after rebind: %q", got)
		}

		// Strict: one invalid entry imports nothing.
		r := post("/bindings/batch?strict=true", apitest.AdminToken, []map[string]string{
			{"medium": "email", "address": "strict@example.org", "mxid": "@s:" + hs}, hostile[0]}).
			Want(t, http.StatusBadRequest, "M_INVALID_PARAM")
		if !strings.Contains(string(r.Body), `"index":1`) {
			t.Fatalf("strict answer does not name the entry: %s", r.Body)
		}
		if got := h.LookupOne(t, bob, "email", "strict@example.org"); got != "" {
			t.Fatalf("strict batch with an invalid entry bound %q", got)
		}

		// Bounded: one entry more than a batch holds, and bodies that are no array.
		tooMany := make([]map[string]string, api.MaxImportBatch+1)
		for i := range tooMany {
			tooMany[i] = entries[i%3000]
		}
		post("/bindings/batch", apitest.AdminToken, tooMany).Want(t, http.StatusRequestEntityTooLarge, "M_TOO_LARGE")
		post("/bindings/batch", apitest.AdminToken, `{"medium":"email"}`).Want(t, http.StatusBadRequest, "M_BAD_JSON")
		post("/bindings/batch", apitest.AdminToken, `[{"medium":`).Want(t, http.StatusBadRequest, "M_NOT_JSON")
		post("/bindings/batch", apitest.AdminToken, `[{"medium":1}]`).Want(t, http.StatusBadRequest, "M_BAD_JSON")

		// A pending invite for an imported address reaches the homeserver, as after a bind.
		storeInvite(t, h, bob, emailInvite(bob, "invited@example.org"))
		a = answer(post("/bindings/batch", apitest.AdminToken, []map[string]string{
			{"medium": "email", "address": "invited@example.org", "mxid": "@invited:" + hs}}).Want(t, http.StatusOK, ""))
		if a.Created != 1 {
			t.Fatalf("invited import: %+v", a)
		}
		ob := waitDelivered(t, h, 1)
		if !strings.Contains(string(ob.Body), "@invited:"+hs) {
			t.Fatalf("onbind body: %s", ob.Body)
		}

		// One audit record per batch, refused ones included, with what it did, and one bind
		// record per changed binding from the import's own transaction.
		h.App.Lookups.Flush(t.Context())
		recs, err := h.App.Store.ListAudit(t.Context(), time.Time{}, 0, 1_000_000)
		if err != nil {
			t.Fatal(err)
		}
		n, binds, summary := 0, 0, false
		for _, rec := range recs {
			switch {
			case rec.Action == "admin.call" && rec.Resource == "POST "+admin+"/bindings/batch":
				n += max(int(rec.Count), 1)
				summary = summary || strings.Contains(rec.Detail, "created=3001 updated=0 unchanged=1 superseded=1 invalid=5")
			case rec.Action == "bind" && rec.Actor.Kind == "admin":
				binds++
			}
		}
		if n != batches || !summary {
			t.Fatalf("%d audit records for %d batches (summary found: %v)", n, batches, summary)
		}
		if rep, err := h.App.VerifyAudit(t.Context(), nil); err != nil {
			t.Fatalf("audit chain: %+v %v", rep, err)
		}
		var bound int
		h.App.DB.QueryRowContext(t.Context(), `SELECT COUNT(*) FROM bindings WHERE source = 'admin'`).Scan(&bound)
		if binds < bound {
			t.Fatalf("%d bind records for %d imported bindings", binds, bound)
		}
		if got := h.LookupOne(t, bob, "email", "alice@example.org"); got != alice.MXID {
			t.Fatalf("earlier binding lost: %q", got)
		}
	})
}

// Batches sent at once, more than are imported side by side, all land: each answers 200 with
// its own counts (none waits out its deadline), every binding is found, and the audit chain
// holds one record per batch.
func TestAdminImportBatchesAtOnce(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		h := apitest.New(t, e)
		bob := h.NewUser(t, "bob")
		const senders, per = 12, 400
		var wg sync.WaitGroup
		for w := range senders {
			wg.Go(func() {
				entries := make([]map[string]string, per)
				for i := range entries {
					entries[i] = map[string]string{"medium": "email", "address": fmt.Sprintf("w%d-%d@example.org", w, i),
						"mxid": fmt.Sprintf("@w%d-%d:%s", w, i, h.HS.Name)}
				}
				r := h.Do(t, apitest.Request{Method: http.MethodPost, Path: admin + "/bindings/batch", Body: entries,
					Header: http.Header{"Authorization": {"Bearer " + apitest.AdminToken}}})
				var a importAnswer
				if r.Status != http.StatusOK || json.Unmarshal(r.Body, &a) != nil || a.Created != per || len(a.Invalid) != 0 {
					t.Errorf("sender %d: %d %s", w, r.Status, r.Body)
				}
			})
		}
		wg.Wait()
		var bound int
		h.App.DB.QueryRowContext(t.Context(), `SELECT COUNT(*) FROM bindings WHERE source = 'admin'`).Scan(&bound)
		if bound != senders*per {
			t.Fatalf("%d bindings stored, want %d", bound, senders*per)
		}
		for w := range senders {
			i := (w * 37) % per
			if got, want := h.LookupOne(t, bob, "email", fmt.Sprintf("w%d-%d@example.org", w, i)), fmt.Sprintf("@w%d-%d:%s", w, i, h.HS.Name); got != want {
				t.Errorf("w%d-%d looked up as %q, want %q", w, i, got, want)
			}
		}
		if rep, err := h.App.VerifyAudit(t.Context(), nil); err != nil {
			t.Fatalf("audit chain: %+v %v", rep, err)
		}
	})
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
