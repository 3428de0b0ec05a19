// Package config loads ozo-identity's configuration: a YAML file whose every key can be
// overridden by an OZO_* environment variable (nested keys joined by "_", upper-cased; structured
// values as JSON), found by reflection over the yaml tags.
package config

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Config is the whole configuration. The zero value of every field means its documented default.
type Config struct {
	// Listen is the address of the public HTTP listener.
	Listen string `yaml:"listen"`
	// MetricsListen serves /metrics, /healthz and /readyz; empty disables it.
	MetricsListen string `yaml:"metrics_listen"`
	DataDir       string `yaml:"data_dir"`
	// PublicBaseURL is how clients and homeservers reach this server; used in absolute URLs.
	PublicBaseURL string `yaml:"public_base_url"`
	// ServerName signs associations and invites; defaults to the host of PublicBaseURL.
	ServerName string `yaml:"server_name"`
	// SigningKeyFile holds an Ed25519 key in Synapse's format; empty means generate and keep in the database.
	SigningKeyFile string `yaml:"signing_key_file"`
	LogLevel       string `yaml:"log_level"`
	LogFormat      string `yaml:"log_format"`

	Database    Database    `yaml:"database"`
	HTTP        HTTP        `yaml:"http"`
	Lookup      Lookup      `yaml:"lookup"`
	Validation  Validation  `yaml:"validation"`
	Invites     Invites     `yaml:"invites"`
	Email       Email       `yaml:"email"`
	Terms       Terms       `yaml:"terms"`
	Homeservers Homeservers `yaml:"homeservers"`
	V1          V1          `yaml:"v1"`
	Admin       Admin       `yaml:"admin"`
	Directory   Directory   `yaml:"directory"`
	Redis       Redis       `yaml:"redis"`
	RateLimits  RateLimits  `yaml:"rate_limits"`
	SSO         SSO         `yaml:"sso"`
	OZOAccounts OZOAccounts `yaml:"ozo_accounts"`
	Audit       Audit       `yaml:"audit"`
	Shutdown    Shutdown    `yaml:"shutdown"`
}

// Shutdown is how a replica ends on SIGTERM: it turns /readyz to 503 and keeps serving for
// Delay (so the load balancer moves traffic away), then stops accepting and gives the requests,
// onbind deliveries and audit pushes in flight DrainTimeout to finish; what is still running then
// is cut off and its queue claim given back, so another replica takes it at once.
type Shutdown struct {
	Delay        time.Duration `yaml:"delay"`
	DrainTimeout time.Duration `yaml:"drain_timeout"`
}

// OZOAccounts configures the accounts of family caregivers and patients (email + password + TOTP).
type OZOAccounts struct {
	// Argon2 are the password hash's costs; the default is OWASP's recommendation, and weaker
	// settings than OWASP's equivalent ones are refused.
	Argon2 Argon2 `yaml:"argon2"`
	// MinPasswordLength in characters.
	MinPasswordLength int `yaml:"min_password_length"`
	// ActivationLifetime is how long an invitation's activation link works; ResetLifetime a reset link's.
	ActivationLifetime time.Duration `yaml:"activation_lifetime"`
	ResetLifetime      time.Duration `yaml:"reset_lifetime"`
	// LoginTicketLifetime is how long a right password waits for the second factor.
	LoginTicketLifetime time.Duration `yaml:"login_ticket_lifetime"`
	// Issuer names the account in authenticator apps.
	Issuer string `yaml:"issuer"`
	// ClientURLs are the OZO app's pages that may receive a login's one-time code from the login
	// page (?redirect_uri=&code_challenge=); exact URLs, https (http only on loopback).
	ClientURLs []string `yaml:"client_urls"`
	// CodeLifetime is how long that code can be redeemed for the Matrix session.
	CodeLifetime time.Duration `yaml:"code_lifetime"`
	Lockout      LoginLockout  `yaml:"lockout"`
	Homeserver   OZOHomeserver `yaml:"homeserver"`
}

// Argon2 are argon2id's costs.
type Argon2 struct {
	MemoryKiB   int `yaml:"memory_kib"`
	Iterations  int `yaml:"iterations"`
	Parallelism int `yaml:"parallelism"`
}

// LoginLockout: after FreeAttempts failed passwords or codes within Window, each further one
// locks the email for BaseDelay, doubling up to MaxDelay.
type LoginLockout struct {
	FreeAttempts int           `yaml:"free_attempts"`
	BaseDelay    time.Duration `yaml:"base_delay"`
	MaxDelay     time.Duration `yaml:"max_delay"`
	Window       time.Duration `yaml:"window"`
}

// OZOHomeserver is the platform's own homeserver, where OZO accounts get their Matrix user
// through an application-service registration. Without client_url no Matrix users are made.
type OZOHomeserver struct {
	ClientURL  string `yaml:"client_url"`
	ServerName string `yaml:"server_name"`
	ASToken    string `yaml:"as_token"`
	// UserPrefix starts the localparts of the users made: the application service's exclusive namespace.
	UserPrefix string `yaml:"user_prefix"`
	// CAFile adds a CA to trust for an https client_url.
	CAFile string `yaml:"ca_file"`
}

