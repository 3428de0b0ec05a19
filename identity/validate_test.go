package identity

import "testing"

// The Matrix ID half of this test moved to internal/matrixid (TestValidUserID).
func TestValidSecret(t *testing.T) {
	if validSecret("") || validSecret("a b") || validSecret(string(make([]byte, 256))) || !validSecret("abc.DEF=_-1") {
		t.Error("client_secret grammar")
	}
}

func TestValidRoomID(t *testing.T) {
	for _, ok := range []string{"!abc:hs.example.nl", "!abc:hs.example.nl:8448", "!abc:[::1]:8448", "!a:1.2.3.4",
		"!" + "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ-_01234"} {
		if !ValidRoomID(ok) {
			t.Errorf("%q rejected", ok)
		}
	}
	for _, bad := range []string{"!a\x00b:x.example", "!a\u0085b:x.example", "!a b:x.example", "!ab:", "!:x.example",
		"#alias:x.example", "abc:x.example", "!ab:x.example\n", "!ab:bad host", "!short",
		"!" + "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ+/01234", "!a\xffb:x.example", "!" + string(make([]byte, 300)) + ":x"} {
		if ValidRoomID(bad) {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestAllowedNextLink(t *testing.T) {
	s := New(nil, nil, "", nil, nil, Options{PublicBaseURL: "https://id.zorg.example.nl",
		WebClientLocation: "https://chat.zorg.example.nl/app"}, nil)
	for _, ok := range []string{"https://id.zorg.example.nl/done", "https://chat.zorg.example.nl/#/validated",
		"https://CHAT.zorg.example.nl:8443/x"} {
		if !s.AllowedNextLink(ok) {
			t.Errorf("%q refused", ok)
		}
	}
	for _, bad := range []string{"http://id.zorg.example.nl/done", "https://evil.example/", "https://id.zorg.example.nl@evil.example/",
		"https://zorg.example.nl/", "https://id.zorg.example.nl.evil.example/", "javascript:alert(1)", "//id.zorg.example.nl/x",
		"https:id.zorg.example.nl", ""} {
		if s.AllowedNextLink(bad) {
			t.Errorf("%q allowed", bad)
		}
	}
	narrow := New(nil, nil, "", nil, nil, Options{PublicBaseURL: "https://id.zorg.example.nl", NextLinkHosts: []string{"app.zorg.example.nl:443"}}, nil)
	if narrow.AllowedNextLink("https://id.zorg.example.nl/done") || narrow.AllowedNextLink("https://app.zorg.example.nl:8443/") ||
		!narrow.AllowedNextLink("https://app.zorg.example.nl:443/") {
		t.Error("configured next_link_hosts replace the defaults; a host:port entry allows that port only")
	}
}
