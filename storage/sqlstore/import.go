package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"strings"

	"github.com/ozo-platform/ozo-identity/storage"
)

// Rows per multi-row statement: well under SQLite's 32,766 and PostgreSQL's 65,535 parameters,
// and large enough that per-statement costs vanish.
const (
	importSelectRows  = 500
	importBindingRows = 400
	importHashRows    = 1000
)

// ImportBindings is Bind for many bindings at once: a few multi-row statements per thousand
// bindings instead of four statements and a transaction each.
func (s *Store) ImportBindings(ctx context.Context, items []storage.ImportBinding, deliver func(storage.Binding, []storage.Invite) ([]storage.OnBindDelivery, error)) (storage.ImportResult, error) {
	items = lastPerThreePID(items)
	var res storage.ImportResult
	err := s.tx(ctx, func(tx *sql.Tx) error {
		res = storage.ImportResult{}
		existing, err := boundMXIDs(ctx, tx, items)
		if err != nil {
			return err
		}
		var changed []storage.ImportBinding
		for _, it := range items {
			mxid, ok := existing[it.Binding.ThreePID]
			switch {
			case !ok:
				res.Created++
			case mxid != it.Binding.MXID:
				res.Updated++
			default:
				res.Unchanged++
				continue
			}
			changed = append(changed, it)
		}
		if err := upsertBindings(ctx, tx, changed); err != nil {
			return err
		}
		if err := upsertHashes(ctx, tx, changed); err != nil {
			return err
		}
		if deliver == nil {
			return nil
		}
		waiting, err := withPendingInvites(ctx, tx, changed)
		if err != nil {
			return err
		}
		for _, it := range changed {
			if !waiting[it.Binding.ThreePID] {
				continue
			}
			b := it.Binding
			if err := queueInvites(ctx, tx, b, func(inv []storage.Invite) ([]storage.OnBindDelivery, error) { return deliver(b, inv) }); err != nil {
				return err
			}
		}
		return nil
	})
	return res, err
}

// lastPerThreePID keeps the last item of each 3PID, in order: one statement may not upsert a
// row twice.
func lastPerThreePID(items []storage.ImportBinding) []storage.ImportBinding {
	last := make(map[storage.ThreePID]int, len(items))
	for i, it := range items {
		last[it.Binding.ThreePID] = i
	}
	if len(last) == len(items) {
		return items
	}
	out := make([]storage.ImportBinding, 0, len(last))
	for i, it := range items {
		if last[it.Binding.ThreePID] == i {
			out = append(out, it)
		}
	}
	return out
}

// byMedium groups the items' addresses by medium, for "medium = $1 AND address IN (...)" on the
// primary key.
func byMedium(items []storage.ImportBinding) map[string][]string {
	out := map[string][]string{}
	for _, it := range items {
		out[it.Binding.Medium] = append(out[it.Binding.Medium], it.Binding.Address)
	}
	return out
}

// eachChunk calls fn with consecutive chunks of at most n addresses.
func eachChunk(addresses []string, n int, fn func([]string) error) error {
	for len(addresses) > 0 {
		c := addresses[:min(n, len(addresses))]
		addresses = addresses[len(c):]
		if err := fn(c); err != nil {
			return err
		}
	}
	return nil
}

