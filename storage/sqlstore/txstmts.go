package sqlstore

import (
	"context"
	"database/sql"
)

// txStmts prepares each statement once per transaction. A bulk write runs the same long
// multi-row statement for every chunk of rows, and SQLite would parse each one again: at a
// million bindings that was an eighth of an import's time. pgx already keeps the statements
// it has prepared on each connection, so on PostgreSQL they go straight to the transaction.
type txStmts struct {
	tx      *sql.Tx
	prepare bool
	m       map[string]*sql.Stmt // made by the first prepare: most transactions prepare nothing
}

func newTxStmts(tx *sql.Tx, engine Engine) *txStmts {
	return &txStmts{tx: tx, prepare: engine == SQLite}
}

// prepared returns q prepared in the transaction; the transaction closes it when it ends.
func (c *txStmts) prepared(ctx context.Context, q string) (*sql.Stmt, error) {
	if st, ok := c.m[q]; ok {
		return st, nil
	}
	st, err := c.tx.PrepareContext(ctx, q)
	if err != nil {
		return nil, err
	}
	if c.m == nil {
		c.m = map[string]*sql.Stmt{}
	}
	c.m[q] = st
	return st, nil
}

func (c *txStmts) exec(ctx context.Context, q string, args ...any) (sql.Result, error) {
	if !c.prepare {
		return c.tx.ExecContext(ctx, q, args...)
	}
	st, err := c.prepared(ctx, q)
	if err != nil {
		return nil, err
	}
	return st.ExecContext(ctx, args...)
}

func (c *txStmts) query(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	if !c.prepare {
		return c.tx.QueryContext(ctx, q, args...)
	}
	st, err := c.prepared(ctx, q)
	if err != nil {
		return nil, err
	}
	return st.QueryContext(ctx, args...)
}
