package hashindex

import (
	"crypto/sha256"
	"fmt"
	"testing"
)

// A slot whose tag matches the key asked but whose record is another key's (one in 2^24 by
// chance) does not answer for it: GetAll compares the whole hash and probes on, as Get does.
func TestGetAllTagSharedByAnotherKey(t *testing.T) {
	tab := New(1000)
	defer tab.Close()
	for i := range 500 {
		h := Hash(sha256.Sum256(fmt.Append(nil, "other", i)))
		tab.Set(&h, fmt.Sprintf("@other%d:hs", i))
	}
	other := Hash(sha256.Sum256([]byte("other0")))
	otherSlot, _ := tab.find(&other)
	mask := uint64(tab.slotCount() - 1)
	for k := 0; ; k++ {
		key := Hash(sha256.Sum256(fmt.Append(nil, "key", k)))
		p := tab.position(key[:])
		home, after := p&mask, (p+1)&mask
		if tab.slot(home) != 0 || tab.slot(after) != 0 {
			continue // want two free slots at the key's home
		}
		// The key's own slot one place on, and before it a slot with the key's tag that points
		// to the other key's record.
		if err := tab.Set(&key, "@key:hs"); err != nil {
			t.Fatal(err)
		}
		own := tab.slot(home)
		tab.setSlot(after, own)
		tab.setSlot(home, tagOf(p)<<offBits|tab.slot(uint64(otherSlot))&offMask)
		if v, ok := tab.Get(&key); !ok || v != "@key:hs" {
			t.Fatalf("Get = %q %v", v, ok)
		}
		var got []string
		tab.GetAll([]Hash{key, other}, func(i int, v []byte) { got = append(got, fmt.Sprint(i, string(v))) })
		if want := fmt.Sprint([]string{"0@key:hs", "1@other0:hs"}); fmt.Sprint(got) != want {
			t.Fatalf("GetAll answered %v, want %v", got, want)
		}
		// Without the key's own slot the impostor alone must not answer.
		tab.setSlot(after, 0)
		got = nil
		tab.GetAll([]Hash{key}, func(i int, v []byte) { got = append(got, string(v)) })
		if len(got) != 0 {
			t.Fatalf("GetAll answered %v for a key that is not there", got)
		}
		return
	}
}
