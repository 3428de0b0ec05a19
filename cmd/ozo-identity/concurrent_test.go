package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/lookup/mcsd"
	"github.com/ozo-platform/ozo-identity/lookup/mcsd/mcsdtest"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore/dbtest"
	"github.com/ozo-platform/ozo-identity/threepid"
)

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// binary builds ozo-identity once per test run: these tests run it as separate OS processes.
func binary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "ozo-identity-bin")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "ozo-identity")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

type procResult struct {
	stdout, stderr string
	err            error
}

// start runs the binary with env added to a clean environment.
// output is a process's output that the test may read while the process still writes it.
type output struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (o *output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.Write(p)
}

func (o *output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

func start(t *testing.T, env []string, args ...string) (*exec.Cmd, *output, *output) {
	t.Helper()
	cmd := exec.Command(binary(t), args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}, env...)
	var stdout, stderr output
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, &stdout, &stderr
}

func runProc(t *testing.T, env []string, args ...string) procResult {
	cmd, stdout, stderr := start(t, env, args...)
	err := cmd.Wait()
	return procResult{stdout.String(), stderr.String(), err}
}

// syncFixture is a database and the test FHIR servers, configured for the binary.
type syncFixture struct {
	srv *mcsdtest.Server
	env []string
	db  *sqlstore.DB
	idx *mcsd.Index
}

