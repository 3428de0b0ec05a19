package audit

import (
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Chain computes the keyed MAC that links each record to its predecessor. Without the key,
// which is kept outside the database, a record cannot be changed and the chain recomputed.
type Chain struct {
	key []byte
}

// NewChain returns a chain keyed with key (at least 32 bytes).
func NewChain(key []byte) (*Chain, error) {
	if len(key) < 32 {
		return nil, errors.New("audit: the chain key must be at least 32 bytes")
	}
	return &Chain{key: append([]byte(nil), key...)}, nil
}

// KeyID names the key without revealing it, so a replica with another key is noticed.
func (c *Chain) KeyID() string {
	m := hmac.New(sha256.New, c.key)
	m.Write([]byte("ozo-identity audit key id"))
	return hex.EncodeToString(m.Sum(nil))[:16]
}

// Seal sets r's sequence number, predecessor MAC and MAC.
func (c *Chain) Seal(r *Record, seq int64, prevMAC string) {
	r.Seq, r.PrevMAC = seq, prevMAC
	r.MAC = c.mac(r)
}

func (c *Chain) mac(r *Record) string {
	m := hmac.New(sha256.New, c.key)
	var n [8]byte
	field := func(s string) {
		binary.BigEndian.PutUint64(n[:], uint64(len(s)))
		m.Write(n[:])
		m.Write([]byte(s))
	}
	field("ozo-identity audit v1")
	field(strconv.FormatInt(r.Seq, 10))
	field(strconv.FormatInt(r.At.UnixMilli(), 10))
	for _, s := range []string{string(r.Action), string(r.Outcome), string(r.Actor.Kind), r.Actor.ID, r.OnBehalfOf,
		r.Medium, r.Address, r.Resource, r.Source, r.RequestID, r.Detail} {
		field(s)
	}
	field(strconv.FormatInt(r.Count, 10))
	field(strconv.FormatInt(r.Found, 10))
	field(r.PrevMAC)
	// Added after the first records were written: only a record that has a subject covers it,
	// so records from before keep their MACs (the field count tells the two apart).
	if r.Subject != "" {
		field("subject")
		field(r.Subject)
	}
	return hex.EncodeToString(m.Sum(nil))
}

// Valid reports whether r's MAC follows from its fields and predecessor.
func (c *Chain) Valid(r Record) bool {
	return hmac.Equal([]byte(c.mac(&r)), []byte(r.MAC))
}

// EnvKey is the environment variable that may hold the chain key (base64 or hex).
const EnvKey = "OZO_AUDIT_KEY"

// LoadKey returns the chain key from the environment value env when set, else from file;
// when neither exists it generates a key into file (mode 0600) and reports created.
func LoadKey(env, file string) (key []byte, created bool, err error) {
	if env != "" {
		k, err := decodeKey(env)
		if err != nil {
			return nil, false, fmt.Errorf("%s: %w", EnvKey, err)
		}
		return k, false, nil
	}
	data, err := os.ReadFile(file)
	if err == nil {
		k, err := decodeKey(strings.TrimSpace(string(data)))
		if err != nil {
			return nil, false, fmt.Errorf("audit key %s: %w", file, err)
		}
		return k, false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, false, fmt.Errorf("read audit key: %w", err)
	}
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		return nil, false, fmt.Errorf("generate audit key: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return nil, false, fmt.Errorf("create audit key directory: %w", err)
	}
	// Written whole to a temporary file, then linked into place: two processes starting
	// together neither each keep their own key nor read a half-written one.
	tmp, err := os.CreateTemp(filepath.Dir(file), ".audit-key-*")
	if err != nil {
		return nil, false, fmt.Errorf("write audit key: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return nil, false, fmt.Errorf("write audit key: %w", err)
	}
	if _, err := tmp.WriteString(base64.StdEncoding.EncodeToString(k) + "\n"); err != nil {
		tmp.Close()
		return nil, false, fmt.Errorf("write audit key: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return nil, false, fmt.Errorf("write audit key: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return nil, false, fmt.Errorf("write audit key: %w", err)
	}
	if err := os.Link(tmp.Name(), file); errors.Is(err, os.ErrExist) {
		return LoadKey("", file)
	} else if err != nil {
		return nil, false, fmt.Errorf("write audit key: %w", err)
	}
	return k, true, nil
}

func decodeKey(s string) ([]byte, error) {
	if k, err := hex.DecodeString(s); err == nil && len(k) >= 32 {
		return k, nil
	}
	k, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, errors.New("the audit key must be base64 or hex")
	}
	if len(k) < 32 {
		return nil, errors.New("the audit key must be at least 32 bytes")
	}
	return k, nil
}

// Checkpoint is a signed statement of the chain head: the auditor keeps it outside the
// system, and a later verification proves nothing up to Seq was rewritten or removed.
type Checkpoint struct {
	Server    string    `json:"server"`
	Seq       int64     `json:"seq"`
	MAC       string    `json:"mac"`
	At        time.Time `json:"at"` // when the head record was written
	Created   time.Time `json:"created"`
	KeyID     string    `json:"key_id"`     // the signing key, such as ed25519:0
	PublicKey string    `json:"public_key"` // unpadded base64, as /_matrix/identity/v2/pubkey serves it
	Signature string    `json:"signature"`  // unpadded base64 Ed25519 signature of Message
}

// Message is what the signature covers.
func (c Checkpoint) Message() []byte {
	return fmt.Appendf(nil, "ozo-identity audit checkpoint v1\n%s\n%d\n%s\n%d\n%d\n%s\n",
		c.Server, c.Seq, c.MAC, c.At.UnixMilli(), c.Created.UnixMilli(), c.KeyID)
}

// Sign fills the signature with sign, an Ed25519 signer whose public key is publicKey
// (unpadded base64).
func (c *Checkpoint) Sign(sign func([]byte) []byte, publicKey string) {
	c.PublicKey = publicKey
	c.Signature = base64.RawStdEncoding.EncodeToString(sign(c.Message()))
}

// VerifySignature checks the signature against pub (unpadded base64), the key the auditor
// trusts, not the one the checkpoint names.
func (c Checkpoint) VerifySignature(pub string) error {
	k, err := base64.RawStdEncoding.DecodeString(pub)
	if err != nil || len(k) != ed25519.PublicKeySize {
		return errors.New("audit: the server public key is not an Ed25519 key")
	}
	sig, err := base64.RawStdEncoding.DecodeString(c.Signature)
	if err != nil || !ed25519.Verify(k, c.Message(), sig) {
		return errors.New("audit: the checkpoint signature is not valid for the server key")
	}
	return nil
}

// ParseCheckpoint reads a checkpoint file.
func ParseCheckpoint(data []byte) (Checkpoint, error) {
	var c Checkpoint
	if err := json.Unmarshal(data, &c); err != nil {
		return c, fmt.Errorf("parse checkpoint: %w", err)
	}
	return c, nil
}