// Audit configures the audit trail (NEN 7513): the chain key, checkpoints, retention and the
// push to an audit record repository.
type Audit struct {
	// KeyFile holds the chain's HMAC key (base64 or hex, 32 bytes or more); empty means
	// <data_dir>/audit.key, generated with mode 0600 on first start. Back it up apart from the database.
	KeyFile string `yaml:"key_file"`
	// Key is the chain key itself, usually given as OZO_AUDIT_KEY; it wins over KeyFile.
	Key string `yaml:"key"`
	// LookupInterval is how long lookups are counted per caller before one record is written;
	// a crash loses at most this interval of lookup counts.
	LookupInterval time.Duration `yaml:"lookup_interval"`
	// CheckpointInterval is how often serve exports a signed checkpoint into CheckpointDir; 0 disables.
	CheckpointInterval time.Duration `yaml:"checkpoint_interval"`
	// CheckpointDir receives the scheduled checkpoints; empty means <data_dir>/audit-checkpoints.
	CheckpointDir string `yaml:"checkpoint_dir"`
	// Retention removes records older than this, but only those an exported checkpoint covers;
	// 0 keeps every record.
	Retention time.Duration `yaml:"retention"`
	Push      AuditPush     `yaml:"push"`
}

// AuditPush sends AuditEvents to an audit record repository (FHIR POST of a Bundle).
type AuditPush struct {
	// URL is the repository's FHIR base; empty disables the push.
	URL string `yaml:"url"`
	// BundleType is batch or transaction.
	BundleType string `yaml:"bundle_type"`
	// Token is sent as a bearer token when set.
	Token     string        `yaml:"token"`
	BatchSize int           `yaml:"batch_size"`
	Interval  time.Duration `yaml:"interval"`
	CAFile    string        `yaml:"ca_file"`
}

// Directory configures Generieke Functie Adressering: the LRZA and the providers' mCSD directories.
type Directory struct {
	// LRZAURL is the base URL of the LRZA's mCSD directory; provider directories are discovered there.
	LRZAURL string `yaml:"lrza_url"`
	// Directories are provider directories the operator adds by hand.
	Directories []StaticDirectory `yaml:"directories"`
	// SyncInterval is how often serve syncs (with up to 10 % random jitter); 0 disables it.
	SyncInterval   time.Duration `yaml:"sync_interval"`
	Concurrency    int           `yaml:"concurrency"`
	RequestTimeout time.Duration `yaml:"request_timeout"`
	// AllowedNetworks are private networks directories may be fetched from; discovered directory
	// URLs come from third parties, so loopback and private addresses are refused otherwise.
	AllowedNetworks []string `yaml:"allowed_networks"`
	// AllowHTTPURLs are base URLs of directories the LRZA lists that may be fetched over plain
	// http; any other http directory the LRZA lists is refused. The LRZA URL and Directories
	// are the operator's own choice and may be http without being listed here.
	AllowHTTPURLs []string `yaml:"allow_http_urls"`
	CAFile        string   `yaml:"ca_file"`
	// MaxDeleteShare and MaxDeleteMin: a sync that would delete more than MaxDeleteMin and more
	// than this share of one directory's resources of a type (or of the LRZA's organisations)
	// stops for that directory and keeps them; `directory sync --allow-mass-delete` overrides.
	MaxDeleteShare float64 `yaml:"max_delete_share"`
	MaxDeleteMin   int     `yaml:"max_delete_min"`
	// SyncLeaseTTL is how long the sync lease outlives a holder that stopped renewing it (died):
	// one sync of the database at a time, across replicas and the CLI.
	SyncLeaseTTL time.Duration `yaml:"sync_lease_ttl"`
	// Peers are other identity servers asked, last, about 3PIDs nobody here knows.
	Peers []Peer `yaml:"peers"`
}

// StaticDirectory is a provider's mCSD directory and the URAs it may speak for.
type StaticDirectory struct {
	URL  string   `yaml:"url"`
	URAs []string `yaml:"uras"`
}

// Peer is another identity server consulted by the resolution chain.
type Peer struct {
	URL   string `yaml:"url"`
	Token string `yaml:"token"`
}

// Redis holds shared ephemeral state (rate limits) so replicas agree; empty keeps it in memory.
type Redis struct {
	URL string `yaml:"url"`
	// KeyPrefix starts every key this service writes, so that services (and tests) can share one Redis.
	KeyPrefix string `yaml:"key_prefix"`
}

// RateLimits are per-minute budgets; 0 disables one.
type RateLimits struct {
	// LookupPerAccount and LookupPerServer count looked-up addresses, not requests: every
	// address of a v2 lookup, every directory localisation and store-invite. LookupPerServer
	// also bounds v1 lookup, bulk_lookup and store-invite per client address.
	LookupPerAccount int `yaml:"lookup_per_account"`
	LookupPerServer  int `yaml:"lookup_per_server"`
	// DirectoryPerAccount bounds homeserver localisation and directory search per account.
	DirectoryPerAccount int `yaml:"directory_per_account"`
	// PerClient bounds register, requestToken, store-invite, sign-ed25519 and 3pid/unbind per client address.
	PerClient int `yaml:"per_client"`
	// AdminFailuresPerClient is how many wrong admin tokens a client address may send a minute;
	// after that the admin API refuses it (429), right token or not, until the minute is over.
	AdminFailuresPerClient int `yaml:"admin_failures_per_client"`
}

