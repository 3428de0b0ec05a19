// Package mcsdtest runs FHIR R4 directories over HTTPS for tests: an LRZA and provider
// directories loaded from testdata/mcsd, each answering IHE ITI-91 history requests
// ({base}/{Type}/_history with _since and _count, paged through Bundle.link next) as a FHIR
// server does, with switchable failures.
package mcsdtest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Options configure a Server.
type Options struct {
	// Homeservers maps the placeholders of the test data (hs1, hs2, hs3) to server names, such
	// as a real test homeserver "localhost:18448". Unmapped ones become hsN.example.nl.
	Homeservers map[string]string
	// DataDir holds the directories as <name>.json Bundles [testdata/mcsd of this repository].
	DataDir string
	// Empty starts without loading any data.
	Empty bool
	// PageSize is the page size when a request has no _count [50].
	PageSize int
}

// Failure makes a directory misbehave; the zero value is a healthy directory.
type Failure struct {
	Status     int           // answer history requests with this HTTP status and an OperationOutcome
	Malformed  bool          // answer with a page whose JSON breaks off after the first entry
	Delay      time.Duration // wait this long before answering (ends early if the client gives up)
	Types      []string      // only for these resource types; all when empty
	AfterPages int           // only once this many pages were served well
}

// Server is a set of FHIR directories under one HTTPS test server: directory name serves at
// URL(name) = <server>/<name>/fhir.
type Server struct {
	srv      *httptest.Server
	opts     Options
	vars     map[string]string
	mu       sync.Mutex
	dirs     map[string]*Directory
	last     int64 // the newest version's time in ms; the clock never goes back past it
	requests []string
}

// Directory is one FHIR server's resources with their full version history.
type Directory struct {
	s        *Server
	name     string
	byType   map[string][]*version // in time order
	current  map[string]*version   // "Type/id" → newest version
	failure  Failure
	goodPage int
}

type version struct {
	typ, id string
	vid     int
	ts      int64
	deleted bool
	body    []byte
}

// DataDir returns testdata/mcsd of the repository this package is in.
func DataDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..", "testdata", "mcsd")
}

// Start starts a server, loads the test data and stops it when the test ends.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	s, err := New(opts)
	if err != nil {
		t.Fatalf("mcsdtest: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// New starts a server outside a test; Close stops it.
func New(opts Options) (*Server, error) {
	if opts.PageSize <= 0 {
		opts.PageSize = 50
	}
	if opts.DataDir == "" {
		opts.DataDir = DataDir()
	}
	s := &Server{opts: opts, dirs: map[string]*Directory{}}
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
	// Clients that give up mid-handshake (time-out tests) are expected; do not log them.
	s.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	s.srv.StartTLS()
	s.vars = map[string]string{"base": s.srv.URL}
	for i := 1; i <= 9; i++ {
		k := fmt.Sprintf("hs%d", i)
		s.vars[k] = k + ".example.nl"
	}
	for k, v := range opts.Homeservers {
		s.vars[k] = v
	}
	if !opts.Empty {
		if err := s.load(); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

var placeholder = regexp.MustCompile(`\$\{([a-z0-9]+)\}`)

func (s *Server) load() error {
	files, err := filepath.Glob(filepath.Join(s.opts.DataDir, "*.json"))
	if err != nil || len(files) == 0 {
		return fmt.Errorf("no test directories in %s", s.opts.DataDir)
	}
	sort.Strings(files)
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		var bad []string
		text := placeholder.ReplaceAllStringFunc(string(raw), func(m string) string {
			v, ok := s.vars[m[2:len(m)-1]]
			if !ok {
				bad = append(bad, m)
			}
			return v
		})
		if len(bad) > 0 {
			return fmt.Errorf("%s: unknown placeholders %v", f, bad)
		}
		var b struct {
			Entry []struct {
				Resource json.RawMessage `json:"resource"`
			} `json:"entry"`
		}
		if err := json.Unmarshal([]byte(text), &b); err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		d := s.Directory(strings.TrimSuffix(filepath.Base(f), ".json"))
		for _, e := range b.Entry {
			if _, err := d.Put(e.Resource); err != nil {
				return fmt.Errorf("%s: %w", f, err)
			}
		}
	}
	return nil
}

// Close stops the server.
func (s *Server) Close() { s.srv.Close() }

// Client returns an HTTP client that trusts the server's certificate.
func (s *Server) Client() *http.Client { return s.srv.Client() }

// URL returns the FHIR base URL of the directory name.
func (s *Server) URL(name string) string { return s.srv.URL + "/" + name + "/fhir" }

// LRZAURL returns the base URL of the test LRZA (directory "lrza").
func (s *Server) LRZAURL() string { return s.URL("lrza") }

// Homeserver returns what the placeholder (hs1, …) stands for in this server's data.
func (s *Server) Homeserver(placeholder string) string { return s.vars[placeholder] }

// Expand replaces ${base} and ${hsN} in text as the loaded test data had them replaced.
func (s *Server) Expand(text string) string {
	return placeholder.ReplaceAllStringFunc(text, func(m string) string {
		if v, ok := s.vars[m[2:len(m)-1]]; ok {
			return v
		}
		return m
	})
}

// Directory returns the directory name, creating an empty one if needed.
func (s *Server) Directory(name string) *Directory {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.dirs[name]
	if !ok {
		d = &Directory{s: s, name: name, byType: map[string][]*version{}, current: map[string]*version{}}
		s.dirs[name] = d
	}
	return d
}

// Requests returns the request URIs served so far, oldest first.
func (s *Server) Requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.requests)
}

// ResetRequests forgets the requests served so far.
func (s *Server) ResetRequests() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests = nil
}

