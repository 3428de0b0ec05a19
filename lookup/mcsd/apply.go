package mcsd

import (
	"github.com/ozo-platform/ozo-identity/internal/sqlin"

	"context"
	"database/sql"
	"fmt"
	"strings"
)

var resourceCols = []string{"dir", "type", "id", "version_id", "version_ts", "seen_run", "deleted", "active",
	"period_start", "period_end", "name", "search", "ura", "org_ref", "practitioner_ref", "location_ref",
	"codes", "code_text", "mxid", "homeserver", "kind", "address", "city", "issue"}

// upsertGuard decides whether an incoming version replaces the stored one. Within one run the
// first version seen wins unless a later one is strictly newer, because a history lists the newest
// version first; across runs anything not older wins, and a full fetch ($1 = 1) also re-marks
// unchanged resources as seen so that the sweep after it keeps them.
const upsertGuard = ` WHERE (mcsd_resources.seen_run = excluded.seen_run AND excluded.version_ts > mcsd_resources.version_ts)
	OR (mcsd_resources.seen_run <> excluded.seen_run AND (excluded.version_ts = 0 OR excluded.version_ts > mcsd_resources.version_ts
		OR (excluded.version_ts = mcsd_resources.version_ts AND ($1 = 1 OR excluded.version_id <> mcsd_resources.version_id
			OR excluded.deleted <> mcsd_resources.deleted))))`

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// dedupe keeps one version per id of a batch by the rule of upsertGuard, because one statement
// may not touch a row twice.
func dedupe(rows []row) []row {
	idx := make(map[string]int, len(rows))
	out := rows[:0:0]
	for _, r := range rows {
		if i, ok := idx[r.ID]; ok {
			if r.TS > out[i].TS {
				out[i] = r
			}
			continue
		}
		idx[r.ID] = len(out)
		out = append(out, r)
	}
	return out
}

// applyBatch writes one batch of versions of resources of type typ in one short transaction and
// returns how many changed the index and how many of those were deletes.
func (x *Index) applyBatch(ctx context.Context, dir, typ string, run int64, full bool, batch []row) (applied, deleted int, err error) {
	batch = dedupe(batch)
	if len(batch) == 0 {
		return 0, 0, nil
	}
	err = x.tx(ctx, func(tx *sql.Tx) error {
		applied, deleted, err = x.applyTx(ctx, tx, dir, typ, run, full, batch)
		return err
	})
	if err == nil {
		x.written.Add(int64(applied))
	}
	return applied, deleted, err
}

// applyTx writes versions of resources of type typ, one per id, in tx.
func (x *Index) applyTx(ctx context.Context, tx *sql.Tx, dir, typ string, run int64, full bool, batch []row) (applied, deleted int, err error) {
	err = func() error {
		appliedIDs := make(map[string]bool)
		// Small statements: SQLite looks up $N parameters by name, in time quadratic in their number.
		const perStmt = 20
		for start := 0; start < len(batch); start += perStmt {
			part := batch[start:min(len(batch), start+perStmt)]
			args := []any{b2i(full)}
			var q strings.Builder
			q.WriteString(`INSERT INTO mcsd_resources (` + strings.Join(resourceCols, ", ") + `) VALUES `)
			for i, r := range part {
				if i > 0 {
					q.WriteByte(',')
				}
				q.WriteString("(" + sqlin.Placeholders(len(args)+1, len(resourceCols)) + ")")
				args = append(args, dir, typ, r.ID, r.VersionID, r.TS, run, b2i(r.Deleted), b2i(r.Active && !r.Deleted),
					r.PeriodStart, r.PeriodEnd, r.Name, r.Search, r.URA, r.OrgRef, r.PractitionerRef, r.LocationRef,
					r.Codes, r.CodeText, r.MXID, r.Homeserver, r.Kind, r.Address, r.City, r.Issue)
			}
			q.WriteString(` ON CONFLICT (dir, type, id) DO UPDATE SET `)
			for i, c := range resourceCols[3:] {
				if i > 0 {
					q.WriteString(", ")
				}
				q.WriteString(c + " = excluded." + c)
			}
			q.WriteString(upsertGuard + ` RETURNING id`)
			var rows *sql.Rows
			if len(part) == perStmt {
				st, err := x.prepared(ctx, tx, q.String())
				if err != nil {
					return fmt.Errorf("store %s: %w", typ, err)
				}
				rows, err = st.QueryContext(ctx, args...)
			} else {
				rows, err = tx.QueryContext(ctx, q.String(), args...)
			}
			if err != nil {
				return fmt.Errorf("store %s: %w", typ, err)
			}
			for rows.Next() {
				var id string
				if err := rows.Scan(&id); err != nil {
					rows.Close()
					return fmt.Errorf("store %s: %w", typ, err)
				}
				appliedIDs[id] = true
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return fmt.Errorf("store %s: %w", typ, err)
			}
		}
		if len(appliedIDs) == 0 {
			return nil
		}
		var ids []any
		var refVals, identVals []any
		for _, r := range batch {
			if !appliedIDs[r.ID] {
				continue
			}
			applied++
			if r.Deleted {
				deleted++
			}
			ids = append(ids, r.ID)
			for _, rf := range r.Refs {
				refVals = append(refVals, dir, typ, r.ID, rf.Kind, rf.To)
			}
			for _, id := range r.Idents {
				identVals = append(identVals, dir, typ, r.ID, id.Kind, id.Value)
			}
		}
		for start := 0; start < len(ids); start += inChunk {
			part := ids[start:min(len(ids), start+inChunk)]
			args := append([]any{dir, typ}, part...)
			in := sqlin.Placeholders(3, len(part))
			if _, err := tx.ExecContext(ctx, `DELETE FROM mcsd_refs WHERE dir = $1 AND from_type = $2 AND from_id IN (`+in+`)`, args...); err != nil {
				return fmt.Errorf("replace references: %w", err)
			}
			if _, err := tx.ExecContext(ctx, `DELETE FROM mcsd_identifiers WHERE dir = $1 AND type = $2 AND id IN (`+in+`)`, args...); err != nil {
				return fmt.Errorf("replace identifiers: %w", err)
			}
		}
		if err := insertTuples(ctx, tx, `INSERT INTO mcsd_refs (dir, from_type, from_id, kind, to_id) VALUES `, 5, refVals); err != nil {
			return fmt.Errorf("store references: %w", err)
		}
		if err := insertTuples(ctx, tx, `INSERT INTO mcsd_identifiers (dir, type, id, kind, value) VALUES `, 5, identVals); err != nil {
			return fmt.Errorf("store identifiers: %w", err)
		}
		if _, err := x.execPrepared(ctx, tx, `UPDATE mcsd_directories SET dirty = 1 WHERE id = $1 AND dirty = 0`, dir); err != nil {
			return fmt.Errorf("mark directory: %w", err)
		}
		return nil
	}()
	return applied, deleted, err
}

