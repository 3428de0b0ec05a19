package sqlstore_test

import (
	"testing"

	"github.com/ozo-platform/ozo-identity/storage"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore/dbtest"
	"github.com/ozo-platform/ozo-identity/storage/storagetest"
)

func TestConformance(t *testing.T) {
	for _, engine := range dbtest.Engines {
		t.Run(string(engine), func(t *testing.T) {
			storagetest.Run(t, func(t *testing.T) storage.Storage {
				return sqlstore.New(dbtest.Open(t, engine))
			})
		})
	}
}