// tick returns the time of a new version: now, but always after the previous version.
func (s *Server) tick() int64 {
	now := time.Now().UnixMilli()
	if now <= s.last {
		now = s.last + 1
	}
	s.last = now
	return now
}

// clock returns the server time of a query: not before the newest version.
func (s *Server) clock() int64 { return max(time.Now().UnixMilli(), s.last) }

// Put stores a new version of a resource (JSON with resourceType and id; ${…} placeholders are
// expanded), setting meta.versionId and meta.lastUpdated as a FHIR server does.
func (d *Directory) Put(resource []byte) (versionID string, err error) {
	var m map[string]any
	dec := json.NewDecoder(bytes.NewReader([]byte(d.s.Expand(string(resource)))))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		return "", fmt.Errorf("put: %w", err)
	}
	typ, _ := m["resourceType"].(string)
	id, _ := m["id"].(string)
	if typ == "" || id == "" {
		return "", fmt.Errorf("put: resource needs resourceType and id")
	}
	d.s.mu.Lock()
	defer d.s.mu.Unlock()
	v := &version{typ: typ, id: id, vid: 1, ts: d.s.tick()}
	if cur := d.current[typ+"/"+id]; cur != nil {
		v.vid = cur.vid + 1
	}
	meta, _ := m["meta"].(map[string]any)
	if meta == nil {
		meta = map[string]any{}
	}
	meta["versionId"] = strconv.Itoa(v.vid)
	meta["lastUpdated"] = instant(v.ts)
	m["meta"] = meta
	if v.body, err = json.Marshal(m); err != nil {
		return "", fmt.Errorf("put: %w", err)
	}
	d.add(v)
	return meta["versionId"].(string), nil
}

// PutRaw stores a version whose body is served as given: JSON that need not be a valid resource
// (for malformed-resource tests); typ and id say what it is a version of.
func (d *Directory) PutRaw(typ, id string, body []byte) error {
	if !json.Valid(body) {
		return fmt.Errorf("put raw: body is not JSON")
	}
	d.s.mu.Lock()
	defer d.s.mu.Unlock()
	v := &version{typ: typ, id: id, vid: 1, ts: d.s.tick(), body: slices.Clone(body)}
	if cur := d.current[typ+"/"+id]; cur != nil {
		v.vid = cur.vid + 1
	}
	d.add(v)
	return nil
}

