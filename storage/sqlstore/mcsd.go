package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
)

// The mcsd.Store port: the mCSD index's tables (mcsd_*), in files mcsd_*.go. The writers of the
// index take writeLock; the index can always be fetched again, so its commits need not wait
// for the disk (commits are lost only as a suffix, so a stored watermark is never ahead of the
// resources it covers).

// mcsdChunk bounds the parameters of one statement of the index well below both engines' limits.
const mcsdChunk = 400

// writeLock queues this process's writers on SQLite, which has one writer at a time, so that many
// directories syncing at once wait here rather than in the engine's busy handler, whose timeout
// would fail them; on PostgreSQL it does nothing.
func (db *DB) writeLock() (unlock func()) {
	if db.Engine == Postgres {
		return func() {}
	}
	db.wmu.Lock()
	return db.wmu.Unlock
}

// execWrite runs one write statement: on SQLite directly under writeLock, on PostgreSQL in a
// writeTx so that it commits as asynchronously.
func (db *DB) execWrite(ctx context.Context, q string, args ...any) (sql.Result, error) {
	if db.Engine != Postgres {
		defer db.writeLock()()
		return db.ExecContext(ctx, q, args...)
	}
	var res sql.Result
	err := db.writeTx(ctx, func(tx *sql.Tx) error {
		var err error
		res, err = tx.ExecContext(ctx, q, args...)
		return err
	})
	return res, err
}

// writeTx runs fn in a transaction under writeLock. On PostgreSQL the commit does not wait for
// the WAL to reach disk: callers keep only data that can be fetched again.
func (db *DB) writeTx(ctx context.Context, fn func(*sql.Tx) error) error {
	defer db.writeLock()()
	setup := ""
	if db.Engine == Postgres {
		// Generic plans are kept (planning the validation cost more than running it): the
		// tables grow from empty during a first sync, but Index.analyzeIfStale refreshes their
		// statistics as they double, and PostgreSQL plans a statement again after that.
		setup = `SELECT set_config('synchronous_commit', 'off', true), set_config('plan_cache_mode', 'force_generic_plan', true)`
	}
	return inTx(ctx, db.DB, setup, fn)
}

// rowLock returns FOR UPDATE or FOR SHARE on PostgreSQL, the clause that makes a SELECT in a
// writeTx hold its rows for the transaction; SQLite's write transaction excludes every other
// writer already.
func (db *DB) rowLock(exclusive bool) string {
	switch {
	case db.Engine != Postgres:
		return ""
	case exclusive:
		return ` FOR UPDATE`
	default:
		return ` FOR SHARE`
	}
}

// prepared returns q as a statement of tx, parsed once per connection rather than per use: the
// validation statements are long, and SQLite would otherwise parse them for every directory.
func (db *DB) prepared(ctx context.Context, tx *sql.Tx, q string) (*sql.Stmt, error) {
	db.smu.Lock()
	st, ok := db.stmts[q]
	if !ok {
		var err error
		if st, err = db.PrepareContext(ctx, q); err != nil {
			db.smu.Unlock()
			return nil, err
		}
		if db.stmts == nil {
			db.stmts = map[string]*sql.Stmt{}
		}
		db.stmts[q] = st
	}
	db.smu.Unlock()
	return tx.StmtContext(ctx, st), nil
}

// execPrepared runs q in tx as a prepared statement.
func (db *DB) execPrepared(ctx context.Context, tx *sql.Tx, q string, args ...any) (sql.Result, error) {
	st, err := db.prepared(ctx, tx, q)
	if err != nil {
		return nil, err
	}
	return st.ExecContext(ctx, args...)
}

// Analyze refreshes the planner statistics of the index tables on PostgreSQL: a first sync grows
// them from nothing, and plans made for empty tables scan them whole. SQLite keeps none: without
// statistics its planner already uses the indexes on dir, and with them its STAT4 (as modernc
// builds it) re-prepares every statement whose directory parameter changed, which was a third of
// an incremental sync's CPU.
func (db *DB) Analyze(ctx context.Context) error {
	if db.Engine != Postgres {
		return nil
	}
	for _, t := range []string{"mcsd_resources", "mcsd_refs", "mcsd_identifiers", "mcsd_role_uzis", "mcsd_addresses", "mcsd_hashes"} {
		if _, err := db.ExecContext(ctx, `ANALYZE `+t); err != nil {
			return fmt.Errorf("analyze %s: %w", t, err)
		}
	}
	return nil
}

// dropMCSDStatistics removes the statistics that earlier versions' Analyze left for the index
// tables in a SQLite file (see Analyze).
func (db *DB) dropMCSDStatistics(ctx context.Context) error {
	for _, t := range []string{"sqlite_stat1", "sqlite_stat4"} {
		var n int
		if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = $1`, t).Scan(&n); err != nil {
			return fmt.Errorf("find %s: %w", t, err)
		}
		if n == 0 {
			continue
		}
		if _, err := db.ExecContext(ctx, `DELETE FROM `+t+` WHERE tbl LIKE 'mcsd!_%' ESCAPE '!'`); err != nil {
			return fmt.Errorf("clear %s: %w", t, err)
		}
	}
	return nil
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
