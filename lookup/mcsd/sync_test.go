package mcsd_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/lookup/mcsd"
	"github.com/ozo-platform/ozo-identity/lookup/mcsd/mcsdtest"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore/dbtest"
	"github.com/ozo-platform/ozo-identity/threepid"
)

const (
	hospital = "ziekenhuis-ijsselvallei"
	gp       = "huisartsenpraktijk-de-linde"
	homecare = "thuiszorg-zonnehof"
)

type env struct {
	t   *testing.T
	db  *sqlstore.DB
	idx *mcsd.Index
	srv *mcsdtest.Server
}

func newEnv(t *testing.T, engine sqlstore.Engine) *env {
	t.Helper()
	db := dbtest.Open(t, engine)
	srv := mcsdtest.Start(t, mcsdtest.Options{PageSize: 4})
	return &env{t: t, db: db, idx: mcsd.NewIndex(db), srv: srv}
}

func (e *env) syncer(mod ...func(*mcsd.Options)) *mcsd.Syncer {
	opts := mcsd.Options{
		LRZA:           e.srv.LRZAURL(),
		Client:         e.srv.Client(),
		Concurrency:    3,
		RequestTimeout: 5 * time.Second,
		PageSize:       5,
		BackoffBase:    time.Hour,
	}
	for _, m := range mod {
		m(&opts)
	}
	return mcsd.NewSyncer(e.idx, opts)
}

// sync runs SyncAll and returns the reports by directory name (the path segment of the base URL).
func (e *env) sync(s *mcsd.Syncer) map[string]mcsd.DirectoryReport {
	e.t.Helper()
	reps, err := s.SyncAll(context.Background())
	if err != nil {
		e.t.Fatalf("SyncAll: %v", err)
	}
	out := map[string]mcsd.DirectoryReport{}
	for _, r := range reps {
		name := strings.TrimSuffix(strings.TrimPrefix(r.Directory, e.srv.URL("")[:len(e.srv.URL(""))-len("/fhir")]), "/fhir")
		name = strings.Trim(name, "/")
		if _, dup := out[name]; dup {
			e.t.Fatalf("two reports for %s", name)
		}
		out[name] = r
	}
	return out
}

func (e *env) resolve(medium, address string) string {
	e.t.Helper()
	tp := threepid.ThreePID{Medium: medium, Address: address}
	got, err := e.idx.Resolve(context.Background(), []threepid.ThreePID{tp})
	if err != nil {
		e.t.Fatalf("Resolve %v: %v", tp, err)
	}
	return got[tp]
}

func (e *env) hs(n string) string { return e.srv.Homeserver(n) }

func forEngines(t *testing.T, fn func(t *testing.T, engine sqlstore.Engine)) {
	for _, engine := range dbtest.Engines {
		t.Run(string(engine), func(t *testing.T) {
			t.Parallel()
			fn(t, engine)
		})
	}
}

func hasRejection(r mcsd.DirectoryReport, typ, id, reasonPart string) bool {
	for _, x := range r.Rejections {
		if x.Type == typ && x.ID == id && strings.Contains(x.Reason, reasonPart) {
			return true
		}
	}
	return false
}

