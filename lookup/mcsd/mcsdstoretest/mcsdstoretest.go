// Package mcsdstoretest is the conformance suite every mcsd.Store implementation must pass.
package mcsdstoretest

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/lookup/mcsd"
	"github.com/ozo-platform/ozo-identity/threepid"
)

// Run runs the whole suite; newStore returns an empty, migrated store for each subtest.
func Run(t *testing.T, newStore func(t *testing.T) mcsd.Store) {
	run := func(name string, fn func(*testing.T, mcsd.Store)) {
		t.Run(name, func(t *testing.T) { fn(t, newStore(t)) })
	}
	run("Directories", testDirectories)
	run("ApplyResources", testApplyResources)
	run("FinishValidatesAndDerives", testFinishValidatesAndDerives)
	run("FinishGuardRollsBack", testFinishGuardRollsBack)
	run("FinishAppliesAndRecords", testFinishAppliesAndRecords)
	run("FinishSweeps", testFinishSweeps)
	run("Hashes", testHashes)
	run("Placements", testPlacements)
	run("Conflicts", testConflicts)
	run("Search", testSearch)
	run("MarkProvidersOf", testMarkProvidersOf)
	run("RemoveDirectory", testRemoveDirectory)
	run("Leases", testLeases)
}

var ctx = context.Background()

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

const (
	provider = "dir-provider"
	lrza     = "dir-lrza"
	ura      = "12345678"
	uzi1     = "900000001" // current role
	uzi2     = "900000002" // role whose period ended at 1000
	mxid1    = "@jan:hs.example"
	now      = int64(5000)
)

func dir(id, kind string) mcsd.Directory {
	return mcsd.Directory{ID: id, BaseURL: "https://" + id + ".example/fhir", Kind: kind, Origin: "static"}
}

// seed registers the provider directory for ura and stores a care provider with a practitioner
// in a current role and one in a role that ended, a second Organization with a URA that is not
// registered, and judges the directory.
func seed(t *testing.T, s mcsd.Store) mcsd.FinishResult {
	t.Helper()
	must(t, s.EnsureDirectory(ctx, dir(provider, "provider"), 1))
	must(t, s.SetDirectoryURAs(ctx, provider, []string{ura}))
	const run = 1
	apply(t, s, provider, "Organization", run,
		mcsd.Resource{ID: "org1", VersionID: "1", TS: 100, Active: true, Name: "Ziekenhuis Oost", Search: "ziekenhuis oost", URA: ura,
			City: "Utrecht", Idents: []mcsd.Ident{{Kind: "ura", Value: ura}}},
		mcsd.Resource{ID: "org2", VersionID: "1", TS: 100, Active: true, Name: "Spoof", Search: "spoof", URA: "87654321",
			Idents: []mcsd.Ident{{Kind: "ura", Value: "87654321"}}})
	apply(t, s, provider, "Practitioner", run,
		mcsd.Resource{ID: "p1", VersionID: "1", TS: 100, Active: true, Name: "Jan Jansen", Search: "jan jansen"},
		mcsd.Resource{ID: "p2", VersionID: "1", TS: 100, Active: true, Name: "Piet Pieters", Search: "piet pieters"})
	apply(t, s, provider, "PractitionerRole", run,
		mcsd.Resource{ID: "role1", VersionID: "1", TS: 100, Active: true, OrgRef: "org1", PractitionerRef: "p1", MXID: mxid1,
			Codes: "|01.015|", CodeText: "huisarts", Idents: []mcsd.Ident{{Kind: "uzi", Value: uzi1}}},
		mcsd.Resource{ID: "role2", VersionID: "1", TS: 100, Active: true, OrgRef: "org1", PractitionerRef: "p2", MXID: "@piet:hs.example",
			PeriodEnd: 1000, Idents: []mcsd.Ident{{Kind: "uzi", Value: uzi2}}})
	res, err := s.FinishDirectory(ctx, mcsd.FinishInput{Dir: provider, Run: run, Judge: true, Changed: true, MaxRejections: 10, Now: 200,
		Done: []mcsd.TypeResult{{Type: "Organization", Since: "2026-01-01T00:00:00Z"}, {Type: "Practitioner"}}})
	must(t, err)
	return res
}

