package mcsd_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/ozo-platform/ozo-identity/lookup/mcsd"
	"github.com/ozo-platform/ozo-identity/lookup/mcsd/mcsdtest"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore/dbtest"
	"github.com/ozo-platform/ozo-identity/threepid"
)

// An index kept up to date by incremental syncs must be exactly the index a full sync of the same
// data builds: the incremental paths (changed rows only, candidates compared, placements only
// for the UZI numbers whose candidates changed) may skip work, never results. Several rounds of
// changes of every kind (moves, renames, roles ended and restored, new practitioners, services,
// locations, departments, a conflict arising and ending) are synced incrementally into one
// database and in full into a fresh one, and the two are compared table by table.
func TestIncrementalSyncEqualsFullSync(t *testing.T) {
	const dirs, per = 12, 8
	for _, engine := range dbtest.Engines {
		t.Run(string(engine), func(t *testing.T) {
			ctx := context.Background()
			srv := mcsdtest.Start(t, mcsdtest.Options{Empty: true, PageSize: 7})
			benchFill(t, srv, dirs, per)
			sync := func(db *sqlstore.DB) {
				t.Helper()
				// Small pages and flushes, so that a directory is written in several transactions too.
				s := mcsd.NewSyncer(mcsd.NewIndex(db), mcsd.Options{LRZA: srv.LRZAURL(), Client: srv.Client(), PageSize: 5, IgnoreBackoff: true})
				reps, err := s.SyncAll(ctx)
				if err != nil {
					t.Fatal(err)
				}
				for _, r := range reps {
					if r.Err != nil {
						t.Fatalf("%s: %v", r.Directory, r.Err)
					}
				}
			}
			open := func() *sqlstore.DB {
				db := dbtest.Open(t, engine)
				if err := mcsd.NewIndex(db).Rehash(ctx, "test-pepper"); err != nil {
					t.Fatal(err)
				}
				return db
			}
			inc := open()
			sync(inc)
			rnd := rand.New(rand.NewPCG(7, 11))
			conflicted := benchUZI(0, 1)
			for round := 1; round <= 4; round++ {
				// 5 % of the resources per round, so that every kind of change occurs.
				benchChange(t, srv, rnd, round, dirs, per, 5)
				switch round {
				case 2: // directory 3 publishes directory 0's practitioner with another user: a conflict
					benchPut(t, srv.Directory("zorg-0003"), `{"resourceType":"Endpoint","id":"ep-x","status":"active","connectionType":{"code":"matrix"},
						"address":"matrix:u/someone-else:hs9.example.nl"}`)
					benchPut(t, srv.Directory("zorg-0003"), `{"resourceType":"Practitioner","id":"p-x","active":true,
						"identifier":[{"system":"http://fhir.nl/fhir/NamingSystem/uzi-nr-pers","value":"%s"}],"name":[{"text":"Dubbel"}]}`, conflicted)
					benchPut(t, srv.Directory("zorg-0003"), `{"resourceType":"PractitionerRole","id":"r-x","active":true,
						"practitioner":{"reference":"Practitioner/p-x"},"organization":{"reference":"Organization/org"},"endpoint":[{"reference":"Endpoint/ep-x"}]}`)
				case 4: // and ends it
					srv.Directory("zorg-0003").Delete("PractitionerRole", "r-x")
				}
				sync(inc)
				if round == 3 {
					conflicts, err := mcsd.NewIndex(inc).Conflicts(ctx)
					if err != nil || len(conflicts) != 1 || conflicts[0].Address != conflicted {
						t.Fatalf("round 3: conflicts %v, %v; want one over %s", conflicts, err, conflicted)
					}
				}
				full := open()
				sync(full)
				if diff := diffIndexes(t, inc, full); diff != "" {
					t.Fatalf("round %d: the incrementally synced index differs from a full sync of the same data:\n%s", round, diff)
				}
			}
			// And they answer alike, hashed or not.
			var tps []threepid.ThreePID
			for d := range dirs {
				for p := range per {
					tps = append(tps, threepid.ThreePID{Medium: "uzi", Address: benchUZI(d, p)})
				}
			}
			got, err := mcsd.NewIndex(inc).Resolve(ctx, tps)
			if err != nil || len(got) < len(tps)/2 {
				t.Fatalf("resolve: %d of %d, %v", len(got), len(tps), err)
			}
		})
	}
}

