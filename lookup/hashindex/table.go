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
type Table struct {
	seed    maphash.Seed
	slots   []uint64 // tag<<40 | offset+1; 0 is empty
	arena   []byte
	garbage int // bytes of replaced or removed records
	n       int
}

const (
	offBits = 40
	offMask = 1<<offBits - 1
)

// New returns a table sized for about n entries.
func New(n int) *Table {
	return &Table{seed: maphash.MakeSeed(), slots: make([]uint64, slotsFor(n)), arena: make([]byte, 0, n*(recValue+26))}
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
func (t *Table) Bytes() int { return cap(t.slots)*8 + cap(t.arena) }

// position hashes the first 8 bytes (a uniform prefix of a SHA-256) with the table's random
// seed, so that nobody can choose keys that pile up in one run of slots.
func (t *Table) position(h []byte) uint64 {
	return maphash.Comparable(t.seed, binary.LittleEndian.Uint64(h[:8]))
}

func tagOf(p uint64) uint64 { return p >> (64 - (64 - offBits)) }

// find returns the slot index holding h, or -1 and the first empty slot of its run.
func (t *Table) find(h *Hash) (int, int) {
	p := t.position(h[:])
	tag := tagOf(p)
	mask := uint64(len(t.slots) - 1)
	for i := p & mask; ; i = (i + 1) & mask {
		s := t.slots[i]
		if s == 0 {
			return -1, int(i)
		}
		if s>>offBits == tag {
			off := s&offMask - 1
			if Hash(t.arena[off:off+recHash]) == *h {
				return int(i), -1
			}
		}
	}
}

// value returns the value of the record at off.
func (t *Table) value(off uint64) []byte {
	n := uint64(t.arena[off+recHash])
	return t.arena[off+recValue : off+recValue+n]
}

// Get returns the value of h.
func (t *Table) Get(h *Hash) (string, bool) {
	i, _ := t.find(h)
	if i < 0 {
		return "", false
	}
	return string(t.value(t.slots[i]&offMask - 1)), true
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
		old := t.slots[i]&offMask - 1
		if string(t.value(old)) == string(value) {
			return nil
		}
		t.garbage += recValue + int(t.arena[old+recHash])
	} else if 2*(t.n+1) > len(t.slots) {
		t.grow()
		_, empty = t.find(h)
	}
	if uint64(len(t.arena)+recValue+len(value)) >= offMask {
		return errors.New("hashindex: arena full")
	}
	off := uint64(len(t.arena))
	t.arena = append(t.arena, h[:]...)
	t.arena = append(t.arena, byte(len(value)))
	t.arena = append(t.arena, value...)
	if i >= 0 {
		t.slots[i] = t.slots[i]&^offMask | (off + 1)
		t.maybeCompact()
		return nil
	}
	t.slots[empty] = tagOf(t.position(h[:]))<<offBits | (off + 1)
	t.n++
	return nil
}

// Delete removes h and reports whether it was there. The run after the freed slot shifts back
// (no tombstones), so probes stay as short as in a table that never held h.
func (t *Table) Delete(h *Hash) bool {
	i, _ := t.find(h)
	if i < 0 {
		return false
	}
	off := t.slots[i]&offMask - 1
	t.garbage += recValue + int(t.arena[off+recHash])
	t.n--
	mask := len(t.slots) - 1
	hole := i
	for j := (i + 1) & mask; t.slots[j] != 0; j = (j + 1) & mask {
		o := t.slots[j]&offMask - 1
		home := int(t.position(t.arena[o:o+recHash])) & mask
		// Move j into the hole unless its home lies cyclically in (hole, j].
		if (j-home)&mask >= (j-hole)&mask {
			t.slots[hole] = t.slots[j]
			hole = j
		}
	}
	t.slots[hole] = 0
	t.maybeCompact()
	return true
}

// grow doubles the slots and places every entry again.
func (t *Table) grow() {
	old := t.slots
	t.slots = make([]uint64, 2*len(old))
	mask := uint64(len(t.slots) - 1)
	for _, s := range old {
		if s == 0 {
			continue
		}
		o := s&offMask - 1
		i := t.position(t.arena[o:o+recHash]) & mask
		for t.slots[i] != 0 {
			i = (i + 1) & mask
		}
		t.slots[i] = s
	}
}

// maybeCompact rewrites the arena once replaced and removed records take more than half of it.
func (t *Table) maybeCompact() {
	if t.garbage > 1<<20 && t.garbage > len(t.arena)/2 {
		t.compact()
	}
}

func (t *Table) compact() {
	live := len(t.arena) - t.garbage
	arena := make([]byte, 0, live+live/4)
	for i, s := range t.slots {
		if s == 0 {
			continue
		}
		o := s&offMask - 1
		n := uint64(recValue) + uint64(t.arena[o+recHash])
		t.slots[i] = s&^offMask | uint64(len(arena)+1)
		arena = append(arena, t.arena[o:o+n]...)
	}
	t.arena, t.garbage = arena, 0
}
