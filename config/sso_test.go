package config

import (
	"strings"
	"testing"
)

func TestSSOValidate(t *testing.T) {
	good := func() Config {
		c := Defaults()
		c.SSO.IdPs = []IdP{
			{ID: "umcx", Type: "saml", URAs: []string{"17004512"}, SAML: SAMLIdP{MetadataURL: "https://idp.example/metadata"}},
			{ID: "zkh", Type: "oidc", OIDC: OIDCIdP{Issuer: "https://op.example", ClientID: "c"}},
			{ID: "dezi", Type: "dezi", Dezi: DeziIdP{Issuer: "https://dezi.example", ClientID: "c", DecryptionKeyFile: "/k",
				JKUAllowList: []string{"https://dezi.example/keys/"}}},
		}
		return c
	}
	if c := good(); c.Validate() != nil {
		t.Fatalf("valid configuration refused: %v", c.Validate())
	}
	for name, tc := range map[string]struct {
		edit func(*Config)
		want string
	}{
		"type":               {func(c *Config) { c.SSO.IdPs[0].Type = "cas" }, "must be saml, oidc or dezi"},
		"id":                 {func(c *Config) { c.SSO.IdPs[0].ID = "UMC:X" }, "id must be"},
		"duplicate":          {func(c *Config) { c.SSO.IdPs[1].ID = "umcx" }, "used twice"},
		"ura":                {func(c *Config) { c.SSO.IdPs[0].URAs = []string{"1234"} }, "not 8 digits"},
		"saml metadata":      {func(c *Config) { c.SSO.IdPs[0].SAML.MetadataURL = "" }, "metadata_url and metadata_file"},
		"saml http":          {func(c *Config) { c.SSO.IdPs[0].SAML.MetadataURL = "http://idp.example/md" }, "https URL"},
		"oidc issuer":        {func(c *Config) { c.SSO.IdPs[1].OIDC.Issuer = "http://op.example" }, "https URL"},
		"dezi allow-list":    {func(c *Config) { c.SSO.IdPs[2].Dezi.JKUAllowList = nil }, "jku_allow_list is required"},
		"dezi encryption":    {func(c *Config) { c.SSO.IdPs[2].Dezi.DecryptionKeyFile = "" }, "decryption_key_file is required"},
		"dezi trusted":       {func(c *Config) { c.SSO.IdPs[2].TrustedForUZI = true }, "always trusted"},
		"login lifetime":     {func(c *Config) { c.SSO.LoginLifetime = 0 }, "login_lifetime"},
		"starts per account": {func(c *Config) { c.SSO.StartsPerAccount = 0 }, "starts_per_account"},
	} {
		c := good()
		tc.edit(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", name, err, tc.want)
		}
	}
}
