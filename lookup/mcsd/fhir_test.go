package mcsd

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestParseMatrixUser(t *testing.T) {
	for in, want := range map[string]string{
		"matrix:u/alice:hs.example.nl":                   "@alice:hs.example.nl",
		"  matrix:u/alice:hs.example.nl?action=chat ":    "@alice:hs.example.nl",
		"matrix:u/alice:localhost:18448":                 "@alice:localhost:18448",
		"MATRIX:u/alice:hs.example.nl":                   "@alice:hs.example.nl",
		"matrix://hs.example.nl/u/alice:hs.example.nl":   "@alice:hs.example.nl",
		"matrix:u/a%2Fb:hs.example.nl":                   "@a/b:hs.example.nl",
		"https://matrix.to/#/@alice:hs.example.nl":       "@alice:hs.example.nl",
		"https://matrix.to/#/%40alice%3Ahs.example.nl":   "@alice:hs.example.nl",
		"https://matrix.to/#/@alice:hs.example.nl?via=x": "@alice:hs.example.nl",
		"@alice:[::1]:8448":                              "@alice:[::1]:8448",
		"@bob:hs.example.nl":                             "@bob:hs.example.nl",
		// Not a user.
		"matrix:r/room:hs.example.nl":                  "",
		"matrix:roomid/abc:hs.example.nl":              "",
		"https://matrix.to/#/#room:hs.example.nl":      "",
		"https://evil.example/#/@alice:hs.example.nl":  "",
		"matrix:u/:hs.example.nl":                      "",
		"matrix:u/alice":                               "",
		"matrix:u/alice:":                              "",
		"matrix:u/alice:hs.example.nl:99999":           "",
		"matrix:u/alice:hs_example.nl":                 "",
		"matrix:u/al ice:hs.example.nl":                "",
		"matrix:u/al%00ice:hs.example.nl":              "",
		"@alice:-bad.example":                          "",
		"@" + strings.Repeat("a", 250) + ":example.nl": "",
		"https://hs.example.nl":                        "",
		"":                                             "",
	} {
		got, ok := ParseMatrixUser(in)
		if got != want || ok != (want != "") {
			t.Errorf("ParseMatrixUser(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
}

func TestLocalRef(t *testing.T) {
	const base = "https://dir.example.nl/fhir"
	for _, c := range []struct {
		ref  reference
		want string
	}{
		{reference{Reference: "Organization/abc-1"}, "abc-1"},
		{reference{Reference: base + "/Organization/abc"}, "abc"},
		{reference{Reference: "Organization/abc/_history/3"}, "abc"},
		{reference{Reference: "https://other.example.nl/fhir/Organization/abc"}, "https://other.example.nl/fhir/Organization/abc"},
		{reference{Reference: "Location/abc"}, "Location/abc"},
		{reference{Reference: "#contained"}, "#contained"},
		{reference{Reference: "Organization/a/b"}, "Organization/a/b"},
		{reference{Identifier: &identifier{System: SystemURA, Value: "12345678"}}, "identifier " + SystemURA + "|12345678"},
		{reference{}, ""},
	} {
		if got := localRef(&c.ref, "Organization", base); got != c.want {
			t.Errorf("localRef(%+v) = %q, want %q", c.ref, got, c.want)
		}
	}
}

func TestToRow(t *testing.T) {
	parse := func(js string) Resource {
		t.Helper()
		var r resource
		if err := json.Unmarshal([]byte(js), &r); err != nil {
			t.Fatal(err)
		}
		out, err := toRow(&r, "https://d.example/fhir")
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	p := parse(`{"resourceType":"Practitioner","id":"p","meta":{"lastUpdated":"2025-02-07T13:28:17.239+02:00","versionId":"4"},
		"identifier":[{"system":"http://fhir.nl/fhir/NamingSystem/uzi-nr-pers","value":" 012345678 "},
			{"system":"http://fhir.nl/fhir/NamingSystem/uzi-nr-pers","value":"12345"},
			{"system":"http://fhir.nl/fhir/NamingSystem/bsn","value":"999999990"},
			{"system":"http://fhir.nl/fhir/NamingSystem/pseudo-bsn","value":"abc"},
			{"system":"http://fhir.nl/fhir/NamingSystem/big","value":"19012345601"}],
		"name":[{"use":"usual","text":"Jan"},{"use":"official","given":["Jan","Piet"],"family":"de Vries","prefix":["dr."]}],
		"telecom":[{"system":"other","value":"@jan:hs.example.nl","extension":[{"url":"http://hl7.org/fhir/StructureDefinition/contactpoint-purpose","valueCode":"matrix-messaging"}]},
			{"system":"other","value":"hs2.example.nl","extension":[{"url":"http://hl7.org/fhir/StructureDefinition/contactpoint-purpose","valueCoding":{"code":"matrix-homeserver"}}]}]}`)
	if p.TS != 1738927697239 || p.VersionID != "4" {
		t.Errorf("version: %d %q", p.TS, p.VersionID)
	}
	if len(p.Idents) != 2 || p.Idents[0] != (Ident{"uzi", "012345678"}) || p.Idents[1] != (Ident{"big", "19012345601"}) {
		t.Errorf("identifiers (no BSN, no invalid UZI): %+v", p.Idents)
	}
	if p.Name != "dr. Jan Piet de Vries" || !strings.Contains(p.Search, "jan | dr. jan piet de vries") {
		t.Errorf("name %q search %q", p.Name, p.Search)
	}
	if p.MXID != "@jan:hs.example.nl" || p.Homeserver != "hs2.example.nl" {
		t.Errorf("telecom: %q %q", p.MXID, p.Homeserver)
	}

	o := parse(`{"resourceType":"Organization","id":"o","identifier":[{"system":"http://fhir.nl/fhir/NamingSystem/ura","value":"11111111"},
		{"system":"urn:oid:2.16.528.1.1007.3.3","value":"22222222"}],"name":"Twee\u0000URA's","partOf":{"reference":"https://d.example/fhir/Organization/top"}}`)
	if o.Issue != "Organization carries more than one URA" || o.Name != "TweeURA's" || o.OrgRef != "top" {
		t.Errorf("organization: issue %q name %q partOf %q", o.Issue, o.Name, o.OrgRef)
	}

	e := parse(`{"resourceType":"Endpoint","id":"e","status":"active","period":{"start":"2024","end":"2024-06-30"},
		"connectionType":{"code":"matrix-homeserver"},"address":"https://matrix.hs.example.nl:8448/"}`)
	if e.Kind != kindMatrixServer || e.Homeserver != "matrix.hs.example.nl:8448" || !e.Active {
		t.Errorf("homeserver endpoint: %+v", e)
	}
	if e.PeriodStart != 1704067200000 || e.PeriodEnd != 1719792000000 {
		t.Errorf("period of dates: %d %d", e.PeriodStart, e.PeriodEnd)
	}
	d := parse(`{"resourceType":"Endpoint","id":"d","status":"active","address":"https://dir.example.nl/fhir/",
		"payloadType":[{"coding":[{"code":"http://minvws.github.io/generiekefuncties-docs/CapabilityStatement/nl-gf-admin-directory-update-client"}]}]}`)
	if d.Kind != kindDirectory || d.Address != "https://dir.example.nl/fhir" {
		t.Errorf("directory endpoint: %+v", d)
	}
	if x := parse(`{"resourceType":"Endpoint","id":"x","status":"test","address":"matrix:u/a:hs.example.nl"}`); x.Active || x.Kind != kindMatrixUser {
		t.Errorf("test endpoint must not be active: %+v", x)
	}
	if x := parse(`{"resourceType":"PractitionerRole","id":"r","period":{"start":"not a date"}}`); x.Issue != "invalid period" {
		t.Errorf("bad period: %+v", x)
	}
}

func TestParseEntry(t *testing.T) {
	const base = "https://d.example/fhir"
	for _, c := range []struct {
		entry   string
		id      string
		deleted bool
		err     string
	}{
		{`{"request":{"method":"DELETE","url":"Practitioner/p1/_history/3"},"response":{"status":"204","lastModified":"2025-01-01T00:00:00Z"}}`, "p1", true, ""},
		{`{"fullUrl":"https://d.example/fhir/Practitioner/p2","response":{"status":"410 Gone"}}`, "p2", true, ""},
		{`{"fullUrl":"https://d.example/fhir/Practitioner/p3"}`, "", false, "not a delete"},
		{`{"request":{"method":"DELETE","url":"Practitioner/../x"}}`, "", false, "without a usable"},
		{`{"resource":{"resourceType":"Practitioner","id":"p4","active":"yes"}}`, "", false, "malformed Practitioner"},
		{`{"resource":{"resourceType":"Practitioner","id":"p5","meta":{"lastUpdated":"yesterday"}}}`, "", false, "meta.lastUpdated"},
		{`{"resource":{"resourceType":"Endpoint","id":"p6"}}`, "", false, "unexpected Endpoint"},
		{`{"resource":{"resourceType":"Practitioner","id":"` + strings.Repeat("x", 65) + `"}}`, "", false, "invalid id"},
		{`{"resource":{"resourceType":"Practitioner","id":"p7","name":"plain string"}}`, "", false, "malformed Practitioner"},
		{`[1,2]`, "", false, "malformed entry"},
		{`{"resource":{"resourceType":"Practitioner","id":"p8"}}`, "p8", false, ""},
	} {
		r, err := parseEntry(json.RawMessage(c.entry), "Practitioner", base)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: err %v, want %q", c.entry, err, c.err)
			}
			continue
		}
		if err != nil || r.ID != c.id || r.Deleted != c.deleted {
			t.Errorf("%s: %+v %v", c.entry, r, err)
		}
	}
}

func TestReadBundle(t *testing.T) {
	count := func(s string) (pageInfo, int, error) {
		n := 0
		info, err := readBundle(strings.NewReader(s), func(json.RawMessage) error { n++; return nil })
		return info, n, err
	}
	info, n, err := count(`{"entry":[{"a":1},{"b":2}],"resourceType":"Bundle","link":[{"relation":"self","url":"s"},{"relation":"next","url":"n"}],
		"meta":{"lastUpdated":"2025-01-01T00:00:00Z"},"unknown":{"deep":[1,2,{"x":null}]}}`)
	if err != nil || n != 2 || info.Next != "n" || info.LastUpdated != "2025-01-01T00:00:00Z" {
		t.Errorf("fields in any order: %+v %d %v", info, n, err)
	}
	for _, bad := range []string{
		`{"resourceType":"OperationOutcome"}`,
		`{"entry":[]}`,
		`[]`,
		`{"resourceType":"Bundle","entry":[{"a":1},`,
		`{"resourceType":"Bundle","entry":{"a":1}}`,
		`{"resourceType":"Bundle","link":"next"}`,
		``,
		`<html>502</html>`,
	} {
		if _, _, err := count(bad); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
	stop := errors.New("stop")
	if _, err := readBundle(strings.NewReader(`{"resourceType":"Bundle","entry":[{},{}]}`), func(json.RawMessage) error { return stop }); !errors.Is(err, stop) {
		t.Errorf("callback error not returned: %v", err)
	}
}

func TestBetter(t *testing.T) {
	a := candidate{mxid: "@a:x", pref: 1, updated: 10, sourceID: "r2", dir: "d"}
	for _, c := range []struct {
		b    candidate
		want bool
	}{
		{candidate{mxid: "@b:x", pref: 2, updated: 99, sourceID: "r1", dir: "d"}, true},
		{candidate{mxid: "@b:x", pref: 1, updated: 11, sourceID: "r1", dir: "d"}, false},
		{candidate{mxid: "@b:x", pref: 1, updated: 10, sourceID: "r3", dir: "a"}, true},
		{candidate{mxid: "@b:x", pref: 1, updated: 10, sourceID: "r2", dir: "e"}, true},
		{candidate{mxid: "@0:x", pref: 1, updated: 10, sourceID: "r2", dir: "d"}, false},
	} {
		if got := better(a, c.b); got != c.want || better(c.b, a) == c.want {
			t.Errorf("better(%+v, %+v) = %v", a, c.b, got)
		}
	}
}