func TestFullSyncResolves(t *testing.T) {
	forEngines(t, func(t *testing.T, engine sqlstore.Engine) {
		e := newEnv(t, engine)
		reps := e.sync(e.syncer())

		if len(reps) != 4 {
			t.Fatalf("want reports for the LRZA and 3 providers, got %v", keys(reps))
		}
		for name, r := range reps {
			if r.Err != nil || r.Skipped != "" {
				t.Fatalf("%s: err %v skipped %q", name, r.Err, r.Skipped)
			}
			if r.Fetched == 0 || r.Applied != r.Fetched {
				t.Errorf("%s: fetched %d applied %d", name, r.Fetched, r.Applied)
			}
		}
		if _, ok := reps["apotheek-de-vijzel"]; ok {
			t.Error("a directory whose LRZA Endpoint is off was synced")
		}

		want := map[string]string{
			"900012345": "@m.vandenberg:" + e.hs("hs1"), // role Endpoint, matrix: URI
			"900012346": "@j.jansen:" + e.hs("hs1"),     // role Endpoint beats the other role's telecom
			"900012347": "",                             // inactive role
			"900012348": "",                             // Endpoint off
			"900012349": "",                             // Endpoint period ended
			"900012350": "",                             // role of a foreign organisation
			"900023456": "@h.dekker:" + e.hs("hs2"),     // Practitioner telecom; the hospital's spoof is rejected
			"900023457": "@e.mulder:" + e.hs("hs2"),     // role Endpoint
			"900023458": "@l.degroot:" + e.hs("hs2"),    // role with an open period
			"900034567": "@f.kok:" + e.hs("hs1"),        // department of the home-care organisation
			"900034568": "@m.vandijk:" + e.hs("hs1"),    // PractitionerRole telecom
			"999999999": "",                             // unknown
		}
		for uzi, mxid := range want {
			if got := e.resolve("uzi", uzi); got != mxid {
				t.Errorf("uzi %s: got %q, want %q", uzi, got, mxid)
			}
		}
		if got := e.resolve("ura", "17004512"); got != "@praktijk.delinde:"+e.hs("hs2") {
			t.Errorf("ura of the GP practice (matrix.to function account): got %q", got)
		}
		if got := e.resolve("ura", "29001201"); got != "" {
			t.Errorf("ura without a function account resolved to %q", got)
		}
		if got := e.resolve("email", "h.dekker@delinde.example.nl"); got != "" {
			t.Errorf("email must not resolve from mCSD, got %q", got)
		}

		h := reps[hospital]
		for _, c := range []struct{ typ, id, reason string }{
			{"Organization", "zh-spoof-de-linde", "carries URA 17004512, which the LRZA does not register"},
			{"PractitionerRole", "r-zh-spoof", "which is rejected"},
			{"Practitioner", "p-zh-spoof", "not referenced by an accepted PractitionerRole"},
			{"Endpoint", "ep-zh-spoof-dekker", "not referenced by an accepted"},
			{"PractitionerRole", "r-zh-deboer", "https://adresboek.elders.example.nl/fhir/Organization/kno, which is not in this directory"},
			{"Endpoint", "ep-zh-deboer", "not referenced by an accepted"},
		} {
			if !hasRejection(h, c.typ, c.id, c.reason) {
				t.Errorf("hospital report lacks rejection of %s/%s (%s); got %+v", c.typ, c.id, c.reason, h.Rejections)
			}
		}
		if h.Rejected != len(h.Rejections) || h.Rejected != 8 {
			t.Errorf("hospital: rejected %d, listed %d: %+v", h.Rejected, len(h.Rejections), h.Rejections)
		}
		for _, name := range []string{gp, homecare, "lrza"} {
			if reps[name].Rejected != 0 {
				t.Errorf("%s: unexpected rejections %+v", name, reps[name].Rejections)
			}
		}
	})
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// Resource builders for changes made during tests; ${hsN} is expanded by the test server.
func practitionerJSON(id, name, uzi string) []byte {
	return fmt.Appendf(nil, `{"resourceType":"Practitioner","id":%q,"active":true,
		"identifier":[{"system":"http://fhir.nl/fhir/NamingSystem/uzi-nr-pers","value":%q}],
		"name":[{"use":"official","text":%q}]}`, id, uzi, name)
}

func roleJSON(id, practitioner, org string, active bool, endpoints ...string) []byte {
	var refs []string
	for _, e := range endpoints {
		refs = append(refs, fmt.Sprintf(`{"reference":"Endpoint/%s"}`, e))
	}
	return fmt.Appendf(nil, `{"resourceType":"PractitionerRole","id":%q,"active":%t,
		"practitioner":{"reference":"Practitioner/%s"},"organization":{"reference":"Organization/%s"},
		"code":[{"coding":[{"system":"http://fhir.nl/fhir/NamingSystem/uzi-rolcode","code":"01.015","display":"Huisarts"}]}],
		"endpoint":[%s]}`, id, active, practitioner, org, strings.Join(refs, ","))
}

func endpointJSON(id, status, address string) []byte {
	return fmt.Appendf(nil, `{"resourceType":"Endpoint","id":%q,"status":%q,
		"connectionType":{"system":"https://ozo-platform.github.io/fhir/CodeSystem/matrix","code":"matrix"},
		"payloadType":[{"coding":[{"code":"matrix-messaging"}]}],"address":%q}`, id, status, address)
}

func put(t *testing.T, d *mcsdtest.Directory, body []byte) {
	t.Helper()
	if _, err := d.Put(body); err != nil {
		t.Fatal(err)
	}
}

// setActive rewrites the "active" of a resource in the directory.
func setField(t *testing.T, d *mcsdtest.Directory, typ, id, old, new string) {
	t.Helper()
	cur := d.Get(typ, id)
	if cur == nil || !strings.Contains(string(cur), old) {
		t.Fatalf("%s/%s has no %s: %s", typ, id, old, cur)
	}
	put(t, d, []byte(strings.Replace(string(cur), old, new, 1)))
}

func TestIncrementalSync(t *testing.T) {
	forEngines(t, func(t *testing.T, engine sqlstore.Engine) {
		e := newEnv(t, engine)
		var mu sync.Mutex
		var moves []mcsd.Move
		s := e.syncer(func(o *mcsd.Options) {
			o.OnMove = func(_ context.Context, m mcsd.Move) {
				mu.Lock()
				moves = append(moves, m)
				mu.Unlock()
			}
		})
		e.sync(s)
		if cur, prev, _, err := e.idx.Homeserver(context.Background(), "900034567"); err != nil || cur != e.hs("hs1") || prev != "" {
			t.Fatalf("Homeserver before the move: %q %q %v", cur, prev, err)
		}
		e.srv.ResetRequests()
		gpDir, hospDir, hcDir := e.srv.Directory(gp), e.srv.Directory(hospital), e.srv.Directory(homecare)

		// Create: a new GP joins the practice.
		put(t, gpDir, endpointJSON("ep-hp-yilmaz", "active", "matrix:u/s.yilmaz:${hs2}"))
		put(t, gpDir, practitionerJSON("p-hp-yilmaz", "Selin Yilmaz", "900023459"))
		put(t, gpDir, roleJSON("r-hp-yilmaz", "p-hp-yilmaz", "hp-de-linde", true, "ep-hp-yilmaz"))
		// Update: a new Matrix address for a cardiologist.
		setField(t, hospDir, "Endpoint", "ep-zh-vandenberg", "matrix:u/m.vandenberg:", "matrix:u/marieke.vandenberg:")
		// Delete: a GP's role goes.
		gpDir.Delete("PractitionerRole", "r-hp-mulder")
		// Status changes: an inactive role becomes active; an Endpoint is switched off.
		setField(t, hospDir, "PractitionerRole", "r-zh-bakker", `"active":false`, `"active":true`)
		setField(t, gpDir, "Endpoint", "ep-hp-degroot", `"status":"active"`, `"status":"off"`)
		// Move: the district nurse leaves the home-care organisation (hs1) for the GP practice (hs2).
		hcDir.Delete("PractitionerRole", "r-tz-kok")
		put(t, gpDir, endpointJSON("ep-hp-kok", "active", "matrix:u/fatima.kok:${hs2}"))
		put(t, gpDir, practitionerJSON("p-hp-kok", "Fatima Kok", "900034567"))
		put(t, gpDir, roleJSON("r-hp-kok", "p-hp-kok", "hp-de-linde", true, "ep-hp-kok"))
		moveTime := time.Now()

		reps := e.sync(s)
		for _, req := range e.srv.Requests() {
			if strings.Contains(req, "/_history") && !strings.Contains(req, "_since=") {
				t.Errorf("incremental sync requested the whole history: %s", req)
			}
		}
		// _since is inclusive, so a version at the watermark's instant may come again; it is
		// fetched but not applied.
		if r := reps[gp]; r.Fetched < 8 || r.Fetched > 9 || r.Applied != 8 || r.Deleted != 1 || r.Err != nil {
			t.Errorf("GP report: fetched %d applied %d deleted %d err %v", r.Fetched, r.Applied, r.Deleted, r.Err)
		}
		if r := reps[hospital]; r.Fetched < 2 || r.Fetched > 3 || r.Applied != 2 || r.Err != nil {
			t.Errorf("hospital report: fetched %d applied %d err %v", r.Fetched, r.Applied, r.Err)
		}
		if r := reps[homecare]; r.Fetched < 1 || r.Fetched > 2 || r.Applied != 1 || r.Deleted != 1 || r.Err != nil {
			t.Errorf("home-care report: fetched %d deleted %d err %v", r.Fetched, r.Deleted, r.Err)
		}
		// A practitioner left without an accepted role is now reported as not counting.
		if !hasRejection(reps[gp], "Practitioner", "p-hp-mulder", "not referenced") {
			t.Errorf("GP report lacks the orphaned practitioner: %+v", reps[gp].Rejections)
		}

		for uzi, want := range map[string]string{
			"900023459": "@s.yilmaz:" + e.hs("hs2"),
			"900012345": "@marieke.vandenberg:" + e.hs("hs1"),
			"900023457": "",
			"900012347": "@s.bakker:" + e.hs("hs1"),
			"900023458": "",
			"900034567": "@fatima.kok:" + e.hs("hs2"),
		} {
			if got := e.resolve("uzi", uzi); got != want {
				t.Errorf("uzi %s: got %q, want %q", uzi, got, want)
			}
		}

		cur, prev, since, err := e.idx.Homeserver(context.Background(), "900034567")
		if err != nil || cur != e.hs("hs2") || prev != e.hs("hs1") {
			t.Errorf("Homeserver after the move: current %q previous %q err %v", cur, prev, err)
		}
		if d := since.Sub(moveTime); d < -5*time.Second || d > 5*time.Second {
			t.Errorf("moved since %v, expected about %v", since, moveTime)
		}
		mu.Lock()
		if len(moves) != 1 || moves[0].UZI != "900034567" || moves[0].From != e.hs("hs1") || moves[0].To != e.hs("hs2") ||
			moves[0].ToMXID != "@fatima.kok:"+e.hs("hs2") || moves[0].FromMXID != "@f.kok:"+e.hs("hs1") {
			t.Errorf("moves: %+v", moves)
		}
		mu.Unlock()
		// Not moved: a practitioner who stays keeps no previous homeserver.
		if cur, prev, _, err := e.idx.Homeserver(context.Background(), "900023456"); err != nil || cur != e.hs("hs2") || prev != "" {
			t.Errorf("Homeserver of a GP who did not move: %q %q %v", cur, prev, err)
		}
		// The dermatologist's Endpoint is off, so she resolves to nothing, but her hospital's
		// homeserver still places her.
		if cur, _, _, err := e.idx.Homeserver(context.Background(), "900012348"); err != nil || cur != e.hs("hs1") {
			t.Errorf("Homeserver from the organisation's homeserver Endpoint: %q %v", cur, err)
		}
		if _, _, _, err := e.idx.Homeserver(context.Background(), "999999999"); !errors.Is(err, mcsd.ErrNotFound) {
			t.Errorf("Homeserver of an unknown UZI: %v", err)
		}
		if _, _, _, err := e.idx.Homeserver(context.Background(), "12345"); err == nil {
			t.Error("Homeserver accepted an invalid UZI number")
		}

		// A third run with nothing changed fetches nothing and changes nothing.
		reps = e.sync(s)
		for name, r := range reps {
			if r.Fetched > 2 || r.Applied != 0 || r.Err != nil {
				t.Errorf("%s: idle run fetched %d applied %d err %v", name, r.Fetched, r.Applied, r.Err)
			}
		}
	})
}

func TestDeletedBeforeFirstSync(t *testing.T) {
	forEngines(t, func(t *testing.T, engine sqlstore.Engine) {
		e := newEnv(t, engine)
		d := e.srv.Directory(gp)
		// The history holds create, update and delete; newest first, the delete must win.
		put(t, d, endpointJSON("ep-hp-gone", "active", "matrix:u/gone:${hs2}"))
		put(t, d, practitionerJSON("p-hp-gone", "Tijdelijk Weg", "900023460"))
		put(t, d, roleJSON("r-hp-gone", "p-hp-gone", "hp-de-linde", true, "ep-hp-gone"))
		setField(t, d, "PractitionerRole", "r-hp-gone", `"active":true`, `"active":true,"period":{"start":"2020-01-01"}`)
		d.Delete("PractitionerRole", "r-hp-gone")
		e.sync(e.syncer())
		if got := e.resolve("uzi", "900023460"); got != "" {
			t.Errorf("a role deleted before the first sync resolves to %q", got)
		}
		// Re-created after its delete, it counts again.
		put(t, d, roleJSON("r-hp-gone", "p-hp-gone", "hp-de-linde", true, "ep-hp-gone"))
		e.sync(e.syncer())
		if got := e.resolve("uzi", "900023460"); got != "@gone:"+e.hs("hs2") {
			t.Errorf("re-created role resolves to %q", got)
		}
	})
}

func TestRestartResumesFromWatermark(t *testing.T) {
	forEngines(t, func(t *testing.T, engine sqlstore.Engine) {
		ctx := context.Background()
		dbURL := dbtest.URL(t, engine)
		dataDir := t.TempDir()
		srv := mcsdtest.Start(t, mcsdtest.Options{})
		open := func() (*sqlstore.DB, *mcsd.Syncer, *mcsd.Index) {
			db, err := sqlstore.Open(ctx, dbURL, dataDir)
			if err != nil {
				t.Fatal(err)
			}
			if err := db.Migrate(ctx, discard()); err != nil {
				t.Fatal(err)
			}
			idx := mcsd.NewIndex(db)
			return db, mcsd.NewSyncer(idx, mcsd.Options{LRZA: srv.LRZAURL(), Client: srv.Client()}), idx
		}
		db, s, idx := open()
		if _, err := s.SyncAll(ctx); err != nil {
			t.Fatal(err)
		}
		before, err := idx.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		db.Close() // the process stops

		put(t, srv.Directory(gp), endpointJSON("ep-hp-new", "active", "matrix:u/nieuw:${hs2}"))
		srv.ResetRequests()
		db, s, idx = open() // and starts again
		defer db.Close()
		reps, err := s.SyncAll(ctx)
		if err != nil {
			t.Fatal(err)
		}
		fetched, applied := 0, 0
		for _, r := range reps {
			fetched += r.Fetched
			applied += r.Applied
		}
		if applied != 1 || fetched > 4 {
			t.Errorf("after a restart the sync fetched %d and applied %d entries, want only the 1 change", fetched, applied)
		}
		marks := map[string]bool{}
		for _, st := range before {
			for _, m := range st.Watermarks {
				marks[m] = true
			}
		}
		reqs := srv.Requests()
		if len(reqs) == 0 {
			t.Fatal("no requests after restart")
		}
		for _, req := range reqs {
			q := req[strings.Index(req, "?")+1:]
			ok := false
			for m := range marks {
				if strings.Contains(q, "_since="+urlQueryEscape(m)) {
					ok = true
				}
			}
			if !ok {
				t.Errorf("request after restart does not resume from a stored watermark: %s", req)
			}
		}
	})
}

func TestFailingDirectory(t *testing.T) {
	cases := []struct {
		name    string
		failure mcsdtest.Failure
		errPart string
	}{
		{"500", mcsdtest.Failure{Status: 500}, "500 Internal Server Error (test failure 500"},
		{"404", mcsdtest.Failure{Status: 404}, "404 Not Found"},
		{"410", mcsdtest.Failure{Status: 410}, "410 Gone"},
		{"malformed", mcsdtest.Failure{Malformed: true, Types: []string{"Endpoint"}}, "read bundle"},
		{"slow", mcsdtest.Failure{Delay: 10 * time.Second}, "no complete answer within"},
		{"second page fails", mcsdtest.Failure{Status: 503, AfterPages: 1}, "503"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			forEngines(t, func(t *testing.T, engine sqlstore.Engine) {
				e := newEnv(t, engine)
				opts := func(o *mcsd.Options) { o.RequestTimeout = 400 * time.Millisecond }
				e.sync(e.syncer(opts))
				hospDir, gpDir := e.srv.Directory(hospital), e.srv.Directory(gp)

				// Changes in two directories; the hospital then breaks.
				setField(t, hospDir, "Endpoint", "ep-zh-jansen", "matrix:u/j.jansen:", "matrix:u/johan.jansen:")
				put(t, gpDir, endpointJSON("ep-hp-mulder", "active", "matrix:u/eva.mulder:${hs2}"))
				hospDir.SetFailure(c.failure)

				start := time.Now()
				reps := e.sync(e.syncer(opts))
				if time.Since(start) > 8*time.Second {
					t.Errorf("a failing directory held the sync for %v", time.Since(start))
				}
				h := reps[hospital]
				if h.Err == nil || !strings.Contains(h.Err.Error(), c.errPart) {
					t.Fatalf("hospital error: %v, want it to mention %q", h.Err, c.errPart)
				}
				// One line an operator can read: no query, cursor or _since in it.
				if strings.ContainsAny(h.Err.Error(), "?&\n") {
					t.Errorf("hospital error carries a query or line break: %q", h.Err)
				}
				if reps[gp].Err != nil || reps[homecare].Err != nil || reps["lrza"].Err != nil {
					t.Fatalf("other directories failed: %v %v %v", reps[gp].Err, reps[homecare].Err, reps["lrza"].Err)
				}
				if got := e.resolve("uzi", "900023457"); got != "@eva.mulder:"+e.hs("hs2") {
					t.Errorf("the healthy directory's change was not applied: %q", got)
				}
				// What the failing directory had indexed still resolves.
				for uzi, want := range map[string]string{"900012345": "@m.vandenberg:", "900012346": "@j.jansen:"} {
					if got := e.resolve("uzi", uzi); got != want+e.hs("hs1") {
						t.Errorf("uzi %s of the failing directory: %q", uzi, got)
					}
				}
				st := status(t, e, hospital)
				if st.LastError == "" || st.Failures != 1 || !st.NextAttempt.After(time.Now()) {
					t.Errorf("hospital status after failure: %+v", st)
				}

				// Backing off: the next run leaves it alone.
				hospDir.SetFailure(mcsdtest.Failure{})
				reps = e.sync(e.syncer(opts))
				if !strings.Contains(reps[hospital].Skipped, "backing off after 1 failed attempt(s)") {
					t.Errorf("hospital not skipped while backing off: %+v", reps[hospital])
				}
				// An operator's manual sync ignores the backoff and catches up from the old watermark.
				reps = e.sync(e.syncer(opts, func(o *mcsd.Options) { o.IgnoreBackoff = true }))
				if reps[hospital].Err != nil {
					t.Fatalf("healed hospital: %v", reps[hospital].Err)
				}
				if got := e.resolve("uzi", "900012346"); got != "@johan.jansen:"+e.hs("hs1") {
					t.Errorf("the change missed while failing was not applied after healing: %q", got)
				}
				if st := status(t, e, hospital); st.LastError != "" || st.Failures != 0 || !st.NextAttempt.IsZero() {
					t.Errorf("hospital status after recovery: %+v", st)
				}
			})
		})
	}
}

