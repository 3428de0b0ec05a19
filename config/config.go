// Package config loads ozo-identity's configuration: a YAML file whose every scalar key can be
// overridden by an OZO_* environment variable (nested keys joined by "_", upper-cased).
package config

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"os"
	"reflect"
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
	CAFile          string   `yaml:"ca_file"`
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
}

// RateLimits are per-minute budgets; 0 disables one.
type RateLimits struct {
	LookupPerAccount int `yaml:"lookup_per_account"`
	LookupPerServer  int `yaml:"lookup_per_server"`
	// DirectoryPerAccount bounds homeserver localisation and directory search per account.
	DirectoryPerAccount int `yaml:"directory_per_account"`
	// PerClient bounds register, requestToken and store-invite per client address.
	PerClient int `yaml:"per_client"`
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
	// CORSOrigins lists origins allowed to call from a browser; ["*"] allows all (the default, as the spec expects).
	CORSOrigins []string `yaml:"cors_origins"`
	// TrustedProxies are networks whose X-Forwarded-For is believed for the client address.
	TrustedProxies []string `yaml:"trusted_proxies"`
}

type Lookup struct {
	MaxBatch int `yaml:"max_batch"`
}

type Validation struct {
	// SessionLifetime bounds how long a session may be used, validated or not.
	SessionLifetime time.Duration `yaml:"session_lifetime"`
	// TokenLifetime bounds how long a mailed token works.
	TokenLifetime     time.Duration `yaml:"token_lifetime"`
	MaxFailedAttempts int           `yaml:"max_failed_attempts"`
	// SubmitPage is an HTML template shown by GET submitToken when there is no next_link.
	SubmitPage string `yaml:"submit_page"`
}

type Invites struct {
	Lifetime time.Duration `yaml:"lifetime"`
	// WebClientLocation is the chat client the invite mail links to.
	WebClientLocation string `yaml:"web_client_location"`
	// OnBindRetryFor bounds how long an onbind delivery is retried.
	OnBindRetryFor time.Duration `yaml:"onbind_retry_for"`
}

type Email struct {
	SMTP      SMTP              `yaml:"smtp"`
	From      string            `yaml:"from"`
	Templates map[string]string `yaml:"templates"`
}

type SMTP struct {
	Host string `yaml:"host"`
	Port int    `yaml:"port"`
	// Security is "none", "starttls" or "tls" (implicit TLS).
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
		HTTP:          HTTP{MaxBodyBytes: 64 << 10, CORSOrigins: []string{"*"}},
		Lookup:        Lookup{MaxBatch: 10000},
		Database:      Database{ConnMaxIdleTime: 5 * time.Minute, SQLiteMmapBytes: 256 << 20},
		Validation: Validation{
			SessionLifetime:   24 * time.Hour,
			TokenLifetime:     24 * time.Hour,
			MaxFailedAttempts: 10,
		},
		Invites: Invites{
			Lifetime:          30 * 24 * time.Hour,
			WebClientLocation: "https://app.element.io",
			OnBindRetryFor:    7 * 24 * time.Hour,
		},
		Email:       Email{SMTP: SMTP{Host: "localhost", Port: 25, Security: "none"}, From: "ozo-identity <noreply@localhost>"},
		Homeservers: Homeservers{Timeout: 10 * time.Second},
		RateLimits:  RateLimits{LookupPerAccount: 120, LookupPerServer: 2400, DirectoryPerAccount: 60, PerClient: 60},
		Directory:   Directory{SyncInterval: 15 * time.Minute, Concurrency: 8, RequestTimeout: 30 * time.Second},
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
	vars := map[string]string{}
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok && strings.HasPrefix(k, "OZO_") {
			vars[k] = v
		}
	}
	if err := applyEnv(reflect.ValueOf(&cfg).Elem(), "OZO", vars); err != nil {
		return cfg, err
	}
	for k := range vars {
		if !knownEnv(k) {
			return cfg, fmt.Errorf("unknown configuration variable %s", k)
		}
	}
	return cfg, cfg.Validate()
}

var nonEnvVars = map[string]bool{"OZO_TEST_POSTGRES_URL": true, "OZO_DENDRITE_BIN": true}

func knownEnv(k string) bool {
	if nonEnvVars[k] || strings.HasPrefix(k, "OZO_TEST_") {
		return true
	}
	var cfg Config
	found := false
	walk(reflect.ValueOf(&cfg).Elem(), "OZO", func(name string, _ reflect.Value) {
		if name == k {
			found = true
		}
	})
	return found
}

func walk(v reflect.Value, prefix string, fn func(name string, field reflect.Value)) {
	t := v.Type()
	for i := range t.NumField() {
		tag := strings.Split(t.Field(i).Tag.Get("yaml"), ",")[0]
		if tag == "" || tag == "-" {
			continue
		}
		name := prefix + "_" + strings.ToUpper(tag)
		f := v.Field(i)
		if f.Kind() == reflect.Struct {
			walk(f, name, fn)
			continue
		}
		fn(name, f)
	}
}

var durationType = reflect.TypeOf(time.Duration(0))

func applyEnv(v reflect.Value, prefix string, vars map[string]string) error {
	var firstErr error
	walk(v, prefix, func(name string, f reflect.Value) {
		raw, ok := vars[name]
		if !ok || firstErr != nil {
			return
		}
		if err := setScalar(f, raw); err != nil {
			firstErr = fmt.Errorf("%s: %w", name, err)
		}
	})
	return firstErr
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
	case f.Kind() == reflect.Slice && f.Type().Elem().Kind() == reflect.String:
		var parts []string
		for _, p := range strings.Split(raw, ",") {
			if p = strings.TrimSpace(p); p != "" {
				parts = append(parts, p)
			}
		}
		f.Set(reflect.ValueOf(parts))
	default:
		return fmt.Errorf("cannot be set from the environment; use the config file")
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
	if _, err := ParsePrefixes(c.Directory.AllowedNetworks); err != nil {
		errs = append(errs, fmt.Errorf("directory.allowed_networks: %w", err))
	}
	for _, u := range append([]string{c.Directory.LRZAURL}, directoryURLs(c.Directory)...) {
		if u == "" {
			continue
		}
		if pu, err := url.Parse(u); err != nil || (pu.Scheme != "https" && pu.Scheme != "http") || pu.Host == "" {
			errs = append(errs, fmt.Errorf("directory URL %q must be an absolute http(s) URL", u))
		}
	}
	if _, err := ParsePrefixes(c.V1.Networks); err != nil {
		errs = append(errs, fmt.Errorf("v1.networks: %w", err))
	}
	if _, err := ParsePrefixes(c.HTTP.TrustedProxies); err != nil {
		errs = append(errs, fmt.Errorf("http.trusted_proxies: %w", err))
	}
	switch c.Email.SMTP.Security {
	case "none", "starttls", "tls":
	default:
		errs = append(errs, fmt.Errorf("email.smtp.security %q must be none, starttls or tls", c.Email.SMTP.Security))
	}
	if c.Lookup.MaxBatch <= 0 {
		errs = append(errs, errors.New("lookup.max_batch must be positive"))
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
	if c.Validation.MaxFailedAttempts <= 0 {
		errs = append(errs, errors.New("validation.max_failed_attempts must be positive"))
	}
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
