package identity

import (
	"context"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"maunium.net/go/mautrix/federation"
	"maunium.net/go/mautrix/id"

	"github.com/ozo-platform/ozo-identity/threepid"
)

// SettingPepper is the setting that holds the lookup pepper.
const SettingPepper = "lookup_pepper"

// KeyID is the identifier Sydent and homeservers expect for an identity server's key.
const KeyID = "ed25519:0"

const (
	settingSigningKey = "signing_key"
	// settingFoldedHashes is set once every binding has its folded lookup hashes.
	settingFoldedHashes = "folded_lookup_hashes"
)

// Signer signs JSON objects with the server's long-term Ed25519 key. The key may change while
// it runs: Refresh picks up a rotation another process stored.
type Signer struct {
	ServerName string
	fromFile   bool // signing_key_file: rotated by replacing the file and restarting

	mu  sync.RWMutex
	key *federation.SigningKey
	// text is the key as stored (Synapse's format), to notice a rotation.
	text string
	// previous are the earlier keys not retired: they co-sign invites (see SignInvite).
	previous []*federation.SigningKey
}

// LoadSigner reads the key from file (Synapse's "ed25519 0 <seed>" format) when file is set, and
// otherwise from the database, generating and storing one on first start.
func LoadSigner(ctx context.Context, store Store, serverName, file string) (*Signer, error) {
	var text string
	if file != "" {
		data, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("read signing key: %w", err)
		}
		text = strings.TrimSpace(string(data))
	} else {
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("generate signing key: %w", err)
		}
		fresh := "ed25519 0 " + base64.RawStdEncoding.EncodeToString(priv.Seed())
		// Replicas starting together keep whichever key was stored first.
		if text, err = store.SetSettingIfAbsent(ctx, settingSigningKey, fresh); err != nil {
			return nil, fmt.Errorf("store signing key: %w", err)
		}
	}
	key, err := federation.ParseSynapseKey(text)
	if err != nil {
		return nil, fmt.Errorf("parse signing key: %w", err)
	}
	// Every key in use is remembered, so that /pubkey keeps serving it after a rotation; a key
	// from a file keeps its private half out of the database.
	rec := SigningKey{ID: string(key.ID), PublicKey: string(key.Pub), Created: time.Now()}
	if file == "" {
		rec.Private = text
	}
	stored, err := store.RecordSigningKey(ctx, rec)
	if err != nil {
		return nil, err
	}
	if stored != string(key.Pub) {
		return nil, fmt.Errorf("signing key %s is not the key recorded under that id: give a new key a new id (ed25519 N+1 …)", key.ID)
	}
	s := &Signer{ServerName: serverName, fromFile: file != "", key: key, text: text}
	if err := s.loadPrevious(ctx, store); err != nil {
		return nil, err
	}
	return s, nil
}

// loadPrevious reads the earlier keys that are not retired.
func (s *Signer) loadPrevious(ctx context.Context, store Store) error {
	keys, err := store.SigningKeys(ctx)
	if err != nil {
		return err
	}
	current := s.current()
	var prev []*federation.SigningKey
	for _, k := range keys {
		if k.ID == string(current.ID) || !k.Retired.IsZero() || k.Private == "" {
			continue
		}
		key, err := federation.ParseSynapseKey(k.Private)
		if err != nil {
			return fmt.Errorf("parse signing key %s: %w", k.ID, err)
		}
		prev = append(prev, key)
	}
	s.mu.Lock()
	s.previous = prev
	s.mu.Unlock()
	return nil
}

// Refresh takes up the key another process (a rotation, a replica) stored since, and reports
// whether it changed. A key from signing_key_file changes only with the file, at a restart.
func (s *Signer) Refresh(ctx context.Context, store Store) (bool, error) {
	// A retirement elsewhere stops the key co-signing here too.
	if err := s.loadPrevious(ctx, store); err != nil {
		return false, err
	}
	if s.fromFile {
		return false, nil
	}
	text, err := store.GetSetting(ctx, settingSigningKey)
	if err != nil {
		return false, fmt.Errorf("read signing key: %w", err)
	}
	s.mu.RLock()
	same := text == s.text
	s.mu.RUnlock()
	if same {
		return false, nil
	}
	key, err := federation.ParseSynapseKey(text)
	if err != nil {
		return false, fmt.Errorf("parse signing key: %w", err)
	}
	s.mu.Lock()
	s.key, s.text = key, text
	s.mu.Unlock()
	return true, s.loadPrevious(ctx, store)
}

