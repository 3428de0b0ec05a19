package mcsd_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/ozo-platform/ozo-identity/lookup/mcsd"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
)

func TestSearch(t *testing.T) {
	forEngines(t, func(t *testing.T, engine sqlstore.Engine) {
		e := newEnv(t, engine)
		ctx := context.Background()
		e.sync(e.syncer())
		search := func(q mcsd.PractitionerQuery) []mcsd.PractitionerHit {
			t.Helper()
			p, err := e.idx.SearchPractitioners(ctx, q)
			if err != nil {
				t.Fatalf("SearchPractitioners %+v: %v", q, err)
			}
			return p.Results
		}
		names := func(hits []mcsd.PractitionerHit) []string {
			var out []string
			for _, h := range hits {
				out = append(out, h.Name)
			}
			return out
		}

		hits := search(mcsd.PractitionerQuery{Q: "BERG"})
		if len(hits) != 1 {
			t.Fatalf("q=BERG: %+v", hits)
		}
		h := hits[0]
		if h.Name != "dr. Marieke van den Berg" || h.Role != "Cardioloog" || h.Organization != "Afdeling Cardiologie" ||
			h.OrganizationURA != "29001201" || h.Location != "Locatie Deventer" || h.City != "Deventer" ||
			h.MXID != "@m.vandenberg:"+e.hs("hs1") || h.UZI != "900012345" || h.Directory != e.srv.URL(hospital) {
			t.Errorf("hit: %+v", h)
		}

		// By URA: the GP practice's three, not the hospital's spoof under the same URA.
		if got := names(search(mcsd.PractitionerQuery{Organization: "17004512"})); !slices.Equal(got, []string{"Eva Mulder", "Hans Dekker", "Lotte de Groot"}) {
			t.Errorf("organization=17004512: %v", got)
		}
		// By organisation name: departments count under their own name.
		if got := names(search(mcsd.PractitionerQuery{Organization: "interne"})); !slices.Equal(got, []string{"Johan Jansen", "Johan Jansen"}) {
			t.Errorf("organization=interne: %v", got)
		}
		// By role code and by role name; an inactive role is not found.
		if got := names(search(mcsd.PractitionerQuery{Role: "01.015"})); !slices.Equal(got, []string{"Eva Mulder", "Hans Dekker"}) {
			t.Errorf("role=01.015: %v", got)
		}
		if got := names(search(mcsd.PractitionerQuery{Role: "verpleeg"})); !slices.Equal(got, []string{"Fatima Kok", "Lotte de Groot", "Mohamed van Dijk"}) {
			t.Errorf("role=verpleeg: %v", got)
		}
		if got := names(search(mcsd.PractitionerQuery{Role: "wijkverpleegkundige", Q: "kok"})); !slices.Equal(got, []string{"Fatima Kok"}) {
			t.Errorf("role by specialty and q: %v", got)
		}
		// LIKE wildcards in input are literal.
		if got := search(mcsd.PractitionerQuery{Q: "%"}); len(got) != 0 {
			t.Errorf("q=%%: %v", names(got))
		}
		if got := search(mcsd.PractitionerQuery{Q: "_"}); len(got) != 0 {
			t.Errorf("q=_: %v", names(got))
		}

		// Paging visits every accepted, active role once, in name order.
		all := search(mcsd.PractitionerQuery{Limit: 100})
		var paged []mcsd.PractitionerHit
		cursor := ""
		for i := 0; ; i++ {
			p, err := e.idx.SearchPractitioners(ctx, mcsd.PractitionerQuery{Limit: 3, Cursor: cursor})
			if err != nil {
				t.Fatal(err)
			}
			if len(p.Results) > 3 || i > 10 {
				t.Fatalf("page %d has %d results", i, len(p.Results))
			}
			paged = append(paged, p.Results...)
			if p.Next == "" {
				break
			}
			cursor = p.Next
		}
		if len(all) != 11 || !slices.EqualFunc(all, paged, func(a, b mcsd.PractitionerHit) bool { return a.RoleID == b.RoleID }) {
			t.Errorf("paged %d, all %d: %v vs %v", len(paged), len(all), names(paged), names(all))
		}
		if _, err := e.idx.SearchPractitioners(ctx, mcsd.PractitionerQuery{Cursor: "not-a-cursor"}); !errors.Is(err, mcsd.ErrBadCursor) {
			t.Errorf("bad cursor: %v", err)
		}

		orgs := func(q mcsd.OrganizationQuery) []mcsd.OrganizationHit {
			t.Helper()
			p, err := e.idx.SearchOrganizations(ctx, q)
			if err != nil {
				t.Fatalf("SearchOrganizations %+v: %v", q, err)
			}
			return p.Results
		}
		linde := orgs(mcsd.OrganizationQuery{Q: "linde"})
		if len(linde) != 1 || linde[0].Directory != e.srv.URL(gp) || linde[0].MXID != "@praktijk.delinde:"+e.hs("hs2") ||
			linde[0].Homeserver != e.hs("hs2") || linde[0].URA != "17004512" || linde[0].City != "Apeldoorn" {
			t.Errorf("q=linde: %+v", linde)
		}
		hosp := orgs(mcsd.OrganizationQuery{URA: "29001201"})
		var hospNames []string
		for _, o := range hosp {
			hospNames = append(hospNames, o.Name)
			if o.Name == "Ziekenhuis IJsselvallei" && o.Homeserver != e.hs("hs1") {
				t.Errorf("hospital homeserver: %+v", o)
			}
		}
		if !slices.Equal(hospNames, []string{"Afdeling Cardiologie", "Afdeling Interne Geneeskunde", "Polikliniek Dermatologie", "Ziekenhuis IJsselvallei"}) {
			t.Errorf("ura=29001201: %v", hospNames)
		}
		// Care providers known only from the LRZA are found too; by alias as well.
		if got := orgs(mcsd.OrganizationQuery{Q: "vijzel"}); len(got) != 1 || got[0].URA != "41002233" {
			t.Errorf("q=vijzel: %+v", got)
		}
		if got := orgs(mcsd.OrganizationQuery{Q: "IJsselvallei Deventer"}); len(got) != 1 {
			t.Errorf("q by alias: %+v", got)
		}
		p, err := e.idx.SearchOrganizations(ctx, mcsd.OrganizationQuery{Limit: 2})
		if err != nil || len(p.Results) != 2 || p.Next == "" {
			t.Fatalf("first org page: %+v %v", p, err)
		}
		p2, err := e.idx.SearchOrganizations(ctx, mcsd.OrganizationQuery{Limit: 2, Cursor: p.Next})
		if err != nil || len(p2.Results) != 2 || p2.Results[0].ID == p.Results[0].ID || p2.Results[0].Name < p.Results[1].Name {
			t.Fatalf("second org page: %+v %v", p2, err)
		}
	})
}