func TestMalformedResourceIsSkipped(t *testing.T) {
	forEngines(t, func(t *testing.T, engine sqlstore.Engine) {
		e := newEnv(t, engine)
		s := e.syncer()
		e.sync(s)
		d := e.srv.Directory(gp)
		// Wrong types inside valid JSON: the entry is rejected, the previous version stays.
		if err := d.PutRaw("Practitioner", "p-hp-dekker", []byte(`{"resourceType":"Practitioner","id":"p-hp-dekker","active":"yes","name":[{"text":"Hans Dekker"}]}`)); err != nil {
			t.Fatal(err)
		}
		if err := d.PutRaw("Endpoint", "ep-hp-x", []byte(`{"resourceType":"Endpoint","id":"../../etc","status":"active","address":"matrix:u/x:hs"}`)); err != nil {
			t.Fatal(err)
		}
		if err := d.PutRaw("Endpoint", "ep-hp-y", []byte(`{"resourceType":"Practitioner","id":"ep-hp-y"}`)); err != nil {
			t.Fatal(err)
		}
		if err := d.PutRaw("Endpoint", "ep-hp-z", []byte(`{"resourceType":"Endpoint","id":"ep-hp-z","status":"active","address":"matrix:u/z\u0000:hs","name":"nul\u0000byte"}`)); err != nil {
			t.Fatal(err)
		}
		put(t, d, endpointJSON("ep-hp-mulder", "active", "matrix:u/eva.mulder:${hs2}"))
		r := e.sync(s)[gp]
		if r.Err != nil {
			t.Fatalf("a malformed resource aborted the sync: %v", r.Err)
		}
		for _, c := range []struct{ typ, id, reason string }{
			{"Practitioner", "p-hp-dekker", "malformed Practitioner"},
			{"Endpoint", "", "invalid id"},
			{"Endpoint", "ep-hp-y", "unexpected Practitioner in the Endpoint history"},
		} {
			if !hasRejection(r, c.typ, c.id, c.reason) {
				t.Errorf("no rejection %+v in %+v", c, r.Rejections)
			}
		}
		if got := e.resolve("uzi", "900023456"); got != "@h.dekker:"+e.hs("hs2") {
			t.Errorf("the last good version of a practitioner was lost: %q", got)
		}
		if got := e.resolve("uzi", "900023457"); got != "@eva.mulder:"+e.hs("hs2") {
			t.Errorf("the good entry after the bad ones was not applied: %q", got)
		}
	})
}