// Delete records the deletion of a resource; deleting what does not exist is a no-op.
func (d *Directory) Delete(typ, id string) {
	d.s.mu.Lock()
	defer d.s.mu.Unlock()
	cur := d.current[typ+"/"+id]
	if cur == nil || cur.deleted {
		return
	}
	d.add(&version{typ: typ, id: id, vid: cur.vid + 1, ts: d.s.tick(), deleted: true})
}

// Purge removes a resource and its whole history without recording a delete, as restoring a
// backup from before it existed would: only a full read of the history notices it is gone.
func (d *Directory) Purge(typ, id string) {
	d.s.mu.Lock()
	defer d.s.mu.Unlock()
	d.byType[typ] = slices.DeleteFunc(d.byType[typ], func(v *version) bool { return v.id == id })
	delete(d.current, typ+"/"+id)
}

// Get returns the current JSON of a resource, or nil when it does not exist.
func (d *Directory) Get(typ, id string) []byte {
	d.s.mu.Lock()
	defer d.s.mu.Unlock()
	cur := d.current[typ+"/"+id]
	if cur == nil || cur.deleted {
		return nil
	}
	return slices.Clone(cur.body)
}

func (d *Directory) add(v *version) {
	d.byType[v.typ] = append(d.byType[v.typ], v)
	d.current[v.typ+"/"+v.id] = v
}

// SetFailure makes the directory misbehave from now on; Failure{} heals it.
func (d *Directory) SetFailure(f Failure) {
	d.s.mu.Lock()
	defer d.s.mu.Unlock()
	d.failure = f
	d.goodPage = 0
}

// Count returns the number of current (not deleted) resources of a type.
func (d *Directory) Count(typ string) int {
	d.s.mu.Lock()
	defer d.s.mu.Unlock()
	n := 0
	for k, v := range d.current {
		if strings.HasPrefix(k, typ+"/") && !v.deleted {
			n++
		}
	}
	return n
}

var cet = time.FixedZone("CET", 3600)

// instant formats a FHIR instant in a +01:00 zone, so that clients must encode the '+' in _since.
func instant(ms int64) string {
	return time.UnixMilli(ms).In(cet).Format("2006-01-02T15:04:05.000-07:00")
}

func writeOutcome(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/fhir+json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{
		"resourceType": "OperationOutcome",
		"issue":        []any{map[string]any{"severity": "error", "code": code, "diagnostics": msg}},
	})
}

var historyPath = regexp.MustCompile(`^/([a-z0-9\-]+)/fhir/([A-Za-z]+)/_history$`)

