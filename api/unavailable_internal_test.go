package api

import (
	"database/sql"
	"errors"
	"fmt"
	"net"
	"syscall"
	"testing"
)

func TestStoreUnreachable(t *testing.T) {
	dial := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	for err, want := range map[error]bool{
		fmt.Errorf("store binding: %w", dial):                   true,
		fmt.Errorf("lookup: %w", syscall.ECONNRESET):            true,
		errors.New("unexpected EOF reading from the server"):    false, // not wrapped: unknown
		fmt.Errorf("get: %w", sql.ErrNoRows):                    false,
		errors.New("duplicate key value violates unique index"): false,
	} {
		if got := storeUnreachable(err); got != want {
			t.Errorf("storeUnreachable(%v) = %v, want %v", err, got, want)
		}
	}
}
