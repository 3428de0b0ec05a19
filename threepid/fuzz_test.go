package threepid

import (
	"errors"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

// FuzzNormalize checks what the rest of the service relies on: a canonical 3PID is valid UTF-8
// without control characters (PostgreSQL refuses NUL and invalid UTF-8), normalising it again
// changes nothing, and every refusal is one of the package's errors.
func FuzzNormalize(f *testing.F) {
	for _, seed := range [][2]string{
		{"email", "Alice@Example.org"}, {"email", " bob@zorg.example.nl "}, {"email", "a@localhost"},
		{"email", "Alice <alice@example.org>"}, {"email", "a@b@c.d"}, {"email", "ünï@zörg.example.nl"},
		{"uzi", "012345678"}, {"uzi_nr", "000000111"}, {"uzi", "12345678a"}, {"ura", "01234567"}, {"ura_nr", "1234567"},
		{"idp", "ziekenhuis:abc-123"}, {"idp", "Bad:subject"}, {"idp", "x:a b"}, {"msisdn", "31612345678"},
		{"email", "a\x00b@example.org"}, {"idp", "x:\xff"},
	} {
		f.Add(seed[0], seed[1])
	}
	f.Fuzz(func(t *testing.T, medium, address string) {
		tp, err := Normalize(medium, address)
		if err != nil {
			if !errors.Is(err, ErrUnsupportedMedium) && !errors.Is(err, ErrInvalidEmail) && !errors.Is(err, ErrInvalidAddress) {
				t.Fatalf("Normalize(%q, %q): unexpected error %v", medium, address, err)
			}
			return
		}
		if tp.Medium != CanonicalMedium(medium) {
			t.Fatalf("medium %q for input %q", tp.Medium, medium)
		}
		if !utf8.ValidString(tp.Address) || strings.ContainsFunc(tp.Address, unicode.IsControl) {
			t.Fatalf("Normalize(%q, %q) = %q: not storable", medium, address, tp.Address)
		}
		again, err := Normalize(tp.Medium, tp.Address)
		if err != nil || again != tp {
			t.Fatalf("not idempotent: %q → %q → %q, %v", address, tp.Address, again.Address, err)
		}
		if tp.Medium == MediumEmail && strings.ToLower(tp.Address) != tp.Address {
			t.Fatalf("email %q not lower-cased", tp.Address)
		}
		if len(LookupHashes(tp, "pepper")) != len(MediumNames(tp.Medium)) {
			t.Fatal("a lookup hash per medium name")
		}
	})
}