var knownTypes = []string{"Organization", "Practitioner", "PractitionerRole", "HealthcareService", "Location", "Endpoint", "OrganizationAffiliation"}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.requests = append(s.requests, r.URL.RequestURI())
	m := historyPath.FindStringSubmatch(r.URL.Path)
	var d *Directory
	if m != nil {
		d = s.dirs[m[1]]
	}
	if d == nil {
		s.mu.Unlock()
		writeOutcome(w, http.StatusNotFound, "not-found", "no such endpoint: "+r.URL.Path)
		return
	}
	typ := m[2]
	if !slices.Contains(knownTypes, typ) {
		s.mu.Unlock()
		writeOutcome(w, http.StatusNotFound, "not-supported", "unknown resource type "+typ)
		return
	}
	f := d.failure
	failing := (len(f.Types) == 0 || slices.Contains(f.Types, typ)) && d.goodPage >= f.AfterPages &&
		(f.Status != 0 || f.Malformed || f.Delay > 0)
	if !failing {
		d.goodPage++
	}
	q := r.URL.Query()
	since := int64(-1 << 62)
	if v := q.Get("_since"); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			s.mu.Unlock()
			writeOutcome(w, http.StatusBadRequest, "invalid", "invalid _since: "+v)
			return
		}
		since = t.UnixMilli()
	}
	count := s.opts.PageSize
	if v := q.Get("_count"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			s.mu.Unlock()
			writeOutcome(w, http.StatusBadRequest, "invalid", "invalid _count: "+v)
			return
		}
		count = min(n, 1000)
	}
	at := s.clock()
	if v := q.Get("_at"); v != "" {
		at, _ = strconv.ParseInt(v, 10, 64)
	}
	offset, _ := strconv.Atoi(q.Get("_offset"))
	all := d.byType[typ]
	lo := sort.Search(len(all), func(i int) bool { return all[i].ts >= since })
	hi := sort.Search(len(all), func(i int) bool { return all[i].ts > at })
	matching := all[lo:hi] // oldest first; served newest first
	var page []*version
	for i := len(matching) - 1 - offset; i >= 0 && len(page) < count; i-- {
		page = append(page, matching[i])
	}
	more := offset+len(page) < len(matching)
	base := s.srv.URL + "/" + d.name + "/fhir"
	s.mu.Unlock()

	if failing && f.Delay > 0 {
		select {
		case <-time.After(f.Delay):
		case <-r.Context().Done():
			return
		}
	}
	if failing && f.Status != 0 {
		writeOutcome(w, f.Status, "exception", fmt.Sprintf("test failure %d for %s", f.Status, typ))
		return
	}

	bundle := map[string]any{
		"resourceType": "Bundle",
		"type":         "history",
		"meta":         map[string]any{"lastUpdated": instant(at)},
		"total":        len(matching),
	}
	links := []any{map[string]any{"relation": "self", "url": base + r.URL.RequestURI()[len("/"+d.name+"/fhir"):]}}
	if more {
		nq := q
		nq.Set("_at", strconv.FormatInt(at, 10))
		nq.Set("_offset", strconv.Itoa(offset+len(page)))
		nq.Set("_count", strconv.Itoa(count))
		links = append(links, map[string]any{"relation": "next", "url": base + "/" + typ + "/_history?" + nq.Encode()})
	}
	bundle["link"] = links
	entries := make([]json.RawMessage, 0, len(page))
	for _, v := range page {
		entries = append(entries, entry(base, v))
	}
	bundle["entry"] = entries
	out, _ := json.Marshal(bundle)
	w.Header().Set("Content-Type", "application/fhir+json")
	if failing && f.Malformed {
		// A page that breaks off: the first entry is complete, then the JSON ends in garbage.
		cut := bytes.Index(out, []byte(`"entry":[`))
		if cut >= 0 && len(entries) > 0 {
			cut += len(`"entry":[`) + len(entries[0])
			out = append(out[:cut:cut], []byte(`,{"fullUrl": <html>502 Bad Gateway</html>`)...)
		} else {
			out = []byte(`{"resourceType": "Bundle", "entry": [ <html>`)
		}
	}
	w.Write(out)
}

func entry(base string, v *version) json.RawMessage {
	e := map[string]any{"fullUrl": base + "/" + v.typ + "/" + v.id}
	url := v.typ + "/" + v.id
	lastMod := instant(v.ts)
	switch {
	case v.deleted:
		e["request"] = map[string]any{"method": "DELETE", "url": url}
		e["response"] = map[string]any{"status": "204 No Content", "lastModified": lastMod}
	case v.vid == 1:
		e["resource"] = json.RawMessage(v.body)
		e["request"] = map[string]any{"method": "POST", "url": v.typ}
		e["response"] = map[string]any{"status": "201 Created", "etag": fmt.Sprintf(`W/"%d"`, v.vid), "lastModified": lastMod}
	default:
		e["resource"] = json.RawMessage(v.body)
		e["request"] = map[string]any{"method": "PUT", "url": url}
		e["response"] = map[string]any{"status": "200 OK", "etag": fmt.Sprintf(`W/"%d"`, v.vid), "lastModified": lastMod}
	}
	b, _ := json.Marshal(e)
	return b
}
