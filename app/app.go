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
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/ozo-platform/ozo-identity/api"
	"github.com/ozo-platform/ozo-identity/api/web"
	"github.com/ozo-platform/ozo-identity/audit"
	"github.com/ozo-platform/ozo-identity/config"
	"github.com/ozo-platform/ozo-identity/email"
	"github.com/ozo-platform/ozo-identity/homeserver"
	"github.com/ozo-platform/ozo-identity/identity"
	"github.com/ozo-platform/ozo-identity/internal/httpguard"
	"github.com/ozo-platform/ozo-identity/lookup"
	"github.com/ozo-platform/ozo-identity/lookup/mcsd"
	"github.com/ozo-platform/ozo-identity/ozoaccount"
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
	Index   *mcsd.Index
	workers sync.WaitGroup
	// redis is the shared rate limiter's client (nil without redis.url); /readyz pings it.
	redis *redis.Client
	// stopping turns /readyz to 503 once SIGTERM came.
	stopping atomic.Bool
	Syncer   *mcsd.Syncer
	// Accounts are the OZO accounts of family caregivers and patients.
	Accounts *ozoaccount.Service
	log      *slog.Logger

	syncerOpts  mcsd.Options // what Syncer was built with, for NewSyncer
	adminSync   *adminSync
	syncMetrics *syncMetrics
	// Chain keys the audit trail; Lookups counts lookups and refused admin calls for it.
	Chain   *audit.Chain
	Lookups *audit.Aggregator
	// Mirror answers lookups and token checks from memory; nil when lookup.memory_index is off
	// and there is no token cache.
	Mirror *identity.Mirror
}

