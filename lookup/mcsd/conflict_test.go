package mcsd_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/ozo-platform/ozo-identity/lookup/mcsd"
	"github.com/ozo-platform/ozo-identity/lookup/mcsd/mcsdtest"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
	"github.com/ozo-platform/ozo-identity/threepid"
)

// The attack of issue 10 item 1: a care provider registered in the LRZA for URA 22222222 lists
// a directory that publishes, with meta.lastUpdated in 2099, a PractitionerRole carrying the UZI
// number of another provider's practitioner and an Endpoint of the attacker's.
const (
	victimUZI    = "000000111"
	victimMXID   = "@drecht:hs-a.example"
	attackerMXID = "@mallory:evil.example"
	attackerURA  = "22222222"
	attackerDir  = "mallory"
)

// lrzaListing is what the LRZA publishes for a care provider whose directory is at address.
func lrzaListing(id, ura, name, address string) (org, endpoint []byte) {
	org = fmt.Appendf(nil, `{"resourceType":"Organization","id":"lrza-org-%[1]s","active":true,"name":%[3]q,
		"identifier":[{"system":"http://fhir.nl/fhir/NamingSystem/ura","value":%[2]q}],
		"endpoint":[{"reference":"Endpoint/lrza-ep-%[1]s"}]}`, id, ura, name)
	endpoint = fmt.Appendf(nil, `{"resourceType":"Endpoint","id":"lrza-ep-%s","status":"active",
		"connectionType":{"system":"http://terminology.hl7.org/CodeSystem/endpoint-connection-type","code":"hl7-fhir-rest"},
		"payloadType":[{"coding":[{"code":%q}]}],"address":%q}`, id, mcsd.DirectoryPayloadTypes[0], address)
	return org, endpoint
}

// attackerRole is the attacker's PractitionerRole, served verbatim with its lastUpdated of 2099.
func attackerRole(version int, note string) []byte {
	return fmt.Appendf(nil, `{"resourceType":"PractitionerRole","id":"r-mal","meta":{"versionId":"%d","lastUpdated":"2099-01-01T00:00:00Z"},
		"active":true,"identifier":[{"system":"http://fhir.nl/fhir/NamingSystem/uzi-nr-pers","value":%q}],
		"organization":{"reference":"Organization/mal-org"},"endpoint":[{"reference":"Endpoint/ep-mal"}],"availabilityExceptions":%q}`,
		version, victimUZI, note)
}

// startAttack lists the attacker's directory in the LRZA and fills it.
func startAttack(t *testing.T, srv *mcsdtest.Server) *mcsdtest.Directory {
	t.Helper()
	org, ep := lrzaListing("mallory", attackerURA, "Zorggroep Mallory", srv.URL(attackerDir))
	lrza := srv.Directory("lrza")
	put(t, lrza, org)
	put(t, lrza, ep)
	d := srv.Directory(attackerDir)
	put(t, d, []byte(`{"resourceType":"Organization","id":"mal-org","active":true,"name":"Mallory",
		"identifier":[{"system":"http://fhir.nl/fhir/NamingSystem/ura","value":"22222222"}]}`))
	put(t, d, endpointJSON("ep-mal", "active", "matrix:u/mallory:evil.example"))
	if err := d.PutRaw("PractitionerRole", "r-mal", attackerRole(1, "")); err != nil {
		t.Fatal(err)
	}
	return d
}

// publishVictim has the GP practice publish the real practitioner.
func publishVictim(t *testing.T, srv *mcsdtest.Server) {
	t.Helper()
	d := srv.Directory(gp)
	put(t, d, endpointJSON("ep-hp-drecht", "active", "matrix:u/drecht:hs-a.example"))
	put(t, d, practitionerJSON("p-hp-drecht", "Daan Drecht", victimUZI))
	put(t, d, roleJSON("r-hp-drecht", "p-hp-drecht", "hp-de-linde", true, "ep-hp-drecht"))
}

