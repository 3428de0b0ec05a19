// Package migrations holds the SQL schema of ozo-identity, embedded in the binary and applied with goose.
// The same files serve SQLite and PostgreSQL, so they use only the SQL both understand.
package migrations

import "embed"

// FS holds the numbered goose migration files.
//
//go:embed *.sql
var FS embed.FS
