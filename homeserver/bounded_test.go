package homeserver

import (
	"fmt"
	"runtime"
	"testing"
)

// heapInUse is the live heap after a full collection.
func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// The attack of the issue: 100,000 X-Matrix requests naming distinct origins, none of which
// can be verified. Every one is refused, and the state they leave behind stays bounded
// (mautrix's resolver kept a lock per name forever: 63 MB for 100,000 names).
func TestRefusedOriginsStayBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("100,000 requests")
	}
	const n = 100_000
	pki := newPKI(t)
	origin := func(i int) string {
		// Distinct IP-literal server names on loopback: resolution needs no DNS, and the SSRF
		// guard refuses the connection, so nothing leaves the machine.
		return fmt.Sprintf("127.%d.%d.%d:%d", i>>16&255, i>>8&255, i&255, 8448+i%7)
	}
	t.Run("not allowed to use the server", func(t *testing.T) {
		fetched := 0
		c := newTestClient(t, pki, Options{ServerName: isName, AllowOrigin: func(string) bool { return false }})
		c.rewriteAddr = func(addr string) string { fetched++; return addr }
		before := heapInUse()
		for i := range n {
			_, _, err := c.Authenticate(unbindRequest(unbindBody, xMatrixHeader(origin(i))))
			wantErr(t, err, ErrUnauthorized, ErrOriginNotAllowed)
		}
		if fetched != 0 || c.resolver.cache.len() != 0 || c.keys.len() != 0 {
			t.Fatalf("refused origins reached the network or the caches: %d dials, %d resolutions, %d key entries",
				fetched, c.resolver.cache.len(), c.keys.len())
		}
		grown := int64(heapInUse()) - int64(before)
		t.Logf("heap grew by %d KB", grown>>10)
		if grown > 8<<20 {
			t.Fatalf("heap grew by %d MB for %d refused origins", grown>>20, n)
		}
	})

	t.Run("allowed but unverifiable", func(t *testing.T) {
		c := newTestClient(t, pki, Options{ServerName: isName}) // every origin allowed; loopback is not
		before := heapInUse()
		// Each of these tries a connection (refused by the guard): twice the cache bounds show them hold.
		const n = 2*maxCacheEntries + 100
		for i := range n {
			_, _, err := c.Authenticate(unbindRequest(unbindBody, xMatrixHeader(origin(i))))
			wantErr(t, err, ErrUnauthorized, ErrNotAllowed)
		}
		if r, k, f := c.resolver.cache.len(), c.keys.len(), c.resolver.inFlight(); r > maxCacheEntries || k > maxCacheEntries || f != 0 {
			t.Fatalf("state after %d origins: %d resolutions, %d key entries, %d resolutions in flight (bounds %d, %d, 0)",
				n, r, k, f, maxCacheEntries, maxCacheEntries)
		}
		grown := int64(heapInUse()) - int64(before)
		t.Logf("heap grew by %d KB", grown>>10)
		if grown > 24<<20 {
			t.Fatalf("heap grew by %d MB for %d unverifiable origins", grown>>20, n)
		}
	})
}

func xMatrixHeader(origin string) string {
	return fmt.Sprintf(`X-Matrix origin="%s",destination="%s",key="ed25519:a",sig="c2lnbmF0dXJl"`, origin, isName)
}
