package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/audit"
	"github.com/ozo-platform/ozo-identity/identity"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore/dbtest"
	"github.com/ozo-platform/ozo-identity/threepid"
)

// importEnv points the CLI at a fresh database of engine; dataDir holds SQLite's file.
func importEnv(t *testing.T, engine sqlstore.Engine) (env []string, open func() *sqlstore.Store) {
	t.Helper()
	dataDir := t.TempDir()
	if engine == sqlstore.Postgres {
		env = []string{"OZO_DATABASE_URL=" + dbtest.URL(t, engine)}
	}
	env = append(env, "OZO_DATA_DIR="+dataDir, "OZO_LOG_LEVEL=error")
	return env, func() *sqlstore.Store {
		url := ""
		if engine == sqlstore.Postgres {
			url = strings.TrimPrefix(env[0], "OZO_DATABASE_URL=")
		}
		db, err := sqlstore.Open(context.Background(), url, dataDir)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		if err := db.Migrate(context.Background(), slog.New(slog.DiscardHandler)); err != nil {
			t.Fatal(err)
		}
		return sqlstore.New(db)
	}
}

func runImport(ctx context.Context, env []string, args ...string) (stdout, stderr string, err error) {
	var out, errs bytes.Buffer
	err = run(ctx, append([]string{"admin", "bindings", "import"}, args...), env, &out, &errs)
	return out.String(), errs.String(), err
}

func mxidOf(t *testing.T, s *sqlstore.Store, medium, address string) string {
	t.Helper()
	b, err := s.GetBinding(context.Background(), threepid.ThreePID{Medium: medium, Address: address})
	if errors.Is(err, identity.ErrNotFound) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	return b.MXID
}

