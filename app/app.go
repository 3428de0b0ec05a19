// Package app assembles ozo-identity from its configuration: storage, keys, mail, homeserver
// client, identity service and HTTP API. The binary and the end-to-end tests both start it here.
package app

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ozo-platform/ozo-identity/api"
	"github.com/ozo-platform/ozo-identity/config"
	"github.com/ozo-platform/ozo-identity/email"
	"github.com/ozo-platform/ozo-identity/homeserver"
	"github.com/ozo-platform/ozo-identity/identity"
	"github.com/ozo-platform/ozo-identity/ratelimit"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
)

// App is a configured, migrated ozo-identity.
type App struct {
	Config  config.Config
	DB      *sqlstore.DB
	Store   *sqlstore.Store
	Service *identity.Service
	API     *api.Server
	Metrics *api.Metrics
	HS      *homeserver.Client
	log     *slog.Logger
}

// New opens and migrates the database and builds every component. Nothing listens yet.
func New(ctx context.Context, cfg config.Config, log *slog.Logger) (*App, error) {
	db, err := sqlstore.Open(ctx, cfg.Database.URL, cfg.DataDir)
	if err != nil {
		return nil, err
	}
	a, err := build(ctx, cfg, db, log)
	if err != nil {
		db.Close()
		return nil, err
	}
	return a, nil
}

func build(ctx context.Context, cfg config.Config, db *sqlstore.DB, log *slog.Logger) (*App, error) {
	if err := db.Migrate(ctx, log); err != nil {
		return nil, err
	}
	store := sqlstore.New(db)
	signer, err := identity.LoadSigner(ctx, store, cfg.ServerName, cfg.SigningKeyFile)
	if err != nil {
		return nil, err
	}
	pepper, err := identity.LoadPepper(ctx, store)
	if err != nil {
		return nil, err
	}
	smtpTLS, err := tlsWithCA(cfg.Email.SMTP.CAFile)
	if err != nil {
		return nil, fmt.Errorf("email.smtp.ca_file: %w", err)
	}
	templates := map[email.Kind]string{}
	for k, v := range cfg.Email.Templates {
		templates[email.Kind(k)] = v
	}
	mailer, err := email.New(email.Config{
		Host: cfg.Email.SMTP.Host, Port: cfg.Email.SMTP.Port, Security: cfg.Email.SMTP.Security,
		Username: cfg.Email.SMTP.Username, Password: cfg.Email.SMTP.Password, From: cfg.Email.From,
		Templates: templates, WebClientLocation: cfg.Invites.WebClientLocation,
		PublicBaseURL: v1BaseURL(cfg), TLSConfig: smtpTLS,
	}, log.With("component", "email"))
	if err != nil {
		return nil, fmt.Errorf("email: %w", err)
	}
	allowed, _ := config.ParsePrefixes(cfg.Homeservers.AllowedNetworks)
	hsTLS, err := tlsWithCA(cfg.Homeservers.CAFile)
	if err != nil {
		return nil, fmt.Errorf("homeservers.ca_file: %w", err)
	}
	hs := homeserver.New(homeserver.Options{AllowedNetworks: allowed, TLSConfig: hsTLS, Timeout: cfg.Homeservers.Timeout,
		ServerName: cfg.ServerName}, log.With("component", "homeserver"))
	policies := map[string]identity.Policy{}
	for name, p := range cfg.Terms.Policies {
		docs := map[string]identity.PolicyDocument{}
		for lang, l := range p.Languages {
			docs[lang] = identity.PolicyDocument{Name: l.Name, URL: l.URL}
		}
		policies[name] = identity.Policy{Version: p.Version, Languages: docs}
	}
	svc := identity.New(store, signer, pepper, mailer, nil, identity.Options{
		PublicBaseURL:     cfg.PublicBaseURL,
		SessionLifetime:   cfg.Validation.SessionLifetime,
		TokenLifetime:     cfg.Validation.TokenLifetime,
		MaxFailedAttempts: cfg.Validation.MaxFailedAttempts,
		InviteLifetime:    cfg.Invites.Lifetime,
		WebClientLocation: cfg.Invites.WebClientLocation,
		OnBindRetryFor:    cfg.Invites.OnBindRetryFor,
		Policies:          policies,
	}, log.With("component", "identity"))
	var page *api.SubmitPage
	if cfg.Validation.SubmitPage != "" {
		if page, err = api.LoadSubmitPage(cfg.Validation.SubmitPage); err != nil {
			return nil, err
		}
	}
	v1Nets, _ := config.ParsePrefixes(cfg.V1.Networks)
	proxies, _ := config.ParsePrefixes(cfg.HTTP.TrustedProxies)
	var limiter ratelimit.Limiter = ratelimit.NewMemory()
	if cfg.Redis.URL != "" {
		opts, err := redis.ParseURL(cfg.Redis.URL)
		if err != nil {
			return nil, fmt.Errorf("redis.url: %w", err)
		}
		limiter = ratelimit.NewRedis(redis.NewClient(opts), "ozo-identity:rl:")
	}
	metrics := api.NewMetrics()
	srv := api.New(svc, hs, api.Config{
		PublicBaseURL:     cfg.PublicBaseURL,
		MaxBodyBytes:      cfg.HTTP.MaxBodyBytes,
		MaxLookupBatch:    cfg.Lookup.MaxBatch,
		CORSOrigins:       cfg.HTTP.CORSOrigins,
		TrustedProxies:    proxies,
		AllowedHomeserver: cfg.Homeservers.Allowed,
		V1Enabled:         cfg.V1.Enabled,
		V1Networks:        v1Nets,
		AdminToken:        cfg.Admin.Token,
		RateLimits: api.RateLimits{Limiter: limiter, LookupPerAccount: cfg.RateLimits.LookupPerAccount,
			LookupPerServer: cfg.RateLimits.LookupPerServer, PerClient: cfg.RateLimits.PerClient},
		SubmitPage: page,
	}, metrics, log.With("component", "api"))
	return &App{Config: cfg, DB: db, Store: store, Service: svc, API: srv, Metrics: metrics, HS: hs, log: log}, nil
}

