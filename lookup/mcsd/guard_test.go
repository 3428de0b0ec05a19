package mcsd_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/lookup/mcsd"
	"github.com/ozo-platform/ozo-identity/lookup/mcsd/mcsdtest"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
	"github.com/ozo-platform/ozo-identity/threepid"
)

// A second sync of the same database refuses while the lease is held, waits with Wait, and
// takes over from a holder that died once its lease expired.
func TestSyncLease(t *testing.T) {
	forEngines(t, func(t *testing.T, engine sqlstore.Engine) {
		e := newEnv(t, engine)
		ctx := context.Background()
		other, err := e.db.AcquireLease(ctx, mcsd.LeaseName, "replica-2/pid-7", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		reps, err := e.syncer().SyncAll(ctx)
		var held *sqlstore.LeaseHeldError
		if !errors.Is(err, mcsd.ErrSyncRunning) || !errors.As(err, &held) || held.Holder != "replica-2/pid-7" || len(reps) != 0 {
			t.Fatalf("sync while another holds the lease: %v, %d reports", err, len(reps))
		}
		if e.srv.Requests() != nil {
			t.Fatalf("the refused sync fetched %v", e.srv.Requests())
		}
		// Waiting: the sync starts once the holder releases.
		go func() {
			time.Sleep(300 * time.Millisecond)
			other.Release(ctx)
		}()
		start := time.Now()
		if _, err := e.syncer(func(o *mcsd.Options) { o.Wait = true }).SyncAll(ctx); err != nil {
			t.Fatal(err)
		}
		if time.Since(start) < 250*time.Millisecond {
			t.Errorf("the waiting sync did not wait (%v)", time.Since(start))
		}
		if got := e.resolve("uzi", "900023457"); got == "" {
			t.Fatal("the waiting sync did not sync")
		}
		// A holder that died: its lease expires and the next sync takes it without waiting long.
		if _, err := e.db.AcquireLease(ctx, mcsd.LeaseName, "crashed", 400*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		start = time.Now()
		if _, err := e.syncer(func(o *mcsd.Options) { o.Wait = true }).SyncAll(ctx); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("took over a dead holder's lease after %v", d)
		}
		// The lease is released after a sync: the next one gets it at once.
		if _, err := e.syncer().SyncAll(ctx); err != nil {
			t.Fatalf("lease not released: %v", err)
		}
	})
}

func tps(medium, address string) []threepid.ThreePID {
	return []threepid.ThreePID{{Medium: medium, Address: address}}
}

func dirID(base string) string {
	sum := sha256.Sum256([]byte(base))
	return hex.EncodeToString(sum[:8])
}

// A sync that would delete most of a directory's practitioners, or most of the LRZA's
// organisations, stops for that directory and keeps everything; AllowMassDelete lets it through.
func TestMassDeleteGuard(t *testing.T) {
	forEngines(t, func(t *testing.T, engine sqlstore.Engine) {
		e := newEnv(t, engine)
		guarded := func(o *mcsd.Options) { o.MaxDeleteMin = 1 }
		e.sync(e.syncer(guarded))
		hospitalUZIs := map[string]string{"900012345": "@m.vandenberg:" + e.hs("hs1"), "900012346": "@j.jansen:" + e.hs("hs1")}
		gpUZI, gpMXID := "900023457", "@e.mulder:"+e.hs("hs2")
		marks := status(t, e, gp).Watermarks

		// The GP's directory deletes all its practitioners and roles (history tombstones).
		d := e.srv.Directory(gp)
		for _, id := range []string{"p-hp-dekker", "p-hp-mulder", "p-hp-degroot"} {
			d.Delete("Practitioner", id)
		}
		for _, id := range []string{"r-hp-dekker", "r-hp-mulder", "r-hp-degroot"} {
			d.Delete("PractitionerRole", id)
		}
		// The hospital's server comes back empty-handed from a restore: a full read lacks most.
		h := e.srv.Directory(hospital)
		for _, id := range []string{"p-zh-vandenberg", "p-zh-jansen", "p-zh-bakker", "p-zh-visser", "p-zh-smit"} {
			h.Purge("Practitioner", id)
		}
		if err := e.idx.ResetDirectory(context.Background(), e.srv.URL(hospital)); err != nil {
			t.Fatal(err)
		}
		reps := e.sync(e.syncer(guarded))
		for _, name := range []string{gp, hospital} {
			var md *mcsd.MassDeleteError
			if !errors.As(reps[name].Err, &md) || md.Delete <= md.Of/2 {
				t.Fatalf("%s: %v, want a mass-delete refusal", name, reps[name].Err)
			}
		}
		if reps[homecare].Err != nil || reps["lrza"].Err != nil {
			t.Fatalf("others: %v %v", reps[homecare].Err, reps["lrza"].Err)
		}
		if got := e.resolve("uzi", gpUZI); got != gpMXID {
			t.Errorf("guarded GP lost %s: %q", gpUZI, got)
		}
		for uzi, want := range hospitalUZIs {
			if got := e.resolve("uzi", uzi); got != want {
				t.Errorf("guarded hospital lost %s: %q", uzi, got)
			}
		}
		st := status(t, e, gp)
		if st.Counts["Practitioner"] != 3 || st.Watermarks["Practitioner"] != marks["Practitioner"] || st.Failures != 1 {
			t.Errorf("guarded GP: counts %v, watermark %q (was %q), failures %d", st.Counts, st.Watermarks["Practitioner"], marks["Practitioner"], st.Failures)
		}
		// The next scheduled sync refuses again: the deletions were not lost on the way.
		reps = e.sync(e.syncer(guarded, func(o *mcsd.Options) { o.IgnoreBackoff = true }))
		if !errors.As(reps[gp].Err, new(*mcsd.MassDeleteError)) {
			t.Fatalf("second sync of the GP: %v", reps[gp].Err)
		}
		// The operator checked: the deletions are real.
		reps = e.sync(e.syncer(guarded, func(o *mcsd.Options) { o.IgnoreBackoff, o.AllowMassDelete = true, true }))
		if reps[gp].Err != nil || reps[gp].Deleted != 6 || reps[hospital].Err != nil || reps[hospital].Deleted < 5 {
			t.Fatalf("allowed: GP %v deleted %d, hospital %v deleted %d", reps[gp].Err, reps[gp].Deleted, reps[hospital].Err, reps[hospital].Deleted)
		}
		if got := e.resolve("uzi", gpUZI); got != "" {
			t.Errorf("deleted practitioner still resolves: %q", got)
		}

		// The LRZA loses its organisations: its sync stops, and no provider directory is dropped.
		l := e.srv.Directory("lrza")
		for _, id := range []string{"lrza-org-ijsselvallei", "lrza-org-de-linde", "lrza-org-de-vijzel", "lrza-org-het-anker"} {
			l.Delete("Organization", id)
		}
		reps = e.sync(e.syncer(guarded))
		if !errors.As(reps["lrza"].Err, new(*mcsd.MassDeleteError)) {
			t.Fatalf("LRZA: %v", reps["lrza"].Err)
		}
		if got := e.resolve("uzi", "900034567"); got != "@f.kok:"+e.hs("hs1") {
			t.Errorf("home care lost after the LRZA's mass delete was refused: %q", got)
		}
		if !status(t, e, homecare).Active {
			t.Error("home care deactivated")
		}
	})
}

// The index lost a directory's rows while its watermarks stayed (a bad restore, a bug): an
// incremental sync cannot see it, a full re-read recovers it, and a directory that was intact
// resolves at every moment of the re-read.
func TestFullRecoversCorruptedIndex(t *testing.T) {
	forEngines(t, func(t *testing.T, engine sqlstore.Engine) {
		e := newEnv(t, engine)
		ctx := context.Background()
		e.sync(e.syncer())
		gpUZI, gpMXID := "900023457", "@e.mulder:"+e.hs("hs2")
		hospUZI, hospMXID := "900012345", "@m.vandenberg:"+e.hs("hs1")
		id := dirID(e.srv.URL(gp))
		for _, tbl := range []string{"mcsd_resources", "mcsd_refs", "mcsd_identifiers", "mcsd_addresses", "mcsd_hashes", "mcsd_role_uzis"} {
			if _, err := e.db.ExecContext(ctx, `DELETE FROM `+tbl+` WHERE dir = $1`, id); err != nil {
				t.Fatal(err)
			}
		}
		e.sync(e.syncer())
		if got := e.resolve("uzi", gpUZI); got != "" {
			t.Fatalf("test premise: the corrupted directory resolves %q after an incremental sync", got)
		}
		// The status flags it: what counted after the last sync is gone.
		if st := status(t, e, gp); !strings.Contains(st.Collapsed, "rows were lost") {
			t.Errorf("corrupted directory not flagged: %+v", st)
		}
		if st := status(t, e, hospital); st.Collapsed != "" {
			t.Errorf("intact directory flagged: %q", st.Collapsed)
		}

		// Slow pages make the re-read take a while; a reader checks the intact hospital throughout.
		e.srv.Directory(hospital).SetFailure(mcsdtest.Failure{Delay: 50 * time.Millisecond})
		var checks, misses atomic.Int64
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				select {
				case <-stop:
					return
				default:
				}
				got, err := e.idx.Resolve(ctx, tps("uzi", hospUZI))
				checks.Add(1)
				if err != nil || got[tps("uzi", hospUZI)[0]] != hospMXID {
					misses.Add(1)
				}
				time.Sleep(2 * time.Millisecond)
			}
		}()
		reps := e.sync(e.syncer(func(o *mcsd.Options) { o.Full, o.RequestTimeout = true, 5*time.Second }))
		close(stop)
		<-done
		for name, r := range reps {
			if r.Err != nil || r.Skipped != "" {
				t.Errorf("%s: %v %s", name, r.Err, r.Skipped)
			}
		}
		t.Logf("%d lookups during the re-read", checks.Load())
		if checks.Load() < 20 || misses.Load() != 0 {
			t.Errorf("during the re-read the hospital missed %d of %d lookups", misses.Load(), checks.Load())
		}
		if got := e.resolve("uzi", gpUZI); got != gpMXID {
			t.Errorf("corrupted directory not recovered: %q", got)
		}
		if got := e.resolve("uzi", hospUZI); got != hospMXID {
			t.Errorf("intact directory after the re-read: %q", got)
		}
		if st := status(t, e, gp); st.Collapsed != "" {
			t.Errorf("recovered directory still flagged: %q", st.Collapsed)
		}
	})
}