// OpenDatabase opens and migrates the database, for commands that need it without the service.
func OpenDatabase(ctx context.Context, cfg config.Config, log *slog.Logger) (*sqlstore.DB, error) {
	db, err := sqlstore.OpenPool(ctx, cfg.Database.URL, cfg.DataDir, DBPool(cfg.Database))
	if err != nil {
		return nil, err
	}
	if err := db.Migrate(ctx, log); err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

// New opens and migrates the database and builds every component. Nothing listens yet.
func New(ctx context.Context, cfg config.Config, log *slog.Logger) (*App, error) {
	db, err := sqlstore.OpenPool(ctx, cfg.Database.URL, cfg.DataDir, DBPool(cfg.Database))
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

// DBPool is the connection pool the database section asks for.
func DBPool(d config.Database) sqlstore.Pool {
	return sqlstore.Pool{MaxOpenConns: d.MaxOpenConns, MaxIdleConns: d.MaxIdleConns,
		ConnMaxIdleTime: d.ConnMaxIdleTime, SQLiteMmapBytes: d.SQLiteMmapBytes}
}

func build(ctx context.Context, cfg config.Config, db *sqlstore.DB, log *slog.Logger) (*App, error) {
	if err := db.Migrate(ctx, log); err != nil {
		return nil, err
	}
	store := sqlstore.New(db)
	chain, err := auditChain(ctx, cfg, store, log)
	if err != nil {
		return nil, err
	}
	store.SetAuditChain(chain)
	lookups := audit.NewAggregator(store, cfg.Audit.LookupInterval, log.With("component", "audit"))
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
		PublicBaseURL: cfg.PublicBaseURL, TLSConfig: smtpTLS,
	}, log.With("component", "email"))
	if err != nil {
		return nil, fmt.Errorf("email: %w", err)
	}
	allowed, _ := config.ParsePrefixes(cfg.Homeservers.AllowedNetworks)
	hsTLS, err := tlsWithCA(cfg.Homeservers.CAFile)
	if err != nil {
		return nil, fmt.Errorf("homeservers.ca_file: %w", err)
	}
	pins := map[string][32]byte{}
	for name, pin := range cfg.Homeservers.PinnedCerts {
		if pins[name], err = config.ParsePin(pin); err != nil {
			return nil, fmt.Errorf("homeservers.pinned_certs.%s: %w", name, err)
		}
	}
	hs := homeserver.New(homeserver.Options{AllowedNetworks: allowed, TLSConfig: hsTLS, Timeout: cfg.Homeservers.Timeout,
		ServerName: cfg.ServerName, PinnedCerts: pins, AllowOrigin: func(serverName string) bool {
			return identity.HomeserverAllowed(cfg.Homeservers.Allowed, serverName)
		}}, log.With("component", "homeserver"))
	policies := map[string]identity.Policy{}
	for name, p := range cfg.Terms.Policies {
		docs := map[string]identity.PolicyDocument{}
		for lang, l := range p.Languages {
			docs[lang] = identity.PolicyDocument{Name: l.Name, URL: l.URL}
		}
		policies[name] = identity.Policy{Version: p.Version, Languages: docs}
	}
	index := mcsd.NewIndex(db)
	if err := index.Rehash(ctx, pepper); err != nil {
		return nil, fmt.Errorf("directory index: %w", err)
	}
	syncer, syncerOpts, peers, err := directory(cfg, index, log)
	if err != nil {
		return nil, err
	}
	metrics := api.NewMetrics()
	syncMetrics := newSyncMetrics()
	metrics.MustRegister(syncMetrics.duration, syncMetrics.runs, newStateCollector(db, log.With("component", "metrics")))
	svc := identity.New(store, signer, pepper, mailKinds{mailer}, nil, identity.Options{
		OnPepper:          index.Rehash,
		OnBindGivenUp:     metrics.OnBindGivenUp,
		PublicBaseURL:     cfg.PublicBaseURL,
		SessionLifetime:   cfg.Validation.SessionLifetime,
		TokenLifetime:     cfg.Validation.TokenLifetime,
		MaxFailedAttempts: cfg.Validation.MaxFailedAttempts,
		InviteLifetime:    cfg.Invites.Lifetime,
		WebClientLocation: cfg.Invites.WebClientLocation,
		OnBindRetryFor:    cfg.Invites.OnBindRetryFor,
		OnBindClaim:       cfg.Invites.OnBindClaimTTL,
		Policies:          policies,

		WebClientLocations: cfg.Invites.WebClientLocations,
		NextLinkHosts:      cfg.Validation.NextLinkHosts,
		InviteLimits: identity.InviteLimits{PerThreePID: cfg.Invites.MaxPendingPerThreePID,
			PerSender: cfg.Invites.MaxPendingPerSender},
		MaxMailsPerSession: cfg.Validation.MaxMailsPerSession,
		MaxMailsPerAddress: cfg.Validation.MaxMailsPerAddress,
		OnBindMaxInvites:   cfg.Invites.OnBindMaxInvites,
		OnBindMaxBytes:     cfg.Invites.OnBindMaxBytes,
	}, log.With("component", "identity"))
	var mirror *identity.Mirror
	bindings := lookup.Bindings(store)
	if cfg.Lookup.MemoryIndex || cfg.Lookup.TokenCacheEntries > 0 {
		tokens := cfg.Lookup.TokenCacheEntries
		if tokens == 0 {
			tokens = -1
		}
		mirror = identity.NewMirror(store, identity.MirrorOptions{Staleness: cfg.Lookup.ReplicaStaleness,
			TokenTTL: cfg.Lookup.TokenCacheTTL, TokenEntries: tokens, NoIndex: !cfg.Lookup.MemoryIndex},
			log.With("component", "mirror"))
		// Loaded by runWorkers: commands that never serve (import, audit …) do not read it.
		svc.UseMirror(mirror)
		bindings = mirror
		metrics.MustRegister(newMirrorCollector(mirror))
	}
	links := []lookup.Resolver{bindings, index}
	for _, p := range peers {
		links = append(links, lookup.Optional(p.name, p.peer, log.With("component", "peer")))
	}
	svc.SetResolver(lookup.Chain(links...))
	// Page cookies are sealed under a key derived from the signing key, which replicas share.
	webKey, err := signer.Secret("web pages")
	if err != nil {
		return nil, fmt.Errorf("derive page key: %w", err)
	}
	ssoSvc, err := newSSO(ctx, cfg, svc, store, index, lookups.Refused, log)
	if err != nil {
		return nil, err
	}
	accounts, err := ozoAccounts(cfg, store, lookups, mailer, svc, signer, log.With("component", "ozoaccount"))
	if err != nil {
		return nil, err
	}
	webCfg := web.Config{Key: webKey, SubmitTemplate: cfg.Validation.SubmitPage, Tokens: svc,
		Accounts: accounts, ClientURLs: cfg.OZOAccounts.ClientURLs, MinPasswordLength: cfg.OZOAccounts.MinPasswordLength,
		Unavailable: sqlstore.Unavailable, Log: log.With("component", "web")}
	if ssoSvc != nil {
		webCfg.SSO = ssoSvc
	}
	pages, err := web.New(webCfg)
	if err != nil {
		return nil, err
	}
	v1Nets, _ := config.ParsePrefixes(cfg.V1.Networks)
	proxies, _ := config.ParsePrefixes(cfg.HTTP.TrustedProxies)
	var limiter ratelimit.Limiter = ratelimit.NewMemory()
	var redisClient *redis.Client
	if cfg.Redis.URL != "" {
		opts, err := redis.ParseURL(cfg.Redis.URL)
		if err != nil {
			return nil, fmt.Errorf("redis.url: %w", err)
		}
		// Every request asks the limiter, and memory takes over when Redis fails: fail fast
		// rather than retry (unless the URL says otherwise).
		if opts.MaxRetries == 0 {
			opts.MaxRetries = -1
		}
		if opts.DialerRetries == 0 {
			opts.DialerRetries = 1
		}
		if opts.DialTimeout == 0 {
			opts.DialTimeout = time.Second
		}
		if opts.ReadTimeout == 0 {
			opts.ReadTimeout = 500 * time.Millisecond
		}
		if opts.WriteTimeout == 0 {
			opts.WriteTimeout = 500 * time.Millisecond
		}
		// Without Redis the limits hold per replica rather than not at all.
		redisClient = redis.NewClient(opts)
		fb := ratelimit.NewFallback(ratelimit.NewRedis(redisClient, cfg.Redis.KeyPrefix+"rl:"), limiter, 0,
			log.With("component", "ratelimit"))
		limiter = fb
		metrics.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ozo_identity_ratelimit_degraded",
				Help: "1 while Redis is unreachable and rate limits are held in memory per replica."},
				func() float64 {
					if fb.Degraded() != nil {
						return 1
					}
					return 0
				}),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "ozo_identity_ratelimit_fallback_decisions_total",
				Help: "Rate-limit decisions taken in memory because Redis was unreachable."},
				func() float64 { return float64(fb.FallbackDecisions()) }))
	}
	admSync := &adminSync{}
	var dirSync api.DirectorySyncer
	if cfg.Directory.LRZAURL != "" || len(cfg.Directory.Directories) > 0 {
		dirSync = admSync
	}
	srv := api.New(svc, hs, api.Config{
		PublicBaseURL:     cfg.PublicBaseURL,
		MaxBodyBytes:      cfg.HTTP.MaxBodyBytes,
		RequestTimeout:    cfg.HTTP.RequestTimeout,
		MaxLookupBatch:    cfg.Lookup.MaxBatch,
		CORSOrigins:       cfg.HTTP.CORSOrigins,
		TrustedProxies:    proxies,
		AllowedHomeserver: cfg.Homeservers.Allowed,
		V1Enabled:         cfg.V1.Enabled,
		V1Networks:        v1Nets,
		AdminToken:        cfg.Admin.Token,
		RateLimits: api.RateLimits{Limiter: limiter, LookupPerAccount: cfg.RateLimits.LookupPerAccount,
			LookupPerServer: cfg.RateLimits.LookupPerServer, DirectoryPerAccount: cfg.RateLimits.DirectoryPerAccount,
			PerClient: cfg.RateLimits.PerClient, AdminFailuresPerClient: cfg.RateLimits.AdminFailuresPerClient},
		Directory:     index,
		DirectorySync: dirSync,
		Pages:         pages,
		SSO:           ssoSvc,
		Accounts:      accounts,
		Audit: api.Audit{Store: store, Lookups: lookups,
			Observer: audit.Observer{ServerName: cfg.ServerName, BaseURL: cfg.PublicBaseURL}},
		Unavailable: sqlstore.Unavailable,
	}, metrics, log.With("component", "api"))
	a := &App{Config: cfg, DB: db, Store: store, Service: svc, API: srv, Metrics: metrics, HS: hs,
		Index: index, Syncer: syncer, Accounts: accounts, syncerOpts: syncerOpts, adminSync: admSync, syncMetrics: syncMetrics, log: log,
		Chain: chain, Lookups: lookups, Mirror: mirror, redis: redisClient}
	admSync.app = a
	return a, nil
}