// v1BaseURL gives the mail templates a base for Sydent's v1 sign-ed25519 link, only when v1 is served.
func v1BaseURL(cfg config.Config) string {
	if cfg.V1.Enabled {
		return cfg.PublicBaseURL
	}
	return ""
}

func tlsWithCA(file string) (*tls.Config, error) {
	if file == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errors.New("no certificate found in " + file)
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// RunWorkers runs the background work (onbind delivery, session clean-up) until ctx ends.
func (a *App) RunWorkers(ctx context.Context) {
	go a.Service.DeliverOnBinds(ctx, a.HS, func(err error) bool { return !homeserver.IsRetryable(err) }, 5*time.Second)
	go func() {
		t := time.NewTicker(time.Hour)
		defer t.Stop()
		for {
			if n, err := a.Store.DeleteExpiredSessions(ctx, time.Now().Add(-a.Config.Validation.SessionLifetime)); err != nil && ctx.Err() == nil {
				a.log.Warn("session clean-up", "err", err)
			} else if n > 0 {
				a.log.Info("removed expired validation sessions", "count", n)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
}

// Serve listens on the configured addresses until ctx ends, then shuts down gracefully.
// tlsConfig, when set, serves the public listener over HTTPS.
func (a *App) Serve(ctx context.Context, ln net.Listener, tlsConfig *tls.Config) error {
	a.RunWorkers(ctx)
	srv := &http.Server{Handler: a.API, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
		WriteTimeout: 60 * time.Second, IdleTimeout: 120 * time.Second, MaxHeaderBytes: 32 << 10,
		ErrorLog: slog.NewLogLogger(a.log.Handler(), slog.LevelWarn)}
	var ops *http.Server
	if a.Config.MetricsListen != "" {
		ops = &http.Server{Addr: a.Config.MetricsListen, ReadHeaderTimeout: 5 * time.Second,
			Handler: api.OpsHandler(a.Metrics, func(ctx context.Context) error { return a.DB.PingContext(ctx) })}
		go func() {
			if err := ops.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				a.log.Error("metrics listener", "err", err)
			}
		}()
	}
	errc := make(chan error, 1)
	go func() {
		if tlsConfig != nil {
			errc <- srv.Serve(tls.NewListener(ln, tlsConfig))
		} else {
			errc <- srv.Serve(ln)
		}
	}()
	a.log.Info("ozo-identity listening", "addr", ln.Addr().String(), "server_name", a.Config.ServerName,
		"database", string(a.DB.Engine), "v1", a.Config.V1.Enabled)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if ops != nil {
		ops.Shutdown(shutdown)
	}
	return srv.Shutdown(shutdown)
}

// Close releases the database.
func (a *App) Close() error { return a.DB.Close() }
