package main

import (
	"bytes"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore/dbtest"
)

// The tool runs end to end against the real binary on both engines: it seeds, registers
// through account/register with its homeserver stand-in, runs every cell, checks every answer
// and reports the server's memory.
func TestLoadgenAgainstServer(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "ozo-identity")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/ozo-platform/ozo-identity/cmd/ozo-identity").CombinedOutput(); err != nil {
		t.Fatalf("build ozo-identity: %v\n%s", err, out)
	}
	for _, engine := range dbtest.Engines {
		t.Run(string(engine), func(t *testing.T) {
			args := []string{"--server-bin", bin, "--bindings", "2500", "--duration", "300ms", "--batches", "1,50", "--clients", "1,3"}
			if engine == sqlstore.Postgres {
				dbtest.URL(t, engine) // skips, or fails in CI, without PostgreSQL
				args = append(args, "--database-url", dbtest.PostgresURL())
			} else if _, err := exec.LookPath("taskset"); err == nil {
				args = append(args, "--server-cpus", "0") // pinned, as issue 18 measured
			}
			var out, errs bytes.Buffer
			if err := run(t.Context(), args, &out, &errs); err != nil {
				t.Fatalf("loadgen: %v\n%s%s", err, out.String(), errs.String())
			}
			rows := strings.Split(strings.TrimSpace(out.String()), "\n")
			if len(rows) != 2+4 {
				t.Fatalf("want a header and 4 cells:\n%s", out.String())
			}
			for _, row := range rows[2:] {
				cols := strings.Split(row, "|")
				// | engine | bindings | batch | clients | req/s | addresses/s | p50 | p99 | errors | rss |
				if strings.TrimSpace(cols[1]) != string(engine) || strings.TrimSpace(cols[9]) != "0" ||
					strings.TrimSpace(cols[5]) == "0" || strings.Contains(cols[10], "?") {
					t.Fatalf("cell: %s", row)
				}
			}
			if !strings.Contains(errs.String(), "seeded 2500 bindings") {
				t.Fatalf("no seeding report: %s", errs.String())
			}
		})
	}
}

func TestLoadgenOnlyLoopback(t *testing.T) {
	for _, u := range []string{"http://10.0.0.1:8090", "https://example.org", "http://169.254.1.1"} {
		if err := run(t.Context(), []string{"--url", u, "--token", "t", "--admin-token", "a"}, io.Discard, io.Discard); err == nil ||
			!strings.Contains(err.Error(), "loopback") {
			t.Errorf("%s: %v", u, err)
		}
	}
	if err := run(t.Context(), []string{"--server-bin", "x", "--url", "http://127.0.0.1:1"}, io.Discard, io.Discard); err == nil {
		t.Error("both --server-bin and --url accepted")
	}
}
