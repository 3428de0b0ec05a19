package sqlstore_test

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore/dbtest"
)

// A SQLite file keeps no planner statistics for the mCSD index: with them, SQLite's STAT4
// re-prepares every statement whose directory parameter changed (Analyze). Statistics an earlier
// version left are removed when the database is migrated; other tables' are kept.
func TestSQLiteKeepsNoIndexStatistics(t *testing.T) {
	ctx := context.Background()
	db := dbtest.Open(t, sqlstore.SQLite)
	count := func(table string) int {
		t.Helper()
		var n int
		if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM sqlite_stat1 WHERE tbl = $1`, table).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	for _, q := range []string{
		`INSERT INTO mcsd_resources (dir, type, id) VALUES ('d', 'Practitioner', 'p1'), ('d', 'Practitioner', 'p2')`,
		`INSERT INTO settings (name, value) VALUES ('a', '1'), ('b', '2')`,
		`ANALYZE`, // as the index's Analyze did before
	} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if count("mcsd_resources") == 0 || count("settings") == 0 {
		t.Fatal("ANALYZE left no statistics to remove")
	}
	if err := db.Analyze(ctx); err != nil {
		t.Fatal(err)
	}
	if err := db.Migrate(ctx, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		t.Fatal(err)
	}
	if n := count("mcsd_resources"); n != 0 {
		t.Fatalf("%d statistics rows of mcsd_resources after migrating", n)
	}
	if count("settings") == 0 {
		t.Fatal("the statistics of other tables were removed too")
	}
}
