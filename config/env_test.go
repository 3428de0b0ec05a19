package config

import (
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"
)

// envSamples are valid values for keys that Validate checks; every other key gets a generated one.
var envSamples = map[string]string{
	"public_base_url":              "https://id.env.example",
	"email.smtp.security":          "tls",
	"homeservers.allowed_networks": "10.7.0.0/16, 192.0.2.7",
	"directory.allowed_networks":   `["10.8.0.0/16"]`,
	"v1.networks":                  "10.9.0.0/16",
	"http.trusted_proxies":         "192.0.2.1",
	"http.request_timeout":         "47s",
	"directory.lrza_url":           "https://lrza.env.example/fhir",
	"directory.directories":        `[{"url": "https://provider.env.example/fhir", "uras": ["12345678", "87654321"]}]`,
	"directory.peers":              `[{"url": "https://peer.env.example", "token": "peer-token"}]`,
	"directory.allow_http_urls":    "http://plain.env.example/fhir,http://plain2.env.example/fhir",
	"invites.web_client_location":  "https://chat.env.example",
	"invites.web_client_locations": "https://chat.env.example,https://chat2.env.example",
	"invites.onbind_max_bytes":     "8192",
	"shutdown.delay":               "6s",
	"audit.retention":              "2160h",
	"audit.lookup_interval":        "30s",
	"lookup.replica_staleness":     "250ms",
	"lookup.token_cache_ttl":       "30s",
	"audit.push.url":               "https://arr.env.example/fhir",
	"audit.push.bundle_type":       "transaction",
	"audit.push.interval":          "10s",
	"sso.login_lifetime":           "7m",
	"sso.idps": `[{"id": "umcx", "name": "UMC X", "type": "saml", "uras": ["17004512"], "saml": {"metadata_url": "https://idp.env.example/metadata"}},
		{"id": "dezi", "type": "dezi", "dezi": {"issuer": "https://dezi.env.example", "client_id": "c", "decryption_key_file": "/k.pem", "jku_allow_list": ["https://dezi.env.example/keys/"]}}]`,
	"sso.onboarding.redirect_uris": "https://app.env.example/onboarded,nl.ozo.app:/onboarded",
	"sso.onboarding.code_lifetime": "45s",
	"sso.onboarding.homeservers": `[{"server_name": "hs2.env.example", "client_url": "https://matrix.hs2.env.example", "as_token_file": "/run/secrets/as",
		"user_prefix": "zv_", "localpart": "uzi"}]`,
	"ozo_accounts.argon2.memory_kib":     "47104",
	"ozo_accounts.argon2.iterations":     "1",
	"ozo_accounts.argon2.parallelism":    "1",
	"ozo_accounts.min_password_length":   "14",
	"ozo_accounts.homeserver.client_url": "https://hs.env.example",
	"ozo_accounts.client_urls":           "https://app.env.example/login-done,http://127.0.0.1:9/cb",
	"ozo_accounts.code_lifetime":         "90s",
	"homeservers.pinned_certs":           `{"hs.env.example:8448": "sha256/2b4c342f5433ebe591a1da77e013d1b72475562d48578dca8b84bac6651c3cb9"}`,
	"terms.policies": `{"privacy_policy": {"version": "3.0", "languages": {"nl": {"name": "Privacy", "url": "https://env.example/privacy-nl"}}},
		"terms_of_service": {"version": "1", "languages": {"en": {"name": "Terms", "url": "https://env.example/terms"}}}}`,
}

