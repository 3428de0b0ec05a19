package dezi

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwe"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"
	"github.com/lestrrat-go/jwx/v2/jwt"
	"golang.org/x/oauth2"

	"github.com/ozo-platform/ozo-identity/sso"
)

// Levels of assurance Dezi asserts in loa_dezi (eIDAS), lowest first.
const (
	LoALow         = "http://eidas.europa.eu/LoA/low"
	LoASubstantial = "http://eidas.europa.eu/LoA/substantial"
	LoAHigh        = "http://eidas.europa.eu/LoA/high"
)

var loaRank = map[string]int{LoALow: 1, LoASubstantial: 2, LoAHigh: 3}

// Config is a Dezi login (see doc.go for the protocol relied on).
type Config struct {
	Issuer       string
	ClientID     string
	ClientSecret string
	// Scopes beyond "openid"; Dezi's own scopes, if any, go here.
	Scopes []string
	// DecryptionKeyFile is this relying party's private key (PEM, RSA or EC) that the userinfo
	// JWE is encrypted to.
	DecryptionKeyFile string
	// AllowSignedUserinfo accepts a userinfo that is only signed (JWS), as Dezi's acceptance
	// environments send it; production sends JWE.
	AllowSignedUserinfo bool
	// JKUAllowList are the URLs (or URL prefixes ending in "/") a verklaring's jku may name; its
	// keys are fetched only from there.
	JKUAllowList []string
	// MinLoA is the lowest loa_dezi accepted; empty means LoAHigh.
	MinLoA string
}

// Errors a Dezi login can end with, besides ErrInvalid, ErrIdP and ErrReplayed.
var (
	ErrJKUNotAllowed = errors.New("dezi: verklaring keys from a jku that is not allowed")
	ErrLoATooLow     = errors.New("dezi: level of assurance below the minimum")
	ErrMismatch      = errors.New("dezi: verklaring is about another person than the userinfo")
)

// Connector is a sso.RedirectConnector for Dezi.
type Connector struct {
	*OIDCConnector
	cfg      Config
	decrypt  crypto.PrivateKey
	jkus     []*url.URL
	minLoA   int
	opKeys   *keyCache
	jkuKeys  *keyCache
	jwksURI  string
	clockNow func() time.Time
}

// Open discovers Dezi and loads the decryption key.
func (c Config) Open(ctx context.Context, id string, env sso.Env) (any, error) {
	min := c.MinLoA
	if min == "" {
		min = LoAHigh
	}
	if loaRank[min] == 0 {
		return nil, fmt.Errorf("dezi %s: min_loa %q is not an eIDAS level (%s, %s, %s)", id, min, LoALow, LoASubstantial, LoAHigh)
	}
	if len(c.JKUAllowList) == 0 {
		return nil, fmt.Errorf("dezi %s: jku_allow_list is required", id)
	}
	var jkus []*url.URL
	for _, s := range c.JKUAllowList {
		u, err := url.Parse(s)
		if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
			return nil, fmt.Errorf("dezi %s: jku_allow_list entry %q must be an https URL without query", id, s)
		}
		jkus = append(jkus, u)
	}
	var key crypto.PrivateKey
	switch {
	case c.DecryptionKeyFile != "":
		k, err := loadKey(c.DecryptionKeyFile)
		if err != nil {
			return nil, fmt.Errorf("dezi %s: decryption_key_file: %w", id, err)
		}
		key = k
	case !c.AllowSignedUserinfo:
		return nil, fmt.Errorf("dezi %s: decryption_key_file is required (allow_signed_userinfo only for acceptance environments)", id)
	}
	scopes := c.Scopes
	if len(scopes) == 0 {
		scopes = []string{"profile"}
	}
	oc, err := OIDCConfig{Issuer: c.Issuer, ClientID: c.ClientID, ClientSecret: c.ClientSecret, Scopes: scopes}.open(ctx, id, env)
	if err != nil {
		return nil, err
	}
	var disc struct {
		JWKSURI string `json:"jwks_uri"`
	}
	if err := oc.provider.Claims(&disc); err != nil || disc.JWKSURI == "" {
		return nil, fmt.Errorf("dezi %s: discovery names no jwks_uri", id)
	}
	return &Connector{OIDCConnector: oc, cfg: c, decrypt: key, jkus: jkus, minLoA: loaRank[min],
		opKeys: newKeyCache(oc.client), jkuKeys: newKeyCache(oc.client), jwksURI: disc.JWKSURI, clockNow: time.Now}, nil
}

