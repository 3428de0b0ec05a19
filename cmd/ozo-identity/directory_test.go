package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/lookup/mcsd"
	"github.com/ozo-platform/ozo-identity/lookup/mcsd/mcsdtest"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
)

// providers are the directories the test LRZA lists with a usable directory Endpoint.
var providers = []string{"huisartsenpraktijk-de-linde", "thuiszorg-zonnehof", "ziekenhuis-ijsselvallei"}

// serverCAFile writes the certificate of the test FHIR server to a PEM file, so that the
// binary's own directory client (directory.ca_file) trusts it as a real deployment would.
func serverCAFile(t *testing.T, srv *mcsdtest.Server) string {
	t.Helper()
	u, err := url.Parse(srv.LRZAURL())
	if err != nil {
		t.Fatal(err)
	}
	// Verified against the pool the test client trusts: the file holds that server's certificate.
	conn, err := tls.Dial("tcp", u.Host, srv.Client().Transport.(*http.Transport).TLSClientConfig.Clone())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	chain := conn.ConnectionState().PeerCertificates
	file := filepath.Join(t.TempDir(), "fhir-ca.pem")
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: chain[len(chain)-1].Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// directoryEnv configures the LRZA of srv through OZO_* variables only.
func directoryEnv(t *testing.T, srv *mcsdtest.Server, dataDir string) []string {
	return []string{
		"OZO_DIRECTORY_LRZA_URL=" + srv.LRZAURL(),
		"OZO_DIRECTORY_ALLOWED_NETWORKS=127.0.0.0/8",
		"OZO_DIRECTORY_CA_FILE=" + serverCAFile(t, srv),
		"OZO_DATA_DIR=" + dataDir,
	}
}

type result struct {
	stdout, stderr string
	err            error
}

func runCLI(t *testing.T, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	err := run(ctx, args, env, &stdout, &stderr)
	return result{stdout.String(), stderr.String(), err}
}

// summaryRow is one line of the sync summary table.
type summaryRow struct {
	kind                                string
	fetched, applied, deleted, rejected int
	status                              string
}

var durationField = regexp.MustCompile(`^[0-9.]+(ns|µs|ms|s|m|h)`)

// parseSummary reads the table the sync printed, keyed by directory base URL.
func parseSummary(t *testing.T, out string) map[string]summaryRow {
	t.Helper()
	lines := strings.Split(out, "\n")
	if len(lines) == 0 || !strings.HasPrefix(lines[0], "DIRECTORY") {
		t.Fatalf("no summary table:\n%s", out)
	}
	rows := map[string]summaryRow{}
	for _, line := range lines[1:] {
		if strings.TrimSpace(line) == "" {
			break
		}
		f := strings.Fields(line)
		if len(f) < 8 {
			t.Fatalf("summary row %q", line)
		}
		var r summaryRow
		r.kind = f[1]
		nums := []*int{&r.fetched, &r.applied, &r.deleted, &r.rejected}
		for i, p := range nums {
			n, err := strconv.Atoi(f[2+i])
			if err != nil {
				t.Fatalf("summary row %q: column %d: %v", line, 3+i, err)
			}
			*p = n
		}
		if !durationField.MatchString(f[6]) {
			t.Fatalf("summary row %q: time column %q", line, f[6])
		}
		r.status = strings.Join(f[7:], " ")
		rows[f[0]] = r
	}
	return rows
}

// entries counts the resources of a test directory, each served as one history entry.
func entries(t *testing.T, name string) int {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(mcsdtest.DataDir(), name+".json"))
	if err != nil {
		t.Fatal(err)
	}
	var b struct{ Entry []json.RawMessage }
	if err := json.Unmarshal(raw, &b); err != nil {
		t.Fatal(err)
	}
	return len(b.Entry)
}

type statusOut struct {
	Directories []struct {
		Directory   string
		Kind        string
		Origin      string
		Active      bool
		URAs        []string
		LastAttempt *time.Time `json:"last_attempt"`
		LastSuccess *time.Time `json:"last_success"`
		LastError   string     `json:"last_error"`
		Failures    int
		NextAttempt *time.Time `json:"next_attempt"`
		Watermarks  map[string]string
		Counts      map[string]int
		Rejected    map[string]int
		Collapsed   string
	}
}

