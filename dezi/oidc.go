package dezi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"

	"github.com/ozo-platform/ozo-identity/sso"
)

// OIDCConfig is a care provider's OpenID Provider (authorization code flow, PKCE S256, state and nonce).
type OIDCConfig struct {
	Issuer       string
	ClientID     string
	ClientSecret string
	// Scopes beyond "openid"; empty means profile and email.
	Scopes []string
	Claims Claims
}

// Claims names the claims identity fields come from (ID token first, then userinfo).
type Claims struct {
	// Subject: empty means "sub".
	Subject string
	// UZI: the claim holding a UZI number; empty means none is read.
	UZI string
	// Email and EmailVerified: empty mean "email" and "email_verified"; an address counts only
	// when the verified claim is true.
	Email         string
	EmailVerified string
	// DisplayName: empty means "name".
	DisplayName string
}

// Errors a login can end with; each wraps the detail.
var (
	ErrInvalid  = errors.New("oidc: login refused")
	ErrIdP      = fmt.Errorf("oidc: %w", sso.ErrIdPReported)
	ErrReplayed = errors.New("oidc: token used before")
)

// OIDCConnector is a sso.RedirectConnector for one OpenID Provider.
type OIDCConnector struct {
	id       string
	cfg      OIDCConfig
	oauth    oauth2.Config
	provider *oidc.Provider
	verifier *oidc.IDTokenVerifier
	client   *http.Client
	replay   sso.ReplayCache
	log      *slog.Logger
}

// Open discovers the provider and builds the connector; the redirect URI is env.BaseURL+"/callback".
func (c OIDCConfig) Open(ctx context.Context, id string, env sso.Env) (any, error) {
	return c.open(ctx, id, env)
}

func (c OIDCConfig) open(ctx context.Context, id string, env sso.Env) (*OIDCConnector, error) {
	if c.Issuer == "" || c.ClientID == "" {
		return nil, fmt.Errorf("oidc %s: issuer and client_id are required", id)
	}
	if env.Replay == nil {
		return nil, fmt.Errorf("oidc %s: a replay cache is required", id)
	}
	client := env.HTTPClient
	if client == nil {
		client = http.DefaultClient
	}
	// The provider keeps this context for fetching its keys later, so it must outlive ctx.
	pctx := oidc.ClientContext(context.WithoutCancel(ctx), client)
	provider, err := oidc.NewProvider(pctx, c.Issuer)
	if err != nil {
		return nil, fmt.Errorf("oidc %s: discovery: %w", id, err)
	}
	scopes := append([]string{oidc.ScopeOpenID}, c.Scopes...)
	if len(c.Scopes) == 0 {
		scopes = append(scopes, "profile", "email")
	}
	log := env.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &OIDCConnector{
		id:  id,
		cfg: c,
		oauth: oauth2.Config{ClientID: c.ClientID, ClientSecret: c.ClientSecret, Endpoint: provider.Endpoint(),
			RedirectURL: strings.TrimRight(env.BaseURL, "/") + "/callback", Scopes: scopes},
		provider: provider,
		// Only asymmetric signatures the provider announces; "none" and HMAC never verify.
		verifier: provider.Verifier(&oidc.Config{ClientID: c.ClientID}),
		client:   client,
		replay:   env.Replay,
		log:      log,
	}, nil
}

// LoginURL implements sso.RedirectConnector.
func (c *OIDCConnector) LoginURL(_ context.Context, f sso.Flow) (string, error) {
	if f.State == "" || f.Nonce == "" || f.PKCEVerifier == "" {
		return "", fmt.Errorf("oidc %s: a login needs state, nonce and a PKCE verifier", c.id)
	}
	return c.oauth.AuthCodeURL(f.State, oidc.Nonce(f.Nonce), oauth2.S256ChallengeOption(f.PKCEVerifier)), nil
}

