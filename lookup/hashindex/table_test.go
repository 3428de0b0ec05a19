package hashindex_test

import (
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/lookup/hashindex"
)

func hashOf(i int) hashindex.Hash { return sha256.Sum256([]byte(fmt.Sprint("addr", i))) }

// The table answers like a map through random sets, replacements and deletes, across growth,
// free-list reuse and arena compaction.
func TestTableMatchesMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	tab := hashindex.New(0)
	want := map[hashindex.Hash]string{}
	const keys = 20000
	for op := range 400000 {
		h := hashOf(rng.IntN(keys))
		switch rng.IntN(3) {
		case 0, 1:
			v := fmt.Sprintf("@u%d-%s:hs.example.nl", rng.IntN(1000), strings.Repeat("x", rng.IntN(40)))
			if err := tab.Set(&h, v); err != nil {
				t.Fatal(err)
			}
			want[h] = v
		case 2:
			_, had := want[h]
			if got := tab.Delete(&h); got != had {
				t.Fatalf("op %d: Delete = %v, want %v", op, got, had)
			}
			delete(want, h)
		}
		if op%9973 == 0 {
			check(t, tab, want, keys)
		}
	}
	check(t, tab, want, keys)
	// Empty it entirely: every probe run must still end.
	for h := range want {
		tab.Delete(&h)
	}
	if tab.Len() != 0 {
		t.Fatalf("Len %d after deleting everything", tab.Len())
	}
	check(t, tab, map[hashindex.Hash]string{}, keys)
}

func check(t *testing.T, tab *hashindex.Table, want map[hashindex.Hash]string, keys int) {
	t.Helper()
	if tab.Len() != len(want) {
		t.Fatalf("Len %d, want %d", tab.Len(), len(want))
	}
	for i := range keys {
		h := hashOf(i)
		got, ok := tab.Get(&h)
		w, wok := want[h]
		if ok != wok || got != w {
			t.Fatalf("key %d: got %q %v, want %q %v", i, got, ok, w, wok)
		}
	}
}

// Keys equal in their first 8 bytes (the part placed by) are still told apart by the full hash.
func TestTableSamePrefix(t *testing.T) {
	tab := hashindex.New(4)
	var a, b hashindex.Hash
	a[31], b[31] = 1, 2
	tab.Set(&a, "@a:x")
	tab.Set(&b, "@b:x")
	if v, _ := tab.Get(&a); v != "@a:x" {
		t.Fatalf("a = %q", v)
	}
	if v, _ := tab.Get(&b); v != "@b:x" {
		t.Fatalf("b = %q", v)
	}
	tab.Delete(&a)
	if _, ok := tab.Get(&a); ok {
		t.Fatal("a still there")
	}
	if v, _ := tab.Get(&b); v != "@b:x" {
		t.Fatalf("b after deleting a = %q", v)
	}
}

func TestTableRefusesLongValues(t *testing.T) {
	tab := hashindex.New(1)
	h := hashOf(1)
	if err := tab.Set(&h, strings.Repeat("x", 256)); err == nil {
		t.Fatal("256-byte value accepted")
	}
	if err := tab.Set(&h, strings.Repeat("x", 255)); err != nil {
		t.Fatal(err)
	}
}