func (s *Signer) current() *federation.SigningKey {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.key
}

// KeyID returns the key's identifier, such as ed25519:0.
func (s *Signer) KeyID() string { return string(s.current().ID) }

// Secret derives a 32-byte secret for purpose from the signing key: replicas that share the key
// agree on it, and it changes when the key does (callers derive it once, at start).
func (s *Signer) Secret(purpose string) ([]byte, error) {
	return hkdf.Key(sha256.New, s.current().Priv.Seed(), nil, "ozo-identity "+purpose, 32)
}

// PublicKey returns the public key in unpadded standard base64.
func (s *Signer) PublicKey() string { return string(s.current().Pub) }

// SignMessage signs raw bytes (an audit checkpoint) with the long-term key.
func (s *Signer) SignMessage(msg []byte) []byte { return ed25519.Sign(s.current().Priv, msg) }

// Sign adds this server's signature to obj, following the Matrix signing-JSON rules.
func (s *Signer) Sign(obj map[string]any) error {
	return signWith(obj, s.ServerName, s.current())
}

// SignInvite signs an invite's "signed" object with the current key and every earlier one not
// retired: the room's m.room.third_party_invite lists the key that was current when the invite
// was stored, and the homeserver accepts a signature by any key it lists.
func (s *Signer) SignInvite(obj map[string]any) error {
	s.mu.RLock()
	keys := append([]*federation.SigningKey{s.key}, s.previous...)
	s.mu.RUnlock()
	for _, k := range keys {
		if err := signWith(obj, s.ServerName, k); err != nil {
			return err
		}
	}
	return nil
}

// RotateSigningKey generates the next long-term key (ed25519:N+1 after the highest id used),
// stores it as the signing key and records it; the previous keys stay valid until retired. It
// refuses when the key comes from signing_key_file (replace the file instead).
func (s *Signer) Rotate(ctx context.Context, store Store) (SigningKey, error) {
	if s.fromFile {
		return SigningKey{}, errors.New("the signing key comes from signing_key_file: put a key with a new id (ed25519 N+1 <seed>) in the file and restart")
	}
	if _, err := s.Refresh(ctx, store); err != nil {
		return SigningKey{}, err
	}
	keys, err := store.SigningKeys(ctx)
	if err != nil {
		return SigningKey{}, err
	}
	next := 0
	for _, k := range keys {
		if v, ok := strings.CutPrefix(k.ID, "ed25519:"); ok {
			if n, err := strconv.Atoi(v); err == nil && n >= next {
				next = n + 1
			}
		}
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return SigningKey{}, fmt.Errorf("generate signing key: %w", err)
	}
	text := fmt.Sprintf("ed25519 %d %s", next, base64.RawStdEncoding.EncodeToString(priv.Seed()))
	key, err := federation.ParseSynapseKey(text)
	if err != nil {
		return SigningKey{}, err
	}
	s.mu.RLock()
	current := s.text
	s.mu.RUnlock()
	k := SigningKey{ID: string(key.ID), PublicKey: string(key.Pub), Created: time.Now()}
	if err := store.RotateSigningKey(ctx, current, text, k); err != nil {
		return SigningKey{}, err
	}
	s.mu.Lock()
	s.key, s.text = key, text
	s.mu.Unlock()
	return k, s.loadPrevious(ctx, store)
}

func signWith(obj map[string]any, serverName string, key *federation.SigningKey) error {
	unsigned, hadUnsigned := obj["unsigned"]
	delete(obj, "unsigned")
	sig, err := key.SignJSON(obj)
	if err != nil {
		return fmt.Errorf("sign: %w", err)
	}
	sigs, _ := obj["signatures"].(map[string]any)
	if sigs == nil {
		sigs = map[string]any{}
	}
	server, _ := sigs[serverName].(map[string]any)
	if server == nil {
		server = map[string]any{}
	}
	server[string(key.ID)] = sig
	sigs[serverName] = server
	obj["signatures"] = sigs
	if hadUnsigned {
		obj["unsigned"] = unsigned
	}
	return nil
}