type namedPeer struct {
	name string
	peer *lookup.Peer
}

// directory builds the mCSD syncer and the peer identity servers. Directory URLs come from the
// LRZA, a third party, so they are fetched through the same SSRF guard as homeservers.
func directory(cfg config.Config, index *mcsd.Index, log *slog.Logger) (*mcsd.Syncer, mcsd.Options, []namedPeer, error) {
	allowed, _ := config.ParsePrefixes(cfg.Directory.AllowedNetworks)
	tlsCfg, err := tlsWithCA(cfg.Directory.CAFile)
	if err != nil {
		return nil, mcsd.Options{}, nil, fmt.Errorf("directory.ca_file: %w", err)
	}
	client := httpguard.New(httpguard.Options{AllowedNetworks: allowed, TLSConfig: tlsCfg,
		Timeout: cfg.Directory.RequestTimeout, MaxResponseBytes: 64 << 20})
	var static []mcsd.StaticDirectory
	for _, d := range cfg.Directory.Directories {
		static = append(static, mcsd.StaticDirectory{BaseURL: d.URL, URAs: d.URAs})
	}
	opts := mcsd.Options{LRZA: cfg.Directory.LRZAURL, Directories: static, AllowHTTP: cfg.Directory.AllowHTTPURLs, Client: client,
		Concurrency: cfg.Directory.Concurrency, RequestTimeout: cfg.Directory.RequestTimeout,
		MaxDeleteShare: cfg.Directory.MaxDeleteShare, MaxDeleteMin: cfg.Directory.MaxDeleteMin,
		LeaseTTL: cfg.Directory.SyncLeaseTTL,
		Logger:   log.With("component", "mcsd")}
	syncer := mcsd.NewSyncer(index, opts)
	var peers []namedPeer
	for _, p := range cfg.Directory.Peers {
		peers = append(peers, namedPeer{name: p.URL, peer: lookup.NewPeer(lookup.PeerOptions{BaseURL: p.URL, Token: p.Token,
			Client: httpguard.New(httpguard.Options{AllowedNetworks: allowed, TLSConfig: tlsCfg, Timeout: 10 * time.Second})})})
	}
	return syncer, opts, peers, nil
}