func apply(t *testing.T, s mcsd.Store, d, typ string, run int64, rs ...mcsd.Resource) int {
	t.Helper()
	for i := range rs {
		rs[i].Type = typ
	}
	n, _, err := s.ApplyResources(ctx, d, run, []mcsd.Batch{{Type: typ, Resources: rs}})
	must(t, err)
	return n
}

func testDirectories(t *testing.T, s mcsd.Store) {
	must(t, s.EnsureDirectory(ctx, dir("b", "provider"), 1))
	must(t, s.EnsureDirectory(ctx, dir("a", "provider"), 1))
	must(t, s.EnsureDirectory(ctx, dir("l", "lrza"), 1))
	must(t, s.SetDirectoryURAs(ctx, "a", []string{"11111111", "22222222"}))
	ds, err := s.Directories(ctx, "provider")
	must(t, err)
	if len(ds) != 2 || ds[0].ID != "a" || ds[1].ID != "b" || !slices.Equal(ds[0].URAs, []string{"11111111", "22222222"}) || ds[1].URAs != nil {
		t.Fatalf("provider directories = %+v", ds)
	}
	if !ds[0].Dirty || ds[1].Dirty {
		t.Fatalf("only the directory whose URAs changed must validate again: %+v", ds)
	}
	if ls, err := s.Directories(ctx, "lrza"); err != nil || len(ls) != 1 || ls[0].ID != "l" {
		t.Fatalf("lrza directories = %+v, %v", ls, err)
	}

	fresh, err := s.RefuseDirectory(ctx, dir("c", "provider"), "plain http", 1)
	must(t, err)
	again, err := s.RefuseDirectory(ctx, dir("c", "provider"), "plain http", 2)
	must(t, err)
	if !fresh || again {
		t.Fatalf("refusal new = %v, then %v; want true, false", fresh, again)
	}
	if active, err := s.RefuseDirectory(ctx, dir("a", "provider"), "plain http", 3); err != nil || active {
		t.Fatalf("refusing an active directory = %v, %v; want no change", active, err)
	}

	must(t, s.RecordAttempt(ctx, "b", mcsd.Attempt{Start: 10, Now: 20, Error: "HTTP 500", Failures: 1, NextAttempt: 80}))
	ds, _ = s.Directories(ctx, "provider")
	if b := ds[1]; b.Failures != 1 || b.NextAttempt != 80 || b.LastError != "HTTP 500" {
		t.Fatalf("after a failure: %+v", b)
	}
	must(t, s.RecordAttempt(ctx, "b", mcsd.Attempt{OK: true, Start: 30, Now: 40}))
	ds, _ = s.Directories(ctx, "provider")
	if b := ds[1]; b.Failures != 0 || b.NextAttempt != 0 || b.LastError != "" {
		t.Fatalf("after a success: %+v", b)
	}

	st, err := s.DirectoryStatuses(ctx)
	must(t, err)
	var urls []string
	for _, x := range st {
		urls = append(urls, x.BaseURL)
	}
	if !slices.Equal(urls, []string{dir("a", "").BaseURL, dir("b", "").BaseURL, dir("c", "").BaseURL, dir("l", "").BaseURL}) {
		t.Fatalf("statuses by base URL: %v", urls)
	}
	if a, b, c := st[0], st[1], st[2]; !a.Active || !slices.Equal(a.URAs, []string{"11111111", "22222222"}) ||
		!b.LastSuccess.Equal(time.UnixMilli(40).UTC()) || !b.LastAttempt.Equal(time.UnixMilli(30).UTC()) ||
		c.Active || c.Refused != "plain http" || c.Kind != "provider" || c.Origin != "static" {
		t.Fatalf("statuses = %+v", st[:3])
	}
}