func statusJSONOf(t *testing.T, env []string) statusOut {
	t.Helper()
	res := runCLI(t, env, "directory", "status", "--json")
	if res.err != nil {
		t.Fatalf("directory status --json: %v\n%s", res.err, res.stderr)
	}
	var st statusOut
	dec := json.NewDecoder(strings.NewReader(res.stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&st); err != nil {
		t.Fatalf("status JSON: %v\n%s", err, res.stdout)
	}
	return st
}

// A sync prints every directory with what it fetched; a directory answering 500 fails the
// command and is reported, while the others sync and the failed one keeps its data; it then
// backs off unless --force; status shows the watermarks and the failure.
func TestDirectorySync(t *testing.T) {
	srv := mcsdtest.Start(t, mcsdtest.Options{})
	env := directoryEnv(t, srv, t.TempDir())

	res := runCLI(t, env, "directory", "sync")
	if res.err != nil {
		t.Fatalf("first sync: %v\nstdout:\n%s\nstderr:\n%s", res.err, res.stdout, res.stderr)
	}
	rows := parseSummary(t, res.stdout)
	if len(rows) != 1+len(providers) {
		t.Fatalf("summary has %d directories, want %d:\n%s", len(rows), 1+len(providers), res.stdout)
	}
	lrza := rows[srv.LRZAURL()]
	if lrza.kind != "lrza" || lrza.fetched != entries(t, "lrza") || lrza.status != "ok" {
		t.Errorf("LRZA row %+v, want %d fetched:\n%s", lrza, entries(t, "lrza"), res.stdout)
	}
	for _, p := range providers {
		r, ok := rows[srv.URL(p)]
		if !ok {
			t.Fatalf("%s missing from the summary:\n%s", p, res.stdout)
		}
		if r.kind != "provider" || r.status != "ok" || r.fetched != entries(t, p) || r.applied == 0 || r.deleted != 0 {
			t.Errorf("%s: %+v, want ok with %d fetched", p, r, entries(t, p))
		}
		// stderr is not a terminal here: one plain line per directory, no bar.
		if !strings.Contains(res.stderr, "✓ "+srv.URL(p)+" (provider): fetched "+strconv.Itoa(entries(t, p))) {
			t.Errorf("no progress line for %s:\n%s", p, res.stderr)
		}
	}
	if strings.Contains(res.stderr, "\r") {
		t.Errorf("progress bar drawn on a non-terminal:\n%q", res.stderr)
	}
	// The hospital's spoofs are rejected, and the summary says why.
	hospital := srv.URL("ziekenhuis-ijsselvallei")
	if rows[hospital].rejected == 0 || !strings.Contains(res.stdout, "rejected in "+hospital+": ") {
		t.Errorf("hospital rejections not reported:\n%s", res.stdout)
	}
	if !strings.Contains(res.stdout, "4 directories: 4 synced, 0 failed") {
		t.Errorf("no totals line:\n%s", res.stdout)
	}
	hospitalCount := 0
	for _, d := range statusJSONOf(t, env).Directories {
		if d.Directory == hospital {
			for _, n := range d.Counts {
				hospitalCount += n
			}
		}
	}
	if hospitalCount == 0 {
		t.Fatal("nothing of the hospital indexed")
	}

	// The hospital's directory breaks; a change at the GP's must still arrive.
	srv.Directory("ziekenhuis-ijsselvallei").SetFailure(mcsdtest.Failure{Status: http.StatusInternalServerError})
	gp := srv.Directory("huisartsenpraktijk-de-linde")
	if _, err := gp.Put([]byte(`{"resourceType": "Location", "id": "linde-extra", "name": "Dependance"}`)); err != nil {
		t.Fatal(err)
	}
	res = runCLI(t, env, "directory", "sync", "--data-dir", mustEnv(env, "OZO_DATA_DIR"))
	if res.err == nil || !strings.Contains(res.err.Error(), "1 of 4 directories failed") {
		t.Fatalf("sync with a failing directory returned %v\n%s", res.err, res.stdout)
	}
	rows = parseSummary(t, res.stdout)
	if r := rows[hospital]; !strings.HasPrefix(r.status, "FAILED: ") || !strings.Contains(r.status, "500") {
		t.Errorf("hospital row %+v", r)
	}
	if r := rows[srv.URL("huisartsenpraktijk-de-linde")]; r.status != "ok" || r.fetched != 1 || r.applied != 1 {
		t.Errorf("GP row after one change %+v", r)
	}
	if r := rows[srv.URL("thuiszorg-zonnehof")]; r.status != "ok" || r.fetched != 0 {
		t.Errorf("home care row without changes %+v", r)
	}
	if !strings.Contains(res.stderr, "✗ "+hospital+" (provider)") {
		t.Errorf("no failure line on stderr:\n%s", res.stderr)
	}

	st := statusJSONOf(t, env)
	if len(st.Directories) != 1+len(providers) {
		t.Fatalf("status has %d directories", len(st.Directories))
	}
	for _, d := range st.Directories {
		if !d.Active || d.LastAttempt == nil {
			t.Errorf("%s: active %v, last attempt %v", d.Directory, d.Active, d.LastAttempt)
		}
		if d.Directory == hospital {
			n := 0
			for _, c := range d.Counts {
				n += c
			}
			if d.Failures != 1 || !strings.Contains(d.LastError, "500") || d.NextAttempt == nil || !d.NextAttempt.After(time.Now()) {
				t.Errorf("hospital status: failures %d, error %q, next attempt %v", d.Failures, d.LastError, d.NextAttempt)
			}
			if n != hospitalCount || d.LastSuccess == nil {
				t.Errorf("hospital lost its data: %d resources (had %d), last success %v", n, hospitalCount, d.LastSuccess)
			}
			continue
		}
		if d.Failures != 0 || d.LastError != "" || d.LastSuccess == nil {
			t.Errorf("%s: failures %d, error %q", d.Directory, d.Failures, d.LastError)
		}
		for _, typ := range []string{"Organization", "Endpoint"} {
			if _, err := time.Parse(time.RFC3339Nano, d.Watermarks[typ]); err != nil {
				t.Errorf("%s: %s watermark %q: %v", d.Directory, typ, d.Watermarks[typ], err)
			}
		}
		if d.Kind == "provider" && (d.Origin != "lrza" || len(d.URAs) != 1 || d.Counts["Practitioner"] == 0) {
			t.Errorf("%s: origin %q, URAs %v, counts %v", d.Directory, d.Origin, d.URAs, d.Counts)
		}
	}

	// Backing off: skipped, which is not a failure; --force tries again.
	res = runCLI(t, env, "directory", "sync")
	if res.err != nil {
		t.Fatalf("sync during backoff: %v\n%s", res.err, res.stdout)
	}
	if r := parseSummary(t, res.stdout)[hospital]; !strings.HasPrefix(r.status, "skipped: backing off after 1 failed attempt(s) in a row") {
		t.Errorf("hospital during backoff: %+v", r)
	}
	res = runCLI(t, env, "directory", "sync", "--force")
	if res.err == nil || !strings.HasPrefix(parseSummary(t, res.stdout)[hospital].status, "FAILED: ") {
		t.Fatalf("forced sync of the failing hospital: %v\n%s", res.err, res.stdout)
	}
	srv.Directory("ziekenhuis-ijsselvallei").SetFailure(mcsdtest.Failure{})
	if res = runCLI(t, env, "directory", "sync", "--force"); res.err != nil {
		t.Fatalf("sync after the hospital recovered: %v\n%s", res.err, res.stdout)
	}
	for _, d := range statusJSONOf(t, env).Directories {
		if d.Failures != 0 || d.LastError != "" || d.NextAttempt != nil {
			t.Errorf("%s after recovery: failures %d, error %q, next %v", d.Directory, d.Failures, d.LastError, d.NextAttempt)
		}
	}

	// The readable status: one row per directory, then one per resource type.
	res = runCLI(t, env, "directory", "status")
	if res.err != nil {
		t.Fatal(res.err)
	}
	if !strings.HasPrefix(res.stdout, "DIRECTORY  ") || !strings.Contains(res.stdout, "WATERMARK") {
		t.Fatalf("status table:\n%s", res.stdout)
	}
	for _, p := range providers {
		if !regexp.MustCompile(`(?m)^`+regexp.QuoteMeta(srv.URL(p))+` +provider +lrza +yes +\d{8} `).MatchString(res.stdout) ||
			!regexp.MustCompile(`(?m)^`+regexp.QuoteMeta(srv.URL(p))+` +Practitioner +\d+ +\d+ +\d{4}-`).MatchString(res.stdout) {
			t.Errorf("status table lacks %s:\n%s", p, res.stdout)
		}
	}
}

func mustEnv(env []string, key string) string {
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok && k == key {
			return v
		}
	}
	panic(key + " not set")
}

