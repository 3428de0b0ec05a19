// Package threepid holds the rules for third-party identifiers: which media ozo-identity binds,
// their canonical form, and the v2 lookup hashes. Every other package takes 3PIDs through it.
package threepid

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/mail"
	"strings"
	"unicode"
	"unicode/utf8"
)

// ThreePID is a third-party identifier in canonical form (see Normalize).
type ThreePID struct {
	Medium  string
	Address string
}

// Media ozo-identity binds. uzi and ura are Dutch healthcare identifiers; idp is "<idp-id>:<subject>".
const (
	MediumEmail = "email"
	MediumUZI   = "uzi"
	MediumURA   = "ura"
	MediumIDP   = "idp"
)

// aliases maps accepted input media to their canonical medium: the Nuts specification says uzi_nr and ura_nr.
var aliases = map[string]string{
	"email":  MediumEmail,
	"uzi":    MediumUZI,
	"uzi_nr": MediumUZI,
	"ura":    MediumURA,
	"ura_nr": MediumURA,
	"idp":    MediumIDP,
}

// Errors from Normalize; the API maps them to M_INVALID_EMAIL and M_INVALID_PARAM.
var (
	ErrUnsupportedMedium = errors.New("unsupported medium")
	ErrInvalidEmail      = errors.New("invalid email address")
	ErrInvalidAddress    = errors.New("invalid address")
)

// MaxAddressLength is the longest address Normalize accepts (an idp address); request bodies
// that carry many addresses are bounded by it.
const MaxAddressLength = 512

// CanonicalMedium returns the canonical name of medium, or "" when it is not supported.
func CanonicalMedium(medium string) string { return aliases[medium] }

// MediumNames returns every accepted name of the canonical medium (uzi → uzi, uzi_nr) so that
// hashed lookups work whichever name the client hashed.
func MediumNames(canonical string) []string {
	switch canonical {
	case MediumUZI:
		return []string{MediumUZI, "uzi_nr"}
	case MediumURA:
		return []string{MediumURA, "ura_nr"}
	default:
		return []string{canonical}
	}
}

// Normalize validates a 3PID and returns it in canonical form: canonical medium, trimmed,
// e-mail lower-cased, UZI 9 digits and URA 8 digits with leading zeros kept.
func Normalize(medium, address string) (ThreePID, error) {
	canon := CanonicalMedium(medium)
	if canon == "" {
		return ThreePID{}, fmt.Errorf("%w: %q", ErrUnsupportedMedium, medium)
	}
	address = strings.TrimSpace(address)
	// Invalid UTF-8 cannot be stored (PostgreSQL refuses it) and has no canonical form.
	if !utf8.ValidString(address) {
		if canon == MediumEmail {
			return ThreePID{}, fmt.Errorf("%w: not valid UTF-8", ErrInvalidEmail)
		}
		return ThreePID{}, fmt.Errorf("%w: not valid UTF-8", ErrInvalidAddress)
	}
	var err error
	switch canon {
	case MediumEmail:
		address, err = normalizeEmail(address)
	case MediumUZI:
		err = digits(address, 9, "UZI number")
	case MediumURA:
		err = digits(address, 8, "URA number")
	case MediumIDP:
		err = idpAddress(address)
	}
	if err != nil {
		return ThreePID{}, err
	}
	return ThreePID{Medium: canon, Address: address}, nil
}

func normalizeEmail(address string) (string, error) {
	// Lower-cased first: some letters grow in bytes, and the canonical form must pass these checks again.
	address = strings.ToLower(address)
	if len(address) > 254 || strings.Count(address, "@") != 1 {
		return "", fmt.Errorf("%w: must contain exactly one @", ErrInvalidEmail)
	}
	for _, r := range address {
		if unicode.IsSpace(r) || unicode.IsControl(r) || strings.ContainsRune(`<>"(),;:\[]`, r) {
			return "", fmt.Errorf("%w: only a bare address is accepted", ErrInvalidEmail)
		}
	}
	a, err := mail.ParseAddress(address)
	if err != nil || a.Name != "" || a.Address != address {
		return "", fmt.Errorf("%w: only a bare address is accepted", ErrInvalidEmail)
	}
	local, domain, _ := strings.Cut(address, "@")
	if local == "" || domain == "" || !strings.Contains(domain, ".") && domain != "localhost" {
		return "", fmt.Errorf("%w: missing local part or domain", ErrInvalidEmail)
	}
	return address, nil
}

func digits(s string, n int, what string) error {
	if len(s) != n {
		return fmt.Errorf("%w: a %s has %d digits", ErrInvalidAddress, what, n)
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return fmt.Errorf("%w: a %s has only digits", ErrInvalidAddress, what)
		}
	}
	return nil
}

func idpAddress(s string) error {
	idp, subject, ok := strings.Cut(s, ":")
	if !ok || idp == "" || subject == "" || len(s) > MaxAddressLength {
		return fmt.Errorf("%w: an idp address is <idp-id>:<subject>", ErrInvalidAddress)
	}
	for _, c := range idp {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return fmt.Errorf("%w: an idp id has only a-z, 0-9, '-', '_' and '.'", ErrInvalidAddress)
		}
	}
	for _, r := range subject {
		if unicode.IsControl(r) || unicode.IsSpace(r) {
			return fmt.Errorf("%w: an idp subject has no spaces or control characters", ErrInvalidAddress)
		}
	}
	return nil
}

// LookupHash is the v2 lookup hash of "address medium pepper": SHA-256, unpadded URL-safe base64.
func LookupHash(address, medium, pepper string) string {
	sum := sha256.Sum256([]byte(address + " " + medium + " " + pepper))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// FoldedLookupHashes returns the hashes of the lower-cased 3PID, as matrix-js-sdk computes them
// (it lower-cases every address before hashing), or nil when lower-casing changes nothing. They
// may be shared by several 3PIDs (idp subjects are case-sensitive), so they are answered only
// when unambiguous.
func FoldedLookupHashes(tp ThreePID, pepper string) []string {
	lower := strings.ToLower(tp.Address)
	if lower == tp.Address {
		return nil
	}
	return LookupHashes(ThreePID{Medium: tp.Medium, Address: lower}, pepper)
}

// LookupHashes returns the hashes of a canonical 3PID under every accepted name of its medium.
func LookupHashes(tp ThreePID, pepper string) []string {
	names := MediumNames(tp.Medium)
	out := make([]string, len(names))
	for i, m := range names {
		out[i] = LookupHash(tp.Address, m, pepper)
	}
	return out
}
