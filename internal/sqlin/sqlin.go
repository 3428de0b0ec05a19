// Package sqlin runs queries whose IN list is longer than one statement should carry: in
// chunks, with $N placeholders, which SQLite and PostgreSQL both understand.
package sqlin

import (
	"context"
	"database/sql"
	"strconv"
	"strings"
)

// Querier is what a scan needs: *sql.DB, *sql.Tx and *sql.Conn all have it.
type Querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// Placeholders returns "$start,$start+1,…" for n parameters.
func Placeholders(start, n int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('$')
		b.WriteString(strconv.Itoa(start + i))
	}
	return b.String()
}

// Scan runs query for values in chunks of at most size, after the fixed args: query gets the
// placeholders of one chunk (numbered after args) for its IN list, and scan gets every row.
func Scan[T any](ctx context.Context, q Querier, values []T, size int, args []any,
	query func(in string) string, scan func(*sql.Rows) error) error {
	for len(values) > 0 {
		chunk := values[:min(len(values), size)]
		values = values[len(chunk):]
		all := make([]any, 0, len(args)+len(chunk))
		all = append(all, args...)
		for _, v := range chunk {
			all = append(all, v)
		}
		if err := Each(ctx, q, query(Placeholders(len(args)+1, len(chunk))), all, scan); err != nil {
			return err
		}
	}
	return nil
}

// Each runs one query and gives every row to scan.
func Each(ctx context.Context, q Querier, query string, args []any, scan func(*sql.Rows) error) error {
	rows, err := q.QueryContext(ctx, query, args...)
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
