package api_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/ozo-platform/ozo-identity/api/apitest"
	"github.com/ozo-platform/ozo-identity/config"
	"github.com/ozo-platform/ozo-identity/identity"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
)

// BenchmarkLookupHandler is the server's own cost of a v2 sha256 lookup of bound addresses, per
// address: body decoding, token check, the in-memory index, the answer's encoding. The handler
// runs in-process (no sockets, no TLS), so only the server's work is counted. 10,000 bindings.
func BenchmarkLookupHandler(b *testing.B) {
	h := apitest.New(b, sqlstore.SQLite, func(c *config.Config) {
		c.Lookup.MaxBatch = 1000
		c.HTTP.MaxBodyBytes = 256 << 10
	})
	bob := h.NewUser(b, "bob")
	pepper := h.Pepper(b, bob)
	const n = 10_000
	entries := make([]identity.ImportEntry, n)
	hashes := make([]string, n)
	for i := range entries {
		addr := fmt.Sprintf("user%07d@example.org", i)
		entries[i] = identity.ImportEntry{Medium: "email", Address: addr, MXID: fmt.Sprintf("@u%d:%s", i, h.HS.Name)}
		hashes[i] = sha256Hash(addr, "email", pepper)
	}
	if _, err := h.App.Service.ImportBindings(b.Context(), entries, "admin", true); err != nil {
		b.Fatal(err)
	}
	for _, batch := range []int{1, 100, 1000} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			bodies := make([][]byte, 16)
			for i := range bodies {
				start := (i * 997) % (n - batch)
				bodies[i], _ = json.Marshal(map[string]any{"addresses": hashes[start : start+batch], "algorithm": "sha256", "pepper": pepper})
			}
			i := 0
			for b.Loop() {
				req := httptest.NewRequest(http.MethodPost, v2+"/lookup", bytes.NewReader(bodies[i%len(bodies)]))
				req.Header.Set("Authorization", "Bearer "+bob.Token)
				req.RemoteAddr = "127.0.0.1:4000"
				rec := httptest.NewRecorder()
				h.App.API.ServeHTTP(rec, req)
				if rec.Code != http.StatusOK || rec.Body.Len() < 40*batch {
					b.Fatalf("status %d: %.200s", rec.Code, rec.Body.String())
				}
				i++
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch), "ns/address")
		})
	}
}
