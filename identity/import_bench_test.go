package identity_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"testing"

	"github.com/ozo-platform/ozo-identity/audit"
	"github.com/ozo-platform/ozo-identity/identity"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore/dbtest"
)

// BenchmarkImportBindings measures the bulk import (CLI and batch endpoint) per binding: new
// bindings in batches of 5,000 on a growing table, and the same batches again (all unchanged).
// It reports bindings/s; the target is 20,000/s on both engines.
func BenchmarkImportBindings(b *testing.B) {
	engines := dbtest.Engines
	if e := os.Getenv("OZO_TEST_BENCH_ENGINE"); e != "" {
		engines = []sqlstore.Engine{sqlstore.Engine(e)}
	}
	const batch = 5000
	for _, engine := range engines {
		b.Run(string(engine), func(b *testing.B) {
			db := dbtest.Open(b, engine)
			store := sqlstore.New(db)
			// Imports are audited: a store without the chain key refuses them.
			chain, err := audit.NewChain(bytes.Repeat([]byte{7}, 32))
			if err != nil {
				b.Fatal(err)
			}
			store.SetAuditChain(chain)
			ctx := context.Background()
			signer, err := identity.LoadSigner(ctx, store, "ozo.example.nl", "")
			if err != nil {
				b.Fatal(err)
			}
			pepper, _ := identity.LoadPepper(ctx, store)
			svc := identity.New(store, signer, pepper, nil, nil, identity.Options{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
			entries := func(round int) []identity.ImportEntry {
				out := make([]identity.ImportEntry, batch)
				for i := range out {
					n := round*batch + i
					out[i] = identity.ImportEntry{Medium: "email", Address: fmt.Sprintf("user%08d@example.org", n), MXID: fmt.Sprintf("@u%d:hs.example.nl", n)}
				}
				return out
			}
			run := func(b *testing.B, want func(identity.ImportReport) bool, round func(i int) int) {
				b.ReportAllocs()
				for i := 0; b.Loop(); i++ {
					b.StopTimer()
					e := entries(round(i))
					b.StartTimer()
					rep, err := svc.ImportBindings(ctx, e, "import", false)
					if err != nil {
						b.Fatal(err)
					}
					if !want(rep) {
						b.Fatalf("report %+v", rep)
					}
				}
				b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "bindings/s")
			}
			created := 0
			b.Run("new", func(b *testing.B) {
				run(b, func(r identity.ImportReport) bool { return r.Created == batch }, func(i int) int { created++; return created })
			})
			b.Run("unchanged", func(b *testing.B) {
				run(b, func(r identity.ImportReport) bool { return r.Unchanged == batch }, func(i int) int { return 1 + i%created })
			})
		})
	}
}