// An LRZA that cannot be read fails the command, and no provider is touched.
func TestDirectorySyncLRZAFails(t *testing.T) {
	srv := mcsdtest.Start(t, mcsdtest.Options{})
	srv.Directory("lrza").SetFailure(mcsdtest.Failure{Malformed: true})
	env := directoryEnv(t, srv, t.TempDir())
	res := runCLI(t, env, "directory", "sync")
	if res.err == nil {
		t.Fatalf("sync with a broken LRZA succeeded:\n%s", res.stdout)
	}
	rows := parseSummary(t, res.stdout)
	if len(rows) != 1 || !strings.HasPrefix(rows[srv.LRZAURL()].status, "FAILED: ") {
		t.Errorf("summary:\n%s", res.stdout)
	}
	if !strings.Contains(res.stdout, "\nfailed (1):\n  "+srv.LRZAURL()+" (lrza): Organization history: malformed page") {
		t.Errorf("no failure list:\n%s", res.stdout)
	}
	// Backing off, the LRZA is skipped: still a failure of the command, and the line says
	// when it is retried and how to force it.
	srv.Directory("lrza").SetFailure(mcsdtest.Failure{})
	res = runCLI(t, env, "directory", "sync")
	if res.err == nil || !strings.Contains(res.err.Error(), "the LRZA was not synced") {
		t.Fatalf("sync with the LRZA backing off: %v\n%s", res.err, res.stdout)
	}
	if !regexp.MustCompile(`skipped \(1\):\n  ` + regexp.QuoteMeta(srv.LRZAURL()) + ` \(lrza\): backing off after 1 failed attempt\(s\) in a row \(last: .*\); next attempt \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(in [0-9ms.]+\); run 'ozo-identity directory sync --force' to try now\n`).MatchString(res.stdout) {
		t.Errorf("skip line:\n%s", res.stdout)
	}
	if res = runCLI(t, env, "directory", "sync", "--force"); res.err != nil {
		t.Fatalf("forced sync after the LRZA recovered: %v\n%s", res.err, res.stdout)
	}
}

