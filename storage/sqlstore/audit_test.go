package sqlstore_test

import (
	"context"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/audit"
	"github.com/ozo-platform/ozo-identity/identity"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore/dbtest"
	"github.com/ozo-platform/ozo-identity/threepid"
)

func newAuditStore(t *testing.T, engine sqlstore.Engine) (*sqlstore.Store, *sqlstore.DB, *audit.Chain) {
	t.Helper()
	db := dbtest.Open(t, engine)
	s := sqlstore.New(db)
	key := make([]byte, 32)
	rand.Read(key)
	chain, err := audit.NewChain(key)
	if err != nil {
		t.Fatal(err)
	}
	s.SetAuditChain(chain)
	return s, db, chain
}

func adminRecord(i int) audit.Record {
	return audit.Record{Action: audit.ActionAdminCall, Outcome: audit.OutcomeSuccess, Actor: audit.Agent{Kind: audit.AgentAdmin},
		Resource: fmt.Sprintf("GET /_ozo/admin/v1/bindings?n=%d", i), Source: "192.0.2.1"}
}

func verify(t *testing.T, s *sqlstore.Store, chain *audit.Chain, cp *audit.Checkpoint) (audit.Report, error) {
	t.Helper()
	head, err := s.AuditHead(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	v := audit.NewVerifier(chain, head, cp)
	if err := s.ScanAudit(t.Context(), head.PrunedSeq, head.Seq, v.Add); err != nil {
		return audit.Report{}, err
	}
	return v.Finish()
}

func checkpoint(t *testing.T, s *sqlstore.Store) *audit.Checkpoint {
	t.Helper()
	head, err := s.AuditHead(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	cp := &audit.Checkpoint{Server: "id.test", Seq: head.Seq, MAC: head.MAC, Created: time.Now(), KeyID: "ed25519:0"}
	cp.Sign(func(m []byte) []byte { return ed25519.Sign(priv, m) },
		base64.RawStdEncoding.EncodeToString(priv.Public().(ed25519.PublicKey)))
	if err := cp.VerifySignature(cp.PublicKey); err != nil {
		t.Fatal(err)
	}
	return cp
}

func wantProblem(t *testing.T, err error, kind string, seq int64) {
	t.Helper()
	var p *audit.Problem
	if !errors.As(err, &p) || p.Kind != kind || p.Seq != seq {
		t.Fatalf("verify: got %v, want %s at %d", err, kind, seq)
	}
}

// TestAuditRewriteAndRechainDetected is the insider attack of issue 13: change one record and
// recompute every later link (with any key but the real one, which is not in the database).
func TestAuditRewriteAndRechainDetected(t *testing.T) {
	for _, engine := range dbtest.Engines {
		t.Run(string(engine), func(t *testing.T) {
			s, db, chain := newAuditStore(t, engine)
			ctx := t.Context()
			for i := range 120 {
				if err := s.AppendAudit(ctx, adminRecord(i)); err != nil {
					t.Fatal(err)
				}
			}
			cp := checkpoint(t, s)
			if rep, err := verify(t, s, chain, cp); err != nil || rep.Records != 120 || rep.LastSeq != 120 {
				t.Fatalf("intact chain: %+v %v", rep, err)
			}
			// The insider rewrites record 40 and re-chains 40..120 with a key of their own,
			// moving the head too, as the old unkeyed SHA-256 chain allowed.
			forged, _ := audit.NewChain([]byte(strings.Repeat("k", 32)))
			var prev string
			if err := db.QueryRowContext(ctx, `SELECT mac FROM audit_records WHERE seq = 39`).Scan(&prev); err != nil {
				t.Fatal(err)
			}
			var recs []audit.Record
			s.ScanAudit(ctx, 39, 120, func(r audit.Record) error { recs = append(recs, r); return nil })
			recs[0].Address = "999999999"
			for _, r := range recs {
				forged.Seal(&r, r.Seq, prev)
				if _, err := db.ExecContext(ctx, `UPDATE audit_records SET address = $1, prev_mac = $2, mac = $3 WHERE seq = $4`,
					r.Address, r.PrevMAC, r.MAC, r.Seq); err != nil {
					t.Fatal(err)
				}
				prev = r.MAC
			}
			db.ExecContext(ctx, `UPDATE audit_head SET mac = $1`, prev)
			_, err := verify(t, s, chain, cp)
			wantProblem(t, err, "rewritten", 40)
			// Without a checkpoint the key alone finds it.
			_, err = verify(t, s, chain, nil)
			wantProblem(t, err, "rewritten", 40)
			// The old unkeyed hash is no help either: a plain SHA-256 of the fields is not the MAC.
			h := sha256.Sum256([]byte(recs[0].Address))
			if hmac.Equal(h[:], []byte(recs[0].MAC)) {
				t.Fatal("unreachable")
			}
		})
	}
}

// TestAuditTruncationDetected: deleting the newest 50 records, with or without moving the head
// back, is a truncation since the checkpoint; a record deleted in the middle is missing.
func TestAuditTruncationDetected(t *testing.T) {
	for _, engine := range dbtest.Engines {
		t.Run(string(engine), func(t *testing.T) {
			s, db, chain := newAuditStore(t, engine)
			ctx := t.Context()
			for i := range 100 {
				if err := s.AppendAudit(ctx, adminRecord(i)); err != nil {
					t.Fatal(err)
				}
			}
			cp := checkpoint(t, s)
			if _, err := db.ExecContext(ctx, `DELETE FROM audit_records WHERE seq > 50`); err != nil {
				t.Fatal(err)
			}
			_, err := verify(t, s, chain, cp)
			wantProblem(t, err, "truncated", 51)
			// The insider also moves the head back to record 50: the checkpoint still says 100.
			var mac string
			db.QueryRowContext(ctx, `SELECT mac FROM audit_records WHERE seq = 50`).Scan(&mac)
			db.ExecContext(ctx, `UPDATE audit_head SET seq = 50, mac = $1`, mac)
			_, err = verify(t, s, chain, cp)
			wantProblem(t, err, "truncated", 51)
			// A record removed in the middle.
			db.ExecContext(ctx, `DELETE FROM audit_records WHERE seq = 20`)
			_, err = verify(t, s, chain, cp)
			wantProblem(t, err, "missing", 20)
		})
	}
}

// TestAuditConcurrentAppendsLoseNothing: appends from many connections queue on the chain head
// instead of failing (before: "append audit: too much contention").
func TestAuditConcurrentAppendsLoseNothing(t *testing.T) {
	for _, engine := range dbtest.Engines {
		t.Run(string(engine), func(t *testing.T) {
			s, _, chain := newAuditStore(t, engine)
			const clients, each = 8, 100
			var wg sync.WaitGroup
			var failed sync.Map
			for c := range clients {
				wg.Go(func() {
					for i := range each {
						if err := s.AppendAudit(context.Background(), adminRecord(c*each+i)); err != nil {
							failed.Store(c*each+i, err)
						}
					}
				})
			}
			wg.Wait()
			failed.Range(func(k, v any) bool { t.Errorf("append %v: %v", k, v); return true })
			rep, err := verify(t, s, chain, nil)
			if err != nil || rep.Records != clients*each {
				t.Fatalf("%+v %v", rep, err)
			}
		})
	}
}

// TestAuditAppendNeverDropsARecord: a batch of records whose place in the chain is taken (a row
// left there by hand) fails whole; SQLite's multi-row insert ignores conflicts to spare its
// statement journal, so the count of rows stored is what catches it.
func TestAuditAppendNeverDropsARecord(t *testing.T) {
	for _, engine := range dbtest.Engines {
		t.Run(string(engine), func(t *testing.T) {
			s, db, chain := newAuditStore(t, engine)
			if err := s.AppendAudit(t.Context(), adminRecord(0)); err != nil {
				t.Fatal(err)
			}
			head, err := s.AuditHead(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if _, err := db.ExecContext(t.Context(), `INSERT INTO audit_records (seq, at, action, outcome, actor_kind, actor,
				on_behalf_of, medium, address, resource, source, request_id, detail, count, found, prev_mac, mac)
				VALUES ($1, 0, 'stray', 'x', 'x', '', '', '', '', '', '', '', '', 0, 0, '', '')`, head.Seq+700); err != nil {
				t.Fatal(err)
			}
			var recs []audit.Record
			for i := range 1200 { // three multi-row statements on SQLite; the stray row is in the second
				recs = append(recs, adminRecord(i+1))
			}
			if err := s.AppendAudit(t.Context(), recs...); err == nil {
				t.Fatal("an append over a taken sequence number succeeded")
			}
			after, err := s.AuditHead(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if after.Seq != head.Seq || after.MAC != head.MAC {
				t.Fatalf("head moved from %d to %d", head.Seq, after.Seq)
			}
			var n int
			if err := db.QueryRowContext(t.Context(), `SELECT COUNT(*) FROM audit_records`).Scan(&n); err != nil || n != 2 {
				t.Fatalf("%d records stored (want the first and the stray one): %v", n, err)
			}
			if rep, err := verify(t, s, chain, nil); err != nil || rep.Records != 1 {
				t.Fatalf("%+v %v", rep, err)
			}
		})
	}
}

// TestAuditEscapesHostileText: NUL and invalid UTF-8 (which PostgreSQL refuses in text) are
// stored escaped; the record is never dropped, and long values are cut.
func TestAuditEscapesHostileText(t *testing.T) {
	for _, engine := range dbtest.Engines {
		t.Run(string(engine), func(t *testing.T) {
			s, _, chain := newAuditStore(t, engine)
			rec := adminRecord(0)
			rec.Outcome = audit.OutcomeRefused
			rec.Resource = "GET /_ozo/admin/v1/bindings\x00\xff\xfe\\x00" + strings.Repeat("A", 30000)
			rec.Actor.ID = "wrong\x00token"
			if err := s.AppendAudit(t.Context(), rec); err != nil {
				t.Fatal(err)
			}
			recs, err := s.ListAudit(t.Context(), time.Time{}, 0, 10)
			if err != nil || len(recs) != 1 {
				t.Fatalf("%v %v", recs, err)
			}
			got := recs[0]
			if !strings.HasPrefix(got.Resource, `GET /_ozo/admin/v1/bindings\u0000\xff\xfe\\x00AAA`) || len(got.Resource) > 1024 ||
				!strings.HasSuffix(got.Resource, "…") || got.Actor.ID != `wrong\u0000token` {
				t.Fatalf("stored %q (%d bytes), actor %q", got.Resource[:60], len(got.Resource), got.Actor.ID)
			}
			if _, err := verify(t, s, chain, nil); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestAuditRetentionKeepsUncheckpointed: only records older than the cut-off and covered by
// the checkpoint go, and the rest still verifies from the pruned head.
func TestAuditRetentionKeepsUncheckpointed(t *testing.T) {
	for _, engine := range dbtest.Engines {
		t.Run(string(engine), func(t *testing.T) {
			s, _, chain := newAuditStore(t, engine)
			ctx := t.Context()
			old := time.Now().Add(-48 * time.Hour)
			for i := range 30 {
				r := adminRecord(i)
				r.At = old
				if err := s.AppendAudit(ctx, r); err != nil {
					t.Fatal(err)
				}
			}
			// Nothing exported covers records past 10.
			if n, err := s.PruneAudit(ctx, time.Now().Add(-24*time.Hour), 10); err != nil || n != 10 {
				t.Fatalf("pruned %d: %v", n, err)
			}
			for i := range 5 {
				if err := s.AppendAudit(ctx, adminRecord(100+i)); err != nil {
					t.Fatal(err)
				}
			}
			// Covered up to 35, but only the old ones go.
			if n, err := s.PruneAudit(ctx, time.Now().Add(-24*time.Hour), 35); err != nil || n != 20 {
				t.Fatalf("pruned %d: %v", n, err)
			}
			rep, err := verify(t, s, chain, nil)
			if err != nil || rep.Records != 5 || rep.FirstSeq != 31 || rep.Pruned != 30 {
				t.Fatalf("%+v %v", rep, err)
			}
		})
	}
}

// TestAuditPushQueue: batches are queued once, claimed by one worker at a time, retried after
// a failure and gone when done.
func TestAuditPushQueue(t *testing.T) {
	for _, engine := range dbtest.Engines {
		t.Run(string(engine), func(t *testing.T) {
			s, _, _ := newAuditStore(t, engine)
			ctx := t.Context()
			for i := range 25 {
				s.AppendAudit(ctx, adminRecord(i))
			}
			now := time.Now()
			if n, err := s.EnqueueAuditPush(ctx, 10, now); err != nil || n != 3 {
				t.Fatalf("queued %d: %v", n, err)
			}
			if n, _ := s.EnqueueAuditPush(ctx, 10, now); n != 0 {
				t.Fatalf("queued again: %d", n)
			}
			b, ok, err := s.ClaimAuditPush(ctx, now, now.Add(time.Minute))
			if err != nil || !ok || b.ID != 1 || b.LastSeq != 10 {
				t.Fatalf("claim: %+v %v %v", b, ok, err)
			}
			b2, ok, _ := s.ClaimAuditPush(ctx, now, now.Add(time.Minute))
			if !ok || b2.ID != 11 {
				t.Fatalf("second claim: %+v", b2)
			}
			s.AuditPushFailed(ctx, b.ID, now.Add(-time.Second), "503")
			s.AuditPushDone(ctx, b2.ID)
			b3, ok, _ := s.ClaimAuditPush(ctx, now, now.Add(time.Minute))
			if !ok || b3.ID != 1 || b3.Attempts != 1 || b3.LastError != "503" {
				t.Fatalf("retry claim: %+v", b3)
			}
			// A replica stopping mid-push gives its claim back: due again at once, attempts kept.
			claimed := now.Add(2 * time.Minute)
			b4, ok, _ := s.ClaimAuditPush(ctx, now, claimed)
			if !ok || b4.ID != 21 {
				t.Fatalf("third batch: %+v %v", b4, ok)
			}
			if _, ok, _ := s.ClaimAuditPush(ctx, time.Now(), claimed); ok {
				t.Fatal("a claimed batch was claimed again")
			}
			// A stale release (the claim was taken over meanwhile) changes nothing.
			if err := s.ReleaseAuditPush(ctx, b4.ID, claimed.Add(-time.Second)); err != nil {
				t.Fatal(err)
			}
			if _, ok, _ := s.ClaimAuditPush(ctx, time.Now(), claimed); ok {
				t.Fatal("a release with another claim's time freed the batch")
			}
			if err := s.ReleaseAuditPush(ctx, b4.ID, claimed); err != nil {
				t.Fatal(err)
			}
			b5, ok, _ := s.ClaimAuditPush(ctx, time.Now(), time.Now().Add(time.Minute))
			if !ok || b5.ID != 21 || b5.Attempts != 0 {
				t.Fatalf("after the release: %+v %v", b5, ok)
			}
		})
	}
}

// TestAuditSameTransaction: a binding and its record are written together; a store without
// the chain key refuses the change (fail closed).
func TestAuditSameTransaction(t *testing.T) {
	for _, engine := range dbtest.Engines {
		t.Run(string(engine), func(t *testing.T) {
			ctx := t.Context()
			bare := sqlstore.New(dbtest.Open(t, engine))
			tp := threepid.ThreePID{Medium: "uzi", Address: "123456789"}
			now := time.Now()
			b := identity.Binding{ThreePID: tp, MXID: "@a:hs", CreatedAt: now, NotBefore: now, NotAfter: now.Add(time.Hour)}
			rec := func([]identity.Invite) []audit.Record {
				return []audit.Record{{Action: audit.ActionBind, Outcome: audit.OutcomeSuccess, Actor: audit.Agent{Kind: audit.AgentAdmin}, Medium: tp.Medium, Address: tp.Address}}
			}
			if err := bare.Bind(ctx, identity.BindRequest{Binding: b, Audit: rec}); !errors.Is(err, sqlstore.ErrNoAuditChain) {
				t.Fatalf("bind without a chain key: %v", err)
			}
			if _, err := bare.GetBinding(ctx, tp); !errors.Is(err, identity.ErrNotFound) {
				t.Fatalf("bound without its record: %v", err)
			}
			s, _, chain := newAuditStore(t, engine)
			if err := s.Bind(ctx, identity.BindRequest{Binding: b, Audit: rec}); err != nil {
				t.Fatal(err)
			}
			recs, _ := s.ListAudit(ctx, time.Time{}, 0, 10)
			if len(recs) != 1 || recs[0].Action != audit.ActionBind || recs[0].Address != tp.Address || !chain.Valid(recs[0]) {
				t.Fatalf("records %+v", recs)
			}
		})
	}
}

// TestAuditPushClaimsConcurrently: replicas claiming at once each get a different batch.
func TestAuditPushClaimsConcurrently(t *testing.T) {
	for _, engine := range dbtest.Engines {
		t.Run(string(engine), func(t *testing.T) {
			s, _, _ := newAuditStore(t, engine)
			ctx := t.Context()
			for i := range 40 {
				s.AppendAudit(ctx, adminRecord(i))
			}
			now := time.Now()
			if n, err := s.EnqueueAuditPush(ctx, 2, now); err != nil || n != 20 {
				t.Fatalf("queued %d: %v", n, err)
			}
			var mu sync.Mutex
			claimed := map[int64]int{}
			var wg sync.WaitGroup
			for range 6 {
				wg.Go(func() {
					for {
						b, ok, err := s.ClaimAuditPush(context.Background(), now, now.Add(time.Hour))
						if err != nil {
							t.Error(err)
							return
						}
						if !ok {
							return
						}
						mu.Lock()
						claimed[b.ID]++
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			if len(claimed) != 20 {
				t.Fatalf("%d batches claimed: %v", len(claimed), claimed)
			}
			for id, n := range claimed {
				if n != 1 {
					t.Errorf("batch %d claimed %d times", id, n)
				}
			}
		})
	}
}
