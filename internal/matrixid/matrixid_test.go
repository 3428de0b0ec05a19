package matrixid

import "testing"

// Moved from identity's TestValidMXIDAndSecret when identity's validator and mcsd's became this one.
func TestValidUserID(t *testing.T) {
	for _, ok := range []string{"@alice:hs.example.nl", "@a.b_c=d:localhost:8448"} {
		if !ValidUserID(ok) {
			t.Errorf("%q rejected", ok)
		}
	}
	for _, bad := range []string{"alice:hs", "@alice", "@:hs", "@alice:", "@al ice:hs", "@alice:hs\n"} {
		if ValidUserID(bad) {
			t.Errorf("%q accepted", bad)
		}
	}
	if got := ServerOf("@alice:hs.example.nl:8448"); got != "hs.example.nl:8448" {
		t.Errorf("ServerOf = %q", got)
	}
}
