// Package mcsd reaches sqlstore and app only through identity.
package mcsd

import "example.com/badmod/identity"

// Index is wrong by way of identity.
func Index() string { return identity.Store() }
