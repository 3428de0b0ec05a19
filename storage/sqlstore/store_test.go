package sqlstore_test

import (
	"testing"

	"github.com/ozo-platform/ozo-identity/identity"
	"github.com/ozo-platform/ozo-identity/identity/identitytest"
	"github.com/ozo-platform/ozo-identity/lookup/mcsd"
	"github.com/ozo-platform/ozo-identity/lookup/mcsd/mcsdstoretest"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore/dbtest"
)

func TestConformance(t *testing.T) {
	for _, engine := range dbtest.Engines {
		t.Run(string(engine), func(t *testing.T) {
			t.Run("identity", func(t *testing.T) {
				identitytest.Run(t, func(t *testing.T) identity.Store { return sqlstore.New(dbtest.Open(t, engine)) })
			})
			t.Run("mcsd", func(t *testing.T) {
				mcsdstoretest.Run(t, func(t *testing.T) mcsd.Store { return dbtest.Open(t, engine) })
			})
		})
	}
}
