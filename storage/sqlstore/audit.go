package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/ozo-platform/ozo-identity/audit"
	"github.com/ozo-platform/ozo-identity/internal/sqlin"
)

var _ audit.Store = (*Store)(nil)

// ErrNoAuditChain: a change was to be recorded but the store has no chain key; it is refused
// (fail closed) rather than made without its record.
var ErrNoAuditChain = errors.New("audit: no chain key configured")

// SetAuditChain sets the key that chains audit records. Until it is set, every change that
// carries an audit record fails.
func (s *Store) SetAuditChain(c *audit.Chain) { s.chain = c }

// appendAudit chains recs onto the log inside tx. It locks the chain head, so callers append
// last in their transaction to hold the lock briefly (SQLite's immediate transactions already
// run one writer at a time).
func (s *Store) appendAudit(ctx context.Context, tx *sql.Tx, recs []audit.Record) error {
	return s.appendAuditIn(ctx, newTxStmts(tx, s.db.Engine), recs)
}

// appendAuditIn is appendAudit with the statements of a bulk write's transaction.
func (s *Store) appendAuditIn(ctx context.Context, stmts *txStmts, recs []audit.Record) error {
	tx := stmts.tx
	if len(recs) == 0 {
		return nil
	}
	if s.chain == nil {
		return ErrNoAuditChain
	}
	now := time.Now()
	for i := range recs {
		recs[i].Clean(now)
		if err := recs[i].Validate(); err != nil {
			return err
		}
	}
	q := `SELECT seq, mac FROM audit_head WHERE id = 1`
	if s.db.Engine == Postgres {
		q += ` FOR UPDATE`
	}
	var seq int64
	var mac string
	if err := tx.QueryRowContext(ctx, q).Scan(&seq, &mac); err != nil {
		return fmt.Errorf("lock audit head: %w", err)
	}
	for i := range recs {
		s.chain.Seal(&recs[i], seq+1, mac)
		seq, mac = recs[i].Seq, recs[i].MAC
	}
	if s.db.Engine == Postgres && len(recs) > 1 {
		// A bulk import appends one record per binding it changed: on PostgreSQL as columns in
		// one statement.
		if err := insertAuditColumns(ctx, tx, recs); err != nil {
			return fmt.Errorf("append audit records: %w", err)
		}
		recs = nil
	}
	// Many rows per statement: a bulk import appends one record per binding it changed.
	const rowsPerInsert = 500
	for start := 0; start < len(recs); start += rowsPerInsert {
		chunk := recs[start:min(start+rowsPerInsert, len(recs))]
		var q strings.Builder
		// On SQLite, OR IGNORE spares the statement journal of a multi-row insert (see
		// insertRows); a record it ignored fails the append below.
		q.WriteString(`INSERT `)
		if s.db.Engine == SQLite {
			q.WriteString(`OR IGNORE `)
		}
		q.WriteString(`INTO audit_records (seq, at, action, outcome, actor_kind, actor, on_behalf_of,
			medium, address, resource, subject, source, request_id, detail, count, found, prev_mac, mac) VALUES `)
		args := make([]any, 0, len(chunk)*auditFields)
		for i, r := range chunk {
			if i > 0 {
				q.WriteString(", ")
			}
			q.WriteString("(")
			for c := range auditFields {
				if c > 0 {
					q.WriteString(", ")
				}
				// SQLite finds a $N parameter by a linear search of the statement's names, which
				// made an import's records cost quadratic time; ? parameters are numbered in order.
				if s.db.Engine == Postgres {
					fmt.Fprintf(&q, "$%d", len(args)+c+1)
				} else {
					q.WriteString("?")
				}
			}
			q.WriteString(")")
			args = append(args, r.Seq, ms(r.At), string(r.Action), string(r.Outcome), string(r.Actor.Kind), r.Actor.ID, r.OnBehalfOf,
				r.Medium, r.Address, r.Resource, r.Subject, r.Source, r.RequestID, r.Detail, r.Count, r.Found, r.PrevMAC, r.MAC)
		}
		exec := tx.ExecContext
		if len(recs) > rowsPerInsert {
			exec = stmts.exec // the same statement for every full chunk
		}
		res, err := exec(ctx, q.String(), args...)
		if err != nil {
			return fmt.Errorf("append audit records: %w", err)
		}
		if n, err := res.RowsAffected(); err != nil || n != int64(len(chunk)) {
			return fmt.Errorf("append audit records: %d of %d stored (%v)", n, len(chunk), err)
		}
	}
	if _, err := tx.ExecContext(ctx, `UPDATE audit_head SET seq = $1, mac = $2 WHERE id = 1`, seq, mac); err != nil {
		return fmt.Errorf("move audit head: %w", err)
	}
	return nil
}

