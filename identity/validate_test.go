package identity

import "testing"

func TestValidMXIDAndSecret(t *testing.T) {
	for _, ok := range []string{"@alice:hs.example.nl", "@a.b_c=d:localhost:8448"} {
		if !ValidMXID(ok) {
			t.Errorf("%q rejected", ok)
		}
	}
	for _, bad := range []string{"alice:hs", "@alice", "@:hs", "@alice:", "@al ice:hs", "@alice:hs\n"} {
		if ValidMXID(bad) {
			t.Errorf("%q accepted", bad)
		}
	}
	if validSecret("") || validSecret("a b") || validSecret(string(make([]byte, 256))) || !validSecret("abc.DEF=_-1") {
		t.Error("client_secret grammar")
	}
}