// HandleCallback implements sso.RedirectConnector.
func (c *OIDCConnector) HandleCallback(ctx context.Context, f sso.Flow, r *http.Request) (sso.Identity, error) {
	claims, tok, err := c.exchange(ctx, f, r)
	if err != nil {
		return sso.Identity{}, err
	}
	if ep := c.provider.UserInfoEndpoint(); ep != "" {
		ui, err := c.provider.UserInfo(oidc.ClientContext(ctx, c.client), oauth2.StaticTokenSource(tok))
		if err != nil {
			return sso.Identity{}, fmt.Errorf("oidc %s: userinfo: %w", c.id, err)
		}
		var extra map[string]any
		if err := ui.Claims(&extra); err != nil {
			return sso.Identity{}, fmt.Errorf("oidc %s: userinfo: %w", c.id, err)
		}
		// OIDC Core 5.3.2: userinfo of another subject must not be used.
		if extra["sub"] != claims["sub"] {
			return sso.Identity{}, fmt.Errorf("%w: userinfo is about another subject", ErrInvalid)
		}
		for k, v := range extra {
			if _, ok := claims[k]; !ok {
				claims[k] = v
			}
		}
	}
	return c.identity(claims)
}

// exchange checks the callback against the flow, redeems the code with the PKCE verifier and
// verifies the ID token: signature by the provider's keys, issuer, audience, expiry, nonce, once.
func (c *OIDCConnector) exchange(ctx context.Context, f sso.Flow, r *http.Request) (map[string]any, *oauth2.Token, error) {
	q := r.URL.Query()
	if e := q.Get("error"); e != "" {
		return nil, nil, fmt.Errorf("%w: %s: %s", ErrIdP, e, q.Get("error_description"))
	}
	if q.Get("state") == "" || q.Get("state") != f.State {
		return nil, nil, fmt.Errorf("%w: state does not match this login", ErrInvalid)
	}
	code := q.Get("code")
	if code == "" {
		return nil, nil, fmt.Errorf("%w: no authorization code", ErrInvalid)
	}
	tok, err := c.oauth.Exchange(oidc.ClientContext(ctx, c.client), code, oauth2.VerifierOption(f.PKCEVerifier))
	if err != nil {
		return nil, nil, fmt.Errorf("%w: token request: %v", ErrInvalid, err)
	}
	raw, ok := tok.Extra("id_token").(string)
	if !ok || raw == "" {
		return nil, nil, fmt.Errorf("%w: no ID token", ErrInvalid)
	}
	idt, err := c.verifier.Verify(ctx, raw)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: ID token: %v", ErrInvalid, err)
	}
	if idt.Nonce == "" || idt.Nonce != f.Nonce {
		return nil, nil, fmt.Errorf("%w: ID token nonce does not match this login", ErrInvalid)
	}
	var claims map[string]any
	if err := idt.Claims(&claims); err != nil {
		return nil, nil, fmt.Errorf("%w: ID token claims: %v", ErrInvalid, err)
	}
	// The nonce already ties the token to one login; a jti, when present, is refused a second time
	// too, so a token leaked from one replica's logs cannot complete another login.
	if jti, _ := claims["jti"].(string); jti != "" {
		if first, err := c.replay.FirstUse(ctx, "oidc:"+c.id+":"+jti, idt.Expiry.Add(time.Minute)); err != nil {
			return nil, nil, fmt.Errorf("oidc %s: replay cache: %w", c.id, err)
		} else if !first {
			return nil, nil, fmt.Errorf("%w: ID token %s", ErrReplayed, jti)
		}
	}
	return claims, tok, nil
}

func (c *OIDCConnector) identity(claims map[string]any) (sso.Identity, error) {
	or := func(v, def string) string {
		if v == "" {
			return def
		}
		return v
	}
	str := func(name string) string {
		if name == "" {
			return ""
		}
		switch v := claims[name].(type) {
		case string:
			return strings.TrimSpace(v)
		case json.Number:
			return v.String()
		case float64:
			return fmt.Sprintf("%.0f", v)
		}
		return ""
	}
	cl := c.cfg.Claims
	id := sso.Identity{IdP: c.id, Subject: str(or(cl.Subject, "sub")), UZI: str(cl.UZI), DisplayName: str(or(cl.DisplayName, "name"))}
	if id.Subject == "" {
		return sso.Identity{}, fmt.Errorf("%w: no subject claim", ErrInvalid)
	}
	if v, _ := claims[or(cl.EmailVerified, "email_verified")].(bool); v {
		id.Email = str(or(cl.Email, "email"))
	}
	id.AuthnLevel, _ = claims["acr"].(string)
	if at, ok := claims["auth_time"].(float64); ok {
		id.AuthenticatedAt = time.Unix(int64(at), 0)
	}
	return id, nil
}
