package api_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/ozo-platform/ozo-identity/api/apitest"
	"github.com/ozo-platform/ozo-identity/config"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
)

const admin = "/_ozo/admin/v1"

func TestAdmin(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		h := apitest.New(t, e)
		bob := h.NewUser(t, "bob")
		drJansen := "@dr.jansen:" + h.HS.Name
		calls := 0
		call := func(method, path, token string, body any) *apitest.Response {
			t.Helper()
			calls++
			r := apitest.Request{Method: method, Path: admin + path, Body: body}
			if token != "" {
				r.Header = http.Header{"Authorization": {"Bearer " + token}}
			}
			return h.Do(t, r)
		}
		listed := func() []map[string]any {
			t.Helper()
			var out struct {
				Bindings []map[string]any `json:"bindings"`
			}
			json.Unmarshal(call(http.MethodGet, "/bindings", apitest.AdminToken, nil).Want(t, http.StatusOK, "").Body, &out)
			return out.Bindings
		}
		create := map[string]any{"medium": "uzi", "address": "123456789", "mxid": drJansen}

		// Without the right token nothing changes.
		call(http.MethodPost, "/bindings", "", create).Want(t, http.StatusUnauthorized, "M_UNAUTHORIZED")
		call(http.MethodPost, "/bindings", "wrong-token", create).Want(t, http.StatusForbidden, "M_FORBIDDEN")
		call(http.MethodGet, "/bindings", "", nil).Want(t, http.StatusUnauthorized, "M_UNAUTHORIZED")
		call(http.MethodGet, "/audit", "wrong-token", nil).Want(t, http.StatusForbidden, "M_FORBIDDEN")
		// The v2 access token of a user is not an admin token.
		call(http.MethodGet, "/bindings", bob.Token, nil).Want(t, http.StatusForbidden, "M_FORBIDDEN")
		if got := listed(); len(got) != 0 {
			t.Fatalf("bindings after refused calls: %v", got)
		}
		if got := h.LookupOne(t, bob, "uzi", "123456789"); got != "" {
			t.Fatalf("refused admin call bound uzi to %q", got)
		}

		r := call(http.MethodPost, "/bindings", apitest.AdminToken, create).Want(t, http.StatusOK, "")
		verifyServerSigned(t, h, r.Body)
		if got := h.LookupOne(t, bob, "uzi", "123456789"); got != drJansen {
			t.Fatalf("lookup uzi: %q", got)
		}
		// Hashed lookups find it under both medium names.
		pepper := h.Pepper(t, bob)
		found := lookupHashed(t, h, bob, sha256Hash("123456789", "uzi", pepper), sha256Hash("123456789", "uzi_nr", pepper))
		if len(found) != 2 {
			t.Fatalf("hashed uzi lookup: %v", found)
		}
		list := listed()
		if len(list) != 1 || list[0]["medium"] != "uzi" || list[0]["address"] != "123456789" || list[0]["mxid"] != drJansen || list[0]["source"] != "admin" {
			t.Fatalf("bindings: %v", list)
		}

		call(http.MethodPost, "/bindings", apitest.AdminToken, map[string]any{"medium": "uzi", "address": "12345", "mxid": drJansen}).
			Want(t, http.StatusBadRequest, "M_INVALID_PARAM")
		call(http.MethodPost, "/bindings", apitest.AdminToken, map[string]any{"medium": "uzi", "address": "123456789", "mxid": "jansen"}).
			Want(t, http.StatusBadRequest, "M_INVALID_PARAM")
		call(http.MethodPost, "/bindings", apitest.AdminToken, map[string]any{"medium": "uzi"}).Want(t, http.StatusBadRequest, "M_MISSING_PARAMS")
		call(http.MethodPost, "/bindings", apitest.AdminToken, `{"medium":`).Want(t, http.StatusBadRequest, "M_NOT_JSON")
		call(http.MethodGet, "/bindings?limit=0", apitest.AdminToken, nil).Want(t, http.StatusBadRequest, "M_INVALID_PARAM")
		call(http.MethodDelete, "/bindings/uzi/123456789", "wrong-token", nil).Want(t, http.StatusForbidden, "M_FORBIDDEN")
		if got := h.LookupOne(t, bob, "uzi", "123456789"); got != drJansen {
			t.Fatalf("after refused calls, uzi resolves to %q", got)
		}

		// Pages follow next_after.
		for _, uzi := range []string{"111111111", "222222222"} {
			call(http.MethodPost, "/bindings", apitest.AdminToken, map[string]any{"medium": "uzi_nr", "address": uzi, "mxid": drJansen}).
				Want(t, http.StatusOK, "")
		}
		var page struct {
			Bindings  []struct{ Address string } `json:"bindings"`
			NextAfter string                     `json:"next_after"`
		}
		json.Unmarshal(call(http.MethodGet, "/bindings?medium=uzi&limit=2", apitest.AdminToken, nil).Want(t, http.StatusOK, "").Body, &page)
		if len(page.Bindings) != 2 || page.Bindings[0].Address != "111111111" || page.NextAfter != "123456789" {
			t.Fatalf("first page: %+v", page)
		}
		page.NextAfter = ""
		json.Unmarshal(call(http.MethodGet, "/bindings?medium=uzi&limit=2&after=123456789", apitest.AdminToken, nil).Want(t, http.StatusOK, "").Body, &page)
		if len(page.Bindings) != 1 || page.Bindings[0].Address != "222222222" || page.NextAfter != "" {
			t.Fatalf("second page: %+v", page)
		}
		call(http.MethodGet, "/bindings?medium=fax", apitest.AdminToken, nil).Want(t, http.StatusBadRequest, "M_INVALID_PARAM")

		call(http.MethodDelete, "/bindings/uzi/123456789", apitest.AdminToken, nil).Want(t, http.StatusOK, "")
		call(http.MethodDelete, "/bindings/uzi/123456789", apitest.AdminToken, nil).Want(t, http.StatusNotFound, "M_NOT_FOUND")
		if got := h.LookupOne(t, bob, "uzi", "123456789"); got != "" {
			t.Fatalf("deleted binding resolves to %q", got)
		}

		// Every call, allowed or not, is in the audit trail, and the chain verifies.
		before := calls
		if err := h.App.Lookups.Flush(t.Context()); err != nil {
			t.Fatal(err)
		}
		recs := auditRecords(t, h)
		var refusedRows, refusedCount, allowed int64
		for _, rec := range recs {
			switch {
			case rec.Actor.Kind == "admin":
				allowed++
			case rec.Action == "admin.call" && rec.Outcome == "refused":
				refusedRows++
				refusedCount += rec.Count
			}
		}
		if refusedCount != 6 || refusedRows != 4 || allowed != int64(before-6) {
			t.Fatalf("refused %d in %d rows, allowed %d, for %d calls", refusedCount, refusedRows, allowed, before)
		}
		first := recs[0]
		if first.Action != "admin.call" || first.Resource != "POST "+admin+"/bindings" || first.Actor.ID != "no-token" ||
			!strings.Contains(first.Detail, "status=401") || first.Source != "127.0.0.1" {
			t.Fatalf("first audit record %+v", first)
		}
		if rep, err := h.App.VerifyAudit(t.Context(), nil); err != nil || rep.Records != int64(len(recs)) {
			t.Fatalf("verify: %+v %v", rep, err)
		}
		raw := call(http.MethodGet, "/audit?limit=1000", apitest.AdminToken, nil).Want(t, http.StatusOK, "").Body
		if strings.Contains(string(raw), apitest.AdminToken) || strings.Contains(string(raw), bob.Token) {
			t.Fatal("a token is in the audit log")
		}
	})
}

func TestAdminDisabled(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		h := apitest.New(t, e, func(c *config.Config) { c.Admin.Token = "" })
		h.Do(t, apitest.Request{Path: admin + "/bindings", Header: http.Header{"Authorization": {"Bearer "}}}).
			Want(t, http.StatusNotFound, "M_UNRECOGNIZED")
	})
}
