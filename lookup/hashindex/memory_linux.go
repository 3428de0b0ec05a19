package hashindex

import "golang.org/x/sys/unix"

// allocBytes maps n zeroed bytes outside the Go heap, asking for huge pages: a lookup in a
// large table then costs a cache miss or two, not also a walk of the page tables for each.
// Pages are resident only once written. Where mapping fails the Go heap serves.
func allocBytes(n int) []byte {
	if n == 0 {
		return nil
	}
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return make([]byte, n)
	}
	unix.Madvise(b, unix.MADV_HUGEPAGE) // advice only: without transparent huge pages, small pages
	return b
}

// growBytes returns b with room for n bytes, its contents kept: the kernel moves mapped pages
// without copying them (mremap).
func growBytes(b []byte, n int) []byte {
	if cap(b) > 0 {
		if g, err := unix.Mremap(b[:cap(b)], n, unix.MREMAP_MAYMOVE); err == nil {
			unix.Madvise(g, unix.MADV_HUGEPAGE)
			return g[:len(b)]
		}
	}
	g := allocBytes(n)[:len(b)]
	copy(g, b)
	freeBytes(b[:cap(b)])
	return g
}

// freeBytes unmaps what allocBytes mapped; Go heap memory (a failed mapping's stand-in) is
// left to the collector.
func freeBytes(b []byte) {
	if len(b) > 0 {
		unix.Munmap(b)
	}
}
