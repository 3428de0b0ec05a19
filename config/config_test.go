package config

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestExampleConfigLoads(t *testing.T) {
	cfg, err := Load("../ozo-identity.example.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ServerName != "id.zorg.example.nl" || cfg.Validation.TokenLifetime != 24*time.Hour {
		t.Fatalf("example config: %+v", cfg)
	}
}

func TestDefaultsWithoutFile(t *testing.T) {
	cfg, err := Load("", nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != ":8090" || cfg.DataDir != "./data" || cfg.V1.Enabled || len(cfg.Homeservers.Allowed) != 0 {
		t.Fatalf("defaults: %+v", cfg)
	}
}

// Naming only a remote SMTP host must not mean mail in clear: security stays empty, which the
// mailer turns into STARTTLS required for any host but loopback (email.TestRemoteHostRequiresVerifiedTLS).
func TestSMTPSecurityNotPlainByDefault(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(path, []byte("email:\n  smtp:\n    host: mail.zorg.example.nl\n"), 0o600)
	cfg, err := Load(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Email.SMTP.Security != "" || cfg.Email.SMTP.Port != 0 {
		t.Fatalf("smtp security %q port %d, want empty (starttls for remote hosts) and 0", cfg.Email.SMTP.Security, cfg.Email.SMTP.Port)
	}
}

func TestEnvironmentOverridesFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(path, []byte("listen: \":1\"\ndatabase:\n  url: postgres://file\nv1:\n  enabled: false\n"), 0o600)
	cfg, err := Load(path, []string{"OZO_LISTEN=:2", "OZO_DATABASE_URL=postgres://env", "OZO_V1_ENABLED=true",
		"OZO_V1_NETWORKS=10.0.0.0/8, 127.0.0.1", "OZO_VALIDATION_TOKEN_LIFETIME=5m", "PATH=/bin"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != ":2" || cfg.Database.URL != "postgres://env" || !cfg.V1.Enabled ||
		!slices.Equal(cfg.V1.Networks, []string{"10.0.0.0/8", "127.0.0.1"}) || cfg.Validation.TokenLifetime != 5*time.Minute {
		t.Fatalf("env overrides: %+v", cfg)
	}
}

func TestBadConfigFailsAtLoad(t *testing.T) {
	dir := t.TempDir()
	cases := map[string]string{
		"unknown key":     "lisen: \":1\"\n",
		"bad cidr":        "v1:\n  networks: [\"10.0.0.0/33\"]\n",
		"bad security":    "email:\n  smtp:\n    security: ssl\n",
		"next_link url":   "validation:\n  next_link_hosts: [\"https://app.example\"]\n",
		"web client":      "invites:\n  web_client_locations: [\"app.example\"]\n",
		"no invite cap":   "invites:\n  max_pending_per_threepid: 0\n",
		"no mail cap":     "validation:\n  max_mails_per_address: 0\n",
		"tiny onbind":     "invites:\n  onbind_max_bytes: 100\n",
		"relative url":    "public_base_url: /id\n",
		"http exception":  "directory:\n  allow_http_urls: [\"mcsd.example.nl/fhir\"]\n",
		"policy, no url":  "terms:\n  policies:\n    p:\n      version: \"1\"\n      languages:\n        nl: {name: x}\n",
		"not yaml at all": "{{{",
		"no deadline":     "http:\n  request_timeout: 0s\n",
		"past the writer": "http:\n  request_timeout: 2m\n",
	}
	for name, body := range cases {
		path := filepath.Join(dir, strings.ReplaceAll(name, " ", "_")+".yaml")
		os.WriteFile(path, []byte(body), 0o600)
		if _, err := Load(path, nil); err == nil {
			t.Errorf("%s: loaded without error", name)
		}
	}
	if _, err := Load("", []string{"OZO_LISTN=:1"}); err == nil {
		t.Error("a misspelt OZO_ variable was ignored")
	}
	if _, err := Load("", []string{"OZO_LOOKUP_MAX_BATCH=many"}); err == nil {
		t.Error("a non-number was accepted")
	}
}

// The trust defaults: lookups budgeted per address, wrong admin tokens limited, one Redis key prefix.
func TestTrustDefaultsAndOverrides(t *testing.T) {
	cfg, err := Load("", nil)
	if err != nil {
		t.Fatal(err)
	}
	rl := cfg.RateLimits
	if rl.LookupPerAccount != 300 || rl.LookupPerServer != 3000 || rl.PerClient != 60 || rl.AdminFailuresPerClient != 10 ||
		cfg.Redis.KeyPrefix != "ozo-identity:" {
		t.Fatalf("defaults: %+v %+v", rl, cfg.Redis)
	}
	cfg, err = Load("", []string{"OZO_RATE_LIMITS_ADMIN_FAILURES_PER_CLIENT=3", "OZO_REDIS_KEY_PREFIX=svc-a:"})
	if err != nil || cfg.RateLimits.AdminFailuresPerClient != 3 || cfg.Redis.KeyPrefix != "svc-a:" {
		t.Fatalf("overrides: %v %+v", err, cfg)
	}
	if _, err := Load("", []string{"OZO_RATE_LIMITS_LOOKUP_PER_ACCOUNT=-1"}); err == nil {
		t.Fatal("a negative budget was accepted")
	}
}