func boundMXIDs(ctx context.Context, tx *sql.Tx, items []storage.ImportBinding) (map[storage.ThreePID]string, error) {
	out := make(map[storage.ThreePID]string, len(items))
	for medium, addresses := range byMedium(items) {
		err := eachChunk(addresses, importSelectRows, func(chunk []string) error {
			args := make([]any, 0, len(chunk)+1)
			args = append(args, medium)
			for _, a := range chunk {
				args = append(args, a)
			}
			rows, err := tx.QueryContext(ctx, `SELECT address, mxid FROM bindings WHERE medium = $1 AND address IN (`+
				placeholders(2, len(chunk))+`)`, args...)
			if err != nil {
				return fmt.Errorf("read bindings: %w", err)
			}
			defer rows.Close()
			for rows.Next() {
				var address, mxid string
				if err := rows.Scan(&address, &mxid); err != nil {
					return fmt.Errorf("read bindings: %w", err)
				}
				out[storage.ThreePID{Medium: medium, Address: address}] = mxid
			}
			return rows.Err()
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// valueRows returns "($1, $2, $3), ($4, $5, $6), …" for rows of width columns.
func valueRows(rows, width int) string {
	var b strings.Builder
	for r := range rows {
		if r > 0 {
			b.WriteString(", ")
		}
		b.WriteByte('(')
		b.WriteString(placeholders(r*width+1, width))
		b.WriteByte(')')
	}
	return b.String()
}

func upsertBindings(ctx context.Context, tx *sql.Tx, items []storage.ImportBinding) error {
	for len(items) > 0 {
		chunk := items[:min(importBindingRows, len(items))]
		items = items[len(chunk):]
		args := make([]any, 0, 7*len(chunk))
		for _, it := range chunk {
			b := it.Binding
			args = append(args, b.Medium, b.Address, b.MXID, ms(b.CreatedAt), ms(b.NotBefore), ms(b.NotAfter), b.Source)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO bindings (medium, address, mxid, created_at, not_before, not_after, source)
			VALUES `+valueRows(len(chunk), 7)+`
			ON CONFLICT (medium, address) DO UPDATE SET mxid = excluded.mxid, created_at = excluded.created_at,
				not_before = excluded.not_before, not_after = excluded.not_after, source = excluded.source`, args...); err != nil {
			return fmt.Errorf("store bindings: %w", err)
		}
	}
	return nil
}

func upsertHashes(ctx context.Context, tx *sql.Tx, items []storage.ImportBinding) error {
	type row struct{ hash, medium, address string }
	var rows []row
	seen := map[string]bool{}
	for _, it := range items {
		for _, h := range it.Hashes {
			if !seen[h] {
				seen[h] = true
				rows = append(rows, row{h, it.Binding.Medium, it.Binding.Address})
			}
		}
	}
	for len(rows) > 0 {
		chunk := rows[:min(importHashRows, len(rows))]
		rows = rows[len(chunk):]
		args := make([]any, 0, 3*len(chunk))
		for _, r := range chunk {
			args = append(args, r.hash, r.medium, r.address)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO binding_hashes (hash, medium, address) VALUES `+valueRows(len(chunk), 3)+`
			ON CONFLICT (hash) DO UPDATE SET medium = excluded.medium, address = excluded.address`, args...); err != nil {
			return fmt.Errorf("store lookup hashes: %w", err)
		}
	}
	return nil
}

// withPendingInvites reports which of the items' 3PIDs have invites waiting, in a query per
// chunk: invites are rare, so most imports find none and queue nothing.
func withPendingInvites(ctx context.Context, tx *sql.Tx, items []storage.ImportBinding) (map[storage.ThreePID]bool, error) {
	out := map[storage.ThreePID]bool{}
	for medium, addresses := range byMedium(items) {
		// The earliest binding time finds every candidate; queueInvites checks each exactly.
		at := ms(items[0].Binding.CreatedAt)
		for _, it := range items {
			at = min(at, ms(it.Binding.CreatedAt))
		}
		err := eachChunk(addresses, importSelectRows, func(chunk []string) error {
			args := make([]any, 0, len(chunk)+2)
			args = append(args, at, medium)
			for _, a := range chunk {
				args = append(args, a)
			}
			rows, err := tx.QueryContext(ctx, `SELECT DISTINCT address FROM invites
				WHERE delivered_at = 0 AND expires_at > $1 AND medium = $2 AND address IN (`+placeholders(3, len(chunk))+`)`, args...)
			if err != nil {
				return fmt.Errorf("pending invites: %w", err)
			}
			defer rows.Close()
			for rows.Next() {
				var address string
				if err := rows.Scan(&address); err != nil {
					return fmt.Errorf("pending invites: %w", err)
				}
				out[storage.ThreePID{Medium: medium, Address: address}] = true
			}
			return rows.Err()
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}
