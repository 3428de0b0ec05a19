// Package storagetest is the conformance suite every storage.Storage implementation must pass.
package storagetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/storage"
)

// Run runs the whole suite; newStore returns an empty store for each subtest.
func Run(t *testing.T, newStore func(t *testing.T) storage.Storage) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s storage.Storage)
	}{
		{"Settings", testSettings},
		{"Accounts", testAccounts},
		{"Terms", testTerms},
		{"Sessions", testSessions},
		{"BindAndLookup", testBindAndLookup},
		{"BindQueuesInvites", testBindQueuesInvites},
		{"BindRollsBack", testBindRollsBack},
		{"ImportBindings", testImportBindings},
		{"Deliveries", testDeliveries},
		{"EphemeralKeys", testEphemeralKeys},
		{"Audit", testAudit},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newStore(t)) })
	}
}

var ctx = context.Background()

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func testSettings(t *testing.T, s storage.Storage) {
	if _, err := s.GetSetting(ctx, "pepper"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("missing setting: got %v, want ErrNotFound", err)
	}
	// Concurrent first starts must agree on one value.
	var wg sync.WaitGroup
	got := make([]string, 8)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, err := s.SetSettingIfAbsent(ctx, "pepper", fmt.Sprint("value-", i))
			if err != nil {
				t.Error(err)
			}
			got[i] = v
		}()
	}
	wg.Wait()
	for _, v := range got {
		if v != got[0] {
			t.Fatalf("replicas disagree on the setting: %q", got)
		}
	}
	must(t, s.SetSetting(ctx, "pepper", "rotated"))
	if v, _ := s.GetSetting(ctx, "pepper"); v != "rotated" {
		t.Fatalf("after SetSetting: %q", v)
	}
}

func testAccounts(t *testing.T, s storage.Storage) {
	a := storage.Account{TokenHash: "h1", UserID: "@alice:hs1", CreatedAt: time.Now()}
	must(t, s.CreateAccount(ctx, a))
	if err := s.CreateAccount(ctx, a); !errors.Is(err, storage.ErrAlreadyExists) {
		t.Fatalf("duplicate token: %v", err)
	}
	got, err := s.GetAccount(ctx, "h1")
	must(t, err)
	if got.UserID != "@alice:hs1" {
		t.Fatalf("account: %+v", got)
	}
	must(t, s.DeleteAccount(ctx, "h1"))
	if _, err := s.GetAccount(ctx, "h1"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("deleted account: %v", err)
	}
	if err := s.DeleteAccount(ctx, "h1"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("delete twice: %v", err)
	}
}

func testTerms(t *testing.T, s storage.Storage) {
	must(t, s.AcceptTerms(ctx, "@a:hs", []string{"https://x/b", "https://x/a"}))
	must(t, s.AcceptTerms(ctx, "@a:hs", []string{"https://x/a"}))
	got, err := s.AcceptedTerms(ctx, "@a:hs")
	must(t, err)
	if len(got) != 2 || got[0] != "https://x/a" {
		t.Fatalf("accepted: %q", got)
	}
	if got, _ := s.AcceptedTerms(ctx, "@b:hs"); len(got) != 0 {
		t.Fatalf("other user: %q", got)
	}
}

