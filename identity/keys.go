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
	"strings"

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

// Signer signs JSON objects with the server's long-term Ed25519 key.
type Signer struct {
	ServerName string
	key        *federation.SigningKey
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
	return &Signer{ServerName: serverName, key: key}, nil
}

// KeyID returns the key's identifier, such as ed25519:0.
func (s *Signer) KeyID() string { return string(s.key.ID) }

// Secret derives a 32-byte secret for purpose from the signing key: replicas that share the key
// agree on it, and it changes when the key does.
func (s *Signer) Secret(purpose string) ([]byte, error) {
	return hkdf.Key(sha256.New, s.key.Priv.Seed(), nil, "ozo-identity "+purpose, 32)
}

// PublicKey returns the public key in unpadded standard base64.
func (s *Signer) PublicKey() string { return string(s.key.Pub) }

// SignMessage signs raw bytes (an audit checkpoint) with the long-term key.
func (s *Signer) SignMessage(msg []byte) []byte { return ed25519.Sign(s.key.Priv, msg) }

// Sign adds this server's signature to obj, following the Matrix signing-JSON rules.
func (s *Signer) Sign(obj map[string]any) error {
	return signWith(obj, s.ServerName, s.key)
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
	return verifyJSON(s.ServerName, KeyID, s.PublicKey(), data)
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