// TestEveryKeyFromEnvironment sets every key of Config (found through its yaml tags, so a key
// added later is covered) and every key the README's configuration table documents from OZO_*
// variables alone, and checks each arrived.
func TestEveryKeyFromEnvironment(t *testing.T) {
	var probe Config
	type want struct {
		path  string
		value reflect.Value
		get   func(c *Config) reflect.Value
	}
	var env []string
	var wants []want
	for _, k := range envKeys(&probe) {
		if k.field.Kind() == reflect.Struct && k.field.Type() != durationType {
			continue // sections: their keys are set one by one
		}
		raw, value := sampleFor(t, k.path, k.field.Type())
		env = append(env, k.name+"="+raw)
		wants = append(wants, want{k.path, value, fieldGetter(k.path)})
	}
	// Map entries the README documents (email.templates.invite) are set as single entries.
	for _, path := range readmeKeys(t) {
		getter, mapKey := resolve(t, path)
		if mapKey == "" {
			continue
		}
		raw := "/etc/ozo/" + mapKey
		env = append(env, EnvName(path)+"="+raw)
		wants = append(wants, want{path, reflect.ValueOf(raw), func(c *Config) reflect.Value { return getter(c).MapIndex(reflect.ValueOf(mapKey)) }})
	}
	// A deployment's own variables next to them.
	env = append(env, "OZO_FOO_BAR=1", "OZO_DEPLOY_COLOUR=blue", "OZO_TEST_POSTGRES_URL=postgres://x", "PATH=/bin")

	cfg, err := Load("", env)
	if err != nil {
		t.Fatalf("load from the environment: %v\n%s", err, strings.Join(env, "\n"))
	}
	for _, w := range wants {
		got := w.get(&cfg)
		if got.IsValid() && w.value.Kind() == reflect.Map {
			// Single entries of the same map were set too: the whole map's entries must be there.
			for _, k := range w.value.MapKeys() {
				if e := got.MapIndex(k); !e.IsValid() || !reflect.DeepEqual(e.Interface(), w.value.MapIndex(k).Interface()) {
					t.Errorf("%s (%s): entry %v: got %#v, want %#v", w.path, EnvName(w.path), k, e, w.value.MapIndex(k))
				}
			}
			continue
		}
		if !got.IsValid() || !reflect.DeepEqual(got.Interface(), w.value.Interface()) {
			t.Errorf("%s (%s): got %#v, want %#v", w.path, EnvName(w.path), got, w.value)
		}
	}
}

// TestReadmeKeysExist: every key the README documents is a key of Config (or an entry of a map
// key), so the table cannot name keys that do not exist.
func TestReadmeKeysExist(t *testing.T) {
	keys := readmeKeys(t)
	if len(keys) < 20 {
		t.Fatalf("only %d keys found in the README table: %v", len(keys), keys)
	}
	for _, k := range keys {
		resolve(t, k)
	}
}

func TestEnvironmentRules(t *testing.T) {
	cases := map[string]struct {
		env []string
		ok  bool
	}{
		"deployment variables ignored": {[]string{"OZO_FOO_BAR=x", "OZO_APP_VERSION=3", "OZO_DENDRITE_BIN=/x"}, true},
		"typo of a key":                {[]string{"OZO_LISTN=:1"}, false},
		"typo in a section":            {[]string{"OZO_EMAIL_SMPT_HOST=mail"}, false},
		"unknown key in a section":     {[]string{"OZO_RATE_LIMITS_PER_PLANET=3"}, false},
		"sub-key of a scalar":          {[]string{"OZO_LOG_LEVEL_X=debug"}, false},
		"bad JSON":                     {[]string{`OZO_TERMS_POLICIES={"p": `}, false},
		"unknown field in JSON":        {[]string{`OZO_DIRECTORY_PEERS=[{"url": "https://p.example", "tokn": "x"}]`}, false},
		"wrong type":                   {[]string{"OZO_LOOKUP_MAX_BATCH=many"}, false},
		"invalid after load":           {[]string{`OZO_HOMESERVERS_PINNED_CERTS={"hs": "md5/abc"}`}, false},
	}
	for name, tc := range cases {
		_, err := Load("", tc.env)
		if tc.ok && err != nil {
			t.Errorf("%s: %v", name, err)
		}
		if !tc.ok && err == nil {
			t.Errorf("%s: loaded without error", name)
		}
	}
}

