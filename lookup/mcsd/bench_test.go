package mcsd_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/lookup/mcsd"
	"github.com/ozo-platform/ozo-identity/lookup/mcsd/mcsdtest"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore/dbtest"
	"github.com/ozo-platform/ozo-identity/threepid"
)

const (
	benchDirs          = 1000
	benchPerDirectory  = 33 // practitioners per directory, each with a role and an Endpoint
	benchChangePercent = 1
)

var givenNames = []string{"Anna", "Bram", "Chantal", "Daan", "Emma", "Fleur", "Gijs", "Hanna", "Ilse", "Jeroen", "Karin", "Lars", "Mila", "Noah", "Olga", "Pim"}
var familyNames = []string{"de Jong", "Jansen", "de Vries", "van den Berg", "van Dijk", "Bakker", "Janssen", "Visser", "Smit", "Meijer", "de Boer", "Mulder"}

// benchServer publishes benchDirs provider directories with benchPerDirectory practitioners each
// (Practitioner, PractitionerRole and Endpoint: about 100,000 resources), listed in an LRZA.
func benchServer(b *testing.B, dirs, perDirectory int) *mcsdtest.Server {
	srv := mcsdtest.Start(b, mcsdtest.Options{Empty: true})
	benchFill(b, srv, dirs, perDirectory)
	return srv
}

func benchFill(b testing.TB, srv *mcsdtest.Server, dirs, perDirectory int) {
	lrza := srv.Directory("lrza")
	for d := range dirs {
		name := fmt.Sprintf("zorg-%04d", d)
		ura := fmt.Sprintf("%08d", 20000000+d)
		put := func(dir *mcsdtest.Directory, format string, args ...any) {
			if _, err := dir.Put(fmt.Appendf(nil, format, args...)); err != nil {
				b.Fatal(err)
			}
		}
		put(lrza, `{"resourceType":"Organization","id":"org-%[1]s","identifier":[{"system":"http://fhir.nl/fhir/NamingSystem/ura","value":"%[1]s"}],
			"name":"Zorgaanbieder %[1]s","endpoint":[{"reference":"Endpoint/ep-%[1]s"}]}`, ura)
		put(lrza, `{"resourceType":"Endpoint","id":"ep-%s","status":"active","connectionType":{"code":"hl7-fhir-rest"},
			"payloadType":[{"coding":[{"code":"http://nuts-foundation.github.io/nl-generic-functions-ig/CapabilityStatement/nl-gf-admin-directory-update-client"}]}],
			"address":"%s"}`, ura, srv.URL(name))
		dir := srv.Directory(name)
		put(dir, `{"resourceType":"Organization","id":"org","identifier":[{"system":"http://fhir.nl/fhir/NamingSystem/ura","value":"%s"}],
			"name":"Zorgaanbieder %s","active":true}`, ura, ura)
		hs := fmt.Sprintf("hs%d.example.nl", d%2+1)
		for p := range perDirectory {
			uzi := fmt.Sprintf("%09d", 100000000+d*perDirectory+p)
			put(dir, `{"resourceType":"Endpoint","id":"ep-%d","status":"active","connectionType":{"code":"matrix"},
				"address":"matrix:u/u%s:%s"}`, p, uzi, hs)
			put(dir, `{"resourceType":"Practitioner","id":"p-%d","active":true,
				"identifier":[{"system":"http://fhir.nl/fhir/NamingSystem/uzi-nr-pers","value":"%s"}],
				"name":[{"use":"official","text":"%s %s","family":"%s","given":["%s"]}]}`,
				p, uzi, givenNames[p%len(givenNames)], familyNames[(d+p)%len(familyNames)], familyNames[(d+p)%len(familyNames)], givenNames[p%len(givenNames)])
			put(dir, `{"resourceType":"PractitionerRole","id":"r-%d","active":true,"practitioner":{"reference":"Practitioner/p-%d"},
				"organization":{"reference":"Organization/org"},
				"code":[{"coding":[{"system":"http://fhir.nl/fhir/NamingSystem/uzi-rolcode","code":"01.015","display":"Huisarts"}]}],
				"endpoint":[{"reference":"Endpoint/ep-%d"}]}`, p, p, p)
		}
	}
}