// logBuffer collects what the syncer logs.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) count(parts ...string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, line := range strings.Split(l.buf.String(), "\n") {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all && line != "" {
			n++
		}
	}
	return n
}

func TestConflictingDirectoryCannotTakeOverUZI(t *testing.T) {
	forEngines(t, func(t *testing.T, engine sqlstore.Engine) {
		e := newEnv(t, engine)
		ctx := context.Background()
		const pepper = "conflict-pepper"
		if err := e.idx.Rehash(ctx, pepper); err != nil {
			t.Fatal(err)
		}
		logs := &logBuffer{}
		var moves atomic.Int64
		s := e.syncer(func(o *mcsd.Options) {
			o.Logger = slog.New(slog.NewTextHandler(logs, nil))
			o.OnMove = func(context.Context, mcsd.Move) { moves.Add(1) }
		})
		publishVictim(t, e.srv)
		e.sync(s)
		tp := threepid.ThreePID{Medium: "uzi", Address: victimUZI}
		hashes := threepid.LookupHashes(tp, pepper)
		hashed := func() map[string]string {
			t.Helper()
			got, err := e.idx.ResolveHashes(ctx, hashes)
			if err != nil {
				t.Fatal(err)
			}
			return got
		}
		if got := e.resolve("uzi", victimUZI); got != victimMXID {
			t.Fatalf("before the attack: %q", got)
		}
		earlier := map[string]string{"900012345": "@m.vandenberg:" + e.hs("hs1"), "900034567": "@f.kok:" + e.hs("hs1")}

		// The attack.
		mal := startAttack(t, e.srv)
		reps := e.sync(s)
		if r := reps[attackerDir]; r.Err != nil || r.Fetched == 0 || hasRejection(r, "PractitionerRole", "r-mal", "") {
			t.Fatalf("the attacker's directory must sync and count (the URA is its own): %+v", r)
		}
		if got := e.resolve("uzi", victimUZI); got != "" {
			t.Errorf("lookup answered %q during the conflict", got)
		}
		for h, mxid := range hashed() {
			if mxid != "" {
				t.Errorf("hashed lookup answered %s → %q during the conflict", h, mxid)
			}
		}
		claims, err := e.idx.Claims(ctx, victimUZI)
		if err != nil {
			t.Fatal(err)
		}
		want := []mcsd.Claim{
			{URA: "17004512", Organization: "Huisartsenpraktijk De Linde", MXID: victimMXID, Homeserver: "hs-a.example"},
			{URA: attackerURA, Organization: "Zorggroep Mallory", MXID: attackerMXID, Homeserver: "evil.example"},
		}
		if fmt.Sprint(claims) != fmt.Sprint(want) {
			t.Errorf("claims:\n got %+v\nwant %+v", claims, want)
		}
		conflicts, err := e.idx.Conflicts(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(conflicts) != 1 || conflicts[0].Address != victimUZI || fmt.Sprint(conflicts[0].Claims) != fmt.Sprint(want) {
			t.Errorf("recorded conflicts: %+v", conflicts)
		}
		// A conflict moves nobody: the placement stays where the real directory put it.
		if cur, prev, _, err := e.idx.Homeserver(ctx, victimUZI); err != nil || cur != "hs-a.example" || prev != "" {
			t.Errorf("placement during the conflict: %q %q %v", cur, prev, err)
		}
		if n := moves.Load(); n != 0 {
			t.Errorf("%d moves reported for a conflict", n)
		}
		if n := logs.count("level=WARN", "uzi="+victimUZI); n != 1 {
			t.Errorf("want one warning for the new conflict, got %d:\n%s", n, logs.buf.String())
		}
		for uzi, mxid := range earlier {
			if got := e.resolve("uzi", uzi); got != mxid {
				t.Errorf("uzi %s: %q, want %q: earlier resolutions must be intact", uzi, got, mxid)
			}
		}

		// The attacker changes its claim: still the same conflict, logged once.
		if err := mal.PutRaw("PractitionerRole", "r-mal", attackerRole(2, "ma-vr")); err != nil {
			t.Fatal(err)
		}
		if r := e.sync(s)[attackerDir]; r.Applied != 1 {
			t.Fatalf("the attacker's change was not applied: %+v", r)
		}
		if got := e.resolve("uzi", victimUZI); got != "" {
			t.Errorf("lookup answered %q during the conflict", got)
		}
		if n := logs.count("level=WARN", "uzi="+victimUZI); n != 1 {
			t.Errorf("a known conflict was logged again: %d warnings", n)
		}

		// The attacker withdraws: its delete is newer than its "2099" version, which counted as
		// fetched when it was, so the real practitioner resolves again.
		mal.Delete("PractitionerRole", "r-mal")
		if r := e.sync(s)[attackerDir]; r.Deleted != 1 {
			t.Fatalf("the withdrawal was not applied (a future lastUpdated won?): %+v", r)
		}
		if got := e.resolve("uzi", victimUZI); got != victimMXID {
			t.Errorf("after the withdrawal: %q", got)
		}
		if got := hashed(); len(got) != len(hashes) || got[hashes[0]] != victimMXID {
			t.Errorf("hashed lookup after the withdrawal: %v", got)
		}
		if c, err := e.idx.Conflicts(ctx); err != nil || len(c) != 0 {
			t.Errorf("conflicts after the withdrawal: %+v %v", c, err)
		}
		if c, err := e.idx.Claims(ctx, victimUZI); err != nil || c != nil {
			t.Errorf("claims after the withdrawal: %+v %v", c, err)
		}
		if n := logs.count("level=INFO", "resolved", "uzi="+victimUZI); n != 1 {
			t.Errorf("want the resolution logged once, got %d", n)
		}
		if moves.Load() != 0 {
			t.Error("the conflict and its end reported a move")
		}
		for uzi, mxid := range earlier {
			if got := e.resolve("uzi", uzi); got != mxid {
				t.Errorf("uzi %s: %q, want %q", uzi, got, mxid)
			}
		}

		// A practitioner working for two care providers with one Matrix user is no conflict.
		hc := e.srv.Directory(homecare)
		put(t, hc, endpointJSON("ep-tz-drecht", "active", "matrix:u/drecht:hs-a.example"))
		put(t, hc, practitionerJSON("p-tz-drecht", "Daan Drecht", victimUZI))
		put(t, hc, roleJSON("r-tz-drecht", "p-tz-drecht", "tz-zonnehof", true, "ep-tz-drecht"))
		e.sync(s)
		if got := e.resolve("uzi", victimUZI); got != victimMXID {
			t.Errorf("same user published by two providers: %q", got)
		}
		if c, err := e.idx.Conflicts(ctx); err != nil || len(c) != 0 {
			t.Errorf("same user published by two providers made a conflict: %+v %v", c, err)
		}
	})
}

// A meta.lastUpdated in the future counts as the time it was first fetched, so inside one care
// provider's directory it does not beat a role updated afterwards, even when a history (whose
// _since is inclusive) serves it again.
func TestFutureLastUpdatedCountsAsFetchTime(t *testing.T) {
	forEngines(t, func(t *testing.T, engine sqlstore.Engine) {
		e := newEnv(t, engine)
		s := e.syncer()
		publishVictim(t, e.srv)
		d := e.srv.Directory(gp)
		put(t, d, endpointJSON("ep-hp-drecht-old", "active", "matrix:u/drecht.old:hs-a.example"))
		if err := d.PutRaw("PractitionerRole", "r-hp-drecht-old", []byte(`{"resourceType":"PractitionerRole","id":"r-hp-drecht-old",
			"meta":{"versionId":"1","lastUpdated":"2099-01-01T00:00:00Z"},"active":true,
			"practitioner":{"reference":"Practitioner/p-hp-drecht"},"organization":{"reference":"Organization/hp-de-linde"},
			"endpoint":[{"reference":"Endpoint/ep-hp-drecht-old"}]}`)); err != nil {
			t.Fatal(err)
		}
		e.sync(s)
		setField(t, d, "PractitionerRole", "r-hp-drecht", `"active":true`, `"active":true,"availabilityExceptions":"ma-vr"`)
		e.sync(s)
		if got := e.resolve("uzi", victimUZI); got != victimMXID {
			t.Errorf("the role updated after the 2099 one must win: got %q", got)
		}
	})
}

// Directories the LRZA lists must be https unless the operator allows plain http for them.
func TestPlainHTTPDirectoryRefused(t *testing.T) {
	forEngines(t, func(t *testing.T, engine sqlstore.Engine) {
		e := newEnv(t, engine)
		ctx := context.Background()
		var hits atomic.Int64
		plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			hits.Add(1)
			w.Header().Set("Content-Type", "application/fhir+json")
			fmt.Fprint(w, `{"resourceType":"Bundle","type":"history","entry":[]}`)
		}))
		defer plain.Close()
		base := plain.URL + "/fhir"
		org, ep := lrzaListing("plain", "33333333", "Praktijk Zonder TLS", base)
		put(t, e.srv.Directory("lrza"), org)
		put(t, e.srv.Directory("lrza"), ep)

		logs := &logBuffer{}
		logged := e.syncer(func(o *mcsd.Options) { o.Logger = slog.New(slog.NewTextHandler(logs, nil)) })
		e.sync(logged)
		reps := e.sync(logged)
		if n := logs.count("level=WARN", "refused", "directory="+base); n != 1 {
			t.Errorf("want the refusal logged once over two syncs, got %d:\n%s", n, logs.buf.String())
		}
		var refused *mcsd.DirectoryReport
		for _, r := range reps {
			if r.Directory == base {
				refused = &r
			}
		}
		if refused == nil || !strings.Contains(refused.Refused, "plain http") || refused.Fetched != 0 {
			t.Fatalf("plain-http directory not reported as refused: %+v", refused)
		}
		if n := hits.Load(); n != 0 {
			t.Fatalf("a refused directory was fetched %d times", n)
		}
		for _, name := range []string{hospital, gp, homecare} {
			if r := reps[name]; r.Err != nil || r.Refused != "" {
				t.Errorf("%s: %+v", name, r)
			}
		}
		status, err := e.idx.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, st := range status {
			if st.BaseURL == base {
				found = true
				if st.Active || !strings.Contains(st.Refused, "plain http") {
					t.Errorf("status of the refused directory: %+v", st)
				}
			}
		}
		if !found {
			t.Error("status does not show the refused directory")
		}
		if got := e.resolve("uzi", "900012345"); got != "@m.vandenberg:"+e.hs("hs1") {
			t.Errorf("https directories must still resolve: %q", got)
		}

		// Allowed by the operator: fetched, and no longer refused.
		reps = e.sync(e.syncer(func(o *mcsd.Options) { o.AllowHTTP = []string{base + "/"} }))
		var allowed *mcsd.DirectoryReport
		for _, r := range reps {
			if r.Directory == base {
				allowed = &r
			}
		}
		if allowed == nil || allowed.Refused != "" || allowed.Err != nil || hits.Load() == 0 {
			t.Fatalf("allowed plain-http directory: %+v, %d requests", allowed, hits.Load())
		}
		status, err = e.idx.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, st := range status {
			if st.BaseURL == base && (!st.Active || st.Refused != "") {
				t.Errorf("status after allowing: %+v", st)
			}
		}

		// Taken off the allow-list again: removed from the index and refused.
		reps = e.sync(e.syncer())
		for _, r := range reps {
			if r.Directory == base && (r.Refused == "" || r.Removed) {
				t.Errorf("after the allow-list was emptied: %+v", r)
			}
		}
	})
}
