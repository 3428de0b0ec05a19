package audit_test

import (
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/audit"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore/dbtest"
)

// TestAggregatorCountsConcurrentLookups: lookups from many goroutines become one record per
// caller; counts a failed write could not store are kept for the next flush, not lost.
func TestAggregatorCountsConcurrentLookups(t *testing.T) {
	store := sqlstore.New(dbtest.Open(t, sqlstore.SQLite))
	agg := audit.NewAggregator(store, time.Minute, slog.New(slog.NewTextHandler(io.Discard, nil)))
	alice := &audit.Scope{Actor: audit.Agent{Kind: audit.AgentUser, ID: "@alice:hs"}, Source: "192.0.2.1", Resource: "POST /lookup"}
	bob := &audit.Scope{Actor: audit.Agent{Kind: audit.AgentUser, ID: "@bob:hs"}, Source: "192.0.2.2", Resource: "POST /lookup"}
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() {
			for range 100 {
				if i%2 == 0 {
					agg.Lookup(alice, []string{"sha256"}, 10, 1)
				} else {
					agg.Lookup(bob, []string{"email"}, 1, 0)
				}
			}
		})
	}
	wg.Wait()
	// No chain key yet: the store refuses, and the counts stay.
	if err := agg.Flush(t.Context()); err == nil {
		t.Fatal("flush without a chain key succeeded")
	}
	agg.Lookup(alice, []string{"uzi"}, 5, 5)
	key := make([]byte, 32)
	rand.Read(key)
	chain, _ := audit.NewChain(key)
	store.SetAuditChain(chain)
	if err := agg.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	recs, _ := store.ListAudit(t.Context(), time.Time{}, 0, 100)
	got := map[string]audit.Record{}
	for _, r := range recs {
		got[r.Actor.ID] = r
	}
	if len(recs) != 2 || got["@alice:hs"].Count != 8*100*10+5 || got["@alice:hs"].Found != 8*100+5 ||
		got["@alice:hs"].Detail != "media=sha256,uzi interval=1m0s" || got["@bob:hs"].Count != 800 || got["@bob:hs"].Source != "192.0.2.2" {
		t.Fatalf("records %+v", recs)
	}
	// Nothing is written twice.
	if err := agg.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	if recs, _ := store.ListAudit(t.Context(), time.Time{}, 0, 100); len(recs) != 2 {
		t.Fatalf("%d records after an empty flush", len(recs))
	}
}

// TestRefusedCountedPerAction: refused attempts of different kinds from one source are counted
// apart, so a count never carries the action of another kind of attempt.
func TestRefusedCountedPerAction(t *testing.T) {
	store := sqlstore.New(dbtest.Open(t, sqlstore.SQLite))
	key := make([]byte, 32)
	rand.Read(key)
	chain, _ := audit.NewChain(key)
	store.SetAuditChain(chain)
	agg := audit.NewAggregator(store, time.Minute, slog.New(slog.NewTextHandler(io.Discard, nil)))
	anon := audit.Agent{Kind: audit.AgentAnonymous}
	for i := range 5 {
		for _, a := range []audit.Action{audit.ActionLoginFailure, audit.ActionAdminCall} {
			if err := agg.Refused(t.Context(), audit.Record{Action: a, Outcome: audit.OutcomeRefused, Actor: anon, Source: "192.0.2.9",
				Detail: fmt.Sprint("attempt ", i)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := agg.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	recs, _ := store.ListAudit(t.Context(), time.Time{}, 0, 100)
	counts := map[audit.Action][]int64{}
	for _, r := range recs {
		counts[r.Action] = append(counts[r.Action], r.Count)
	}
	if len(recs) != 4 || fmt.Sprint(counts[audit.ActionLoginFailure]) != "[1 4]" || fmt.Sprint(counts[audit.ActionAdminCall]) != "[1 4]" {
		t.Fatalf("records %+v", recs)
	}
}
