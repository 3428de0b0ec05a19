package mcsd_test

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/lookup/mcsd"
	"github.com/ozo-platform/ozo-identity/lookup/mcsd/mcsdtest"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore/dbtest"
	"github.com/ozo-platform/ozo-identity/threepid"
)

// The benchmark fixture: an LRZA listing benchDirs provider directories, each publishing all six
// mCSD resource types like a care provider does (see benchFill); about 100,000 resources.
const (
	benchDirs          = 1000
	benchPerDirectory  = 30 // practitioners per directory, each with a role and an Endpoint
	benchChangePercent = 1
)

var givenNames = []string{"Anna", "Bram", "Chantal", "Daan", "Emma", "Fleur", "Gijs", "Hanna", "Ilse", "Jeroen", "Karin", "Lars", "Mila", "Noah", "Olga", "Pim"}
var familyNames = []string{"de Jong", "Jansen", "de Vries", "van den Berg", "van Dijk", "Bakker", "Janssen", "Visser", "Smit", "Meijer", "de Boer", "Mulder"}
var cities = []string{"Amsterdam", "Rotterdam", "Utrecht", "Deventer", "Zwolle", "Groningen", "Maastricht", "Leiden"}

// benchServer publishes the fixture from a local HTTPS test server.
func benchServer(b *testing.B, dirs, perDirectory int) *mcsdtest.Server {
	srv := mcsdtest.Start(b, mcsdtest.Options{Empty: true})
	benchFill(b, srv, dirs, perDirectory)
	return srv
}

func benchPut(tb testing.TB, dir *mcsdtest.Directory, format string, args ...any) {
	if _, err := dir.Put(fmt.Appendf(nil, format, args...)); err != nil {
		tb.Fatal(err)
	}
}

func benchURA(d int) string { return fmt.Sprintf("%08d", 20000000+d) }

func benchUZI(d, p int) string { return fmt.Sprintf("%09d", 100000000+d*1000+p) }

// benchFill publishes dirs provider directories in an LRZA (an Organization with the URA and an
// mCSD directory Endpoint each). Each directory holds the care provider's Organization with a
// homeserver Endpoint, a department (partOf), two Locations, two HealthcareServices with a team
// account Endpoint each and perDirectory practitioners: Practitioner (UZI and BIG), a
// PractitionerRole in the department or the organisation, at a Location, in a service, with an
// Endpoint carrying the Matrix user. 9 + 3·perDirectory resources per directory, 2 in the LRZA.
func benchFill(tb testing.TB, srv *mcsdtest.Server, dirs, perDirectory int) {
	lrza := srv.Directory("lrza")
	for d := range dirs {
		name := fmt.Sprintf("zorg-%04d", d)
		ura := benchURA(d)
		benchPut(tb, lrza, `{"resourceType":"Organization","id":"org-%[1]s","identifier":[{"system":"http://fhir.nl/fhir/NamingSystem/ura","value":"%[1]s"}],
			"name":"Zorgaanbieder %[1]s","active":true,"endpoint":[{"reference":"Endpoint/ep-%[1]s"}]}`, ura)
		benchPut(tb, lrza, `{"resourceType":"Endpoint","id":"ep-%s","status":"active","connectionType":{"code":"hl7-fhir-rest"},
			"payloadType":[{"coding":[{"code":"http://nuts-foundation.github.io/nl-generic-functions-ig/CapabilityStatement/nl-gf-admin-directory-update-client"}]}],
			"address":"%s"}`, ura, srv.URL(name))
		dir := srv.Directory(name)
		hs := fmt.Sprintf("hs%d.example.nl", d%2+1)
		city := cities[d%len(cities)]
		benchPut(tb, dir, `{"resourceType":"Organization","id":"org","identifier":[{"system":"http://fhir.nl/fhir/NamingSystem/ura","value":"%s"},
			{"system":"http://fhir.nl/fhir/NamingSystem/agb-z","value":"%08d"}],"active":true,
			"type":[{"coding":[{"system":"http://nictiz.nl/fhir/NamingSystem/organization-type","code":"Z3","display":"Huisartspraktijk"}]}],
			"name":"Zorgaanbieder %s","address":[{"use":"work","line":["Dorpsstraat %d"],"city":"%s"}],"endpoint":[{"reference":"Endpoint/ep-hs"}]}`,
			ura, 1000000+d, ura, d, city)
		benchPut(tb, dir, `{"resourceType":"Endpoint","id":"ep-hs","status":"active","connectionType":{"code":"matrix-homeserver"},
			"payloadType":[{"coding":[{"code":"matrix-homeserver"}]}],"address":"https://%s"}`, hs)
		benchPut(tb, dir, `{"resourceType":"Organization","id":"dept","active":true,"name":"Afdeling zorg %d","partOf":{"reference":"Organization/org"}}`, d)
		for l := range 2 {
			benchPut(tb, dir, `{"resourceType":"Location","id":"loc-%d","status":"active","name":"Locatie %s %d","mode":"instance",
				"address":{"use":"work","line":["Laan %d"],"city":"%s"},"managingOrganization":{"reference":"Organization/org"}}`, l, city, l, l+1, city)
			benchPut(tb, dir, `{"resourceType":"HealthcareService","id":"hcs-%d","active":true,"providedBy":{"reference":"Organization/dept"},
				"type":[{"text":"Team %d"}],"name":"Team %d","location":[{"reference":"Location/loc-%d"}],"endpoint":[{"reference":"Endpoint/ep-team-%d"}]}`, l, l, l, l, l)
			benchPut(tb, dir, `{"resourceType":"Endpoint","id":"ep-team-%d","status":"active","connectionType":{"code":"matrix"},
				"address":"matrix:u/team%d-%04d:%s"}`, l, l, d, hs)
		}
		for p := range perDirectory {
			benchPractitioner(tb, dir, d, p, hs, "")
		}
	}
}

