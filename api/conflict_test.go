package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/api/apitest"
	"github.com/ozo-platform/ozo-identity/config"
	"github.com/ozo-platform/ozo-identity/lookup/mcsd"
	"github.com/ozo-platform/ozo-identity/lookup/mcsd/mcsdtest"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
)

// syncAll runs one sync of the app's directories and fails on any directory's error.
func syncAll(t *testing.T, h *apitest.Harness) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	reports, err := h.App.Syncer.SyncAll(ctx)
	if err != nil {
		t.Fatalf("sync: %v", err)
	}
	for _, r := range reports {
		if r.Err != nil || r.Skipped != "" || r.Refused != "" {
			t.Fatalf("sync of %s: %+v", r.Directory, r)
		}
	}
}

// publishPractitioner has a test directory publish a practitioner with one role and Endpoint.
func publishPractitioner(t *testing.T, d *mcsdtest.Directory, id, org, uzi, matrixURI string) {
	t.Helper()
	put(t, d, fmt.Appendf(nil, `{"resourceType":"Endpoint","id":"ep-%s","status":"active",
		"connectionType":{"code":"matrix"},"payloadType":[{"coding":[{"code":"matrix-messaging"}]}],"address":%q}`, id, matrixURI))
	put(t, d, fmt.Appendf(nil, `{"resourceType":"Practitioner","id":"p-%s","active":true,
		"identifier":[{"system":"http://fhir.nl/fhir/NamingSystem/uzi-nr-pers","value":%q}],"name":[{"text":"Practitioner %s"}]}`, id, uzi, id))
	put(t, d, fmt.Appendf(nil, `{"resourceType":"PractitionerRole","id":"r-%[1]s","active":true,
		"practitioner":{"reference":"Practitioner/p-%[1]s"},"organization":{"reference":"Organization/%[2]s"},
		"endpoint":[{"reference":"Endpoint/ep-%[1]s"}]}`, id, org))
}

