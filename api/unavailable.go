package api

import (
	"database/sql/driver"
	"errors"
	"io"
	"net"
	"syscall"
)

// storeUnreachable tells a lost or refused connection to the database (a restart, a network
// cut) from other failures: the client may retry that one elsewhere or shortly, and the
// operator should look at the database, not at this service.
func storeUnreachable(err error) bool {
	var opErr *net.OpError
	return errors.As(err, &opErr) || errors.Is(err, driver.ErrBadConn) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}
