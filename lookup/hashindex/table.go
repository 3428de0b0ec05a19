// Package hashindex provides a compact in-memory table from SHA-256 lookup hashes to Matrix user
// IDs: a million entries in about 75 MB of two flat arrays, with no per-entry allocation and no
// pointers for the garbage collector to scan.
//
// A Table is not safe for concurrent use; its owner guards it (readers share, writers exclude).
package hashindex

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"hash/maphash"
	"math/bits"
	"runtime"
)

// Hash is a decoded lookup hash.
type Hash [32]byte

// encoding is the lookup hashes' unpadded URL-safe base64; Strict refuses the other spellings of
// the same bytes (non-zero trailing bits), which the database, comparing strings, would not find.
var encoding = base64.RawURLEncoding.Strict()

// ErrMalformed: the string is not 32 bytes in canonical unpadded URL-safe base64.
var ErrMalformed = errors.New("hashindex: not a base64url SHA-256 hash")

// Parse decodes a lookup hash as v2 lookups send it.
func Parse(s string) (Hash, error) {
	var h Hash
	if len(s) != 43 {
		return h, ErrMalformed
	}
	if n, err := encoding.Decode(h[:], []byte(s)); err != nil || n != len(h) {
		return h, ErrMalformed
	}
	return h, nil
}

// ParseBytes is Parse for bytes read from the database, without copying them to a string.
func ParseBytes(b []byte) (Hash, error) {
	var h Hash
	if len(b) != 43 {
		return h, ErrMalformed
	}
	if n, err := encoding.Decode(h[:], b); err != nil || n != len(h) {
		return h, ErrMalformed
	}
	return h, nil
}

// maxValue bounds a value's length; Matrix user IDs have at most 255 bytes.
const maxValue = 255

// Layout of a record in the arena: the full hash, the value's length, the value.
const (
	recHash  = 32
	recValue = recHash + 1
)

// Table maps hashes to values. Records (hash and value together) are appended to one arena;
// slots are open-addressed with linear probing at a load of at most one half, each holding 24
// bits of the key's position hash beside its record's offset, so a lookup touches a slot and one
// record, and a miss rarely more than the slots.
//
// Slots and arena live outside the Go heap where the platform allows (memory_linux.go): the
// collector then neither paces itself on a table of a million entries nor keeps twice its size
// around, and huge pages spare random lookups most of their TLB misses. Close returns them at
// once; a table dropped without Close returns them when the collector finds it unreachable.
type Table struct {
	seed    maphash.Seed
	mem     *memory
	garbage int // bytes of replaced or removed records
	n       int
}

// memory is a table's two arrays, apart from the Table so that a cleanup can free them.
type memory struct {
	slots []byte // 8 bytes each, little-endian: tag<<40 | offset+1; 0 is empty
	arena []byte // records; cap is what is mapped
}

func (m *memory) free() {
	freeBytes(m.slots)
	freeBytes(m.arena[:cap(m.arena)])
	m.slots, m.arena = nil, nil
}

const (
	offBits = 40
	offMask = 1<<offBits - 1
)

// New returns a table sized for about n entries.
func New(n int) *Table {
	mem := &memory{slots: allocBytes(8 * slotsFor(n)), arena: allocBytes(n * (recValue + 26))[:0]}
	t := &Table{seed: maphash.MakeSeed(), mem: mem}
	runtime.AddCleanup(t, (*memory).free, mem)
	return t
}

// Close returns the table's memory; the table must not be used after.
func (t *Table) Close() {
	if t.mem != nil && t.mem.slots != nil {
		t.mem.free()
	}
}

// slotsFor is the power of two that keeps n entries at a load of at most one half.
func slotsFor(n int) int {
	if n < 8 {
		n = 8
	}
	return 1 << bits.Len(uint(2*n-1))
}

// Len is the number of entries.
func (t *Table) Len() int { return t.n }

// Bytes is the table's memory: slots and arena capacity.
func (t *Table) Bytes() int { return len(t.mem.slots) + cap(t.mem.arena) }

func (t *Table) slotCount() int { return len(t.mem.slots) / 8 }

func (t *Table) slot(i uint64) uint64 { return binary.LittleEndian.Uint64(t.mem.slots[8*i:]) }

func (t *Table) setSlot(i uint64, s uint64) { binary.LittleEndian.PutUint64(t.mem.slots[8*i:], s) }

// position hashes the first 8 bytes (a uniform prefix of a SHA-256) with the table's random
// seed, so that nobody can choose keys that pile up in one run of slots.
func (t *Table) position(h []byte) uint64 {
	return maphash.Comparable(t.seed, binary.LittleEndian.Uint64(h[:8]))
}