type Database struct {
	// URL is a postgres:// URL; empty means the SQLite file in the data directory.
	URL string `yaml:"url"`
	// MaxOpenConns bounds the connection pool; 0 means the engine's default (PostgreSQL 20,
	// SQLite 2×GOMAXPROCS+2).
	MaxOpenConns int `yaml:"max_open_conns"`
	// MaxIdleConns is how many connections stay open between requests; 0 means max_open_conns.
	MaxIdleConns int `yaml:"max_idle_conns"`
	// ConnMaxIdleTime closes connections idle for this long.
	ConnMaxIdleTime time.Duration `yaml:"conn_max_idle_time"`
	// SQLiteMmapBytes is how much of the SQLite file is memory-mapped (shared OS page cache).
	SQLiteMmapBytes int64 `yaml:"sqlite_mmap_bytes"`
}

type HTTP struct {
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// RequestTimeout bounds the work of one request (database, homeserver, mail, IdP): a database
	// that stops answering without closing its connections fails requests with 503 after it,
	// instead of holding them, and the pool's connections, until the caller gives up.
	RequestTimeout time.Duration `yaml:"request_timeout"`
	// CORSOrigins lists origins allowed to call from a browser; ["*"] allows all (the default, as the spec expects).
	CORSOrigins []string `yaml:"cors_origins"`
	// TrustedProxies are networks whose X-Forwarded-For is believed for the client address.
	TrustedProxies []string `yaml:"trusted_proxies"`
}

type Lookup struct {
	MaxBatch int `yaml:"max_batch"`
	// MemoryIndex answers hashed lookups from an in-memory index of the local bindings' lookup
	// hashes, kept current with the database; off, every lookup asks the database.
	MemoryIndex bool `yaml:"memory_index"`
	// ReplicaStaleness is how often (twice per) the in-memory index and token cache read the
	// change log in the background; past it without a successful read they answer nothing and the
	// database answers. Requests check the log's last number themselves (read after write).
	ReplicaStaleness time.Duration `yaml:"replica_staleness"`
	// TokenCacheTTL is how long a verified access token is trusted without asking the database;
	// a logout reaches every replica's cache at once (requests check the change log first).
	TokenCacheTTL time.Duration `yaml:"token_cache_ttl"`
	// TokenCacheEntries bounds the token cache; 0 turns it off.
	TokenCacheEntries int `yaml:"token_cache_entries"`
}

type Validation struct {
	// SessionLifetime bounds how long a session may be used, validated or not.
	SessionLifetime time.Duration `yaml:"session_lifetime"`
	// TokenLifetime bounds how long a mailed token works.
	TokenLifetime     time.Duration `yaml:"token_lifetime"`
	MaxFailedAttempts int           `yaml:"max_failed_attempts"`
	// SubmitPage is an HTML template shown by GET submitToken when there is no next_link.
	SubmitPage string `yaml:"submit_page"`
	// NextLinkHosts are the hosts (host or host:port) a next_link may redirect to, https only;
	// empty means the hosts of public_base_url and of the invite web client locations.
	NextLinkHosts []string `yaml:"next_link_hosts"`
	// MaxMailsPerSession bounds the mails one session sends (send_attempt 1, 2, ...).
	MaxMailsPerSession int `yaml:"max_mails_per_session"`
	// MaxMailsPerAddress bounds the validation mails to one address per session_lifetime.
	MaxMailsPerAddress int `yaml:"max_mails_per_address"`
}

type Invites struct {
	Lifetime time.Duration `yaml:"lifetime"`
	// WebClientLocation is the chat client the invite mail links to.
	WebClientLocation string `yaml:"web_client_location"`
	// WebClientLocations are the clients an invite's org.matrix.web_client_location may choose;
	// others are ignored in favour of WebClientLocation. Empty means WebClientLocation only.
	WebClientLocations []string `yaml:"web_client_locations"`
	// MaxPendingPerThreePID and MaxPendingPerSender cap undelivered invites.
	MaxPendingPerThreePID int `yaml:"max_pending_per_threepid"`
	MaxPendingPerSender   int `yaml:"max_pending_per_sender"`
	// OnBindMaxInvites and OnBindMaxBytes bound one onbind request to a homeserver.
	OnBindMaxInvites int `yaml:"onbind_max_invites"`
	OnBindMaxBytes   int `yaml:"onbind_max_bytes"`
	// OnBindRetryFor bounds how long an onbind delivery is retried.
	OnBindRetryFor time.Duration `yaml:"onbind_retry_for"`
	// OnBindClaimTTL is how long a replica's claim on a delivery hides it from the others: after
	// a kill -9 another replica sends it again this long after the claim. An attempt is given at
	// most half of it (and 30s), so a living replica always records its outcome first.
	OnBindClaimTTL time.Duration `yaml:"onbind_claim_ttl"`
}

type Email struct {
	SMTP      SMTP              `yaml:"smtp"`
	From      string            `yaml:"from"`
	Templates map[string]string `yaml:"templates"`
}

type SMTP struct {
	Host string `yaml:"host"`
	Port int    `yaml:"port"`
	// Security is "starttls" (required), "tls" (implicit TLS) or "none"; empty (the default)
	// means starttls for any host but a loopback one. Certificates are always verified.
	Security string `yaml:"security"`
	Username string `yaml:"username"`
	Password string `yaml:"password"`
	// CAFile adds a CA to trust for the SMTP server's certificate.
	CAFile string `yaml:"ca_file"`
}

type Terms struct {
	Policies map[string]Policy `yaml:"policies"`
}

