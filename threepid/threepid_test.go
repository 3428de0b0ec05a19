package threepid

import (
	"errors"
	"testing"
)

func TestNormalize(t *testing.T) {
	good := []struct{ medium, address, wantMedium, wantAddress string }{
		{"email", " Bob@Example.NL ", "email", "bob@example.nl"},
		{"uzi", "012345678", "uzi", "012345678"},
		{"uzi_nr", "123456789", "uzi", "123456789"},
		{"ura_nr", "00012345", "ura", "00012345"},
		{"idp", "ziekenhuis-a:5f3a-77", "idp", "ziekenhuis-a:5f3a-77"},
	}
	for _, c := range good {
		tp, err := Normalize(c.medium, c.address)
		if err != nil || tp.Medium != c.wantMedium || tp.Address != c.wantAddress {
			t.Errorf("Normalize(%q, %q) = %+v, %v", c.medium, c.address, tp, err)
		}
	}
	bad := []struct {
		medium, address string
		want            error
	}{
		{"email", "a@b@example.nl", ErrInvalidEmail},
		{"email", "Bob <bob@example.nl>", ErrInvalidEmail},
		{"email", "bob@example.nl\r\nBcc: x@y.nl", ErrInvalidEmail},
		{"email", "@example.nl", ErrInvalidEmail},
		{"email", "bob@", ErrInvalidEmail},
		{"uzi", "12345", ErrInvalidAddress},
		{"uzi", "12345678a", ErrInvalidAddress},
		{"uzi", "１２３４５６７８９", ErrInvalidAddress},
		{"ura", "123456789", ErrInvalidAddress},
		{"idp", "no-subject", ErrInvalidAddress},
		{"idp", "UPPER:x", ErrInvalidAddress},
		{"idp", "a:b c", ErrInvalidAddress},
		{"msisdn", "31612345678", ErrUnsupportedMedium},
		{"", "x", ErrUnsupportedMedium},
	}
	for _, c := range bad {
		if _, err := Normalize(c.medium, c.address); !errors.Is(err, c.want) {
			t.Errorf("Normalize(%q, %q): %v, want %v", c.medium, c.address, err, c.want)
		}
	}
}

func TestLookupHashesCoverAliases(t *testing.T) {
	tp, _ := Normalize("uzi_nr", "123456789")
	hs := LookupHashes(tp, "pepper")
	if len(hs) != 2 || hs[0] != LookupHash("123456789", "uzi", "pepper") || hs[1] != LookupHash("123456789", "uzi_nr", "pepper") {
		t.Fatalf("hashes %v", hs)
	}
	// The spec's example: sha256("alice@example.com email matrixrocks"), unpadded URL-safe base64.
	if got := LookupHash("alice@example.com", "email", "matrixrocks"); got != "4kenr7N9drpCJ4AfalmlGQVsOn3o2RHjkADUpXJWZUc" {
		t.Fatalf("spec example hash: %s", got)
	}
}
