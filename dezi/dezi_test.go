package dezi_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/ozo-platform/ozo-identity/dezi"
	"github.com/ozo-platform/ozo-identity/dezi/dezitest"
	"github.com/ozo-platform/ozo-identity/sso"
)

const deziBase = "https://is.test/_ozo/v1/sso/dezi"

// Realistic register entries: a GP and a nurse, each for their care provider (URA).
var (
	huisarts = dezitest.Professional{DeziNummer: "900000009", Voorletters: "B.B.", Voorvoegsel: "van der", Achternaam: "Jansen",
		AbonneeNummer: "87654321", AbonneeNaam: "Huisartsenpraktijk De Linde", RolCode: "01.015", LoA: dezi.LoAHigh}
	verpleegkundige = dezitest.Professional{DeziNummer: "900000017", Voorletters: "A.", Achternaam: "de Vries",
		AbonneeNummer: "17004512", AbonneeNaam: "Thuiszorg Oost", RolCode: "30.000", LoA: dezi.LoASubstantial}
)

type deziFixture struct {
	dezi *dezitest.Server
	conn sso.RedirectConnector
}

func rpKeyFile(t *testing.T) (*rsa.PrivateKey, string) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	path := filepath.Join(t.TempDir(), "rp.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return key, path
}

func setupDezi(t *testing.T, encrypted bool, edit func(*dezi.Config)) deziFixture {
	t.Helper()
	key, path := rpKeyFile(t)
	var pub *rsa.PublicKey
	if encrypted {
		pub = &key.PublicKey
	}
	s := dezitest.New(t, "ozo-identity", "geheim", deziBase+"/callback", pub, huisarts, verpleegkundige)
	cfg := dezi.Config{Issuer: s.Issuer, ClientID: "ozo-identity", ClientSecret: "geheim", DecryptionKeyFile: path,
		JKUAllowList: []string{s.Server.URL + "/verklaring/"}}
	if edit != nil {
		edit(&cfg)
	}
	c, err := cfg.Open(context.Background(), "dezi", sso.Env{BaseURL: deziBase, HTTPClient: s.Server.Client(), Replay: sso.NewMemoryStore()})
	if err != nil {
		t.Fatal(err)
	}
	return deziFixture{dezi: s, conn: c.(sso.RedirectConnector)}
}

func (f deziFixture) login(t *testing.T, deziNummer string) (sso.Identity, error) {
	t.Helper()
	flow := newFlow("dezi")
	u, err := f.conn.LoginURL(context.Background(), flow)
	if err != nil {
		t.Fatal(err)
	}
	cb := f.dezi.Login(t, u, deziNummer)
	return f.conn.HandleCallback(context.Background(), flow, httptest.NewRequest(http.MethodGet, cb.String(), nil))
}

func TestDeziLogin(t *testing.T) {
	f := setupDezi(t, true, nil)
	id, err := f.login(t, huisarts.DeziNummer)
	if err != nil {
		t.Fatal(err)
	}
	if id.IdP != "dezi" || id.Subject == "" || id.Subject == huisarts.DeziNummer || id.UZI != "900000009" ||
		id.URA != "87654321" || id.RoleCode != "01.015" || id.DisplayName != "B.B. van der Jansen" || id.AuthnLevel != dezi.LoAHigh {
		t.Fatalf("identity %+v", id)
	}
	claims, _ := sso.IdP{ID: "dezi", Type: sso.TypeDezi}.Proven(id)
	if len(claims) != 2 || claims[1] != (sso.Claim{Medium: "uzi", Address: "900000009"}) {
		t.Fatalf("claims %v", claims)
	}
}

