package mcsd

import (
	"encoding/json"
	"fmt"
	"github.com/ozo-platform/ozo-identity/internal/matrixid"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// FHIR identifier systems (design.md §3). The OIDs are the same namespaces in urn:oid form,
// and "uzi" is what the Nuts examples put on PractitionerRole.
const (
	SystemUZI = "http://fhir.nl/fhir/NamingSystem/uzi-nr-pers"
	SystemURA = "http://fhir.nl/fhir/NamingSystem/ura"
	SystemAGB = "http://fhir.nl/fhir/NamingSystem/agb-z"
	SystemBIG = "http://fhir.nl/fhir/NamingSystem/big"
)

var identifierKinds = map[string]string{
	SystemUZI:                              "uzi",
	"http://fhir.nl/fhir/NamingSystem/uzi": "uzi",
	"urn:oid:2.16.528.1.1007.3.1":          "uzi",
	SystemURA:                              "ura",
	"urn:oid:2.16.528.1.1007.3.3":          "ura",
	SystemAGB:                              "agb",
	"urn:oid:2.16.840.1.113883.2.4.6.1":    "agb",
	SystemBIG:                              "big",
	"urn:oid:2.16.528.1.1007.5.1":          "big",
}

var identifierDigits = map[string]int{"uzi": 9, "ura": 8, "agb": 8, "big": 11}

// Contact-point purposes that carry Matrix addresses in telecom (design.md §4).
const (
	PurposeExtension    = "http://hl7.org/fhir/StructureDefinition/contactpoint-purpose"
	PurposeMatrixUser   = "matrix-messaging"
	PurposeMatrixServer = "matrix-homeserver"
)

// DirectoryPayloadTypes are the Endpoint.payloadType codes that mark an mCSD Administration
// Directory in the LRZA, in the Nuts guide and in its successor published by VWS.
var DirectoryPayloadTypes = []string{
	"http://nuts-foundation.github.io/nl-generic-functions-ig/CapabilityStatement/nl-gf-admin-directory-update-client",
	"http://minvws.github.io/generiekefuncties-docs/CapabilityStatement/nl-gf-admin-directory-update-client",
}

// Endpoint kinds kept in the index.
const (
	kindMatrixUser   = "matrix-user"
	kindMatrixServer = "matrix-server"
	kindDirectory    = "mcsd-directory"
)

// Resource types an mCSD provider directory publishes, in the order they are fetched: the
// organisations first, so that a report's rejections are about a consistent state.
var providerTypes = []string{"Organization", "Location", "HealthcareService", "Endpoint", "Practitioner", "PractitionerRole"}

// lrzaTypes are what the LRZA publishes: care providers and their directory endpoints.
var lrzaTypes = []string{"Organization", "Endpoint"}

type coding struct {
	System  string `json:"system"`
	Code    string `json:"code"`
	Display string `json:"display"`
}

type codeableConcept struct {
	Coding []coding `json:"coding"`
	Text   string   `json:"text"`
}

type identifier struct {
	System string `json:"system"`
	Value  string `json:"value"`
}

type reference struct {
	Reference  string      `json:"reference"`
	Identifier *identifier `json:"identifier"`
	Display    string      `json:"display"`
}

type period struct {
	Start string `json:"start"`
	End   string `json:"end"`
}

type extension struct {
	URL                  string           `json:"url"`
	ValueCode            string           `json:"valueCode"`
	ValueString          string           `json:"valueString"`
	ValueCoding          *coding          `json:"valueCoding"`
	ValueCodeableConcept *codeableConcept `json:"valueCodeableConcept"`
}

type contactPoint struct {
	System    string      `json:"system"`
	Value     string      `json:"value"`
	Extension []extension `json:"extension"`
}

type humanName struct {
	Use    string   `json:"use"`
	Text   string   `json:"text"`
	Family string   `json:"family"`
	Given  []string `json:"given"`
	Prefix []string `json:"prefix"`
	Suffix []string `json:"suffix"`
}

type address struct {
	Text string `json:"text"`
	City string `json:"city"`
}

type meta struct {
	VersionID   string `json:"versionId"`
	LastUpdated string `json:"lastUpdated"`
}

// resource holds the fields of the six mCSD resource types that the index uses; fields that
// differ in shape between types (name, address) are decoded per type.
type resource struct {
	ResourceType         string            `json:"resourceType"`
	ID                   string            `json:"id"`
	Meta                 meta              `json:"meta"`
	Active               *bool             `json:"active"`
	Status               string            `json:"status"`
	Identifier           []identifier      `json:"identifier"`
	Name                 json.RawMessage   `json:"name"`
	Alias                []string          `json:"alias"`
	Telecom              []contactPoint    `json:"telecom"`
	PartOf               *reference        `json:"partOf"`
	Organization         *reference        `json:"organization"`
	Practitioner         *reference        `json:"practitioner"`
	ProvidedBy           *reference        `json:"providedBy"`
	ManagingOrganization *reference        `json:"managingOrganization"`
	Location             []reference       `json:"location"`
	HealthcareService    []reference       `json:"healthcareService"`
	Endpoint             []reference       `json:"endpoint"`
	Period               *period           `json:"period"`
	Code                 []codeableConcept `json:"code"`
	Specialty            []codeableConcept `json:"specialty"`
	Type                 []codeableConcept `json:"type"`
	Address              json.RawMessage   `json:"address"`
	ConnectionType       *coding           `json:"connectionType"`
	PayloadType          []codeableConcept `json:"payloadType"`
}

// row is one resource version reduced to index columns.
type row struct {
	Type, ID        string
	VersionID       string
	TS              int64
	Deleted         bool
	Active          bool
	PeriodStart     int64
	PeriodEnd       int64
	Name, Search    string
	URA             string
	OrgRef          string
	PractitionerRef string
	LocationRef     string
	Codes, CodeText string
	MXID            string
	Homeserver      string
	Kind            string
	Address         string
	City            string
	Issue           string
	Refs            []ref
	Idents          []ident
}

type ref struct{ Kind, To string }
type ident struct{ Kind, Value string }

var idPattern = regexp.MustCompile(`^[A-Za-z0-9\-.]{1,64}$`)

// parseInstant reads a FHIR instant or dateTime. A date without a time is the start of that
// day, or with end set the start of the next one, so that an end date includes its day.
func parseInstant(s string, end bool) (int64, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t.UnixMilli(), nil
	}
	for _, layout := range []struct {
		l    string
		next func(time.Time) time.Time
	}{
		{"2006-01-02", func(t time.Time) time.Time { return t.AddDate(0, 0, 1) }},
		{"2006-01", func(t time.Time) time.Time { return t.AddDate(0, 1, 0) }},
		{"2006", func(t time.Time) time.Time { return t.AddDate(1, 0, 0) }},
	} {
		if t, err := time.Parse(layout.l, s); err == nil {
			if end {
				t = layout.next(t)
			}
			return t.UnixMilli(), nil
		}
	}
	return 0, fmt.Errorf("invalid FHIR date-time %q", s)
}