func TestDeterministicRule(t *testing.T) {
	forEngines(t, func(t *testing.T, engine sqlstore.Engine) {
		e := newEnv(t, engine)
		s := e.syncer()
		e.sync(s)
		// Within one care provider the provider's own order decides: the cardiologist gets a
		// second role at the hospital with its own Endpoint, so the most recently updated wins.
		hospDir := e.srv.Directory(hospital)
		put(t, hospDir, endpointJSON("ep-zh-vandenberg-2", "active", "matrix:u/marieke:${hs2}"))
		put(t, hospDir, roleJSON("r-zh-vandenberg-2", "p-zh-vandenberg", "zh-cardiologie", true, "ep-zh-vandenberg-2"))
		e.sync(s)
		if got := e.resolve("uzi", "900012345"); got != "@marieke:"+e.hs("hs2") {
			t.Errorf("most recently updated role: got %q", got)
		}
		setField(t, hospDir, "PractitionerRole", "r-zh-vandenberg", `"active":true`, `"active":true,"availabilityExceptions":"ma-vr"`)
		e.sync(s)
		if got := e.resolve("uzi", "900012345"); got != "@m.vandenberg:"+e.hs("hs1") {
			t.Errorf("after the first role was updated: got %q", got)
		}
		// A role with only a telecom address loses to an older role with an Endpoint.
		setField(t, hospDir, "PractitionerRole", "r-zh-vandenberg-2", `"endpoint":[{"reference":"Endpoint/ep-zh-vandenberg-2"}]`,
			`"telecom":[{"system":"other","value":"matrix:u/marieke.telecom:${hs2}"}]`)
		e.sync(s)
		if got := e.resolve("uzi", "900012345"); got != "@m.vandenberg:"+e.hs("hs1") {
			t.Errorf("role Endpoint must beat a newer telecom: got %q", got)
		}
		// Deterministic: resolving many times gives one answer.
		for range 5 {
			if got := e.resolve("uzi", "900012346"); got != "@j.jansen:"+e.hs("hs1") {
				t.Fatalf("unstable resolution: %q", got)
			}
		}
	})
}

