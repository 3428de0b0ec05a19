package config

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"time"
)

// SSO configures how practitioners prove who they are: their care provider's SAML or OpenID
// Connect IdP, or Dezi.
type SSO struct {
	// LoginLifetime bounds the time between starting a login and the IdP's answer.
	LoginLifetime time.Duration `yaml:"login_lifetime"`
	// StartsPerAccount is how many logins an account may start per minute.
	StartsPerAccount int `yaml:"starts_per_account"`
	// CAFile is an extra CA for IdPs' (metadata, discovery, token, JWKS) certificates.
	CAFile  string        `yaml:"ca_file"`
	Timeout time.Duration `yaml:"timeout"`
	IdPs    []IdP         `yaml:"idps"`
}

// IdP is one identity provider. Exactly the section of its type is used.
type IdP struct {
	// ID names the IdP in URLs and in "idp" 3PIDs (<id>:<subject>); never change it once used.
	ID   string `yaml:"id"`
	Name string `yaml:"name"`
	// Type is saml, oidc or dezi.
	Type string `yaml:"type"`
	// URAs are the care providers whose practitioners log in here.
	URAs []string `yaml:"uras"`
	// TrustedForUZI lets a SAML or OIDC IdP's UZI numbers be bound; Dezi's always are.
	TrustedForUZI bool    `yaml:"trusted_for_uzi"`
	SAML          SAMLIdP `yaml:"saml"`
	OIDC          OIDCIdP `yaml:"oidc"`
	Dezi          DeziIdP `yaml:"dezi"`
}

// SAMLIdP is a SAML 2.0 IdP.
type SAMLIdP struct {
	MetadataURL  string `yaml:"metadata_url"`
	MetadataFile string `yaml:"metadata_file"`
	SPKeyFile    string `yaml:"sp_key_file"`
	SPCertFile   string `yaml:"sp_cert_file"`
	// EmailVerified: the IdP asserts only addresses it verified (SAML cannot say so itself).
	EmailVerified bool `yaml:"email_verified"`
	// Attributes map identity fields to attribute names (Name or FriendlyName).
	Attributes struct {
		Subject     string `yaml:"subject"`
		UZI         string `yaml:"uzi"`
		Email       string `yaml:"email"`
		DisplayName string `yaml:"display_name"`
	} `yaml:"attributes"`
}

// OIDCIdP is an OpenID Provider.
type OIDCIdP struct {
	Issuer       string   `yaml:"issuer"`
	ClientID     string   `yaml:"client_id"`
	ClientSecret string   `yaml:"client_secret"`
	Scopes       []string `yaml:"scopes"`
	Claims       struct {
		Subject       string `yaml:"subject"`
		UZI           string `yaml:"uzi"`
		Email         string `yaml:"email"`
		EmailVerified string `yaml:"email_verified"`
		DisplayName   string `yaml:"display_name"`
	} `yaml:"claims"`
}

// DeziIdP is Dezi.
type DeziIdP struct {
	Issuer            string   `yaml:"issuer"`
	ClientID          string   `yaml:"client_id"`
	ClientSecret      string   `yaml:"client_secret"`
	Scopes            []string `yaml:"scopes"`
	DecryptionKeyFile string   `yaml:"decryption_key_file"`
	// AllowSignedUserinfo accepts an unencrypted (signed) userinfo: acceptance environments only.
	AllowSignedUserinfo bool     `yaml:"allow_signed_userinfo"`
	JKUAllowList        []string `yaml:"jku_allow_list"`
	// MinLoA is the lowest loa_dezi accepted (eIDAS URI); empty means high.
	MinLoA string `yaml:"min_loa"`
}

var (
	idpIDPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)
	uraPattern   = regexp.MustCompile(`^[0-9]{8}$`)
)

func (s SSO) validate() error {
	var errs []error
	if s.LoginLifetime < time.Minute || s.LoginLifetime > time.Hour {
		errs = append(errs, errors.New("sso.login_lifetime must be between 1m and 1h"))
	}
	if s.StartsPerAccount <= 0 {
		errs = append(errs, errors.New("sso.starts_per_account must be positive"))
	}
	seen := map[string]bool{}
	for i, p := range s.IdPs {
		where := fmt.Sprintf("sso.idps[%d] (%s)", i, p.ID)
		if !idpIDPattern.MatchString(p.ID) {
			errs = append(errs, fmt.Errorf("%s: id must be 1-64 of [a-z0-9._-]", where))
		}
		if seen[p.ID] {
			errs = append(errs, fmt.Errorf("%s: id used twice", where))
		}
		seen[p.ID] = true
		for _, u := range p.URAs {
			if !uraPattern.MatchString(u) {
				errs = append(errs, fmt.Errorf("%s: ura %q is not 8 digits", where, u))
			}
		}
		httpsURL := func(key, v string, required bool) {
			if v == "" && !required {
				return
			}
			if u, err := url.Parse(v); err != nil || u.Scheme != "https" || u.Host == "" {
				errs = append(errs, fmt.Errorf("%s: %s %q must be an https URL", where, key, v))
			}
		}
		switch p.Type {
		case "saml":
			if (p.SAML.MetadataURL == "") == (p.SAML.MetadataFile == "") {
				errs = append(errs, fmt.Errorf("%s: saml needs one of metadata_url and metadata_file", where))
			}
			httpsURL("saml.metadata_url", p.SAML.MetadataURL, false)
			if (p.SAML.SPKeyFile == "") != (p.SAML.SPCertFile == "") {
				errs = append(errs, fmt.Errorf("%s: saml.sp_key_file and sp_cert_file go together", where))
			}
		case "oidc":
			httpsURL("oidc.issuer", p.OIDC.Issuer, true)
			if p.OIDC.ClientID == "" {
				errs = append(errs, fmt.Errorf("%s: oidc.client_id is required", where))
			}
		case "dezi":
			httpsURL("dezi.issuer", p.Dezi.Issuer, true)
			if p.Dezi.ClientID == "" {
				errs = append(errs, fmt.Errorf("%s: dezi.client_id is required", where))
			}
			if len(p.Dezi.JKUAllowList) == 0 {
				errs = append(errs, fmt.Errorf("%s: dezi.jku_allow_list is required", where))
			}
			for _, j := range p.Dezi.JKUAllowList {
				httpsURL("dezi.jku_allow_list", j, true)
			}
			if p.Dezi.DecryptionKeyFile == "" && !p.Dezi.AllowSignedUserinfo {
				errs = append(errs, fmt.Errorf("%s: dezi.decryption_key_file is required (allow_signed_userinfo only for acceptance environments)", where))
			}
			if p.TrustedForUZI {
				errs = append(errs, fmt.Errorf("%s: trusted_for_uzi is for saml and oidc; Dezi is always trusted", where))
			}
		default:
			errs = append(errs, fmt.Errorf("%s: type %q must be saml, oidc or dezi", where, p.Type))
		}
	}
	return errors.Join(errs...)
}