// parsePrivateKey reads a caller-provided Ed25519 private key: a 32-byte seed or a 64-byte key.
func parsePrivateKey(privateKey string) (ed25519.PrivateKey, error) {
	raw, err := decodeBase64(privateKey)
	if err != nil {
		return nil, errorf(CodeInvalidParam, "private_key is not base64")
	}
	switch len(raw) {
	case ed25519.SeedSize:
		return ed25519.NewKeyFromSeed(raw), nil
	case ed25519.PrivateKeySize:
		// A 64-byte key carries its public half; derive it from the seed so it cannot lie.
		return ed25519.NewKeyFromSeed(raw[:ed25519.SeedSize]), nil
	default:
		return nil, errorf(CodeInvalidParam, "private_key is not an Ed25519 key")
	}
}

// ephemeralPublicKey is the unpadded base64 public key of a caller-provided private key, the form
// store-invite hands out.
func ephemeralPublicKey(privateKey string) (string, error) {
	priv, err := parsePrivateKey(privateKey)
	if err != nil {
		return "", err
	}
	return base64.RawStdEncoding.EncodeToString(priv.Public().(ed25519.PublicKey)), nil
}

// signWithPrivateKey signs obj with a caller-provided ephemeral key (sign-ed25519).
func signWithPrivateKey(obj map[string]any, serverName, privateKey string) error {
	priv, err := parsePrivateKey(privateKey)
	if err != nil {
		return err
	}
	pub := priv.Public().(ed25519.PublicKey)
	key := &federation.SigningKey{ID: id.KeyID(KeyID), Pub: id.SigningKey(base64.RawStdEncoding.EncodeToString(pub)), Priv: priv}
	return signWith(obj, serverName, key)
}

// decodeBase64 accepts padded and unpadded, standard and URL-safe base64, as clients send all four.
func decodeBase64(s string) ([]byte, error) {
	s = strings.TrimRight(s, "=")
	if strings.ContainsAny(s, "-_") {
		return base64.RawURLEncoding.DecodeString(s)
	}
	return base64.RawStdEncoding.DecodeString(s)
}

// VerifySigned checks this server's signature on a signed JSON object (tests and onbind checks).
func (s *Signer) VerifySigned(data []byte) error {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(data, &obj); err != nil {
		return err
	}
	if _, ok := obj["signatures"]; !ok {
		return errors.New("not signed")
	}
	k := s.current()
	return verifyJSON(s.ServerName, string(k.ID), string(k.Pub), data)
}

// LoadPepper returns the lookup pepper, generating and persisting it on first start.
func LoadPepper(ctx context.Context, store Store) (string, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate pepper: %w", err)
	}
	fresh := base64.RawURLEncoding.EncodeToString(b)
	pepper, err := store.SetSettingIfAbsent(ctx, SettingPepper, fresh)
	if err != nil {
		return "", fmt.Errorf("store pepper: %w", err)
	}
	// Bindings made before folded lookup hashes existed get them once.
	if _, err := store.GetSetting(ctx, settingFoldedHashes); errors.Is(err, ErrNotFound) {
		if err := store.RehashBindings(ctx, pepper, hashesWith(pepper)); err != nil {
			return "", fmt.Errorf("add folded lookup hashes: %w", err)
		}
		if err := store.SetSetting(ctx, settingFoldedHashes, "1"); err != nil {
			return "", fmt.Errorf("add folded lookup hashes: %w", err)
		}
	} else if err != nil {
		return "", fmt.Errorf("read settings: %w", err)
	}
	return pepper, nil
}

// hashesWith computes a 3PID's exact and folded lookup hashes under pepper.
func hashesWith(pepper string) func(threepid.ThreePID) ([]string, []string) {
	return func(tp threepid.ThreePID) ([]string, []string) {
		return threepid.LookupHashes(tp, pepper), threepid.FoldedLookupHashes(tp, pepper)
	}
}