// Policy is one document a user must accept, in one version and several languages.
type Policy struct {
	Version   string                    `yaml:"version"`
	Languages map[string]PolicyLanguage `yaml:"languages"`
}

type PolicyLanguage struct {
	Name string `yaml:"name"`
	URL  string `yaml:"url"`
}

type Homeservers struct {
	// Allowed server names may register accounts; "*" allows every homeserver.
	Allowed []string `yaml:"allowed"`
	// AllowedNetworks are CIDRs outbound calls may reach although they are loopback or private.
	AllowedNetworks []string `yaml:"allowed_networks"`
	// CAFile adds a CA to trust when calling homeservers (test setups, private PKI).
	CAFile  string        `yaml:"ca_file"`
	Timeout time.Duration `yaml:"timeout"`
	// PinnedCerts maps a server name (host or host:port) to "sha256/<base64 or hex>" of the one
	// certificate, or of its public key (SPKI), trusted for it instead of CA verification: for
	// test homeservers with self-signed certificates that Go cannot verify (no subjectAltName).
	PinnedCerts map[string]string `yaml:"pinned_certs"`
}

type V1 struct {
	Enabled bool `yaml:"enabled"`
	// Networks are the CIDRs (the homeservers) allowed to call v1.
	Networks []string `yaml:"networks"`
}

type Admin struct {
	// Token is the bearer token of the admin API; empty disables the admin API.
	Token string `yaml:"token"`
}

// Defaults returns the configuration used when nothing is set.
func Defaults() Config {
	return Config{
		Listen:        ":8090",
		DataDir:       "./data",
		PublicBaseURL: "http://localhost:8090",
		LogLevel:      "info",
		LogFormat:     "text",
		HTTP:          HTTP{MaxBodyBytes: 64 << 10, RequestTimeout: 30 * time.Second, CORSOrigins: []string{"*"}},
		Lookup: Lookup{MaxBatch: 10000, MemoryIndex: true, ReplicaStaleness: time.Second,
			TokenCacheTTL: time.Minute, TokenCacheEntries: 10000},
		Database: Database{ConnMaxIdleTime: 5 * time.Minute, SQLiteMmapBytes: 32 << 20},
		Validation: Validation{
			SessionLifetime:    24 * time.Hour,
			TokenLifetime:      24 * time.Hour,
			MaxFailedAttempts:  10,
			MaxMailsPerSession: 3,
			MaxMailsPerAddress: 10,
		},
		Invites: Invites{
			Lifetime:              30 * 24 * time.Hour,
			WebClientLocation:     "https://app.element.io",
			MaxPendingPerThreePID: 50,
			MaxPendingPerSender:   200,
			OnBindMaxInvites:      50,
			OnBindMaxBytes:        64 << 10,
			OnBindRetryFor:        7 * 24 * time.Hour,
			OnBindClaimTTL:        time.Minute,
		},
		// No security set: STARTTLS is required unless the host is loopback (see email.Config).
		Email:       Email{SMTP: SMTP{Host: "localhost"}, From: "ozo-identity <noreply@localhost>"},
		Homeservers: Homeservers{Timeout: 10 * time.Second},
		Redis:       Redis{KeyPrefix: "ozo-identity:"},
		RateLimits: RateLimits{LookupPerAccount: 300, LookupPerServer: 3000, DirectoryPerAccount: 60, PerClient: 60,
			AdminFailuresPerClient: 10},
		OZOAccounts: OZOAccounts{
			// OWASP Password Storage Cheat Sheet: argon2id, m=19 MiB, t=2, p=1.
			Argon2:              Argon2{MemoryKiB: 19 * 1024, Iterations: 2, Parallelism: 1},
			MinPasswordLength:   12,
			ActivationLifetime:  7 * 24 * time.Hour,
			ResetLifetime:       time.Hour,
			LoginTicketLifetime: 5 * time.Minute,
			CodeLifetime:        time.Minute,
			Issuer:              "OZO",
			Lockout:             LoginLockout{FreeAttempts: 5, BaseDelay: 30 * time.Second, MaxDelay: time.Hour, Window: 24 * time.Hour},
			Homeserver:          OZOHomeserver{UserPrefix: "ozo_"},
		},
		Directory: Directory{SyncInterval: 15 * time.Minute, Concurrency: 8, RequestTimeout: 30 * time.Second,
			MaxDeleteShare: 0.5, MaxDeleteMin: 10, SyncLeaseTTL: time.Minute},
		SSO: SSO{LoginLifetime: 10 * time.Minute, StartsPerAccount: 10, Timeout: 15 * time.Second,
			Onboarding: Onboarding{CodeLifetime: time.Minute, StartsPerClient: 10}},
		Audit: Audit{LookupInterval: time.Minute, CheckpointInterval: 24 * time.Hour,
			Push: AuditPush{BundleType: "batch", BatchSize: 100, Interval: 30 * time.Second}},
		Shutdown: Shutdown{DrainTimeout: 20 * time.Second},
	}
}

// Load reads path (none when empty) over the defaults, then applies OZO_* variables from env.
func Load(path string, env []string) (Config, error) {
	cfg := Defaults()
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return cfg, fmt.Errorf("read config: %w", err)
		}
		dec := yaml.NewDecoder(strings.NewReader(string(data)))
		dec.KnownFields(true)
		// An empty file decodes to io.EOF: it just sets nothing.
		if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
			return cfg, fmt.Errorf("parse config %s: %w", path, err)
		}
	}
	if err := applyEnv(&cfg, env); err != nil {
		return cfg, err
	}
	return cfg, cfg.Validate()
}

