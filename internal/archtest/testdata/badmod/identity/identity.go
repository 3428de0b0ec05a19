// Package identity is deliberately wrong: a domain package using the SQL store and the app.
package identity

import (
	"example.com/badmod/app"
	"example.com/badmod/storage/sqlstore"
)

// Store reaches past its port.
func Store() string { return sqlstore.Open() + app.Name() }