// change publishes benchChangePercent % changes spread over the directories: new Matrix
// addresses, renamed practitioners and deleted roles.
func change(b *testing.B, srv *mcsdtest.Server, rnd *rand.Rand, round int) int {
	n := benchDirs * benchPerDirectory * 3 * benchChangePercent / 100
	for i := range n {
		d, p := rnd.IntN(benchDirs), rnd.IntN(benchPerDirectory)
		dir := srv.Directory(fmt.Sprintf("zorg-%04d", d))
		uzi := fmt.Sprintf("%09d", 100000000+d*benchPerDirectory+p)
		var err error
		switch i % 3 {
		case 0:
			_, err = dir.Put(fmt.Appendf(nil, `{"resourceType":"Endpoint","id":"ep-%d","status":"active","connectionType":{"code":"matrix"},
				"address":"matrix:u/u%s-r%d:hs3.example.nl"}`, p, uzi, round))
		case 1:
			_, err = dir.Put(fmt.Appendf(nil, `{"resourceType":"Practitioner","id":"p-%d","active":true,
				"identifier":[{"system":"http://fhir.nl/fhir/NamingSystem/uzi-nr-pers","value":"%s"}],
				"name":[{"use":"official","text":"Hernoemd %d"}]}`, p, uzi, round))
		case 2:
			if dir.Get("PractitionerRole", fmt.Sprintf("r-%d", p)) == nil {
				_, err = dir.Put(fmt.Appendf(nil, `{"resourceType":"PractitionerRole","id":"r-%d","active":true,
					"practitioner":{"reference":"Practitioner/p-%d"},"organization":{"reference":"Organization/org"},
					"endpoint":[{"reference":"Endpoint/ep-%d"}]}`, p, p, p))
			} else {
				dir.Delete("PractitionerRole", fmt.Sprintf("r-%d", p))
			}
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	return n
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

// BenchmarkSync syncs 1,000 directories holding about 100,000 Practitioner, PractitionerRole and
// Endpoint resources from a local test server, in full and then incrementally with 1 % changed.
// Run with: go test -run x -bench Sync -benchtime 1x -timeout 30m ./lookup/mcsd/
// base-heap-MB is the Go heap in use before the sync (mostly the test server's copy of every
// directory, in this process); peak-heap-MB the highest during it; peak-RSS-MB the process's
// peak resident memory during it.
func BenchmarkSync(b *testing.B) {
	benchRun(b, benchServer(b, benchDirs, benchPerDirectory), true)
}

// BenchmarkSyncLargeDirectory syncs one directory of the same size as all of BenchmarkSync's
// together: memory must not depend on the size of a directory.
func BenchmarkSyncLargeDirectory(b *testing.B) {
	benchRun(b, benchServer(b, 1, benchDirs*benchPerDirectory), false)
}

func benchRun(b *testing.B, srv *mcsdtest.Server, incremental bool) {
	// One host serves all directories here, so keep enough connections to it open.
	client := *srv.Client()
	tr := client.Transport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 64
	client.Transport = tr
	for ei, engine := range dbtest.Engines {
		b.Run(string(engine), func(eb *testing.B) {
			var db *sqlstore.DB
			newSyncer := func(db *sqlstore.DB) *mcsd.Syncer {
				return mcsd.NewSyncer(mcsd.NewIndex(db), mcsd.Options{LRZA: srv.LRZAURL(), Client: &client, Concurrency: 8})
			}
			eb.Run("full", func(b *testing.B) {
				for range b.N {
					b.StopTimer()
					db = dbtest.Open(eb, engine) // kept open for the incremental run
					s := newSyncer(db)
					base := heapInuse()
					b.StartTimer()
					start := time.Now()
					var fetched int
					peak, rss := measure(func() { fetched = benchSync(b, s) })
					report(b, fetched, time.Since(start), base, peak, rss)
				}
				tp := threepid.ThreePID{Medium: "uzi", Address: "100000000"}
				got, err := mcsd.NewIndex(db).Resolve(context.Background(), []threepid.ThreePID{tp})
				if err != nil || got[tp] != "@u100000000:hs1.example.nl" {
					b.Fatalf("after the full sync: %v %v", got, err)
				}
			})
			if !incremental {
				return
			}
			eb.Run(fmt.Sprintf("incremental-%dpct", benchChangePercent), func(b *testing.B) {
				if db == nil {
					b.Skip("needs the full sync")
				}
				rnd := rand.New(rand.NewPCG(uint64(ei), 2))
				for i := range b.N {
					b.StopTimer()
					s := newSyncer(db)
					changes := change(b, srv, rnd, ei*1000+i)
					base := heapInuse()
					b.StartTimer()
					start := time.Now()
					var fetched int
					peak, rss := measure(func() { fetched = benchSync(b, s) })
					if fetched < changes {
						b.Fatalf("fetched %d entries for %d changes", fetched, changes)
					}
					report(b, fetched, time.Since(start), base, peak, rss)
				}
			})
		})
	}
}