// insertAuditColumns inserts recs with one array per column (PostgreSQL).
func insertAuditColumns(ctx context.Context, tx *sql.Tx, recs []audit.Record) error {
	n := len(recs)
	seq, at, count, found := make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n)
	text := make([][]string, 13)
	for i := range text {
		text[i] = make([]string, n)
	}
	for i, r := range recs {
		seq[i], at[i], count[i], found[i] = r.Seq, ms(r.At), r.Count, r.Found
		for c, v := range []string{string(r.Action), string(r.Outcome), string(r.Actor.Kind), r.Actor.ID, r.OnBehalfOf,
			r.Medium, r.Address, r.Resource, r.Source, r.RequestID, r.Detail, r.PrevMAC, r.MAC} {
			text[c][i] = v
		}
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO audit_records (seq, at, action, outcome, actor_kind, actor, on_behalf_of,
		medium, address, resource, source, request_id, detail, prev_mac, mac, count, found)
		SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
			$9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[], $15::text[], $16::bigint[], $17::bigint[])`,
		seq, at, text[0], text[1], text[2], text[3], text[4], text[5], text[6], text[7], text[8], text[9], text[10], text[11], text[12], count, found)
	return err
}

func (s *Store) AppendAudit(ctx context.Context, recs ...audit.Record) error {
	return s.tx(ctx, func(tx *sql.Tx) error { return s.appendAudit(ctx, tx, recs) })
}

func (s *Store) AuditHead(ctx context.Context) (audit.Head, error) {
	var h audit.Head
	err := s.db.QueryRowContext(ctx, `SELECT seq, mac, pruned_seq, pruned_mac FROM audit_head WHERE id = 1`).
		Scan(&h.Seq, &h.MAC, &h.PrunedSeq, &h.PrunedMAC)
	if err != nil {
		return h, fmt.Errorf("read audit head: %w", err)
	}
	return h, nil
}

const auditColumns = `seq, at, action, outcome, actor_kind, actor, on_behalf_of, medium, address, resource, subject, source,
	request_id, detail, count, found, prev_mac, mac`

// auditFields is the number of auditColumns.
const auditFields = 18

func scanAudit(rows *sql.Rows) (audit.Record, error) {
	var r audit.Record
	var at int64
	var action, outcome, kind string
	err := rows.Scan(&r.Seq, &at, &action, &outcome, &kind, &r.Actor.ID, &r.OnBehalfOf, &r.Medium, &r.Address,
		&r.Resource, &r.Subject, &r.Source, &r.RequestID, &r.Detail, &r.Count, &r.Found, &r.PrevMAC, &r.MAC)
	r.At, r.Action, r.Outcome, r.Actor.Kind = fromMS(at), audit.Action(action), audit.Outcome(outcome), audit.AgentKind(kind)
	return r, err
}

func (s *Store) queryAudit(ctx context.Context, q string, args ...any) ([]audit.Record, error) {
	var out []audit.Record
	err := sqlin.Each(ctx, s.db, q, args, func(rows *sql.Rows) error {
		r, err := scanAudit(rows)
		out = append(out, r)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("read audit records: %w", err)
	}
	return out, nil
}

func (s *Store) ScanAudit(ctx context.Context, after, upTo int64, fn func(audit.Record) error) error {
	const page = 1000
	for after < upTo {
		recs, err := s.queryAudit(ctx, `SELECT `+auditColumns+` FROM audit_records WHERE seq > $1 AND seq <= $2
			ORDER BY seq LIMIT `+fmt.Sprint(page), after, upTo)
		if err != nil {
			return err
		}
		for _, r := range recs {
			if err := fn(r); err != nil {
				return err
			}
		}
		if len(recs) < page {
			return nil
		}
		after = recs[len(recs)-1].Seq
	}
	return nil
}

func (s *Store) ListAudit(ctx context.Context, since time.Time, after int64, limit int) ([]audit.Record, error) {
	return s.queryAudit(ctx, `SELECT `+auditColumns+` FROM audit_records WHERE seq > $1 AND at >= $2
		ORDER BY seq LIMIT `+fmt.Sprint(limit), after, ms(since))
}

func (s *Store) SaveCheckpoint(ctx context.Context, cp audit.Checkpoint) error {
	body, err := json.Marshal(cp)
	if err != nil {
		return fmt.Errorf("encode checkpoint: %w", err)
	}
	if _, err := s.db.ExecContext(ctx, `INSERT INTO audit_checkpoints (seq, mac, created_at, body) VALUES ($1, $2, $3, $4)
		ON CONFLICT (seq) DO UPDATE SET mac = excluded.mac, created_at = excluded.created_at, body = excluded.body`,
		cp.Seq, cp.MAC, ms(cp.Created), string(body)); err != nil {
		return fmt.Errorf("save checkpoint: %w", err)
	}
	return nil
}

func (s *Store) LatestCheckpoint(ctx context.Context) (audit.Checkpoint, error) {
	var body string
	err := s.db.QueryRowContext(ctx, `SELECT body FROM audit_checkpoints ORDER BY seq DESC LIMIT 1`).Scan(&body)
	if errors.Is(err, sql.ErrNoRows) {
		return audit.Checkpoint{}, audit.ErrNoCheckpoint
	}
	if err != nil {
		return audit.Checkpoint{}, fmt.Errorf("read checkpoint: %w", err)
	}
	return audit.ParseCheckpoint([]byte(body))
}

func (s *Store) PruneAudit(ctx context.Context, before time.Time, upTo int64) (int64, error) {
	var n int64
	err := s.tx(ctx, func(tx *sql.Tx) error {
		q := `SELECT seq, pruned_seq FROM audit_head WHERE id = 1`
		if s.db.Engine == Postgres {
			q += ` FOR UPDATE`
		}
		var head, pruned int64
		if err := tx.QueryRowContext(ctx, q).Scan(&head, &pruned); err != nil {
			return fmt.Errorf("lock audit head: %w", err)
		}
		// Only a prefix can go: the chain stays verifiable from the newest removed record.
		var firstYoung sql.NullInt64
		if err := tx.QueryRowContext(ctx, `SELECT MIN(seq) FROM audit_records WHERE at >= $1`, ms(before)).Scan(&firstYoung); err != nil {
			return fmt.Errorf("find audit records to prune: %w", err)
		}
		last := min(upTo, head)
		if firstYoung.Valid {
			last = min(last, firstYoung.Int64-1)
		}
		// Records still waiting to be pushed to the audit record repository stay.
		var firstUnpushed sql.NullInt64
		if err := tx.QueryRowContext(ctx, `SELECT MIN(first_seq) FROM audit_push_queue`).Scan(&firstUnpushed); err != nil {
			return fmt.Errorf("find audit records to prune: %w", err)
		}
		if firstUnpushed.Valid {
			last = min(last, firstUnpushed.Int64-1)
		}
		if last <= pruned {
			return nil
		}
		var mac string
		if err := tx.QueryRowContext(ctx, `SELECT mac FROM audit_records WHERE seq = $1`, last).Scan(&mac); err != nil {
			return fmt.Errorf("read audit record %d: %w", last, err)
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM audit_records WHERE seq <= $1`, last)
		if err != nil {
			return fmt.Errorf("prune audit records: %w", err)
		}
		n, _ = res.RowsAffected()
		if _, err := tx.ExecContext(ctx, `UPDATE audit_head SET pruned_seq = $1, pruned_mac = $2 WHERE id = 1`, last, mac); err != nil {
			return fmt.Errorf("prune audit records: %w", err)
		}
		return nil
	})
	return n, err
}