// TestDeziSignedUserinfo: acceptance environments sign without encrypting; only allowed by configuration.
func TestDeziSignedUserinfo(t *testing.T) {
	f := setupDezi(t, false, func(c *dezi.Config) { c.AllowSignedUserinfo = true })
	if id, err := f.login(t, huisarts.DeziNummer); err != nil || id.UZI != huisarts.DeziNummer {
		t.Fatalf("signed userinfo where allowed: %+v, %v", id, err)
	}
	f = setupDezi(t, false, nil)
	if _, err := f.login(t, huisarts.DeziNummer); !errors.Is(err, dezi.ErrInvalid) {
		t.Fatalf("signed-only userinfo accepted without allow_signed_userinfo: %v", err)
	}
}

func TestDeziHostile(t *testing.T) {
	t.Run("JKUOutsideAllowList", func(t *testing.T) {
		f := setupDezi(t, true, nil)
		for _, jku := range []string{
			f.dezi.EvilJKU(), // same host, another path
			f.dezi.Server.URL + "/verklaring/../evil/jwks.json",
			"https://keys.attacker.example/verklaring/jwks.json",
			"http" + f.dezi.Server.URL[len("https"):] + "/verklaring/jwks.json", // plain http
			f.dezi.JKU() + "?x=1",
		} {
			f.dezi.Misbehave(dezitest.Tamper{JKU: jku})
			if _, err := f.login(t, huisarts.DeziNummer); !errors.Is(err, dezi.ErrJKUNotAllowed) {
				t.Errorf("jku %s: %v", jku, err)
			}
		}
	})
	t.Run("VerklaringForAnotherDeziNummer", func(t *testing.T) {
		f := setupDezi(t, true, nil)
		f.dezi.Misbehave(dezitest.Tamper{DeziNummer: verpleegkundige.DeziNummer})
		if _, err := f.login(t, huisarts.DeziNummer); !errors.Is(err, dezi.ErrMismatch) {
			t.Fatalf("verklaring for another dezi_nummer accepted: %v", err)
		}
	})
	t.Run("LoABelowMinimum", func(t *testing.T) {
		f := setupDezi(t, true, nil)
		if _, err := f.login(t, verpleegkundige.DeziNummer); !errors.Is(err, dezi.ErrLoATooLow) {
			t.Fatalf("substantial accepted with minimum high: %v", err)
		}
		f.dezi.Misbehave(dezitest.Tamper{LoA: "urn:unknown"})
		if _, err := f.login(t, huisarts.DeziNummer); !errors.Is(err, dezi.ErrLoATooLow) {
			t.Fatalf("unknown level accepted: %v", err)
		}
		f = setupDezi(t, true, func(c *dezi.Config) { c.MinLoA = dezi.LoASubstantial })
		if _, err := f.login(t, verpleegkundige.DeziNummer); err != nil {
			t.Fatalf("substantial refused with minimum substantial: %v", err)
		}
	})
	t.Run("ExpiredVerklaring", func(t *testing.T) {
		f := setupDezi(t, true, nil)
		f.dezi.Misbehave(dezitest.Tamper{Expired: true})
		if _, err := f.login(t, huisarts.DeziNummer); !errors.Is(err, dezi.ErrInvalid) {
			t.Fatalf("expired verklaring accepted: %v", err)
		}
	})
}

func TestDeziConfig(t *testing.T) {
	ctx := context.Background()
	for name, cfg := range map[string]dezi.Config{
		"no allow-list":     {Issuer: "https://dezi.test", ClientID: "c", AllowSignedUserinfo: true},
		"http allow-list":   {Issuer: "https://dezi.test", ClientID: "c", AllowSignedUserinfo: true, JKUAllowList: []string{"http://dezi.test/"}},
		"no decryption key": {Issuer: "https://dezi.test", ClientID: "c", JKUAllowList: []string{"https://dezi.test/"}},
		"unknown level":     {Issuer: "https://dezi.test", ClientID: "c", AllowSignedUserinfo: true, JKUAllowList: []string{"https://dezi.test/"}, MinLoA: "high"},
	} {
		if _, err := cfg.Open(ctx, "dezi", sso.Env{BaseURL: deziBase, Replay: sso.NewMemoryStore()}); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