// benchPractitioner publishes one practitioner: Practitioner, PractitionerRole and Endpoint.
func benchPractitioner(tb testing.TB, dir *mcsdtest.Directory, d, p int, hs, suffix string) {
	uzi := benchUZI(d, p)
	given, family := givenNames[p%len(givenNames)], familyNames[(d+p)%len(familyNames)]
	org := "org"
	if p%2 == 1 {
		org = "dept"
	}
	benchPut(tb, dir, `{"resourceType":"Endpoint","id":"ep-%d","status":"active","connectionType":{"code":"matrix"},
		"address":"matrix:u/u%s%s:%s"}`, p, uzi, suffix, hs)
	benchPut(tb, dir, `{"resourceType":"Practitioner","id":"p-%d","active":true,
		"identifier":[{"system":"http://fhir.nl/fhir/NamingSystem/uzi-nr-pers","value":"%s"},{"system":"http://fhir.nl/fhir/NamingSystem/big","value":"%011d"}],
		"name":[{"use":"official","text":"%s %s%s","family":"%s","given":["%s"]}]}`,
		p, uzi, 19000000000+d*1000+p, given, family, suffix, family, given)
	benchPut(tb, dir, `{"resourceType":"PractitionerRole","id":"r-%d","active":true,"practitioner":{"reference":"Practitioner/p-%d"},
		"organization":{"reference":"Organization/%s"},
		"code":[{"coding":[{"system":"http://fhir.nl/fhir/NamingSystem/uzi-rolcode","code":"01.015","display":"Huisarts"}]}],
		"location":[{"reference":"Location/loc-%d"}],"healthcareService":[{"reference":"HealthcareService/hcs-%d"}],
		"endpoint":[{"reference":"Endpoint/ep-%d"}]}`, p, p, org, p%2, p%2, p)
}