// `directory sync --full URA` re-reads that provider's directory: rows lost from the index
// while its watermarks stayed come back; status flags the loss before.
func TestDirectorySyncFull(t *testing.T) {
	srv := mcsdtest.Start(t, mcsdtest.Options{})
	env := directoryEnv(t, srv, t.TempDir())
	if res := runCLI(t, env, "directory", "sync"); res.err != nil {
		t.Fatalf("first sync: %v\n%s", res.err, res.stdout)
	}
	gp := srv.URL("huisartsenpraktijk-de-linde")
	db, err := sqlstore.Open(context.Background(), "", mustEnv(env, "OZO_DATA_DIR"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	sum := sha256.Sum256([]byte(gp))
	for _, tbl := range []string{"mcsd_resources", "mcsd_refs", "mcsd_identifiers", "mcsd_addresses", "mcsd_hashes"} {
		if _, err := db.Exec(`DELETE FROM `+tbl+` WHERE dir = $1`, hex.EncodeToString(sum[:8])); err != nil {
			t.Fatal(err)
		}
	}
	res := runCLI(t, env, "directory", "status")
	if !strings.Contains(res.stdout, "COLLAPSED (1)") || !strings.Contains(res.stdout, gp+": 0 resources count now") ||
		!strings.Contains(res.stdout, "ozo-identity directory sync --full 17004512") {
		t.Errorf("status does not flag the lost rows:\n%s", res.stdout)
	}
	for _, bad := range [][]string{{"--full", "1700"}, {"17004512"}, {"--full", "17004512", "--wait"}} {
		if res := runCLI(t, env, append([]string{"directory", "sync"}, bad...)...); res.err == nil {
			t.Errorf("directory sync %v accepted", bad)
		}
	}
	res = runCLI(t, env, "directory", "sync", "--full", "17004512")
	if res.err != nil {
		t.Fatalf("full sync: %v\n%s", res.err, res.stdout)
	}
	rows := parseSummary(t, res.stdout)
	if r := rows[gp]; r.fetched != entries(t, "huisartsenpraktijk-de-linde") || r.status != "ok" {
		t.Errorf("GP row of the full sync %+v", r)
	}
	if r := rows[srv.URL("thuiszorg-zonnehof")]; r.fetched != 0 {
		t.Errorf("a directory not asked for was re-read: %+v", r)
	}
	for _, d := range statusJSONOf(t, env).Directories {
		if d.Directory == gp && (d.Counts["Practitioner"] != 3 || d.Collapsed != "") {
			t.Errorf("GP after --full: counts %v, collapsed %q", d.Counts, d.Collapsed)
		}
	}
}

// A directory is fetched through the SSRF guard: without allowed_networks, loopback is refused.
func TestDirectorySyncRefusesLoopbackByDefault(t *testing.T) {
	srv := mcsdtest.Start(t, mcsdtest.Options{})
	var env []string
	for _, kv := range directoryEnv(t, srv, t.TempDir()) {
		if !strings.HasPrefix(kv, "OZO_DIRECTORY_ALLOWED_NETWORKS=") {
			env = append(env, kv)
		}
	}
	res := runCLI(t, env, "directory", "sync")
	if res.err == nil || len(srv.Requests()) != 0 {
		t.Fatalf("loopback directory fetched: %v, %d requests\n%s", res.err, len(srv.Requests()), res.stdout)
	}
}

func TestDirectoryCommandErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"directory"}, "missing subcommand"},
		{[]string{"directory", "--force"}, "missing subcommand"},
		{[]string{"directory", "frobnicate"}, `unknown subcommand "frobnicate"`},
		{[]string{"directory", "sync", "--data-dir", dir}, "no directory configured"},
		{[]string{"directory", "sync", "--json"}, "flag provided but not defined: -json"},
		{[]string{"directory", "status", "--force"}, "flag provided but not defined: -force"},
		{[]string{"directory", "status", "--data-dir", dir, "extra"}, `unexpected argument "extra"`},
		{[]string{"directory", "sync", "--config", filepath.Join(dir, "missing.yaml")}, "read config"},
	} {
		res := runCLI(t, nil, tc.args...)
		if res.err == nil || !strings.Contains(res.err.Error(), tc.want) {
			t.Errorf("%v: error %v, want %q", tc.args, res.err, tc.want)
		}
		if res.stdout != "" {
			t.Errorf("%v printed on stdout:\n%s", tc.args, res.stdout)
		}
	}
	// Nothing synced yet: status says so rather than printing empty tables.
	res := runCLI(t, nil, "directory", "status", "--data-dir", dir)
	if res.err != nil || !strings.Contains(res.stdout, "no directory known yet") {
		t.Errorf("status of an empty index: %v\n%s", res.err, res.stdout)
	}
	res = runCLI(t, nil, "directory", "status", "--data-dir", dir, "--json")
	if res.err != nil || strings.TrimSpace(res.stdout) != `{
  "directories": []
}` {
		t.Errorf("JSON status of an empty index: %v\n%s", res.err, res.stdout)
	}
}

