package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"strings"

	"github.com/ozo-platform/ozo-identity/lookup/mcsd"
)

// The write path of a sync, run for every batch of every directory. PostgreSQL gets whole
// columns as arrays (unnest, = ANY): one statement and one short plan whatever the batch size.
// SQLite gets prepared multi-row statements with ? parameters in a few fixed sizes: parsing
// was a fifth of a sync's CPU, and it finds a $N parameter by a linear search.

// mcsdRowSizes are the rows per statement on SQLite, largest first: a batch is cut into the
// largest that fit, so that a handful of statements per table is ever prepared.
var mcsdRowSizes = []int{100, 20, 5, 1}

// upsertSet is the update part of the resources' upsert: every column but the key.
var upsertSet = func() string {
	var b strings.Builder
	for i, c := range resourceCols[3:] {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(c + " = excluded." + c)
	}
	return b.String()
}()

// guardSQL is upsertGuard with the full flag written in, so that its statements need no $1.
func guardSQL(full bool) string {
	return strings.ReplaceAll(upsertGuard, "$1 = 1", fmt.Sprintf("%d = 1", b2i(full)))
}

// pgUpsertResources is the PostgreSQL upsert of a batch: $1 dir, $2 type, $3 run, then one
// array per column from id on (seen_run is $3).
var pgUpsertResources = func() []string {
	types := map[string]string{"version_ts": "bigint", "deleted": "integer", "active": "integer", "period_start": "bigint", "period_end": "bigint"}
	var cols, arrays []string
	n := 4
	for _, c := range resourceCols[2:] {
		if c == "seen_run" {
			continue
		}
		t := types[c]
		if t == "" {
			t = "text"
		}
		cols = append(cols, c)
		arrays = append(arrays, fmt.Sprintf("$%d::%s[]", n, t))
		n++
	}
	q := func(full bool) string {
		return `INSERT INTO mcsd_resources (dir, type, seen_run, ` + strings.Join(cols, ", ") + `)
			SELECT $1, $2, $3, u.* FROM unnest(` + strings.Join(arrays, ", ") + `) AS u(` + strings.Join(cols, ", ") + `)
			ON CONFLICT (dir, type, id) DO UPDATE SET ` + upsertSet + guardSQL(full) + ` RETURNING id, xmax = 0`
	}
	return []string{q(false), q(true)}
}()

// applyTx writes versions of resources of type typ, one per id, in tx; the caller marks the
// directory dirty when any applied.
func (db *DB) applyTx(ctx context.Context, tx *sql.Tx, dir, typ string, run int64, full bool, batch []mcsd.Resource) (applied, deleted int, err error) {
	// appliedIDs holds the ids written, true for rows that are new (known on PostgreSQL only):
	// those have no references or identifiers to replace, which in a first sync is every row.
	var appliedIDs map[string]bool
	if db.Engine == Postgres {
		appliedIDs, err = db.upsertResourcesPG(ctx, tx, dir, typ, run, full, batch)
	} else {
		appliedIDs, err = db.upsertResourcesSQLite(ctx, tx, dir, typ, run, full, batch)
	}
	if err != nil {
		return 0, 0, fmt.Errorf("store %s: %w", typ, err)
	}
	if len(appliedIDs) == 0 {
		return 0, 0, nil
	}
	var ids []string
	var refs, idents [][3]string
	for _, r := range batch {
		isNew, ok := appliedIDs[r.ID]
		if !ok {
			continue
		}
		applied++
		if r.Deleted {
			deleted++
		}
		if !isNew {
			ids = append(ids, r.ID)
		}
		for _, rf := range r.Refs {
			refs = append(refs, [3]string{r.ID, rf.Kind, rf.To})
		}
		for _, id := range r.Idents {
			idents = append(idents, [3]string{r.ID, id.Kind, id.Value})
		}
	}
	if err := db.deleteIn(ctx, tx, `DELETE FROM mcsd_refs WHERE dir = $1 AND from_type = $2 AND from_id`, []any{dir, typ}, ids, "", nil); err != nil {
		return 0, 0, fmt.Errorf("replace references: %w", err)
	}
	if err := db.deleteIn(ctx, tx, `DELETE FROM mcsd_identifiers WHERE dir = $1 AND type = $2 AND id`, []any{dir, typ}, ids, "", nil); err != nil {
		return 0, 0, fmt.Errorf("replace identifiers: %w", err)
	}
	if err := db.insertTriples(ctx, tx, "mcsd_refs (dir, from_type, from_id, kind, to_id)", dir, typ, refs); err != nil {
		return 0, 0, fmt.Errorf("store references: %w", err)
	}
	if err := db.insertTriples(ctx, tx, "mcsd_identifiers (dir, type, id, kind, value)", dir, typ, idents); err != nil {
		return 0, 0, fmt.Errorf("store identifiers: %w", err)
	}
	return applied, deleted, nil
}

