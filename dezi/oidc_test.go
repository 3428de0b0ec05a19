package dezi_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jws"
	"golang.org/x/oauth2"

	"github.com/ozo-platform/ozo-identity/dezi"
	"github.com/ozo-platform/ozo-identity/dezi/oidctest"
	"github.com/ozo-platform/ozo-identity/sso"
)

const rpBase = "https://is.test/_ozo/v1/sso/zkh"

type oidcFixture struct {
	op    *oidctest.OP
	conn  sso.RedirectConnector
	store *sso.MemoryStore
}

func setupOIDC(t *testing.T) oidcFixture {
	t.Helper()
	op := oidctest.New(t, "ozo-identity", "geheim", rpBase+"/callback",
		oidctest.User{ID: "u-7", Username: "jan", Password: "welkom01", FirstName: "Jan", LastName: "Jansen",
			Email: "jan@zkh.nl", EmailVerified: true},
		oidctest.User{ID: "u-8", Username: "piet", Password: "welkom01", FirstName: "Piet", LastName: "Peters",
			Email: "piet@zkh.nl", EmailVerified: false})
	store := sso.NewMemoryStore()
	c, err := dezi.OIDCConfig{Issuer: op.Issuer, ClientID: "ozo-identity", ClientSecret: "geheim"}.
		Open(context.Background(), "zkh", sso.Env{BaseURL: rpBase, HTTPClient: op.Server.Client(), Replay: store})
	if err != nil {
		t.Fatal(err)
	}
	return oidcFixture{op: op, conn: c.(sso.RedirectConnector), store: store}
}

func newFlow(idp string) sso.Flow {
	return sso.Flow{State: rand.Text(), Nonce: rand.Text(), PKCEVerifier: oauth2.GenerateVerifier(), IdP: idp}
}

// callback logs in at the OP and returns the request the browser makes to the callback.
func (f oidcFixture) callback(t *testing.T, flow sso.Flow, user string) *http.Request {
	t.Helper()
	u, err := f.conn.LoginURL(context.Background(), flow)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(u, "code_challenge_method=S256") || !strings.Contains(u, "nonce=") {
		t.Fatalf("login URL lacks PKCE or nonce: %s", u)
	}
	cb := f.op.Login(t, u, user, "welkom01")
	return httptest.NewRequest(http.MethodGet, cb.String(), nil)
}

func TestOIDCLogin(t *testing.T) {
	f := setupOIDC(t)
	flow := newFlow("zkh")
	id, err := f.conn.HandleCallback(context.Background(), flow, f.callback(t, flow, "jan"))
	if err != nil {
		t.Fatal(err)
	}
	if id.IdP != "zkh" || id.Subject != "u-7" || id.Email != "jan@zkh.nl" || id.DisplayName != "Jan Jansen" || id.UZI != "" {
		t.Fatalf("identity %+v", id)
	}
	// An unverified address is not proven.
	flow = newFlow("zkh")
	id, err = f.conn.HandleCallback(context.Background(), flow, f.callback(t, flow, "piet"))
	if err != nil || id.Subject != "u-8" || id.Email != "" {
		t.Fatalf("identity %+v, %v: an unverified email must stay empty", id, err)
	}
}

