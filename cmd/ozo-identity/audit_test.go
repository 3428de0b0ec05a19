package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/app"
	"github.com/ozo-platform/ozo-identity/audit"
	"github.com/ozo-platform/ozo-identity/config"
	"github.com/ozo-platform/ozo-identity/lookup/mcsd/mcsdtest"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore/dbtest"
)

func auditEnv(t *testing.T, engine sqlstore.Engine) []string {
	key := make([]byte, 32)
	rand.Read(key)
	return []string{"OZO_DATABASE_URL=" + dbtest.URL(t, engine), "OZO_DATA_DIR=" + t.TempDir(),
		"OZO_AUDIT_KEY=" + base64.StdEncoding.EncodeToString(key)}
}

// TestAuditVerifyDetectsInsider runs the insider attacks of issue 13 against `audit verify`:
// a record rewritten with the later ones rechained, then the newest 50 records deleted.
func TestAuditVerifyDetectsInsider(t *testing.T) {
	forEngines(t, func(t *testing.T, engine sqlstore.Engine) {
		env := auditEnv(t, engine)
		cfg, err := config.Load("", env)
		if err != nil {
			t.Fatal(err)
		}
		a, err := app.New(t.Context(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err != nil {
			t.Fatal(err)
		}
		for i := range 120 {
			if err := a.Store.AppendAudit(t.Context(), audit.Record{Action: audit.ActionAdminCall, Outcome: audit.OutcomeSuccess,
				Actor: audit.Agent{Kind: audit.AgentAdmin}, Resource: fmt.Sprint("GET /x/", i)}); err != nil {
				t.Fatal(err)
			}
		}
		db := a.DB
		defer a.Close()
		cpFile := filepath.Join(t.TempDir(), "checkpoint.json")
		if r := runCLI(t, env, "audit", "checkpoint", "--out", cpFile); r.err != nil {
			t.Fatalf("checkpoint: %v\n%s", r.err, r.stderr)
		}
		if r := runCLI(t, env, "audit", "verify", "--checkpoint", cpFile); r.err != nil || !strings.Contains(r.stdout, `"intact": true`) {
			t.Fatalf("verify intact chain: %v\n%s%s", r.err, r.stdout, r.stderr)
		}

		// Rewrite record 40 and rechain 40..120 as the old SHA-256 chain allowed, with a key
		// of the insider's own: the real one is not in the database.
		forged, _ := audit.NewChain(bytes.Repeat([]byte("i"), 32))
		var prev string
		db.QueryRowContext(t.Context(), `SELECT mac FROM audit_records WHERE seq = 39`).Scan(&prev)
		var recs []audit.Record
		a.Store.ScanAudit(t.Context(), 39, 120, func(r audit.Record) error { recs = append(recs, r); return nil })
		recs[0].Resource = "GET /nothing-to-see"
		for _, r := range recs {
			forged.Seal(&r, r.Seq, prev)
			db.ExecContext(t.Context(), `UPDATE audit_records SET resource = $1, prev_mac = $2, mac = $3 WHERE seq = $4`, r.Resource, r.PrevMAC, r.MAC, r.Seq)
			prev = r.MAC
		}
		db.ExecContext(t.Context(), `UPDATE audit_head SET mac = $1`, prev)
		r := runCLI(t, env, "audit", "verify", "--checkpoint", cpFile)
		if r.err == nil || !strings.Contains(r.err.Error(), "rewritten at record 40") || !strings.Contains(r.stdout, `"intact": false`) {
			t.Fatalf("rewrite not detected: %v\n%s", r.err, r.stdout)
		}

		// Put the originals back, then delete the newest 50 and move the head back.
		for _, orig := range recs {
			db.ExecContext(t.Context(), `DELETE FROM audit_records WHERE seq = $1`, orig.Seq)
		}
		var mac string
		db.QueryRowContext(t.Context(), `SELECT mac FROM audit_records WHERE seq = 39`).Scan(&mac)
		db.ExecContext(t.Context(), `UPDATE audit_head SET seq = 39, mac = $1`, mac)
		r = runCLI(t, env, "audit", "verify", "--checkpoint", cpFile)
		if r.err == nil || !strings.Contains(r.err.Error(), "truncated") {
			t.Fatalf("truncation not detected: %v\n%s", r.err, r.stdout)
		}
		// A checkpoint signed by anyone but the server is refused.
		data, _ := json.Marshal(audit.Checkpoint{Seq: 39, MAC: mac, Signature: "AAAA"})
		bad := filepath.Join(t.TempDir(), "forged.json")
		if err := os.WriteFile(bad, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if r := runCLI(t, env, "audit", "verify", "--checkpoint", bad); r.err == nil || !strings.Contains(r.err.Error(), "signature") {
			t.Fatalf("forged checkpoint: %v", r.err)
		}
	})
}

func freePort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestAuditKillDuringBinds kills a real `ozo-identity serve` (SIGKILL) during a burst of admin
// binds: after the restart every binding has exactly its record and every record its binding,
// every acknowledged bind is there, and the chain verifies.
func TestAuditKillDuringBinds(t *testing.T) {
	forEngines(t, func(t *testing.T, engine sqlstore.Engine) {
		env := auditEnv(t, engine)
		addr := freePort(t)
		env = append(env, "OZO_LISTEN="+addr, "OZO_PUBLIC_BASE_URL=http://"+addr, "OZO_ADMIN_TOKEN=admin-secret",
			"OZO_RATE_LIMITS_ADMIN_FAILURES_PER_CLIENT=0")
		cmd, _, stderr := start(t, env, "serve")
		client := &http.Client{Timeout: 5 * time.Second}
		deadline := time.Now().Add(30 * time.Second)
		for {
			if resp, err := client.Get("http://" + addr + "/_matrix/identity/versions"); err == nil {
				resp.Body.Close()
				break
			}
			if time.Now().After(deadline) {
				cmd.Process.Kill()
				t.Fatalf("serve did not start:\n%s", stderr.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
		var acked sync.Map
		var n atomic.Int64
		var wg sync.WaitGroup
		stop := make(chan struct{})
		for c := range 8 {
			wg.Go(func() {
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					uzi := fmt.Sprintf("%d%08d", c+1, i)
					req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/_ozo/admin/v1/bindings",
						strings.NewReader(fmt.Sprintf(`{"medium":"uzi","address":"%s","mxid":"@u%d:hs.test"}`, uzi, c)))
					req.Header.Set("Authorization", "Bearer admin-secret")
					resp, err := client.Do(req)
					if err != nil {
						return // the server is gone
					}
					resp.Body.Close()
					if resp.StatusCode == http.StatusOK {
						acked.Store(uzi, true)
						n.Add(1)
					}
				}
			})
		}
		for n.Load() < 150 && time.Now().Before(deadline.Add(30*time.Second)) {
			time.Sleep(10 * time.Millisecond)
		}
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		cmd.Wait()
		close(stop)
		wg.Wait()

		// Restart: the CLI opens the database as serve does and checks the whole chain.
		if r := runCLI(t, env, "audit", "verify"); r.err != nil {
			t.Fatalf("verify after the kill: %v\n%s%s", r.err, r.stdout, r.stderr)
		}
		cfg, _ := config.Load("", env)
		db, err := sqlstore.Open(context.Background(), cfg.Database.URL, cfg.DataDir)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		set := func(q string) map[string]int {
			rows, err := db.QueryContext(context.Background(), q)
			if err != nil {
				t.Fatal(err)
			}
			defer rows.Close()
			m := map[string]int{}
			for rows.Next() {
				var a string
				rows.Scan(&a)
				m[a]++
			}
			return m
		}
		bindings := set(`SELECT address FROM bindings WHERE medium = 'uzi'`)
		records := set(`SELECT address FROM audit_records WHERE action = 'bind'`)
		for a := range bindings {
			if records[a] != 1 {
				t.Errorf("binding %s has %d bind records", a, records[a])
			}
		}
		for a := range records {
			if bindings[a] != 1 {
				t.Errorf("bind record of %s without its binding", a)
			}
		}
		acked.Range(func(k, _ any) bool {
			if bindings[k.(string)] != 1 {
				t.Errorf("acknowledged bind of %s lost", k)
			}
			return true
		})
		if len(bindings) < 150 {
			t.Fatalf("only %d bindings before the kill", len(bindings))
		}
		t.Logf("%d bindings, %d acknowledged, at the kill", len(bindings), n.Load())
	})
}

// TestAuditExportAndKeyCheck: audit export writes every record since a time as a FHIR Bundle or
// JSON lines, and a process with another audit key refuses to open the trail.
func TestAuditExportAndKeyCheck(t *testing.T) {
	forEngines(t, func(t *testing.T, engine sqlstore.Engine) {
		env := auditEnv(t, engine)
		cfg, _ := config.Load("", env)
		a, err := app.New(t.Context(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err != nil {
			t.Fatal(err)
		}
		for i, at := range []time.Time{time.Now().Add(-48 * time.Hour), time.Now(), time.Now()} {
			if err := a.Store.AppendAudit(t.Context(), audit.Record{At: at, Action: audit.ActionBind, Outcome: audit.OutcomeSuccess,
				Actor: audit.Agent{Kind: audit.AgentAdmin}, Medium: "uzi", Address: fmt.Sprintf("12345678%d", i)}); err != nil {
				t.Fatal(err)
			}
		}
		a.Close()
		r := runCLI(t, env, "audit", "export", "--since", "24h", "--format", "fhir")
		var bundle struct {
			ResourceType string
			Entry        []struct{ Resource audit.AuditEvent }
		}
		if r.err != nil || json.Unmarshal([]byte(r.stdout), &bundle) != nil || bundle.ResourceType != "Bundle" || len(bundle.Entry) != 2 ||
			bundle.Entry[0].Resource.Action != "C" {
			t.Fatalf("fhir export: %v %s", r.err, r.stdout)
		}
		r = runCLI(t, env, "audit", "export", "--format", "jsonl")
		if lines := strings.Split(strings.TrimSpace(r.stdout), "\n"); r.err != nil || len(lines) != 3 {
			t.Fatalf("jsonl export: %v %q", r.err, r.stdout)
		}
		other := append([]string(nil), env...)
		other[len(other)-1] = "OZO_AUDIT_KEY=" + base64.StdEncoding.EncodeToString(bytes.Repeat([]byte("x"), 32))
		if r := runCLI(t, other, "audit", "verify"); r.err == nil || !strings.Contains(r.err.Error(), "not the key the audit chain was written with") {
			t.Fatalf("another key: %v", r.err)
		}
	})
}

// TestAuditDirectorySyncRecorded: a directory sync from the CLI leaves one record per directory,
// with what it applied, and a failing directory is recorded as an error.
func TestAuditDirectorySyncRecorded(t *testing.T) {
	srv := mcsdtest.Start(t, mcsdtest.Options{})
	env := directoryEnv(t, srv, t.TempDir())
	srv.Directory("ziekenhuis-ijsselvallei").SetFailure(mcsdtest.Failure{Status: http.StatusInternalServerError})
	runCLI(t, env, "directory", "sync")
	cfg, _ := config.Load("", env)
	a, err := app.New(t.Context(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	recs, _ := a.Store.ListAudit(t.Context(), time.Time{}, 0, 100)
	got := map[string]audit.Outcome{}
	for _, r := range recs {
		if r.Action == audit.ActionDirectorySync && r.Actor.Kind == audit.AgentSystem && strings.Contains(r.Detail, "applied=") {
			got[r.Resource] = r.Outcome
		}
	}
	if len(got) != 4 || got[srv.LRZAURL()] != audit.OutcomeSuccess || got[srv.URL("ziekenhuis-ijsselvallei")] != audit.OutcomeError {
		t.Fatalf("directory sync records %v", got)
	}
	if _, err := a.VerifyAudit(t.Context(), nil); err != nil {
		t.Fatal(err)
	}
}
