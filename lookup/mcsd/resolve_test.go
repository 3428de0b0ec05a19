package mcsd

import (
	"testing"

	"github.com/ozo-platform/ozo-identity/internal/matrixid"
)

// TestResolveClaims: between care providers nothing is chosen by preference or recency.
func TestResolveClaims(t *testing.T) {
	user := func(ura, mxid string, pref int, updated int64) candidate {
		return candidate{ura: ura, mxid: mxid, homeserver: matrixid.ServerOf(mxid), pref: pref, updated: updated, sourceID: "r-" + ura, dir: "d-" + ura}
	}
	server := func(ura, hs string, updated int64) candidate {
		return candidate{ura: ura, homeserver: hs, pref: 5, updated: updated, sourceID: "r-" + ura, dir: "d-" + ura}
	}
	for _, c := range []struct {
		name     string
		claims   []candidate
		conflict bool
		mxid, hs string
	}{
		{"one provider", []candidate{user("1", "@a:hs-a", 1, 1)}, false, "@a:hs-a", "hs-a"},
		{"same user at two providers", []candidate{user("1", "@a:hs-a", 1, 1), user("2", "@a:hs-a", 3, 9)}, false, "@a:hs-a", "hs-a"},
		{"different users, the newer with the better form", []candidate{user("1", "@a:hs-a", 3, 1), user("2", "@m:evil", 1, 4102444800000)}, true, "", ""},
		{"a user beats another provider's homeserver", []candidate{user("1", "@a:hs-a", 1, 1), server("2", "evil", 9)}, false, "@a:hs-a", "hs-a"},
		{"homeservers only, different", []candidate{server("1", "hs-a", 1), server("2", "evil", 9)}, true, "", ""},
		{"homeservers only, the same", []candidate{server("1", "hs-a", 1), server("2", "hs-a", 9)}, false, "", "hs-a"},
		{"without URA, keyed by directory", []candidate{{mxid: "@a:hs-a", homeserver: "hs-a", dir: "d1"}, {mxid: "@m:evil", homeserver: "evil", dir: "d2"}}, true, "", ""},
	} {
		byProvider := map[string]candidate{}
		for _, cl := range c.claims {
			byProvider[cl.provider()] = cl
		}
		r := resolveClaims(byProvider)
		if r.conflict != c.conflict || len(r.claims) != len(c.claims) {
			t.Errorf("%s: conflict %v with %d claims, want %v", c.name, r.conflict, len(r.claims), c.conflict)
			continue
		}
		if !c.conflict && (r.best.mxid != c.mxid || r.best.homeserver != c.hs) {
			t.Errorf("%s: resolved to %q on %q, want %q on %q", c.name, r.best.mxid, r.best.homeserver, c.mxid, c.hs)
		}
	}
}
