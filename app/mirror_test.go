package app_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/api/apitest"
	"github.com/ozo-platform/ozo-identity/app"
	"github.com/ozo-platform/ozo-identity/identity"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
	"github.com/ozo-platform/ozo-identity/threepid"
)

// secondReplica starts another app on h's configuration and database, with its background work
// (the mirror's catch-up among it), as a second replica behind the same load balancer would be.
func secondReplica(t *testing.T, h *apitest.Harness) *app.App {
	t.Helper()
	b, err := app.New(context.Background(), h.Config, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatalf("second replica: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.RunWorkers(ctx)
	t.Cleanup(func() {
		cancel()
		b.Close()
	})
	return b
}

// address i's history is a sequence of writes: write k binds it to @a<i>-v<k> (a first bind,
// then a rebind), and every third write unbinds it. history.acked is the last write acknowledged.
type history struct {
	mu      sync.Mutex
	acked   int
	ackedAt time.Time
	writer  int // the replica that writes it
}

func addressOf(i int) string { return fmt.Sprintf("person%d@example.org", i) }

func mxidAfter(i, k int) string {
	if k%3 == 0 {
		return ""
	}
	return fmt.Sprintf("@a%d-v%d:hs.ozo.test", i, k)
}

// Acceptance test of issue 18's fast paths: concurrent binds and imports, rebinds, unbinds, pepper rotations
// and lookups on two replicas on one database. A lookup that starts after a write was
// acknowledged, on either replica, answers with it or something newer; and no lookup ever
// answers an MXID that address never had.
// SQLite stands for a server and the admin CLI sharing one file; PostgreSQL for two replicas.
func TestLookupsNeverStaleAcrossWritesAndReplicas(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, engine sqlstore.Engine) {
		h := apitest.New(t, engine)
		replicas := []*app.App{h.App, secondReplica(t, h)}
		for _, r := range replicas {
			if r.Mirror == nil {
				t.Fatal("the mirror is off by default")
			}
		}
		const addresses, writers = 16, 4
		hist := make([]*history, addresses)
		for i := range hist {
			hist[i] = &history{writer: i % writers % len(replicas)}
		}
		ctx, stop := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		var writes, sameChecks, otherChecks, rotations, pepperRetries atomic.Int64
		fail := func(format string, args ...any) {
			t.Errorf(format, args...)
			stop()
		}

		// Writers: each owns addresses i ≡ w (mod writers) and writes them through its replica,
		// then looks the address up there: its own acknowledged write, exactly.
		for w := range writers {
			wg.Go(func() {
				r := replicas[w%len(replicas)]
				rng := rand.New(rand.NewPCG(uint64(w), 1))
				for ctx.Err() == nil {
					i := w + writers*rng.IntN(addresses/writers)
					hs := hist[i]
					k := hs.acked + 1 // only this writer changes it
					var err error
					if m := mxidAfter(i, k); m != "" && rng.IntN(2) == 0 {
						_, err = r.Service.AdminBind(ctx, "email", addressOf(i), m, "admin")
					} else if m != "" {
						// A bulk import puts its own answers in the mirror without reading them back.
						var rep identity.ImportReport
						rep, err = r.Service.ImportBindings(ctx, []identity.ImportEntry{{Medium: "email", Address: addressOf(i), MXID: m}}, "admin", true)
						if err == nil && rep.Created+rep.Updated != 1 {
							err = fmt.Errorf("import answered %+v", rep)
						}
					} else {
						err = r.Service.AdminUnbind(ctx, "email", addressOf(i))
					}
					if err != nil {
						if ctx.Err() == nil {
							fail("write %d of address %d: %v", k, i, err)
						}
						return
					}
					hs.mu.Lock()
					hs.acked, hs.ackedAt = k, time.Now()
					hs.mu.Unlock()
					writes.Add(1)
					got, err := lookup(ctx, r.Service, []int{i}, &pepperRetries)
					if err != nil {
						if ctx.Err() == nil {
							fail("lookup after write: %v", err)
						}
						return
					}
					if want := mxidAfter(i, k); got[i] != want {
						fail("replica %d acknowledged write %d of address %d (%q) but answers %q", w%len(replicas), k, i, want, got[i])
						return
					}
					sameChecks.Add(1)
				}
			})
		}
		// Pepper rotations on both replicas: every hash changes, the indexes reload.
		wg.Go(func() {
			for n := 0; ctx.Err() == nil; n++ {
				if _, err := replicas[n%len(replicas)].Service.RotatePepper(ctx); err != nil {
					if ctx.Err() == nil {
						fail("rotate pepper: %v", err)
					}
					return
				}
				rotations.Add(1)
				select {
				case <-ctx.Done():
				case <-time.After(time.Duration(300+rand.IntN(500)) * time.Millisecond):
				}
			}
		})
		// Readers on both replicas look up every address at once and check each answer against
		// what was acknowledged before the lookup started and the writes that may have followed.
		all := make([]int, addresses)
		for i := range all {
			all[i] = i
		}
		for rd := range 4 {
			wg.Go(func() {
				ri := rd % len(replicas)
				r := replicas[ri]
				for ctx.Err() == nil {
					type seen struct {
						acked   int
						ackedAt time.Time
					}
					before := make([]seen, addresses)
					for i, hs := range hist {
						hs.mu.Lock()
						before[i] = seen{hs.acked, hs.ackedAt}
						hs.mu.Unlock()
					}
					started := time.Now()
					got, err := lookup(ctx, r.Service, all, &pepperRetries)
					if err != nil {
						if ctx.Err() == nil {
							fail("lookup on replica %d: %v", ri, err)
						}
						return
					}
					for i, hs := range hist {
						hs.mu.Lock()
						after := hs.acked
						hs.mu.Unlock()
						lo := before[i].acked
						if hs.writer == ri {
							sameChecks.Add(1)
						} else if !before[i].ackedAt.IsZero() {
							otherChecks.Add(1)
						}
						// The write in flight when the lookup ended may be in the answer too.
						if err := possible(i, got[i], lo, after+1); err != nil {
							fail("replica %d, address %d: %v (acknowledged %d at %s, lookup started %s later)", ri, i, err,
								before[i].acked, before[i].ackedAt.Format(time.StampMicro), started.Sub(before[i].ackedAt))
							return
						}
					}
				}
			})
		}
		// At least a few seconds, and until enough happened (slowly under -race on a busy machine).
		enough := func() bool { return writes.Load() >= 60 && rotations.Load() >= 3 && otherChecks.Load() >= 100 }
		for start := time.Now(); ctx.Err() == nil && (time.Since(start) < 4*time.Second || !enough()); {
			if time.Since(start) > 2*time.Minute {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		stop()
		wg.Wait()
		t.Logf("%s: %d writes, %d pepper rotations, %d checks on the writing replica, %d on the other, %d lookups retried for a new pepper",
			engine, writes.Load(), rotations.Load(), sameChecks.Load(), otherChecks.Load(), pepperRetries.Load())
		if !t.Failed() && !enough() {
			t.Errorf("too little happened in two minutes to show anything")
		}
	})
}

// possible checks that answer is what address i had after one of its writes lo..hi.
func possible(i int, answer string, lo, hi int) error {
	if answer == "" {
		for k := lo; k <= hi; k++ {
			if mxidAfter(i, k) == "" {
				return nil
			}
		}
		return fmt.Errorf("answered not bound, but writes %d..%d all bind it", lo, hi)
	}
	v, ok := strings.CutPrefix(answer, fmt.Sprintf("@a%d-v", i))
	v, ok2 := strings.CutSuffix(v, ":hs.ozo.test")
	k, err := strconv.Atoi(v)
	if !ok || !ok2 || err != nil || mxidAfter(i, k) != answer {
		return fmt.Errorf("answered %q, an MXID this address never had", answer)
	}
	if k < lo || k > hi {
		return fmt.Errorf("answered %q (write %d), want one of writes %d..%d: stale", answer, k, lo, hi)
	}
	return nil
}

// lookup does a v2 sha256 lookup of the addresses with the replica's current pepper, again
// when the pepper changed under it (as a client does after M_INVALID_PEPPER), and returns the
// answers by address number.
func lookup(ctx context.Context, svc *identity.Service, addrs []int, retries *atomic.Int64) (map[int]string, error) {
	// As the API does: the request arrives now, and every check it makes reads as of then.
	ctx = svc.Arrived(ctx)
	for {
		pepper := svc.Pepper()
		byHash := map[string]int{}
		var hashes []string
		for _, i := range addrs {
			h := threepid.LookupHash(addressOf(i), "email", pepper)
			byHash[h] = i
			hashes = append(hashes, h)
		}
		found, err := svc.Lookup(ctx, "sha256", pepper, hashes)
		var ie *identity.Error
		if errors.As(err, &ie) && ie.Code == identity.CodeInvalidPepper {
			retries.Add(1)
			continue
		}
		if err != nil {
			return nil, err
		}
		out := map[int]string{}
		for h, mxid := range found {
			out[byHash[h]] = mxid
		}
		return out, nil
	}
}

// A logout is refused at once on the replica that did it and on the other replica, though the
// token was in both caches.
func TestLogoutReachesEveryTokenCache(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, engine sqlstore.Engine) {
		h := apitest.New(t, engine)
		b := secondReplica(t, h)
		ctx := context.Background()
		for _, logoutOn := range []string{"a", "b"} {
			u := h.NewUser(t, "carol-"+logoutOn)
			for _, r := range []*app.App{h.App, b} {
				if a, err := r.Service.Authenticate(ctx, u.Token); err != nil || a.UserID != u.MXID {
					t.Fatalf("token before logout: %v %v", a, err)
				}
				if r.Mirror.Stats().Tokens == 0 {
					t.Fatal("a verified token is not cached")
				}
			}
			this, other := h.App, b
			if logoutOn == "b" {
				this, other = b, h.App
			}
			var acked time.Time
			if logoutOn == "a" {
				h.Post(t, v2+"/account/logout", u.Token, map[string]any{}).Want(t, http.StatusOK, "")
			} else if err := b.Service.Logout(ctx, u.Token); err != nil {
				t.Fatal(err)
			}
			acked = time.Now()
			if _, err := this.Service.Authenticate(ctx, u.Token); err == nil {
				t.Fatalf("logout on %s: the token still works there", logoutOn)
			}
			if logoutOn == "a" {
				h.Get(t, v2+"/account", u.Token).Want(t, http.StatusUnauthorized, "M_UNAUTHORIZED")
			}
			if _, err := other.Service.Authenticate(ctx, u.Token); err == nil {
				t.Fatalf("logout on %s: the other replica accepts the token %s after it", logoutOn, time.Since(acked))
			}
		}
	})
}
