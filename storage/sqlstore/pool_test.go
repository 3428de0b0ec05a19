package sqlstore_test

import (
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/identity"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore/dbtest"
	"github.com/ozo-platform/ozo-identity/threepid"
)

// Under concurrency the pool must keep its connections: with database/sql's default of two idle
// connections, PostgreSQL started and tore down a session for nearly every request.
func TestPoolKeepsConnectionsUnderConcurrency(t *testing.T) {
	for _, engine := range dbtest.Engines {
		t.Run(string(engine), func(t *testing.T) {
			db := dbtest.Open(t, engine)
			want := 20
			if engine == sqlstore.SQLite {
				want = 2*runtime.GOMAXPROCS(0) + 2
			}
			if got := db.Stats().MaxOpenConnections; got != want {
				t.Fatalf("max open connections %d, want %d", got, want)
			}
			// Hold n connections at once, twice: the second round must reuse the first's.
			n := min(want, 8)
			round := func() {
				var wg, ready sync.WaitGroup
				start := make(chan struct{})
				for range n {
					wg.Add(1)
					ready.Add(1)
					go func() {
						defer wg.Done()
						tx, err := db.BeginTx(t.Context(), nil)
						ready.Done()
						if err != nil {
							t.Error(err)
							return
						}
						<-start
						var one int
						if err := tx.QueryRowContext(t.Context(), `SELECT 1`).Scan(&one); err != nil {
							t.Error(err)
						}
						tx.Rollback()
					}()
				}
				// All n hold a transaction, hence a connection, before any ends: otherwise a late
				// one may reuse a connection an early one returned.
				ready.Wait()
				close(start)
				wg.Wait()
			}
			if engine == sqlstore.SQLite {
				// Immediate transactions serialise on SQLite; hold plain connections instead.
				round = func() {
					var conns []interface{ Close() error }
					for range n {
						c, err := db.Conn(t.Context())
						if err != nil {
							t.Fatal(err)
						}
						conns = append(conns, c)
					}
					for _, c := range conns {
						c.Close()
					}
				}
			}
			// The connections were closed by the idle limit (database/sql's default keeps 2), not
			// by chance: that is the regression this guards against.
			round()
			if closed := db.Stats().MaxIdleClosed; closed != 0 {
				t.Fatalf("%d connections closed for exceeding the idle limit", closed)
			}
			// Returning a connection can trail the transaction's end by a moment under load.
			deadline := time.Now().Add(2 * time.Second)
			for db.Stats().Idle < n && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if st := db.Stats(); st.Idle < n {
				t.Fatalf("%d connections idle after %d concurrent transactions, want all kept: %+v", st.Idle, n, st)
			}
			opened := db.Stats().OpenConnections
			round()
			if st := db.Stats(); st.OpenConnections > opened || st.MaxIdleClosed != 0 {
				t.Fatalf("second round opened or closed connections: %d → %+v", opened, st)
			}
		})
	}
}

// SQLite's memory must not follow the number of connections: a small private cache each and a
// memory map of the file shared through the OS page cache.
func TestSQLiteCacheIsSharedNotPerConnection(t *testing.T) {
	db := dbtest.Open(t, sqlstore.SQLite)
	// An import enlarges its connection's cache for the transaction only.
	if _, err := sqlstore.New(db).ImportBindings(t.Context(), []identity.ImportBinding{{Binding: identity.Binding{
		ThreePID: threepid.ThreePID{Medium: "email", Address: "a@example.org"}, MXID: "@a:hs", Source: "import"}}}, nil, nil); err != nil {
		t.Fatal(err)
	}
	var conns []interface{ Close() error }
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range 3 {
		c, err := db.Conn(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		var cache, mmap int64
		if err := c.QueryRowContext(t.Context(), `PRAGMA cache_size`).Scan(&cache); err != nil {
			t.Fatal(err)
		}
		if err := c.QueryRowContext(t.Context(), `PRAGMA mmap_size`).Scan(&mmap); err != nil {
			t.Fatal(err)
		}
		if cache != -2048 {
			t.Fatalf("cache_size %d, want -2048 (2 MiB)", cache)
		}
		if mmap != 32<<20 {
			t.Fatalf("mmap_size %d, want %d", mmap, 32<<20)
		}
	}
}

// Lookups run on statements prepared for a few IN-list sizes, padded by repeating a hash: every
// batch size must still answer exactly the bound hashes, on a store used concurrently.
func TestLookupHashesEverySize(t *testing.T) {
	for _, engine := range dbtest.Engines {
		t.Run(string(engine), func(t *testing.T) {
			s := sqlstore.New(dbtest.Open(t, engine))
			var items []identity.ImportBinding
			for i := range 150 {
				items = append(items, identity.ImportBinding{Binding: identity.Binding{
					ThreePID: threepid.ThreePID{Medium: "email", Address: fmt.Sprintf("u%d@example.org", i)},
					MXID:     fmt.Sprintf("@u%d:hs", i), CreatedAt: time.Now(), Source: "import"},
					Hashes: []string{fmt.Sprintf("h%d", i)}})
			}
			if _, err := s.ImportBindings(t.Context(), items, nil, nil); err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			for n := 1; n <= 230; n++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					var q []string
					for i := range n {
						q = append(q, fmt.Sprintf("h%d", (i*7)%300)) // half of 0..299 is bound
					}
					got, err := s.LookupHashes(t.Context(), q)
					if err != nil {
						t.Error(err)
						return
					}
					want := 0
					for _, h := range q {
						var i int
						fmt.Sscanf(h, "h%d", &i)
						if i < 150 {
							want++
							if got[h] != fmt.Sprintf("@u%d:hs", i) {
								t.Errorf("batch %d: %s → %q", n, h, got[h])
							}
						}
					}
					if len(got) > want {
						t.Errorf("batch %d: %d answers for %d bound hashes", n, len(got), want)
					}
				}()
			}
			wg.Wait()
		})
	}
}