// formatInstant writes a FHIR instant in UTC with milliseconds.
func formatInstant(ms int64) string {
	return time.UnixMilli(ms).UTC().Format("2006-01-02T15:04:05.000Z07:00")
}

// localRef turns a reference to a resource of type typ in the directory at base into that
// resource's id. Anything else (another server, another type, contained, logical identifier) is
// returned as written, which never equals an id because ids have no '/', ':' or '#'.
func localRef(r *reference, typ, base string) string {
	if r == nil {
		return ""
	}
	s := strings.TrimSpace(r.Reference)
	if s == "" {
		if r.Identifier != nil && r.Identifier.Value != "" {
			return "identifier " + r.Identifier.System + "|" + r.Identifier.Value
		}
		return ""
	}
	rel := s
	if base != "" && strings.HasPrefix(s, base+"/") {
		rel = s[len(base)+1:]
	}
	if i := strings.Index(rel, "/_history/"); i >= 0 {
		rel = rel[:i]
	}
	t, id, ok := strings.Cut(rel, "/")
	if ok && t == typ && idPattern.MatchString(id) {
		return id
	}
	return s
}

func isLocal(ref string) bool { return ref != "" && idPattern.MatchString(ref) }

// ParseMatrixUser returns the Matrix user ID in a Matrix URI (matrix:u/alice:hs.example.nl), a
// matrix.to link (https://matrix.to/#/@alice:hs.example.nl) or a bare user ID.
func ParseMatrixUser(s string) (string, bool) {
	s = strings.TrimSpace(s)
	var id string
	switch {
	case strings.HasPrefix(strings.ToLower(s), "matrix:"):
		rest := s[len("matrix:"):]
		if strings.HasPrefix(rest, "//") { // matrix://authority/u/... (MSC2312 allows an authority)
			slash := strings.Index(rest[2:], "/")
			if slash < 0 {
				return "", false
			}
			rest = rest[2+slash+1:]
		}
		rest, _, _ = strings.Cut(rest, "?")
		rest, _, _ = strings.Cut(rest, "#")
		if !strings.HasPrefix(rest, "u/") {
			return "", false
		}
		dec, err := url.PathUnescape(rest[2:])
		if err != nil {
			return "", false
		}
		id = "@" + dec
	case strings.HasPrefix(strings.ToLower(s), "https://matrix.to/#/"):
		frag := s[len("https://matrix.to/#/"):]
		frag, _, _ = strings.Cut(frag, "?")
		dec, err := url.PathUnescape(frag)
		if err != nil {
			return "", false
		}
		id = dec
	case strings.HasPrefix(s, "@"):
		id = s
	default:
		return "", false
	}
	if !matrixid.ValidUserID(id) {
		return "", false
	}
	return id, true
}