// benchChange publishes changes to pct % of the fixture's resources, spread over the directories
// and all resource types: practitioners moving to another homeserver, renamed practitioners,
// roles ended and restored, new practitioners, renamed services and locations, a department
// moving under another parent. It returns how many resources it changed.
func benchChange(tb testing.TB, srv *mcsdtest.Server, rnd *rand.Rand, round, dirs, perDirectory int, pct float64) int {
	total := dirs * (9 + 3*perDirectory)
	n := int(float64(total) * pct / 100)
	changed := 0
	for changed < n {
		d, p := rnd.IntN(dirs), rnd.IntN(perDirectory)
		dir := srv.Directory(fmt.Sprintf("zorg-%04d", d))
		uzi := benchUZI(d, p)
		switch k := rnd.IntN(20); {
		case k < 7: // moved to another homeserver
			benchPut(tb, dir, `{"resourceType":"Endpoint","id":"ep-%d","status":"active","connectionType":{"code":"matrix"},
				"address":"matrix:u/u%s-r%d:hs3.example.nl"}`, p, uzi, round)
			changed++
		case k < 12: // renamed
			benchPut(tb, dir, `{"resourceType":"Practitioner","id":"p-%d","active":true,
				"identifier":[{"system":"http://fhir.nl/fhir/NamingSystem/uzi-nr-pers","value":"%s"}],
				"name":[{"use":"official","text":"Hernoemd %d %s"}]}`, p, uzi, round, givenNames[p%len(givenNames)])
			changed++
		case k < 16: // role ended, or restored
			if dir.Get("PractitionerRole", fmt.Sprintf("r-%d", p)) == nil {
				benchPut(tb, dir, `{"resourceType":"PractitionerRole","id":"r-%d","active":true,
					"practitioner":{"reference":"Practitioner/p-%d"},"organization":{"reference":"Organization/org"},
					"endpoint":[{"reference":"Endpoint/ep-%d"}]}`, p, p, p)
			} else {
				dir.Delete("PractitionerRole", fmt.Sprintf("r-%d", p))
			}
			changed++
		case k < 18: // a new practitioner joins
			benchPractitioner(tb, dir, d, perDirectory+(round*perDirectory+p)%(1000-perDirectory), "hs2.example.nl", "")
			changed += 3
		case k < 19: // a service or location renamed
			l := p % 2
			if p%4 < 2 {
				benchPut(tb, dir, `{"resourceType":"HealthcareService","id":"hcs-%d","active":true,"providedBy":{"reference":"Organization/dept"},
					"name":"Team %d ronde %d","location":[{"reference":"Location/loc-%d"}],"endpoint":[{"reference":"Endpoint/ep-team-%d"}]}`, l, l, round, l, l)
			} else {
				benchPut(tb, dir, `{"resourceType":"Location","id":"loc-%d","status":"active","name":"Locatie %d ronde %d",
					"address":{"city":"%s"},"managingOrganization":{"reference":"Organization/org"}}`, l, l, round, cities[round%len(cities)])
			}
			changed++
		default: // the department renamed
			benchPut(tb, dir, `{"resourceType":"Organization","id":"dept","active":true,"name":"Afdeling %d ronde %d","partOf":{"reference":"Organization/org"}}`, d, round)
			changed++
		}
	}
	return changed
}

// measure runs fn and returns the highest Go heap in use seen while it ran (sampled every 20 ms)
// and the process's peak resident set during it (Linux; 0 elsewhere), which also counts the
// SQLite page cache that the pure-Go driver allocates outside the Go heap.
func measure(fn func()) (peakHeap, peakRSS uint64) {
	// Writing 5 to clear_refs resets the peak resident set (VmHWM) to the current one.
	os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
	var peak atomic.Uint64
	sample := func() {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		if ms.HeapInuse > peak.Load() {
			peak.Store(ms.HeapInuse)
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				sample()
			}
		}
	}()
	fn()
	close(stop)
	wg.Wait()
	sample()
	if status, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, line := range strings.Split(string(status), "\n") {
			if kb, ok := strings.CutPrefix(line, "VmHWM:"); ok {
				n, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(kb), "kB")), 10, 64)
				peakRSS = n << 10
			}
		}
	}
	return peak.Load(), peakRSS
}

func heapInuse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