func (db *DB) upsertResourcesPG(ctx context.Context, tx *sql.Tx, dir, typ string, run int64, full bool, batch []mcsd.Resource) (map[string]bool, error) {
	n := len(batch)
	text := func(f func(r *mcsd.Resource) string) []string {
		out := make([]string, n)
		for i := range batch {
			out[i] = f(&batch[i])
		}
		return out
	}
	ints := func(f func(r *mcsd.Resource) int64) []int64 {
		out := make([]int64, n)
		for i := range batch {
			out[i] = f(&batch[i])
		}
		return out
	}
	flags := func(f func(r *mcsd.Resource) bool) []int32 {
		out := make([]int32, n)
		for i := range batch {
			out[i] = int32(b2i(f(&batch[i])))
		}
		return out
	}
	args := []any{dir, typ, run,
		text(func(r *mcsd.Resource) string { return r.ID }),
		text(func(r *mcsd.Resource) string { return r.VersionID }),
		ints(func(r *mcsd.Resource) int64 { return r.TS }),
		flags(func(r *mcsd.Resource) bool { return r.Deleted }),
		flags(func(r *mcsd.Resource) bool { return r.Active && !r.Deleted }),
		ints(func(r *mcsd.Resource) int64 { return r.PeriodStart }),
		ints(func(r *mcsd.Resource) int64 { return r.PeriodEnd }),
		text(func(r *mcsd.Resource) string { return r.Name }),
		text(func(r *mcsd.Resource) string { return r.Search }),
		text(func(r *mcsd.Resource) string { return r.URA }),
		text(func(r *mcsd.Resource) string { return r.OrgRef }),
		text(func(r *mcsd.Resource) string { return r.PractitionerRef }),
		text(func(r *mcsd.Resource) string { return r.LocationRef }),
		text(func(r *mcsd.Resource) string { return r.Codes }),
		text(func(r *mcsd.Resource) string { return r.CodeText }),
		text(func(r *mcsd.Resource) string { return r.MXID }),
		text(func(r *mcsd.Resource) string { return r.Homeserver }),
		text(func(r *mcsd.Resource) string { return r.Kind }),
		text(func(r *mcsd.Resource) string { return r.Address }),
		text(func(r *mcsd.Resource) string { return r.City }),
		text(func(r *mcsd.Resource) string { return r.Issue }),
	}
	st, err := db.prepared(ctx, tx, pgUpsertResources[b2i(full)])
	if err != nil {
		return nil, err
	}
	rows, err := st.QueryContext(ctx, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var id string
		var inserted bool
		if err := rows.Scan(&id, &inserted); err != nil {
			return nil, err
		}
		out[id] = inserted
	}
	return out, rows.Err()
}

func (db *DB) upsertResourcesSQLite(ctx context.Context, tx *sql.Tx, dir, typ string, run int64, full bool, batch []mcsd.Resource) (map[string]bool, error) {
	out := map[string]bool{}
	for len(batch) > 0 {
		size := rowSize(len(batch))
		part := batch[:size]
		batch = batch[size:]
		q := `INSERT INTO mcsd_resources (` + strings.Join(resourceCols, ", ") + `) VALUES ` + valueRows(size, len(resourceCols)) +
			` ON CONFLICT (dir, type, id) DO UPDATE SET ` + upsertSet + guardSQL(full) + ` RETURNING id`
		args := make([]any, 0, size*len(resourceCols))
		for _, r := range part {
			args = append(args, dir, typ, r.ID, r.VersionID, r.TS, run, b2i(r.Deleted), b2i(r.Active && !r.Deleted),
				r.PeriodStart, r.PeriodEnd, r.Name, r.Search, r.URA, r.OrgRef, r.PractitionerRef, r.LocationRef,
				r.Codes, r.CodeText, r.MXID, r.Homeserver, r.Kind, r.Address, r.City, r.Issue)
		}
		st, err := db.prepared(ctx, tx, q)
		if err != nil {
			return nil, err
		}
		ids, err := collectIDs(st.QueryContext(ctx, args...))
		if err != nil {
			return nil, err
		}
		for id := range ids {
			out[id] = false // SQLite cannot tell an insert from an update here
		}
	}
	return out, nil
}