func (s *Store) EnqueueAuditPush(ctx context.Context, batch int, now time.Time) (int, error) {
	n := 0
	err := s.tx(ctx, func(tx *sql.Tx) error {
		q := `SELECT seq, queued_seq, pruned_seq FROM audit_head WHERE id = 1`
		if s.db.Engine == Postgres {
			q += ` FOR UPDATE`
		}
		var head, queued, pruned int64
		if err := tx.QueryRowContext(ctx, q).Scan(&head, &queued, &pruned); err != nil {
			return fmt.Errorf("lock audit head: %w", err)
		}
		queued = max(queued, pruned)
		for queued < head {
			last := min(head, queued+int64(batch))
			if _, err := tx.ExecContext(ctx, `INSERT INTO audit_push_queue (first_seq, last_seq, attempts, next_attempt_at, last_error)
				VALUES ($1, $2, 0, $3, '')`, queued+1, last, ms(now)); err != nil {
				return fmt.Errorf("queue audit push: %w", err)
			}
			queued = last
			n++
		}
		if _, err := tx.ExecContext(ctx, `UPDATE audit_head SET queued_seq = $1 WHERE id = 1`, queued); err != nil {
			return fmt.Errorf("queue audit push: %w", err)
		}
		return nil
	})
	return n, err
}