func benchSync(b *testing.B, s *mcsd.Syncer) (fetched int) {
	reps, err := s.SyncAll(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	for _, r := range reps {
		if r.Err != nil {
			b.Fatalf("%s: %v", r.Directory, r.Err)
		}
		fetched += r.Fetched
	}
	return fetched
}

// report adds the figures of one timed sync to the benchmark.
func report(b *testing.B, fetched int, elapsed time.Duration, baseHeap, peakHeap, peakRSS uint64) {
	b.ReportMetric(float64(fetched), "entries")
	b.ReportMetric(float64(fetched)/elapsed.Seconds(), "entries/s")
	b.ReportMetric(float64(baseHeap)/(1<<20), "base-heap-MB")
	b.ReportMetric(float64(peakHeap)/(1<<20), "peak-heap-MB")
	b.ReportMetric(float64(peakRSS)/(1<<20), "peak-RSS-MB")
}

// benchClient is the test server's client with enough connections kept open: one host serves
// every directory here.
func benchClient(srv *mcsdtest.Server) *http.Client {
	client := *srv.Client()
	tr := client.Transport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 64
	client.Transport = tr
	return &client
}

func benchSyncer(db mcsd.Store, srv *mcsdtest.Server, client *http.Client) *mcsd.Syncer {
	return mcsd.NewSyncer(mcsd.NewIndex(db), mcsd.Options{LRZA: srv.LRZAURL(), Client: client})
}

// timedSync runs one timed sync and reports it, with the CPU time of this process (the test
// server's HTTPS and JSON included) and of the PostgreSQL backends serving db; the store's time
// per method goes to the log.
func timedSync(b *testing.B, db *sqlstore.DB, srv *mcsdtest.Server, client *http.Client) {
	ts := &timedStore{Store: db}
	s := benchSyncer(ts, srv, client)
	base := heapInuse()
	pgBefore := pgCPU(b, db)
	goBefore := processCPU()
	b.StartTimer()
	start := time.Now()
	var fetched int
	peak, rss := measure(func() { fetched = benchSync(b, s) })
	elapsed := time.Since(start)
	b.StopTimer()
	report(b, fetched, elapsed, base, peak, rss)
	b.ReportMetric((processCPU() - goBefore).Seconds(), "go-cpu-s")
	if db.Engine == sqlstore.Postgres {
		b.ReportMetric((pgCPU(b, db) - pgBefore).Seconds(), "pg-cpu-s")
	}
	b.Logf("%s in %s; store time by method (summed over the concurrent directories): %s", b.Name(), elapsed.Round(time.Millisecond), ts)
}

// processCPU is the CPU time this process used so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// pgCPU is the CPU time used so far by the PostgreSQL backends of db's pool (Linux, server on
// this machine): every connection the pool may open is taken, asked for its backend's pid, and
// the backend's utime and stime read from /proc. The pool keeps its connections (idle = open),
// so the backends that served a sync are still there after it.
func pgCPU(b *testing.B, db *sqlstore.DB) time.Duration {
	if db.Engine != sqlstore.Postgres {
		return 0
	}
	ctx := context.Background()
	var conns []*sql.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	var total time.Duration
	for range db.Stats().MaxOpenConnections {
		c, err := db.Conn(ctx)
		if err != nil {
			b.Fatal(err)
		}
		conns = append(conns, c)
		var pid int
		if err := c.QueryRowContext(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
			b.Fatal(err)
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return 0 // not on this machine
		}
		// Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
		f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		total += time.Duration(ut+st) * 10 * time.Millisecond // USER_HZ is 100 on Linux
	}
	return total
}

// BenchmarkSyncFull syncs the fixture of 1,000 directories and about 100,000 resources (all six
// mCSD types) from an HTTPS server in this process into an empty index, on each engine.
// Run with: go test -run '^$' -bench 'Sync(Full|Incremental)$' -benchtime 1x -timeout 30m ./lookup/mcsd/
// (make bench-mcsd). base-heap-MB is the Go heap in use before the sync (mostly the test
// server's copy of every directory, in this process); peak-heap-MB the highest during it;
// peak-RSS-MB the process's peak resident memory during it.
func BenchmarkSyncFull(b *testing.B) {
	srv := benchServer(b, benchDirs, benchPerDirectory)
	client := benchClient(srv)
	for _, engine := range dbtest.Engines {
		b.Run(string(engine), func(b *testing.B) {
			for range b.N {
				b.StopTimer()
				db := benchDB(b, engine)
				timedSync(b, db, srv, client)
				checkBenchIndex(b, db, benchDirs)
			}
		})
	}
}

// BenchmarkSyncIncremental syncs the fixture in full (not timed), then times an incremental sync
// after benchChangePercent % of the resources changed, and one after nothing changed.
func BenchmarkSyncIncremental(b *testing.B) {
	srv := benchServer(b, benchDirs, benchPerDirectory)
	client := benchClient(srv)
	for ei, engine := range dbtest.Engines {
		b.Run(string(engine), func(b *testing.B) {
			db := benchDB(b, engine)
			benchSync(b, benchSyncer(db, srv, client))
			rnd := rand.New(rand.NewPCG(uint64(ei), 2))
			round := 0
			b.Run(fmt.Sprintf("changed-%dpct", benchChangePercent), func(b *testing.B) {
				for range b.N {
					b.StopTimer()
					round++
					benchChange(b, srv, rnd, ei*100+round, benchDirs, benchPerDirectory, benchChangePercent)
					timedSync(b, db, srv, client)
				}
			})
			b.Run("unchanged", func(b *testing.B) {
				for range b.N {
					b.StopTimer()
					timedSync(b, db, srv, client)
				}
			})
			checkBenchIndex(b, db, benchDirs)
		})
	}
}

// benchDB opens a fresh database with a pepper set, as serve does at start, so that syncs
// compute the lookup hashes of what they index.
func benchDB(b *testing.B, engine sqlstore.Engine) *sqlstore.DB {
	db := dbtest.Open(b, engine)
	if err := mcsd.NewIndex(db).Rehash(context.Background(), "bench-pepper"); err != nil {
		b.Fatal(err)
	}
	return db
}

// checkBenchIndex checks that a practitioner of the first and of the last directory resolve.
func checkBenchIndex(b *testing.B, db mcsd.Store, dirs int) {
	b.Helper()
	idx := mcsd.NewIndex(db)
	for _, d := range []int{0, dirs - 1} {
		tp := threepid.ThreePID{Medium: "uzi", Address: benchUZI(d, 0)}
		got, err := idx.Resolve(context.Background(), []threepid.ThreePID{tp})
		if err != nil || !strings.HasPrefix(got[tp], "@u"+tp.Address) {
			b.Fatalf("after the sync, %s resolves to %v (%v)", tp.Address, got, err)
		}
	}
}

// BenchmarkSyncLargeDirectory syncs one directory about as large as the whole fixture: memory
// must not depend on the size of a directory.
func BenchmarkSyncLargeDirectory(b *testing.B) {
	srv := benchServer(b, 1, benchDirs*benchPerDirectory)
	client := benchClient(srv)
	for _, engine := range dbtest.Engines {
		b.Run(string(engine), func(b *testing.B) {
			for range b.N {
				b.StopTimer()
				db := benchDB(b, engine)
				timedSync(b, db, srv, client)
			}
		})
	}
}

// timedStore sums the time spent in the store's methods that a sync calls most.
type timedStore struct {
	mcsd.Store
	mu    sync.Mutex
	spent map[string]time.Duration
	calls map[string]int
}

func (s *timedStore) add(name string, start time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.spent == nil {
		s.spent, s.calls = map[string]time.Duration{}, map[string]int{}
	}
	s.spent[name] += time.Since(start)
	s.calls[name]++
}

func (s *timedStore) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.spent))
	for n := range s.spent {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool { return s.spent[names[i]] > s.spent[names[j]] })
	var out strings.Builder
	for _, n := range names {
		fmt.Fprintf(&out, "%s %s (%d), ", n, s.spent[n].Round(time.Millisecond), s.calls[n])
	}
	return strings.TrimSuffix(out.String(), ", ")
}