func testApplyResources(t *testing.T, s mcsd.Store) {
	must(t, s.EnsureDirectory(ctx, dir(provider, "provider"), 1))
	if _, _, ok, err := s.StoredVersion(ctx, provider, "Practitioner", "p1"); err != nil || ok {
		t.Fatalf("stored version before any: %v, %v", ok, err)
	}
	v := func(vid string, ts int64) mcsd.Resource {
		return mcsd.Resource{ID: "p1", VersionID: vid, TS: ts, Active: true, Name: "Jan"}
	}
	check := func(wantVID string, wantTS int64) {
		t.Helper()
		vid, ts, ok, err := s.StoredVersion(ctx, provider, "Practitioner", "p1")
		if err != nil || !ok || vid != wantVID || ts != wantTS {
			t.Fatalf("stored version = %q %d %v %v, want %q %d", vid, ts, ok, err, wantVID, wantTS)
		}
	}
	if n := apply(t, s, provider, "Practitioner", 1, v("1", 100)); n != 1 {
		t.Fatalf("first version applied %d", n)
	}
	if n := apply(t, s, provider, "Practitioner", 2, v("2", 200)); n != 1 {
		t.Fatalf("newer version applied %d", n)
	}
	if n := apply(t, s, provider, "Practitioner", 3, v("1", 100)); n != 0 {
		t.Fatalf("older version of another run applied %d", n)
	}
	check("2", 200)
	// Within one run the first version seen wins unless a later one is strictly newer.
	if n := apply(t, s, provider, "Practitioner", 4, v("4", 300)); n != 1 {
		t.Fatalf("newer version applied %d", n)
	}
	if n := apply(t, s, provider, "Practitioner", 4, v("3", 300)); n != 0 {
		t.Fatalf("same-instant version of the same run applied %d", n)
	}
	check("4", 300)
	del := v("5", 400)
	del.Type, del.Deleted = "Practitioner", true
	applied, deleted, err := s.ApplyResources(ctx, provider, 5, []mcsd.Batch{{Type: "Practitioner", Resources: []mcsd.Resource{del}}})
	if err != nil || applied != 1 || deleted != 1 {
		t.Fatalf("delete: applied %d deleted %d, %v", applied, deleted, err)
	}
	check("5", 400)
	must(t, s.Analyze(ctx))
}

func testFinishValidatesAndDerives(t *testing.T, s mcsd.Store) {
	res := seed(t, s)
	if res.Rejected != 1 || len(res.Rejections) != 1 || res.Rejections[0].ID != "org2" || !strings.Contains(res.Rejections[0].Reason, "87654321") {
		t.Fatalf("rejections = %+v", res)
	}
	marks, err := s.Watermarks(ctx, provider)
	must(t, err)
	if len(marks) != 1 || marks["Organization"] != "2026-01-01T00:00:00Z" {
		t.Fatalf("watermarks = %v", marks)
	}
	cs, err := s.Candidates(ctx, threepid.MediumUZI, []string{uzi1, uzi2, "900000009"}, now, false)
	must(t, err)
	if len(cs) != 1 || cs[0].Address != uzi1 || cs[0].MXID != mxid1 || cs[0].URA != ura || cs[0].Dir != provider || cs[0].SourceID != "role1" {
		t.Fatalf("current candidates = %+v", cs)
	}
	if cs, _ := s.Candidates(ctx, threepid.MediumUZI, []string{uzi2}, 500, false); len(cs) != 1 || cs[0].MXID != "@piet:hs.example" {
		t.Fatalf("candidates before the period ended = %+v", cs)
	}
	if name, err := s.OrganizationName(ctx, ura); err != nil || name != "Ziekenhuis Oost" {
		t.Fatalf("organization name = %q, %v", name, err)
	}
	if name, err := s.OrganizationName(ctx, "87654321"); err != nil || name != "" {
		t.Fatalf("name of a rejected organization = %q, %v", name, err)
	}
	st, err := s.DirectoryStatuses(ctx)
	must(t, err)
	if len(st) != 1 || st[0].Counts["Organization"] != 1 || st[0].Rejected["Organization"] != 1 || st[0].Counts["PractitionerRole"] != 2 ||
		st[0].Recorded != 5 || st[0].Watermarks["Organization"] == "" {
		t.Fatalf("status = %+v", st)
	}
	ds, _ := s.Directories(ctx, "provider")
	if ds[0].Dirty {
		t.Fatal("a judged directory stays marked to validate")
	}
	must(t, s.ResetWatermarks(ctx, provider))
	if marks, _ := s.Watermarks(ctx, provider); len(marks) != 0 {
		t.Fatalf("watermarks after reset = %v", marks)
	}
}