func TestHashedLookupAndRehash(t *testing.T) {
	forEngines(t, func(t *testing.T, engine sqlstore.Engine) {
		e := newEnv(t, engine)
		ctx := context.Background()
		if err := e.idx.Rehash(ctx, "pepper-one"); err != nil {
			t.Fatal(err)
		}
		s := e.syncer()
		e.sync(s) // hashes are made during the sync with the stored pepper
		hashes := func(medium, address, pepper string) []string {
			return threepid.LookupHashes(threepid.ThreePID{Medium: medium, Address: address}, pepper)
		}
		check := func(pepper string, want map[string]string) {
			t.Helper()
			var all []string
			wantByHash := map[string]string{}
			for tp, mxid := range want {
				medium, address, _ := strings.Cut(tp, ":")
				for _, h := range hashes(medium, address, pepper) {
					all = append(all, h)
					wantByHash[h] = mxid
				}
			}
			got, err := e.idx.ResolveHashes(ctx, all)
			if err != nil {
				t.Fatal(err)
			}
			for h, mxid := range wantByHash {
				if got[h] != mxid {
					t.Errorf("pepper %s: hash %s → %q, want %q", pepper, h, got[h], mxid)
				}
			}
		}
		check("pepper-one", map[string]string{
			"uzi:900012345": "@m.vandenberg:" + e.hs("hs1"),
			"ura:17004512":  "@praktijk.delinde:" + e.hs("hs2"),
			"uzi:900012347": "", // inactive role: indexed, but does not resolve
			"uzi:900023456": "@h.dekker:" + e.hs("hs2"),
		})
		// Hashes of a practitioner added later are made with the current pepper.
		d := e.srv.Directory(gp)
		put(t, d, endpointJSON("ep-hp-yilmaz", "active", "matrix:u/s.yilmaz:${hs2}"))
		put(t, d, practitionerJSON("p-hp-yilmaz", "Selin Yilmaz", "900023459"))
		put(t, d, roleJSON("r-hp-yilmaz", "p-hp-yilmaz", "hp-de-linde", true, "ep-hp-yilmaz"))
		e.sync(s)
		check("pepper-one", map[string]string{"uzi:900023459": "@s.yilmaz:" + e.hs("hs2")})

		if err := e.idx.Rehash(ctx, "pepper-two"); err != nil {
			t.Fatal(err)
		}
		check("pepper-two", map[string]string{"uzi:900023459": "@s.yilmaz:" + e.hs("hs2"), "uzi:900034567": "@f.kok:" + e.hs("hs1")})
		check("pepper-one", map[string]string{"uzi:900023459": "", "uzi:900034567": ""})
		// Rehash with the same pepper is idempotent.
		if err := e.idx.Rehash(ctx, "pepper-two"); err != nil {
			t.Fatal(err)
		}
		check("pepper-two", map[string]string{"uzi:900023459": "@s.yilmaz:" + e.hs("hs2")})
		if err := e.idx.Rehash(ctx, ""); err == nil {
			t.Error("Rehash accepted an empty pepper")
		}
	})
}

