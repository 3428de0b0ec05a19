package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/ozo-platform/ozo-identity/audit"
	"github.com/ozo-platform/ozo-identity/config"
	"github.com/ozo-platform/ozo-identity/dezi"
	"github.com/ozo-platform/ozo-identity/homeserver"
	"github.com/ozo-platform/ozo-identity/identity"
	"github.com/ozo-platform/ozo-identity/lookup/mcsd"
	"github.com/ozo-platform/ozo-identity/saml"
	"github.com/ozo-platform/ozo-identity/sso"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
)

// newSSO opens every configured IdP and wires SSO validation into svc; nil without IdPs. An IdP
// that cannot be opened (metadata or discovery unreachable) is left out and logged, so one
// care provider's outage does not stop the service; it is back after the next start.
func newSSO(ctx context.Context, cfg config.Config, svc *identity.Service, store *sqlstore.Store, index *mcsd.Index, refused func(context.Context, audit.Record) error, log *slog.Logger) (*identity.SSO, error) {
	if len(cfg.SSO.IdPs) == 0 {
		return nil, nil
	}
	log = log.With("component", "sso")
	var state sso.StateStore = sso.NewMemoryStore()
	if cfg.Redis.URL != "" {
		opts, err := redis.ParseURL(cfg.Redis.URL)
		if err != nil {
			return nil, fmt.Errorf("redis.url: %w", err)
		}
		// Login state must be shared by replicas: without Redis a login fails rather than
		// landing on a replica that never saw it.
		state = sso.NewRedisStore(redis.NewClient(opts), cfg.Redis.KeyPrefix+"sso:")
	}
	tlsCfg, err := tlsWithCA(cfg.SSO.CAFile)
	if err != nil {
		return nil, fmt.Errorf("sso.ca_file: %w", err)
	}
	client := &http.Client{Timeout: cfg.SSO.Timeout, Transport: &http.Transport{TLSClientConfig: tlsCfg,
		Proxy: http.ProxyFromEnvironment, ForceAttemptHTTP2: true}}
	var idps []sso.IdP
	for _, c := range cfg.SSO.IdPs {
		opener, typ := opener(c)
		env := sso.Env{BaseURL: strings.TrimRight(cfg.PublicBaseURL, "/") + "/_ozo/v1/sso/" + c.ID,
			HTTPClient: client, Replay: state, Log: log.With("idp", c.ID)}
		conn, err := opener.Open(ctx, c.ID, env)
		if err != nil {
			log.Error("identity provider left out", "idp", c.ID, "err", err)
			continue
		}
		name := c.Name
		if name == "" {
			name = c.ID
		}
		idps = append(idps, sso.IdP{ID: c.ID, Name: name, Type: typ, URAs: c.URAs, TrustedForUZI: c.TrustedForUZI,
			Homeserver: c.Homeserver, Connector: conn})
	}
	reg, err := sso.NewRegistry(idps...)
	if err != nil {
		return nil, err
	}
	onboarding, err := onboardingOptions(cfg.SSO.Onboarding, index)
	if err != nil {
		return nil, err
	}
	return identity.NewSSO(svc, store, reg, state, identity.SSOOptions{LoginLifetime: cfg.SSO.LoginLifetime,
		StartsPerAccount: cfg.SSO.StartsPerAccount, AuditRefused: refused, Onboarding: onboarding}, log), nil
}

// onboardingOptions opens the application-service clients of the onboarding homeservers.
func onboardingOptions(o config.Onboarding, index *mcsd.Index) (identity.OnboardingOptions, error) {
	opts := identity.OnboardingOptions{RedirectURIs: o.RedirectURIs, CodeLifetime: o.CodeLifetime,
		StartsPerClient: o.StartsPerClient, Placements: placements{index}}
	for i, h := range o.Homeservers {
		token := h.ASToken
		if token == "" {
			b, err := os.ReadFile(h.ASTokenFile)
			if err != nil {
				return opts, fmt.Errorf("sso.onboarding.homeservers[%d].as_token_file: %w", i, err)
			}
			if token = strings.TrimSpace(string(b)); token == "" {
				return opts, fmt.Errorf("sso.onboarding.homeservers[%d].as_token_file %s is empty", i, h.ASTokenFile)
			}
		}
		tlsCfg, err := tlsWithCA(h.CAFile)
		if err != nil {
			return opts, fmt.Errorf("sso.onboarding.homeservers[%d].ca_file: %w", i, err)
		}
		// The operator's own homeserver, by configured URL: no SSRF guard, as for OZO accounts.
		client := &http.Client{Timeout: homeserver.DefaultTimeout, Transport: &http.Transport{TLSClientConfig: tlsCfg}}
		opts.Homeservers = append(opts.Homeservers, identity.OnboardingHomeserver{ServerName: h.ServerName,
			UserPrefix: h.UserPrefix, Localpart: h.Localpart,
			Accounts: homeserver.NewAppService(h.ClientURL, h.ServerName, token, client)})
	}
	return opts, nil
}

// placements answers onboarding's question from the mCSD index.
type placements struct{ index *mcsd.Index }

func (p placements) PlacedOn(ctx context.Context, uzi string) (string, error) {
	current, _, _, err := p.index.Homeserver(ctx, uzi)
	if errors.Is(err, mcsd.ErrNotFound) {
		return "", nil
	}
	return current, err
}

// opener turns an IdP's configuration into its protocol package's typed configuration.
func opener(c config.IdP) (sso.Opener, string) {
	switch c.Type {
	case sso.TypeSAML:
		a := c.SAML.Attributes
		return saml.Config{MetadataURL: c.SAML.MetadataURL, MetadataFile: c.SAML.MetadataFile, SPKeyFile: c.SAML.SPKeyFile,
			SPCertFile: c.SAML.SPCertFile, EmailVerified: c.SAML.EmailVerified,
			Attributes: saml.Attributes{Subject: a.Subject, UZI: a.UZI, Email: a.Email, DisplayName: a.DisplayName}}, sso.TypeSAML
	case sso.TypeDezi:
		d := c.Dezi
		return dezi.Config{Issuer: d.Issuer, ClientID: d.ClientID, ClientSecret: d.ClientSecret, Scopes: d.Scopes,
			DecryptionKeyFile: d.DecryptionKeyFile, AllowSignedUserinfo: d.AllowSignedUserinfo,
			JKUAllowList: d.JKUAllowList, MinLoA: d.MinLoA}, sso.TypeDezi
	default:
		o, cl := c.OIDC, c.OIDC.Claims
		return dezi.OIDCConfig{Issuer: o.Issuer, ClientID: o.ClientID, ClientSecret: o.ClientSecret, Scopes: o.Scopes,
			Claims: dezi.Claims{Subject: cl.Subject, UZI: cl.UZI, Email: cl.Email, EmailVerified: cl.EmailVerified,
				DisplayName: cl.DisplayName}}, sso.TypeOIDC
	}
}
