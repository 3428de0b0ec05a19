package main

import (
	"fmt"
	"strings"
	"testing"

	"github.com/ozo-platform/ozo-identity/lookup/mcsd"
	"github.com/ozo-platform/ozo-identity/lookup/mcsd/mcsdtest"
)

func putResource(t *testing.T, d *mcsdtest.Directory, body string) {
	t.Helper()
	if _, err := d.Put([]byte(body)); err != nil {
		t.Fatal(err)
	}
}

// listInLRZA has the test LRZA list a care provider's directory at address.
func listInLRZA(t *testing.T, srv *mcsdtest.Server, id, ura, name, address string) {
	t.Helper()
	lrza := srv.Directory("lrza")
	putResource(t, lrza, fmt.Sprintf(`{"resourceType":"Organization","id":"lrza-org-%[1]s","active":true,"name":%[3]q,
		"identifier":[{"system":"http://fhir.nl/fhir/NamingSystem/ura","value":%[2]q}],"endpoint":[{"reference":"Endpoint/lrza-ep-%[1]s"}]}`, id, ura, name))
	putResource(t, lrza, fmt.Sprintf(`{"resourceType":"Endpoint","id":"lrza-ep-%s","status":"active","connectionType":{"code":"hl7-fhir-rest"},
		"payloadType":[{"coding":[{"code":%q}]}],"address":%q}`, id, mcsd.DirectoryPayloadTypes[0], address))
}

// The operator sees every conflict over a UZI number and every refused directory, in the text
// and the JSON status, and the sync summary reports the refusal.
func TestDirectoryStatusShowsConflictsAndRefused(t *testing.T) {
	srv := mcsdtest.Start(t, mcsdtest.Options{})
	env := directoryEnv(t, srv, t.TempDir())
	gp := srv.Directory("huisartsenpraktijk-de-linde")
	putResource(t, gp, `{"resourceType":"Endpoint","id":"ep-hp-drecht","status":"active","connectionType":{"code":"matrix"},"address":"matrix:u/drecht:hs-a.example"}`)
	putResource(t, gp, `{"resourceType":"PractitionerRole","id":"r-hp-drecht","active":true,"organization":{"reference":"Organization/hp-de-linde"},
		"identifier":[{"system":"http://fhir.nl/fhir/NamingSystem/uzi-nr-pers","value":"000000111"}],"endpoint":[{"reference":"Endpoint/ep-hp-drecht"}]}`)
	listInLRZA(t, srv, "mallory", "22222222", "Zorggroep Mallory", srv.URL("mallory"))
	mal := srv.Directory("mallory")
	putResource(t, mal, `{"resourceType":"Organization","id":"mal-org","active":true,"name":"Mallory",
		"identifier":[{"system":"http://fhir.nl/fhir/NamingSystem/ura","value":"22222222"}]}`)
	putResource(t, mal, `{"resourceType":"Endpoint","id":"ep-mal","status":"active","connectionType":{"code":"matrix"},"address":"matrix:u/mallory:evil.example"}`)
	if err := mal.PutRaw("PractitionerRole", "r-mal", []byte(`{"resourceType":"PractitionerRole","id":"r-mal",
		"meta":{"lastUpdated":"2099-01-01T00:00:00Z"},"active":true,"organization":{"reference":"Organization/mal-org"},
		"identifier":[{"system":"http://fhir.nl/fhir/NamingSystem/uzi-nr-pers","value":"000000111"}],"endpoint":[{"reference":"Endpoint/ep-mal"}]}`)); err != nil {
		t.Fatal(err)
	}
	const plain = "http://127.0.0.1:9/fhir" // never contacted: refused before any request
	listInLRZA(t, srv, "plain", "33333333", "Praktijk Zonder TLS", plain)

	res := runCLI(t, env, "directory", "sync")
	if res.err != nil {
		t.Fatalf("sync: %v\n%s\n%s", res.err, res.stdout, res.stderr)
	}
	rows := parseSummary(t, res.stdout)
	if r := rows[plain]; !strings.HasPrefix(r.status, "REFUSED: plain http") {
		t.Errorf("summary of the plain-http directory %+v:\n%s", r, res.stdout)
	}
	if !strings.Contains(res.stdout, "1 refused") {
		t.Errorf("summary does not count the refusal:\n%s", res.stdout)
	}

	st := statusJSONOf(t, env)
	if len(st.Conflicts) != 1 || st.Conflicts[0].Address != "000000111" || st.Conflicts[0].Medium != "uzi" || st.Conflicts[0].FirstSeen.IsZero() {
		t.Fatalf("JSON conflicts: %+v", st.Conflicts)
	}
	want := []mcsd.Claim{
		{URA: "17004512", Organization: "Huisartsenpraktijk De Linde", MXID: "@drecht:hs-a.example", Homeserver: "hs-a.example"},
		{URA: "22222222", Organization: "Zorggroep Mallory", MXID: "@mallory:evil.example", Homeserver: "evil.example"},
	}
	if fmt.Sprint(st.Conflicts[0].Claims) != fmt.Sprint(want) {
		t.Errorf("JSON claims: %+v", st.Conflicts[0].Claims)
	}
	found := false
	for _, d := range st.Directories {
		if d.Directory == plain {
			found = true
			if d.Active || !strings.Contains(d.Refused, "plain http") {
				t.Errorf("JSON status of the refused directory: %+v", d)
			}
		}
	}
	if !found {
		t.Error("JSON status lacks the refused directory")
	}

	res = runCLI(t, env, "directory", "status")
	if res.err != nil {
		t.Fatal(res.err)
	}
	for _, s := range []string{"1 CONFLICTS", "000000111", "Zorggroep Mallory", "@mallory:evil.example", "Huisartsenpraktijk De Linde",
		"@drecht:hs-a.example", "refused", "plain http"} {
		if !strings.Contains(res.stdout, s) {
			t.Errorf("text status lacks %q:\n%s", s, res.stdout)
		}
	}
}