func TestDirectoryDelistedAndStatus(t *testing.T) {
	forEngines(t, func(t *testing.T, engine sqlstore.Engine) {
		e := newEnv(t, engine)
		ctx := context.Background()
		var mu sync.Mutex
		done := map[string]int{}
		s := e.syncer(func(o *mcsd.Options) {
			o.Progress = func(p mcsd.Progress) {
				if p.Done {
					mu.Lock()
					done[p.Directory]++
					mu.Unlock()
				}
			}
		})
		e.sync(s)
		if len(done) != 4 {
			t.Errorf("progress reported %d directories done: %v", len(done), done)
		}
		st := status(t, e, homecare)
		if !st.Active || st.LastSuccess.IsZero() || st.Counts["Practitioner"] != 3 || st.Counts["PractitionerRole"] != 3 ||
			len(st.Watermarks) != 6 || !slices.Equal(st.URAs, []string{"33007821"}) || st.Origin != "lrza" {
			t.Errorf("home-care status: %+v", st)
		}
		if st := status(t, e, hospital); st.Rejected["PractitionerRole"] != 2 || st.Rejected["Organization"] != 1 {
			t.Errorf("hospital rejected counts: %+v", st.Rejected)
		}

		// The home-care organisation switches its directory Endpoint off at the LRZA.
		setField(t, e.srv.Directory("lrza"), "Endpoint", "lrza-ep-zonnehof", `"status":"active"`, `"status":"off"`)
		reps := e.sync(s)
		if !reps[homecare].Removed {
			t.Fatalf("home-care directory not reported removed: %+v", reps[homecare])
		}
		if got := e.resolve("uzi", "900034567"); got != "" {
			t.Errorf("practitioner of a delisted directory still resolves to %q", got)
		}
		if st := status(t, e, homecare); st.Active || len(st.Watermarks) != 0 || len(st.Counts) != 0 {
			t.Errorf("delisted directory status: %+v", st)
		}
		// Listed again: synced from scratch.
		setField(t, e.srv.Directory("lrza"), "Endpoint", "lrza-ep-zonnehof", `"status":"off"`, `"status":"active"`)
		reps = e.sync(s)
		if reps[homecare].Fetched == 0 || e.resolve("uzi", "900034567") != "@f.kok:"+e.hs("hs1") {
			t.Errorf("re-listed directory: %+v", reps[homecare])
		}
		// The LRZA unreachable: the known directories are kept and still synced.
		e.srv.Directory("lrza").SetFailure(mcsdtest.Failure{Status: 502})
		list, err := e.syncer(func(o *mcsd.Options) { o.IgnoreBackoff = true }).SyncAll(ctx)
		if err != nil {
			t.Fatal(err)
		}
		synced := 0
		for _, r := range list {
			if r.Removed {
				t.Errorf("directory removed while the LRZA was down: %s", r.Directory)
			}
			if r.Kind == "provider" && r.Err == nil && r.Skipped == "" {
				synced++
			}
		}
		if synced != 3 {
			t.Errorf("with the LRZA down, %d provider directories synced: %+v", synced, reps)
		}
	})
}