var errGuard = errors.New("too many deletes")

func testFinishGuardRollsBack(t *testing.T, s mcsd.Store) {
	seed(t, s)
	tomb := mcsd.Resource{Type: "PractitionerRole", ID: "role1", VersionID: "2", TS: 300, Deleted: true}
	var before, after map[string]int
	_, err := s.FinishDirectory(ctx, mcsd.FinishInput{Dir: provider, Run: 2, Judge: true, Now: 300,
		Done:  []mcsd.TypeResult{{Type: "PractitionerRole", Since: "2026-02-01T00:00:00Z", Deletes: []mcsd.Resource{tomb}}},
		Guard: func(b, a map[string]int) error { before, after = b, a; return errGuard }})
	if !errors.Is(err, errGuard) {
		t.Fatalf("guard's error = %v", err)
	}
	if before["PractitionerRole"] != 2 || after["PractitionerRole"] != 1 {
		t.Fatalf("guard saw %v → %v", before, after)
	}
	if marks, _ := s.Watermarks(ctx, provider); marks["PractitionerRole"] != "" {
		t.Fatal("a refused finish stored its watermark")
	}
	if cs, _ := s.Candidates(ctx, threepid.MediumUZI, []string{uzi1}, now, false); len(cs) != 1 {
		t.Fatalf("a refused finish removed the candidate: %+v", cs)
	}
	res, err := s.FinishDirectory(ctx, mcsd.FinishInput{Dir: provider, Run: 3, Judge: true, Now: 300,
		Done: []mcsd.TypeResult{{Type: "PractitionerRole", Since: "2026-02-01T00:00:00Z", Deletes: []mcsd.Resource{tomb}}}})
	must(t, err)
	if res.Applied != 1 || res.Deleted != 1 {
		t.Fatalf("finish without guard = %+v", res)
	}
	if cs, _ := s.Candidates(ctx, threepid.MediumUZI, []string{uzi1}, now, false); len(cs) != 0 {
		t.Fatalf("the deleted role still resolves: %+v", cs)
	}
	if marks, _ := s.Watermarks(ctx, provider); marks["PractitionerRole"] != "2026-02-01T00:00:00Z" {
		t.Fatalf("watermarks = %v", marks)
	}
}

// A directory's last versions and the outcome of its attempt are written in the finish
// transaction: all of it, or, when the guard refuses, none of it.
func testFinishAppliesAndRecords(t *testing.T, s mcsd.Store) {
	seed(t, s)
	ep := mcsd.Resource{Type: "Endpoint", ID: "ep9", VersionID: "1", TS: 400, Active: true, Kind: "matrix-user", MXID: "@nieuw:hs.example"}
	role := mcsd.Resource{Type: "PractitionerRole", ID: "role9", VersionID: "1", TS: 400, Active: true, OrgRef: "org1",
		Refs: []mcsd.Ref{{Kind: "endpoint", To: "ep9"}}, Idents: []mcsd.Ident{{Kind: "uzi", Value: "900000009"}}}
	tomb := mcsd.Resource{Type: "PractitionerRole", ID: "role1", VersionID: "2", TS: 300, Deleted: true}
	in := func(run int64, guard func(b, a map[string]int) error) mcsd.FinishInput {
		return mcsd.FinishInput{Dir: provider, Run: run, Judge: true, Now: 300, Guard: guard,
			Apply:   []mcsd.Batch{{Type: "Endpoint", Resources: []mcsd.Resource{ep}}, {Type: "PractitionerRole", Resources: []mcsd.Resource{role}}},
			Done:    []mcsd.TypeResult{{Type: "PractitionerRole", Since: "2026-03-01T00:00:00Z", Deletes: []mcsd.Resource{tomb}}},
			Attempt: &mcsd.Attempt{OK: true, Start: 250, Now: 300}}
	}
	if _, err := s.FinishDirectory(ctx, in(2, func(b, a map[string]int) error { return errGuard })); !errors.Is(err, errGuard) {
		t.Fatalf("guard's error = %v", err)
	}
	if _, _, ok, _ := s.StoredVersion(ctx, provider, "Endpoint", "ep9"); ok {
		t.Fatal("a refused finish kept the versions it was to apply")
	}
	st, _ := s.DirectoryStatuses(ctx)
	if st[0].LastAttempt.UnixMilli() == 250 {
		t.Fatal("a refused finish recorded its attempt")
	}
	res, err := s.FinishDirectory(ctx, in(3, nil))
	must(t, err)
	if res.Applied != 3 || res.Deleted != 1 {
		t.Fatalf("finish = %+v, want 2 versions and 1 tombstone applied", res)
	}
	cs, err := s.Candidates(ctx, threepid.MediumUZI, []string{"900000009", uzi1}, now, false)
	must(t, err)
	if len(cs) != 1 || cs[0].MXID != "@nieuw:hs.example" {
		t.Fatalf("candidates after the finish = %+v, want only the new role's", cs)
	}
	st, _ = s.DirectoryStatuses(ctx)
	if st[0].LastAttempt.UnixMilli() != 250 || st[0].LastSuccess.UnixMilli() != 300 {
		t.Fatalf("attempt not recorded: %+v", st[0])
	}
}

