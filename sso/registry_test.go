package sso_test

import (
	"context"
	"net/http"
	"slices"
	"testing"

	"github.com/ozo-platform/ozo-identity/sso"
)

type redirectConn struct{}

func (redirectConn) LoginURL(context.Context, sso.Flow) (string, error) { return "", nil }
func (redirectConn) HandleCallback(context.Context, sso.Flow, *http.Request) (sso.Identity, error) {
	return sso.Identity{}, nil
}

func TestRegistry(t *testing.T) {
	r, err := sso.NewRegistry(
		sso.IdP{ID: "umcx", Name: "UMC Xanadu", Type: sso.TypeSAML, URAs: []string{"17004512"}, Connector: redirectConn{}},
		sso.IdP{ID: "dezi", Name: "Dezi", Type: sso.TypeDezi, Connector: redirectConn{}},
	)
	if err != nil {
		t.Fatal(err)
	}
	ids := func(ps []sso.IdP) (out []string) {
		for _, p := range ps {
			out = append(out, p.ID)
		}
		return out
	}
	if got := ids(r.ForURA("17004512")); !slices.Equal(got, []string{"umcx", "dezi"}) {
		t.Errorf("ForURA: %v", got)
	}
	if got := ids(r.ForURA("99999999")); !slices.Equal(got, []string{"dezi"}) {
		t.Errorf("ForURA of another provider: %v", got)
	}
	if got := ids(r.Search("xana")); !slices.Equal(got, []string{"umcx"}) {
		t.Errorf("Search by name: %v", got)
	}
	if got := ids(r.Search("1700")); !slices.Equal(got, []string{"umcx"}) {
		t.Errorf("Search by URA: %v", got)
	}
	for _, bad := range [][]sso.IdP{
		{{ID: "Bad:Id", Connector: redirectConn{}}},
		{{ID: "a", Connector: redirectConn{}}, {ID: "a", Connector: redirectConn{}}},
		{{ID: "a", Connector: 42}},
	} {
		if _, err := sso.NewRegistry(bad...); err == nil {
			t.Errorf("registry %+v accepted", bad)
		}
	}
}

// TestProven: uzi only from Dezi or a trusted IdP; idp always; email only when present (verified).
func TestProven(t *testing.T) {
	id := sso.Identity{Subject: "u-42", UZI: "900000009", Email: "a@b.nl"}
	claims, refused := sso.IdP{ID: "umcx", Type: sso.TypeSAML}.Proven(id)
	if !slices.Equal(claims, []sso.Claim{{"idp", "umcx:u-42"}, {"email", "a@b.nl"}}) || len(refused) != 1 {
		t.Errorf("untrusted IdP: %v, refused %v", claims, refused)
	}
	claims, _ = sso.IdP{ID: "umcx", Type: sso.TypeSAML, TrustedForUZI: true}.Proven(id)
	if !slices.Contains(claims, sso.Claim{"uzi", "900000009"}) {
		t.Errorf("trusted IdP: %v", claims)
	}
	claims, _ = sso.IdP{ID: "dezi", Type: sso.TypeDezi}.Proven(sso.Identity{Subject: "s", UZI: "900000009"})
	if !slices.Equal(claims, []sso.Claim{{"idp", "dezi:s"}, {"uzi", "900000009"}}) {
		t.Errorf("Dezi: %v", claims)
	}
}