// NewSyncer returns a syncer of the configured directories like a.Syncer, with its options
// changed by configure: a manual sync ignores backoff and reports progress.
func (a *App) NewSyncer(configure func(*mcsd.Options)) *mcsd.Syncer {
	opts := a.syncerOpts
	if configure != nil {
		configure(&opts)
	}
	return mcsd.NewSyncer(a.Index, opts)
}

// HasDirectories reports whether any mCSD directory is configured.
func (a *App) HasDirectories() bool {
	return a.Config.Directory.LRZAURL != "" || len(a.Config.Directory.Directories) > 0
}

// SyncDirectories runs one sync of every directory and logs what it did. While another
// process or replica syncs the database, it leaves this round to that one.
func (a *App) SyncDirectories(ctx context.Context) ([]mcsd.DirectoryReport, error) {
	reports, err := a.Syncer.SyncAll(ctx)
	if errors.Is(err, mcsd.ErrSyncRunning) {
		a.log.Info("directory sync left to the sync already running", "reason", err)
		return nil, nil
	}
	return a.logReports(reports, err)
}

func (a *App) logReports(reports []mcsd.DirectoryReport, err error) ([]mcsd.DirectoryReport, error) {
	a.syncMetrics.observe(reports)
	a.RecordDirectorySync(context.Background(), reports)
	for _, r := range reports {
		switch {
		case r.Skipped != "":
			a.log.Info("directory skipped", "directory", r.Directory, "reason", r.Skipped, "retry_at", r.RetryAt)
		case r.Err != nil:
			a.log.Warn("directory sync failed", "directory", r.Directory, "fetched", r.Fetched, "applied", r.Applied, "err", r.Err)
		default:
			a.log.Info("directory synced", "directory", r.Directory, "fetched", r.Fetched, "applied", r.Applied,
				"deleted", r.Deleted, "rejected", r.Rejected)
		}
	}
	return reports, err
}

// syncSchedule runs SyncDirectories every interval, with up to 10 % random jitter so that
// replicas and providers are not hit at the same moment.
func (a *App) syncSchedule(ctx context.Context, interval time.Duration) {
	for {
		if _, err := a.SyncDirectories(ctx); err != nil && ctx.Err() == nil {
			a.log.Warn("directory sync", "err", err)
		}
		jitter := time.Duration(rand.Int64N(int64(interval)/10 + 1))
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval + jitter):
		}
	}
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

