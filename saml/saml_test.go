package saml_test

import (
	"context"
	"crypto/rsa"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/beevik/etree"
	crewsaml "github.com/crewjam/saml"
	dsig "github.com/russellhaering/goxmldsig"

	"github.com/ozo-platform/ozo-identity/saml"
	"github.com/ozo-platform/ozo-identity/saml/samltest"
	"github.com/ozo-platform/ozo-identity/sso"
)

const base = "https://is.test/_ozo/v1/sso/umcx"

type fixture struct {
	idp    *samltest.IdP
	conn   *saml.Connector
	replay *sso.MemoryStore
}

func setup(t *testing.T) fixture { return setupWith(t, true) }

func setupWith(t *testing.T, plain bool) fixture {
	t.Helper()
	idp := samltest.New(t)
	idp.AddUser(t, "alice", "wachtwoord", "alice@umcx.nl", map[string]string{"uziNummer": "900000009"})
	replay := sso.NewMemoryStore()
	cfg := saml.Config{MetadataURL: idp.MetadataURL(), EmailVerified: true,
		Attributes: saml.Attributes{Subject: "uid", UZI: "uziNummer", Email: "mail", DisplayName: "cn"}}
	c, err := cfg.Open(context.Background(), "umcx", sso.Env{BaseURL: base, HTTPClient: idp.Client(), Replay: replay})
	if err != nil {
		t.Fatal(err)
	}
	conn := c.(*saml.Connector)
	idp.RegisterSP(t, "ozo", conn.Metadata(), plain)
	return fixture{idp: idp, conn: conn, replay: replay}
}

// login runs a whole SP-initiated login and returns the flow and the IdP's SAMLResponse.
func (f fixture) login(t *testing.T) (sso.Flow, string) {
	t.Helper()
	redirect, reqID, err := f.conn.AuthnRequest(context.Background(), "relay-1")
	if err != nil {
		t.Fatal(err)
	}
	acs, form := f.idp.Login(t, f.idp.Client(), redirect, "alice", "wachtwoord")
	if acs != base+"/acs" || form.Get("RelayState") != "relay-1" {
		t.Fatalf("IdP posts to %q with RelayState %q", acs, form.Get("RelayState"))
	}
	return sso.Flow{State: "relay-1", IdP: "umcx", RequestID: reqID}, form.Get("SAMLResponse")
}

// TestLogin: a whole login with an encrypted, signed assertion.
func TestLogin(t *testing.T) {
	f := setupWith(t, false)
	if _, form := f.idp.Login(t, f.idp.Client(), mustRedirect(t, f), "alice", "wachtwoord"); !strings.Contains(string(mustDecode(t, form.Get("SAMLResponse"))), "EncryptedAssertion") {
		t.Fatal("the IdP should encrypt assertions for an SP with an encryption key")
	}
	flow, resp := f.login(t)
	id, err := f.conn.HandlePOST(context.Background(), flow, resp)
	if err != nil {
		t.Fatal(err)
	}
	want := sso.Identity{IdP: "umcx", Subject: "alice", UZI: "900000009", Email: "alice@umcx.nl", DisplayName: "alice"}
	id.AuthenticatedAt, id.AuthnLevel = time.Time{}, ""
	if id != want {
		t.Fatalf("identity %+v, want %+v", id, want)
	}
	// The IdP is not trusted for UZI numbers: the registry's rule leaves the number out.
	claims, refused := sso.IdP{ID: "umcx", Type: sso.TypeSAML}.Proven(id)
	if len(claims) != 2 || len(refused) != 1 {
		t.Fatalf("claims %v, refused %v", claims, refused)
	}
}

// TestEmailNotVerified: without email_verified the address is not part of the proof.
func TestEmailNotVerified(t *testing.T) {
	idp := samltest.New(t)
	idp.AddUser(t, "alice", "wachtwoord", "alice@umcx.nl", nil)
	cfg := saml.Config{MetadataURL: idp.MetadataURL(), Attributes: saml.Attributes{Subject: "uid", Email: "mail"}}
	c, err := cfg.Open(context.Background(), "umcx", sso.Env{BaseURL: base, HTTPClient: idp.Client(), Replay: sso.NewMemoryStore()})
	if err != nil {
		t.Fatal(err)
	}
	f := fixture{idp: idp, conn: c.(*saml.Connector)}
	idp.RegisterSP(t, "ozo", f.conn.Metadata(), false)
	flow, resp := f.login(t)
	id, err := f.conn.HandlePOST(context.Background(), flow, resp)
	if err != nil || id.Email != "" {
		t.Fatalf("identity %+v, %v: email must stay empty", id, err)
	}
}