// envKey is one configuration key as an environment variable: OZO_ + its upper-cased path.
type envKey struct {
	name  string // OZO_EMAIL_SMTP_HOST
	path  string // email.smtp.host
	depth int
	field reflect.Value
}

// envKeys lists every key of cfg, sections (structs) included, by walking the yaml tags, so
// keys added to Config are settable from the environment without further work.
func envKeys(cfg *Config) []envKey {
	var keys []envKey
	var walk func(v reflect.Value, name, path string, depth int)
	walk = func(v reflect.Value, name, path string, depth int) {
		t := v.Type()
		for i := range t.NumField() {
			tag := strings.Split(t.Field(i).Tag.Get("yaml"), ",")[0]
			if tag == "" || tag == "-" {
				continue
			}
			k := envKey{name: name + "_" + strings.ToUpper(tag), path: strings.TrimPrefix(path+"."+tag, "."), depth: depth, field: v.Field(i)}
			keys = append(keys, k)
			if k.field.Kind() == reflect.Struct && k.field.Type() != durationType {
				walk(k.field, k.name, k.path, depth+1)
			}
		}
	}
	walk(reflect.ValueOf(cfg).Elem(), "OZO", "", 0)
	return keys
}

// EnvName is the environment variable of a key path (email.smtp.host → OZO_EMAIL_SMTP_HOST).
func EnvName(path string) string {
	return "OZO_" + strings.ToUpper(strings.ReplaceAll(path, ".", "_"))
}

