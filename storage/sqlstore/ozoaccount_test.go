package sqlstore_test

import (
	"testing"

	"github.com/ozo-platform/ozo-identity/ozoaccount"
	"github.com/ozo-platform/ozo-identity/ozoaccount/storetest"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore/dbtest"
)

func TestOZOAccountsConformance(t *testing.T) {
	for _, engine := range dbtest.Engines {
		t.Run(string(engine), func(t *testing.T) {
			storetest.Run(t, func(t *testing.T) ozoaccount.Store {
				s, _, _ := newAuditStore(t, engine)
				return sqlstore.NewOZOAccounts(s)
			})
		})
	}
}