func testFinishSweeps(t *testing.T, s mcsd.Store) {
	seed(t, s)
	// A full read that listed only p1 proves p2 gone, but not a Practitioner newer than its snapshot.
	apply(t, s, provider, "Practitioner", 2, mcsd.Resource{ID: "p3", VersionID: "1", TS: 900, Active: true})
	res, err := s.FinishDirectory(ctx, mcsd.FinishInput{Dir: provider, Run: 3, Now: 300,
		Done: []mcsd.TypeResult{{Type: "Practitioner", Full: true, Seen: map[string]bool{"p1": true}, Snapshot: 500}}})
	must(t, err)
	if res.Swept != 1 {
		t.Fatalf("swept %d, want 1 (p2)", res.Swept)
	}
	st, _ := s.DirectoryStatuses(ctx)
	if n := st[0].Counts["Practitioner"] + st[0].Rejected["Practitioner"]; n != 2 {
		t.Fatalf("live practitioners after the sweep = %d, want p1 and p3", n)
	}
}

func testHashes(t *testing.T, s mcsd.Store) {
	seed(t, s)
	tp := threepid.ThreePID{Medium: threepid.MediumUZI, Address: uzi1}
	for _, pepper := range []string{"pepper-1", "pepper-2"} {
		must(t, s.Rehash(ctx, pepper))
		hs := threepid.LookupHashes(tp, pepper)
		got, err := s.HashedThreePIDs(ctx, append(hs, "unknown"))
		must(t, err)
		if len(got) != len(hs) {
			t.Fatalf("pepper %s: %d hashes found, want %d", pepper, len(got), len(hs))
		}
		for _, h := range got {
			if h.ThreePID != tp || !slices.Contains(hs, h.Hash) {
				t.Fatalf("hash %+v", h)
			}
		}
	}
	if got, _ := s.HashedThreePIDs(ctx, threepid.LookupHashes(tp, "pepper-1")); len(got) != 0 {
		t.Fatalf("hashes of the old pepper still answer: %+v", got)
	}
	// A directory judged after the rotation hashes with the current pepper.
	must(t, s.SetDirectoryURAs(ctx, provider, []string{ura, "87654321"}))
	_, err := s.FinishDirectory(ctx, mcsd.FinishInput{Dir: provider, Run: 9, Judge: true, Changed: true, Now: 300})
	must(t, err)
	if got, _ := s.HashedThreePIDs(ctx, threepid.LookupHashes(tp, "pepper-2")); len(got) == 0 {
		t.Fatal("a judged directory lost its hashes")
	}
}

func drain(t *testing.T, s mcsd.Store, at int64) []string {
	t.Helper()
	var all []string
	after := ""
	for {
		uzis, err := s.ChangedUZIs(ctx, after, 1)
		must(t, err)
		if len(uzis) == 0 {
			return all
		}
		after = uzis[len(uzis)-1]
		all = append(all, uzis...)
		page := mcsd.PlacementPage{UZIs: uzis, Conflicts: map[string]*mcsd.Conflict{}, Now: at}
		if _, _, err := s.StorePlacements(ctx, page); err != nil {
			t.Fatal(err)
		}
	}
}