// Text from a directory (error messages, rejection reasons, IDs) cannot inject escape
// sequences into the terminal or break the table's rows.
func TestSummaryCleansDirectoryText(t *testing.T) {
	var out bytes.Buffer
	writeSyncSummary(&out, []mcsd.DirectoryReport{{
		Directory: "https://evil.example/fhir", Kind: "provider", Fetched: 3, Rejected: 9,
		Err: errors.New("GET x: 500 (\x1b]0;owned\x07\x1b[2J\nFAKE ROW\tok\u202e)"),
		Rejections: []mcsd.Rejection{
			{Type: "Practitioner", ID: "a\x1b[31m", Reason: "bad\r\nline"},
			{Type: "Endpoint", ID: "b", Reason: "r2"}, {Type: "Endpoint", ID: "c", Reason: "r3"},
			{Type: "Endpoint", ID: "d", Reason: "r4"}, {Type: "Endpoint", ID: "e", Reason: "r5"},
			{Type: "Endpoint", ID: "f", Reason: "r6"},
		},
	}}, time.Now())
	s := out.String()
	for _, bad := range []string{"\x1b", "\x07", "\r", "\u202e", "\nFAKE"} {
		if strings.Contains(s, bad) {
			t.Errorf("summary contains %q:\n%q", bad, s)
		}
	}
	if !strings.Contains(s, "Practitioner/a [31m: bad  line") || strings.Contains(s, "r6") ||
		!strings.Contains(s, "… and 4 more") {
		t.Errorf("rejections:\n%s", s)
	}
	if rows := parseSummary(t, s); len(rows) != 1 || !strings.Contains(rows["https://evil.example/fhir"].status, "FAKE ROW ok") {
		t.Errorf("rows %+v", rows)
	}
}

