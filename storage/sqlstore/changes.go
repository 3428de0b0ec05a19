package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/ozo-platform/ozo-identity/identity"
)

// Kinds of change_log rows (migration 00016).
const (
	changeHash   = "hash"   // key: a lookup hash whose answer may have changed
	changeRehash = "rehash" // every lookup hash changed with a new pepper
	changeToken  = "token"  // key: the hash of a revoked access token
)

// nextChange takes the next change number for tx. The counter row stays locked until tx ends, so
// numbers become visible in the order they were taken. Transactions take it before any other
// lock, so two writers never hold each other's locks.
func nextChange(ctx context.Context, tx *sql.Tx) (int64, error) {
	var seq int64
	if err := tx.QueryRowContext(ctx, `UPDATE change_log_seq SET seq = seq + 1 WHERE id = 1 RETURNING seq`).Scan(&seq); err != nil {
		return 0, fmt.Errorf("change number: %w", err)
	}
	return seq, nil
}

// checkPepper fails with identity.ErrPepperChanged when pepper is set and not the stored one.
// Called after nextChange: the counter's lock orders it with RehashBindings.
func checkPepper(ctx context.Context, tx *sql.Tx, peppers ...string) error {
	var current string
	read := false
	for _, p := range peppers {
		if p == "" {
			continue
		}
		if !read {
			err := tx.QueryRowContext(ctx, `SELECT value FROM settings WHERE name = $1`, identity.SettingPepper).Scan(&current)
			if err != nil && !errors.Is(err, sql.ErrNoRows) {
				return fmt.Errorf("read pepper: %w", err)
			}
			read = true
		}
		if p != current {
			return identity.ErrPepperChanged
		}
	}
	return nil
}

// logChanges records keys of kind under change number seq.
func (s *Store) logChanges(ctx context.Context, tx *sql.Tx, seq int64, kind string, keys ...string) error {
	return s.logChangesIn(ctx, newTxStmts(tx, s.db.Engine), seq, kind, keys...)
}

// logChangesIn is logChanges with the statements of a bulk write's transaction.
func (s *Store) logChangesIn(ctx context.Context, stmts *txStmts, seq int64, kind string, keys ...string) error {
	tx := stmts.tx
	if len(keys) == 0 {
		return nil
	}
	now := time.Now().UnixMilli()
	if s.db.Engine == Postgres {
		if _, err := tx.ExecContext(ctx, `INSERT INTO change_log (seq, kind, key, created_at)
			SELECT $1, $2, k, $3 FROM unnest($4::text[]) AS k`, seq, kind, now, keys); err != nil {
			return fmt.Errorf("log changes: %w", err)
		}
		return nil
	}
	const rows = 1000
	exec := tx.ExecContext
	if len(keys) > rows {
		exec = stmts.exec // the same statement for every full chunk
	}
	for len(keys) > 0 {
		chunk := keys[:min(rows, len(keys))]
		keys = keys[len(chunk):]
		args := make([]any, 0, 4*len(chunk))
		for _, k := range chunk {
			args = append(args, seq, kind, k, now)
		}
		// OR IGNORE spares the statement journal (see insertRows): the log has no unique key,
		// so nothing is ignored.
		if _, err := exec(ctx, `INSERT OR IGNORE INTO change_log (seq, kind, key, created_at) VALUES `+valueRows(len(chunk), 4), args...); err != nil {
			return fmt.Errorf("log changes: %w", err)
		}
	}
	return nil
}

