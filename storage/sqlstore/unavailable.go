package sqlstore

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// Unavailable tells a database that is gone for the moment (restarting, cut off, overloaded)
// from a failure of the request or of this service: the caller may answer "temporarily
// unavailable, try again" (503 with Retry-After) instead of 500, and the operator looks at the
// database. It knows the drivers' own words for it: pgx's "conn closed", a connection lost
// mid-query or refused, a deadline while acquiring a connection, the server shutting down, and
// SQLite's busy file.
func Unavailable(err error) bool {
	if err == nil {
		return false
	}
	var opErr *net.OpError
	var connectErr *pgconn.ConnectError
	if errors.As(err, &opErr) || errors.As(err, &connectErr) ||
		errors.Is(err, driver.ErrBadConn) || errors.Is(err, sql.ErrConnDone) || errors.Is(err, pgconn.ErrConnClosed) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		// Nothing in this service sets a deadline on a query but the pool's wait for a connection
		// and the connect timeout: a deadline means the database did not answer in time.
		errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err) {
		return true
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		// Class 08: connection exception; 57P01-03: the server shuts down or is starting;
		// 53300: too many connections (another client took them all).
		return strings.HasPrefix(pgErr.Code, "08") || pgErr.Code == "57P01" || pgErr.Code == "57P02" ||
			pgErr.Code == "57P03" || pgErr.Code == "53300"
	}
	var liteErr *sqlite.Error
	if errors.As(err, &liteErr) {
		// Busy past busy_timeout: a long writer (a backup, an import) holds the file.
		code := liteErr.Code() & 0xff
		return code == sqlite3.SQLITE_BUSY || code == sqlite3.SQLITE_LOCKED
	}
	return false
}
