//go:build !linux

package hashindex

// Elsewhere the table lives on the Go heap.

func allocBytes(n int) []byte { return make([]byte, n) }

func growBytes(b []byte, n int) []byte {
	g := make([]byte, len(b), n)
	copy(g, b)
	return g
}

func freeBytes([]byte) {}
