package httpguard

import (
	"net/netip"
	"testing"
)

// Moved from homeserver with the guard.
func TestAddrAllowed(t *testing.T) {
	denied := []string{
		"127.0.0.1", "127.255.255.254", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1",
		"100.64.0.1", "169.254.169.254", "0.0.0.0", "0.1.2.3", "255.255.255.255", "224.0.0.1",
		"240.0.0.1", "192.0.2.1", "198.18.0.1", "198.51.100.7", "203.0.113.9", "192.0.0.8",
		"::", "::1", "fe80::1", "fe80::1%eth0", "fc00::1", "fd12:3456::1", "ff02::1", "fec0::1",
		"::ffff:127.0.0.1", "::ffff:10.0.0.1", "::127.0.0.1", "64:ff9b::a00:1", "2001:db8::1",
		"2002:7f00:1::1", "2001::1", "100::1",
	}
	for _, s := range denied {
		if AddrAllowed(netip.MustParseAddr(s), nil) {
			t.Errorf("%s allowed, want denied", s)
		}
	}
	allowed := []string{"8.8.8.8", "1.1.1.1", "145.100.190.1", "2606:4700:4700::1111", "2a00:1450:400e::200e"}
	for _, s := range allowed {
		if !AddrAllowed(netip.MustParseAddr(s), nil) {
			t.Errorf("%s denied, want allowed", s)
		}
	}
	if AddrAllowed(netip.Addr{}, nil) {
		t.Error("zero address allowed")
	}

	nets := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("10.20.0.0/16")}
	for s, want := range map[string]bool{
		"127.0.0.1": true, "::ffff:127.0.0.1": true, "10.20.3.4": true,
		"10.21.0.1": false, "192.168.1.1": false, "::1": false, "8.8.8.8": true,
	} {
		if got := AddrAllowed(netip.MustParseAddr(s), nets); got != want {
			t.Errorf("with allowed networks: %s allowed = %v, want %v", s, got, want)
		}
	}
}
