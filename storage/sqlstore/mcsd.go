package sqlstore

import (
	"context"
	"database/sql"
)

// The engine-specific parts of the mcsd.Store port; the rest is *sql.DB's and the leases'.

// WriteLock queues this process's writers on SQLite, which has one writer at a time; on
// PostgreSQL it does nothing.
func (db *DB) WriteLock() (unlock func()) {
	if db.Engine == Postgres {
		return func() {}
	}
	db.wmu.Lock()
	return db.wmu.Unlock
}

// ExecWrite runs one write statement: on SQLite directly under WriteLock, on PostgreSQL in a
// WriteTx so that it commits as asynchronously.
func (db *DB) ExecWrite(ctx context.Context, q string, args ...any) (sql.Result, error) {
	if db.Engine != Postgres {
		defer db.WriteLock()()
		return db.ExecContext(ctx, q, args...)
	}
	var res sql.Result
	err := db.WriteTx(ctx, func(tx *sql.Tx) error {
		var err error
		res, err = tx.ExecContext(ctx, q, args...)
		return err
	})
	return res, err
}

// WriteTx runs fn in a transaction under WriteLock. On PostgreSQL the commit does not wait for
// the WAL to reach disk: callers keep only data that can be fetched again.
func (db *DB) WriteTx(ctx context.Context, fn func(*sql.Tx) error) error {
	defer db.WriteLock()()
	setup := ""
	if db.Engine == Postgres {
		// Custom plans too: the tables grow from empty during a first sync, and a generic plan
		// made while they were small would keep scanning them whole.
		setup = `SELECT set_config('synchronous_commit', 'off', true), set_config('plan_cache_mode', 'force_custom_plan', true)`
	}
	return inTx(ctx, db.DB, setup, fn)
}

// RowLock returns FOR UPDATE or FOR SHARE on PostgreSQL; SQLite's write transaction excludes
// every other writer already.
func (db *DB) RowLock(exclusive bool) string {
	switch {
	case db.Engine != Postgres:
		return ""
	case exclusive:
		return ` FOR UPDATE`
	default:
		return ` FOR SHARE`
	}
}
