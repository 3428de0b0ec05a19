package sqlstore

import (
	"cmp"
	"context"
	"database/sql"
	"fmt"
	"slices"
	"strings"

	"github.com/ozo-platform/ozo-identity/audit"
	"github.com/ozo-platform/ozo-identity/identity"
	"github.com/ozo-platform/ozo-identity/threepid"
)

// Rows per statement on SQLite: well under its 32,766 parameters, and large enough that the
// per-statement cost vanishes. PostgreSQL takes whole columns as arrays in one statement.
const (
	importSelectRows  = 500
	importBindingRows = 400
	importHashRows    = 1000
	importCacheKiB    = 32 << 10
)

// ImportBindings is Bind for many bindings at once: a few statements per thousand bindings
// instead of four statements and a transaction each.
func (s *Store) ImportBindings(ctx context.Context, items []identity.ImportBinding, deliver func(identity.Binding, []identity.Invite) ([]identity.OnBindDelivery, error),
	record func(identity.Binding, []identity.Invite) []audit.Record) (identity.ImportResult, error) {
	items = lastPerThreePID(items)
	im := importer{pg: s.db.Engine == Postgres}
	var res identity.ImportResult
	err := s.tx(ctx, func(tx *sql.Tx) error {
		im.tx = newTxStmts(tx, s.db.Engine)
		seq, err := nextChange(ctx, tx)
		if err != nil {
			return err
		}
		res = identity.ImportResult{Seq: seq}
		peppers := map[string]bool{}
		for _, it := range items {
			peppers[it.Pepper] = true
		}
		for p := range peppers {
			if err := checkPepper(ctx, tx, p); err != nil {
				return err
			}
		}
		if !im.pg {
			// Thousands of random-keyed hash rows overflow a connection's small page cache,
			// which then spills to the WAL many times per transaction. SQLite has one writer at
			// a time, so one larger cache on the writing connection is a bounded cost.
			if _, err := tx.ExecContext(ctx, fmt.Sprintf(`PRAGMA cache_size = -%d`, importCacheKiB)); err != nil {
				return fmt.Errorf("import cache: %w", err)
			}
			defer tx.ExecContext(context.WithoutCancel(ctx), fmt.Sprintf(`PRAGMA cache_size = -%d`, sqliteCacheKiB))
		}
		existing, err := im.boundMXIDs(ctx, items)
		if err != nil {
			return err
		}
		var changed, created, updated []identity.ImportBinding
		for _, it := range items {
			mxid, ok := existing[it.Binding.ThreePID]
			switch {
			case !ok:
				res.Created++
				created = append(created, it)
			case mxid != it.Binding.MXID:
				res.Updated++
				updated = append(updated, it)
			default:
				res.Unchanged++
				continue
			}
			changed = append(changed, it)
		}
		// In key order, consecutive rows land on the same B-tree pages, which stay in the CPU's
		// caches; in file order each row is a walk down a cold path.
		for _, part := range [][]identity.ImportBinding{created, updated} {
			slices.SortFunc(part, func(a, b identity.ImportBinding) int {
				return cmp.Or(strings.Compare(a.Binding.Medium, b.Binding.Medium), strings.Compare(a.Binding.Address, b.Binding.Address))
			})
		}
		for i, part := range [][]identity.ImportBinding{created, updated} {
			if err := im.upsertBindings(ctx, part, i == 0); err != nil {
				return err
			}
			if err := im.upsertHashes(ctx, part); err != nil {
				return err
			}
		}
		if err := im.insertFoldedHashes(ctx, changed); err != nil {
			return err
		}
		var hashes []string
		for _, it := range changed {
			hashes = append(append(hashes, it.Hashes...), it.FoldedHashes...)
		}
		if err := s.logChangesIn(ctx, im.tx, seq, changeHash, hashes...); err != nil {
			return err
		}
		delivered := map[threepid.ThreePID][]identity.Invite{}
		if deliver != nil {
			waiting, err := im.withPendingInvites(ctx, changed)
			if err != nil {
				return err
			}
			for _, it := range changed {
				if !waiting[it.Binding.ThreePID] {
					continue
				}
				b := it.Binding
				invites, err := queueInvites(ctx, tx, b, func(inv []identity.Invite) ([]identity.OnBindDelivery, error) { return deliver(b, inv) })
				if err != nil {
					return err
				}
				delivered[b.ThreePID] = invites
			}
		}
		if record == nil {
			return nil
		}
		// One record per changed binding, appended with them: an import that cannot be
		// recorded imports nothing.
		var recs []audit.Record
		for _, it := range changed {
			recs = append(recs, record(it.Binding, delivered[it.Binding.ThreePID])...)
		}
		return s.appendAuditIn(ctx, im.tx, recs)
	})
	return res, err
}