func testPlacements(t *testing.T, s mcsd.Store) {
	seed(t, s)
	uzis, err := s.ChangedUZIs(ctx, "", 500)
	must(t, err)
	if !slices.Equal(uzis, []string{uzi1, uzi2}) {
		t.Fatalf("changed after judging = %v", uzis)
	}
	p := mcsd.Placement{Homeserver: "hs.example", MXID: mxid1, Since: 100}
	added, resolved, err := s.StorePlacements(ctx, mcsd.PlacementPage{UZIs: []string{uzi1}, Conflicts: map[string]*mcsd.Conflict{uzi1: nil},
		Placements: map[string]mcsd.Placement{uzi1: p}, Now: 400})
	if err != nil || len(added)+len(resolved) != 0 {
		t.Fatalf("store placement: %v %v %v", added, resolved, err)
	}
	got, err := s.Placements(ctx, []string{uzi1, uzi2})
	must(t, err)
	if len(got) != 1 || got[uzi1] != p {
		t.Fatalf("placements = %+v", got)
	}
	if uzis, _ := s.ChangedUZIs(ctx, "", 500); !slices.Equal(uzis, []string{uzi2}) {
		t.Fatalf("changed after storing a page = %v", uzis)
	}
	moved := mcsd.Placement{Homeserver: "hs2.example", Since: 450, PrevHomeserver: "hs.example", PrevMXID: mxid1}
	_, _, err = s.StorePlacements(ctx, mcsd.PlacementPage{UZIs: []string{uzi1}, Placements: map[string]mcsd.Placement{uzi1: moved}, Now: 450})
	must(t, err)
	if got, _ := s.Placements(ctx, []string{uzi1}); got[uzi1] != moved {
		t.Fatalf("placement after a move = %+v", got)
	}
	if rest := drain(t, s, 500); !slices.Equal(rest, []string{uzi2}) {
		t.Fatalf("drained %v", rest)
	}
	// Periods: uzi2's candidate ended at 1000, which a pass from 500 to 2000 sees, one from 2000 on not.
	must(t, s.EndPlacementPass(ctx, 500))
	must(t, s.MarkPeriodChanges(ctx, 2000))
	if rest := drain(t, s, 2000); !slices.Equal(rest, []string{uzi2}) {
		t.Fatalf("marked by periods from 500 to 2000: %v", rest)
	}
	must(t, s.EndPlacementPass(ctx, 2000))
	must(t, s.MarkPeriodChanges(ctx, 3000))
	if rest := drain(t, s, 3000); len(rest) != 0 {
		t.Fatalf("marked by periods from 2000 to 3000: %v", rest)
	}
}

func testConflicts(t *testing.T, s mcsd.Store) {
	c := &mcsd.Conflict{Medium: threepid.MediumUZI, Address: uzi1, FirstSeen: time.UnixMilli(100).UTC(), Claims: []mcsd.Claim{
		{URA: "11111111", Organization: "A", MXID: "@a:hs-a.example", Homeserver: "hs-a.example"},
		{URA: "22222222", Organization: "B", MXID: "@b:hs-b.example", Homeserver: "hs-b.example"}}}
	page := func(c *mcsd.Conflict, at int64) ([]mcsd.Conflict, []mcsd.Conflict) {
		t.Helper()
		added, resolved, err := s.StorePlacements(ctx, mcsd.PlacementPage{UZIs: []string{uzi1}, Conflicts: map[string]*mcsd.Conflict{uzi1: c}, Now: at})
		must(t, err)
		return added, resolved
	}
	if added, resolved := page(c, 100); len(added) != 1 || len(resolved) != 0 || added[0].Address != uzi1 {
		t.Fatalf("new conflict: added %+v resolved %+v", added, resolved)
	}
	if added, resolved := page(c, 200); len(added)+len(resolved) != 0 {
		t.Fatalf("the same conflict again: added %+v resolved %+v", added, resolved)
	}
	changed := *c
	changed.Claims = c.Claims[:1:1]
	changed.Claims = append(changed.Claims, mcsd.Claim{URA: "33333333", MXID: "@c:hs-c.example", Homeserver: "hs-c.example"})
	page(&changed, 300)
	list, err := s.Conflicts(ctx)
	must(t, err)
	if len(list) != 1 || list[0].Address != uzi1 || !list[0].FirstSeen.Equal(time.UnixMilli(100).UTC()) || !slices.Equal(list[0].Claims, changed.Claims) {
		t.Fatalf("conflicts = %+v", list)
	}
	added, resolved := page(nil, 400)
	if len(added) != 0 || len(resolved) != 1 || !slices.Equal(resolved[0].Claims, changed.Claims) || !resolved[0].FirstSeen.Equal(time.UnixMilli(100).UTC()) {
		t.Fatalf("resolved: added %+v resolved %+v", added, resolved)
	}
	if list, _ := s.Conflicts(ctx); len(list) != 0 {
		t.Fatalf("conflicts after resolution = %+v", list)
	}
}

