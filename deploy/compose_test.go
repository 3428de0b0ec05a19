// Package deploy holds the files operators deploy with (docker-compose.yml at the top level,
// the Caddyfile, the example secrets); its test checks them with Docker Compose's own loader.
package deploy

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"

	"github.com/ozo-platform/ozo-identity/config"
)

// loadCompose loads ../docker-compose.yml as `docker compose config` would, with the variables
// of .env.example, and the secret files of deploy/secrets created from their examples.
func loadCompose(t *testing.T) *types.Project {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	env := readEnvFile(t, filepath.Join(root, ".env.example"))
	opts, err := cli.NewProjectOptions([]string{filepath.Join(root, "docker-compose.yml")},
		cli.WithWorkingDirectory(root), cli.WithEnv(env), cli.WithName("ozo-identity"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := opts.LoadProject(context.Background())
	if err != nil {
		t.Fatalf("load docker-compose.yml: %v", err)
	}
	return p
}

func readEnvFile(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var env []string
	for _, line := range strings.Split(string(data), "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			env = append(env, line)
		}
	}
	return env
}

// replicas are the services that run ozo-identity serve.
func replicas(p *types.Project) []types.ServiceConfig {
	var out []types.ServiceConfig
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for n := range p.Services {
			if !yield(n) {
				return
			}
		}
	}) {
		s := p.Services[name]
		if len(s.Command) > 0 && s.Command[0] == "serve" {
			out = append(out, s)
		}
	}
	return out
}

func serviceEnv(s types.ServiceConfig) []string {
	var env []string
	for k, v := range s.Environment {
		val := ""
		if v != nil {
			val = *v
		}
		env = append(env, k+"="+val)
	}
	slices.Sort(env)
	return env
}

func TestComposeParsesWithTwoReplicas(t *testing.T) {
	p := loadCompose(t)
	rs := replicas(p)
	if len(rs) < 2 {
		t.Fatalf("%d ozo-identity replicas, want at least 2", len(rs))
	}
	for _, want := range []string{"caddy", "postgres", "redis", "dendrite", "mailpit"} {
		if _, ok := p.Services[want]; !ok {
			t.Errorf("service %s missing", want)
		}
	}
	// The proxy terminates TLS on 443 and balances over every replica.
	caddyfile, err := os.ReadFile("Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if !strings.Contains(string(caddyfile), r.Name+":8090") {
			t.Errorf("Caddyfile does not proxy to %s:8090", r.Name)
		}
		if !r.ReadOnly {
			t.Errorf("%s: root filesystem not read-only", r.Name)
		}
		if r.StopGracePeriod == nil {
			t.Errorf("%s: no stop_grace_period for the graceful shutdown", r.Name)
		}
	}
	if !slices.ContainsFunc(p.Services["caddy"].Ports, func(pc types.ServicePortConfig) bool { return pc.Target == 443 }) {
		t.Error("caddy does not publish 443")
	}
}