// diffIndexes compares what two indexes hold, leaving out what records when something happened
// or what was before: sync runs, times of attempts and placements, where a practitioner was
// placed before (an emptied placement keeps the previous homeserver for localisation, and a
// conflict keeps the placement it found; the conflicts themselves are compared), and the
// columns a validation derived for a resource before it was deleted (nothing reads a
// tombstone's).
func diffIndexes(t *testing.T, a, b *sqlstore.DB) string {
	t.Helper()
	live := func(col string) string { return "CASE WHEN r.deleted = 0 THEN " + col + " END" }
	queries := []string{
		`SELECT d.base_url, r.type, r.id, r.version_id, r.version_ts, r.deleted, r.active, r.mxid, r.homeserver, r.kind, r.name, ` +
			strings.Join([]string{live("r.eff_active"), live("r.reason"), live("r.root_id"), live("r.root_ura"), live("r.display_name")}, ", ") +
			` FROM mcsd_resources r JOIN mcsd_directories d ON d.id = r.dir`,
		`SELECT d.base_url, f.from_type, f.from_id, f.kind, f.to_id FROM mcsd_refs f JOIN mcsd_directories d ON d.id = f.dir`,
		`SELECT d.base_url, i.type, i.id, i.kind, i.value FROM mcsd_identifiers i JOIN mcsd_directories d ON d.id = i.dir`,
		`SELECT d.base_url, x.medium, x.address, x.mxid, x.homeserver, x.pref, x.updated, x.source_id, x.not_before, x.not_after, x.ura
			FROM mcsd_addresses x JOIN mcsd_directories d ON d.id = x.dir`,
		`SELECT d.base_url, h.hash, h.medium, h.address FROM mcsd_hashes h JOIN mcsd_directories d ON d.id = h.dir`,
		`SELECT uzi, homeserver, mxid FROM mcsd_placements WHERE homeserver <> '' AND uzi NOT IN (SELECT address FROM mcsd_conflicts)`,
		`SELECT medium, address, claims FROM mcsd_conflicts`,
		`SELECT medium, address FROM mcsd_dirty`,
		`SELECT COUNT(*) FROM mcsd_addresses_next`,
		`SELECT d.base_url, d.active, d.dirty, d.resource_count FROM mcsd_directories d`,
	}
	var out strings.Builder
	for _, q := range queries {
		ra, rb := dumpRows(t, a, q), dumpRows(t, b, q)
		if slices.Equal(ra, rb) {
			continue
		}
		fmt.Fprintf(&out, "%s\n", strings.Join(strings.Fields(q), " "))
		for _, r := range ra {
			if _, ok := slices.BinarySearch(rb, r); !ok {
				fmt.Fprintf(&out, "  only incremental: %s\n", r)
			}
		}
		for _, r := range rb {
			if _, ok := slices.BinarySearch(ra, r); !ok {
				fmt.Fprintf(&out, "  only full:        %s\n", r)
			}
		}
	}
	return out.String()
}

func dumpRows(t *testing.T, db *sqlstore.DB, q string) []string {
	t.Helper()
	rows, err := db.QueryContext(context.Background(), q)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	var out []string
	for rows.Next() {
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		parts := make([]string, len(vals))
		for i, v := range vals {
			if b, ok := v.([]byte); ok {
				v = string(b)
			}
			parts[i] = fmt.Sprint(v)
		}
		out = append(out, strings.Join(parts, " | "))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}
