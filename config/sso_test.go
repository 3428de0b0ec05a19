package config

import (
	"strings"
	"testing"
	"time"
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
		c.SSO.IdPs[0].Homeserver = "hs2.example:8448"
		c.SSO.Onboarding.RedirectURIs = []string{"https://app.example/onboarded", "http://127.0.0.1:7000/cb", "nl.ozo.app:/onboarded"}
		c.SSO.Onboarding.Homeservers = []OnboardingHomeserver{{ServerName: "hs2.example:8448", ClientURL: "https://matrix.hs2.example",
			ASToken: "secret", UserPrefix: "zv_", Localpart: "uzi"}}
		return c
	}
	if c := good(); c.Validate() != nil {
		t.Fatalf("valid configuration refused: %v", c.Validate())
	}
	for name, tc := range map[string]struct {
		edit func(*Config)
		want string
	}{
		"type":                   {func(c *Config) { c.SSO.IdPs[0].Type = "cas" }, "must be saml, oidc or dezi"},
		"id":                     {func(c *Config) { c.SSO.IdPs[0].ID = "UMC:X" }, "id must be"},
		"duplicate":              {func(c *Config) { c.SSO.IdPs[1].ID = "umcx" }, "used twice"},
		"ura":                    {func(c *Config) { c.SSO.IdPs[0].URAs = []string{"1234"} }, "not 8 digits"},
		"saml metadata":          {func(c *Config) { c.SSO.IdPs[0].SAML.MetadataURL = "" }, "metadata_url and metadata_file"},
		"saml http":              {func(c *Config) { c.SSO.IdPs[0].SAML.MetadataURL = "http://idp.example/md" }, "https URL"},
		"oidc issuer":            {func(c *Config) { c.SSO.IdPs[1].OIDC.Issuer = "http://op.example" }, "https URL"},
		"dezi allow-list":        {func(c *Config) { c.SSO.IdPs[2].Dezi.JKUAllowList = nil }, "jku_allow_list is required"},
		"dezi encryption":        {func(c *Config) { c.SSO.IdPs[2].Dezi.DecryptionKeyFile = "" }, "decryption_key_file is required"},
		"dezi trusted":           {func(c *Config) { c.SSO.IdPs[2].TrustedForUZI = true }, "always trusted"},
		"login lifetime":         {func(c *Config) { c.SSO.LoginLifetime = 0 }, "login_lifetime"},
		"starts per account":     {func(c *Config) { c.SSO.StartsPerAccount = 0 }, "starts_per_account"},
		"idp homeserver unknown": {func(c *Config) { c.SSO.IdPs[0].Homeserver = "hs9.example" }, `homeserver "hs9.example" is not one of sso.onboarding.homeservers`},
		"redirect uris without homeservers": {func(c *Config) {
			c.SSO.Onboarding.Homeservers = nil
			c.SSO.IdPs[0].Homeserver = ""
		}, "redirect_uris needs sso.onboarding.homeservers"},
		"no redirect uris":  {func(c *Config) { c.SSO.Onboarding.RedirectURIs = nil }, "redirect_uris must list"},
		"redirect http":     {func(c *Config) { c.SSO.Onboarding.RedirectURIs = []string{"http://app.example/cb"} }, "redirect_uris"},
		"redirect fragment": {func(c *Config) { c.SSO.Onboarding.RedirectURIs = []string{"https://app.example/cb#x"} }, "redirect_uris"},
		"redirect userinfo": {func(c *Config) { c.SSO.Onboarding.RedirectURIs = []string{"https://u:p@app.example/cb"} }, "redirect_uris"},
		"redirect js":       {func(c *Config) { c.SSO.Onboarding.RedirectURIs = []string{"javascript:alert(1)"} }, "redirect_uris"},
		"code lifetime":     {func(c *Config) { c.SSO.Onboarding.CodeLifetime = time.Hour }, "code_lifetime"},
		"starts per client": {func(c *Config) { c.SSO.Onboarding.StartsPerClient = 0 }, "starts_per_client"},
		"no as_token":       {func(c *Config) { c.SSO.Onboarding.Homeservers[0].ASToken = "" }, "as_token or as_token_file is required"},
		"server name":       {func(c *Config) { c.SSO.Onboarding.Homeservers[0].ServerName = "hs2 example" }, "server_name must be"},
		"server name twice": {func(c *Config) {
			c.SSO.Onboarding.Homeservers = append(c.SSO.Onboarding.Homeservers, c.SSO.Onboarding.Homeservers[0])
		}, "used twice"},
		"client url":         {func(c *Config) { c.SSO.Onboarding.Homeservers[0].ClientURL = "hs2.example" }, "client_url"},
		"user prefix":        {func(c *Config) { c.SSO.Onboarding.Homeservers[0].UserPrefix = "" }, "user_prefix"},
		"user prefix colon":  {func(c *Config) { c.SSO.Onboarding.Homeservers[0].UserPrefix = "zv:" }, "user_prefix"},
		"localpart scheme":   {func(c *Config) { c.SSO.Onboarding.Homeservers[0].Localpart = "email" }, "must be uzi or idp"},
		"onboarding no idps": {func(c *Config) { c.SSO.IdPs = nil }, "needs sso.idps"},
	} {
		c := good()
		tc.edit(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", name, err, tc.want)
		}
	}
}