func testSearch(t *testing.T, s mcsd.Store) {
	seed(t, s)
	for _, q := range []mcsd.PractitionerSearch{
		{Q: "jansen"}, {OrgURA: ura}, {OrgName: "oost"}, {Role: "01.015"}, {Role: "huisarts"}, {},
	} {
		q.Now, q.Limit = now, 10
		found, err := s.SearchPractitioners(ctx, q)
		must(t, err)
		if len(found) != 1 {
			t.Fatalf("%+v: %d found, want role1 only (role2 ended)", q, len(found))
		}
		h := found[0].Hit
		if h.Name != "Jan Jansen" || h.UZI != uzi1 || h.MXID != mxid1 || h.OrganizationURA != ura || h.Organization != "Ziekenhuis Oost" ||
			h.RoleID != "role1" || h.Directory != dir(provider, "").BaseURL {
			t.Fatalf("%+v: hit %+v", q, h)
		}
		q.After = found[0].After
		if rest, err := s.SearchPractitioners(ctx, q); err != nil || len(rest) != 0 {
			t.Fatalf("after the last hit: %+v, %v", rest, err)
		}
	}
	if found, _ := s.SearchPractitioners(ctx, mcsd.PractitionerSearch{Q: "nobody", Now: now, Limit: 10}); len(found) != 0 {
		t.Fatalf("unknown name found %+v", found)
	}
	if found, _ := s.SearchPractitioners(ctx, mcsd.PractitionerSearch{Now: 500, Limit: 10}); len(found) != 2 {
		t.Fatalf("before role2 ended: %d found, want 2", len(found))
	}
	found, err := s.SearchOrganizations(ctx, mcsd.OrganizationSearch{Q: "OOST", Now: now, Limit: 10})
	must(t, err)
	if len(found) != 1 || found[0].Hit.Name != "Ziekenhuis Oost" || found[0].Hit.URA != ura || found[0].Hit.City != "Utrecht" || found[0].Hit.ID != "org1" {
		t.Fatalf("organizations = %+v", found)
	}
	if found, _ := s.SearchOrganizations(ctx, mcsd.OrganizationSearch{URA: "87654321", Now: now, Limit: 10}); len(found) != 0 {
		t.Fatalf("a rejected organization is found: %+v", found)
	}
}