func loadKey(path string) (crypto.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	if k, err := x509.ParsePKCS8PrivateKey(block.Bytes); err == nil {
		return k, nil
	}
	if k, err := x509.ParsePKCS1PrivateKey(block.Bytes); err == nil {
		return k, nil
	}
	return x509.ParseECPrivateKey(block.Bytes)
}

// HandleCallback implements sso.RedirectConnector: the OIDC exchange, then the userinfo and its verklaring.
func (c *Connector) HandleCallback(ctx context.Context, f sso.Flow, r *http.Request) (sso.Identity, error) {
	claims, tok, err := c.exchange(ctx, f, r)
	if err != nil {
		return sso.Identity{}, err
	}
	sub, _ := claims["sub"].(string)
	ui, err := c.userinfo(ctx, tok)
	if err != nil {
		return sso.Identity{}, err
	}
	if ui.Sub != sub {
		return sso.Identity{}, fmt.Errorf("%w: userinfo is about another subject", ErrInvalid)
	}
	v, err := c.verklaring(ctx, ui.Verklaring)
	if err != nil {
		return sso.Identity{}, err
	}
	if ui.DeziNummer == "" || v.DeziNummer != ui.DeziNummer {
		// The numbers stay out of the error: it is logged.
		return sso.Identity{}, fmt.Errorf("%w: the verklaring's dezi_nummer differs from the userinfo's", ErrMismatch)
	}
	if loaRank[v.LoA] < c.minLoA {
		return sso.Identity{}, fmt.Errorf("%w: %q", ErrLoATooLow, v.LoA)
	}
	name := strings.Join(slices.DeleteFunc([]string{v.Voorletters, v.Voorvoegsel, v.Achternaam}, func(s string) bool { return s == "" }), " ")
	return sso.Identity{IdP: c.id, Subject: sub, UZI: v.DeziNummer, URA: v.AbonneeNummer, RoleCode: v.RolCode,
		DisplayName: name, AuthnLevel: v.LoA, AuthenticatedAt: v.IssuedAt}, nil
}

// Userinfo is the userinfo Dezi answers, once decrypted and verified.
type Userinfo struct {
	Sub        string `json:"sub"`
	DeziNummer string `json:"dezi_nummer"`
	Verklaring string `json:"verklaring"`
}

// maxBody bounds what is read from Dezi and from a jku.
const maxBody = 1 << 20

