package sqlstore_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore/dbtest"
)

// Of many claims at once exactly one gets the lease; the others learn who holds it.
func TestLeaseOneHolder(t *testing.T) {
	for _, engine := range dbtest.Engines {
		t.Run(string(engine), func(t *testing.T) {
			db := dbtest.Open(t, engine)
			ctx := context.Background()
			var wg sync.WaitGroup
			var mu sync.Mutex
			var won []string
			for i := range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					holder := fmt.Sprintf("h%d", i)
					_, err := db.AcquireLease(ctx, "job", holder, time.Minute)
					var held *sqlstore.LeaseHeldError
					switch {
					case err == nil:
						mu.Lock()
						won = append(won, holder)
						mu.Unlock()
					case !errors.As(err, &held) || held.Holder == holder || held.Holder == "":
						t.Errorf("%s: %v", holder, err)
					}
				}()
			}
			wg.Wait()
			if len(won) != 1 {
				t.Fatalf("holders: %v", won)
			}
		})
	}
}

// A lease renewed while its holder works is not taken by another; a lease taken over stops the
// work under it; a released lease is free at once.
func TestLeaseRenewal(t *testing.T) {
	for _, engine := range dbtest.Engines {
		t.Run(string(engine), func(t *testing.T) {
			db := dbtest.Open(t, engine)
			ctx := context.Background()
			l, err := db.AcquireLease(ctx, "job", "a", 300*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			err = l.Hold(ctx, func(ctx context.Context) error {
				time.Sleep(time.Second) // three ttls: only renewals keep it
				if _, err := db.AcquireLease(ctx, "job", "b", time.Minute); err == nil {
					t.Error("a renewed lease was taken")
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := db.AcquireLease(ctx, "job", "b", time.Minute); err != nil {
				t.Fatalf("lease not released after Hold: %v", err)
			}
			// An expired lease is free to take.
			if _, err := db.AcquireLease(ctx, "job3", "dead", 100*time.Millisecond); err != nil {
				t.Fatal(err)
			}
			time.Sleep(150 * time.Millisecond)
			if _, err := db.AcquireLease(ctx, "job3", "next", time.Minute); err != nil {
				t.Fatalf("expired lease not taken: %v", err)
			}

			// "a" loses job2 to "b": its work is cancelled with ErrLeaseLost.
			l2, err := db.AcquireLease(ctx, "job2", "a", 200*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			err = l2.Hold(ctx, func(hctx context.Context) error {
				if _, err := db.ExecContext(ctx, `UPDATE leases SET holder = 'b' WHERE name = 'job2'`); err != nil {
					t.Fatal(err)
				}
				select {
				case <-hctx.Done():
					return context.Cause(hctx)
				case <-time.After(5 * time.Second):
					return errors.New("not stopped")
				}
			})
			if !errors.Is(err, sqlstore.ErrLeaseLost) {
				t.Fatalf("work under a lost lease ended with %v", err)
			}
			var holder string
			if err := db.QueryRowContext(ctx, `SELECT holder FROM leases WHERE name = 'job2'`).Scan(&holder); err != nil || holder != "b" {
				t.Fatalf("the loser released the winner's lease: %q %v", holder, err)
			}
		})
	}
}
