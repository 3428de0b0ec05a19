package api_test

import (
	"fmt"
	"net/http"
	"testing"

	"github.com/ozo-platform/ozo-identity/api"
	"github.com/ozo-platform/ozo-identity/api/apitest"
	"github.com/ozo-platform/ozo-identity/config"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
)

// BenchmarkLookupAudit compares v2 hashed lookups over HTTPS with lookup auditing on and off,
// at batch 1 and batch 1000 (half of each batch bound). Run:
//
//	go test ./api -run '^$' -bench LookupAudit -benchtime 3s -count 3
func BenchmarkLookupAudit(b *testing.B) {
	h := apitest.New(b, sqlstore.SQLite, func(c *config.Config) { c.Lookup.MaxBatch = 1000 })
	bob := h.NewUser(b, "bob")
	pepper := h.Pepper(b, bob)
	var hashes []string
	for i := range 1000 {
		addr := fmt.Sprintf("%09d", 100000000+i)
		if i%2 == 0 {
			h.Do(b, apitest.Request{Method: http.MethodPost, Path: admin + "/bindings", Header: http.Header{"Authorization": {"Bearer " + apitest.AdminToken}},
				Body: map[string]any{"medium": "uzi", "address": addr, "mxid": fmt.Sprintf("@u%d:%s", i, h.HS.Name)}}).Want(b, http.StatusOK, "")
		}
		hashes = append(hashes, sha256Hash(addr, "uzi", pepper))
	}
	aggregator := h.App.Lookups
	for _, batch := range []int{1, 1000} {
		for _, mode := range []string{"off", "on"} {
			b.Run(fmt.Sprintf("batch=%d/audit=%s", batch, mode), func(b *testing.B) {
				if mode == "off" {
					api.SetLookupAudit(h.App.API, nil)
				} else {
					api.SetLookupAudit(h.App.API, aggregator)
				}
				body := map[string]any{"addresses": hashes[:batch], "algorithm": "sha256", "pepper": pepper}
				b.ResetTimer()
				for b.Loop() {
					h.Post(b, v2+"/lookup", bob.Token, body).Want(b, http.StatusOK, "")
				}
				b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "addresses/s")
			})
		}
	}
}