// Every OZO_ variable names a key of config (Load alone would ignore a variable that does not
// look like one of ours), and the variables with the secret file make a valid configuration.
func TestComposeOZOVariablesAreConfigKeys(t *testing.T) {
	p := loadCompose(t)
	for name, s := range p.Services {
		for k := range s.Environment {
			if strings.HasPrefix(k, "OZO_") && !config.IsEnvKey(k) {
				t.Errorf("%s: %s is not a configuration key", name, k)
			}
		}
	}
	raw, err := os.ReadFile("../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	// Interpolated variables count too: none of ours may be read from the operator's shell by compose.
	for _, m := range regexp.MustCompile(`\$\{(OZO_[A-Z0-9_]+)`).FindAllStringSubmatch(string(raw), -1) {
		t.Errorf("docker-compose.yml interpolates %s: configuration belongs in environment:", m[1])
	}
	for _, r := range replicas(p) {
		env := serviceEnv(r)
		if len(env) < 10 {
			t.Errorf("%s: only %d variables", r.Name, len(env))
		}
		cfg, err := config.Load("secrets/ozo-identity.yaml.example", env)
		if err != nil {
			t.Fatalf("%s: config.Load with its environment and the example secrets: %v", r.Name, err)
		}
		// What a replica sharing PostgreSQL and Redis needs; SQLite or memory limits would split the service.
		if !strings.HasPrefix(cfg.Database.URL, "postgres://") || cfg.Redis.URL == "" || cfg.Admin.Token == "" {
			t.Errorf("%s: database %q, redis %q, admin token set %v", r.Name, cfg.Database.URL, cfg.Redis.URL, cfg.Admin.Token != "")
		}
		if cfg.DataDir != "/data" || cfg.LogFormat != "json" || cfg.MetricsListen == "" || len(cfg.HTTP.TrustedProxies) == 0 {
			t.Errorf("%s: data_dir %q log_format %q metrics_listen %q trusted_proxies %v", r.Name, cfg.DataDir,
				cfg.LogFormat, cfg.MetricsListen, cfg.HTTP.TrustedProxies)
		}
		if !strings.HasPrefix(cfg.PublicBaseURL, "https://") {
			t.Errorf("%s: public_base_url %q is not https", r.Name, cfg.PublicBaseURL)
		}
	}
}

// Compose starts a replica only once what it depends on is healthy: each of those has a health
// check and is waited for with service_healthy, and so do the replicas for the proxy.
func TestComposeDependenciesHaveHealthChecks(t *testing.T) {
	p := loadCompose(t)
	seen := map[string]bool{}
	var check func(name string)
	check = func(name string) {
		s := p.Services[name]
		for dep, d := range s.DependsOn {
			if d.Condition != types.ServiceConditionHealthy {
				t.Errorf("%s waits for %s with %q, want service_healthy", name, dep, d.Condition)
			}
			ds, ok := p.Services[dep]
			if !ok {
				t.Errorf("%s depends on unknown %s", name, dep)
				continue
			}
			if ds.HealthCheck == nil || ds.HealthCheck.Disable || len(ds.HealthCheck.Test) < 2 {
				t.Errorf("%s has no health check, yet %s depends on it", dep, name)
			}
			if !seen[dep] {
				seen[dep] = true
				check(dep)
			}
		}
	}
	for _, r := range replicas(p) {
		for _, want := range []string{"postgres", "redis"} {
			if _, ok := r.DependsOn[want]; !ok {
				t.Errorf("%s does not wait for %s", r.Name, want)
			}
		}
		check(r.Name)
	}
	check("caddy")
	if len(seen) < 5 {
		t.Errorf("only %d services depended on: %v", len(seen), seen)
	}
}

var (
	secretName = regexp.MustCompile(`(?i)(password|passwd|token|secret|private|_key$|apikey|credential)`)
	// userinfo with a password in a URL, or a long run of key-like characters.
	secretValue = regexp.MustCompile(`://[^/@\s]*:[^/@\s]+@|[A-Za-z0-9+/_=-]{32,}`)
)

// No secret is written in docker-compose.yml: variables named like secrets point at files, no
// value looks like a password or token, and the configuration keys that hold secrets come from
// the secret file.
func TestComposeInlinesNoSecret(t *testing.T) {
	p := loadCompose(t)
	for name, s := range p.Services {
		for k, v := range s.Environment {
			val := ""
			if v != nil {
				val = *v
			}
			if secretName.MatchString(k) && !strings.HasSuffix(k, "_FILE") {
				t.Errorf("%s: %s=%q is a secret in the environment; use a secret file", name, k, val)
			}
			if secretValue.MatchString(val) {
				t.Errorf("%s: %s=%q looks like a secret", name, k, val)
			}
		}
		for _, arg := range s.Command {
			if secretValue.MatchString(arg) {
				t.Errorf("%s: command argument %q looks like a secret", name, arg)
			}
		}
	}
	for _, key := range []string{"database.url", "redis.url", "admin.token", "email.smtp.password", "directory.peers"} {
		for _, r := range replicas(p) {
			if _, ok := r.Environment[config.EnvName(key)]; ok {
				t.Errorf("%s: %s set in the environment; it holds a secret", r.Name, config.EnvName(key))
			}
		}
	}
	for name, sec := range p.Secrets {
		if sec.File == "" || sec.Content != "" || sec.Environment != "" {
			t.Errorf("secret %s is not read from a file", name)
		}
	}
}

// The health checks that act on a replica (Docker's, which Docker-label proxies and Swarm act on,
// and Caddy's active check) leave Redis out: every replica shares it, so taking them out over it
// turns per-replica rate limits into an outage. The stop grace period covers the shutdown delay
// (longer than Caddy's probe interval, so Caddy notices first) and the drain.
func TestComposeHealthAndShutdown(t *testing.T) {
	p := loadCompose(t)
	caddyfile, err := os.ReadFile("Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	uri := regexp.MustCompile(`(?m)^\s*health_uri\s+(\S+)`).FindSubmatch(caddyfile)
	if uri == nil || string(uri[1]) != "/readyz?exclude=redis" {
		t.Errorf("Caddy's health_uri is %q, want /readyz?exclude=redis", uri)
	}
	interval := regexp.MustCompile(`(?m)^\s*health_interval\s+(\S+)`).FindSubmatch(caddyfile)
	if interval == nil {
		t.Fatal("Caddyfile sets no health_interval")
	}
	probe, err := time.ParseDuration(string(interval[1]))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range replicas(p) {
		test := strings.Join(r.HealthCheck.Test, " ")
		if !strings.Contains(test, "healthcheck --url http://127.0.0.1:9090/readyz?exclude=redis") {
			t.Errorf("%s: health check %q does not ask /readyz?exclude=redis", r.Name, test)
		}
		var env []string
		for k, v := range r.Environment {
			if v != nil {
				env = append(env, k+"="+*v)
			}
		}
		cfg, err := config.Load("", env)
		if err != nil {
			t.Fatalf("%s: %v", r.Name, err)
		}
		if cfg.Shutdown.Delay <= probe {
			t.Errorf("%s: shutdown.delay %s is not longer than Caddy's health_interval %s", r.Name, cfg.Shutdown.Delay, probe)
		}
		if r.StopGracePeriod == nil || time.Duration(*r.StopGracePeriod) < cfg.Shutdown.Delay+cfg.Shutdown.DrainTimeout+2*time.Second {
			t.Errorf("%s: stop_grace_period %v does not cover shutdown.delay %s + drain_timeout %s", r.Name, r.StopGracePeriod,
				cfg.Shutdown.Delay, cfg.Shutdown.DrainTimeout)
		}
	}
}