// rowSize is the largest of mcsdRowSizes that n rows fill.
func rowSize(n int) int {
	for _, s := range mcsdRowSizes {
		if n >= s {
			return s
		}
	}
	return 1
}

func collectIDs(rows *sql.Rows, err error) (map[string]bool, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		out[id] = true
	}
	return out, rows.Err()
}

// deleteIn runs prefix (ending in the column to match, with $1… bound to fixed) for values:
// "= ANY($n)" on PostgreSQL, "IN (?, …)" lists padded to a fixed size on SQLite. returning, if
// not empty, is a RETURNING clause whose rows go to scan.
func (db *DB) deleteIn(ctx context.Context, tx *sql.Tx, prefix string, fixed []any, values []string, returning string, scan func(*sql.Rows) error) error {
	if len(values) == 0 {
		return nil
	}
	run := func(q string, args []any) error {
		if returning == "" {
			_, err := db.execPrepared(ctx, tx, q, args...)
			return err
		}
		st, err := db.prepared(ctx, tx, q+" RETURNING "+returning)
		if err != nil {
			return err
		}
		rows, err := st.QueryContext(ctx, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			if err := scan(rows); err != nil {
				return err
			}
		}
		return rows.Err()
	}
	if db.Engine == Postgres {
		return run(prefix+fmt.Sprintf(` = ANY($%d)`, len(fixed)+1), append(slices.Clip(fixed), values))
	}
	for i := len(fixed); i >= 1; i-- {
		prefix = strings.ReplaceAll(prefix, fmt.Sprintf("$%d", i), "?")
	}
	for len(values) > 0 {
		n := padSize(len(values))
		part := values[:min(n, len(values))]
		values = values[len(part):]
		args := slices.Clone(fixed)
		for i := range n {
			// Padding repeats the last value: matching it twice deletes nothing more.
			args = append(args, part[min(i, len(part)-1)])
		}
		if err := run(prefix+` IN (`+strings.TrimSuffix(strings.Repeat("?,", n), ",")+`)`, args); err != nil {
			return err
		}
	}
	return nil
}

// padSize is the IN list size values are padded to on SQLite.
func padSize(n int) int {
	switch {
	case n <= 8:
		return 8
	case n <= 64:
		return 64
	default:
		return 400
	}
}

// insertTriples inserts (a, b, x, y, z) rows into table, skipping duplicates: the triples
// share a and b (the directory and the type).
func (db *DB) insertTriples(ctx context.Context, tx *sql.Tx, table, a, b string, vals [][3]string) error {
	if len(vals) == 0 {
		return nil
	}
	if db.Engine == Postgres {
		cols := [3][]string{}
		for _, v := range vals {
			for i := range 3 {
				cols[i] = append(cols[i], v[i])
			}
		}
		_, err := db.execPrepared(ctx, tx, `INSERT INTO `+table+` SELECT $1, $2, u.* FROM unnest($3::text[], $4::text[], $5::text[]) AS u
			ON CONFLICT DO NOTHING`, a, b, cols[0], cols[1], cols[2])
		return err
	}
	for len(vals) > 0 {
		n := padSize(len(vals))
		part := vals[:min(n, len(vals))]
		vals = vals[len(part):]
		args := make([]any, 0, 5*n)
		for i := range n {
			// Padding repeats the last row, which the conflict clause then skips.
			v := part[min(i, len(part)-1)]
			args = append(args, a, b, v[0], v[1], v[2])
		}
		if _, err := db.execPrepared(ctx, tx, `INSERT INTO `+table+` VALUES `+valueRows(n, 5)+` ON CONFLICT DO NOTHING`, args...); err != nil {
			return err
		}
	}
	return nil
}
