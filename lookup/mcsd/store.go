package mcsd

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"os"
	"time"
)

// Store is the database the index lives in, as storage/sqlstore provides it: SQL that both
// SQLite and PostgreSQL understand ($N placeholders), and leases across replicas.
type Store interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	PrepareContext(ctx context.Context, query string) (*sql.Stmt, error)
	// WriteLock queues this process's writers where the engine has one writer at a time
	// (SQLite), so that many directories syncing at once wait here rather than in the engine's
	// busy handler, whose timeout would fail them; it returns the unlock.
	WriteLock() (unlock func())
	// ExecWrite runs one write statement under WriteLock.
	ExecWrite(ctx context.Context, query string, args ...any) (sql.Result, error)
	// WriteTx runs fn in a transaction under WriteLock. The index can always be fetched again,
	// so the commit need not wait for the disk (commits are lost only as a suffix, so a stored
	// watermark is never ahead of the resources it covers).
	WriteTx(ctx context.Context, fn func(*sql.Tx) error) error
	// RowLock is the clause that makes a SELECT in a WriteTx hold its rows for the transaction,
	// shared or exclusive; empty where the write transaction excludes the others anyway.
	RowLock(exclusive bool) string
	Leaser
}

// Leaser hands out leases on named jobs; a lease held by another holder is a *LeaseHeldError.
type Leaser interface {
	AcquireLease(ctx context.Context, name, holder string, ttl time.Duration) (Lease, error)
	// WaitLease takes the lease, trying again every poll while another holder has it, until ctx ends.
	WaitLease(ctx context.Context, name, holder string, ttl, poll time.Duration) (Lease, error)
}

// Lease is one holder's claim on a named job, valid across the processes sharing the database.
type Lease interface {
	Name() string
	Holder() string
	// Hold runs fn while renewing the lease, then releases it; fn's context ends when the
	// lease is lost.
	Hold(ctx context.Context, fn func(context.Context) error) error
	// Release gives the lease up, if this holder still has it.
	Release(ctx context.Context) error
}

// LeaseHeldError says another holder has the lease.
type LeaseHeldError struct {
	Name, Holder      string
	Acquired, Expires time.Time
}

func (e *LeaseHeldError) Error() string {
	return fmt.Sprintf("lease %q is held by %s since %s (expires %s unless renewed)", e.Name, e.Holder,
		e.Acquired.UTC().Format(time.RFC3339), e.Expires.UTC().Format(time.RFC3339))
}

// NewHolder names a holder uniquely: host and process for the operator, random so that two
// claims from one process are two holders.
func NewHolder() string {
	host, _ := os.Hostname()
	b := make([]byte, 4)
	rand.Read(b)
	return fmt.Sprintf("%s/pid-%d/%s", host, os.Getpid(), hex.EncodeToString(b))
}