// userinfo fetches the userinfo: a JWE (nested JWS) in production, a JWS where allowed; the
// JWS is signed by Dezi's OP keys.
func (c *Connector) userinfo(ctx context.Context, tok *oauth2.Token) (Userinfo, error) {
	ep := c.provider.UserInfoEndpoint()
	if ep == "" {
		return Userinfo{}, fmt.Errorf("dezi %s: discovery names no userinfo endpoint", c.id)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, ep, nil)
	if err != nil {
		return Userinfo{}, err
	}
	tok.SetAuthHeader(req)
	req.Header.Set("Accept", "application/jwt")
	resp, err := c.client.Do(req)
	if err != nil {
		return Userinfo{}, fmt.Errorf("dezi %s: userinfo: %w", c.id, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return Userinfo{}, fmt.Errorf("dezi %s: userinfo: %w", c.id, err)
	}
	if resp.StatusCode != http.StatusOK {
		return Userinfo{}, fmt.Errorf("%w: userinfo: %s", ErrInvalid, resp.Status)
	}
	body = bytes.TrimSpace(body)
	switch n := bytes.Count(body, []byte(".")); {
	case n == 4:
		if c.decrypt == nil {
			return Userinfo{}, fmt.Errorf("%w: encrypted userinfo but no decryption key", ErrInvalid)
		}
		if body, err = c.decryptJWE(body); err != nil {
			return Userinfo{}, err
		}
	case n == 2 && c.cfg.AllowSignedUserinfo:
	default:
		return Userinfo{}, fmt.Errorf("%w: userinfo is not a JWE (only allow_signed_userinfo accepts a JWS)", ErrInvalid)
	}
	set, err := c.opKeys.get(ctx, c.jwksURI)
	if err != nil {
		return Userinfo{}, fmt.Errorf("dezi %s: OP keys: %w", c.id, err)
	}
	t, err := c.parseSigned(body, set)
	if err != nil {
		return Userinfo{}, fmt.Errorf("%w: userinfo signature: %v", ErrInvalid, err)
	}
	if t.Issuer() != c.cfg.Issuer {
		return Userinfo{}, fmt.Errorf("%w: userinfo issuer %q", ErrInvalid, t.Issuer())
	}
	if aud := t.Audience(); len(aud) > 0 && !slices.Contains(aud, c.cfg.ClientID) {
		return Userinfo{}, fmt.Errorf("%w: userinfo audience %v", ErrInvalid, aud)
	}
	var ui Userinfo
	raw, _ := t.AsMap(ctx)
	b, _ := json.Marshal(raw)
	if err := json.Unmarshal(b, &ui); err != nil {
		return Userinfo{}, fmt.Errorf("%w: userinfo claims: %v", ErrInvalid, err)
	}
	return ui, nil
}

var jweAlgs = map[jwa.KeyEncryptionAlgorithm]bool{jwa.RSA_OAEP: true, jwa.RSA_OAEP_256: true,
	jwa.ECDH_ES: true, jwa.ECDH_ES_A128KW: true, jwa.ECDH_ES_A256KW: true}

func (c *Connector) decryptJWE(body []byte) ([]byte, error) {
	msg, err := jwe.Parse(body)
	if err != nil {
		return nil, fmt.Errorf("%w: userinfo JWE: %v", ErrInvalid, err)
	}
	alg := msg.ProtectedHeaders().Algorithm()
	if !jweAlgs[alg] {
		return nil, fmt.Errorf("%w: userinfo JWE algorithm %q", ErrInvalid, alg)
	}
	switch c.decrypt.(type) {
	case *rsa.PrivateKey:
		if !strings.HasPrefix(alg.String(), "RSA") {
			return nil, fmt.Errorf("%w: userinfo JWE algorithm %q for an RSA key", ErrInvalid, alg)
		}
	case *ecdsa.PrivateKey:
		if !strings.HasPrefix(alg.String(), "ECDH") {
			return nil, fmt.Errorf("%w: userinfo JWE algorithm %q for an EC key", ErrInvalid, alg)
		}
	}
	plain, err := jwe.Decrypt(body, jwe.WithKey(alg, c.decrypt))
	if err != nil {
		return nil, fmt.Errorf("%w: userinfo JWE: %v", ErrInvalid, err)
	}
	return bytes.TrimSpace(plain), nil
}

// signingAlgs are the signatures accepted on Dezi's tokens: asymmetric only.
var signingAlgs = []jwa.SignatureAlgorithm{jwa.RS256, jwa.RS384, jwa.RS512, jwa.PS256, jwa.PS384, jwa.PS512, jwa.ES256, jwa.ES384}

// parseSigned verifies a compact JWS with a key of set (by kid) and validates its times.
func (c *Connector) parseSigned(token []byte, set jwk.Set) (jwt.Token, error) {
	msg, err := jws.Parse(token)
	if err != nil {
		return nil, err
	}
	if len(msg.Signatures()) != 1 {
		return nil, errors.New("want exactly one signature")
	}
	h := msg.Signatures()[0].ProtectedHeaders()
	if !slices.Contains(signingAlgs, h.Algorithm()) {
		return nil, fmt.Errorf("signature algorithm %q not accepted", h.Algorithm())
	}
	key, ok := set.LookupKeyID(h.KeyID())
	if !ok || h.KeyID() == "" {
		return nil, fmt.Errorf("no key %q", h.KeyID())
	}
	return jwt.Parse(token, jwt.WithKey(h.Algorithm(), key), jwt.WithValidate(true),
		jwt.WithAcceptableSkew(time.Minute), jwt.WithClock(jwt.ClockFunc(c.clockNow)))
}

// Verklaring is the signed statement Dezi makes about a care professional and the care
// provider they act for.
type Verklaring struct {
	DeziNummer    string
	Voorletters   string
	Voorvoegsel   string
	Achternaam    string
	AbonneeNummer string
	AbonneeNaam   string
	RolCode       string
	LoA           string
	IssuedAt      time.Time
}

var (
	nineDigits  = regexp.MustCompile(`^[0-9]{9}$`)
	eightDigits = regexp.MustCompile(`^[0-9]{8}$`)
)

// verklaring verifies the nested JWT against the keys of its jku, which must be allowed.
func (c *Connector) verklaring(ctx context.Context, token string) (Verklaring, error) {
	if token == "" {
		return Verklaring{}, fmt.Errorf("%w: userinfo holds no verklaring", ErrInvalid)
	}
	msg, err := jws.Parse([]byte(token))
	if err != nil || len(msg.Signatures()) != 1 {
		return Verklaring{}, fmt.Errorf("%w: verklaring is not a JWS: %v", ErrInvalid, err)
	}
	jku := msg.Signatures()[0].ProtectedHeaders().JWKSetURL()
	if !c.allowedJKU(jku) {
		return Verklaring{}, fmt.Errorf("%w: %q", ErrJKUNotAllowed, jku)
	}
	set, err := c.jkuKeys.get(ctx, jku)
	if err != nil {
		return Verklaring{}, fmt.Errorf("dezi %s: verklaring keys: %w", c.id, err)
	}
	t, err := c.parseSigned([]byte(token), set)
	if err != nil {
		return Verklaring{}, fmt.Errorf("%w: verklaring: %v", ErrInvalid, err)
	}
	if t.Expiration().IsZero() {
		return Verklaring{}, fmt.Errorf("%w: verklaring without exp", ErrInvalid)
	}
	if aud := t.Audience(); len(aud) > 0 && !slices.Contains(aud, c.cfg.ClientID) {
		return Verklaring{}, fmt.Errorf("%w: verklaring audience %v", ErrInvalid, aud)
	}
	str := func(name string) string {
		v, _ := t.Get(name)
		s, _ := v.(string)
		return strings.TrimSpace(s)
	}
	v := Verklaring{DeziNummer: str("dezi_nummer"), Voorletters: str("voorletters"), Voorvoegsel: str("voorvoegsel"),
		Achternaam: str("achternaam"), AbonneeNummer: str("abonnee_nummer"), AbonneeNaam: str("abonnee_naam"),
		RolCode: str("rol_code"), LoA: str("loa_dezi"), IssuedAt: t.IssuedAt()}
	if !nineDigits.MatchString(v.DeziNummer) {
		return Verklaring{}, fmt.Errorf("%w: dezi_nummer is not 9 digits", ErrInvalid)
	}
	if v.AbonneeNummer != "" && !eightDigits.MatchString(v.AbonneeNummer) {
		return Verklaring{}, fmt.Errorf("%w: abonnee_nummer %q is not a URA", ErrInvalid, v.AbonneeNummer)
	}
	jti := t.JwtID()
	if jti == "" {
		return Verklaring{}, fmt.Errorf("%w: verklaring without jti", ErrInvalid)
	}
	if first, err := c.replay.FirstUse(ctx, "dezi:"+c.id+":"+jti, t.Expiration().Add(time.Minute)); err != nil {
		return Verklaring{}, fmt.Errorf("dezi %s: replay cache: %w", c.id, err)
	} else if !first {
		return Verklaring{}, fmt.Errorf("%w: verklaring %s", ErrReplayed, jti)
	}
	return v, nil
}

// allowedJKU: same scheme and host as an allow-list entry, and its path exactly or below it
// when the entry ends in "/".
func (c *Connector) allowedJKU(jku string) bool {
	u, err := url.Parse(jku)
	if err != nil || u.Scheme != "https" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || strings.Contains(u.Path, "..") {
		return false
	}
	for _, a := range c.jkus {
		if a.Scheme != u.Scheme || !strings.EqualFold(a.Host, u.Host) {
			continue
		}
		if u.Path == a.Path || strings.HasSuffix(a.Path, "/") && strings.HasPrefix(u.Path, a.Path) {
			return true
		}
	}
	return false
}

// keyCache fetches JWK sets and keeps them for keyCacheTTL.
type keyCache struct {
	client *http.Client
	mu     sync.Mutex
	sets   map[string]cachedSet
}

type cachedSet struct {
	set     jwk.Set
	fetched time.Time
}

const keyCacheTTL = 10 * time.Minute

func newKeyCache(client *http.Client) *keyCache {
	return &keyCache{client: client, sets: map[string]cachedSet{}}
}

func (k *keyCache) get(ctx context.Context, u string) (jwk.Set, error) {
	k.mu.Lock()
	cs, ok := k.sets[u]
	k.mu.Unlock()
	if ok && time.Since(cs.fetched) < keyCacheTTL {
		return cs.set, nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := k.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return nil, err
	}
	set, err := jwk.Parse(body)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", u, err)
	}
	k.mu.Lock()
	k.sets[u] = cachedSet{set: set, fetched: time.Now()}
	k.mu.Unlock()
	return set, nil
}