func tagOf(p uint64) uint64 { return p >> (64 - (64 - offBits)) }

// find returns the slot index holding h, or -1 and the first empty slot of its run.
func (t *Table) find(h *Hash) (int, int) { return t.findAt(h, t.position(h[:])) }

func (t *Table) findAt(h *Hash, p uint64) (int, int) {
	tag := tagOf(p)
	mask := uint64(t.slotCount() - 1)
	arena := t.mem.arena
	for i := p & mask; ; i = (i + 1) & mask {
		s := t.slot(i)
		if s == 0 {
			return -1, int(i)
		}
		if s>>offBits == tag {
			off := s&offMask - 1
			if Hash(arena[off:off+recHash]) == *h {
				return int(i), -1
			}
		}
	}
}

// value returns the value of the record at off.
func (t *Table) value(off uint64) []byte {
	n := uint64(t.mem.arena[off+recHash])
	return t.mem.arena[off+recValue : off+recValue+n]
}

// Get returns the value of h.
func (t *Table) Get(h *Hash) (string, bool) {
	i, _ := t.find(h)
	if i < 0 {
		return "", false
	}
	return string(t.value(t.slot(uint64(i))&offMask - 1)), true
}

const (
	group = 32 // how many keys GetAll looks up side by side
	line  = 64 // bytes in a cache line
)

// GetAll calls found(i, value) for each keys[i] in the table, in order; value is only valid
// during the call. In a large table nearly every slot and record a lookup touches is a cache
// miss (a record often two or three: records are not aligned to cache lines), and one key at a
// time waits for each in turn. GetAll works on a group of keys in passes: it loads their home
// slots, walks each run to the slot whose tag matches (those slots are now in cache), loads the
// lines of the records those point to, and only then compares; each loading pass does little
// else, so that the processor holds the whole group's misses in flight at once.
func (t *Table) GetAll(keys []Hash, found func(i int, value []byte)) {
	var pos, home, cand, head [group]uint64
	mask := uint64(t.slotCount() - 1)
	arena := t.mem.arena
	for base := 0; base < len(keys); base += group {
		batch := keys[base:min(base+group, len(keys))]
		for j := range batch {
			pos[j] = t.position(batch[j][:])
		}
		for j := range batch {
			home[j] = t.slot(pos[j] & mask)
		}
		for j := range batch {
			cand[j] = t.candidate(pos[j], home[j])
		}
		// A record's first line, and a byte of the next (records of up to a line often cross one);
		// then, with the lengths read, the last byte of records longer than that.
		for j := range batch {
			if c := cand[j]; c != 0 {
				head[j] = binary.LittleEndian.Uint64(arena[c-1:]) ^ uint64(arena[next(arena, c-1)])
			}
		}
		for j := range batch {
			if c := cand[j]; c != 0 {
				if e, ok := end(arena, c-1); ok {
					head[j] ^= uint64(arena[e]) << 8
				}
			}
		}
		for j := range batch {
			c := cand[j]
			if c == 0 {
				continue // an empty slot ends the run: not in the table
			}
			off := c - 1
			// The bytes read ahead are mixed out again (from cache): using them keeps the
			// compiler from dropping those reads.
			want := head[j] ^ uint64(arena[next(arena, off)])
			if e, ok := end(arena, off); ok {
				want ^= uint64(arena[e]) << 8
			}
			if want != binary.LittleEndian.Uint64(batch[j][:8]) || Hash(arena[off:off+recHash]) != batch[j] {
				// A tag shared by another key (one in 2^24): probe the whole run.
				i, _ := t.findAt(&batch[j], pos[j])
				if i < 0 {
					continue
				}
				off = t.slot(uint64(i))&offMask - 1
			}
			found(base+j, t.value(off))
		}
	}
}

// next is the offset of a byte in the line after the first of the record at off (or the
// arena's last byte).
func next(arena []byte, off uint64) uint64 { return min(off+line-1, uint64(len(arena)-1)) }

// end is the offset of the last byte of the record at off, and whether it lies beyond next.
func end(arena []byte, off uint64) (uint64, bool) {
	e := off + recHash + uint64(arena[off+recHash])
	return e, e > off+line-1
}

// candidate walks the run from position p, whose home slot holds s, to the first slot with p's
// tag and returns that slot's record offset+1, or 0 when an empty slot comes first.
func (t *Table) candidate(p, s uint64) uint64 {
	tag, mask := tagOf(p), uint64(t.slotCount()-1)
	for i := p & mask; s != 0; s = t.slot(i) {
		if s>>offBits == tag {
			return s & offMask
		}
		i = (i + 1) & mask
	}
	return 0
}