func testSessions(t *testing.T, s storage.Storage) {
	now := time.Now()
	tp := storage.ThreePID{Medium: "email", Address: "bob@example.org"}
	sess := storage.Session{SID: "s1", ClientSecret: "cs", ThreePID: tp, SendAttempt: 1, CreatedAt: now}
	must(t, s.CreateSession(ctx, sess, "tok1", now.Add(time.Hour)))
	if err := s.CreateSession(ctx, storage.Session{SID: "s2", ClientSecret: "cs", ThreePID: tp, CreatedAt: now}, "x", now); !errors.Is(err, storage.ErrAlreadyExists) {
		t.Fatalf("same secret and 3pid twice: %v", err)
	}
	found, err := s.FindSession(ctx, "cs", tp)
	must(t, err)
	if found.SID != "s1" || found.SendAttempt != 1 {
		t.Fatalf("find: %+v", found)
	}
	must(t, s.AddSessionToken(ctx, "s1", 2, "tok2", now.Add(time.Hour)))
	must(t, s.AddSessionToken(ctx, "s1", 3, "tok-expired", now.Add(-time.Second)))
	ok, got, err := s.CheckSessionToken(ctx, "s1", "wrong", now, 10)
	must(t, err)
	if ok || got.FailedAttempts != 1 || !got.ValidatedAt.IsZero() {
		t.Fatalf("wrong token: ok=%v %+v", ok, got)
	}
	if ok, _, _ := s.CheckSessionToken(ctx, "s1", "tok-expired", now, 10); ok {
		t.Fatal("expired token accepted")
	}
	ok, got, err = s.CheckSessionToken(ctx, "s1", "tok1", now, 10)
	must(t, err)
	if !ok || got.ValidatedAt.IsZero() || got.SendAttempt != 3 {
		t.Fatalf("first token: ok=%v %+v", ok, got)
	}
	stored, _ := s.GetSession(ctx, "s1")
	if stored.ValidatedAt.IsZero() || stored.FailedAttempts != 2 {
		t.Fatalf("stored: %+v", stored)
	}
	if _, _, err := s.CheckSessionToken(ctx, "nope", "tok1", now, 10); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("unknown sid: %v", err)
	}
	// The attempt limit holds under concurrent guesses.
	must(t, s.CreateSession(ctx, storage.Session{SID: "s3", ClientSecret: "cs3", ThreePID: tp, CreatedAt: now.Add(time.Hour)}, "t3", now.Add(time.Hour)))
	var wg sync.WaitGroup
	var mu sync.Mutex
	counted, refused := 0, 0
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, err := s.CheckSessionToken(ctx, "s3", "guess", now, 3)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				counted++
			case errors.Is(err, storage.ErrTooManyAttempts):
				refused++
			default:
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if counted != 3 || refused != 17 {
		t.Fatalf("concurrent guesses: %d checked, %d refused; want 3 and 17", counted, refused)
	}
	if ok, _, err := s.CheckSessionToken(ctx, "s3", "t3", now, 3); ok || !errors.Is(err, storage.ErrTooManyAttempts) {
		t.Fatalf("right token after the limit: ok=%v err=%v", ok, err)
	}
	must(t, s.DeleteSession(ctx, "s3"))
	if _, err := s.GetSession(ctx, "s3"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("deleted session: %v", err)
	}
	n, err := s.DeleteExpiredSessions(ctx, now.Add(time.Second))
	must(t, err)
	if n != 1 {
		t.Fatalf("deleted %d sessions", n)
	}
	if _, err := s.GetSession(ctx, "s1"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("expired session kept: %v", err)
	}
}

func binding(medium, address, mxid string) storage.Binding {
	now := time.Now().UTC().Truncate(time.Millisecond)
	return storage.Binding{ThreePID: storage.ThreePID{Medium: medium, Address: address}, MXID: mxid,
		CreatedAt: now, NotBefore: now, NotAfter: now.Add(time.Hour), Source: "bind"}
}

func testBindAndLookup(t *testing.T, s storage.Storage) {
	b := binding("uzi", "012345678", "@dave:hs2")
	must(t, s.Bind(ctx, storage.BindRequest{Binding: b, Hashes: []string{"h-uzi", "h-uzi_nr"}}))
	got, err := s.GetBinding(ctx, b.ThreePID)
	must(t, err)
	if got.MXID != "@dave:hs2" || !got.NotAfter.Equal(b.NotAfter) {
		t.Fatalf("binding: %+v want %+v", got, b)
	}
	m, err := s.LookupHashes(ctx, []string{"h-uzi", "h-uzi_nr", "unknown"})
	must(t, err)
	if len(m) != 2 || m["h-uzi_nr"] != "@dave:hs2" {
		t.Fatalf("hash lookup: %v", m)
	}
	// Rebinding moves the 3PID to the new MXID and replaces its hashes.
	b2 := binding("uzi", "012345678", "@dave:hs3")
	must(t, s.Bind(ctx, storage.BindRequest{Binding: b2, Hashes: []string{"h2"}}))
	m, _ = s.LookupHashes(ctx, []string{"h-uzi", "h2"})
	if len(m) != 1 || m["h2"] != "@dave:hs3" {
		t.Fatalf("after rebind: %v", m)
	}
	tps, err := s.LookupThreePIDs(ctx, []storage.ThreePID{b.ThreePID, {Medium: "email", Address: "none@x.org"}})
	must(t, err)
	if len(tps) != 1 || tps[b.ThreePID] != "@dave:hs3" {
		t.Fatalf("3pid lookup: %v", tps)
	}
	// Large batches cross the statement chunking.
	var many []string
	for i := range 1200 {
		many = append(many, fmt.Sprint("x", i))
	}
	many = append(many, "h2")
	if m, err := s.LookupHashes(ctx, many); err != nil || len(m) != 1 {
		t.Fatalf("big batch: %v %v", m, err)
	}
	must(t, s.RehashBindings(ctx, func(tp storage.ThreePID) []string { return []string{"new-" + tp.Address} }))
	if m, _ := s.LookupHashes(ctx, []string{"h2", "new-012345678"}); len(m) != 1 || m["new-012345678"] == "" {
		t.Fatalf("after rehash: %v", m)
	}
	if err := s.DeleteBinding(ctx, b.ThreePID, "@someone:else"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("delete with wrong mxid: %v", err)
	}
	if _, err := s.GetBinding(ctx, b.ThreePID); err != nil {
		t.Fatal("a delete with the wrong mxid removed the binding")
	}
	must(t, s.DeleteBinding(ctx, b.ThreePID, "@dave:hs3"))
	if m, _ := s.LookupHashes(ctx, []string{"new-012345678"}); len(m) != 0 {
		t.Fatalf("hash survives unbind: %v", m)
	}
	list, err := s.ListBindings(ctx, "", "", 10)
	must(t, err)
	if len(list) != 0 {
		t.Fatalf("list after delete: %v", list)
	}
}

