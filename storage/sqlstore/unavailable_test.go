package sqlstore_test

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/internal/proxytest"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore/dbtest"
)

// The errors the drivers really return when the database goes away are told from the errors of
// a request or of the schema: PostgreSQL cut mid-transaction and mid-query, refused, not
// answering within the connect timeout, the pool's deadline; SQLite's busy file.
func TestUnavailable(t *testing.T) {
	ctx := context.Background()
	pgURL := dbtest.URL(t, sqlstore.Postgres)
	u, err := url.Parse(pgURL)
	if err != nil {
		t.Fatal(err)
	}
	p := proxytest.New(t, u.Host)
	u.Host = p.Addr()
	db, err := sqlstore.Open(ctx, u.String(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := db.Migrate(ctx, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	want := func(what string, err error, unavailable bool) {
		t.Helper()
		if err == nil {
			t.Fatalf("%s: no error", what)
		}
		t.Logf("%s: %v", what, err)
		if got := sqlstore.Unavailable(err); got != unavailable {
			t.Errorf("%s: Unavailable(%v) = %v, want %v", what, err, got, unavailable)
		}
	}

	// Not the database's absence: the request's or the schema's fault.
	want("no rows", db.QueryRowContext(ctx, `SELECT value FROM settings WHERE name = 'nothing'`).Scan(new(string)), false)
	_, err = db.ExecContext(ctx, `INSERT INTO settings (name, value) VALUES ('x', '1')`)
	if err != nil {
		t.Fatal(err)
	}
	_, err = db.ExecContext(ctx, `INSERT INTO settings (name, value) VALUES ('x', '2')`)
	want("unique violation", err, false)
	_, err = db.ExecContext(ctx, `SELEKT 1`)
	want("syntax error", err, false)
	want("wrapped no rows", fmt.Errorf("get binding: %w", sql.ErrNoRows), false)
	if sqlstore.Unavailable(nil) {
		t.Error("Unavailable(nil)")
	}

	// Cut in the middle of a transaction: the next statement on its connection fails.
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, `UPDATE settings SET value = '3' WHERE name = 'x'`); err != nil {
		t.Fatal(err)
	}
	p.Cut()
	_, err = tx.ExecContext(ctx, `UPDATE settings SET value = '4' WHERE name = 'x'`)
	want("statement in a transaction cut off", err, true)
	want("commit after the cut", tx.Commit(), true)
	p.Restore()

	// Cut while a query runs (on a connection made after the restore).
	db.SetMaxIdleConns(0)
	db.SetMaxIdleConns(1)
	if _, err := db.ExecContext(ctx, `SELECT 1`); err != nil {
		t.Fatalf("after the restore: %v", err)
	}
	errc := make(chan error, 1)
	go func() { _, err := db.ExecContext(ctx, `SELECT pg_sleep(2)`); errc <- err }()
	time.Sleep(300 * time.Millisecond)
	p.Cut()
	want("query running when cut (the driver may retry it on a new connection)", <-errc, true)

	// Refused while cut: every pooled connection is gone, new ones are refused.
	_, err = db.ExecContext(ctx, `SELECT 1`)
	want("connection refused", err, true)
	p.Restore()
	if _, err := db.ExecContext(ctx, `SELECT 1`); err != nil {
		t.Fatalf("after the restore: %v", err)
	}

	// A server that accepts the connection but never answers: the connect timeout ends it.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	su := *u
	su.Host = silent.Addr().String()
	q := su.Query()
	q.Set("connect_timeout", "1")
	su.RawQuery = q.Encode()
	start := time.Now()
	_, err = sqlstore.Open(ctx, su.String(), t.TempDir())
	want("server not answering", err, true)
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("a silent server held the connect for %s", d)
	}

	// The pool's wait for a connection ends at the caller's deadline.
	one, err := sqlstore.OpenPool(ctx, pgURL, t.TempDir(), sqlstore.Pool{MaxOpenConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer one.Close()
	held, err := one.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	dctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	_, err = one.ExecContext(dctx, `SELECT 1`)
	want("deadline waiting for a pooled connection", err, true)

	// SQLite: another connection holds the write lock past busy_timeout.
	file := filepath.Join(t.TempDir(), "busy.db")
	lite, err := sql.Open("sqlite", "file:"+file+"?_pragma=busy_timeout(50)&_txlock=immediate")
	if err != nil {
		t.Fatal(err)
	}
	defer lite.Close()
	if _, err := lite.Exec(`CREATE TABLE t (x INTEGER)`); err != nil {
		t.Fatal(err)
	}
	writer, err := lite.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer writer.Rollback()
	_, err = lite.Begin()
	want("SQLite busy", err, true)
}