// TestEnvironmentOverridesSections: a section as JSON keeps the defaults it does not name, a key
// inside it set on its own wins over it, and a list or map from the environment replaces the file's.
func TestEnvironmentOverridesSections(t *testing.T) {
	path := t.TempDir() + "/c.yaml"
	os.WriteFile(path, []byte("email:\n  templates:\n    validation: /file/validation\n    invite: /file/invite\n"), 0o600)
	cfg, err := Load(path, []string{`OZO_HOMESERVERS={"allowed": ["hs.example"], "ca_file": "/ca.pem"}`,
		"OZO_HOMESERVERS_CA_FILE=/other.pem", `OZO_EMAIL_TEMPLATES={"invite": "/env/invite"}`, "OZO_EMAIL_TEMPLATES_VALIDATION=/env/validation"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Homeservers.Timeout != 10*time.Second || cfg.Homeservers.CAFile != "/other.pem" || len(cfg.Homeservers.Allowed) != 1 {
		t.Fatalf("homeservers: %+v", cfg.Homeservers)
	}
	if !reflect.DeepEqual(cfg.Email.Templates, map[string]string{"invite": "/env/invite", "validation": "/env/validation"}) {
		t.Fatalf("templates: %v", cfg.Email.Templates)
	}
}

func TestParsePin(t *testing.T) {
	hexPin := "sha256/2b4c342f5433ebe591a1da77e013d1b72475562d48578dca8b84bac6651c3cb9"
	want, err := ParsePin(hexPin)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"sha256/K0w0L1Qz6+WRodp34BPRtyR1Vi1IV43Ki4S6xmUcPLk=", "sha256/K0w0L1Qz6-WRodp34BPRtyR1Vi1IV43Ki4S6xmUcPLk",
		"sha256/2B:4C:34:2F:54:33:EB:E5:91:A1:DA:77:E0:13:D1:B7:24:75:56:2D:48:57:8D:CA:8B:84:BA:C6:65:1C:3C:B9"} {
		if got, err := ParsePin(s); err != nil || got != want {
			t.Errorf("%s: %x %v", s, got, err)
		}
	}
	for _, s := range []string{"", "2b4c342f", "sha1/K0w0L1Qz6+WRodp34BPRtyR1Vi1IV43Ki4S6xmUcPLk=", "sha256/abcd", "sha256/!!"} {
		if _, err := ParsePin(s); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
}

// sampleFor returns a value for a key as its variable holds it, and the value Load must produce.
func sampleFor(t *testing.T, path string, typ reflect.Type) (string, reflect.Value) {
	t.Helper()
	if raw, ok := envSamples[path]; ok {
		v := reflect.New(typ).Elem()
		if err := setValue(v, raw); err != nil {
			t.Fatalf("sample for %s: %v", path, err)
		}
		return raw, v
	}
	v := sampleValue(path, typ)
	switch {
	case typ == durationType, typ.Kind() == reflect.String, typ.Kind() == reflect.Bool, typ.Kind() == reflect.Int, typ.Kind() == reflect.Int64, typ.Kind() == reflect.Float64:
		return fmt.Sprint(v.Interface()), v
	case typ.Kind() == reflect.Slice && typ.Elem().Kind() == reflect.String:
		return strings.Join(v.Interface().([]string), ","), v
	}
	data, err := json.Marshal(asYAMLShaped(v))
	if err != nil {
		t.Fatal(err)
	}
	return string(data), v
}

// sampleValue builds a non-default value of typ, distinct per key.
func sampleValue(path string, typ reflect.Type) reflect.Value {
	v := reflect.New(typ).Elem()
	switch {
	case typ == durationType:
		v.SetInt(int64(7 * time.Minute))
	case typ.Kind() == reflect.String:
		v.SetString("env-" + strings.ReplaceAll(path, ".", "-"))
	case typ.Kind() == reflect.Bool:
		v.SetBool(true)
	case typ.Kind() == reflect.Int, typ.Kind() == reflect.Int64:
		v.SetInt(7)
	case typ.Kind() == reflect.Float64:
		v.SetFloat(0.7)
	case typ.Kind() == reflect.Slice:
		v.Set(reflect.MakeSlice(typ, 0, 2))
		for i := range 2 {
			v.Set(reflect.Append(v, sampleValue(fmt.Sprintf("%s.%d", path, i), typ.Elem())))
		}
	case typ.Kind() == reflect.Map:
		v.Set(reflect.MakeMap(typ))
		v.SetMapIndex(reflect.ValueOf("entry").Convert(typ.Key()), sampleValue(path+".entry", typ.Elem()))
	case typ.Kind() == reflect.Struct:
		for i := range typ.NumField() {
			tag := strings.Split(typ.Field(i).Tag.Get("yaml"), ",")[0]
			if tag != "" && tag != "-" {
				v.Field(i).Set(sampleValue(path+"."+tag, typ.Field(i).Type))
			}
		}
	}
	return v
}

// asYAMLShaped turns a value into maps keyed by yaml tags, for JSON the decoder reads back.
func asYAMLShaped(v reflect.Value) any {
	switch {
	case v.Type() == durationType:
		return time.Duration(v.Int()).String()
	case v.Kind() == reflect.Slice:
		out := []any{}
		for i := range v.Len() {
			out = append(out, asYAMLShaped(v.Index(i)))
		}
		return out
	case v.Kind() == reflect.Map:
		out := map[string]any{}
		for _, k := range v.MapKeys() {
			out[k.String()] = asYAMLShaped(v.MapIndex(k))
		}
		return out
	case v.Kind() == reflect.Struct:
		out := map[string]any{}
		for i := range v.NumField() {
			tag := strings.Split(v.Type().Field(i).Tag.Get("yaml"), ",")[0]
			if tag != "" && tag != "-" {
				out[tag] = asYAMLShaped(v.Field(i))
			}
		}
		return out
	}
	return v.Interface()
}

// fieldGetter returns the field at a key path of a Config.
func fieldGetter(path string) func(c *Config) reflect.Value {
	return func(c *Config) reflect.Value {
		for _, k := range envKeys(c) {
			if k.path == path {
				return k.field
			}
		}
		return reflect.Value{}
	}
}

var readmeRow = regexp.MustCompile("^\\| (`[^|]*`) \\|")
var backticked = regexp.MustCompile("`([^`]+)`")

// readmeKeys lists the keys in the README's configuration table, `x.*` expanded to x's keys and
// `.invite` read relative to the key before it.
func readmeKeys(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, _ := strings.Cut(string(data), "\n## Configuration")
	section, _, _ = strings.Cut(section, "\n## ")
	var probe Config
	all := envKeys(&probe)
	var keys []string
	for _, line := range strings.Split(section, "\n") {
		m := readmeRow.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		prev := ""
		for _, b := range backticked.FindAllStringSubmatch(m[1], -1) {
			k := b[1]
			if strings.HasPrefix(k, ".") && prev != "" {
				k = prev[:strings.LastIndex(prev, ".")] + k
			}
			prev = k
			if parent, ok := strings.CutSuffix(k, ".*"); ok {
				for _, c := range all {
					if strings.HasPrefix(c.path, parent+".") && c.field.Kind() != reflect.Struct {
						keys = append(keys, c.path)
					}
				}
				continue
			}
			keys = append(keys, k)
		}
	}
	return keys
}

// resolve finds a documented key: a key of Config, or an entry of a map key (then mapKey is set).
func resolve(t *testing.T, path string) (get func(c *Config) reflect.Value, mapKey string) {
	t.Helper()
	var probe Config
	for _, k := range envKeys(&probe) {
		if k.path == path {
			return fieldGetter(path), ""
		}
		if k.field.Kind() == reflect.Map {
			if entry, ok := strings.CutPrefix(path, k.path+"."); ok && !strings.Contains(entry, ".") {
				return fieldGetter(k.path), entry
			}
		}
	}
	t.Fatalf("the README documents %q, which is no configuration key", path)
	return nil, ""
}