// ErrValueTooLong: values are Matrix user IDs, at most 255 bytes.
var ErrValueTooLong = errors.New("hashindex: value longer than 255 bytes")

// Set maps h to value, replacing what it had.
func (t *Table) Set(h *Hash, value string) error { return setValue(t, h, value) }

// SetBytes is Set with the value as bytes (copied).
func (t *Table) SetBytes(h *Hash, value []byte) error { return setValue(t, h, value) }

func setValue[V ~string | ~[]byte](t *Table, h *Hash, value V) error {
	if len(value) > maxValue {
		return ErrValueTooLong
	}
	i, empty := t.find(h)
	if i >= 0 {
		old := t.slot(uint64(i))&offMask - 1
		if string(t.value(old)) == string(value) {
			return nil
		}
		t.garbage += recValue + int(t.mem.arena[old+recHash])
	} else if 2*(t.n+1) > t.slotCount() {
		t.grow()
		_, empty = t.find(h)
	}
	if uint64(len(t.mem.arena)+recValue+len(value)) >= offMask {
		return errors.New("hashindex: arena full")
	}
	t.reserve(recValue + len(value))
	off := uint64(len(t.mem.arena))
	arena := append(t.mem.arena, h[:]...)
	arena = append(arena, byte(len(value)))
	t.mem.arena = append(arena, value...)
	if i >= 0 {
		t.setSlot(uint64(i), t.slot(uint64(i))&^offMask|(off+1))
		t.maybeCompact()
		return nil
	}
	t.setSlot(uint64(empty), tagOf(t.position(h[:]))<<offBits|(off+1))
	t.n++
	return nil
}

// reserve makes room for n more arena bytes, by half again (at least a MiB) when it grows, so
// that loading a million entries one by one grows it a few dozen times, not a million.
func (t *Table) reserve(n int) {
	a := t.mem.arena
	if len(a)+n <= cap(a) {
		return
	}
	size := max(len(a)+n, cap(a)+cap(a)/2, 1<<20)
	t.mem.arena = growBytes(a, size)
}

// Delete removes h and reports whether it was there. The run after the freed slot shifts back
// (no tombstones), so probes stay as short as in a table that never held h.
func (t *Table) Delete(h *Hash) bool {
	i, _ := t.find(h)
	if i < 0 {
		return false
	}
	off := t.slot(uint64(i))&offMask - 1
	t.garbage += recValue + int(t.mem.arena[off+recHash])
	t.n--
	mask := t.slotCount() - 1
	hole := i
	for j := (i + 1) & mask; t.slot(uint64(j)) != 0; j = (j + 1) & mask {
		sj := t.slot(uint64(j))
		o := sj&offMask - 1
		home := int(t.position(t.mem.arena[o:o+recHash])) & mask
		// Move j into the hole unless its home lies cyclically in (hole, j].
		if (j-home)&mask >= (j-hole)&mask {
			t.setSlot(uint64(hole), sj)
			hole = j
		}
	}
	t.setSlot(uint64(hole), 0)
	t.maybeCompact()
	return true
}

// grow doubles the slots and places every entry again.
func (t *Table) grow() {
	old, oldCount := t.mem.slots, t.slotCount()
	t.mem.slots = allocBytes(2 * len(old))
	mask := uint64(t.slotCount() - 1)
	for k := range oldCount {
		s := binary.LittleEndian.Uint64(old[8*k:])
		if s == 0 {
			continue
		}
		o := s&offMask - 1
		i := t.position(t.mem.arena[o:o+recHash]) & mask
		for t.slot(i) != 0 {
			i = (i + 1) & mask
		}
		t.setSlot(i, s)
	}
	freeBytes(old)
}

// maybeCompact rewrites the arena once replaced and removed records take more than half of it.
func (t *Table) maybeCompact() {
	if t.garbage > 1<<20 && t.garbage > len(t.mem.arena)/2 {
		t.compact()
	}
}

func (t *Table) compact() {
	live := len(t.mem.arena) - t.garbage
	arena := allocBytes(live + live/4)[:0]
	for i := range uint64(t.slotCount()) {
		s := t.slot(i)
		if s == 0 {
			continue
		}
		o := s&offMask - 1
		n := uint64(recValue) + uint64(t.mem.arena[o+recHash])
		t.setSlot(i, s&^offMask|uint64(len(arena)+1))
		arena = append(arena, t.mem.arena[o:o+n]...)
	}
	freeBytes(t.mem.arena[:cap(t.mem.arena)])
	t.mem.arena, t.garbage = arena, 0
}