func testBindQueuesInvites(t *testing.T, s storage.Storage) {
	now := time.Now()
	tp := storage.ThreePID{Medium: "email", Address: "bob@example.org"}
	for i, tok := range []string{"t1", "t2"} {
		must(t, s.CreateInvite(ctx, storage.Invite{Token: tok, ThreePID: tp, RoomID: fmt.Sprintf("!r%d:hs1", i),
			Sender: "@alice:hs1", CreatedAt: now.Add(time.Duration(i) * time.Millisecond), ExpiresAt: now.Add(time.Hour),
			Extra: map[string]string{"room_name": "Zorgteam"}}))
	}
	must(t, s.CreateInvite(ctx, storage.Invite{Token: "old", ThreePID: tp, RoomID: "!r:hs1", Sender: "@a:hs1",
		CreatedAt: now.Add(-2 * time.Hour), ExpiresAt: now.Add(-time.Hour)}))
	if err := s.CreateInvite(ctx, storage.Invite{Token: "t1", ThreePID: tp}); !errors.Is(err, storage.ErrAlreadyExists) {
		t.Fatalf("duplicate invite token: %v", err)
	}
	inv, err := s.GetInvite(ctx, "t1")
	must(t, err)
	if inv.Extra["room_name"] != "Zorgteam" || inv.Sender != "@alice:hs1" {
		t.Fatalf("invite: %+v", inv)
	}
	pending, err := s.PendingInvites(ctx, tp)
	must(t, err)
	if len(pending) != 2 || pending[0].Token != "t1" {
		t.Fatalf("pending (expired must not count): %+v", pending)
	}
	var seen []storage.Invite
	req := storage.BindRequest{Binding: binding("email", tp.Address, "@bob:hs2"), Deliver: func(invs []storage.Invite) ([]storage.OnBindDelivery, error) {
		seen = invs
		return []storage.OnBindDelivery{{ID: "d1", ServerName: "hs2", Body: []byte(`{"invites":[]}`), NextAttemptAt: now, ExpiresAt: now.Add(time.Hour), CreatedAt: now}}, nil
	}}
	must(t, s.Bind(ctx, req))
	if len(seen) != 2 {
		t.Fatalf("Deliver saw %d invites", len(seen))
	}
	if p, _ := s.PendingInvites(ctx, tp); len(p) != 0 {
		t.Fatalf("invites still pending after bind: %v", p)
	}
	ds, err := s.ListDeliveries(ctx)
	must(t, err)
	if len(ds) != 1 || string(ds[0].Body) != `{"invites":[]}` || ds[0].ServerName != "hs2" {
		t.Fatalf("queued: %+v", ds)
	}
}