func purposeOf(cp contactPoint) string {
	for _, e := range cp.Extension {
		if e.URL != PurposeExtension {
			continue
		}
		switch {
		case e.ValueCode != "":
			return e.ValueCode
		case e.ValueString != "":
			return e.ValueString
		case e.ValueCoding != nil:
			return e.ValueCoding.Code
		case e.ValueCodeableConcept != nil:
			for _, c := range e.ValueCodeableConcept.Coding {
				if c.Code != "" {
					return c.Code
				}
			}
			return e.ValueCodeableConcept.Text
		}
	}
	return ""
}

func isDirectoryPayload(cc []codeableConcept) bool {
	for _, c := range cc {
		for _, cd := range c.Coding {
			if slices.Contains(DirectoryPayloadTypes, strings.TrimSpace(cd.Code)) {
				return true
			}
		}
	}
	return false
}

func mentionsMatrix(r *resource) bool {
	if r.ConnectionType != nil && strings.Contains(strings.ToLower(r.ConnectionType.Code), "matrix") {
		return true
	}
	for _, c := range r.PayloadType {
		for _, cd := range c.Coding {
			if strings.Contains(strings.ToLower(cd.Code), "matrix") {
				return true
			}
		}
	}
	return false
}

func practitionerName(names []humanName) (display string, all []string) {
	best := -1
	for i, n := range names {
		if best < 0 || n.Use == "official" && names[best].Use != "official" {
			best = i
		}
	}
	for i, n := range names {
		text := strings.TrimSpace(n.Text)
		if text == "" {
			parts := append(append(append([]string{}, n.Prefix...), n.Given...), n.Family)
			parts = append(parts, n.Suffix...)
			text = strings.Join(strings.Fields(strings.Join(parts, " ")), " ")
		}
		if text == "" {
			continue
		}
		all = append(all, text)
		if i == best {
			display = text
		}
	}
	if display == "" && len(all) > 0 {
		display = all[0]
	}
	return display, all
}