// applyEnv sets cfg from the OZO_* variables in env. A variable belongs to ozo-identity when its
// name is a key, a key's section followed by "_" (OZO_EMAIL_…), or within a typo of a key; one
// of those that names no key is an error. Other OZO_* variables belong to the deployment and are
// ignored. Sections apply before the keys inside them, so the more specific variable wins.
func applyEnv(cfg *Config, env []string) error {
	keys := envKeys(cfg)
	byName := map[string]envKey{}
	for _, k := range keys {
		byName[k.name] = k
	}
	type setting struct {
		key      envKey
		mapEntry string // for OZO_<MAP>_<ENTRY>: the entry's key, lower-cased
		raw      string
	}
	var settings []setting
	var errs []error
	for _, kv := range env {
		name, raw, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(name, "OZO_") {
			continue
		}
		if k, ok := byName[name]; ok {
			settings = append(settings, setting{key: k, raw: raw})
			continue
		}
		if k, entry, ok := mapEntryKey(keys, name); ok {
			k.depth++ // after the whole map, if both are set
			settings = append(settings, setting{key: k, mapEntry: entry, raw: raw})
			continue
		}
		if ours, hint := looksLikeKey(keys, name); ours {
			errs = append(errs, fmt.Errorf("unknown configuration variable %s%s", name, hint))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	slices.SortStableFunc(settings, func(a, b setting) int { return a.key.depth - b.key.depth })
	for _, s := range settings {
		var err error
		if s.mapEntry != "" {
			err = setMapEntry(s.key.field, s.mapEntry, s.raw)
		} else {
			err = setValue(s.key.field, s.raw)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s (%s): %w", s.key.name, s.key.path, err))
		}
	}
	return errors.Join(errs...)
}

// mapEntryKey matches OZO_<MAP>_<ENTRY> for a map keyed by strings: OZO_EMAIL_TEMPLATES_INVITE.
func mapEntryKey(keys []envKey, name string) (envKey, string, bool) {
	for _, k := range keys {
		if k.field.Kind() != reflect.Map || k.field.Type().Key().Kind() != reflect.String {
			continue
		}
		if entry, ok := strings.CutPrefix(name, k.name+"_"); ok && entry != "" {
			return k, strings.ToLower(entry), true
		}
	}
	return envKey{}, "", false
}

// looksLikeKey reports whether an unknown OZO_ variable was meant for ozo-identity: it lies in a
// section (OZO_EMAIL_SMPT_HOST), or is a typo of a key (OZO_LISTN).
func looksLikeKey(keys []envKey, name string) (bool, string) {
	best, bestDist := "", 3
	for _, k := range keys {
		if d := editDistance(name, k.name, bestDist); d < bestDist {
			best, bestDist = k.name, d
		}
	}
	if bestDist <= 2 && len(name) >= 8 || bestDist <= 1 {
		return true, "; did you mean " + best + "?"
	}
	for _, k := range keys {
		if k.depth == 0 && k.field.Kind() == reflect.Struct && strings.HasPrefix(name, k.name+"_") {
			return true, " (not a key of " + k.path + ")"
		}
		if k.depth == 0 && k.field.Kind() != reflect.Struct && strings.HasPrefix(name, k.name+"_") {
			return true, " (" + k.path + " has no sub-keys)"
		}
	}
	return false, ""
}

// editDistance is the Levenshtein distance of a and b, or limit when it is at least limit.
func editDistance(a, b string, limit int) int {
	if d := len(a) - len(b); d >= limit || -d >= limit {
		return limit
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return min(prev[len(b)], limit)
}

var durationType = reflect.TypeOf(time.Duration(0))

// setValue sets a key from its variable: scalars as text, lists of strings comma-separated or
// as a JSON array, anything structured (maps, lists of objects, sections) as JSON (or YAML).
func setValue(f reflect.Value, raw string) error {
	switch {
	case f.Type() == durationType, f.Kind() == reflect.String, f.Kind() == reflect.Bool,
		f.Kind() == reflect.Int, f.Kind() == reflect.Int64:
		return setScalar(f, raw)
	case f.Kind() == reflect.Slice && f.Type().Elem().Kind() == reflect.String && !strings.HasPrefix(strings.TrimSpace(raw), "["):
		var parts []string
		for _, p := range strings.Split(raw, ",") {
			if p = strings.TrimSpace(p); p != "" {
				parts = append(parts, p)
			}
		}
		f.Set(reflect.ValueOf(parts))
		return nil
	}
	if f.Kind() != reflect.Struct {
		f.Set(reflect.Zero(f.Type())) // a list or map from the environment replaces the file's
	}
	return decodeStructured(f, raw)
}

func decodeStructured(f reflect.Value, raw string) error {
	dec := yaml.NewDecoder(strings.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(f.Addr().Interface()); err != nil {
		if errors.Is(err, io.EOF) {
			return nil
		}
		return fmt.Errorf("not valid JSON for this key: %w", err)
	}
	return nil
}

func setMapEntry(m reflect.Value, entry, raw string) error {
	if m.IsNil() {
		m.Set(reflect.MakeMap(m.Type()))
	}
	v := reflect.New(m.Type().Elem()).Elem()
	if err := setValue(v.Addr().Elem(), raw); err != nil {
		return err
	}
	m.SetMapIndex(reflect.ValueOf(entry).Convert(m.Type().Key()), v)
	return nil
}

func setScalar(f reflect.Value, raw string) error {
	switch {
	case f.Type() == durationType:
		d, err := time.ParseDuration(raw)
		if err != nil {
			return err
		}
		f.SetInt(int64(d))
	case f.Kind() == reflect.String:
		f.SetString(raw)
	case f.Kind() == reflect.Bool:
		b, err := strconv.ParseBool(raw)
		if err != nil {
			return err
		}
		f.SetBool(b)
	case f.Kind() == reflect.Int || f.Kind() == reflect.Int64:
		n, err := strconv.ParseInt(raw, 10, 64)
		if err != nil {
			return err
		}
		f.SetInt(n)
	case f.Kind() == reflect.Float64:
		n, err := strconv.ParseFloat(raw, 64)
		if err != nil {
			return err
		}
		f.SetFloat(n)
	default:
		return fmt.Errorf("cannot be set from the environment")
	}
	return nil
}

// Validate reports settings that cannot work, so a bad config fails at start, not at first use.
func (c *Config) Validate() error {
	var errs []error
	u, err := url.Parse(c.PublicBaseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, fmt.Errorf("public_base_url %q must be an absolute http(s) URL", c.PublicBaseURL))
	} else if c.ServerName == "" {
		c.ServerName = u.Host
	}
	if _, err := ParsePrefixes(c.Homeservers.AllowedNetworks); err != nil {
		errs = append(errs, fmt.Errorf("homeservers.allowed_networks: %w", err))
	}
	for name, pin := range c.Homeservers.PinnedCerts {
		if _, err := ParsePin(pin); err != nil {
			errs = append(errs, fmt.Errorf("homeservers.pinned_certs.%s: %w", name, err))
		}
		if name == "" || strings.ContainsAny(name, "/ ") {
			errs = append(errs, fmt.Errorf("homeservers.pinned_certs: %q is not a server name", name))
		}
	}
	if _, err := ParsePrefixes(c.Directory.AllowedNetworks); err != nil {
		errs = append(errs, fmt.Errorf("directory.allowed_networks: %w", err))
	}
	for _, u := range append(append([]string{c.Directory.LRZAURL}, directoryURLs(c.Directory)...), c.Directory.AllowHTTPURLs...) {
		if u == "" {
			continue
		}
		if pu, err := url.Parse(u); err != nil || (pu.Scheme != "https" && pu.Scheme != "http") || pu.Host == "" {
			errs = append(errs, fmt.Errorf("directory URL %q must be an absolute http(s) URL", u))
		}
	}
	if !(c.Directory.MaxDeleteShare > 0 && c.Directory.MaxDeleteShare <= 1) {
		errs = append(errs, fmt.Errorf("directory.max_delete_share %v must be above 0 and at most 1", c.Directory.MaxDeleteShare))
	}
	if c.Directory.MaxDeleteMin < 1 {
		errs = append(errs, errors.New("directory.max_delete_min must be at least 1"))
	}
	if c.Directory.SyncLeaseTTL < 5*time.Second {
		errs = append(errs, errors.New("directory.sync_lease_ttl must be at least 5s"))
	}
	if c.Invites.OnBindClaimTTL < 4*time.Second || c.Invites.OnBindClaimTTL > time.Hour {
		errs = append(errs, errors.New("invites.onbind_claim_ttl must be between 4s and 1h"))
	}
	if c.Shutdown.Delay < 0 || c.Shutdown.Delay > 5*time.Minute {
		errs = append(errs, errors.New("shutdown.delay must be between 0 and 5m"))
	}
	if c.Shutdown.DrainTimeout < time.Second || c.Shutdown.DrainTimeout > 10*time.Minute {
		errs = append(errs, errors.New("shutdown.drain_timeout must be between 1s and 10m"))
	}
	if c.Audit.LookupInterval < time.Second || c.Audit.LookupInterval > time.Hour {
		errs = append(errs, errors.New("audit.lookup_interval must be between 1s and 1h"))
	}
	if c.Audit.CheckpointInterval < 0 || c.Audit.Retention < 0 {
		errs = append(errs, errors.New("audit.checkpoint_interval and audit.retention must not be negative"))
	}
	if c.Audit.Retention > 0 && c.Audit.Retention < 24*time.Hour {
		errs = append(errs, errors.New("audit.retention must be at least 24h (or 0 to keep every record)"))
	}
	if c.Audit.Push.URL != "" {
		if pu, err := url.Parse(c.Audit.Push.URL); err != nil || pu.Scheme != "https" && pu.Scheme != "http" || pu.Host == "" {
			errs = append(errs, fmt.Errorf("audit.push.url %q must be an absolute http(s) URL", c.Audit.Push.URL))
		}
	}
	if c.Audit.Push.BundleType != "batch" && c.Audit.Push.BundleType != "transaction" {
		errs = append(errs, errors.New("audit.push.bundle_type must be batch or transaction"))
	}
	if c.Audit.Push.BatchSize < 1 || c.Audit.Push.BatchSize > 1000 || c.Audit.Push.Interval < time.Second {
		errs = append(errs, errors.New("audit.push.batch_size must be 1-1000 and audit.push.interval at least 1s"))
	}
	if _, err := ParsePrefixes(c.V1.Networks); err != nil {
		errs = append(errs, fmt.Errorf("v1.networks: %w", err))
	}
	if _, err := ParsePrefixes(c.HTTP.TrustedProxies); err != nil {
		errs = append(errs, fmt.Errorf("http.trusted_proxies: %w", err))
	}
	switch c.Email.SMTP.Security {
	case "", "none", "starttls", "tls":
	default:
		errs = append(errs, fmt.Errorf("email.smtp.security %q must be starttls, tls or none (empty: starttls unless the host is loopback)", c.Email.SMTP.Security))
	}
	for _, loc := range append([]string{c.Invites.WebClientLocation}, c.Invites.WebClientLocations...) {
		if pu, err := url.Parse(loc); err != nil || (pu.Scheme != "https" && pu.Scheme != "http") || pu.Host == "" {
			errs = append(errs, fmt.Errorf("invites web client location %q must be an absolute http(s) URL", loc))
		}
	}
	for _, h := range c.Validation.NextLinkHosts {
		if pu, err := url.Parse("https://" + h); err != nil || pu.Host != h || h == "" {
			errs = append(errs, fmt.Errorf("validation.next_link_hosts: %q must be a host or host:port", h))
		}
	}
	if c.Validation.MaxMailsPerSession <= 0 || c.Validation.MaxMailsPerAddress <= 0 {
		errs = append(errs, errors.New("validation.max_mails_per_session and max_mails_per_address must be positive"))
	}
	if c.Invites.MaxPendingPerThreePID <= 0 || c.Invites.MaxPendingPerSender <= 0 {
		errs = append(errs, errors.New("invites.max_pending_per_threepid and max_pending_per_sender must be positive"))
	}
	if c.Invites.OnBindMaxInvites <= 0 || c.Invites.OnBindMaxBytes < 4096 {
		errs = append(errs, errors.New("invites.onbind_max_invites must be positive and invites.onbind_max_bytes at least 4096"))
	}
	rl := c.RateLimits
	if rl.LookupPerAccount < 0 || rl.LookupPerServer < 0 || rl.DirectoryPerAccount < 0 || rl.PerClient < 0 || rl.AdminFailuresPerClient < 0 {
		errs = append(errs, errors.New("rate_limits must not be negative"))
	}
	if c.Lookup.MaxBatch <= 0 {
		errs = append(errs, errors.New("lookup.max_batch must be positive"))
	}
	if c.Lookup.ReplicaStaleness < 50*time.Millisecond || c.Lookup.ReplicaStaleness > time.Minute {
		errs = append(errs, errors.New("lookup.replica_staleness must be between 50ms and 1m"))
	}
	if c.Lookup.TokenCacheTTL < time.Second || c.Lookup.TokenCacheTTL > time.Hour {
		errs = append(errs, errors.New("lookup.token_cache_ttl must be between 1s and 1h"))
	}
	if c.Lookup.TokenCacheEntries < 0 {
		errs = append(errs, errors.New("lookup.token_cache_entries must not be negative"))
	}
	if c.Database.MaxOpenConns < 0 || c.Database.MaxIdleConns < 0 || c.Database.ConnMaxIdleTime < 0 || c.Database.SQLiteMmapBytes < 0 {
		errs = append(errs, errors.New("database pool settings must not be negative"))
	}
	if c.Database.MaxOpenConns > 0 && c.Database.MaxIdleConns > c.Database.MaxOpenConns {
		errs = append(errs, errors.New("database.max_idle_conns must not exceed database.max_open_conns"))
	}
	if c.HTTP.MaxBodyBytes <= 0 {
		errs = append(errs, errors.New("http.max_body_bytes must be positive"))
	}
	// The listener gives up writing an answer after 60 s; a request may not outlive that.
	if c.HTTP.RequestTimeout < time.Second || c.HTTP.RequestTimeout > 55*time.Second {
		errs = append(errs, errors.New("http.request_timeout must be between 1s and 55s"))
	}
	if c.Validation.MaxFailedAttempts <= 0 {
		errs = append(errs, errors.New("validation.max_failed_attempts must be positive"))
	}
	if err := c.SSO.validate(); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, c.OZOAccounts.validate()...)
	for name, p := range c.Terms.Policies {
		if p.Version == "" || len(p.Languages) == 0 {
			errs = append(errs, fmt.Errorf("terms.policies.%s needs a version and at least one language", name))
		}
		for lang, l := range p.Languages {
			if l.URL == "" {
				errs = append(errs, fmt.Errorf("terms.policies.%s.languages.%s needs a url", name, lang))
			}
		}
	}
	return errors.Join(errs...)
}

func (o OZOAccounts) validate() []error {
	var errs []error
	a := o.Argon2
	// OWASP's equivalent argon2id settings run from m=46 MiB with t=1 to m=7 MiB with t=5:
	// refuse less memory than 7 MiB or less memory × passes than that.
	if a.Iterations < 1 || a.Parallelism < 1 || a.Parallelism > 255 || a.MemoryKiB < 7*1024 ||
		a.MemoryKiB*a.Iterations < 7*1024*5 || a.MemoryKiB > 4<<20 || a.Iterations > 100 {
		errs = append(errs, fmt.Errorf("ozo_accounts.argon2 %+v is weaker than OWASP's recommendation (memory_kib ≥ 7168 and memory_kib × iterations ≥ 35840) or out of range", a))
	}
	if o.MinPasswordLength < 8 {
		errs = append(errs, errors.New("ozo_accounts.min_password_length must be at least 8"))
	}
	if o.ActivationLifetime <= 0 || o.ResetLifetime <= 0 || o.LoginTicketLifetime <= 0 {
		errs = append(errs, errors.New("ozo_accounts lifetimes must be positive"))
	}
	if o.CodeLifetime < 10*time.Second || o.CodeLifetime > 10*time.Minute {
		errs = append(errs, errors.New("ozo_accounts.code_lifetime must be between 10s and 10m"))
	}
	l := o.Lockout
	if l.FreeAttempts < 1 || l.BaseDelay <= 0 || l.MaxDelay < l.BaseDelay || l.Window <= 0 {
		errs = append(errs, errors.New("ozo_accounts.lockout needs free_attempts ≥ 1, base_delay > 0, max_delay ≥ base_delay and window > 0"))
	}
	for _, u := range o.ClientURLs {
		pu, err := url.Parse(u)
		var loopback bool
		if err == nil {
			a, aerr := netip.ParseAddr(pu.Hostname())
			loopback = pu.Hostname() == "localhost" || aerr == nil && a.IsLoopback()
		}
		if err != nil || pu.Host == "" || pu.Fragment != "" || !(pu.Scheme == "https" || pu.Scheme == "http" && loopback) {
			errs = append(errs, fmt.Errorf("ozo_accounts.client_urls: %q must be an absolute https URL without fragment (http only on loopback)", u))
		}
	}
	if h := o.Homeserver; h.ClientURL != "" {
		if pu, err := url.Parse(h.ClientURL); err != nil || (pu.Scheme != "https" && pu.Scheme != "http") || pu.Host == "" {
			errs = append(errs, fmt.Errorf("ozo_accounts.homeserver.client_url %q must be an absolute http(s) URL", h.ClientURL))
		}
		if h.ServerName == "" || h.ASToken == "" {
			errs = append(errs, errors.New("ozo_accounts.homeserver needs server_name and as_token with client_url"))
		}
		if h.UserPrefix == "" || strings.ContainsAny(h.UserPrefix, ":@ ") {
			errs = append(errs, errors.New("ozo_accounts.homeserver.user_prefix must be a non-empty localpart prefix"))
		}
	}
	return errs
}

func directoryURLs(d Directory) []string {
	var out []string
	for _, s := range d.Directories {
		out = append(out, s.URL)
	}
	for _, p := range d.Peers {
		out = append(out, p.URL)
	}
	return out
}

// ParsePrefixes parses CIDRs; a bare address counts as a single-address network.
func ParsePrefixes(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		if !strings.Contains(s, "/") {
			a, err := netip.ParseAddr(s)
			if err != nil {
				return nil, fmt.Errorf("%q is not a CIDR or address", s)
			}
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("%q is not a CIDR: %w", s, err)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// ParsePin reads a certificate pin "sha256/<digest>", the digest in base64 (standard or URL-safe,
// padded or not) or hex: SHA-256 of a DER certificate or of its SubjectPublicKeyInfo.
func ParsePin(s string) ([32]byte, error) {
	var pin [32]byte
	digest, ok := strings.CutPrefix(s, "sha256/")
	if !ok {
		return pin, fmt.Errorf("pin %q must start with sha256/", s)
	}
	var raw []byte
	var err error
	clean := strings.ReplaceAll(digest, ":", "")
	if len(clean) == 64 {
		raw, err = hex.DecodeString(clean)
	} else {
		trimmed := strings.TrimRight(digest, "=")
		if strings.ContainsAny(trimmed, "-_") {
			raw, err = base64.RawURLEncoding.DecodeString(trimmed)
		} else {
			raw, err = base64.RawStdEncoding.DecodeString(trimmed)
		}
	}
	if err != nil || len(raw) != len(pin) {
		return pin, fmt.Errorf("pin %q is not a SHA-256 digest in base64 or hex", s)
	}
	copy(pin[:], raw)
	return pin, nil
}
