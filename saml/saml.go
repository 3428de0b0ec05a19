// Package saml is the SAML 2.0 service provider for care providers' IdPs (crewjam/saml). It
// accepts only signed assertions, answering a request this server made, for this server's
// audience and ACS, within their validity, and each assertion once.
package saml

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/beevik/etree"
	crewsaml "github.com/crewjam/saml"
	xrv "github.com/mattermost/xml-roundtrip-validator"

	"github.com/ozo-platform/ozo-identity/sso"
)

// Config is one SAML IdP.
type Config struct {
	// MetadataURL or MetadataFile is the IdP's metadata (entity ID, SSO URL, signing certificates).
	MetadataURL  string
	MetadataFile string
	// SPKeyFile and SPCertFile are this service provider's key pair (PEM): it signs nothing but
	// decrypts encrypted assertions. Empty: a key generated at start, so encrypted assertions
	// only work on one replica until a key is configured.
	SPKeyFile, SPCertFile string
	// Attributes maps identity fields to SAML attribute names.
	Attributes Attributes
	// EmailVerified says the IdP only asserts addresses it verified; SAML has no claim for it, so
	// without it no email is proven.
	EmailVerified bool
}

// Attributes names the SAML attributes (Name or FriendlyName) identity fields come from.
type Attributes struct {
	// Subject: empty means the NameID, which must then be persistent or unspecified, never transient.
	Subject     string
	UZI         string
	Email       string
	DisplayName string
}

// Connector is a sso.SAMLConnector for one IdP.
type Connector struct {
	id     string
	sp     *crewsaml.ServiceProvider
	cfg    Config
	replay sso.ReplayCache
	log    *slog.Logger
	now    func() time.Time
}

// Open loads the IdP's metadata and builds the service provider at env.BaseURL.
func (c Config) Open(ctx context.Context, id string, env sso.Env) (any, error) {
	if env.Replay == nil {
		return nil, errors.New("saml: a replay cache is required")
	}
	base, err := url.Parse(strings.TrimRight(env.BaseURL, "/"))
	if err != nil || base.Host == "" {
		return nil, fmt.Errorf("saml %s: base URL %q: %v", id, env.BaseURL, err)
	}
	var md *crewsaml.EntityDescriptor
	switch {
	case c.MetadataURL != "":
		u, err := url.Parse(c.MetadataURL)
		if err != nil {
			return nil, fmt.Errorf("saml %s: metadata_url: %w", id, err)
		}
		client := env.HTTPClient
		if client == nil {
			client = http.DefaultClient
		}
		if md, err = fetchMetadata(ctx, client, u.String()); err != nil {
			return nil, fmt.Errorf("saml %s: fetch metadata: %w", id, err)
		}
	case c.MetadataFile != "":
		data, err := os.ReadFile(c.MetadataFile)
		if err != nil {
			return nil, fmt.Errorf("saml %s: %w", id, err)
		}
		if md, err = parseMetadata(data); err != nil {
			return nil, fmt.Errorf("saml %s: parse metadata %s: %w", id, c.MetadataFile, err)
		}
	default:
		return nil, fmt.Errorf("saml %s: metadata_url or metadata_file is required", id)
	}
	key, cert, err := c.keyPair(id)
	if err != nil {
		return nil, err
	}
	log := env.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	metadataURL, acsURL := *base, *base
	metadataURL.Path += "/metadata"
	acsURL.Path += "/acs"
	sp := &crewsaml.ServiceProvider{
		EntityID:          metadataURL.String(),
		Key:               key,
		Certificate:       cert,
		MetadataURL:       metadataURL,
		AcsURL:            acsURL,
		IDPMetadata:       md,
		AuthnNameIDFormat: crewsaml.UnspecifiedNameIDFormat,
		AllowIDPInitiated: false,
	}
	return &Connector{id: id, sp: sp, cfg: c, replay: env.Replay, log: log, now: time.Now}, nil
}

