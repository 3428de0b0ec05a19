package ozoaccount

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/argon2"
)

// Argon2Params are argon2id's cost parameters. The default is OWASP's recommendation (Password
// Storage Cheat Sheet): 19 MiB, 2 passes, 1 lane.
type Argon2Params struct {
	MemoryKiB   uint32
	Iterations  uint32
	Parallelism uint8
}

// DefaultArgon2 is OWASP's first argon2id configuration (m=19456 KiB, t=2, p=1).
var DefaultArgon2 = Argon2Params{MemoryKiB: 19 * 1024, Iterations: 2, Parallelism: 1}

// MinArgon2Cost is the least memory × passes OWASP's equivalent configurations reach
// (m=7 MiB with t=5 ... m=46 MiB with t=1): below it a configuration is refused.
const MinArgon2Cost = 7 * 1024 * 5

// Check refuses parameters weaker than OWASP's recommendations or too large to run.
func (p Argon2Params) Check() error {
	switch {
	case p.Iterations < 1 || p.Parallelism < 1:
		return errors.New("argon2id iterations and parallelism must be at least 1")
	case p.MemoryKiB < 7*1024:
		return fmt.Errorf("argon2id memory %d KiB is below OWASP's minimum of 7168 KiB", p.MemoryKiB)
	case uint64(p.MemoryKiB)*uint64(p.Iterations) < MinArgon2Cost:
		return fmt.Errorf("argon2id memory × iterations %d is below OWASP's equivalent configurations (%d)",
			uint64(p.MemoryKiB)*uint64(p.Iterations), MinArgon2Cost)
	case p.MemoryKiB > 4<<20:
		return errors.New("argon2id memory above 4 GiB")
	}
	return nil
}

const (
	saltLen = 16
	keyLen  = 32
	// maxPasswordBytes bounds the work an attacker can make argon2 hash (its input is hashed
	// first, but reading and copying megabytes is still work).
	maxPasswordBytes = 1024
)

// hashPassword returns a PHC string: $argon2id$v=19$m=…,t=…,p=…$salt$hash.
func hashPassword(password string, p Argon2Params) (string, error) {
	salt := make([]byte, saltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", err
	}
	key := argon2.IDKey([]byte(password), salt, p.Iterations, p.MemoryKiB, p.Parallelism, keyLen)
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, p.MemoryKiB, p.Iterations, p.Parallelism,
		base64.RawStdEncoding.EncodeToString(salt), base64.RawStdEncoding.EncodeToString(key)), nil
}

// verifyPassword checks password against a PHC string made by hashPassword, with the
// parameters stored in it (so raising the configured cost keeps old hashes working). needsRehash
// says the stored parameters differ from want.
func verifyPassword(password, encoded string, want Argon2Params) (ok, needsRehash bool, err error) {
	parts := strings.Split(encoded, "$")
	if len(parts) != 6 || parts[1] != "argon2id" {
		return false, false, errors.New("not an argon2id hash")
	}
	var version int
	if _, err := fmt.Sscanf(parts[2], "v=%d", &version); err != nil || version != argon2.Version {
		return false, false, errors.New("unsupported argon2 version")
	}
	var p Argon2Params
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &p.MemoryKiB, &p.Iterations, &p.Parallelism); err != nil {
		return false, false, fmt.Errorf("argon2id parameters: %w", err)
	}
	if p.MemoryKiB > 4<<20 || p.Iterations > 100 || p.Parallelism < 1 {
		return false, false, errors.New("argon2id parameters out of range")
	}
	salt, err := base64.RawStdEncoding.DecodeString(parts[4])
	if err != nil {
		return false, false, fmt.Errorf("argon2id salt: %w", err)
	}
	key, err := base64.RawStdEncoding.DecodeString(parts[5])
	if err != nil || len(key) == 0 {
		return false, false, errors.New("argon2id hash: bad key")
	}
	got := argon2.IDKey([]byte(password), salt, p.Iterations, p.MemoryKiB, p.Parallelism, uint32(len(key)))
	return subtle.ConstantTimeCompare(got, key) == 1, p != want, nil
}