// lastPerThreePID keeps the last item of each 3PID, in order: one statement may not upsert a
// row twice.
func lastPerThreePID(items []identity.ImportBinding) []identity.ImportBinding {
	last := make(map[threepid.ThreePID]int, len(items))
	for i, it := range items {
		last[it.Binding.ThreePID] = i
	}
	if len(last) == len(items) {
		return items
	}
	out := make([]identity.ImportBinding, 0, len(last))
	for i, it := range items {
		if last[it.Binding.ThreePID] == i {
			out = append(out, it)
		}
	}
	return out
}

// importer writes one import transaction. PostgreSQL gets arrays (= ANY, unnest): one
// statement and one plan whatever the batch size. SQLite gets multi-row statements with ?
// parameters: it finds a $N parameter by a linear search, so thousands of them cost
// quadratic time.
type importer struct {
	tx *txStmts
	pg bool
}

// p is the i-th of the statement's parameters.
func (im importer) p(i int) string {
	if im.pg {
		return fmt.Sprintf("$%d", i)
	}
	return "?"
}

// in completes query, ending in the column to match, with "= ANY($k)" or "IN (?, …)".
func (im importer) in(query string, fixed []any, values []string) (string, []any) {
	if im.pg {
		return query + fmt.Sprintf("= ANY($%d)", len(fixed)+1), append(fixed, values)
	}
	args := fixed
	for _, v := range values {
		args = append(args, v)
	}
	return query + "IN (" + strings.TrimSuffix(strings.Repeat("?,", len(values)), ",") + ")", args
}

// valueRows returns "(?, ?, ?), (?, ?, ?), …" for rows of width columns.
func valueRows(rows, width int) string {
	row := "(" + strings.TrimSuffix(strings.Repeat("?, ", width), ", ") + ")"
	return strings.TrimSuffix(strings.Repeat(row+", ", rows), ", ")
}

// byMedium groups the items' addresses by medium, for "medium = ? AND address IN (…)" on the
// primary key.
func byMedium(items []identity.ImportBinding) map[string][]string {
	out := map[string][]string{}
	for _, it := range items {
		out[it.Binding.Medium] = append(out[it.Binding.Medium], it.Binding.Address)
	}
	return out
}

// chunks calls fn with consecutive chunks of at most n values; PostgreSQL takes them whole.
func (im importer) chunks(values []string, n int, fn func([]string) error) error {
	if im.pg {
		n = len(values)
	}
	for len(values) > 0 {
		c := values[:min(n, len(values))]
		values = values[len(c):]
		if err := fn(c); err != nil {
			return err
		}
	}
	return nil
}