func (c Config) keyPair(id string) (crypto.Signer, *x509.Certificate, error) {
	if c.SPKeyFile != "" || c.SPCertFile != "" {
		pair, err := tls.LoadX509KeyPair(c.SPCertFile, c.SPKeyFile)
		if err != nil {
			return nil, nil, fmt.Errorf("saml %s: sp key pair: %w", id, err)
		}
		cert, err := x509.ParseCertificate(pair.Certificate[0])
		if err != nil {
			return nil, nil, fmt.Errorf("saml %s: sp certificate: %w", id, err)
		}
		signer, ok := pair.PrivateKey.(*rsa.PrivateKey)
		if !ok {
			return nil, nil, fmt.Errorf("saml %s: sp key must be RSA", id)
		}
		return signer, cert, nil
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, nil, fmt.Errorf("saml %s: generate sp key: %w", id, err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ozo-identity saml " + id},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().AddDate(10, 0, 0)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("saml %s: sp certificate: %w", id, err)
	}
	cert, err := x509.ParseCertificate(der)
	return key, cert, err
}

// Metadata is this service provider's metadata, for the IdP's operator.
func (c *Connector) Metadata() *crewsaml.EntityDescriptor { return c.sp.Metadata() }

// MetadataXML is Metadata as served at BaseURL+"/metadata".
func (c *Connector) MetadataXML() ([]byte, error) {
	b, err := xml.MarshalIndent(c.sp.Metadata(), "", "  ")
	if err != nil {
		return nil, fmt.Errorf("saml %s: metadata: %w", c.id, err)
	}
	return append([]byte(xml.Header), b...), nil
}

// AuthnRequest implements sso.SAMLConnector with the HTTP-Redirect binding.
func (c *Connector) AuthnRequest(_ context.Context, relayState string) (string, string, error) {
	req, err := c.sp.MakeAuthenticationRequest(c.sp.GetSSOBindingLocation(crewsaml.HTTPRedirectBinding),
		crewsaml.HTTPRedirectBinding, crewsaml.HTTPPostBinding)
	if err != nil {
		return "", "", fmt.Errorf("saml %s: authn request: %w", c.id, err)
	}
	u, err := req.Redirect(relayState, c.sp)
	if err != nil {
		return "", "", fmt.Errorf("saml %s: authn request: %w", c.id, err)
	}
	return u.String(), req.ID, nil
}

// Errors a login can end with; each wraps the detail.
var (
	ErrInvalid  = errors.New("saml: response refused")
	ErrReplayed = errors.New("saml: assertion used before")
)

// maxResponse bounds a SAMLResponse before decoding.
const maxResponse = 256 << 10

// HandlePOST implements sso.SAMLConnector.
func (c *Connector) HandlePOST(ctx context.Context, f sso.Flow, samlResponse string) (sso.Identity, error) {
	if f.RequestID == "" {
		return sso.Identity{}, fmt.Errorf("%w: no request to answer (IdP-initiated logins are not accepted)", ErrInvalid)
	}
	if len(samlResponse) > maxResponse {
		return sso.Identity{}, fmt.Errorf("%w: response too large", ErrInvalid)
	}
	raw, err := base64.StdEncoding.DecodeString(samlResponse)
	if err != nil {
		return sso.Identity{}, fmt.Errorf("%w: not base64: %v", ErrInvalid, err)
	}
	stripped, err := c.onlySignedAssertion(raw)
	if err != nil {
		return sso.Identity{}, err
	}
	a, err := c.sp.ParseXMLResponse(stripped, []string{f.RequestID}, c.sp.AcsURL)
	if err != nil {
		return sso.Identity{}, fmt.Errorf("%w: %v", ErrInvalid, describe(err))
	}
	if err := c.checkSubject(a); err != nil {
		return sso.Identity{}, err
	}
	until := a.Conditions.NotOnOrAfter.Add(crewsaml.MaxClockSkew)
	if first, err := c.replay.FirstUse(ctx, "saml:"+c.id+":"+a.ID, until); err != nil {
		return sso.Identity{}, fmt.Errorf("saml %s: replay cache: %w", c.id, err)
	} else if !first {
		return sso.Identity{}, fmt.Errorf("%w: assertion %s", ErrReplayed, a.ID)
	}
	return c.identity(a)
}

// onlySignedAssertion refuses a response that does not hold exactly one assertion (plain or
// encrypted), then drops the Response's own signature: crewjam accepts unsigned assertions in a
// signed response, and this service trusts only assertions signed themselves.
func (c *Connector) onlySignedAssertion(raw []byte) ([]byte, error) {
	if err := xrv.Validate(bytes.NewReader(raw)); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	doc := etree.NewDocument()
	if err := doc.ReadFromBytes(raw); err != nil {
		return nil, fmt.Errorf("%w: not XML: %v", ErrInvalid, err)
	}
	root := doc.Root()
	if root == nil || root.Tag != "Response" || root.NamespaceURI() != "urn:oasis:names:tc:SAML:2.0:protocol" {
		return nil, fmt.Errorf("%w: not a SAML Response", ErrInvalid)
	}
	if d := root.SelectAttrValue("Destination", ""); d != "" && d != c.sp.AcsURL.String() {
		return nil, fmt.Errorf("%w: Destination %q is not this service's ACS", ErrInvalid, d)
	}
	n := 0
	for _, el := range root.ChildElements() {
		switch {
		case el.NamespaceURI() == "urn:oasis:names:tc:SAML:2.0:assertion" && (el.Tag == "Assertion" || el.Tag == "EncryptedAssertion"):
			n++
		case el.NamespaceURI() == "http://www.w3.org/2000/09/xmldsig#" && el.Tag == "Signature":
			root.RemoveChild(el)
		}
	}
	if len(doc.FindElements("//Assertion")) > 1 {
		return nil, fmt.Errorf("%w: more than one Assertion element (signature wrapping?)", ErrInvalid)
	}
	if n != 1 {
		return nil, fmt.Errorf("%w: %d assertions; exactly one is accepted", ErrInvalid, n)
	}
	out, err := doc.WriteToBytes()
	if err != nil {
		return nil, fmt.Errorf("saml: re-encode response: %w", err)
	}
	return out, nil
}

// checkSubject requires a bearer confirmation for this ACS: crewjam checks the recipient of
// each confirmation present but accepts an assertion with none.
func (c *Connector) checkSubject(a *crewsaml.Assertion) error {
	if a.Subject == nil || len(a.Subject.SubjectConfirmations) == 0 {
		return fmt.Errorf("%w: assertion has no subject confirmation", ErrInvalid)
	}
	for _, sc := range a.Subject.SubjectConfirmations {
		if sc.Method != "urn:oasis:names:tc:SAML:2.0:cm:bearer" || sc.SubjectConfirmationData == nil ||
			sc.SubjectConfirmationData.Recipient != c.sp.AcsURL.String() {
			return fmt.Errorf("%w: subject confirmation is not a bearer confirmation for this ACS", ErrInvalid)
		}
	}
	if a.Conditions == nil || len(a.Conditions.AudienceRestrictions) == 0 {
		return fmt.Errorf("%w: assertion names no audience", ErrInvalid)
	}
	return nil
}

// describe shortens crewjam's errors, which wrap the useful reason in InvalidResponseError.
func describe(err error) string {
	var ire *crewsaml.InvalidResponseError
	if errors.As(err, &ire) && ire.PrivateErr != nil {
		return ire.PrivateErr.Error()
	}
	return err.Error()
}

func (c *Connector) identity(a *crewsaml.Assertion) (sso.Identity, error) {
	id := sso.Identity{IdP: c.id}
	attr := func(name string) string {
		if name == "" {
			return ""
		}
		for _, st := range a.AttributeStatements {
			for _, at := range st.Attributes {
				if (at.Name == name || at.FriendlyName == name) && len(at.Values) > 0 {
					return strings.TrimSpace(at.Values[0].Value)
				}
			}
		}
		return ""
	}
	if c.cfg.Attributes.Subject != "" {
		id.Subject = attr(c.cfg.Attributes.Subject)
	} else if a.Subject.NameID != nil {
		if a.Subject.NameID.Format == string(crewsaml.TransientNameIDFormat) {
			return sso.Identity{}, fmt.Errorf("%w: a transient NameID is no stable subject; map a subject attribute", ErrInvalid)
		}
		id.Subject = strings.TrimSpace(a.Subject.NameID.Value)
	}
	if id.Subject == "" {
		return sso.Identity{}, fmt.Errorf("%w: no subject", ErrInvalid)
	}
	id.UZI = attr(c.cfg.Attributes.UZI)
	id.DisplayName = attr(c.cfg.Attributes.DisplayName)
	if c.cfg.EmailVerified {
		id.Email = attr(c.cfg.Attributes.Email)
	}
	for _, st := range a.AuthnStatements {
		id.AuthenticatedAt = st.AuthnInstant
		if st.AuthnContext.AuthnContextClassRef != nil {
			id.AuthnLevel = st.AuthnContext.AuthnContextClassRef.Value
		}
	}
	return id, nil
}

// maxMetadata bounds an IdP's metadata document (federation aggregates are not expected here).
const maxMetadata = 4 << 20

func fetchMetadata(ctx context.Context, client *http.Client, u string) (*crewsaml.EntityDescriptor, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxMetadata+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxMetadata {
		return nil, fmt.Errorf("GET %s: metadata larger than %d bytes", u, maxMetadata)
	}
	return parseMetadata(data)
}

// parseMetadata reads an EntityDescriptor, or the first IdP of an EntitiesDescriptor.
func parseMetadata(data []byte) (*crewsaml.EntityDescriptor, error) {
	if err := xrv.Validate(bytes.NewReader(data)); err != nil {
		return nil, err
	}
	var ed crewsaml.EntityDescriptor
	if err := xml.Unmarshal(data, &ed); err == nil && len(ed.IDPSSODescriptors) > 0 {
		return &ed, nil
	}
	var eds crewsaml.EntitiesDescriptor
	if err := xml.Unmarshal(data, &eds); err != nil {
		return nil, err
	}
	for i := range eds.EntityDescriptors {
		if len(eds.EntityDescriptors[i].IDPSSODescriptors) > 0 {
			return &eds.EntityDescriptors[i], nil
		}
	}
	return nil, errors.New("no IdP in metadata")
}