func newSyncFixture(t *testing.T, engine sqlstore.Engine) *syncFixture {
	t.Helper()
	srv := mcsdtest.Start(t, mcsdtest.Options{})
	u := dbtest.URL(t, engine)
	env := append(directoryEnv(t, srv, t.TempDir()), "OZO_DATABASE_URL="+u, "OZO_DIRECTORY_SYNC_LEASE_TTL=5s")
	db, err := sqlstore.Open(context.Background(), u, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := db.Migrate(context.Background(), slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		t.Fatal(err)
	}
	// A slow hospital makes every sync last long enough for the other one to run into it.
	srv.Directory("ziekenhuis-ijsselvallei").SetFailure(mcsdtest.Failure{Delay: 150 * time.Millisecond})
	return &syncFixture{srv: srv, env: env, db: db, idx: mcsd.NewIndex(db)}
}

// expected is what the test directories resolve to once synced (see lookup/mcsd's tests).
func (f *syncFixture) expected() map[threepid.ThreePID]string {
	hs := f.srv.Homeserver
	return map[threepid.ThreePID]string{
		{Medium: "uzi", Address: "900012345"}: "@m.vandenberg:" + hs("hs1"),
		{Medium: "uzi", Address: "900012346"}: "@j.jansen:" + hs("hs1"),
		{Medium: "uzi", Address: "900023456"}: "@h.dekker:" + hs("hs2"),
		{Medium: "uzi", Address: "900023457"}: "@e.mulder:" + hs("hs2"),
		{Medium: "uzi", Address: "900023458"}: "@l.degroot:" + hs("hs2"),
		{Medium: "uzi", Address: "900034567"}: "@f.kok:" + hs("hs1"),
		{Medium: "uzi", Address: "900034568"}: "@m.vandijk:" + hs("hs1"),
		{Medium: "ura", Address: "17004512"}:  "@praktijk.delinde:" + hs("hs2"),
	}
}

// checkIndex reports every expected resolution lost and every directory whose counts changed.
func (f *syncFixture) checkIndex(t *testing.T, when string, counts map[string]int) map[string]int {
	t.Helper()
	want := f.expected()
	var tps []threepid.ThreePID
	for tp := range want {
		tps = append(tps, tp)
	}
	got, err := f.idx.Resolve(context.Background(), tps)
	if err != nil {
		t.Fatalf("%s: resolve: %v", when, err)
	}
	for tp, mxid := range want {
		if got[tp] != mxid {
			t.Errorf("%s: %s:%s resolves to %q, want %q", when, tp.Medium, tp.Address, got[tp], mxid)
		}
	}
	st, err := f.idx.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	now := map[string]int{}
	for _, s := range st {
		for typ, n := range s.Counts {
			now[s.BaseURL+" "+typ] = n
		}
	}
	if counts != nil {
		for k, n := range counts {
			if now[k] != n {
				t.Errorf("%s: %s: %d resources, had %d", when, k, now[k], n)
			}
		}
	}
	return now
}

const refusal = "another directory sync is running"

// checkSync accepts a sync that succeeded, or one refused because the other held the lease
// (only when it did not wait); anything else (a deadlock, a failed directory) fails the test.
func checkSync(t *testing.T, what string, r procResult, waited bool) (refused bool) {
	t.Helper()
	if r.err == nil {
		if strings.Contains(r.stdout, "FAILED") {
			t.Errorf("%s: exit 0 with failures:\n%s", what, r.stdout)
		}
		return false
	}
	if !waited && strings.Contains(r.stderr, refusal) && strings.Contains(r.stderr, "--wait") && r.stdout == "" {
		return true
	}
	t.Errorf("%s: %v\nstdout:\n%s\nstderr:\n%s", what, r.err, r.stdout, r.stderr)
	return false
}

// Two `directory sync` processes at once, five rounds, on a fresh database first: one waits
// for the lease, the other refuses or goes first; no resolution is ever lost.
func TestTwoSyncProcessesAtOnce(t *testing.T) {
	forEngines(t, func(t *testing.T, engine sqlstore.Engine) {
		f := newSyncFixture(t, engine)
		var counts map[string]int
		overlaps := 0
		for round := range 5 {
			var plain, waiting procResult
			var wg sync.WaitGroup
			wg.Add(2)
			go func() { defer wg.Done(); plain = runProc(t, f.env, "directory", "sync", "--force") }()
			go func() { defer wg.Done(); waiting = runProc(t, f.env, "directory", "sync", "--force", "--wait") }()
			wg.Wait()
			refused := checkSync(t, fmt.Sprintf("round %d, plain", round), plain, false)
			checkSync(t, fmt.Sprintf("round %d, --wait", round), waiting, true)
			if waited := strings.Contains(waiting.stderr, "waiting: "); refused || waited {
				overlaps++
			}
			counts = f.checkIndex(t, fmt.Sprintf("after round %d", round), counts)
			if round == 1 {
				// Changes made between rounds still arrive: no watermark ran ahead.
				put := f.srv.Directory("huisartsenpraktijk-de-linde")
				if _, err := put.Put([]byte(`{"resourceType": "Location", "id": "linde-extra", "name": "Dependance",
					"managingOrganization": {"reference": "Organization/hp-de-linde"}}`)); err != nil {
					t.Fatal(err)
				}
				counts = nil
			}
		}
		// Both start at once and a sync lasts over a second: they meet nearly every round.
		t.Logf("in %d of 5 rounds one sync refused or waited for the other", overlaps)
		if overlaps < 3 {
			t.Errorf("the two processes overlapped in only %d of 5 rounds; the lease was hardly exercised", overlaps)
		}
		if counts[f.srv.URL("huisartsenpraktijk-de-linde")+" Location"] != 2 {
			t.Errorf("the change between rounds was not synced: %v", counts)
		}
	})
}

// `serve` syncs at start and on its schedule while an operator runs `directory sync` by hand:
// the hand-run sync refuses with a clear message or, with --wait, waits; serve logs no
// failure; nothing is lost. Then a holder killed mid-sync: its lease expires, and the next
// sync takes over.
func TestServeAndCLISyncAtOnce(t *testing.T) {
	forEngines(t, func(t *testing.T, engine sqlstore.Engine) {
		f := newSyncFixture(t, engine)
		env := append(f.env, "OZO_DIRECTORY_SYNC_INTERVAL=1s")
		serve, _, serveLog := start(t, env, "serve", "--listen", freeAddr(t))
		defer func() {
			// On a loaded machine the hand-run syncs may hold the lease at each of serve's turns;
			// give its schedule a bounded while to get one in before stopping it.
			for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
				if strings.Contains(serveLog.String(), "directory synced") {
					break
				}
			}
			serve.Process.Signal(syscall.SIGTERM)
			if err := serve.Wait(); err != nil {
				t.Errorf("serve: %v\n%s", err, serveLog)
			}
			for _, bad := range []string{"directory sync failed", "level=ERROR", "deadlock", "40P01", "duplicate key"} {
				if strings.Contains(serveLog.String(), bad) {
					t.Errorf("serve logged %q:\n%s", bad, serveLog)
				}
			}
			if !strings.Contains(serveLog.String(), "directory synced") {
				t.Errorf("serve never synced:\n%s", serveLog)
			}
		}()
		var counts map[string]int
		overlaps := 0
		for round := range 5 {
			// serve's first sync starts at once: the first round races it on a fresh database.
			plain := runProc(t, f.env, "directory", "sync", "--force")
			checkSync(t, fmt.Sprintf("round %d, plain", round), plain, false)
			waiting := runProc(t, f.env, "directory", "sync", "--force", "--wait")
			checkSync(t, fmt.Sprintf("round %d, --wait", round), waiting, true)
			if strings.Contains(plain.stderr, refusal) || strings.Contains(waiting.stderr, "waiting: ") {
				overlaps++
			}
			counts = f.checkIndex(t, fmt.Sprintf("after round %d", round), counts)
		}
		t.Logf("in %d of 5 rounds the hand-run sync met serve's", overlaps)

		// A sync killed with SIGKILL holds the lease until it expires (5s here).
		victim, _, _ := start(t, f.env, "directory", "sync", "--force", "--wait")
		deadline := time.Now().Add(20 * time.Second)
		for {
			var holder string
			err := f.db.QueryRowContext(context.Background(), `SELECT holder FROM leases WHERE name = $1`, mcsd.LeaseName).Scan(&holder)
			if err == nil && strings.Contains(holder, fmt.Sprintf("pid-%d/", victim.Process.Pid)) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the victim never held the lease (%v)", err)
			}
			time.Sleep(20 * time.Millisecond)
		}
		victim.Process.Kill()
		victim.Wait()
		started := time.Now()
		waiting := runProc(t, f.env, "directory", "sync", "--force", "--wait")
		checkSync(t, "after a holder was killed", waiting, true)
		if d := time.Since(started); d > 30*time.Second {
			t.Errorf("taking over a dead holder's lease took %v", d)
		}
		f.checkIndex(t, "after a holder was killed", counts)
	})
}

func forEngines(t *testing.T, fn func(t *testing.T, engine sqlstore.Engine)) {
	for _, engine := range dbtest.Engines {
		t.Run(string(engine), func(t *testing.T) { fn(t, engine) })
	}
}