func TestStaticDirectoryWithoutLRZA(t *testing.T) {
	forEngines(t, func(t *testing.T, engine sqlstore.Engine) {
		e := newEnv(t, engine)
		s := e.syncer(func(o *mcsd.Options) {
			o.LRZA = ""
			o.Directories = []mcsd.StaticDirectory{{BaseURL: e.srv.URL(gp) + "/", URAs: []string{"17004512"}}}
		})
		reps := e.sync(s)
		if len(reps) != 1 || reps[gp].Err != nil {
			t.Fatalf("reports: %+v", reps)
		}
		if got := e.resolve("uzi", "900023457"); got != "@e.mulder:"+e.hs("hs2") {
			t.Errorf("static directory: %q", got)
		}
		// Configured for the wrong URA, everything of the directory is rejected.
		s = e.syncer(func(o *mcsd.Options) {
			o.LRZA = ""
			o.Directories = []mcsd.StaticDirectory{{BaseURL: e.srv.URL(gp), URAs: []string{"99999999"}}}
		})
		r := e.sync(s)[gp]
		if !hasRejection(r, "Organization", "hp-de-linde", "carries URA 17004512") {
			t.Errorf("rejections with a wrong URA: %+v", r.Rejections)
		}
		if got := e.resolve("uzi", "900023457"); got != "" {
			t.Errorf("a directory not authoritative for the URA still resolves: %q", got)
		}
	})
}

