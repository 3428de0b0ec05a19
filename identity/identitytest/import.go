package identitytest

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/identity"
	"github.com/ozo-platform/ozo-identity/threepid"
)

func importItem(medium, address, mxid string) identity.ImportBinding {
	return identity.ImportBinding{Binding: binding(medium, address, mxid), Hashes: []string{"h:" + medium + ":" + address}}
}

func testImportBindings(t *testing.T, s identity.Store) {
	// An earlier binding by a bind stays as it is when the import agrees with it.
	must(t, s.Bind(ctx, identity.BindRequest{Binding: binding("email", "kept@example.org", "@kept:hs1"), Hashes: []string{"h:email:kept@example.org"}}))
	before, err := s.GetBinding(ctx, threepid.ThreePID{Medium: "email", Address: "kept@example.org"})
	must(t, err)

	// More than one statement's worth of rows, on more than one medium.
	var items []identity.ImportBinding
	for i := range 1100 {
		items = append(items, importItem("email", fmt.Sprintf("u%d@example.org", i), fmt.Sprintf("@u%d:hs1", i)))
	}
	for i := range 300 {
		items = append(items, importItem("uzi", fmt.Sprintf("%09d", i), fmt.Sprintf("@p%d:hs1", i)))
	}
	items = append(items, importItem("email", "kept@example.org", "@kept:hs1"))
	time.Sleep(2 * time.Millisecond) // so that an update would show in created_at
	res, err := s.ImportBindings(ctx, items, nil, nil)
	must(t, err)
	if counts(res) != (identity.ImportResult{Created: 1400, Unchanged: 1}) {
		t.Fatalf("first import: %+v", res)
	}
	// Seq is the number the import's changes were logged under: the mirror applies them as that.
	ch, err := s.Changes(ctx, res.Seq-1, 10000)
	must(t, err)
	if ch.Seq != res.Seq || !slices.Contains(ch.Hashes, "h:uzi:000000299") || slices.Contains(ch.Hashes, "h:email:kept@example.org") {
		t.Fatalf("changes of import %d: seq %d, %d hashes", res.Seq, ch.Seq, len(ch.Hashes))
	}
	if got, _ := s.GetBinding(ctx, before.ThreePID); !got.CreatedAt.Equal(before.CreatedAt) || got.Source != before.Source {
		t.Fatalf("unchanged binding was rewritten: %+v, was %+v", got, before)
	}
	m, err := s.LookupHashes(ctx, []string{"h:email:u1099@example.org", "h:uzi:000000299", "h:email:kept@example.org"})
	must(t, err)
	if len(m) != 3 || m["h:email:u1099@example.org"] != "@u1099:hs1" || m["h:uzi:000000299"] != "@p299:hs1" {
		t.Fatalf("lookups after import: %v", m)
	}

	// Folded hashes are stored too: a lower-cased hash answers while one binding has it.
	idp := importItem("idp", "hospital:Dr.Jansen", "@jansen:hs1")
	idp.FoldedHashes = []string{"f:idp:hospital:dr.jansen"}
	res, err = s.ImportBindings(ctx, []identity.ImportBinding{idp}, nil, nil)
	must(t, err)
	if m, _ := s.LookupHashes(ctx, []string{"f:idp:hospital:dr.jansen"}); m["f:idp:hospital:dr.jansen"] != "@jansen:hs1" || res.Created != 1 {
		t.Fatalf("folded hash after import: %v (%+v)", m, res)
	}
	items = append(items, idp)

	// Importing the same again changes nothing.
	res, err = s.ImportBindings(ctx, items, nil, nil)
	must(t, err)
	if counts(res) != (identity.ImportResult{Unchanged: 1402}) {
		t.Fatalf("re-import: %+v", res)
	}

	// Another MXID for a bound 3PID wins, like a second bind; within a batch the later entry wins.
	res, err = s.ImportBindings(ctx, []identity.ImportBinding{
		importItem("email", "u1@example.org", "@other:hs2"),
		importItem("email", "u2@example.org", "@first:hs2"),
		importItem("email", "u2@example.org", "@second:hs2"),
	}, nil, nil)
	must(t, err)
	if counts(res) != (identity.ImportResult{Updated: 2}) {
		t.Fatalf("rebinding import: %+v", res)
	}
	m, _ = s.LookupHashes(ctx, []string{"h:email:u1@example.org", "h:email:u2@example.org", "h:email:u3@example.org"})
	if m["h:email:u1@example.org"] != "@other:hs2" || m["h:email:u2@example.org"] != "@second:hs2" || m["h:email:u3@example.org"] != "@u3:hs1" {
		t.Fatalf("after rebinding import: %v", m)
	}

	// A lookup hash row already there for another 3PID moves to the imported binding, as the
	// upsert of a bind moves it (SQLite's import then writes those rows a second time).
	res, err = s.ImportBindings(ctx, []identity.ImportBinding{{Binding: binding("email", "heir@example.org", "@heir:hs2"),
		Hashes: []string{"h:email:u3@example.org", "h:email:heir@example.org"}}}, nil, nil)
	must(t, err)
	m, _ = s.LookupHashes(ctx, []string{"h:email:u3@example.org", "h:email:heir@example.org"})
	if res.Created != 1 || m["h:email:u3@example.org"] != "@heir:hs2" || m["h:email:heir@example.org"] != "@heir:hs2" {
		t.Fatalf("import over another binding's hash: %+v, %v", res, m)
	}

	// A pending invite for an imported 3PID is delivered, as a bind delivers it.
	now := time.Now()
	tp := threepid.ThreePID{Medium: "email", Address: "invited@example.org"}
	must(t, s.CreateInvite(ctx, identity.Invite{Token: "inv1", ThreePID: tp, RoomID: "!r:hs1", Sender: "@a:hs1",
		CreatedAt: now, ExpiresAt: now.Add(time.Hour)}, identity.InviteLimits{}))
	var delivered []string
	deliver := func(b identity.Binding, invs []identity.Invite) ([]identity.OnBindDelivery, error) {
		delivered = append(delivered, b.Address)
		return []identity.OnBindDelivery{{ID: "d-" + b.Address, ServerName: "hs3", Body: []byte(`{}`), NextAttemptAt: now,
			ExpiresAt: now.Add(time.Hour), CreatedAt: now}}, nil
	}
	res, err = s.ImportBindings(ctx, []identity.ImportBinding{importItem("email", "invited@example.org", "@inv:hs3"),
		importItem("email", "plain@example.org", "@plain:hs3")}, deliver, nil)
	must(t, err)
	if res.Created != 2 || len(delivered) != 1 || delivered[0] != "invited@example.org" {
		t.Fatalf("import with a pending invite: %+v, delivered for %v", res, delivered)
	}
	if p, _ := s.PendingInvites(ctx, tp); len(p) != 0 {
		t.Fatalf("invite still pending after import: %v", p)
	}
	if ds, _ := s.ListDeliveries(ctx); len(ds) != 1 || ds[0].ID != "d-invited@example.org" {
		t.Fatalf("queued deliveries: %+v", ds)
	}

	// A failure rolls the whole batch back.
	tp2 := threepid.ThreePID{Medium: "email", Address: "late@example.org"}
	must(t, s.CreateInvite(ctx, identity.Invite{Token: "inv2", ThreePID: tp2, RoomID: "!r:hs1", Sender: "@a:hs1",
		CreatedAt: now, ExpiresAt: now.Add(time.Hour)}, identity.InviteLimits{}))
	boom := errors.New("boom")
	_, err = s.ImportBindings(ctx, []identity.ImportBinding{importItem("email", "new@example.org", "@new:hs3"),
		importItem("email", "u5@example.org", "@moved:hs3"), importItem("email", tp2.Address, "@late:hs3")},
		func(identity.Binding, []identity.Invite) ([]identity.OnBindDelivery, error) { return nil, boom }, nil)
	if !errors.Is(err, boom) {
		t.Fatalf("failing import: %v", err)
	}
	if _, err := s.GetBinding(ctx, threepid.ThreePID{Medium: "email", Address: "new@example.org"}); !errors.Is(err, identity.ErrNotFound) {
		t.Fatal("a failed import left a binding")
	}
	if m, _ := s.LookupHashes(ctx, []string{"h:email:u5@example.org"}); m["h:email:u5@example.org"] != "@u5:hs1" {
		t.Fatalf("a failed import changed a binding: %v", m)
	}
	if p, _ := s.PendingInvites(ctx, tp2); len(p) != 1 {
		t.Fatal("a failed import lost a pending invite")
	}
}

// counts is res without its change number.
func counts(res identity.ImportResult) identity.ImportResult {
	res.Seq = 0
	return res
}