// Parse accepts exactly the canonical form the server computes and refuses every other string,
// including other spellings of the same bytes.
func TestParse(t *testing.T) {
	h := hashOf(7)
	s := base64.RawURLEncoding.EncodeToString(h[:])
	if got, err := hashindex.Parse(s); err != nil || got != h {
		t.Fatalf("Parse(%s) = %v, %v", s, got, err)
	}
	last := strings.IndexByte("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", s[42])
	alt := s[:42] + string("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[last|1])
	if alt == s {
		alt = s[:42] + string("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[last|2])
	}
	for _, bad := range []string{"", s[:42], s + "A", s + "=", base64.StdEncoding.EncodeToString(h[:]),
		strings.Replace(s, s[:1], "+", 1), alt, strings.Repeat("\x00", 43), "é" + s[2:]} {
		if _, err := hashindex.Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
}

// BenchmarkTableGet measures one hit or miss at 10k and 1M entries; the memory column is the
// table's own arrays per entry.
func BenchmarkTableGet(b *testing.B) {
	for _, n := range []int{10_000, 1_000_000} {
		tab := hashindex.New(n)
		keys := make([]hashindex.Hash, n)
		for i := range keys {
			keys[i] = hashOf(i)
			tab.Set(&keys[i], fmt.Sprintf("@user%07d:hs.example.nl", i))
		}
		runtime.GC()
		for _, hit := range []bool{true, false} {
			b.Run(fmt.Sprintf("entries=%d/hit=%v", n, hit), func(b *testing.B) {
				probe := keys
				if !hit {
					probe = make([]hashindex.Hash, 4096)
					for i := range probe {
						probe[i] = hashOf(-1 - i)
					}
				}
				i := 0
				for b.Loop() {
					_, ok := tab.Get(&probe[i%len(probe)])
					if ok != hit {
						b.Fatal("wrong answer")
					}
					i += 7919
				}
				b.ReportMetric(float64(tab.Bytes())/float64(n), "B/entry")
			})
		}
	}
}

// BenchmarkTableParseGet is the whole per-address cost of a lookup: decode the base64 hash, then Get.
func BenchmarkTableParseGet(b *testing.B) {
	const n = 1_000_000
	tab := hashindex.New(n)
	strs := make([]string, 4096)
	for i := range n {
		h := hashOf(i)
		tab.Set(&h, fmt.Sprintf("@user%07d:hs.example.nl", i))
		if i < len(strs) {
			strs[i] = base64.RawURLEncoding.EncodeToString(h[:])
		}
	}
	i := 0
	for b.Loop() {
		h, err := hashindex.Parse(strs[i%len(strs)])
		if err != nil {
			b.Fatal(err)
		}
		if _, ok := tab.Get(&h); !ok {
			b.Fatal("miss")
		}
		i++
	}
}

// GetAll answers every key as Get does, hits and misses, in a crowded table (many keys away
// from their home slot), with values from a few bytes to 240 (records within one cache line,
// across two, across several) and across growth and deletes.
func TestTableGetAll(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	tab := hashindex.New(0)
	defer tab.Close()
	const keys = 30000
	for i := range keys {
		h := hashOf(i)
		tab.Set(&h, fmt.Sprintf("@u%d:%s", i, strings.Repeat("h", i%233)))
	}
	for i := 0; i < keys; i += 3 {
		h := hashOf(i)
		tab.Delete(&h)
	}
	for _, n := range []int{0, 1, 15, 16, 17, 1000} {
		ask := make([]hashindex.Hash, n)
		for i := range ask {
			ask[i] = hashOf(rng.IntN(keys + 5000)) // some were never there
		}
		got := map[int]string{}
		last := -1
		tab.GetAll(ask, func(i int, v []byte) {
			if i <= last {
				t.Fatalf("answers out of order: %d after %d", i, last)
			}
			last = i
			got[i] = string(v)
		})
		for i := range ask {
			want, ok := tab.Get(&ask[i])
			if g, gok := got[i]; gok != ok || g != want {
				t.Fatalf("key %d of %d: GetAll %q %v, Get %q %v", i, n, g, gok, want, ok)
			}
		}
	}
}

// A closed table's memory is returned at once, and that of a table dropped without Close once
// the collector finds it unreachable: filling 40 tables of ~4 MB one after another must not leave
// the process 160 MB larger.
func TestTableMemoryReturned(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc/self/status; elsewhere the table lives on the Go heap")
	}
	fill := func() *hashindex.Table {
		tab := hashindex.New(0)
		for i := range 40_000 {
			h := hashOf(i)
			tab.Set(&h, "@someone:hs.example.nl")
		}
		return tab
	}
	base := rssMiB(t)
	for range 40 {
		tab := fill()
		tab.Close()
		tab.Close() // twice is harmless
	}
	if grew := rssMiB(t) - base; grew > 40 {
		t.Fatalf("resident memory grew by %d MiB over 40 closed tables", grew)
	}
	base = rssMiB(t)
	for range 40 {
		fill() // dropped: the cleanup returns it
		runtime.GC()
	}
	for range 50 { // cleanups run after the collection, on their own goroutine
		if rssMiB(t)-base <= 40 {
			return
		}
		runtime.GC()
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("resident memory grew by %d MiB over 40 dropped tables", rssMiB(t)-base)
}

func rssMiB(t *testing.T) int {
	t.Helper()
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			if err != nil {
				t.Fatal(err)
			}
			return kb / 1024
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// BenchmarkTableGetAll is a batch of 1,000 random hits in a table of a million entries, per key.
func BenchmarkTableGetAll(b *testing.B) {
	for _, n := range []int{10_000, 1_000_000} {
		for _, mxid := range []string{"@user%07d:hs.example.nl", "@user%07d.de-vries:zorg.hs-example.nl"} {
			b.Run(fmt.Sprintf("entries=%d/mxid=%d", n, len(fmt.Sprintf(mxid, 0))), func(b *testing.B) { benchGetAll(b, n, mxid) })
		}
	}
}

func benchGetAll(b *testing.B, n int, mxid string) {
	tab := hashindex.New(n)
	defer tab.Close()
	keys := make([]hashindex.Hash, n)
	for i := range keys {
		keys[i] = hashOf(i)
		tab.Set(&keys[i], fmt.Sprintf(mxid, i))
	}
	rng := rand.New(rand.NewPCG(5, 6))
	batches := make([][]hashindex.Hash, max(64, n/1000))
	for i := range batches {
		batches[i] = make([]hashindex.Hash, 1000)
		for j := range batches[i] {
			batches[i][j] = keys[rng.IntN(n)]
		}
	}
	i, hits := 0, 0
	var value []byte // each value is copied, as a lookup's answer does
	for b.Loop() {
		tab.GetAll(batches[i%len(batches)], func(_ int, v []byte) { hits++; value = append(value[:0], v...) })
		i++
	}
	if hits != 1000*i {
		b.Fatalf("%d hits of %d", hits, 1000*i)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(1000*b.N), "ns/key")
}