// TestDirectoryConflict performs the attack of issue 10 item 1 through the API: a directory the
// LRZA lists for URA 22222222 publishes other providers' UZI numbers with meta.lastUpdated 2099
// and an Endpoint of its own. v2 (hashed and not), v1 and directory/homeserver must not answer
// the attacker; a binding made here wins over every directory.
func TestDirectoryConflict(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		h, srv := directoryHarness(t, e, func(c *config.Config) {
			c.V1.Enabled = true
			c.V1.Networks = []string{"127.0.0.0/8"}
		})
		u := h.NewUser(t, "alice")
		const (
			victim      = "000000111"
			victimMXID  = "@drecht:hs-a.example"
			bound       = "000000222" // bound here by the admin: proven, so it beats directories
			attackerHS  = "evil.example"
			attackerURA = "22222222"
		)
		boundMXID := "@bound:" + h.HS.Name
		gp := srv.Directory(gpDir)
		publishPractitioner(t, gp, "drecht", "hp-de-linde", victim, "matrix:u/drecht:hs-a.example")
		publishPractitioner(t, gp, "bound", "hp-de-linde", bound, "matrix:u/bound.directory:hs-a.example")
		syncAll(t, h)
		h.Do(t, apitest.Request{Method: http.MethodPost, Path: admin + "/bindings",
			Header: http.Header{"Authorization": {"Bearer " + apitest.AdminToken}},
			Body:   map[string]any{"medium": "uzi", "address": bound, "mxid": boundMXID}}).Want(t, http.StatusOK, "")

		v1Lookup := func(address string) map[string]any {
			t.Helper()
			r := h.Get(t, v1+"/lookup"+q("medium", "uzi", "address", address), "").Want(t, http.StatusOK, "")
			if string(r.Body) != "{}\n" {
				verifyServerSigned(t, h, r.Body)
			}
			return r.JSON(t)
		}
		hashes := func(address string) []string {
			pepper := h.Pepper(t, u)
			return []string{sha256Hash(address, "uzi", pepper), sha256Hash(address, "uzi_nr", pepper)}
		}
		check := func(when, address, want string) {
			t.Helper()
			if got := h.LookupOne(t, u, "uzi", address); got != want {
				t.Errorf("%s: v2 lookup of %s: %q, want %q", when, address, got, want)
			}
			hs := hashes(address)
			got := lookupHashed(t, h, u, hs...)
			for _, hash := range hs {
				if got[hash] != want {
					t.Errorf("%s: hashed v2 lookup of %s: %q, want %q", when, address, got[hash], want)
				}
			}
			if m := v1Lookup(address); want == "" && len(m) != 0 || want != "" && m["mxid"] != want {
				t.Errorf("%s: v1 lookup of %s: %v, want %q", when, address, m, want)
			}
		}
		check("before the attack", victim, victimMXID)
		check("before the attack", bound, boundMXID)

		// The attacker's directory, registered at the LRZA for its own URA.
		lrza := srv.Directory("lrza")
		put(t, lrza, fmt.Appendf(nil, `{"resourceType":"Organization","id":"lrza-org-mallory","active":true,"name":"Zorggroep Mallory",
			"identifier":[{"system":"http://fhir.nl/fhir/NamingSystem/ura","value":%q}],"endpoint":[{"reference":"Endpoint/lrza-ep-mallory"}]}`, attackerURA))
		put(t, lrza, fmt.Appendf(nil, `{"resourceType":"Endpoint","id":"lrza-ep-mallory","status":"active","connectionType":{"code":"hl7-fhir-rest"},
			"payloadType":[{"coding":[{"code":%q}]}],"address":%q}`, mcsd.DirectoryPayloadTypes[0], srv.URL("mallory")))
		mal := srv.Directory("mallory")
		put(t, mal, fmt.Appendf(nil, `{"resourceType":"Organization","id":"mal-org","active":true,"name":"Mallory",
			"identifier":[{"system":"http://fhir.nl/fhir/NamingSystem/ura","value":%q}]}`, attackerURA))
		put(t, mal, []byte(`{"resourceType":"Endpoint","id":"ep-mal","status":"active","connectionType":{"code":"matrix"},"address":"matrix:u/mallory:evil.example"}`))
		for _, uzi := range []string{victim, bound} {
			if err := mal.PutRaw("PractitionerRole", "r-mal-"+uzi, fmt.Appendf(nil, `{"resourceType":"PractitionerRole","id":"r-mal-%[1]s",
				"meta":{"versionId":"1","lastUpdated":"2099-01-01T00:00:00Z"},"active":true,
				"identifier":[{"system":"http://fhir.nl/fhir/NamingSystem/uzi-nr-pers","value":%[1]q}],
				"organization":{"reference":"Organization/mal-org"},"endpoint":[{"reference":"Endpoint/ep-mal"}]}`, uzi)); err != nil {
				t.Fatal(err)
			}
		}
		syncAll(t, h)

		check("during the conflict", victim, "")
		check("during the conflict", bound, boundMXID)
		r := h.Get(t, directoryAPI+"/homeserver"+q("medium", "uzi", "address", victim), u.Token).Want(t, http.StatusOK, "")
		wantKeys(t, r.Body, "medium", "address", "conflict", "candidates")
		var resp struct {
			Conflict   bool `json:"conflict"`
			Candidates []struct {
				MXID         string `json:"mxid"`
				Homeserver   string `json:"homeserver"`
				Organization struct {
					Name string `json:"name"`
					URA  string `json:"ura"`
				} `json:"organization"`
			} `json:"candidates"`
		}
		if err := json.Unmarshal(r.Body, &resp); err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, c := range resp.Candidates {
			got = append(got, strings.Join([]string{c.MXID, c.Homeserver, c.Organization.Name, c.Organization.URA}, "|"))
		}
		want := []string{victimMXID + "|hs-a.example|Huisartsenpraktijk De Linde|17004512",
			"@mallory:" + attackerHS + "|" + attackerHS + "|Zorggroep Mallory|" + attackerURA}
		if !resp.Conflict || !slices.Equal(got, want) {
			t.Fatalf("directory/homeserver during the conflict: %s\n got %v\nwant %v", r.Body, got, want)
		}
		if !strings.Contains(h.Logs(), "conflict: care providers publish one UZI number with different Matrix users") {
			t.Error("the conflict was not logged")
		}
		// Earlier data intact.
		if got := h.LookupOne(t, u, "uzi", "900012345"); got != "@m.vandenberg:"+srv.Homeserver("hs1") {
			t.Errorf("an earlier practitioner: %q", got)
		}

		// The attacker withdraws; the real practitioner resolves again everywhere.
		for _, uzi := range []string{victim, bound} {
			mal.Delete("PractitionerRole", "r-mal-"+uzi)
		}
		syncAll(t, h)
		check("after the withdrawal", victim, victimMXID)
		check("after the withdrawal", bound, boundMXID)
		r = h.Get(t, directoryAPI+"/homeserver"+q("medium", "uzi", "address", victim), u.Token).Want(t, http.StatusOK, "")
		if m := r.JSON(t); m["homeserver"] != "hs-a.example" || m["mxid"] != victimMXID || m["conflict"] != nil {
			t.Fatalf("directory/homeserver after the withdrawal: %s", r.Body)
		}
	})
}
