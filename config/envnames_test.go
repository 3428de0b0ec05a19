package config

import "testing"

func TestIsEnvKey(t *testing.T) {
	for name, want := range map[string]bool{
		"OZO_EMAIL_SMTP_HOST":        true,
		"OZO_EMAIL":                  true, // a section, as JSON
		"OZO_EMAIL_TEMPLATES_INVITE": true, // an entry of a map
		"OZO_LISTEN":                 true,
		"OZO_FOO_BAR":                false, // Load ignores it: a deployment's own
		"OZO_LISTN":                  false,
		"OZO_IMAGE":                  false,
		"LISTEN":                     false,
	} {
		if got := IsEnvKey(name); got != want {
			t.Errorf("IsEnvKey(%s) = %v, want %v", name, got, want)
		}
	}
}