// changeLogRetention is how long the change log keeps a change for replicas to read.
const changeLogRetention = 10 * time.Minute

// lifetimes are the contexts background work runs under, ended one after another on SIGTERM
// (see Serve): periodic jobs first, the lookup counts once the last request is answered, and
// the queues' work in flight (onbind, audit push) only at the drain deadline.
type lifetimes struct {
	jobs    context.Context // mCSD sync (its lease is released at once), clean-ups, checkpoints
	lookups context.Context // the lookup aggregator: flushed when it ends
	queues  context.Context // the drain deadline of an onbind or push in flight
	stop    <-chan struct{} // closed: the queues take nothing new
}

// runWorkers runs the background work (mCSD sync, onbind delivery, audit, clean-up of expired
// sessions, invites, ephemeral keys and OZO account tokens) until its lifetimes end.
func (a *App) runWorkers(l lifetimes) {
	ctx := l.jobs
	a.adminSync.setContext(ctx)
	if a.HasDirectories() && a.Config.Directory.SyncInterval > 0 {
		a.workers.Go(func() { a.syncSchedule(ctx, a.Config.Directory.SyncInterval) })
	}
	a.auditWorkers(l)
	if a.Mirror != nil {
		// Until it is loaded the database answers; without it the replica still works, and Run
		// tries again.
		if err := a.Mirror.Load(ctx); err != nil && ctx.Err() == nil {
			a.log.Warn("lookup index not loaded; lookups go to the database", "err", err)
		}
		a.workers.Go(func() { a.Mirror.Run(ctx) })
	}
	a.workers.Go(func() {
		// Replicas read the change log every half second; changes older than this are of use
		// only to a replica that stalled that long, and it reloads instead.
		t := time.NewTicker(time.Minute)
		defer t.Stop()
		for {
			if _, err := a.Store.PruneChanges(ctx, time.Now().Add(-changeLogRetention)); err != nil && ctx.Err() == nil {
				a.log.Warn("change log clean-up", "err", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	})
	a.workers.Go(func() {
		a.Service.DeliverOnBinds(l.queues, l.stop, a.HS, func(err error) bool { return !homeserver.IsRetryable(err) }, 5*time.Second)
	})
	a.workers.Go(func() { a.refreshKeys(ctx, keyRefresh) })
	a.workers.Go(func() {
		t := time.NewTicker(time.Hour)
		defer t.Stop()
		for {
			if n, err := a.Store.DeleteExpiredSessions(ctx, time.Now().Add(-a.Config.Validation.SessionLifetime)); err != nil && ctx.Err() == nil {
				a.log.Warn("session clean-up", "err", err)
			} else if n > 0 {
				a.log.Info("removed expired validation sessions", "count", n)
			}
			if inv, keys, err := a.Store.PruneInvites(ctx, time.Now()); err != nil && ctx.Err() == nil {
				a.log.Warn("invite clean-up", "err", err)
			} else if inv > 0 || keys > 0 {
				a.log.Info("removed expired invites", "invites", inv, "ephemeral_keys", keys)
			}
			if n, err := a.Accounts.PruneTokens(ctx); err != nil && ctx.Err() == nil {
				a.log.Warn("ozo account token clean-up", "err", err)
			} else if n > 0 {
				a.log.Info("removed expired and used ozo account links, tickets and codes", "count", n)
			}
			a.PruneAudit(ctx)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	})
}

// keyRefresh is how often a replica looks for a signing key or pepper that another process
// (`admin signing-key rotate`, `admin pepper rotate`) rotated.
const keyRefresh = 5 * time.Second

func (a *App) refreshKeys(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		signer, pepper, err := a.Service.RefreshKeys(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			a.log.Warn("look for rotated keys", "err", err)
		case signer:
			a.log.Info("signing with the rotated signing key", "key_id", a.Service.Signer().KeyID())
		}
		if pepper {
			a.log.Info("lookups use the rotated pepper")
		}
	}
}

// newServer is an HTTP server with the public listener's limits: no connection, idle or
// half-sent, is kept longer than these.
func (a *App) newServer(h http.Handler) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
		WriteTimeout: 60 * time.Second, IdleTimeout: 120 * time.Second, MaxHeaderBytes: 32 << 10,
		ErrorLog: slog.NewLogLogger(a.log.Handler(), slog.LevelWarn)}
}

// OpsServer is the server of metrics_listen (/metrics, /healthz, /readyz), with the same
// timeouts as the public listener.
func (a *App) OpsServer() *http.Server {
	ops := a.newServer(api.OpsHandler(a.Metrics, a.ReadyChecks(), a.stopping.Load))
	ops.Addr = a.Config.MetricsListen
	return ops
}

// ReadyChecks are the dependencies /readyz asks about: the database and, when configured, Redis.
func (a *App) ReadyChecks() []api.ReadyCheck {
	checks := []api.ReadyCheck{{Name: "database", Check: func(ctx context.Context) error { return a.DB.PingContext(ctx) }}}
	if a.redis != nil {
		checks = append(checks, api.ReadyCheck{Name: "redis", Check: func(ctx context.Context) error {
			// Asked on every probe, not read from the limiter's fallback state: that state only
			// changes when a request comes, and a balancer that took every replica out sends none.
			return a.redis.Ping(ctx).Err()
		}})
	}
	return checks
}

// Serve listens on the configured addresses until ctx ends, then shuts down gracefully:
// /readyz turns 503 and the replica serves on for shutdown.delay without keep-alives; then it
// stops accepting, ends the periodic jobs (releasing the mCSD lease), lets the requests and the
// onbind delivery and audit push in flight finish until shutdown.drain_timeout, cuts off what
// is left and gives its queue claims back, and returns nil. tlsConfig, when set, serves the
// public listener over HTTPS.
func (a *App) Serve(ctx context.Context, ln net.Listener, tlsConfig *tls.Config) error {
	base := context.WithoutCancel(ctx)
	jobs, endJobs := context.WithCancel(base)
	lookups, endLookups := context.WithCancel(base)
	queues, endQueues := context.WithCancel(base)
	defer endJobs()
	defer endLookups()
	defer endQueues()
	stop := make(chan struct{})
	a.runWorkers(lifetimes{jobs: jobs, lookups: lookups, queues: queues, stop: stop})
	srv := a.newServer(a.API)
	var ops *http.Server
	if a.Config.MetricsListen != "" {
		ops = a.OpsServer()
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
	var serveErr error
	select {
	case serveErr = <-errc:
	case <-ctx.Done():
	}
	cfg := a.Config.Shutdown
	a.stopping.Store(true)
	if serveErr == nil && cfg.Delay > 0 {
		// Clients are told to close their connections; the balancer's probe sees 503 and sends
		// new ones elsewhere before the listener closes under them.
		a.log.Info("stopping: /readyz answers 503, serving on until the load balancer notices", "delay", cfg.Delay)
		srv.SetKeepAlivesEnabled(false)
		time.Sleep(cfg.Delay)
	}
	drain, cancel := context.WithTimeout(base, max(cfg.DrainTimeout, time.Second))
	defer cancel()
	a.log.Info("stopping: draining requests and queued work", "drain_timeout", cfg.DrainTimeout)
	close(stop)
	endJobs()
	err := srv.Shutdown(drain)
	if err != nil {
		a.log.Warn("requests still running at the drain deadline are cut off", "err", err)
		srv.Close()
	}
	endLookups() // every lookup is answered: its counts are written now
	done := make(chan struct{})
	go func() { a.workers.Wait(); a.Accounts.Wait(); close(done) }()
	select {
	case <-done:
	case <-drain.Done():
		a.log.Warn("queued work still running at the drain deadline is cut off and given back to the queue")
		endQueues()
		<-done
	}
	if ops != nil {
		octx, ocancel := context.WithTimeout(base, time.Second)
		ops.Shutdown(octx)
		ocancel()
	}
	if serveErr != nil {
		return serveErr
	}
	a.log.Info("stopped")
	return nil
}

// Close releases the database and Redis.
func (a *App) Close() error {
	if a.redis != nil {
		a.redis.Close()
	}
	return a.DB.Close()
}

// mailKinds lets identity name its mails without importing email.
type mailKinds struct{ m *email.Mailer }

func (k mailKinds) Send(ctx context.Context, kind identity.MailKind, to string, vars map[string]string) error {
	return k.m.Send(ctx, email.Kind(kind), to, vars)
}
