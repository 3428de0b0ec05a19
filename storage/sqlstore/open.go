// Package sqlstore implements identity.Store and mcsd.Store on SQLite (embedded default) and PostgreSQL.
// Both engines run the same SQL: $N placeholders and types both understand.
package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // PostgreSQL driver "pgx"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
	_ "modernc.org/sqlite" // pure-Go SQLite driver "sqlite"

	"github.com/ozo-platform/ozo-identity/lookup/mcsd"
	"github.com/ozo-platform/ozo-identity/migrations"
)

// Engine names the database engine behind a DB.
type Engine string

const (
	SQLite   Engine = "sqlite"
	Postgres Engine = "postgres"
)

// DB is an open, migrated database.
type DB struct {
	*sql.DB
	Engine Engine
	// wmu queues this process's writers to the mCSD index on SQLite (writeLock).
	wmu sync.Mutex
	// stmts holds the index's statements run for every directory, parsed once.
	smu   sync.Mutex
	stmts map[string]*sql.Stmt
	// mmapBytes is SQLite's mmap_size, for connections that turn it off for a while.
	mmapBytes int64
}

var _ mcsd.Store = (*DB)(nil)

// Pool sizes the connection pool; the zero value of a field means the engine's default.
type Pool struct {
	// MaxOpenConns bounds connections: PostgreSQL 20; SQLite 2×GOMAXPROCS+2, since its
	// connections only run on this machine's cores.
	MaxOpenConns int
	// MaxIdleConns defaults to MaxOpenConns: a busy server reuses its sessions instead of
	// having PostgreSQL start and tear down one per burst of requests.
	MaxIdleConns int
	// ConnMaxIdleTime closes connections idle this long (default 5m), so a quiet server gives
	// its sessions back.
	ConnMaxIdleTime time.Duration
	// SQLiteMmapBytes maps that much of the SQLite file (default 32 MiB: lookups are answered from memory): reads go through the
	// OS page cache, shared by every connection, instead of a private cache per connection.
	SQLiteMmapBytes int64
}

// sqliteCacheKiB is each SQLite connection's own page cache; the mmap does the heavy lifting,
// so memory no longer grows with the number of connections.
const sqliteCacheKiB = 2048

func (p Pool) withDefaults(engine Engine) Pool {
	if p.MaxOpenConns <= 0 {
		p.MaxOpenConns = 20
		if engine == SQLite {
			p.MaxOpenConns = 2*runtime.GOMAXPROCS(0) + 2
		}
	}
	if p.MaxIdleConns <= 0 || p.MaxIdleConns > p.MaxOpenConns {
		p.MaxIdleConns = p.MaxOpenConns
	}
	if p.ConnMaxIdleTime <= 0 {
		p.ConnMaxIdleTime = 5 * time.Minute
	}
	if p.SQLiteMmapBytes <= 0 {
		p.SQLiteMmapBytes = 32 << 20
	}
	return p
}

func (p Pool) apply(db *sql.DB) {
	db.SetMaxOpenConns(p.MaxOpenConns)
	db.SetMaxIdleConns(p.MaxIdleConns)
	db.SetConnMaxIdleTime(p.ConnMaxIdleTime)
}

// Open is OpenPool with the engine's default pool.
func Open(ctx context.Context, databaseURL, dataDir string) (*DB, error) {
	return OpenPool(ctx, databaseURL, dataDir, Pool{})
}

// OpenPool connects to PostgreSQL when url is a postgres:// URL, and otherwise opens (creating
// it if needed) the SQLite file in dataDir. It does not migrate; call Migrate.
func OpenPool(ctx context.Context, databaseURL, dataDir string, pool Pool) (*DB, error) {
	if strings.HasPrefix(databaseURL, "postgres://") || strings.HasPrefix(databaseURL, "postgresql://") {
		db, err := sql.Open("pgx", withConnectTimeout(databaseURL))
		if err != nil {
			return nil, fmt.Errorf("open postgres: %w", err)
		}
		pool.withDefaults(Postgres).apply(db)
		if err := db.PingContext(ctx); err != nil {
			db.Close()
			return nil, fmt.Errorf("connect to postgres: %w", err)
		}
		return &DB{DB: db, Engine: Postgres}, nil
	}
	path := databaseURL
	if path == "" || path == "sqlite" {
		if err := os.MkdirAll(dataDir, 0o700); err != nil {
			return nil, fmt.Errorf("create data directory: %w", err)
		}
		path = filepath.Join(dataDir, "ozo-identity.db")
	}
	path = strings.TrimPrefix(path, "sqlite://")
	pool = pool.withDefaults(SQLite)
	// WAL lets readers run beside the writer; immediate transactions take the write lock up
	// front so two writers wait for each other instead of failing with SQLITE_BUSY.
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(NORMAL)")
	q.Add("_pragma", "foreign_keys(ON)")
	q.Add("_pragma", fmt.Sprintf("cache_size(-%d)", sqliteCacheKiB))
	q.Add("_pragma", fmt.Sprintf("mmap_size(%d)", pool.SQLiteMmapBytes))
	q.Set("_txlock", "immediate")
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	pool.apply(db)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	return &DB{DB: db, Engine: SQLite, mmapBytes: pool.SQLiteMmapBytes}, nil
}

// defaultConnectTimeout bounds a new PostgreSQL connection (seconds) unless the URL sets
// connect_timeout: a database that does not answer (a partition drops the packets) fails a
// request as unavailable in seconds rather than after the kernel's minutes.
const defaultConnectTimeout = "5"

func withConnectTimeout(databaseURL string) string {
	u, err := url.Parse(databaseURL)
	if err != nil {
		return databaseURL // pgx reports it
	}
	q := u.Query()
	if q.Has("connect_timeout") {
		return databaseURL
	}
	q.Set("connect_timeout", defaultConnectTimeout)
	u.RawQuery = q.Encode()
	return u.String()
}

// Migrate applies every embedded migration not yet applied. On PostgreSQL an advisory lock
// keeps replicas that start together from migrating twice.
func (db *DB) Migrate(ctx context.Context, log *slog.Logger) error {
	dialect := goose.DialectSQLite3
	var opts []goose.ProviderOption
	if db.Engine == Postgres {
		dialect = goose.DialectPostgres
		// The advisory lock is server-wide; one per schema lets separate deployments (and test
		// schemas) on one server migrate without waiting for each other.
		var schema string
		if err := db.QueryRowContext(ctx, `SELECT current_schema()`).Scan(&schema); err != nil {
			return fmt.Errorf("read schema: %w", err)
		}
		h := fnv.New64a()
		h.Write([]byte("ozo-identity:" + schema))
		locker, err := lock.NewPostgresSessionLocker(lock.WithLockID(int64(h.Sum64()>>1)), lock.WithLockTimeout(1, 300))
		if err != nil {
			return fmt.Errorf("migration lock: %w", err)
		}
		opts = append(opts, goose.WithSessionLocker(locker))
	}
	p, err := goose.NewProvider(dialect, db.DB, migrations.FS, opts...)
	if err != nil {
		return fmt.Errorf("load migrations: %w", err)
	}
	results, err := p.Up(ctx)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	for _, r := range results {
		log.Info("applied migration", "file", r.Source.Path, "duration", r.Duration)
	}
	if db.Engine != Postgres {
		return db.dropMCSDStatistics(ctx)
	}
	return nil
}