func testMarkProvidersOf(t *testing.T, s mcsd.Store) {
	seed(t, s)
	must(t, s.EnsureDirectory(ctx, dir(lrza, "lrza"), 1))
	apply(t, s, lrza, "Organization", 7, mcsd.Resource{ID: "lo", VersionID: "1", TS: 100, Active: true, Name: "Oost", URA: ura})
	must(t, s.MarkProvidersOf(ctx, lrza, 6))
	if ds, _ := s.Directories(ctx, "provider"); ds[0].Dirty {
		t.Fatal("marked by a run that changed nothing")
	}
	must(t, s.MarkProvidersOf(ctx, lrza, 7))
	if ds, _ := s.Directories(ctx, "provider"); !ds[0].Dirty {
		t.Fatal("the provider of a changed LRZA Organization is not marked")
	}
	// The LRZA's name of the care provider wins once the provider is judged again.
	_, err := s.FinishDirectory(ctx, mcsd.FinishInput{Dir: lrza, TrustAll: true, Run: 7, Judge: true, Changed: true, Now: 300})
	must(t, err)
	_, err = s.FinishDirectory(ctx, mcsd.FinishInput{Dir: provider, Run: 8, Judge: true, Changed: true, Now: 300})
	must(t, err)
	if name, _ := s.OrganizationName(ctx, ura); name != "Oost" {
		t.Fatalf("name = %q, want the LRZA's", name)
	}
	eps, err := s.Endpoints(ctx, lrza, now)
	must(t, err)
	if len(eps) != 0 {
		t.Fatalf("endpoints without any = %+v", eps)
	}
	apply(t, s, lrza, "Endpoint", 9, mcsd.Resource{ID: "ep", VersionID: "1", TS: 100, Active: true, Kind: "mcsd-directory",
		Address: "https://provider.example/fhir"})
	apply(t, s, lrza, "Organization", 9, mcsd.Resource{ID: "lo", VersionID: "2", TS: 200, Active: true, Name: "Oost", URA: ura,
		Refs: []mcsd.Ref{{Kind: "endpoint", To: "ep"}}})
	_, err = s.FinishDirectory(ctx, mcsd.FinishInput{Dir: lrza, TrustAll: true, Run: 9, Judge: true, Changed: true, Now: 300})
	must(t, err)
	eps, err = s.Endpoints(ctx, lrza, now)
	must(t, err)
	if len(eps) != 1 || eps[0] != (mcsd.DirectoryEndpoint{Address: "https://provider.example/fhir", URA: ura}) {
		t.Fatalf("endpoints = %+v", eps)
	}
}

func testRemoveDirectory(t *testing.T, s mcsd.Store) {
	seed(t, s)
	must(t, s.Rehash(ctx, "pepper"))
	drain(t, s, 300)
	must(t, s.RemoveDirectory(ctx, provider))
	if ds, _ := s.Directories(ctx, "provider"); len(ds) != 0 {
		t.Fatalf("directories after removal = %+v", ds)
	}
	if cs, _ := s.Candidates(ctx, threepid.MediumUZI, []string{uzi1}, now, true); len(cs) != 0 {
		t.Fatalf("candidates after removal = %+v", cs)
	}
	tp := threepid.ThreePID{Medium: threepid.MediumUZI, Address: uzi1}
	if got, _ := s.HashedThreePIDs(ctx, threepid.LookupHashes(tp, "pepper")); len(got) != 0 {
		t.Fatalf("hashes after removal = %+v", got)
	}
	if _, _, ok, _ := s.StoredVersion(ctx, provider, "Practitioner", "p1"); ok {
		t.Fatal("resources after removal")
	}
	if marks, _ := s.Watermarks(ctx, provider); len(marks) != 0 {
		t.Fatalf("watermarks after removal = %v", marks)
	}
	if uzis, _ := s.ChangedUZIs(ctx, "", 10); !slices.Equal(uzis, []string{uzi1, uzi2}) {
		t.Fatalf("the placement pass must revisit the removed directory's UZI numbers: %v", uzis)
	}
	st, _ := s.DirectoryStatuses(ctx)
	if len(st) != 1 || st[0].Active || len(st[0].URAs) != 0 {
		t.Fatalf("status after removal = %+v", st)
	}
}

func testLeases(t *testing.T, s mcsd.Store) {
	l, err := s.AcquireLease(ctx, "job", "a", time.Minute)
	must(t, err)
	var held *mcsd.LeaseHeldError
	if _, err := s.AcquireLease(ctx, "job", "b", time.Minute); !errors.As(err, &held) || held.Holder != "a" {
		t.Fatalf("second holder: %v", err)
	}
	ran := false
	must(t, l.Hold(ctx, func(context.Context) error { ran = true; return nil }))
	if !ran {
		t.Fatal("Hold did not run fn")
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	l2, err := s.WaitLease(wctx, "job", "b", time.Minute, 10*time.Millisecond)
	must(t, err)
	if l2.Holder() != "b" || l2.Name() != "job" {
		t.Fatalf("lease = %s/%s", l2.Name(), l2.Holder())
	}
	must(t, l2.Release(ctx))
}