func status(t *testing.T, e *env, name string) mcsd.DirectoryStatus {
	t.Helper()
	all, err := e.idx.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range all {
		if st.BaseURL == e.srv.URL(name) {
			return st
		}
	}
	t.Fatalf("no status for %s", name)
	return mcsd.DirectoryStatus{}
}

func TestResetDirectorySweeps(t *testing.T) {
	forEngines(t, func(t *testing.T, engine sqlstore.Engine) {
		e := newEnv(t, engine)
		ctx := context.Background()
		s := e.syncer()
		e.sync(s)
		// The GP practice restores a backup from before Eva Mulder's role existed.
		d := e.srv.Directory(gp)
		d.Purge("PractitionerRole", "r-hp-mulder")
		e.sync(s)
		if got := e.resolve("uzi", "900023457"); got == "" {
			t.Fatal("an incremental sync cannot see a purge; the role should still be indexed")
		}
		if err := e.idx.ResetDirectory(ctx, e.srv.URL(gp)); err != nil {
			t.Fatal(err)
		}
		e.srv.ResetRequests()
		r := e.sync(s)[gp]
		if r.Err != nil || r.Deleted != 1 {
			t.Fatalf("full resync: deleted %d err %v", r.Deleted, r.Err)
		}
		for _, req := range e.srv.Requests() {
			if strings.Contains(req, gp) && strings.Contains(req, "_since=") {
				t.Errorf("after ResetDirectory a request still resumed: %s", req)
			}
		}
		if got := e.resolve("uzi", "900023457"); got != "" {
			t.Errorf("a role missing from the full history still resolves: %q", got)
		}
		if got := e.resolve("uzi", "900023456"); got != "@h.dekker:"+e.hs("hs2") {
			t.Errorf("the rest of the directory was lost: %q", got)
		}
	})
}

func TestPeriodsEndWithoutSync(t *testing.T) {
	forEngines(t, func(t *testing.T, engine sqlstore.Engine) {
		e := newEnv(t, engine)
		ctx := context.Background()
		now := time.Now()
		d := e.srv.Directory(gp)
		end := now.Add(24 * time.Hour).UTC().Format(time.RFC3339)
		put(t, d, fmt.Appendf(nil, `{"resourceType":"Endpoint","id":"ep-hp-locum","status":"active","period":{"end":%q},
			"address":"matrix:u/waarnemer:${hs2}"}`, end))
		put(t, d, practitionerJSON("p-hp-locum", "Waarnemend Huisarts", "900023461"))
		put(t, d, roleJSON("r-hp-locum", "p-hp-locum", "hp-de-linde", true, "ep-hp-locum"))
		s := e.syncer()
		e.sync(s)
		if got := e.resolve("uzi", "900023461"); got != "@waarnemer:"+e.hs("hs2") {
			t.Fatalf("locum before the end of the period: %q", got)
		}
		// Two days later, without any change in the directory, the Endpoint's period is over.
		e.idx.SetClock(func() time.Time { return now.Add(48 * time.Hour) })
		if got := e.resolve("uzi", "900023461"); got != "" {
			t.Errorf("locum after the end of the period: %q", got)
		}
		// The placement pass notices too: the homeserver now comes from the practice itself.
		e.sync(s)
		if cur, _, _, err := e.idx.Homeserver(ctx, "900023461"); err != nil || cur != e.hs("hs2") {
			t.Errorf("placement after the period: %q %v", cur, err)
		}
		p, err := e.idx.SearchPractitioners(ctx, mcsd.PractitionerQuery{Q: "waarnemend"})
		if err != nil || len(p.Results) != 1 || p.Results[0].MXID != "" {
			t.Errorf("search after the period: %+v %v", p, err)
		}
	})
}
