// Package sso is how practitioners prove who they are: connectors for the care providers' SAML
// and OpenID Connect IdPs and for Dezi, the identity they return, and the short-lived state of a
// login. Like dex's connector package it declares interfaces only; the protocol packages (saml,
// dezi) implement them and never touch storage.
package sso

import (
	"context"
	"errors"
	"net/http"
	"time"
)

// Identity is what one login proved. Protocol packages fill it only from signed, verified
// assertions; fields the IdP did not assert stay empty.
type Identity struct {
	// IdP is the configured IdP's id; with Subject it makes the "idp" 3PID "<IdP>:<Subject>".
	IdP string
	// Subject is the IdP's stable identifier of the person (OIDC sub, SAML NameID or a mapped attribute).
	Subject string
	// UZI is the 9-digit UZI/Dezi number, when asserted; whether it may be bound is the caller's
	// decision (only Dezi and IdPs trusted for it).
	UZI string
	// URA is the care provider the person logged in for, when asserted (Dezi abonnee_nummer).
	URA string
	// RoleCode is the UZI role code (Dezi rol_code), when asserted.
	RoleCode    string
	DisplayName string
	// Email is set only when the IdP asserted that it verified the address.
	Email string
	// AuthnLevel is the level of assurance or authentication context the IdP asserted.
	AuthnLevel string
	// AuthenticatedAt is when the IdP says the person authenticated (zero when it does not say).
	AuthenticatedAt time.Time
}

// Flow is the state of one login between sending the browser to the IdP and its return.
type Flow struct {
	// State is the opaque, unguessable value the IdP returns (OIDC state, SAML RelayState).
	State string
	// IdP is the configured IdP the login went to; a callback for another IdP is refused.
	IdP string
	// Nonce binds an OIDC ID token to this login.
	Nonce string
	// PKCEVerifier is the RFC 7636 code verifier (S256).
	PKCEVerifier string
	// RequestID is the ID of the SAML AuthnRequest, which the response must answer.
	RequestID string

	// SID and ClientSecret are the 3PID validation session the login completes.
	SID          string
	ClientSecret string
	// UserID is the Matrix user whose identity-server token started the login: only they may bind
	// what it proves.
	UserID   string
	NextLink string
	// Browser is a hash of a secret the practitioner's browser holds (in its session cookie): a
	// login completes only in the browser that chose the IdP, so a login link sent to someone
	// else proves nothing for the sender.
	Browser string
	// Proven is set once the IdP's answer verified but the browser has still to be checked
	// (a SAML POST arrives without the browser's cookies).
	Proven *Identity `json:",omitempty"`
	// Onboard is set for a login that makes the practitioner's Matrix account (UserID is then
	// empty), and for the one-time code that hands the account to the client.
	Onboard *Onboard `json:",omitempty"`

	ExpiresAt time.Time
}

// Onboard is what an onboarding login carries from its start to its code's redemption.
type Onboard struct {
	// RedirectURI receives the one-time code; it was on the allow-list at the start.
	RedirectURI string
	// CodeChallenge is the client's PKCE S256 challenge: only the client that started the
	// login, holding the verifier, redeems the code.
	CodeChallenge string
	// UserID and HomeServer are set on the code, once the account exists.
	UserID     string `json:",omitempty"`
	HomeServer string `json:",omitempty"`
}

// RedirectConnector is an IdP reached by redirecting the browser and returning to a callback
// (OpenID Connect, Dezi), as dex's CallbackConnector.
type RedirectConnector interface {
	// LoginURL is where to send the browser; it carries f.State, f.Nonce and the PKCE challenge of f.PKCEVerifier.
	LoginURL(ctx context.Context, f Flow) (string, error)
	// HandleCallback verifies the IdP's answer for flow f (already taken from the StateStore by
	// its state) and returns the proven identity.
	HandleCallback(ctx context.Context, f Flow, r *http.Request) (Identity, error)
}

// SAMLConnector is a SAML 2.0 IdP answering with the HTTP-POST binding, as dex's SAMLConnector.
type SAMLConnector interface {
	// AuthnRequest returns where to send the browser (HTTP-Redirect binding, relayState carried
	// along) and the request's ID that the response must answer.
	AuthnRequest(ctx context.Context, relayState string) (redirectURL, requestID string, err error)
	// HandlePOST verifies a base64 SAMLResponse answering f.RequestID and returns the proven identity.
	HandlePOST(ctx context.Context, f Flow, samlResponse string) (Identity, error)
}

// Errors of a StateStore.
var (
	// ErrNotFound: no such flow, or it expired, or it was taken already.
	ErrNotFound = errors.New("sso: no such login state")
	// ErrExists: a flow with this state exists already.
	ErrExists = errors.New("sso: login state exists")
	// ErrIdPReported is wrapped by connectors' errors for an error the IdP itself reported
	// (the person cancelled, access denied), as opposed to an answer that did not verify.
	ErrIdPReported = errors.New("sso: the identity provider reported an error")
)

// StateStore keeps logins' state, replay caches and throttles: in memory for one replica, in
// Redis for several. Every implementation passes ssotest.RunStateStore.
type StateStore interface {
	// PutFlow stores f until f.ExpiresAt; ErrExists when f.State is taken.
	PutFlow(ctx context.Context, f Flow) error
	// TakeFlow returns and removes the flow: a state works once, across replicas.
	TakeFlow(ctx context.Context, state string) (Flow, error)
	// FirstUse records key until until and reports whether this was its first use: assertion IDs
	// and token IDs (jti) are accepted once.
	FirstUse(ctx context.Context, key string, until time.Time) (bool, error)
	// Throttle counts one event for key and reports whether it is within limit per window.
	Throttle(ctx context.Context, key string, limit int, window time.Duration) (bool, error)
}

// ReplayCache is the part of a StateStore the protocol packages need.
type ReplayCache interface {
	FirstUse(ctx context.Context, key string, until time.Time) (bool, error)
}
