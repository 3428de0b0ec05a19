package api_test

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/api"
	"github.com/ozo-platform/ozo-identity/api/apitest"
	"github.com/ozo-platform/ozo-identity/config"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
)

// lookupBench is a server with 500 uzi bindings and the hashes of 1000 addresses (half bound).
type lookupBench struct {
	h      *apitest.Harness
	token  string
	pepper string
	hashes []string
}

func newLookupBench(b *testing.B, audited bool) *lookupBench {
	h := apitest.New(b, sqlstore.SQLite, func(c *config.Config) {
		c.Lookup.MaxBatch = 1000
		c.HTTP.MaxBodyBytes = 256 << 10
	})
	if !audited {
		api.SetLookupAudit(h.App.API, nil)
	}
	bob := h.NewUser(b, "bob")
	lb := &lookupBench{h: h, token: bob.Token, pepper: h.Pepper(b, bob)}
	for i := range 1000 {
		addr := fmt.Sprintf("%09d", 100000000+i)
		if i%2 == 0 {
			h.Do(b, apitest.Request{Method: http.MethodPost, Path: admin + "/bindings", Header: http.Header{"Authorization": {"Bearer " + apitest.AdminToken}},
				Body: map[string]any{"medium": "uzi", "address": addr, "mxid": fmt.Sprintf("@u%d:%s", i, h.HS.Name)}}).Want(b, http.StatusOK, "")
		}
		lb.hashes = append(lb.hashes, sha256Hash(addr, "uzi", lb.pepper))
	}
	return lb
}

func (lb *lookupBench) lookup(b *testing.B, batch int) time.Duration {
	start := time.Now()
	lb.h.Post(b, v2+"/lookup", lb.token, map[string]any{"addresses": lb.hashes[:batch], "algorithm": "sha256", "pepper": lb.pepper}).
		Want(b, http.StatusOK, "")
	return time.Since(start)
}

// BenchmarkLookupAudit compares v2 hashed lookups over HTTPS on two identical servers, one
// auditing lookups and one not, at batch 1 and batch 1000. Requests alternate between them, so
// the load of a shared machine falls on both alike. Run:
//
//	go test ./api -run '^$' -bench LookupAudit -benchtime 3s -count 3
func BenchmarkLookupAudit(b *testing.B) {
	off, on := newLookupBench(b, false), newLookupBench(b, true)
	for _, batch := range []int{1, 1000} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			var tOff, tOn time.Duration
			for b.Loop() {
				tOff += off.lookup(b, batch)
				tOn += on.lookup(b, batch)
			}
			b.ReportMetric(float64(tOff.Nanoseconds())/float64(b.N), "ns/lookup-off")
			b.ReportMetric(float64(tOn.Nanoseconds())/float64(b.N), "ns/lookup-on")
			b.ReportMetric(100*(float64(tOn)/float64(tOff)-1), "%-overhead")
		})
	}
}
