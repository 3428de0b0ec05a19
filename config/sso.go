package config

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/ozo-platform/ozo-identity/internal/matrixid"
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
	// Onboarding creates Matrix accounts for practitioners who log in without one.
	Onboarding Onboarding `yaml:"onboarding"`
}

// Onboarding lets a practitioner without a Matrix account log in (POST /_ozo/v1/onboard/sso/start)
// and get one on a homeserver the operator runs, made through its application-service
// registration; the client receives the account's access token for a one-time code. Without
// homeservers there is no onboarding.
type Onboarding struct {
	// RedirectURIs are the clients' pages the browser may be sent to with the one-time code;
	// a start must name one exactly. https, http only on loopback, or a private-use scheme
	// (reverse domain name, RFC 8252 §7.1).
	RedirectURIs []string `yaml:"redirect_uris"`
	// CodeLifetime is how long the code works after the redirect.
	CodeLifetime time.Duration `yaml:"code_lifetime"`
	// StartsPerClient is how many onboarding logins one client address may start per minute.
	StartsPerClient int `yaml:"starts_per_client"`
	// Homeservers are where accounts are made: the one mCSD places the practitioner on, else
	// their IdP's homeserver; only these.
	Homeservers []OnboardingHomeserver `yaml:"homeservers"`
}

// OnboardingHomeserver is a homeserver with this server's application-service registration.
type OnboardingHomeserver struct {
	ServerName string `yaml:"server_name"`
	ClientURL  string `yaml:"client_url"`
	// ASToken is the registration's as_token; ASTokenFile holds it instead (ASToken wins).
	ASToken     string `yaml:"as_token"`
	ASTokenFile string `yaml:"as_token_file"`
	// UserPrefix starts every localpart made: the registration's exclusive user namespace.
	UserPrefix string `yaml:"user_prefix"`
	// Localpart is the scheme after the prefix: "uzi" (the proven UZI number; a login must
	// prove one) or "idp" (a hash of the idp 3PID, <idp>:<subject>).
	Localpart string `yaml:"localpart"`
	// CAFile adds a CA to trust for an https client_url.
	CAFile string `yaml:"ca_file"`
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
	TrustedForUZI bool `yaml:"trusted_for_uzi"`
	// Homeserver is the server name of an onboarding homeserver where this IdP's practitioners
	// get their account when mCSD places them nowhere.
	Homeserver string  `yaml:"homeserver"`
	SAML       SAMLIdP `yaml:"saml"`
	OIDC       OIDCIdP `yaml:"oidc"`
	Dezi       DeziIdP `yaml:"dezi"`
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
	// userPrefixPattern: localpart characters (Matrix user ID grammar), starting with a letter.
	userPrefixPattern = regexp.MustCompile(`^[a-z][a-z0-9._=/-]{0,31}$`)
	// privateScheme is a reverse-domain URI scheme of a native app (RFC 8252 §7.1).
	privateScheme = regexp.MustCompile(`^[a-z][a-z0-9+-]*(\.[a-z0-9+-]+)+$`)
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
		if p.Homeserver != "" && !slices.ContainsFunc(s.Onboarding.Homeservers, func(h OnboardingHomeserver) bool { return h.ServerName == p.Homeserver }) {
			errs = append(errs, fmt.Errorf("%s: homeserver %q is not one of sso.onboarding.homeservers", where, p.Homeserver))
		}
	}
	errs = append(errs, s.Onboarding.validate()...)
	if len(s.Onboarding.Homeservers) > 0 && len(s.IdPs) == 0 {
		errs = append(errs, errors.New("sso.onboarding needs sso.idps to log practitioners in"))
	}
	return errors.Join(errs...)
}

func (o Onboarding) validate() []error {
	var errs []error
	if len(o.Homeservers) == 0 {
		if len(o.RedirectURIs) > 0 {
			errs = append(errs, errors.New("sso.onboarding.redirect_uris needs sso.onboarding.homeservers"))
		}
		return errs
	}
	if len(o.RedirectURIs) == 0 {
		errs = append(errs, errors.New("sso.onboarding.redirect_uris must list the clients' pages that receive the code"))
	}
	for _, u := range o.RedirectURIs {
		if !validRedirectURI(u) {
			errs = append(errs, fmt.Errorf("sso.onboarding.redirect_uris: %q must be an absolute URL without fragment: https, http on loopback, or a private-use scheme (com.example.app:/cb)", u))
		}
	}
	if o.CodeLifetime < 10*time.Second || o.CodeLifetime > 10*time.Minute {
		errs = append(errs, errors.New("sso.onboarding.code_lifetime must be between 10s and 10m"))
	}
	if o.StartsPerClient <= 0 {
		errs = append(errs, errors.New("sso.onboarding.starts_per_client must be positive"))
	}
	seen := map[string]bool{}
	for i, h := range o.Homeservers {
		where := fmt.Sprintf("sso.onboarding.homeservers[%d] (%s)", i, h.ServerName)
		if !matrixid.ValidServerName(h.ServerName) {
			errs = append(errs, fmt.Errorf("%s: server_name must be a Matrix server name", where))
		}
		if seen[h.ServerName] {
			errs = append(errs, fmt.Errorf("%s: server_name used twice", where))
		}
		seen[h.ServerName] = true
		if pu, err := url.Parse(h.ClientURL); err != nil || (pu.Scheme != "https" && pu.Scheme != "http") || pu.Host == "" {
			errs = append(errs, fmt.Errorf("%s: client_url %q must be an absolute http(s) URL", where, h.ClientURL))
		}
		if h.ASToken == "" && h.ASTokenFile == "" {
			errs = append(errs, fmt.Errorf("%s: as_token or as_token_file is required", where))
		}
		if !userPrefixPattern.MatchString(h.UserPrefix) {
			errs = append(errs, fmt.Errorf("%s: user_prefix %q must be 1-32 localpart characters starting with a letter (the registration's exclusive namespace)", where, h.UserPrefix))
		}
		if h.Localpart != "uzi" && h.Localpart != "idp" {
			errs = append(errs, fmt.Errorf("%s: localpart %q must be uzi or idp", where, h.Localpart))
		}
	}
	return errs
}

// validRedirectURI: where a browser may carry a one-time code. No fragment (the code is added
// as a query parameter), no plain http off loopback.
func validRedirectURI(u string) bool {
	pu, err := url.Parse(u)
	if err != nil || pu.Fragment != "" || strings.Contains(u, "#") || pu.User != nil {
		return false
	}
	switch {
	case pu.Scheme == "https":
		return pu.Host != ""
	case pu.Scheme == "http":
		a, aerr := netip.ParseAddr(pu.Hostname())
		return pu.Hostname() == "localhost" || aerr == nil && a.IsLoopback()
	default:
		return privateScheme.MatchString(pu.Scheme) && pu.Opaque == "" && (pu.Host != "" || pu.Path != "")
	}
}