// Hostile NDJSON: malformed and incomplete lines, invalid 3PIDs and MXIDs, an overlong line and
// a 3PID twice with different MXIDs. The valid lines are imported, the others listed by line
// number, nothing aborts, and a second run changes nothing.
func TestImportNDJSON(t *testing.T) {
	for _, engine := range dbtest.Engines {
		t.Run(string(engine), func(t *testing.T) {
			env, open := importEnv(t, engine)
			file := filepath.Join(t.TempDir(), "bindings.ndjson")
			lines := []string{
				"\ufeff" + `{"medium":"email","address":"Alice@Example.org","mxid":"@alice:hs.example"}`, // 1, with a BOM
				`{"medium":"uzi","address":"012345678","mxid":"@jansen:hs.example"}`,                     // 2
				`{"medium":"email","address":`, // 3 malformed
				``,                             // 4 blank
				`{"medium":"email","address":"bob@example.org"}`,                                         // 5 no mxid
				`{"medium":"uzi","address":"12345","mxid":"@x:hs.example"}`,                              // 6 bad UZI
				`{"medium":"email","address":"carol@example.org","mxid":"carol"}`,                        // 7 bad MXID
				`{"medium":"email","address":"` + strings.Repeat("a", 70000) + `@x.org","mxid":"@y:hs"}`, // 8 too long
				`["email","dave@example.org","@dave:hs.example"]`,                                        // 9 not an object
				`{"medium":"uzi_nr","address":"012345678","mxid":"@jansen2:hs.example"}`,                 // 10 rebinds line 2
				`{"medium":"ura","address":"87654321","mxid":"@team:hs.example","extra":"ignored"}`,      // 11
			}
			if err := os.WriteFile(file, []byte(strings.Join(lines, "\n")), 0o600); err != nil {
				t.Fatal(err)
			}
			// An earlier binding outside the file stays.
			s := open()
			if err := s.Bind(context.Background(), identity.BindRequest{Binding: identity.Binding{
				ThreePID: threepid.ThreePID{Medium: "email", Address: "kept@example.org"}, MXID: "@kept:hs.example",
				CreatedAt: time.Now(), NotAfter: time.Now().Add(time.Hour), Source: "bind"}}); err != nil {
				t.Fatal(err)
			}

			out, errs, err := runImport(t.Context(), env, file, "--batch", "2")
			if err == nil || !strings.Contains(err.Error(), "6 invalid lines") {
				t.Fatalf("import: %v\n%s", err, errs)
			}
			for _, l := range []string{"line 3:", "line 5: missing mxid", "line 6: M_INVALID_PARAM", "line 7: M_INVALID_PARAM", "line 8: line longer", "line 9:"} {
				if !strings.Contains(errs, l) {
					t.Errorf("stderr does not report %q:\n%s", l, errs)
				}
			}
			if strings.Contains(errs, "line 4:") || strings.Contains(errs, "line 11:") {
				t.Errorf("valid or blank line reported:\n%s", errs)
			}
			if !strings.Contains(out, "3 created, 1 updated (rebound to another MXID), 0 unchanged, 0 superseded by a later line, 6 invalid") {
				t.Fatalf("summary: %s", out)
			}
			if got := mxidOf(t, s, "email", "alice@example.org"); got != "@alice:hs.example" {
				t.Fatalf("alice: %q", got)
			}
			if got := mxidOf(t, s, "uzi", "012345678"); got != "@jansen2:hs.example" {
				t.Fatalf("the later line must win: %q", got)
			}
			if got := mxidOf(t, s, "ura", "87654321"); got != "@team:hs.example" {
				t.Fatalf("ura: %q", got)
			}
			if got := mxidOf(t, s, "email", "kept@example.org"); got != "@kept:hs.example" {
				t.Fatalf("earlier binding: %q", got)
			}
			if _, err := os.Stat(file + ".import-state"); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("state file left after a complete import: %v", err)
			}
			recs, err := s.ListAudit(context.Background(), time.Time{}, 0, 100)
			if err != nil {
				t.Fatal(err)
			}
			var batches []audit.Record
			binds := map[string]int{}
			for _, r := range recs {
				switch r.Action {
				case audit.ActionAdminCall:
					batches = append(batches, r)
				case audit.ActionBind:
					binds[r.Medium+":"+r.Address]++
				}
			}
			if len(batches) != 3 || !strings.Contains(batches[0].Resource, "lines 1-2") {
				t.Fatalf("audit: one record per batch of two valid lines expected, got %+v", batches)
			}
			// 3 created, 1 rebound: each change has its record, written with it.
			if len(binds) != 3 || binds["uzi:012345678"] != 2 || binds["email:alice@example.org"] != 1 || binds["ura:87654321"] != 1 {
				t.Fatalf("bind records %v", binds)
			}

			// Idempotent: everything valid is reported unchanged.
			out, _, _ = runImport(t.Context(), env, file)
			if !strings.Contains(out, "0 created, 0 updated (rebound to another MXID), 3 unchanged, 1 superseded") {
				t.Fatalf("re-import: %s", out)
			}
		})
	}
}

