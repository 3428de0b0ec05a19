package sso

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"regexp"
	"slices"
	"strings"
)

// Protocols of configured IdPs.
const (
	TypeSAML = "saml"
	TypeOIDC = "oidc"
	TypeDezi = "dezi"
)

// Env is what a connector is opened with.
type Env struct {
	// BaseURL is this IdP's endpoint prefix on the identity server (…/_ozo/v1/sso/{id}); the
	// connector appends "/callback" (OIDC redirect URI), "/acs" and "/metadata" (SAML).
	BaseURL string
	// HTTPClient makes the connector's outbound calls (metadata, discovery, token, JWKS).
	HTTPClient *http.Client
	// Replay rejects assertion IDs and token IDs seen before.
	Replay ReplayCache
	Log    *slog.Logger
}

// Opener is a typed IdP configuration (saml.Config, dezi.OIDCConfig, dezi.Config); Open returns
// a RedirectConnector or a SAMLConnector.
type Opener interface {
	Open(ctx context.Context, id string, env Env) (any, error)
}

// IdP is one configured identity provider and the care providers (URAs) that use it.
type IdP struct {
	ID   string
	Name string
	Type string
	URAs []string
	// TrustedForUZI lets an IdP other than Dezi assert UZI numbers; its operator vouches that it
	// checked them. Dezi is always trusted for them.
	TrustedForUZI bool
	// Homeserver is the server name where onboarding makes accounts for this IdP's
	// practitioners when the directory places them nowhere; empty for none.
	Homeserver string
	// Connector is a RedirectConnector or a SAMLConnector.
	Connector any
}

// MayAssertUZI reports whether a UZI number this IdP asserts may be bound.
func (p IdP) MayAssertUZI() bool { return p.Type == TypeDezi || p.TrustedForUZI }

// Claim is one 3PID a login proved, before normalisation.
type Claim struct{ Medium, Address string }

// Proven returns the 3PIDs id proves at p: idp always, uzi only when p may assert it, email only
// when asserted verified (Identity.Email is only set then). Refused names the claims left out and why.
func (p IdP) Proven(id Identity) (claims []Claim, refused []string) {
	claims = append(claims, Claim{"idp", p.ID + ":" + id.Subject})
	if id.UZI != "" {
		if p.MayAssertUZI() {
			claims = append(claims, Claim{"uzi", id.UZI})
		} else {
			refused = append(refused, "uzi: IdP "+p.ID+" is not trusted to assert UZI numbers")
		}
	}
	if id.Email != "" {
		claims = append(claims, Claim{"email", id.Email})
	}
	return claims, refused
}

// Registry holds the configured IdPs, by id and by care provider.
type Registry struct {
	idps []IdP
	byID map[string]int
}

// idPattern keeps ids usable in URLs and in "idp" 3PIDs ("<id>:<subject>").
var idPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)

// NewRegistry checks the IdPs and indexes them.
func NewRegistry(idps ...IdP) (*Registry, error) {
	r := &Registry{byID: map[string]int{}}
	for _, p := range idps {
		if !idPattern.MatchString(p.ID) {
			return nil, fmt.Errorf("sso: IdP id %q must be 1-64 of [a-z0-9._-]", p.ID)
		}
		if _, dup := r.byID[p.ID]; dup {
			return nil, fmt.Errorf("sso: IdP id %q configured twice", p.ID)
		}
		switch p.Connector.(type) {
		case RedirectConnector, SAMLConnector:
		default:
			return nil, fmt.Errorf("sso: IdP %q has no usable connector (%T)", p.ID, p.Connector)
		}
		r.byID[p.ID] = len(r.idps)
		r.idps = append(r.idps, p)
	}
	return r, nil
}

// Get returns the IdP with this id.
func (r *Registry) Get(id string) (IdP, bool) {
	i, ok := r.byID[id]
	if !ok {
		return IdP{}, false
	}
	return r.idps[i], true
}

// All returns every IdP in configuration order.
func (r *Registry) All() []IdP { return slices.Clone(r.idps) }

// ForURA returns the IdPs a care provider uses (Dezi IdPs serve every care provider).
func (r *Registry) ForURA(ura string) []IdP {
	var out []IdP
	for _, p := range r.idps {
		if slices.Contains(p.URAs, ura) || p.Type == TypeDezi {
			out = append(out, p)
		}
	}
	return out
}

// Search finds IdPs whose name contains q (case-insensitive) or whose care providers' URA starts with q.
func (r *Registry) Search(q string) []IdP {
	q = strings.ToLower(strings.TrimSpace(q))
	var out []IdP
	for _, p := range r.idps {
		if q == "" || strings.Contains(strings.ToLower(p.Name), q) ||
			slices.ContainsFunc(p.URAs, func(u string) bool { return strings.HasPrefix(u, q) }) {
			out = append(out, p)
		}
	}
	return out
}
