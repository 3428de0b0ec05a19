package mcsd

import (
	"bytes"
	"encoding/json"
	"github.com/ozo-platform/ozo-identity/internal/matrixid"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

const fuzzBase = "https://directory.example.nl/fhir"

// fuzzTypes are the history types a fuzzed entry may be read as, chosen by a byte.
var fuzzTypes = append(slices.Clone(providerTypes), "OrganizationAffiliation")

// seedEntries turns the resources of testdata/mcsd into history entries as a FHIR server serves
// them: updated and deleted, with ${…} placeholders filled in.
func seedEntries(tb testing.TB) [][]byte {
	tb.Helper()
	files, err := filepath.Glob(filepath.Join("..", "..", "testdata", "mcsd", "*.json"))
	if err != nil || len(files) == 0 {
		tb.Fatalf("no seed directories: %v", err)
	}
	placeholder := regexp.MustCompile(`\$\{(base|hs[0-9])\}`)
	var out [][]byte
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			tb.Fatal(err)
		}
		raw = placeholder.ReplaceAllFunc(raw, func(m []byte) []byte {
			if string(m) == "${base}" {
				return []byte("https://directory.example.nl")
			}
			return []byte(string(m[2:len(m)-1]) + ".example.nl")
		})
		var b struct {
			Entry []struct {
				Resource json.RawMessage `json:"resource"`
			} `json:"entry"`
		}
		if err := json.Unmarshal(raw, &b); err != nil {
			tb.Fatalf("%s: %v", f, err)
		}
		for _, e := range b.Entry {
			var head struct{ ResourceType, ID string }
			json.Unmarshal(e.Resource, &head)
			path := head.ResourceType + "/" + head.ID
			for _, entry := range []map[string]any{
				{"fullUrl": fuzzBase + "/" + path, "resource": e.Resource,
					"request": map[string]any{"method": "PUT", "url": path}, "response": map[string]any{"status": "200 OK"}},
				{"fullUrl": fuzzBase + "/" + path, "request": map[string]any{"method": "DELETE", "url": path},
					"response": map[string]any{"status": "204 No Content", "lastModified": "2025-03-01T10:00:00.000+01:00"}},
			} {
				j, err := json.Marshal(entry)
				if err != nil {
					tb.Fatal(err)
				}
				out = append(out, j)
			}
		}
	}
	return out
}

func typeIndex(typ string) byte { return byte(slices.Index(fuzzTypes, typ)) }

// hostileSeeds are what hostile directories send: NUL and broken UTF-8, escaped Matrix URIs,
// far-future times, plain-http and non-URL directory addresses, two URAs on one Organization.
var hostileSeeds = []struct{ typ, resource string }{
	{"Practitioner", `{"resourceType":"Practitioner","id":"p1","meta":{"lastUpdated":"2099-01-01T00:00:00Z"},"name":[{"text":"a\u0000b\udc00"}],` +
		`"telecom":[{"system":"other","value":"matrix:u/%40x%3Ahs.example"}],"identifier":[{"system":"urn:oid:2.16.528.1.1007.3.1","value":"000000111"}]}`},
	{"Endpoint", `{"resourceType":"Endpoint","id":"e1","status":"active","address":"matrix://authority/u/a%3Ab:hs.example.nl?via=x"}`},
	{"Endpoint", `{"resourceType":"Endpoint","id":"e2","status":"active","payloadType":[{"coding":[{"code":"` + DirectoryPayloadTypes[1] + `"}]}],"address":"http://127.0.0.1:9/fhir/"}`},
	{"Endpoint", `{"resourceType":"Endpoint","id":"e3","status":"active","payloadType":[{"coding":[{"code":"` + DirectoryPayloadTypes[0] + `"}]}],"address":"javascript:alert(1)"}`},
	{"Endpoint", `{"resourceType":"Endpoint","id":"e4","status":"active","connectionType":{"code":"matrix"},"address":"https://[::1]:8448"}`},
	{"Organization", `{"resourceType":"Organization","id":"o1","identifier":[{"system":"` + SystemURA + `","value":"11111111"},{"system":"` + SystemURA + `","value":"22222222"}],` +
		`"partOf":{"reference":"` + fuzzBase + `/Organization/o2/_history/3"},"name":"` + strings.Repeat("é", 600) + `"}`},
	{"PractitionerRole", `{"resourceType":"PractitionerRole","id":"r1","period":{"start":"2025-13","end":"2025"},"practitioner":{"identifier":{"system":"x","value":"y"}},` +
		`"location":[{"reference":"Location/a/b"}],"endpoint":[{"reference":"http://other.example/Endpoint/e1"}]}`},
}