func (s *timedStore) ApplyResources(ctx context.Context, dir string, run int64, batches []mcsd.Batch) (int, int, error) {
	defer s.add("ApplyResources", time.Now())
	return s.Store.ApplyResources(ctx, dir, run, batches)
}

func (s *timedStore) FinishDirectory(ctx context.Context, f mcsd.FinishInput) (mcsd.FinishResult, error) {
	defer s.add("FinishDirectory", time.Now())
	return s.Store.FinishDirectory(ctx, f)
}

func (s *timedStore) Watermarks(ctx context.Context, dir string) (map[string]string, error) {
	defer s.add("Watermarks", time.Now())
	return s.Store.Watermarks(ctx, dir)
}

func (s *timedStore) RecordAttempt(ctx context.Context, dir string, a mcsd.Attempt) error {
	defer s.add("RecordAttempt", time.Now())
	return s.Store.RecordAttempt(ctx, dir, a)
}

func (s *timedStore) Analyze(ctx context.Context) error {
	defer s.add("Analyze", time.Now())
	return s.Store.Analyze(ctx)
}

func (s *timedStore) Candidates(ctx context.Context, medium string, addrs []string, now int64, hsOnly bool) ([]mcsd.Candidate, error) {
	defer s.add("Candidates", time.Now())
	return s.Store.Candidates(ctx, medium, addrs, now, hsOnly)
}

func (s *timedStore) Placements(ctx context.Context, uzis []string) (map[string]mcsd.Placement, error) {
	defer s.add("Placements", time.Now())
	return s.Store.Placements(ctx, uzis)
}

func (s *timedStore) ChangedUZIs(ctx context.Context, after string, limit int) ([]string, error) {
	defer s.add("ChangedUZIs", time.Now())
	return s.Store.ChangedUZIs(ctx, after, limit)
}

func (s *timedStore) StorePlacements(ctx context.Context, p mcsd.PlacementPage) ([]mcsd.Conflict, []mcsd.Conflict, error) {
	defer s.add("StorePlacements", time.Now())
	return s.Store.StorePlacements(ctx, p)
}

func (s *timedStore) MarkPeriodChanges(ctx context.Context, now int64) error {
	defer s.add("MarkPeriodChanges", time.Now())
	return s.Store.MarkPeriodChanges(ctx, now)
}

func (s *timedStore) OrganizationName(ctx context.Context, ura string) (string, error) {
	defer s.add("OrganizationName", time.Now())
	return s.Store.OrganizationName(ctx, ura)
}