func addCodes(codes, texts []string, ccs []codeableConcept) ([]string, []string) {
	for _, c := range ccs {
		text := strings.TrimSpace(c.Text)
		for _, cd := range c.Coding {
			code := strings.TrimSpace(cd.Code)
			if code != "" && !strings.Contains(code, "|") && !slices.Contains(codes, code) {
				codes = append(codes, code)
			}
			if text == "" {
				text = strings.TrimSpace(cd.Display)
			}
		}
		if text != "" && !slices.Contains(texts, text) {
			texts = append(texts, text)
		}
	}
	return codes, texts
}

// toRow reduces a decoded resource to its index row. base is the directory's base URL, used to
// recognise absolute references into the same directory. Problems that make the resource
// unusable without making it unreadable end up in Issue.
func toRow(r *resource, base string) (row, error) {
	out := row{Type: r.ResourceType, ID: r.ID, VersionID: r.Meta.VersionID, Active: true}
	ts, err := parseInstant(r.Meta.LastUpdated, false)
	if err != nil {
		return row{}, fmt.Errorf("meta.lastUpdated: %w", err)
	}
	out.TS = ts
	var issues []string
	if r.Period != nil {
		start, err1 := parseInstant(r.Period.Start, false)
		end, err2 := parseInstant(r.Period.End, true)
		if err1 != nil || err2 != nil {
			issues = append(issues, "invalid period")
		}
		out.PeriodStart, out.PeriodEnd = start, end
	}
	if r.Active != nil {
		out.Active = *r.Active
	}

	// Identifiers: only the kinds resolution and search use, never a BSN.
	uras := map[string]bool{}
	for _, id := range r.Identifier {
		kind := identifierKinds[strings.TrimSpace(id.System)]
		if kind == "" {
			continue
		}
		v := strings.TrimSpace(id.Value)
		if !allDigits(v, identifierDigits[kind]) {
			continue
		}
		if !slices.Contains(out.Idents, ident{kind, v}) {
			out.Idents = append(out.Idents, ident{kind, v})
		}
		if kind == "ura" {
			uras[v] = true
		}
	}

	var names []string
	switch r.ResourceType {
	case "Practitioner":
		var hn []humanName
		if len(r.Name) > 0 {
			if err := json.Unmarshal(r.Name, &hn); err != nil {
				return row{}, fmt.Errorf("name: %w", err)
			}
		}
		out.Name, names = practitionerName(hn)
	default:
		if len(r.Name) > 0 && string(r.Name) != "null" {
			if err := json.Unmarshal(r.Name, &out.Name); err != nil {
				return row{}, fmt.Errorf("name: %w", err)
			}
		}
		out.Name = strings.TrimSpace(out.Name)
		if out.Name != "" {
			names = append(names, out.Name)
		}
		names = append(names, r.Alias...)
	}
	out.Search = strings.ToLower(strings.Join(names, " | "))

	for _, cp := range r.Telecom {
		v := strings.TrimSpace(cp.Value)
		switch p := purposeOf(cp); {
		case p == PurposeMatrixUser || strings.HasPrefix(strings.ToLower(v), "matrix:u/"):
			if mxid, ok := ParseMatrixUser(v); ok && out.MXID == "" {
				out.MXID = mxid
			}
		case p == PurposeMatrixServer:
			if matrixid.ValidServerName(v) && out.Homeserver == "" {
				out.Homeserver = v
			}
		}
	}

	var codes, texts []string
	addRefs := func(kind, typ string, refs []reference) {
		for i := range refs {
			if id := localRef(&refs[i], typ, base); isLocal(id) && !slices.Contains(out.Refs, ref{kind, id}) {
				out.Refs = append(out.Refs, ref{kind, id})
			}
		}
	}
	switch r.ResourceType {
	case "Organization":
		if len(uras) > 1 {
			issues = append(issues, "Organization carries more than one URA")
		}
		for u := range uras {
			out.URA = u
		}
		out.OrgRef = localRef(r.PartOf, "Organization", base)
		addRefs("endpoint", "Endpoint", r.Endpoint)
		codes, texts = addCodes(codes, texts, r.Type)
		var addrs []address
		if len(r.Address) > 0 && json.Unmarshal(r.Address, &addrs) == nil && len(addrs) > 0 {
			out.City = addrs[0].City
		}
	case "PractitionerRole":
		out.OrgRef = localRef(r.Organization, "Organization", base)
		out.PractitionerRef = localRef(r.Practitioner, "Practitioner", base)
		if len(r.Location) > 0 {
			if id := localRef(&r.Location[0], "Location", base); isLocal(id) {
				out.LocationRef = id
			}
		}
		addRefs("endpoint", "Endpoint", r.Endpoint)
		addRefs("location", "Location", r.Location)
		addRefs("service", "HealthcareService", r.HealthcareService)
		codes, texts = addCodes(codes, texts, r.Code)
		codes, texts = addCodes(codes, texts, r.Specialty)
	case "HealthcareService":
		out.OrgRef = localRef(r.ProvidedBy, "Organization", base)
		if len(r.Location) > 0 {
			if id := localRef(&r.Location[0], "Location", base); isLocal(id) {
				out.LocationRef = id
			}
		}
		addRefs("endpoint", "Endpoint", r.Endpoint)
		addRefs("location", "Location", r.Location)
		codes, texts = addCodes(codes, texts, r.Type)
		codes, texts = addCodes(codes, texts, r.Specialty)
	case "Location":
		out.OrgRef = localRef(r.ManagingOrganization, "Organization", base)
		out.Active = r.Status == "" || r.Status == "active"
		codes, texts = addCodes(codes, texts, r.Type)
		var a address
		if len(r.Address) > 0 && json.Unmarshal(r.Address, &a) == nil {
			out.City = a.City
		}
	case "Endpoint":
		// Only an active Endpoint counts (design.md §4); a missing status is not active.
		out.Active = r.Status == "active"
		var addr string
		if len(r.Address) > 0 {
			if err := json.Unmarshal(r.Address, &addr); err != nil {
				return row{}, fmt.Errorf("address: %w", err)
			}
		}
		addr = strings.TrimSpace(addr)
		if len(addr) > 1000 {
			issues = append(issues, "Endpoint address too long")
			addr = ""
		}
		out.Address = addr
		switch mxid, ok := ParseMatrixUser(addr); {
		case ok:
			out.Kind, out.MXID = kindMatrixUser, mxid
		case isDirectoryPayload(r.PayloadType):
			if u, err := url.Parse(addr); err == nil && (u.Scheme == "https" || u.Scheme == "http") && u.Host != "" {
				out.Kind, out.Address = kindDirectory, strings.TrimRight(addr, "/")
			} else {
				issues = append(issues, "directory Endpoint address is not an http(s) URL")
			}
		case mentionsMatrix(r):
			if u, err := url.Parse(addr); err == nil && u.Scheme == "https" && matrixid.ValidServerName(u.Host) {
				out.Kind, out.Homeserver = kindMatrixServer, u.Host
			}
		}
		codes, texts = addCodes(codes, texts, r.PayloadType)
	}
	if len(codes) > 0 {
		out.Codes = "|" + strings.Join(codes, "|") + "|"
	}
	out.CodeText = strings.Join(texts, ", ")
	out.Issue = strings.Join(issues, "; ")
	for _, f := range []*string{&out.VersionID, &out.Name, &out.Search, &out.OrgRef, &out.PractitionerRef,
		&out.Codes, &out.CodeText, &out.MXID, &out.Homeserver, &out.Address, &out.City} {
		*f = clean(*f, 1000)
	}
	return out, nil
}

// clean makes a directory's string safe to store on both engines: no NUL (PostgreSQL text
// refuses it), valid UTF-8, and at most max bytes cut at a character boundary.
func clean(s string, max int) string {
	if strings.IndexByte(s, 0) >= 0 {
		s = strings.ReplaceAll(s, "\x00", "")
	}
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}

func allDigits(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