// resign replaces an ID token's signature with one by key, keeping header kid and claims.
func resign(t *testing.T, idToken string, key *rsa.PrivateKey) string {
	parts := strings.Split(idToken, ".")
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	hdr := jws.NewHeaders()
	hdr.Set("kid", kidOf(t, idToken))
	out, err := jws.Sign(payload, jws.WithKey(jwa.RS256, key, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

func kidOf(t *testing.T, token string) string {
	msg, err := jws.Parse([]byte(token))
	if err != nil {
		t.Fatal(err)
	}
	return msg.Signatures()[0].ProtectedHeaders().KeyID()
}

func TestOIDCHostile(t *testing.T) {
	ctx := context.Background()
	t.Run("SignedByAnotherKey", func(t *testing.T) {
		f := setupOIDC(t)
		other, _ := rsa.GenerateKey(rand.Reader, 2048)
		f.op.TamperIDToken(func(tok string) string { return resign(t, tok, other) })
		flow := newFlow("zkh")
		if _, err := f.conn.HandleCallback(ctx, flow, f.callback(t, flow, "jan")); !errors.Is(err, dezi.ErrInvalid) {
			t.Fatalf("ID token signed by another key accepted: %v", err)
		} else {
			t.Log(err)
		}
	})
	t.Run("AlgNone", func(t *testing.T) {
		f := setupOIDC(t)
		f.op.TamperIDToken(func(tok string) string {
			parts := strings.Split(tok, ".")
			return base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + parts[1] + "."
		})
		flow := newFlow("zkh")
		if _, err := f.conn.HandleCallback(ctx, flow, f.callback(t, flow, "jan")); !errors.Is(err, dezi.ErrInvalid) {
			t.Fatalf("alg none accepted: %v", err)
		} else {
			t.Log(err)
		}
	})
	t.Run("WrongNonce", func(t *testing.T) {
		// The code and token belong to a login with another nonce (an injected code).
		f := setupOIDC(t)
		flow := newFlow("zkh")
		req := f.callback(t, flow, "jan")
		flow.Nonce = "nonce-of-this-browser"
		if _, err := f.conn.HandleCallback(ctx, flow, req); !errors.Is(err, dezi.ErrInvalid) {
			t.Fatalf("wrong nonce accepted: %v", err)
		}
	})
	t.Run("WrongState", func(t *testing.T) {
		f := setupOIDC(t)
		flow := newFlow("zkh")
		req := f.callback(t, flow, "jan")
		flow.State = "another-state"
		if _, err := f.conn.HandleCallback(ctx, flow, req); !errors.Is(err, dezi.ErrInvalid) {
			t.Fatalf("callback for another state accepted: %v", err)
		}
	})
	t.Run("ReusedState", func(t *testing.T) {
		// The flow is taken once from the state store; the second callback with the same state finds nothing.
		f := setupOIDC(t)
		flow := newFlow("zkh")
		flow.ExpiresAt = timeIn(t)
		if err := f.store.PutFlow(ctx, flow); err != nil {
			t.Fatal(err)
		}
		req := f.callback(t, flow, "jan")
		got, err := f.store.TakeFlow(ctx, req.URL.Query().Get("state"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.conn.HandleCallback(ctx, got, req); err != nil {
			t.Fatal(err)
		}
		if _, err := f.store.TakeFlow(ctx, req.URL.Query().Get("state")); !errors.Is(err, sso.ErrNotFound) {
			t.Fatalf("state reused: %v", err)
		}
	})
	t.Run("WrongPKCEVerifier", func(t *testing.T) {
		f := setupOIDC(t)
		flow := newFlow("zkh")
		req := f.callback(t, flow, "jan")
		flow.PKCEVerifier = oauth2.GenerateVerifier()
		if _, err := f.conn.HandleCallback(ctx, flow, req); !errors.Is(err, dezi.ErrInvalid) {
			t.Fatalf("code redeemed with another verifier: %v", err)
		}
	})
	t.Run("CodeReplayed", func(t *testing.T) {
		f := setupOIDC(t)
		flow := newFlow("zkh")
		req := f.callback(t, flow, "jan")
		if _, err := f.conn.HandleCallback(ctx, flow, req); err != nil {
			t.Fatal(err)
		}
		if _, err := f.conn.HandleCallback(ctx, flow, req); err == nil {
			t.Fatal("the same code worked twice")
		}
	})
	t.Run("IdPError", func(t *testing.T) {
		f := setupOIDC(t)
		flow := newFlow("zkh")
		req := httptest.NewRequest(http.MethodGet, rpBase+"/callback?error=access_denied&state="+flow.State, nil)
		if _, err := f.conn.HandleCallback(ctx, flow, req); !errors.Is(err, dezi.ErrIdP) {
			t.Fatalf("IdP error: %v", err)
		}
	})
}

func timeIn(t *testing.T) time.Time { return time.Now().Add(5 * time.Minute) }