// deleteReturning runs a DELETE … RETURNING of one text column and returns the values.
func deleteReturning(ctx context.Context, tx *sql.Tx, q string, args ...any) ([]string, error) {
	rows, err := tx.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

func (s *Store) ChangeSeq(ctx context.Context) (int64, error) {
	st, err := s.stmt(ctx, `SELECT seq FROM change_log_seq WHERE id = 1`)
	if err != nil {
		return 0, fmt.Errorf("read change number: %w", err)
	}
	var seq int64
	if err := st.QueryRowContext(ctx).Scan(&seq); err != nil {
		return 0, fmt.Errorf("read change number: %w", err)
	}
	return seq, nil
}

func (s *Store) Changes(ctx context.Context, after int64, max int) (identity.Changes, error) {
	var ch identity.Changes
	// One statement, so one snapshot on both engines: the counter, the pruning mark and the
	// rows up to the counter agree with each other.
	st, err := s.stmt(ctx, `SELECT s.seq, s.pruned, c.kind, c.key FROM change_log_seq s
		LEFT JOIN change_log c ON c.seq > $1 AND c.seq <= s.seq
		WHERE s.id = 1 ORDER BY c.seq LIMIT $2`)
	if err != nil {
		return ch, fmt.Errorf("read changes: %w", err)
	}
	rows, err := st.QueryContext(ctx, after, max+1)
	if err != nil {
		return ch, fmt.Errorf("read changes: %w", err)
	}
	defer rows.Close()
	n := 0 // rows with a change; more than max were not all read
	for rows.Next() {
		var pruned int64
		var kind, key sql.NullString
		if err := rows.Scan(&ch.Seq, &pruned, &kind, &key); err != nil {
			return ch, fmt.Errorf("read changes: %w", err)
		}
		// A counter behind the reader: the database was restored or replaced.
		if after < pruned || after > ch.Seq {
			ch.Reload, ch.Pruned = true, true
		}
		if kind.Valid {
			if n++; n > max {
				ch.Reload, ch.Pruned = true, true
				break
			}
		}
		switch kind.String {
		case changeHash:
			ch.Hashes = append(ch.Hashes, key.String)
		case changeRehash:
			ch.Reload = true
		case changeToken:
			ch.Tokens = append(ch.Tokens, key.String)
		}
	}
	if err := rows.Err(); err != nil {
		return ch, fmt.Errorf("read changes: %w", err)
	}
	if ch.Reload {
		ch.Hashes = nil
	}
	if ch.Pruned {
		ch.Tokens = nil
	}
	return ch, nil
}

func (s *Store) PruneChanges(ctx context.Context, before time.Time) (int64, error) {
	var n int64
	err := s.tx(ctx, func(tx *sql.Tx) error {
		// The counter row's lock first, as writers take it.
		if _, err := tx.ExecContext(ctx, `UPDATE change_log_seq SET pruned = pruned WHERE id = 1`); err != nil {
			return fmt.Errorf("prune changes: %w", err)
		}
		var upTo sql.NullInt64
		if err := tx.QueryRowContext(ctx, `SELECT MAX(seq) FROM change_log WHERE created_at < $1`, before.UnixMilli()).Scan(&upTo); err != nil {
			return fmt.Errorf("prune changes: %w", err)
		}
		if !upTo.Valid {
			return nil
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM change_log WHERE seq <= $1`, upTo.Int64)
		if err != nil {
			return fmt.Errorf("prune changes: %w", err)
		}
		n, _ = res.RowsAffected()
		if _, err := tx.ExecContext(ctx, `UPDATE change_log_seq SET pruned = $1 WHERE id = 1 AND pruned < $1`, upTo.Int64); err != nil {
			return fmt.Errorf("prune changes: %w", err)
		}
		return nil
	})
	return n, err
}

// scanQuery is every lookup hash with its answer, as LookupHashes gives it: the binding of an
// exact hash, else the one binding of a folded hash that no other binding shares.
const scanQuery = `SELECT h.hash, b.mxid FROM binding_hashes h
	JOIN bindings b ON b.medium = h.medium AND b.address = h.address
	UNION ALL
	SELECT f.hash, MIN(b.mxid) FROM binding_folded_hashes f
	JOIN bindings b ON b.medium = f.medium AND b.address = f.address
	WHERE NOT EXISTS (SELECT 1 FROM binding_hashes x WHERE x.hash = f.hash)
	GROUP BY f.hash HAVING COUNT(*) = 1`

func (s *Store) ScanLookupHashes(ctx context.Context, begin func(identity.LookupSnapshot) error, each func(hash, mxid []byte) error) (err error) {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("scan lookup hashes: %w", err)
	}
	defer conn.Close()
	opts := &sql.TxOptions{ReadOnly: true}
	if s.db.Engine == Postgres {
		opts.Isolation = sql.LevelRepeatableRead
	} else {
		// Read the million rows through the connection's small page cache instead of the memory
		// map: the mapped pages would count as this process's memory until the kernel drops them.
		if _, err := conn.ExecContext(ctx, `PRAGMA mmap_size = 0`); err != nil {
			return fmt.Errorf("scan lookup hashes: %w", err)
		}
		defer func() {
			var mmap int64
			if rerr := conn.QueryRowContext(context.WithoutCancel(ctx), `PRAGMA mmap_size = `+fmt.Sprint(s.db.mmapBytes)).Scan(&mmap); rerr != nil && err == nil {
				err = fmt.Errorf("scan lookup hashes: restore mmap: %w", rerr)
			}
		}()
	}
	// A read-only transaction is one snapshot: SQLite's deferred BEGIN (the driver's
	// immediate mode applies to writers only), PostgreSQL's repeatable read.
	tx, err := conn.BeginTx(ctx, opts)
	if err != nil {
		return fmt.Errorf("scan lookup hashes: %w", err)
	}
	defer tx.Rollback()
	var snap identity.LookupSnapshot
	if err := tx.QueryRowContext(ctx, `SELECT seq FROM change_log_seq WHERE id = 1`).Scan(&snap.Seq); err != nil {
		return fmt.Errorf("scan lookup hashes: %w", err)
	}
	err = tx.QueryRowContext(ctx, `SELECT value FROM settings WHERE name = $1`, identity.SettingPepper).Scan(&snap.Pepper)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("scan lookup hashes: %w", err)
	}
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM binding_hashes`).Scan(&snap.Count); err != nil {
		return fmt.Errorf("scan lookup hashes: %w", err)
	}
	if err := begin(snap); err != nil {
		return err
	}
	rows, err := tx.QueryContext(ctx, scanQuery)
	if err != nil {
		return fmt.Errorf("scan lookup hashes: %w", err)
	}
	defer rows.Close()
	var hash, mxid sql.RawBytes
	for rows.Next() {
		if err := rows.Scan(&hash, &mxid); err != nil {
			return fmt.Errorf("scan lookup hashes: %w", err)
		}
		if err := each(hash, mxid); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("scan lookup hashes: %w", err)
	}
	return nil
}