// FuzzParseEntry feeds history entries to the decoding and validation of one resource version.
// Whatever a directory sends, the result is an error or a row the index can store on both
// engines and resolve from safely.
func FuzzParseEntry(f *testing.F) {
	for _, e := range seedEntries(f) {
		var head struct {
			Resource struct{ ResourceType string } `json:"resource"`
			Request  struct{ URL string }          `json:"request"`
		}
		json.Unmarshal(e, &head)
		typ := head.Resource.ResourceType
		if typ == "" {
			typ, _, _ = strings.Cut(head.Request.URL, "/")
		}
		f.Add(e, typeIndex(typ))
	}
	for _, c := range hostileSeeds {
		e, err := json.Marshal(map[string]any{"fullUrl": fuzzBase + "/" + c.typ + "/x", "resource": json.RawMessage(c.resource)})
		if err != nil {
			f.Fatalf("seed %s: %v", c.resource, err)
		}
		f.Add(e, typeIndex(c.typ))
	}
	f.Fuzz(func(t *testing.T, raw []byte, which byte) {
		typ := fuzzTypes[int(which)%len(fuzzTypes)]
		r, err := parseEntry(raw, typ, fuzzBase)
		if err != nil {
			return
		}
		checkRow(t, r, typ)
	})
}

// checkRow holds a row to what the index and resolution rely on.
func checkRow(t *testing.T, r row, typ string) {
	t.Helper()
	if !idPattern.MatchString(r.ID) {
		t.Fatalf("row with id %q", r.ID)
	}
	if r.Type != typ {
		t.Fatalf("row of type %q from the %s history", r.Type, typ)
	}
	for name, s := range map[string]string{"versionId": r.VersionID, "name": r.Name, "search": r.Search, "ura": r.URA,
		"org_ref": r.OrgRef, "practitioner_ref": r.PractitionerRef, "location_ref": r.LocationRef, "codes": r.Codes,
		"code_text": r.CodeText, "mxid": r.MXID, "homeserver": r.Homeserver, "kind": r.Kind, "address": r.Address,
		"city": r.City, "issue": r.Issue} {
		// What PostgreSQL text accepts, and bounded.
		if !utf8.ValidString(s) || strings.IndexByte(s, 0) >= 0 || len(s) > 1000 {
			t.Fatalf("%s is not storable: %q", name, s)
		}
	}
	if r.Deleted {
		return
	}
	if r.MXID != "" && !matrixid.ValidUserID(r.MXID) {
		t.Fatalf("invalid MXID %q", r.MXID)
	}
	if r.Homeserver != "" && !matrixid.ValidServerName(r.Homeserver) {
		t.Fatalf("invalid homeserver %q", r.Homeserver)
	}
	if r.URA != "" && !allDigits(r.URA, 8) {
		t.Fatalf("invalid URA %q", r.URA)
	}
	if r.LocationRef != "" && !isLocal(r.LocationRef) {
		t.Fatalf("location_ref %q is not a local id", r.LocationRef)
	}
	for _, rf := range r.Refs {
		if !isLocal(rf.To) {
			t.Fatalf("reference %+v is not a local id", rf)
		}
	}
	for _, id := range r.Idents {
		if !allDigits(id.Value, identifierDigits[id.Kind]) {
			t.Fatalf("identifier %+v", id)
		}
	}
	switch r.Kind {
	case "":
	case kindMatrixUser:
		if r.MXID == "" {
			t.Fatal("a Matrix user Endpoint without MXID")
		}
	case kindMatrixServer:
		if r.Homeserver == "" {
			t.Fatal("a homeserver Endpoint without homeserver")
		}
	case kindDirectory:
		u, err := url.Parse(r.Address)
		if err != nil || u.Host == "" || u.Scheme != "https" && u.Scheme != "http" {
			t.Fatalf("directory Endpoint with address %q", r.Address)
		}
	default:
		t.Fatalf("unknown kind %q", r.Kind)
	}
	if r.Kind != "" && typ != "Endpoint" {
		t.Fatalf("kind %q on a %s", r.Kind, typ)
	}
}

// FuzzReadBundle feeds history pages to the streaming Bundle reader: it returns an error or
// hands on every entry it counted, and each entry decodes to an error or a sound row.
func FuzzReadBundle(f *testing.F) {
	entries := seedEntries(f)
	for i := 0; i < len(entries); i += 7 {
		page := `{"resourceType":"Bundle","type":"history","meta":{"lastUpdated":"2025-03-01T10:00:00.000+01:00"},` +
			`"link":[{"relation":"next","url":"` + fuzzBase + `/Practitioner/_history?_offset=7"}],"entry":[` +
			string(bytes.Join(entries[i:min(len(entries), i+7)], []byte(","))) + `]}`
		f.Add([]byte(page))
	}
	f.Add([]byte(`{"resourceType":"Bundle","entry":[ <html>`))
	f.Fuzz(func(t *testing.T, page []byte) {
		n := 0
		info, _ := readBundle(bytes.NewReader(page), func(raw json.RawMessage) error {
			n++
			if !json.Valid(raw) {
				t.Fatalf("entry is not JSON: %q", raw)
			}
			for _, typ := range fuzzTypes {
				if r, err := parseEntry(raw, typ, fuzzBase); err == nil {
					checkRow(t, r, typ)
				}
			}
			return nil
		})
		if n != info.Entries {
			t.Fatalf("%d entries handed on, %d counted", n, info.Entries)
		}
	})
}
