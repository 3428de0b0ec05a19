package sqlstore

import (
	"github.com/ozo-platform/ozo-identity/lookup/mcsd"

	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"time"
)

// ErrLeaseLost says a lease expired and another holder may have taken it: stop the work.
var ErrLeaseLost = errors.New("lease lost")

// LeaseHeldError says another holder has the lease (the error type of the mcsd.Leaser port).
type LeaseHeldError = mcsd.LeaseHeldError

// Lease is one holder's claim on a named job in the database, valid across processes sharing it
// (replicas on PostgreSQL, processes on one SQLite file). It lasts ttl past its last renewal, so
// a holder that dies loses it; clocks of the holders are assumed to agree well within ttl.
type Lease struct {
	db           *DB
	name, holder string
	ttl          time.Duration

	mu      sync.Mutex
	expires time.Time
}

// AcquireLease takes the lease name for holder for ttl, or returns a *LeaseHeldError.
func (db *DB) AcquireLease(ctx context.Context, name, holder string, ttl time.Duration) (mcsd.Lease, error) {
	if ttl <= 0 {
		return nil, errors.New("lease: ttl must be positive")
	}
	now := time.Now()
	exp := now.Add(ttl)
	res, err := db.ExecContext(ctx, `INSERT INTO leases (name, holder, acquired_at, expires_at) VALUES ($1, $2, $3, $4)
		ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, acquired_at = excluded.acquired_at, expires_at = excluded.expires_at
		WHERE leases.expires_at <= $3 OR leases.holder = excluded.holder`, name, holder, now.UnixMilli(), exp.UnixMilli())
	if err != nil {
		return nil, fmt.Errorf("acquire lease %s: %w", name, err)
	}
	if n, _ := res.RowsAffected(); n == 1 {
		return &Lease{db: db, name: name, holder: holder, ttl: ttl, expires: exp}, nil
	}
	held := &LeaseHeldError{Name: name}
	var acq, until int64
	err = db.QueryRowContext(ctx, `SELECT holder, acquired_at, expires_at FROM leases WHERE name = $1`, name).Scan(&held.Holder, &acq, &until)
	if errors.Is(err, sql.ErrNoRows) {
		// Released between the two statements: try once more.
		return db.AcquireLease(ctx, name, holder, ttl)
	}
	if err != nil {
		return nil, fmt.Errorf("acquire lease %s: %w", name, err)
	}
	held.Acquired, held.Expires = time.UnixMilli(acq), time.UnixMilli(until)
	return nil, held
}

// WaitLease takes the lease, trying again every poll while another holder has it, until ctx ends.
func (db *DB) WaitLease(ctx context.Context, name, holder string, ttl, poll time.Duration) (mcsd.Lease, error) {
	for {
		l, err := db.AcquireLease(ctx, name, holder, ttl)
		var held *LeaseHeldError
		if !errors.As(err, &held) {
			return l, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for %w: %w", held, context.Cause(ctx))
		case <-time.After(poll):
		}
	}
}

// Name and Holder say whose lease this is.
func (l *Lease) Name() string   { return l.name }
func (l *Lease) Holder() string { return l.holder }

// Renew extends the lease by its ttl from now; ErrLeaseLost when it expired and was taken.
func (l *Lease) Renew(ctx context.Context) error {
	now := time.Now()
	exp := now.Add(l.ttl)
	res, err := l.db.ExecContext(ctx, `UPDATE leases SET expires_at = $3 WHERE name = $1 AND holder = $2`,
		l.name, l.holder, exp.UnixMilli())
	if err != nil {
		return fmt.Errorf("renew lease %s: %w", l.name, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("renew lease %s: %w", l.name, ErrLeaseLost)
	}
	l.mu.Lock()
	l.expires = exp
	l.mu.Unlock()
	return nil
}

// Release gives the lease up, if this holder still has it.
func (l *Lease) Release(ctx context.Context) error {
	if _, err := l.db.ExecContext(ctx, `DELETE FROM leases WHERE name = $1 AND holder = $2`, l.name, l.holder); err != nil {
		return fmt.Errorf("release lease %s: %w", l.name, err)
	}
	return nil
}

// Hold runs fn while renewing the lease every third of its ttl, then releases it. fn's context
// ends with cause ErrLeaseLost when the lease could not be renewed before it expired, so that
// work never goes on under a lease another holder may have taken.
func (l *Lease) Hold(ctx context.Context, fn func(context.Context) error) error {
	hctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(max(l.ttl/3, time.Millisecond))
		defer t.Stop()
		for {
			select {
			case <-hctx.Done():
				return
			case <-t.C:
			}
			err := l.Renew(hctx)
			l.mu.Lock()
			expired := time.Now().After(l.expires)
			l.mu.Unlock()
			// A busy database may fail one renewal; only a lost or expired lease stops the work.
			if errors.Is(err, ErrLeaseLost) || err != nil && expired {
				cancel(fmt.Errorf("%w: %w", ErrLeaseLost, err))
				return
			}
		}
	}()
	err := fn(hctx)
	cancel(nil)
	<-done
	// Release even when ctx ended: the next holder should not wait out the ttl.
	if rerr := l.Release(context.WithoutCancel(ctx)); rerr != nil && err == nil {
		err = rerr
	}
	return err
}
