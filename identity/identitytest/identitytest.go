// Package identitytest is the conformance suite every identity.Store implementation must pass.
package identitytest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/audit"
	"github.com/ozo-platform/ozo-identity/identity"
	"github.com/ozo-platform/ozo-identity/threepid"
)

// Run runs the whole suite; newStore returns an empty store for each subtest.
func Run(t *testing.T, newStore func(t *testing.T) identity.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s identity.Store)
	}{
		{"Settings", testSettings},
		{"Accounts", testAccounts},
		{"Terms", testTerms},
		{"Sessions", testSessions},
		{"BindAndLookup", testBindAndLookup},
		{"FoldedHashes", testFoldedHashes},
		{"BindQueuesInvites", testBindQueuesInvites},
		{"BindRollsBack", testBindRollsBack},
		{"ImportBindings", testImportBindings},
		{"Deliveries", testDeliveries},
		{"EphemeralKeys", testEphemeralKeys},
		{"InviteLimits", testInviteLimits},
		{"MailQuota", testMailQuota},
		{"ReplaceDelivery", testReplaceDelivery},
		{"AuditFailsClosed", testAuditFailsClosed},
		{"SigningKeys", testSigningKeys},
		{"ChangeLog", testChangeLog},
		{"ChangeLogUnderConcurrency", testChangeLogConcurrent},
		{"ScanLookupHashes", testScanLookupHashes},
		{"PepperChecked", testPepperChecked},
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

// Keys are recorded once per id; a rotation swaps the stored key only if it is still the one the
// caller read (two rotations at once: one wins), and records the new key; retiring is by id.
func testSigningKeys(t *testing.T, s identity.Store) {
	now := time.Now().Truncate(time.Millisecond)
	k0 := identity.SigningKey{ID: "ed25519:0", PublicKey: "pub0", Created: now}
	if pub, err := s.RecordSigningKey(ctx, k0); err != nil || pub != "pub0" {
		t.Fatalf("record: %q %v", pub, err)
	}
	if pub, err := s.RecordSigningKey(ctx, identity.SigningKey{ID: "ed25519:0", PublicKey: "other", Created: now}); err != nil || pub != "pub0" {
		t.Fatalf("a second key under the same id: got %q %v, want the first one's", pub, err)
	}
	must(t, s.SetSetting(ctx, "signing_key", "ed25519 0 seed0"))
	k1 := identity.SigningKey{ID: "ed25519:1", PublicKey: "pub1", Created: now.Add(time.Second)}
	must(t, s.RotateSigningKey(ctx, "ed25519 0 seed0", "ed25519 1 seed1", k1))
	if err := s.RotateSigningKey(ctx, "ed25519 0 seed0", "ed25519 1 seedX", identity.SigningKey{ID: "ed25519:1", PublicKey: "pubX", Created: now}); !errors.Is(err, identity.ErrAlreadyExists) {
		t.Fatalf("a rotation from a key no longer current: %v", err)
	}
	if v, _ := s.GetSetting(ctx, "signing_key"); v != "ed25519 1 seed1" {
		t.Fatalf("signing key after the rotations: %q", v)
	}
	// A taken id rolls the whole rotation back.
	if err := s.RotateSigningKey(ctx, "ed25519 1 seed1", "ed25519 0 seedY", identity.SigningKey{ID: "ed25519:0", PublicKey: "pubY", Created: now}); !errors.Is(err, identity.ErrAlreadyExists) {
		t.Fatalf("a rotation to a taken id: %v", err)
	}
	if v, _ := s.GetSetting(ctx, "signing_key"); v != "ed25519 1 seed1" {
		t.Fatalf("a refused rotation changed the signing key to %q", v)
	}
	must(t, s.RetireSigningKey(ctx, "ed25519:0", now.Add(time.Minute)))
	must(t, s.RetireSigningKey(ctx, "ed25519:0", now.Add(2*time.Minute))) // again: keeps the first time
	if err := s.RetireSigningKey(ctx, "ed25519:9", now); !errors.Is(err, identity.ErrNotFound) {
		t.Fatalf("retire an unknown key: %v", err)
	}
	keys, err := s.SigningKeys(ctx)
	must(t, err)
	if len(keys) != 2 || keys[0].ID != "ed25519:0" || keys[0].PublicKey != "pub0" || !keys[0].Retired.Equal(now.Add(time.Minute)) ||
		keys[1].ID != "ed25519:1" || keys[1].PublicKey != "pub1" || !keys[1].Retired.IsZero() || !keys[1].Created.Equal(k1.Created) {
		t.Fatalf("keys: %+v", keys)
	}
}

func testSettings(t *testing.T, s identity.Store) {
	if _, err := s.GetSetting(ctx, "pepper"); !errors.Is(err, identity.ErrNotFound) {
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

func testAccounts(t *testing.T, s identity.Store) {
	a := identity.AccessToken{TokenHash: "h1", UserID: "@alice:hs1", CreatedAt: time.Now()}
	must(t, s.CreateAccessToken(ctx, a))
	if err := s.CreateAccessToken(ctx, a); !errors.Is(err, identity.ErrAlreadyExists) {
		t.Fatalf("duplicate token: %v", err)
	}
	got, err := s.GetAccessToken(ctx, "h1")
	must(t, err)
	if got.UserID != "@alice:hs1" {
		t.Fatalf("account: %+v", got)
	}
	must(t, s.DeleteAccessToken(ctx, "h1"))
	if _, err := s.GetAccessToken(ctx, "h1"); !errors.Is(err, identity.ErrNotFound) {
		t.Fatalf("deleted account: %v", err)
	}
	if err := s.DeleteAccessToken(ctx, "h1"); !errors.Is(err, identity.ErrNotFound) {
		t.Fatalf("delete twice: %v", err)
	}
}

func testTerms(t *testing.T, s identity.Store) {
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

func testSessions(t *testing.T, s identity.Store) {
	now := time.Now()
	tp := threepid.ThreePID{Medium: "email", Address: "bob@example.org"}
	sess := identity.Session{SID: "s1", ClientSecret: "cs", ThreePID: tp, SendAttempt: 1, CreatedAt: now}
	must(t, s.CreateSession(ctx, sess, "tok1", now.Add(time.Hour), identity.MailQuota{}))
	if err := s.CreateSession(ctx, identity.Session{SID: "s2", ClientSecret: "cs", ThreePID: tp, CreatedAt: now}, "x", now, identity.MailQuota{}); !errors.Is(err, identity.ErrAlreadyExists) {
		t.Fatalf("same secret and 3pid twice: %v", err)
	}
	found, err := s.FindSession(ctx, "cs", tp)
	must(t, err)
	if found.SID != "s1" || found.SendAttempt != 1 {
		t.Fatalf("find: %+v", found)
	}
	must(t, s.AddSessionToken(ctx, "s1", 2, "tok-expired", now.Add(-time.Second), identity.MailQuota{}))
	ok, got, err := s.CheckSessionToken(ctx, "s1", "wrong", now, 10)
	must(t, err)
	if ok || got.FailedAttempts != 1 || !got.ValidatedAt.IsZero() {
		t.Fatalf("wrong token: ok=%v %+v", ok, got)
	}
	if ok, _, _ := s.CheckSessionToken(ctx, "s1", "tok-expired", now, 10); ok {
		t.Fatal("expired token accepted")
	}
	must(t, s.AddSessionToken(ctx, "s1", 3, "tok3", now.Add(time.Hour), identity.MailQuota{}))
	// Only the newest token works: the first mail's token was replaced.
	if ok, _, _ := s.CheckSessionToken(ctx, "s1", "tok1", now, 10); ok {
		t.Fatal("a replaced token still validates the session")
	}
	ok, got, err = s.CheckSessionToken(ctx, "s1", "tok3", now, 10)
	must(t, err)
	if !ok || got.ValidatedAt.IsZero() || got.SendAttempt != 3 || got.MailsSent != 3 {
		t.Fatalf("newest token: ok=%v %+v", ok, got)
	}
	stored, _ := s.GetSession(ctx, "s1")
	if stored.ValidatedAt.IsZero() || stored.FailedAttempts != 3 {
		t.Fatalf("stored: %+v", stored)
	}
	if _, _, err := s.CheckSessionToken(ctx, "nope", "tok1", now, 10); !errors.Is(err, identity.ErrNotFound) {
		t.Fatalf("unknown sid: %v", err)
	}
	// The attempt limit holds under concurrent guesses.
	must(t, s.CreateSession(ctx, identity.Session{SID: "s3", ClientSecret: "cs3", ThreePID: tp, CreatedAt: now.Add(time.Hour)}, "t3", now.Add(time.Hour), identity.MailQuota{}))
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
			case errors.Is(err, identity.ErrTooManyAttempts):
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
	if ok, _, err := s.CheckSessionToken(ctx, "s3", "t3", now, 3); ok || !errors.Is(err, identity.ErrTooManyAttempts) {
		t.Fatalf("right token after the limit: ok=%v err=%v", ok, err)
	}
	must(t, s.DeleteSession(ctx, "s3"))
	if _, err := s.GetSession(ctx, "s3"); !errors.Is(err, identity.ErrNotFound) {
		t.Fatalf("deleted session: %v", err)
	}
	n, err := s.DeleteExpiredSessions(ctx, now.Add(time.Second))
	must(t, err)
	if n != 1 {
		t.Fatalf("deleted %d sessions", n)
	}
	if _, err := s.GetSession(ctx, "s1"); !errors.Is(err, identity.ErrNotFound) {
		t.Fatalf("expired session kept: %v", err)
	}
}

func binding(medium, address, mxid string) identity.Binding {
	now := time.Now().UTC().Truncate(time.Millisecond)
	return identity.Binding{ThreePID: threepid.ThreePID{Medium: medium, Address: address}, MXID: mxid,
		CreatedAt: now, NotBefore: now, NotAfter: now.Add(time.Hour), Source: "bind"}
}

func testBindAndLookup(t *testing.T, s identity.Store) {
	b := binding("uzi", "012345678", "@dave:hs2")
	must(t, s.Bind(ctx, identity.BindRequest{Binding: b, Hashes: []string{"h-uzi", "h-uzi_nr"}}))
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
	must(t, s.Bind(ctx, identity.BindRequest{Binding: b2, Hashes: []string{"h2"}}))
	m, _ = s.LookupHashes(ctx, []string{"h-uzi", "h2"})
	if len(m) != 1 || m["h2"] != "@dave:hs3" {
		t.Fatalf("after rebind: %v", m)
	}
	tps, err := s.LookupThreePIDs(ctx, []threepid.ThreePID{b.ThreePID, {Medium: "email", Address: "none@x.org"}})
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
	must(t, s.RehashBindings(ctx, "p2", func(tp threepid.ThreePID) ([]string, []string) { return []string{"new-" + tp.Address}, nil }))
	if m, _ := s.LookupHashes(ctx, []string{"h2", "new-012345678"}); len(m) != 1 || m["new-012345678"] == "" {
		t.Fatalf("after rehash: %v", m)
	}
	if err := s.DeleteBinding(ctx, b.ThreePID, "@someone:else"); !errors.Is(err, identity.ErrNotFound) {
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

func testBindQueuesInvites(t *testing.T, s identity.Store) {
	now := time.Now()
	tp := threepid.ThreePID{Medium: "email", Address: "bob@example.org"}
	for i, tok := range []string{"t1", "t2"} {
		must(t, s.CreateInvite(ctx, identity.Invite{Token: tok, ThreePID: tp, RoomID: fmt.Sprintf("!r%d:hs1", i),
			Sender: "@alice:hs1", CreatedAt: now.Add(time.Duration(i) * time.Millisecond), ExpiresAt: now.Add(time.Hour),
			Extra: map[string]string{"room_name": "Zorgteam"}, EphemeralKey: "eph-" + tok}, identity.InviteLimits{}))
	}
	must(t, s.CreateInvite(ctx, identity.Invite{Token: "old", ThreePID: tp, RoomID: "!r:hs1", Sender: "@a:hs1",
		CreatedAt: now.Add(-2 * time.Hour), ExpiresAt: now.Add(-time.Hour)}, identity.InviteLimits{}))
	if err := s.CreateInvite(ctx, identity.Invite{Token: "t1", ThreePID: tp}, identity.InviteLimits{}); !errors.Is(err, identity.ErrAlreadyExists) {
		t.Fatalf("duplicate invite token: %v", err)
	}
	inv, err := s.GetInvite(ctx, "t1")
	must(t, err)
	if inv.Extra["room_name"] != "Zorgteam" || inv.Sender != "@alice:hs1" || inv.EphemeralKey != "eph-t1" {
		t.Fatalf("invite: %+v", inv)
	}
	pending, err := s.PendingInvites(ctx, tp)
	must(t, err)
	if len(pending) != 2 || pending[0].Token != "t1" {
		t.Fatalf("pending (expired must not count): %+v", pending)
	}
	var seen []identity.Invite
	req := identity.BindRequest{Binding: binding("email", tp.Address, "@bob:hs2"), Deliver: func(invs []identity.Invite) ([]identity.OnBindDelivery, error) {
		seen = invs
		return []identity.OnBindDelivery{{ID: "d1", ServerName: "hs2", Body: []byte(`{"invites":[]}`), NextAttemptAt: now, ExpiresAt: now.Add(time.Hour), CreatedAt: now}}, nil
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

func testBindRollsBack(t *testing.T, s identity.Store) {
	now := time.Now()
	tp := threepid.ThreePID{Medium: "email", Address: "carol@example.org"}
	must(t, s.CreateInvite(ctx, identity.Invite{Token: "t", ThreePID: tp, RoomID: "!r:hs1", Sender: "@a:hs1", CreatedAt: now, ExpiresAt: now.Add(time.Hour)}, identity.InviteLimits{}))
	boom := errors.New("boom")
	err := s.Bind(ctx, identity.BindRequest{Binding: binding("email", tp.Address, "@carol:hs2"), Hashes: []string{"hc"},
		Deliver: func([]identity.Invite) ([]identity.OnBindDelivery, error) { return nil, boom }})
	if !errors.Is(err, boom) {
		t.Fatalf("bind error: %v", err)
	}
	if _, err := s.GetBinding(ctx, tp); !errors.Is(err, identity.ErrNotFound) {
		t.Fatal("failed bind left a binding")
	}
	if p, _ := s.PendingInvites(ctx, tp); len(p) != 1 {
		t.Fatal("failed bind lost the pending invite")
	}
}

func testDeliveries(t *testing.T, s identity.Store) {
	now := time.Now().Truncate(time.Millisecond)
	tp := threepid.ThreePID{Medium: "email", Address: "d@example.org"}
	must(t, s.CreateInvite(ctx, identity.Invite{Token: "t", ThreePID: tp, RoomID: "!r:hs1", Sender: "@a:hs1", CreatedAt: now, ExpiresAt: now.Add(time.Hour)}, identity.InviteLimits{}))
	must(t, s.Bind(ctx, identity.BindRequest{Binding: binding("email", tp.Address, "@d:hs2"), Deliver: func([]identity.Invite) ([]identity.OnBindDelivery, error) {
		return []identity.OnBindDelivery{
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
	if d, _ := s.DueDeliveries(ctx, now.Add(time.Second), 10); len(d) != 0 {
		t.Fatalf("a claimed delivery is due: %+v", d)
	}
	// Giving the claim back (a replica stopping mid-attempt) makes it due at once; a release
	// with a stale claim time (another replica took over) changes nothing.
	if won, _ := s.ClaimDelivery(ctx, "a", now.Add(29*time.Second), now); won {
		t.Fatal("a release with a stale claim time won")
	}
	if won, err := s.ClaimDelivery(ctx, "a", now.Add(30*time.Second), now); err != nil || !won {
		t.Fatalf("release: %v %v", won, err)
	}
	if d, _ := s.DueDeliveries(ctx, now, 10); len(d) != 1 || d[0].ID != "a" || d[0].Attempts != 0 {
		t.Fatalf("after the release: %+v", d)
	}
	if won, _ := s.ClaimDelivery(ctx, "a", now, now.Add(30*time.Second)); !won {
		t.Fatal("claim after the release lost")
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

func testEphemeralKeys(t *testing.T, s identity.Store) {
	now := time.Now()
	tp := threepid.ThreePID{Medium: "uzi", Address: "000000111"}
	must(t, s.CreateInvite(ctx, identity.Invite{Token: "live", ThreePID: tp, RoomID: "!r:hs1", Sender: "@a:hs1",
		CreatedAt: now, ExpiresAt: now.Add(time.Hour), EphemeralKey: "pk1"}, identity.InviteLimits{}))
	must(t, s.CreateInvite(ctx, identity.Invite{Token: "gone", ThreePID: tp, RoomID: "!r:hs1", Sender: "@a:hs1",
		CreatedAt: now.Add(-2 * time.Hour), ExpiresAt: now.Add(-time.Hour), EphemeralKey: "pk-old"}, identity.InviteLimits{}))
	if ok, err := s.EphemeralKeyExists(ctx, "pk1"); err != nil || !ok {
		t.Fatalf("pk1: %v %v", ok, err)
	}
	if ok, _ := s.EphemeralKeyExists(ctx, "pk2"); ok {
		t.Fatal("unknown key exists")
	}
	// A failing insert stores neither the invite nor its key.
	if err := s.CreateInvite(ctx, identity.Invite{Token: "live", ThreePID: tp, RoomID: "!r:hs1", Sender: "@a:hs1",
		CreatedAt: now, ExpiresAt: now.Add(time.Hour), EphemeralKey: "pk-orphan"}, identity.InviteLimits{}); !errors.Is(err, identity.ErrAlreadyExists) {
		t.Fatalf("duplicate token: %v", err)
	}
	if ok, _ := s.EphemeralKeyExists(ctx, "pk-orphan"); ok {
		t.Fatal("a refused invite left its ephemeral key")
	}
	must(t, s.CreateInvite(ctx, identity.Invite{Token: "unmailed", ThreePID: tp, RoomID: "!r:hs1", Sender: "@a:hs1",
		CreatedAt: now, ExpiresAt: now.Add(time.Hour), EphemeralKey: "pk-unmailed"}, identity.InviteLimits{}))
	must(t, s.DeleteInvite(ctx, "unmailed", "pk-unmailed"))
	if ok, _ := s.EphemeralKeyExists(ctx, "pk-unmailed"); ok {
		t.Fatal("deleted invite's key kept")
	}
	if _, err := s.GetInvite(ctx, "unmailed"); !errors.Is(err, identity.ErrNotFound) {
		t.Fatalf("deleted invite: %v", err)
	}
	inv, keys, err := s.PruneInvites(ctx, now)
	must(t, err)
	if inv != 1 || keys != 1 {
		t.Fatalf("pruned %d invites and %d keys, want 1 and 1", inv, keys)
	}
	if ok, _ := s.EphemeralKeyExists(ctx, "pk-old"); ok {
		t.Fatal("expired key kept")
	}
	if _, err := s.GetInvite(ctx, "gone"); !errors.Is(err, identity.ErrNotFound) {
		t.Fatalf("expired invite kept: %v", err)
	}
	if _, err := s.GetInvite(ctx, "live"); err != nil {
		t.Fatalf("live invite pruned: %v", err)
	}
	if ok, _ := s.EphemeralKeyExists(ctx, "pk1"); !ok {
		t.Fatal("live key pruned")
	}
}

// Pending invites are capped per 3PID and per sender, also under concurrent inserts; delivered
// and expired invites do not count.
func testInviteLimits(t *testing.T, s identity.Store) {
	now := time.Now()
	victim := threepid.ThreePID{Medium: "uzi", Address: "000000111"}
	limits := identity.InviteLimits{PerThreePID: 5, PerSender: 3}
	mk := func(tok string, tp threepid.ThreePID, sender string) identity.Invite {
		return identity.Invite{Token: tok, ThreePID: tp, RoomID: "!r:hs1", Sender: sender, CreatedAt: now,
			ExpiresAt: now.Add(time.Hour), EphemeralKey: "pk-" + tok}
	}
	must(t, s.CreateInvite(ctx, mk("legit", victim, "@alice:hs1"), limits))
	var wg sync.WaitGroup
	var mu sync.Mutex
	stored, byThreePID, bySender := 0, 0, 0
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := s.CreateInvite(ctx, mk(fmt.Sprint("junk", i), victim, fmt.Sprintf("@m%d:evil", i%8)), limits)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				stored++
			case errors.Is(err, identity.ErrThreePIDInviteLimit):
				byThreePID++
			case errors.Is(err, identity.ErrSenderInviteLimit):
				bySender++
			default:
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if stored != 4 || byThreePID != 36 {
		t.Fatalf("concurrent junk: %d stored, %d refused for the 3PID, %d for the sender; want 4, 36, 0", stored, byThreePID, bySender)
	}
	for i := range 40 {
		_, err := s.GetInvite(ctx, fmt.Sprint("junk", i))
		if ok, _ := s.EphemeralKeyExists(ctx, fmt.Sprint("pk-junk", i)); ok != (err == nil) {
			t.Fatalf("junk%d: invite stored %v, key stored %v", i, err == nil, ok)
		}
	}
	for i := range 3 {
		must(t, s.CreateInvite(ctx, mk(fmt.Sprint("s", i), threepid.ThreePID{Medium: "email", Address: fmt.Sprint(i, "@x.org")}, "@bob:hs1"), limits))
	}
	if err := s.CreateInvite(ctx, mk("s3", threepid.ThreePID{Medium: "email", Address: "3@x.org"}, "@bob:hs1"), limits); !errors.Is(err, identity.ErrSenderInviteLimit) {
		t.Fatalf("fourth invite from one sender: %v", err)
	}
	// Delivering the 3PID's invites frees its slots; the legitimate invite was among those delivered.
	var seen []identity.Invite
	must(t, s.Bind(ctx, identity.BindRequest{Binding: binding("uzi", victim.Address, "@drecht:hs-a"),
		Deliver: func(invs []identity.Invite) ([]identity.OnBindDelivery, error) { seen = invs; return nil, nil }}))
	if len(seen) != 5 || !slices.ContainsFunc(seen, func(inv identity.Invite) bool { return inv.Token == "legit" }) {
		t.Fatalf("bind saw %d invites %v, want 5 with the legitimate one", len(seen), seen)
	}
	must(t, s.CreateInvite(ctx, mk("after", victim, "@carol:hs1"), limits))
}

// Mails are capped per session and per address; the cap holds for new sessions too.
func testMailQuota(t *testing.T, s identity.Store) {
	now := time.Now()
	tp := threepid.ThreePID{Medium: "email", Address: "victim@example.org"}
	quota := identity.MailQuota{PerSession: 3, PerAddress: 5, Since: now.Add(-time.Hour)}
	must(t, s.CreateSession(ctx, identity.Session{SID: "a", ClientSecret: "ca", ThreePID: tp, SendAttempt: 1, CreatedAt: now}, "a1", now.Add(time.Hour), quota))
	must(t, s.AddSessionToken(ctx, "a", 2, "a2", now.Add(time.Hour), quota))
	must(t, s.AddSessionToken(ctx, "a", 3, "a3", now.Add(time.Hour), quota))
	if err := s.AddSessionToken(ctx, "a", 4, "a4", now.Add(time.Hour), quota); !errors.Is(err, identity.ErrSessionMailLimit) {
		t.Fatalf("fourth mail of a session: %v", err)
	}
	if sess, _ := s.GetSession(ctx, "a"); sess.SendAttempt != 3 || sess.MailsSent != 3 {
		t.Fatalf("refused mail changed the session: %+v", sess)
	}
	if ok, _, _ := s.CheckSessionToken(ctx, "a", "a4", now, 10); ok {
		t.Fatal("the refused mail's token works")
	}
	must(t, s.CreateSession(ctx, identity.Session{SID: "b", ClientSecret: "cb", ThreePID: tp, SendAttempt: 1, CreatedAt: now}, "b1", now.Add(time.Hour), quota))
	must(t, s.AddSessionToken(ctx, "b", 2, "b2", now.Add(time.Hour), quota))
	if n, err := s.MailsSent(ctx, tp, quota.Since); err != nil || n != 5 {
		t.Fatalf("mails sent: %d %v", n, err)
	}
	if err := s.AddSessionToken(ctx, "b", 3, "b3", now.Add(time.Hour), quota); !errors.Is(err, identity.ErrAddressMailLimit) {
		t.Fatalf("sixth mail to the address: %v", err)
	}
	if err := s.CreateSession(ctx, identity.Session{SID: "c", ClientSecret: "cc", ThreePID: tp, SendAttempt: 1, CreatedAt: now}, "c1", now.Add(time.Hour), quota); !errors.Is(err, identity.ErrAddressMailLimit) {
		t.Fatalf("new session over the address quota: %v", err)
	}
	// Another address is not affected, and the newest token of b still validates.
	must(t, s.CreateSession(ctx, identity.Session{SID: "d", ClientSecret: "cd", ThreePID: threepid.ThreePID{Medium: "email", Address: "other@example.org"}, CreatedAt: now}, "d1", now.Add(time.Hour), quota))
	if ok, _, err := s.CheckSessionToken(ctx, "b", "b2", now, 10); err != nil || !ok {
		t.Fatalf("newest token of b: %v %v", ok, err)
	}
}

// A batch refused by the homeserver is swapped for smaller ones in one step.
func testReplaceDelivery(t *testing.T, s identity.Store) {
	now := time.Now().Truncate(time.Millisecond)
	tp := threepid.ThreePID{Medium: "email", Address: "r@example.org"}
	must(t, s.CreateInvite(ctx, identity.Invite{Token: "t", ThreePID: tp, RoomID: "!r:hs1", Sender: "@a:hs1", CreatedAt: now, ExpiresAt: now.Add(time.Hour)}, identity.InviteLimits{}))
	d := func(id string) identity.OnBindDelivery {
		return identity.OnBindDelivery{ID: id, ServerName: "hs2", Body: []byte(`{"id":"` + id + `"}`), NextAttemptAt: now, ExpiresAt: now.Add(time.Hour), CreatedAt: now}
	}
	must(t, s.Bind(ctx, identity.BindRequest{Binding: binding("email", tp.Address, "@r:hs2"),
		Deliver: func([]identity.Invite) ([]identity.OnBindDelivery, error) {
			return []identity.OnBindDelivery{d("big")}, nil
		}}))
	must(t, s.ReplaceDelivery(ctx, "big", []identity.OnBindDelivery{d("part1"), d("part2")}))
	all, err := s.ListDeliveries(ctx)
	must(t, err)
	if len(all) != 2 || all[0].ID == "big" || all[1].ID == "big" {
		t.Fatalf("after replace: %+v", all)
	}
	if err := s.ReplaceDelivery(ctx, "big", []identity.OnBindDelivery{d("part3")}); !errors.Is(err, identity.ErrNotFound) {
		t.Fatalf("replacing a gone delivery: %v", err)
	}
	if all, _ := s.ListDeliveries(ctx); len(all) != 2 {
		t.Fatalf("a failed replace queued parts: %+v", all)
	}
}

// testAuditFailsClosed: a change whose audit record cannot be written is not made.
func testAuditFailsClosed(t *testing.T, s identity.Store) {
	bad := []audit.Record{{Action: "made-up", Outcome: audit.OutcomeSuccess, Actor: audit.Agent{Kind: audit.AgentAdmin}}}
	b := binding("uzi", "123456789", "@alice:hs1")
	err := s.Bind(ctx, identity.BindRequest{Binding: b, Hashes: []string{"h-uzi"},
		Audit: func([]identity.Invite) []audit.Record { return bad }})
	if err == nil {
		t.Fatal("a binding whose record could not be written was made")
	}
	if _, err := s.GetBinding(ctx, b.ThreePID); !errors.Is(err, identity.ErrNotFound) {
		t.Fatalf("binding after a failed record: %v", err)
	}
	if m, _ := s.LookupHashes(ctx, []string{"h-uzi"}); len(m) != 0 {
		t.Fatalf("lookup hash after a failed record: %v", m)
	}
	must(t, s.Bind(ctx, identity.BindRequest{Binding: b, Hashes: []string{"h-uzi"}}))
	if err := s.DeleteBinding(ctx, b.ThreePID, "", bad...); err == nil {
		t.Fatal("an unbind whose record could not be written was made")
	}
	if got, err := s.GetBinding(ctx, b.ThreePID); err != nil || got.MXID != b.MXID {
		t.Fatalf("binding after a failed unbind record: %+v %v", got, err)
	}
	inv := identity.Invite{Token: "tok-audit", ThreePID: threepid.ThreePID{Medium: "email", Address: "a@example.org"},
		RoomID: "!r:hs1", Sender: "@bob:hs1", CreatedAt: time.Now(), ExpiresAt: time.Now().Add(time.Hour)}
	if err := s.CreateInvite(ctx, inv, identity.InviteLimits{}, bad...); err == nil {
		t.Fatal("an invite whose record could not be written was stored")
	}
	if _, err := s.GetInvite(ctx, inv.Token); !errors.Is(err, identity.ErrNotFound) {
		t.Fatalf("invite after a failed record: %v", err)
	}
}

// testFoldedHashes: a folded hash finds its binding only while exactly one binding has it, never
// shadows an exact hash, and goes with unbind and rehash.
func testFoldedHashes(t *testing.T, s identity.Store) {
	upper := binding("idp", "zorg:Alice", "@alice:hs1")
	must(t, s.Bind(ctx, identity.BindRequest{Binding: upper, Hashes: []string{"h-Alice"}, FoldedHashes: []string{"h-alice"}}))
	if m, _ := s.LookupHashes(ctx, []string{"h-Alice", "h-alice"}); len(m) != 2 || m["h-alice"] != "@alice:hs1" {
		t.Fatalf("one binding with the folded hash: %v", m)
	}
	// A second binding folding to the same hash makes it ambiguous: neither is answered.
	other := binding("idp", "zorg:ALICE", "@mallory:hs2")
	must(t, s.Bind(ctx, identity.BindRequest{Binding: other, Hashes: []string{"h-ALICE"}, FoldedHashes: []string{"h-alice"}}))
	if m, _ := s.LookupHashes(ctx, []string{"h-alice"}); len(m) != 0 {
		t.Fatalf("ambiguous folded hash answered: %v", m)
	}
	if m, _ := s.LookupHashes(ctx, []string{"h-Alice", "h-ALICE"}); m["h-Alice"] != "@alice:hs1" || m["h-ALICE"] != "@mallory:hs2" {
		t.Fatalf("exact hashes with an ambiguous fold: %v", m)
	}
	must(t, s.DeleteBinding(ctx, other.ThreePID, "@mallory:hs2"))
	if m, _ := s.LookupHashes(ctx, []string{"h-alice"}); m["h-alice"] != "@alice:hs1" {
		t.Fatalf("after unbinding the other: %v", m)
	}
	// An exact binding of the lower-case address wins over the fold.
	lower := binding("idp", "zorg:alice", "@real:hs1")
	must(t, s.Bind(ctx, identity.BindRequest{Binding: lower, Hashes: []string{"h-alice"}}))
	if m, _ := s.LookupHashes(ctx, []string{"h-alice"}); m["h-alice"] != "@real:hs1" {
		t.Fatalf("exact hash shadowed by a fold: %v", m)
	}
	must(t, s.RehashBindings(ctx, "p3", func(tp threepid.ThreePID) ([]string, []string) {
		if tp.Address == "zorg:Alice" {
			return []string{"n-Alice"}, []string{"n-alice"}
		}
		return []string{"n-" + tp.Address}, nil
	}))
	if m, _ := s.LookupHashes(ctx, []string{"h-alice", "n-alice", "n-Alice"}); len(m) != 2 || m["n-alice"] != "@alice:hs1" {
		t.Fatalf("after rehash: %v", m)
	}
	must(t, s.DeleteBinding(ctx, upper.ThreePID, ""))
	if m, _ := s.LookupHashes(ctx, []string{"n-alice", "n-Alice"}); len(m) != 0 {
		t.Fatalf("folded hash survives unbind: %v", m)
	}
}

// changesAfter reads the change log after seq and fails on an error.
func changesAfter(t *testing.T, s identity.Store, seq int64) identity.Changes {
	t.Helper()
	ch, err := s.Changes(ctx, seq, 1000)
	must(t, err)
	return ch
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}

// Every write that changes what a lookup hash answers, or revokes a token, is in the change log
// with the hashes it touched, old and new; writes that fail log nothing.
func testChangeLog(t *testing.T, s identity.Store) {
	base := changesAfter(t, s, 0)
	if base.Reload || base.Pruned || len(base.Hashes)+len(base.Tokens) != 0 {
		t.Fatalf("empty store's changes: %+v", base)
	}
	a := binding("idp", "zorg:Alice", "@alice:hs1")
	must(t, s.Bind(ctx, identity.BindRequest{Binding: a, Hashes: []string{"a1", "a2"}, FoldedHashes: []string{"fa"}}))
	ch := changesAfter(t, s, base.Seq)
	if ch.Seq <= base.Seq || ch.Reload || !sameSet(ch.Hashes, []string{"a1", "a2", "fa"}) {
		t.Fatalf("after bind: %+v", ch)
	}
	// A rebind (another pepper's hashes here) names the hashes it removed and those it added.
	a.MXID = "@alice2:hs1"
	must(t, s.Bind(ctx, identity.BindRequest{Binding: a, Hashes: []string{"b1"}}))
	ch2 := changesAfter(t, s, ch.Seq)
	if ch2.Seq <= ch.Seq || !sameSet(ch2.Hashes, []string{"a1", "a2", "fa", "b1"}) {
		t.Fatalf("after rebind: %+v", ch2)
	}
	// Reading from an older number includes both.
	if both := changesAfter(t, s, base.Seq); both.Seq != ch2.Seq || !sameSet(both.Hashes, []string{"a1", "a2", "fa", "b1"}) {
		t.Fatalf("from the start: %+v", both)
	}
	// Failed writes log nothing.
	if err := s.DeleteBinding(ctx, a.ThreePID, "@someone:else"); !errors.Is(err, identity.ErrNotFound) {
		t.Fatal(err)
	}
	if err := s.DeleteAccessToken(ctx, "no-such-token"); !errors.Is(err, identity.ErrNotFound) {
		t.Fatal(err)
	}
	if seq, err := s.ChangeSeq(ctx); err != nil || seq != ch2.Seq {
		t.Fatalf("ChangeSeq after the rebind = %d, %v; want %d", seq, err, ch2.Seq)
	}
	if again := changesAfter(t, s, ch2.Seq); again.Seq != ch2.Seq || len(again.Hashes)+len(again.Tokens) != 0 {
		t.Fatalf("failed writes logged: %+v", again)
	}
	must(t, s.CreateAccessToken(ctx, identity.AccessToken{TokenHash: "tok1", UserID: "@u:hs", CreatedAt: time.Now()}))
	must(t, s.DeleteAccessToken(ctx, "tok1"))
	must(t, s.DeleteBinding(ctx, a.ThreePID, ""))
	ch3 := changesAfter(t, s, ch2.Seq)
	if !sameSet(ch3.Tokens, []string{"tok1"}) || !sameSet(ch3.Hashes, []string{"b1"}) || ch3.Reload {
		t.Fatalf("after logout and unbind: %+v", ch3)
	}
	// More changes than the reader takes: reload, and revoked tokens are unknown.
	if many, err := s.Changes(ctx, base.Seq, 2); err != nil || !many.Reload || !many.Pruned || many.Seq != ch3.Seq {
		t.Fatalf("over the limit: %+v %v", many, err)
	}
	// An import logs the hashes of what it changed, not of what it left alone.
	items := []identity.ImportBinding{{Binding: binding("email", "i1@x.org", "@i1:hs"), Hashes: []string{"i1"}},
		{Binding: binding("email", "i2@x.org", "@i2:hs"), Hashes: []string{"i2"}, FoldedHashes: []string{"fi2"}}}
	_, err := s.ImportBindings(ctx, items, nil, nil)
	must(t, err)
	ch4 := changesAfter(t, s, ch3.Seq)
	if !sameSet(ch4.Hashes, []string{"i1", "i2", "fi2"}) {
		t.Fatalf("after import: %+v", ch4)
	}
	_, err = s.ImportBindings(ctx, items, nil, nil)
	must(t, err)
	if again := changesAfter(t, s, ch4.Seq); len(again.Hashes) != 0 {
		t.Fatalf("unchanged re-import logged %v", again.Hashes)
	}
	// A new pepper changes every hash: the log says reload, and the pepper is stored with it.
	must(t, s.RehashBindings(ctx, "pepper-9", func(tp threepid.ThreePID) ([]string, []string) { return []string{"r-" + tp.Address}, nil }))
	ch5 := changesAfter(t, s, ch4.Seq)
	if !ch5.Reload || ch5.Pruned {
		t.Fatalf("after rehash: %+v", ch5)
	}
	if p, err := s.GetSetting(ctx, identity.SettingPepper); err != nil || p != "pepper-9" {
		t.Fatalf("pepper after rehash: %q %v", p, err)
	}
	// Pruning: a reader behind the pruned changes must reload; one after them reads on.
	must(t, s.CreateAccessToken(ctx, identity.AccessToken{TokenHash: "tok2", UserID: "@u:hs", CreatedAt: time.Now()}))
	must(t, s.DeleteAccessToken(ctx, "tok2"))
	latest := changesAfter(t, s, ch5.Seq)
	n, err := s.PruneChanges(ctx, time.Now().Add(time.Second))
	must(t, err)
	if n == 0 {
		t.Fatal("nothing pruned")
	}
	if behind := changesAfter(t, s, ch4.Seq); !behind.Reload || !behind.Pruned || len(behind.Tokens) != 0 {
		t.Fatalf("reader behind pruned changes: %+v", behind)
	}
	if cur := changesAfter(t, s, latest.Seq); cur.Reload || cur.Pruned || cur.Seq < latest.Seq {
		t.Fatalf("current reader after pruning: %+v", cur)
	}
	// A reader ahead of the log (a database restored from a backup) reloads.
	if ahead := changesAfter(t, s, latest.Seq+1000); !ahead.Reload || !ahead.Pruned {
		t.Fatalf("reader ahead of the log: %+v", ahead)
	}
}

// Concurrent writers: a reader that follows the log from number to number sees every change,
// whatever order the transactions commit in.
func testChangeLogConcurrent(t *testing.T, s identity.Store) {
	const writers, each = 4, 15
	done := make(chan struct{})
	seen := map[string]bool{}
	var readErr error
	go func() {
		defer close(done)
		var seq int64
		for stop := false; ; {
			ch, err := s.Changes(ctx, seq, 10000)
			if err != nil {
				readErr = err
				return
			}
			if ch.Reload {
				readErr = fmt.Errorf("reload at %d: %+v", seq, ch)
				return
			}
			for _, h := range ch.Hashes {
				seen[h] = true
			}
			seq = ch.Seq
			if stop {
				return
			}
			if len(seen) == writers*each {
				stop = true // one more read, after which nothing may appear
			}
			time.Sleep(time.Millisecond)
		}
	}()
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				b := binding("email", fmt.Sprintf("w%d-%d@x.org", w, i), fmt.Sprintf("@w%d:hs", w))
				if err := s.Bind(ctx, identity.BindRequest{Binding: b, Hashes: []string{fmt.Sprintf("h%d-%d", w, i)}}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatalf("reader saw %d of %d changes", len(seen), writers*each)
	}
	if readErr != nil {
		t.Fatal(readErr)
	}
}

// ScanLookupHashes gives each hash the answer LookupHashes gives it, folded hashes included, with
// the snapshot's change number and pepper.
func testScanLookupHashes(t *testing.T, s identity.Store) {
	upper := binding("idp", "zorg:Alice", "@alice:hs1")
	other := binding("idp", "zorg:ALICE", "@mallory:hs2")
	solo := binding("idp", "zorg:Bob", "@bob:hs1")
	must(t, s.Bind(ctx, identity.BindRequest{Binding: upper, Hashes: []string{"h-Alice"}, FoldedHashes: []string{"h-alice"}}))
	must(t, s.Bind(ctx, identity.BindRequest{Binding: other, Hashes: []string{"h-ALICE"}, FoldedHashes: []string{"h-alice"}}))
	must(t, s.Bind(ctx, identity.BindRequest{Binding: solo, Hashes: []string{"h-Bob"}, FoldedHashes: []string{"h-bob"}}))
	// An exact hash equal to another binding's folded one: the exact one answers.
	must(t, s.Bind(ctx, identity.BindRequest{Binding: binding("idp", "zorg:bob", "@real-bob:hs1"), Hashes: []string{"h-bob"}}))
	must(t, s.Bind(ctx, identity.BindRequest{Binding: binding("uzi", "012345678", "@dr:hs1"), Hashes: []string{"u1", "u2"}}))
	must(t, s.SetSetting(ctx, identity.SettingPepper, "pep"))
	got := map[string]string{}
	var snap identity.LookupSnapshot
	must(t, s.ScanLookupHashes(ctx, func(ls identity.LookupSnapshot) error { snap = ls; return nil },
		func(hash, mxid []byte) error {
			if _, dup := got[string(hash)]; dup {
				return fmt.Errorf("hash %s twice", hash)
			}
			got[string(hash)] = string(mxid)
			return nil
		}))
	all := []string{"h-Alice", "h-ALICE", "h-alice", "h-Bob", "h-bob", "u1", "u2", "nothing"}
	want, err := s.LookupHashes(ctx, all)
	must(t, err)
	if fmt.Sprint(got) != fmt.Sprint(want) || len(want) != 6 || want["h-bob"] != "@real-bob:hs1" {
		t.Fatalf("scan %v, lookups %v", got, want)
	}
	if latest := changesAfter(t, s, 0); snap.Seq != latest.Seq || snap.Pepper != "pep" || snap.Count < 5 {
		t.Fatalf("snapshot %+v, latest change %d", snap, latest.Seq)
	}
	// An error of the callback ends the scan with it.
	stop := errors.New("stop")
	if err := s.ScanLookupHashes(ctx, func(identity.LookupSnapshot) error { return nil },
		func([]byte, []byte) error { return stop }); !errors.Is(err, stop) {
		t.Fatalf("callback error: %v", err)
	}
}

// A write whose hashes were made with a pepper that is no longer current stores nothing, so
// that a bind racing a rotation is retried with the new pepper instead of becoming unfindable.
func testPepperChecked(t *testing.T, s identity.Store) {
	must(t, s.SetSetting(ctx, identity.SettingPepper, "old"))
	must(t, s.RehashBindings(ctx, "new", func(threepid.ThreePID) ([]string, []string) { return nil, nil }))
	b := binding("email", "late@x.org", "@late:hs")
	if err := s.Bind(ctx, identity.BindRequest{Binding: b, Hashes: []string{"h-old"}, Pepper: "old"}); !errors.Is(err, identity.ErrPepperChanged) {
		t.Fatalf("bind with the old pepper: %v", err)
	}
	items := []identity.ImportBinding{{Binding: binding("email", "i@x.org", "@i:hs"), Hashes: []string{"i-new"}, Pepper: "new"},
		{Binding: binding("email", "j@x.org", "@j:hs"), Hashes: []string{"j-old"}, Pepper: "old"}}
	if _, err := s.ImportBindings(ctx, items, nil, nil); !errors.Is(err, identity.ErrPepperChanged) {
		t.Fatalf("import with an old pepper: %v", err)
	}
	if m, _ := s.LookupHashes(ctx, []string{"h-old", "i-new", "j-old"}); len(m) != 0 {
		t.Fatalf("refused writes stored %v", m)
	}
	if _, err := s.GetBinding(ctx, b.ThreePID); !errors.Is(err, identity.ErrNotFound) {
		t.Fatalf("refused bind stored: %v", err)
	}
	must(t, s.Bind(ctx, identity.BindRequest{Binding: b, Hashes: []string{"h-new"}, Pepper: "new"}))
	if m, _ := s.LookupHashes(ctx, []string{"h-new"}); m["h-new"] != "@late:hs" {
		t.Fatalf("bind with the current pepper: %v", m)
	}
}