func (im importer) boundMXIDs(ctx context.Context, items []identity.ImportBinding) (map[threepid.ThreePID]string, error) {
	out := make(map[threepid.ThreePID]string, len(items))
	for medium, addresses := range byMedium(items) {
		err := im.chunks(addresses, importSelectRows, func(chunk []string) error {
			q, args := im.in(`SELECT address, mxid FROM bindings WHERE medium = `+im.p(1)+` AND address `, []any{medium}, chunk)
			rows, err := im.tx.query(ctx, q, args...)
			if err != nil {
				return fmt.Errorf("read bindings: %w", err)
			}
			defer rows.Close()
			for rows.Next() {
				var address, mxid string
				if err := rows.Scan(&address, &mxid); err != nil {
					return fmt.Errorf("read bindings: %w", err)
				}
				out[threepid.ThreePID{Medium: medium, Address: address}] = mxid
			}
			return rows.Err()
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

const upsertBindingTail = ` ON CONFLICT (medium, address) DO UPDATE SET mxid = excluded.mxid, created_at = excluded.created_at,
	not_before = excluded.not_before, not_after = excluded.not_after, source = excluded.source`

// upsertBindings stores items; fresh ones were not there when the transaction read them, and no
// other writer can add them before it ends: every writer of bindings first takes the next change
// number, whose lock this transaction holds.
func (im importer) upsertBindings(ctx context.Context, items []identity.ImportBinding, fresh bool) error {
	if len(items) == 0 {
		return nil
	}
	if im.pg {
		tail := upsertBindingTail
		if fresh {
			tail = "" // a plain insert skips the upsert's probe of the key before each row
		}
		var medium, address, mxid, source []string
		var created, notBefore, notAfter []int64
		for _, it := range items {
			b := it.Binding
			medium, address, mxid, source = append(medium, b.Medium), append(address, b.Address), append(mxid, b.MXID), append(source, b.Source)
			created, notBefore, notAfter = append(created, ms(b.CreatedAt)), append(notBefore, ms(b.NotBefore)), append(notAfter, ms(b.NotAfter))
		}
		if _, err := im.tx.exec(ctx, `INSERT INTO bindings (`+bindingColumns+`) SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::text[])`+
			tail, medium, address, mxid, created, notBefore, notAfter, source); err != nil {
			return fmt.Errorf("store bindings: %w", err)
		}
		return nil
	}
	for len(items) > 0 {
		chunk := items[:min(importBindingRows, len(items))]
		items = items[len(chunk):]
		args := make([]any, 0, 7*len(chunk))
		for _, it := range chunk {
			b := it.Binding
			args = append(args, b.Medium, b.Address, b.MXID, ms(b.CreatedAt), ms(b.NotBefore), ms(b.NotAfter), b.Source)
		}
		if err := im.insertRows(ctx, `bindings (`+bindingColumns+`)`, upsertBindingTail, 7, args); err != nil {
			return fmt.Errorf("store bindings: %w", err)
		}
	}
	return nil
}

// insertRows inserts rows of width values on SQLite as INSERT OR IGNORE, then writes the rows
// it ignored (already there) again with tail, an upsert clause; an empty tail leaves them.
// A multi-row statement that may fail half-way keeps a statement journal, a copy of every page
// it changes, so that it can be undone alone; one that ignores conflicts and NULLs cannot fail
// half-way and needs none. New rows, nearly all of an import, take that path.
func (im importer) insertRows(ctx context.Context, into, tail string, width int, args []any) error {
	rows := len(args) / width
	res, err := im.tx.exec(ctx, `INSERT OR IGNORE INTO `+into+` VALUES `+valueRows(rows, width), args...)
	if err != nil || tail == "" {
		return err
	}
	if n, err := res.RowsAffected(); err != nil || n == int64(rows) {
		return err
	}
	_, err = im.tx.exec(ctx, `INSERT INTO `+into+` VALUES `+valueRows(rows, width)+tail, args...)
	return err
}

// hashRow is a row of binding_hashes or binding_folded_hashes; i orders repeats of a hash.
type hashRow struct {
	hash, medium, address string
	i                     int
}

// hashRows returns the rows of the items' hashes (of the fold: folded ones), once each, in hash
// order for locality (see ImportBindings).
func hashRows(items []identity.ImportBinding, folded bool) []hashRow {
	var rows []hashRow
	for _, it := range items {
		hashes := it.Hashes
		if folded {
			hashes = it.FoldedHashes
		}
		for _, h := range hashes {
			rows = append(rows, hashRow{h, it.Binding.Medium, it.Binding.Address, len(rows)})
		}
	}
	if folded { // several 3PIDs may share a folded hash: each has its row
		slices.SortFunc(rows, func(a, b hashRow) int {
			return cmp.Or(strings.Compare(a.hash, b.hash), strings.Compare(a.medium, b.medium), strings.Compare(a.address, b.address))
		})
		return slices.CompactFunc(rows, func(a, b hashRow) bool {
			return a.hash == b.hash && a.medium == b.medium && a.address == b.address
		})
	}
	slices.SortFunc(rows, func(a, b hashRow) int { return cmp.Or(strings.Compare(a.hash, b.hash), cmp.Compare(a.i, b.i)) })
	// A hash is one row; of repeats, now next to each other, the first wins.
	return slices.CompactFunc(rows, func(a, b hashRow) bool { return a.hash == b.hash })
}

func (im importer) upsertHashes(ctx context.Context, items []identity.ImportBinding) error {
	err := im.insertHashRows(ctx, `binding_hashes (hash, medium, address)`,
		` ON CONFLICT (hash) DO UPDATE SET medium = excluded.medium, address = excluded.address`, hashRows(items, false))
	if err != nil {
		return fmt.Errorf("store lookup hashes: %w", err)
	}
	return nil
}

// insertHashRows inserts rows into the table and columns of into, updating rows already there
// with the upsert clause tail or, without one, leaving them: one statement of column arrays on
// PostgreSQL, multi-row statements of importHashRows rows on SQLite.
func (im importer) insertHashRows(ctx context.Context, into, tail string, rows []hashRow) error {
	if len(rows) == 0 {
		return nil
	}
	if im.pg {
		if tail == "" {
			tail = ` ON CONFLICT DO NOTHING`
		}
		hashes, medium, address := make([]string, len(rows)), make([]string, len(rows)), make([]string, len(rows))
		for i, r := range rows {
			hashes[i], medium[i], address[i] = r.hash, r.medium, r.address
		}
		_, err := im.tx.exec(ctx, `INSERT INTO `+into+` SELECT * FROM unnest($1::text[], $2::text[], $3::text[])`+tail, hashes, medium, address)
		return err
	}
	for len(rows) > 0 {
		chunk := rows[:min(importHashRows, len(rows))]
		rows = rows[len(chunk):]
		args := make([]any, 0, 3*len(chunk))
		for _, r := range chunk {
			args = append(args, r.hash, r.medium, r.address)
		}
		if err := im.insertRows(ctx, into, tail, 3, args); err != nil {
			return err
		}
	}
	return nil
}

// insertFoldedHashes adds the lower-cased 3PIDs' hashes; several bindings may share one (it
// then answers none of them), so rows are added, never moved.
func (im importer) insertFoldedHashes(ctx context.Context, items []identity.ImportBinding) error {
	if err := im.insertHashRows(ctx, `binding_folded_hashes (hash, medium, address)`, "", hashRows(items, true)); err != nil {
		return fmt.Errorf("store folded lookup hashes: %w", err)
	}
	return nil
}

// withPendingInvites reports which of the items' 3PIDs have invites waiting: invites are rare,
// so most imports find none and queue nothing.
func (im importer) withPendingInvites(ctx context.Context, items []identity.ImportBinding) (map[threepid.ThreePID]bool, error) {
	out := map[threepid.ThreePID]bool{}
	if len(items) == 0 {
		return out, nil
	}
	// The earliest binding time finds every candidate; queueInvites checks each exactly.
	at := ms(items[0].Binding.CreatedAt)
	for _, it := range items {
		at = min(at, ms(it.Binding.CreatedAt))
	}
	for medium, addresses := range byMedium(items) {
		err := im.chunks(addresses, importSelectRows, func(chunk []string) error {
			q, args := im.in(`SELECT DISTINCT address FROM invites WHERE delivered_at = 0 AND expires_at > `+im.p(1)+
				` AND medium = `+im.p(2)+` AND address `, []any{at, medium}, chunk)
			rows, err := im.tx.query(ctx, q, args...)
			if err != nil {
				return fmt.Errorf("pending invites: %w", err)
			}
			defer rows.Close()
			for rows.Next() {
				var address string
				if err := rows.Scan(&address); err != nil {
					return fmt.Errorf("pending invites: %w", err)
				}
				out[threepid.ThreePID{Medium: medium, Address: address}] = true
			}
			return rows.Err()
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}
