package mcsd_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/lookup/mcsd"
	"github.com/ozo-platform/ozo-identity/lookup/mcsd/mcsdtest"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore/dbtest"
	"github.com/ozo-platform/ozo-identity/threepid"
)

// Two runs that overlap despite the lease (it expired under a stalled holder, or a bug) must
// not destroy each other's work: each run's sweep removes only what its own snapshot proves
// gone. Both runs bypass the lease here; five rounds of full and incremental runs at once.
func TestOverlappingRunsLoseNothing(t *testing.T) {
	for _, engine := range dbtest.Engines {
		t.Run(string(engine), func(t *testing.T) {
			db := dbtest.Open(t, engine)
			srv := mcsdtest.Start(t, mcsdtest.Options{PageSize: 4})
			idx := mcsd.NewIndex(db)
			syncer := func(full bool) *mcsd.Syncer {
				return mcsd.NewSyncer(idx, mcsd.Options{LRZA: srv.LRZAURL(), Client: srv.Client(), Concurrency: 3,
					RequestTimeout: 5 * time.Second, PageSize: 3, IgnoreBackoff: true, Full: full, MaxDeleteMin: 1})
			}
			ctx := context.Background()
			if _, err := syncer(false).SyncAllUnleased(ctx); err != nil {
				t.Fatal(err)
			}
			uzis := []string{"900012345", "900012346", "900023456", "900023457", "900023458", "900034567", "900034568"}
			var tps []threepid.ThreePID
			for _, u := range uzis {
				tps = append(tps, threepid.ThreePID{Medium: "uzi", Address: u})
			}
			tps = append(tps, threepid.ThreePID{Medium: "ura", Address: "17004512"})
			want, err := idx.Resolve(ctx, tps)
			if err != nil || len(want) != len(tps) {
				t.Fatalf("after the first sync: %v, %d of %d resolve", err, len(want), len(tps))
			}
			counts := func() map[string]int {
				st, err := idx.Status(ctx)
				if err != nil {
					t.Fatal(err)
				}
				out := map[string]int{}
				for _, s := range st {
					for typ, n := range s.Counts {
						out[s.BaseURL+" "+typ] = n
					}
				}
				return out
			}
			before := counts()
			for round := range 5 {
				var wg sync.WaitGroup
				for i := range 2 {
					wg.Add(1)
					go func() {
						defer wg.Done()
						// Even rounds: two full re-reads; odd rounds: a full and an incremental run.
						reps, err := syncer(i == 0 || round%2 == 0).SyncAllUnleased(ctx)
						if err != nil {
							t.Errorf("round %d run %d: %v", round, i, err)
						}
						for _, r := range reps {
							if r.Err != nil {
								t.Logf("round %d run %d: %s: %v", round, i, r.Directory, r.Err)
							}
						}
					}()
				}
				wg.Wait()
				got, err := idx.Resolve(ctx, tps)
				if err != nil {
					t.Fatal(err)
				}
				for _, tp := range tps {
					if got[tp] != want[tp] {
						t.Errorf("round %d: %s:%s resolves to %q, want %q", round, tp.Medium, tp.Address, got[tp], want[tp])
					}
				}
				for k, n := range counts() {
					if n != before[k] {
						t.Errorf("round %d: %s: %d resources, had %d", round, k, n, before[k])
					}
				}
				// And the next ordinary sync still sees the directories' changes: no watermark
				// ran ahead of what was stored.
				if _, err := syncer(false).SyncAllUnleased(ctx); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}