func testBindRollsBack(t *testing.T, s storage.Storage) {
	now := time.Now()
	tp := storage.ThreePID{Medium: "email", Address: "carol@example.org"}
	must(t, s.CreateInvite(ctx, storage.Invite{Token: "t", ThreePID: tp, RoomID: "!r:hs1", Sender: "@a:hs1", CreatedAt: now, ExpiresAt: now.Add(time.Hour)}))
	boom := errors.New("boom")
	err := s.Bind(ctx, storage.BindRequest{Binding: binding("email", tp.Address, "@carol:hs2"), Hashes: []string{"hc"},
		Deliver: func([]storage.Invite) ([]storage.OnBindDelivery, error) { return nil, boom }})
	if !errors.Is(err, boom) {
		t.Fatalf("bind error: %v", err)
	}
	if _, err := s.GetBinding(ctx, tp); !errors.Is(err, storage.ErrNotFound) {
		t.Fatal("failed bind left a binding")
	}
	if p, _ := s.PendingInvites(ctx, tp); len(p) != 1 {
		t.Fatal("failed bind lost the pending invite")
	}
}

func testDeliveries(t *testing.T, s storage.Storage) {
	now := time.Now().Truncate(time.Millisecond)
	tp := storage.ThreePID{Medium: "email", Address: "d@example.org"}
	must(t, s.CreateInvite(ctx, storage.Invite{Token: "t", ThreePID: tp, RoomID: "!r:hs1", Sender: "@a:hs1", CreatedAt: now, ExpiresAt: now.Add(time.Hour)}))
	must(t, s.Bind(ctx, storage.BindRequest{Binding: binding("email", tp.Address, "@d:hs2"), Deliver: func([]storage.Invite) ([]storage.OnBindDelivery, error) {
		return []storage.OnBindDelivery{
			{ID: "a", ServerName: "hs2", Body: []byte("{}"), NextAttemptAt: now, ExpiresAt: now.Add(time.Hour), CreatedAt: now},
			{ID: "b", ServerName: "hs2", Body: []byte("{}"), NextAttemptAt: now.Add(time.Minute), ExpiresAt: now.Add(time.Hour), CreatedAt: now},
		}, nil
	}}))
	due, err := s.DueDeliveries(ctx, now, 10)
	must(t, err)
	if len(due) != 1 || due[0].ID != "a" {
		t.Fatalf("due: %+v", due)
	}
	won, err := s.ClaimDelivery(ctx, "a", due[0].NextAttemptAt, now.Add(30*time.Second))
	must(t, err)
	if !won {
		t.Fatal("first claim lost")
	}
	if won, _ := s.ClaimDelivery(ctx, "a", due[0].NextAttemptAt, now.Add(30*time.Second)); won {
		t.Fatal("second claim won too")
	}
	must(t, s.DeliveryFailed(ctx, "a", now.Add(2*time.Second), "503 from hs2"))
	all, _ := s.ListDeliveries(ctx)
	for _, d := range all {
		if d.ID == "a" && (d.Attempts != 1 || d.LastError != "503 from hs2") {
			t.Fatalf("after failure: %+v", d)
		}
	}
	must(t, s.DeliveryDone(ctx, "a"))
	if all, _ := s.ListDeliveries(ctx); len(all) != 1 || all[0].ID != "b" {
		t.Fatalf("after done: %+v", all)
	}
}

func testEphemeralKeys(t *testing.T, s storage.Storage) {
	must(t, s.AddEphemeralKey(ctx, "pk1", time.Now()))
	if ok, err := s.EphemeralKeyExists(ctx, "pk1"); err != nil || !ok {
		t.Fatalf("pk1: %v %v", ok, err)
	}
	if ok, _ := s.EphemeralKeyExists(ctx, "pk2"); ok {
		t.Fatal("unknown key exists")
	}
}

func testAudit(t *testing.T, s storage.Storage) {
	var wg sync.WaitGroup
	for i := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := s.AppendAudit(ctx, storage.AuditRecord{Actor: "admin", Action: "binding.create", Target: fmt.Sprint("uzi:", i)}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	recs, err := s.ListAudit(ctx, 0, 100)
	must(t, err)
	if len(recs) != 10 {
		t.Fatalf("%d audit records", len(recs))
	}
	prev := ""
	for i, r := range recs {
		if r.Seq != int64(i+1) || r.PrevHash != prev || r.Hash == "" {
			t.Fatalf("record %d breaks the chain: %+v", i, r)
		}
		prev = r.Hash
	}
}