// insertTuples inserts vals, width values a row, in statements of bounded size, skipping duplicates.
func insertTuples(ctx context.Context, tx *sql.Tx, prefix string, width int, vals []any) error {
	per := (inChunk / width) * width
	for start := 0; start < len(vals); start += per {
		part := vals[start:min(len(vals), start+per)]
		var q strings.Builder
		q.WriteString(prefix)
		for i := 0; i < len(part); i += width {
			if i > 0 {
				q.WriteByte(',')
			}
			q.WriteString("(" + sqlin.Placeholders(i+1, width) + ")")
		}
		q.WriteString(` ON CONFLICT DO NOTHING`)
		if _, err := tx.ExecContext(ctx, q.String(), part...); err != nil {
			return err
		}
	}
	return nil
}

// sweepTx turns into tombstones the resources of type typ that a full read of its history (tr)
// proves gone, as after a backup restore of the directory: those it did not list, unless they
// are newer than its snapshot, which another run may have just written. It reports how many
// it removed.
func sweepTx(ctx context.Context, tx *sql.Tx, dir string, tr typeResult, run int64) (int, error) {
	rows, err := tx.QueryContext(ctx, `SELECT id, version_ts FROM mcsd_resources WHERE dir = $1 AND type = $2 AND deleted = 0`, dir, tr.typ)
	if err != nil {
		return 0, fmt.Errorf("sweep %s: %w", tr.typ, err)
	}
	var gone []any
	for rows.Next() {
		var id string
		var ts int64
		if err := rows.Scan(&id, &ts); err != nil {
			rows.Close()
			return 0, fmt.Errorf("sweep %s: %w", tr.typ, err)
		}
		if !tr.seen[id] && ts <= tr.snapshot {
			gone = append(gone, id)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("sweep %s: %w", tr.typ, err)
	}
	n := 0
	for start := 0; start < len(gone); start += inChunk {
		part := gone[start:min(len(gone), start+inChunk)]
		args := append([]any{dir, tr.typ, run}, part...)
		in := sqlin.Placeholders(4, len(part))
		res, err := tx.ExecContext(ctx, `UPDATE mcsd_resources SET deleted = 1, active = 0, seen_run = $3
			WHERE dir = $1 AND type = $2 AND deleted = 0 AND id IN (`+in+`)`, args...)
		if err != nil {
			return 0, fmt.Errorf("sweep %s: %w", tr.typ, err)
		}
		k, _ := res.RowsAffected()
		n += int(k)
		in = sqlin.Placeholders(3, len(part))
		for _, q := range []string{
			`DELETE FROM mcsd_refs WHERE dir = $1 AND from_type = $2 AND from_id IN (` + in + `)`,
			`DELETE FROM mcsd_identifiers WHERE dir = $1 AND type = $2 AND id IN (` + in + `)`,
		} {
			if _, err := tx.ExecContext(ctx, q, append([]any{dir, tr.typ}, part...)...); err != nil {
				return 0, fmt.Errorf("sweep %s: %w", tr.typ, err)
			}
		}
	}
	if n == 0 {
		return 0, nil
	}
	if _, err := tx.ExecContext(ctx, `UPDATE mcsd_directories SET dirty = 1 WHERE id = $1`, dir); err != nil {
		return 0, fmt.Errorf("sweep %s: %w", tr.typ, err)
	}
	return n, nil
}