func mustRedirect(t *testing.T, f fixture) string {
	u, _, err := f.conn.AuthnRequest(context.Background(), "x")
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func mustDecode(t *testing.T, s string) []byte {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func decode(t *testing.T, resp string) *etree.Document {
	t.Helper()
	raw, err := base64.StdEncoding.DecodeString(resp)
	if err != nil {
		t.Fatal(err)
	}
	doc := etree.NewDocument()
	if err := doc.ReadFromBytes(raw); err != nil {
		t.Fatal(err)
	}
	return doc
}

func encode(t *testing.T, doc *etree.Document) string {
	t.Helper()
	b, err := doc.WriteToBytes()
	if err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(b)
}

func removeSignature(el *etree.Element) {
	for _, c := range el.ChildElements() {
		if c.Tag == "Signature" {
			el.RemoveChild(c)
		}
	}
}

type keyStore struct{ idp *samltest.IdP }

func (k keyStore) GetKeyPair() (*rsa.PrivateKey, []byte, error) {
	return k.idp.Key, k.idp.Cert.Raw, nil
}

// sign returns el signed (enveloped) with idp's key, the signature after the Issuer as the schema wants.
func sign(t *testing.T, idp *samltest.IdP, el *etree.Element) *etree.Element {
	t.Helper()
	ctx := dsig.NewDefaultSigningContext(keyStore{idp})
	ctx.Canonicalizer = dsig.MakeC14N10ExclusiveCanonicalizerWithPrefixList("")
	if err := ctx.SetSignatureMethod(dsig.RSASHA256SignatureMethod); err != nil {
		t.Fatal(err)
	}
	signed, err := ctx.SignEnveloped(el)
	if err != nil {
		t.Fatal(err)
	}
	sig := signed.ChildElements()[len(signed.ChildElements())-1]
	out := el.Copy()
	out.InsertChildAt(1, sig.Copy())
	return out
}

// signResponse re-signs the Response as an IdP that signs only responses would.
func signResponse(t *testing.T, idp *samltest.IdP, doc *etree.Document) {
	t.Helper()
	removeSignature(doc.Root())
	doc.SetRoot(sign(t, idp, doc.Root()))
}

func assertionOf(t *testing.T, doc *etree.Document) *etree.Element {
	t.Helper()
	for _, c := range doc.Root().ChildElements() {
		if c.Tag == "Assertion" {
			return c
		}
	}
	t.Fatal("no plain Assertion in the response")
	return nil
}

// TestHostile: every refusal leaves the replay cache able to accept the genuine assertion only once.
func TestHostile(t *testing.T) {
	ctx := context.Background()
	t.Run("UnsignedAssertionInSignedResponse", func(t *testing.T) {
		f := setup(t)
		flow, resp := f.login(t)
		doc := decode(t, resp)
		removeSignature(assertionOf(t, doc))
		signResponse(t, f.idp, doc)
		if _, err := f.conn.HandlePOST(ctx, flow, encode(t, doc)); !errors.Is(err, saml.ErrInvalid) {
			t.Fatalf("assertion signed by nobody accepted: %v", err)
		}
	})
	t.Run("UnsignedEverything", func(t *testing.T) {
		f := setup(t)
		flow, resp := f.login(t)
		doc := decode(t, resp)
		removeSignature(assertionOf(t, doc))
		removeSignature(doc.Root())
		if _, err := f.conn.HandlePOST(ctx, flow, encode(t, doc)); !errors.Is(err, saml.ErrInvalid) {
			t.Fatalf("unsigned response accepted: %v", err)
		}
	})
	t.Run("SignatureWrappingSecondAssertion", func(t *testing.T) {
		// XSW: a forged assertion for another subject next to the genuine signed one.
		f := setup(t)
		flow, resp := f.login(t)
		doc := decode(t, resp)
		genuine := assertionOf(t, doc)
		forged := genuine.Copy()
		forged.CreateAttr("ID", "id-forged")
		removeSignature(forged)
		for _, v := range forged.FindElements(".//AttributeValue") {
			if v.Text() == "alice" {
				v.SetText("mallory")
			}
		}
		doc.Root().InsertChildAt(genuine.Index(), forged)
		if _, err := f.conn.HandlePOST(ctx, flow, encode(t, doc)); !errors.Is(err, saml.ErrInvalid) {
			t.Fatalf("wrapped response accepted: %v", err)
		}
	})
	t.Run("SignatureWrappingMovedSignature", func(t *testing.T) {
		// XSW: the genuine assertion hidden in Extensions, a modified copy carrying its signature in its place.
		f := setup(t)
		flow, resp := f.login(t)
		doc := decode(t, resp)
		genuine := assertionOf(t, doc)
		forged := genuine.Copy()
		for _, v := range forged.FindElements(".//AttributeValue") {
			if v.Text() == "900000009" {
				v.SetText("999999990")
			}
		}
		ext := doc.Root().CreateElement("samlp:Extensions")
		ext.AddChild(genuine.Copy())
		doc.Root().RemoveChild(genuine)
		doc.Root().AddChild(forged)
		removeSignature(doc.Root())
		if _, err := f.conn.HandlePOST(ctx, flow, encode(t, doc)); !errors.Is(err, saml.ErrInvalid) {
			t.Fatalf("wrapped response accepted: %v", err)
		}
	})
	t.Run("Replayed", func(t *testing.T) {
		f := setup(t)
		flow, resp := f.login(t)
		if _, err := f.conn.HandlePOST(ctx, flow, resp); err != nil {
			t.Fatal(err)
		}
		if _, err := f.conn.HandlePOST(ctx, flow, resp); !errors.Is(err, saml.ErrReplayed) {
			t.Fatalf("replayed assertion: %v", err)
		}
	})
	t.Run("IdPInitiated", func(t *testing.T) {
		f := setup(t)
		flow, resp := f.login(t)
		flow.RequestID = ""
		if _, err := f.conn.HandlePOST(ctx, flow, resp); !errors.Is(err, saml.ErrInvalid) {
			t.Fatalf("unsolicited response accepted: %v", err)
		}
	})
	t.Run("AnswersAnotherRequest", func(t *testing.T) {
		f := setup(t)
		flow, resp := f.login(t)
		flow.RequestID = "id-of-another-login"
		if _, err := f.conn.HandlePOST(ctx, flow, resp); !errors.Is(err, saml.ErrInvalid) {
			t.Fatalf("response to another request accepted: %v", err)
		}
	})
	misbehaving := map[string]func(req *crewsaml.IdpAuthnRequest){
		"Expired": func(req *crewsaml.IdpAuthnRequest) {
			past := time.Now().Add(-2 * time.Hour)
			req.Assertion.IssueInstant = past
			req.Assertion.Conditions.NotBefore = past
			req.Assertion.Conditions.NotOnOrAfter = past.Add(5 * time.Minute)
			for i := range req.Assertion.Subject.SubjectConfirmations {
				req.Assertion.Subject.SubjectConfirmations[i].SubjectConfirmationData.NotOnOrAfter = past.Add(5 * time.Minute)
			}
		},
		"WrongAudience": func(req *crewsaml.IdpAuthnRequest) {
			req.Assertion.Conditions.AudienceRestrictions = []crewsaml.AudienceRestriction{{Audience: crewsaml.Audience{Value: "https://other-sp.example/metadata"}}}
		},
		"NoAudience": func(req *crewsaml.IdpAuthnRequest) {
			req.Assertion.Conditions.AudienceRestrictions = nil
		},
		"WrongRecipient": func(req *crewsaml.IdpAuthnRequest) {
			for i := range req.Assertion.Subject.SubjectConfirmations {
				req.Assertion.Subject.SubjectConfirmations[i].SubjectConfirmationData.Recipient = "https://other-sp.example/acs"
			}
		},
		"NoSubjectConfirmation": func(req *crewsaml.IdpAuthnRequest) {
			req.Assertion.Subject.SubjectConfirmations = nil
		},
	}
	for name, mutate := range misbehaving {
		t.Run(name, func(t *testing.T) {
			f := setup(t)
			f.idp.Misbehave(mutate)
			flow, resp := f.login(t)
			if _, err := f.conn.HandlePOST(ctx, flow, resp); !errors.Is(err, saml.ErrInvalid) {
				t.Fatalf("accepted: %v", err)
			}
		})
	}
	t.Run("WrongIdPKey", func(t *testing.T) {
		// The assertion signed again by a key that is not in the IdP's metadata.
		f := setup(t)
		flow, resp := f.login(t)
		doc := decode(t, resp)
		a := assertionOf(t, doc)
		removeSignature(a)
		other := samltest.New(t)
		signed := sign(t, other, a)
		doc.Root().RemoveChild(a)
		doc.Root().AddChild(signed)
		removeSignature(doc.Root())
		if _, err := f.conn.HandlePOST(ctx, flow, encode(t, doc)); !errors.Is(err, saml.ErrInvalid) {
			t.Fatalf("assertion signed by another key accepted: %v", err)
		}
	})
}