func (s *Store) ClaimAuditPush(ctx context.Context, now, until time.Time) (audit.PushBatch, bool, error) {
	var b audit.PushBatch
	found := false
	err := s.tx(ctx, func(tx *sql.Tx) error {
		q := `SELECT first_seq, last_seq, attempts, last_error FROM audit_push_queue WHERE next_attempt_at <= $1
			ORDER BY first_seq LIMIT 1`
		if s.db.Engine == Postgres {
			// Replicas each take a different batch instead of waiting for one another.
			q += ` FOR UPDATE SKIP LOCKED`
		}
		err := tx.QueryRowContext(ctx, q, ms(now)).Scan(&b.ID, &b.LastSeq, &b.Attempts, &b.LastError)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("claim audit push: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE audit_push_queue SET next_attempt_at = $1 WHERE first_seq = $2`, ms(until), b.ID); err != nil {
			return fmt.Errorf("claim audit push: %w", err)
		}
		found = true
		return nil
	})
	return b, found, err
}

func (s *Store) AuditPushDone(ctx context.Context, id int64) error {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM audit_push_queue WHERE first_seq = $1`, id); err != nil {
		return fmt.Errorf("audit push done: %w", err)
	}
	return nil
}

func (s *Store) ReleaseAuditPush(ctx context.Context, id int64, claimed time.Time) error {
	if _, err := s.db.ExecContext(ctx, `UPDATE audit_push_queue SET next_attempt_at = $1 WHERE first_seq = $2 AND next_attempt_at = $3`,
		ms(time.Now()), id, ms(claimed)); err != nil {
		return fmt.Errorf("release audit push: %w", err)
	}
	return nil
}

func (s *Store) AuditPushFailed(ctx context.Context, id int64, next time.Time, lastError string) error {
	if _, err := s.db.ExecContext(ctx, `UPDATE audit_push_queue SET attempts = attempts + 1, next_attempt_at = $1, last_error = $2
		WHERE first_seq = $3`, ms(next), audit.Escape(lastError, 500), id); err != nil {
		return fmt.Errorf("audit push failed: %w", err)
	}
	return nil
}
