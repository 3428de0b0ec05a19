package ozoaccount

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"strings"
)

// sealPrefix marks a TOTP secret encrypted with Options.SecretKey. A TOTP secret must be
// readable to check codes, so it cannot be hashed; sealed, a copy of the database alone does not
// give an attacker the second factor.
const sealPrefix = "v1:"

func (s *Service) sealSecret(secret string) (string, error) {
	if s.aead == nil || secret == "" {
		return secret, nil
	}
	nonce := make([]byte, s.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return "", err
	}
	return sealPrefix + base64.RawStdEncoding.EncodeToString(s.aead.Seal(nonce, nonce, []byte(secret), nil)), nil
}

func (s *Service) openSecret(stored string) (string, error) {
	b64, ok := strings.CutPrefix(stored, sealPrefix)
	if !ok {
		return stored, nil // stored without a key configured
	}
	if s.aead == nil {
		return "", errors.New("TOTP secret is sealed but no key is configured")
	}
	raw, err := base64.RawStdEncoding.DecodeString(b64)
	if err != nil || len(raw) < s.aead.NonceSize() {
		return "", errors.New("TOTP secret: malformed")
	}
	plain, err := s.aead.Open(nil, raw[:s.aead.NonceSize()], raw[s.aead.NonceSize():], nil)
	if err != nil {
		return "", errors.New("TOTP secret: cannot be opened with the configured key")
	}
	return string(plain), nil
}

func newAEAD(key []byte) (cipher.AEAD, error) {
	if len(key) == 0 {
		return nil, nil
	}
	if len(key) != 32 {
		return nil, errors.New("ozoaccount: secret key must be 32 bytes")
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}