// CSV with the columns in another order, quoted fields, short rows and broken quoting; --strict
// stops at the first invalid line with everything before it imported, and a run after the line
// is fixed resumes there.
func TestImportCSVStrictResumes(t *testing.T) {
	for _, engine := range dbtest.Engines {
		t.Run(string(engine), func(t *testing.T) {
			env, open := importEnv(t, engine)
			file := filepath.Join(t.TempDir(), "export.csv")
			var b strings.Builder
			b.WriteString("mxid,Medium,address,department\n")
			for i := 1; i <= 30; i++ {
				if i == 20 {
					b.WriteString("@u20:hs.example,email,not-an-address,x\n")
					continue
				}
				fmt.Fprintf(&b, "\"@u%d:hs.example\",email,\"u%d@example.org\",ward %d\n", i, i, i)
			}
			os.WriteFile(file, []byte(b.String()), 0o600)

			out, errs, err := runImport(t.Context(), env, "--strict", "--batch", "7", file)
			if err == nil || !strings.Contains(err.Error(), "line 21 is invalid") || !strings.Contains(errs, "line 21: M_INVALID_EMAIL") {
				t.Fatalf("strict import: %v\n%s%s", err, out, errs)
			}
			s := open()
			if mxidOf(t, s, "email", "u19@example.org") != "@u19:hs.example" || mxidOf(t, s, "email", "u21@example.org") != "" {
				t.Fatal("strict import did not stop exactly at the invalid line")
			}
			// Fix the line: the recorded progress still fits, and the run resumes at it.
			os.WriteFile(file, []byte(strings.Replace(b.String(), "not-an-address", "u20@example.org", 1)), 0o600)
			out, errs, err = runImport(t.Context(), env, "--strict", file)
			if err != nil {
				t.Fatalf("resumed import: %v\n%s", err, errs)
			}
			if !strings.Contains(out, "resumed after line 20") || !strings.Contains(out, "30 created, 0 updated (rebound to another MXID), 0 unchanged") {
				t.Fatalf("resumed summary: %s\n%s", out, errs)
			}
			for _, i := range []int{1, 20, 30} {
				if got := mxidOf(t, s, "email", fmt.Sprintf("u%d@example.org", i)); got != fmt.Sprintf("@u%d:hs.example", i) {
					t.Fatalf("u%d: %q", i, got)
				}
			}

			// Without --strict broken rows are listed and skipped.
			bad := filepath.Join(t.TempDir(), "bad.csv")
			os.WriteFile(bad, []byte("medium,address,mxid\nemail,ok@example.org,@ok:hs.example\nemail,short@example.org\nemail,\"broken,@b:hs\nemail,last@example.org,@last:hs.example\n"), 0o600)
			out, errs, err = runImport(t.Context(), env, bad)
			if err == nil || !strings.Contains(errs, "line 3: missing mxid") || !strings.Contains(errs, "line 4:") {
				t.Fatalf("broken CSV: %v\n%s%s", err, out, errs)
			}
			if mxidOf(t, s, "email", "ok@example.org") != "@ok:hs.example" {
				t.Fatal("valid row before broken ones not imported")
			}
			// A file without the needed header is refused before anything happens.
			nohdr := filepath.Join(t.TempDir(), "nohdr.csv")
			os.WriteFile(nohdr, []byte("email,x@example.org,@x:hs.example\n"), 0o600)
			if _, _, err := runImport(t.Context(), env, nohdr); err == nil || !strings.Contains(err.Error(), "header") {
				t.Fatalf("headerless CSV: %v", err)
			}
		})
	}
}

// An import interrupted mid-way resumes after the last committed batch: every line ends up
// imported exactly once, none twice and none lost.
func TestImportInterruptedResumes(t *testing.T) {
	for _, engine := range dbtest.Engines {
		t.Run(string(engine), func(t *testing.T) {
			env, open := importEnv(t, engine)
			file := filepath.Join(t.TempDir(), "big.ndjson")
			var b strings.Builder
			const n = 20000
			for i := range n {
				fmt.Fprintf(&b, `{"medium":"email","address":"p%d@example.org","mxid":"@p%d:hs.example"}`+"\n", i, i)
			}
			os.WriteFile(file, []byte(b.String()), 0o600)

			ctx, cancel := context.WithCancel(t.Context())
			done := make(chan error, 1)
			go func() {
				_, _, err := runImport(ctx, env, file, "--batch", "500")
				done <- err
			}()
			for {
				if _, err := os.Stat(file + ".import-state"); err == nil {
					cancel()
					break
				}
				select {
				case err := <-done:
					t.Fatalf("import finished before it could be interrupted: %v", err)
				case <-time.After(time.Millisecond):
				}
			}
			if err := <-done; err == nil || !strings.Contains(err.Error(), "resume") {
				t.Fatalf("interrupted import: %v", err)
			}
			st, err := loadState(file)
			if err != nil || st.Line == 0 || st.Line >= n {
				t.Fatalf("state after interruption: %+v %v", st, err)
			}
			out, errs, err := runImport(t.Context(), env, file, "--batch", "500")
			if err != nil {
				t.Fatalf("resumed: %v\n%s", err, errs)
			}
			if !strings.Contains(out, fmt.Sprintf("resumed after line %d", st.Line)) || !strings.Contains(out, fmt.Sprintf("%d created, 0 updated (rebound to another MXID), 0 unchanged", n)) {
				t.Fatalf("resumed summary: %s", out)
			}
			s := open()
			list, err := s.ListBindings(context.Background(), "email", "", n+1)
			if err != nil || len(list) != n {
				t.Fatalf("%d bindings after resume, want %d (%v)", len(list), n, err)
			}
		})
	}
}
