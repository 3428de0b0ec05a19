package identity_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/identity"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore/dbtest"
	"github.com/ozo-platform/ozo-identity/threepid"
)

// seed inserts n email bindings with their lookup hashes in large transactions; going through
// Bind one by one would take minutes at a million.
func seed(b *testing.B, db *sqlstore.DB, n int, pepper string) {
	ctx := context.Background()
	now := time.Now().UnixMilli()
	const chunk = 5000
	for start := 0; start < n; start += chunk {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			b.Fatal(err)
		}
		bs, _ := tx.PrepareContext(ctx, `INSERT INTO bindings (medium, address, mxid, created_at, not_before, not_after, source) VALUES ($1, $2, $3, $4, $4, $4, 'bind')`)
		hs, _ := tx.PrepareContext(ctx, `INSERT INTO binding_hashes (hash, medium, address) VALUES ($1, $2, $3)`)
		for i := start; i < min(start+chunk, n); i++ {
			addr := fmt.Sprintf("user%07d@example.org", i)
			if _, err := bs.ExecContext(ctx, "email", addr, fmt.Sprintf("@u%d:hs.example.nl", i), now); err != nil {
				b.Fatal(err)
			}
			if _, err := hs.ExecContext(ctx, threepid.LookupHash(addr, "email", pepper), "email", addr); err != nil {
				b.Fatal(err)
			}
		}
		bs.Close()
		hs.Close()
		if err := tx.Commit(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLookup measures v2 hashed lookup per address against the number of stored bindings,
// answered by the database and by the in-memory index. Half of each batch is bound, half is
// not. The 1,000,000 case is skipped with -short.
func BenchmarkLookup(b *testing.B) {
	sizes := []int{10_000, 1_000_000}
	engines := dbtest.Engines
	if e := os.Getenv("OZO_TEST_BENCH_ENGINE"); e != "" {
		engines = []sqlstore.Engine{sqlstore.Engine(e)}
	}
	for _, engine := range engines {
		for _, n := range sizes {
			if testing.Short() && n > 10_000 {
				continue
			}
			b.Run(fmt.Sprintf("%s/bindings=%d", engine, n), func(b *testing.B) {
				db := dbtest.Open(b, engine)
				store := sqlstore.New(db)
				ctx := context.Background()
				signer, err := identity.LoadSigner(ctx, store, "ozo.example.nl", "")
				if err != nil {
					b.Fatal(err)
				}
				pepper, _ := identity.LoadPepper(ctx, store)
				seed(b, db, n, pepper)
				if db.Engine == sqlstore.Postgres {
					db.ExecContext(ctx, `ANALYZE`)
				}
				log := slog.New(slog.NewTextHandler(io.Discard, nil))
				svc := identity.New(store, signer, pepper, nil, nil, identity.Options{}, log)
				// The in-memory index, as app wires it: loaded once, caught up in the background.
				mirrored := identity.New(store, signer, pepper, nil, nil, identity.Options{}, log)
				mirror := identity.NewMirror(store, identity.MirrorOptions{}, log)
				mirrored.UseMirror(mirror)
				mirrored.SetResolver(mirror)
				if err := mirror.Load(ctx); err != nil {
					b.Fatal(err)
				}
				runCtx, stop := context.WithCancel(ctx)
				defer stop()
				go mirror.Run(runCtx)
				for _, variant := range []struct {
					name string
					svc  *identity.Service
				}{{"database", svc}, {"memory", mirrored}} {
					for _, batch := range []int{1, 100, 1000} {
						svc := variant.svc
						b.Run(fmt.Sprintf("index=%s/batch=%d", variant.name, batch), func(b *testing.B) {
							addrs := make([]string, batch)
							for i := range addrs {
								if i%2 == 0 {
									addrs[i] = threepid.LookupHash(fmt.Sprintf("user%07d@example.org", (i*7919)%n), "email", pepper)
								} else {
									addrs[i] = threepid.LookupHash(fmt.Sprintf("nobody%d@example.org", i), "email", pepper)
								}
							}
							b.ResetTimer()
							for b.Loop() {
								got, err := svc.Lookup(ctx, "sha256", pepper, addrs)
								if err != nil {
									b.Fatal(err)
								}
								if len(got) != (batch+1)/2 {
									b.Fatalf("found %d of %d", len(got), (batch+1)/2)
								}
							}
							b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch), "ns/address")
						})
					}
				}
			})
		}
	}
}

// BenchmarkMirrorLoad is a replica's start, or its reload after a pepper rotation: every lookup
// hash read from one database snapshot into the in-memory index. Set OZO_TEST_BENCH_ENGINE to
// run one engine; -short skips 1,000,000.
func BenchmarkMirrorLoad(b *testing.B) {
	engines := dbtest.Engines
	if e := os.Getenv("OZO_TEST_BENCH_ENGINE"); e != "" {
		engines = []sqlstore.Engine{sqlstore.Engine(e)}
	}
	for _, engine := range engines {
		for _, n := range []int{10_000, 1_000_000} {
			if testing.Short() && n > 10_000 {
				continue
			}
			b.Run(fmt.Sprintf("%s/bindings=%d", engine, n), func(b *testing.B) {
				db := dbtest.Open(b, engine)
				store := sqlstore.New(db)
				ctx := context.Background()
				pepper, _ := identity.LoadPepper(ctx, store)
				seed(b, db, n, pepper)
				log := slog.New(slog.NewTextHandler(io.Discard, nil))
				var m *identity.Mirror
				for b.Loop() {
					m = identity.NewMirror(store, identity.MirrorOptions{}, log)
					if err := m.Load(ctx); err != nil {
						b.Fatal(err)
					}
				}
				st := m.Stats()
				if st.Hashes != n {
					b.Fatalf("%d hashes loaded, want %d", st.Hashes, n)
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/binding")
				b.ReportMetric(float64(st.Bytes)/float64(n), "index-B/binding")
			})
		}
	}
}
