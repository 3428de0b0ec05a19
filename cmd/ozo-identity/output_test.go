package main

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/lookup/mcsd"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	file := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(file, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs (go test -update rewrites it)\ngot:\n%s\nwant:\n%s", file, got, want)
	}
}

var goldenNow = time.Date(2026, 11, 29, 20, 30, 0, 0, time.UTC)

// A sync with every kind of outcome: what an operator reads on stdout and stderr.
func goldenReports() []mcsd.DirectoryReport {
	const hang = "no complete answer within 30s"
	return []mcsd.DirectoryReport{
		{Directory: "https://lrza.example.nl/fhir", Kind: "lrza", Fetched: 11, Applied: 11, Duration: 1200 * time.Millisecond},
		{Directory: "https://ok.example.nl/fhir", Kind: "provider", Fetched: 40, Applied: 38, Deleted: 2, Duration: 900 * time.Millisecond},
		{Directory: "https://hangs.example.nl/fhir", Kind: "provider", Fetched: 100, Applied: 100, Duration: 30 * time.Second,
			Err: &mcsd.FetchError{Type: "Practitioner", URL: "https://hangs.example.nl/fhir/Practitioner/_history", Reason: hang}},
		{Directory: "https://trickles.example.nl/fhir", Kind: "provider", Duration: 30 * time.Second,
			Err: &mcsd.FetchError{Type: "Organization", URL: "https://trickles.example.nl/fhir/Organization/_history", Reason: hang}},
		{Directory: "https://broken.example.nl/fhir", Kind: "provider", Duration: 80 * time.Millisecond,
			Err: &mcsd.FetchError{Type: "Endpoint", URL: "https://broken.example.nl/fhir/Endpoint/_history",
				Reason: "HTTP 500 Internal Server Error (database unavailable)"}},
		{Directory: "https://restored.example.nl/fhir", Kind: "provider", Fetched: 12, Duration: 300 * time.Millisecond,
			Err: &mcsd.MassDeleteError{Type: "Practitioner", Delete: 141, Of: 156, Share: 0.5}},
		{Directory: "https://backoff.example.nl/fhir", Kind: "provider",
			Skipped: "backing off after 3 failed attempt(s) in a row", RetryAt: goldenNow.Add(12 * time.Minute),
			LastError: "Location history: HTTP 503 Service Unavailable (GET https://backoff.example.nl/fhir/Location/_history)"},
		{Directory: "https://gone.example.nl/fhir", Kind: "provider", Removed: true},
		{Directory: "https://other.example.nl/fhir", Kind: "provider", Duration: time.Second,
			Err: errors.New("the whole directory took longer than 10m0s; the types read completely are kept")},
	}
}

func TestSyncSummaryGolden(t *testing.T) {
	var out bytes.Buffer
	writeSyncSummary(&out, goldenReports(), goldenNow)
	golden(t, "sync_summary.golden", out.Bytes())
}

// The progress lines of a log (stderr not a terminal): starts, the directory waited on with
// how long, and one line per outcome, the skipped one saying when it is retried.
func TestSyncProgressGolden(t *testing.T) {
	var out bytes.Buffer
	now := goldenNow
	p := &syncProgress{w: &out, active: map[string]*activeDir{}, waitNote: 10 * time.Second, now: func() time.Time { return now }}
	reps := goldenReports()
	hangs := reps[2]
	p.Event(mcsd.Progress{Directory: hangs.Directory, Kind: "provider", Total: 2})
	p.Event(mcsd.Progress{Directory: hangs.Directory, Kind: "provider", Total: 2, Type: "Practitioner", Fetched: 100})
	p.tick(now.Add(5 * time.Second)) // not silent long enough yet
	p.tick(now.Add(12 * time.Second))
	p.tick(now.Add(15 * time.Second)) // already said within waitNote
	p.tick(now.Add(25 * time.Second))
	now = now.Add(30 * time.Second)
	for _, r := range reps {
		if r.Removed {
			continue // removals are not progress events
		}
		p.Event(mcsd.Progress{Directory: r.Directory, Kind: r.Kind, Total: 2, Done: true, Report: &r})
	}
	p.Close()
	golden(t, "sync_progress.golden", out.Bytes())
}

// On a terminal the bar names the directory that stopped answering and for how long, instead of
// sitting frozen on the last page heard.
func TestProgressBarNamesSilentDirectory(t *testing.T) {
	var out bytes.Buffer
	now := goldenNow
	p := &syncProgress{w: &out, tty: true, width: 160, active: map[string]*activeDir{}, waitNote: 2 * time.Second,
		now: func() time.Time { return now }}
	p.Event(mcsd.Progress{Directory: "https://fast.example.nl/fhir", Kind: "provider", Total: 2})
	p.Event(mcsd.Progress{Directory: "https://slow.example.nl/ziekenhuis/fhir", Kind: "provider", Total: 2})
	p.Event(mcsd.Progress{Directory: "https://slow.example.nl/ziekenhuis/fhir", Kind: "provider", Total: 2, Type: "Practitioner", Fetched: 300})
	now = now.Add(20 * time.Second)
	p.Event(mcsd.Progress{Directory: "https://fast.example.nl/fhir", Kind: "provider", Total: 2, Type: "Location", Fetched: 9})
	if d := p.descriptionAt(now.Add(time.Second)); d != "providers waiting on ziekenhuis 21s (Practitioner)" {
		t.Errorf("description %q", d)
	}
	p.tick(now.Add(2 * time.Second))
	p.Close()
	if !bytes.Contains(out.Bytes(), []byte("waiting on ziekenhuis 22s (Practitioner)")) {
		t.Errorf("the ticking bar does not name the silent directory:\n%q", out.String())
	}
}
