package config

// IsEnvKey reports whether name (OZO_EMAIL_SMTP_HOST) sets a configuration key, a section or an
// entry of a map; deployment files are checked with it, since Load ignores OZO_ variables that
// do not look like ours.
func IsEnvKey(name string) bool {
	var cfg Config
	keys := envKeys(&cfg)
	for _, k := range keys {
		if k.name == name {
			return true
		}
	}
	_, _, ok := mapEntryKey(keys, name)
	return ok
}