// On a terminal, concurrent directories share one live bar with a line per finished directory;
// events from many goroutines at once neither race nor lose a line.
func TestProgressBarConcurrent(t *testing.T) {
	var buf bytes.Buffer
	p := &syncProgress{w: &buf, tty: true, width: 100, active: map[string]*activeDir{}}
	p.Event(mcsd.Progress{Directory: "https://lrza.example/fhir", Kind: "lrza", Total: 1})
	p.Event(mcsd.Progress{Directory: "https://lrza.example/fhir", Kind: "lrza", Total: 1, Done: true,
		Report: &mcsd.DirectoryReport{Directory: "https://lrza.example/fhir", Kind: "lrza", Fetched: 10}})
	const n = 12
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dir := fmt.Sprintf("https://p%d.example/fhir", i)
			p.Event(mcsd.Progress{Directory: dir, Kind: "provider", Total: n})
			for page := 1; page <= 20; page++ {
				p.Event(mcsd.Progress{Directory: dir, Kind: "provider", Total: n, Type: "Practitioner", Fetched: page * 100})
			}
			rep := &mcsd.DirectoryReport{Directory: dir, Kind: "provider", Fetched: 2000}
			if i == 3 {
				rep.Err = errors.New("GET: 503 Service Unavailable")
			}
			p.Event(mcsd.Progress{Directory: dir, Kind: "provider", Total: n, Done: true, Report: rep})
		}()
	}
	fmt.Fprintln(p, "level=ERROR msg=\"a log line\"")
	wg.Wait()
	p.Close()
	out := buf.String()
	for i := range n {
		mark := "✓"
		if i == 3 {
			mark = "✗"
		}
		if !strings.Contains(out, fmt.Sprintf("%s https://p%d.example/fhir (provider): fetched 2000", mark, i)) {
			t.Errorf("no line for p%d", i)
		}
	}
	if !strings.Contains(out, "✓ https://lrza.example/fhir (lrza)") || !strings.Contains(out, "providers") ||
		!strings.Contains(out, "\rlevel=ERROR msg=\"a log line\"\n") || !strings.Contains(out, "\r") {
		t.Errorf("terminal output:\n%q", out)
	}
	// Every finished line stands alone once the terminal has applied the carriage returns.
	for _, line := range strings.Split(out, "\n") {
		if i := strings.LastIndex(line, "\r"); i >= 0 {
			line = line[i+1:]
		}
		if strings.Contains(line, "): fetched") && !strings.HasPrefix(line, "✓ ") && !strings.HasPrefix(line, "✗ ") {
			t.Errorf("garbled line %q", line)
		}
	}
}

// A provider that deletes all its practitioners at once is stopped by the mass-delete guard:
// the command fails and says how to override, the index keeps them; --allow-mass-delete applies it.
func TestDirectorySyncMassDelete(t *testing.T) {
	srv := mcsdtest.Start(t, mcsdtest.Options{})
	env := append(directoryEnv(t, srv, t.TempDir()), "OZO_DIRECTORY_MAX_DELETE_MIN=1", "OZO_DIRECTORY_MAX_DELETE_SHARE=0.4")
	if res := runCLI(t, env, "directory", "sync"); res.err != nil {
		t.Fatalf("first sync: %v\n%s", res.err, res.stdout)
	}
	gp := srv.URL("huisartsenpraktijk-de-linde")
	d := srv.Directory("huisartsenpraktijk-de-linde")
	for _, id := range []string{"p-hp-dekker", "p-hp-mulder"} {
		d.Delete("Practitioner", id)
	}
	res := runCLI(t, env, "directory", "sync")
	if res.err == nil || !strings.Contains(res.stdout, "\nfailed (1):\n  "+gp+" (provider): would delete 2 of 3 Practitioner resources in one sync (more than 40%); kept them all; if the directory really lost them: ozo-identity directory sync --allow-mass-delete\n") {
		t.Fatalf("guarded sync: %v\n%s", res.err, res.stdout)
	}
	count := func() int {
		for _, s := range statusJSONOf(t, env).Directories {
			if s.Directory == gp {
				return s.Counts["Practitioner"]
			}
		}
		return -1
	}
	if n := count(); n != 3 {
		t.Fatalf("practitioners after the refused sync: %d", n)
	}
	if res := runCLI(t, env, "directory", "sync", "--force", "--allow-mass-delete"); res.err != nil {
		t.Fatalf("allowed sync: %v\n%s", res.err, res.stdout)
	}
	if n := count(); n != 1 {
		t.Fatalf("practitioners after the allowed sync: %d", n)
	}
}
