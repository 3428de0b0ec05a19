package api_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/api/apitest"
	"github.com/ozo-platform/ozo-identity/config"
	"github.com/ozo-platform/ozo-identity/lookup/mcsd/mcsdtest"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
)

const directoryAPI = "/_ozo/v1/directory"

// Test directories of testdata/mcsd.
const (
	gpDir       = "huisartsenpraktijk-de-linde"
	homecareDir = "thuiszorg-zonnehof"
)

// directoryCA writes the root certificate of the test directories' TLS server to a PEM file,
// for the app's directory.ca_file. The handshake verifies it with the pool the server hands out.
func directoryCA(t *testing.T, srv *mcsdtest.Server) string {
	t.Helper()
	u, err := url.Parse(srv.LRZAURL())
	if err != nil {
		t.Fatal(err)
	}
	tr, ok := srv.Client().Transport.(*http.Transport)
	if !ok || tr.TLSClientConfig == nil {
		t.Fatal("mcsdtest client has no TLS configuration")
	}
	conn, err := tls.Dial("tcp", u.Host, &tls.Config{RootCAs: tr.TLSClientConfig.RootCAs, ServerName: u.Hostname()})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	chains := conn.ConnectionState().VerifiedChains
	if len(chains) == 0 {
		t.Fatal("no verified chain to the test directories")
	}
	root := chains[0][len(chains[0])-1]
	file := filepath.Join(t.TempDir(), "mcsd-ca.pem")
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: root.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// directoryHarness starts ozo-identity reading the test LRZA, and syncs every directory once
// through the app's own syncer.
func directoryHarness(t *testing.T, e sqlstore.Engine, configure ...func(*config.Config)) (*apitest.Harness, *mcsdtest.Server) {
	t.Helper()
	srv := mcsdtest.Start(t, mcsdtest.Options{Homeservers: map[string]string{"hs1": "hs1.ozo.test", "hs2": "hs2.ozo.test"}})
	ca := directoryCA(t, srv)
	h := apitest.New(t, e, append([]func(*config.Config){func(c *config.Config) {
		c.Directory.LRZAURL = srv.LRZAURL()
		c.Directory.AllowedNetworks = []string{"127.0.0.0/8"}
		c.Directory.CAFile = ca
		c.Directory.SyncInterval = 0 // the test syncs when it changed something
	}}, configure...)...)
	syncDirectories(t, h)
	return h, srv
}

func syncDirectories(t *testing.T, h *apitest.Harness) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	reports, err := h.App.Syncer.SyncAll(ctx)
	if err != nil {
		t.Fatalf("sync: %v", err)
	}
	if len(reports) != 4 {
		t.Fatalf("want the LRZA and 3 provider directories synced, got %d reports", len(reports))
	}
	for _, r := range reports {
		if r.Err != nil || r.Skipped != "" {
			t.Fatalf("sync of %s: err %v, skipped %q", r.Directory, r.Err, r.Skipped)
		}
	}
}

type practitioner struct {
	ID           string `json:"id"`
	Name         string `json:"name"`
	Role         string `json:"role"`
	Organization struct {
		Name string `json:"name"`
		URA  string `json:"ura"`
	} `json:"organization"`
	Location *struct {
		Name string `json:"name"`
		City string `json:"city"`
	} `json:"location"`
	MXID string `json:"mxid"`
}

type organization struct {
	ID         string `json:"id"`
	Name       string `json:"name"`
	URA        string `json:"ura"`
	Type       string `json:"type"`
	City       string `json:"city"`
	MXID       string `json:"mxid"`
	Homeserver string `json:"homeserver"`
}

type resultPage[T any] struct {
	Results   []T     `json:"results"`
	NextBatch *string `json:"next_batch"`
}

func getPage[T any](t *testing.T, h *apitest.Harness, u apitest.User, path string) resultPage[T] {
	t.Helper()
	r := h.Get(t, path, u.Token).Want(t, http.StatusOK, "")
	var p resultPage[T]
	if err := json.Unmarshal(r.Body, &p); err != nil {
		t.Fatalf("%s: %v: %s", path, err, r.Body)
	}
	if p.Results == nil {
		t.Fatalf("%s: no results array: %s", path, r.Body)
	}
	if p.NextBatch != nil && *p.NextBatch == "" {
		t.Fatalf("%s: empty next_batch instead of none: %s", path, r.Body)
	}
	return p
}

// pageAll follows next_batch from the first page of path to the last and fails on a repeated id.
func pageAll[T any](t *testing.T, h *apitest.Harness, u apitest.User, path string, id func(T) string) []T {
	t.Helper()
	var all []T
	seen := map[string]bool{}
	next := ""
	for i := 0; ; i++ {
		if i > 50 {
			t.Fatalf("%s: more than 50 pages", path)
		}
		p := path
		if next != "" {
			p += "&from=" + url.QueryEscape(next)
		}
		page := getPage[T](t, h, u, p)
		for _, r := range page.Results {
			if seen[id(r)] {
				t.Fatalf("%s: result %s on two pages", path, id(r))
			}
			seen[id(r)] = true
		}
		all = append(all, page.Results...)
		if page.NextBatch == nil {
			return all
		}
		if len(page.Results) == 0 {
			t.Fatalf("%s: empty page with a next_batch", path)
		}
		next = *page.NextBatch
	}
}

// put stores a new version of a resource in a test directory.
func put(t *testing.T, d *mcsdtest.Directory, body []byte) {
	t.Helper()
	if _, err := d.Put(body); err != nil {
		t.Fatal(err)
	}
}

func practitionerNames(ps []practitioner) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Name)
	}
	return out
}

func TestDirectory(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		h, srv := directoryHarness(t, e)
		u := h.NewUser(t, "alice")
		hs1, hs2 := srv.Homeserver("hs1"), srv.Homeserver("hs2")

		t.Run("homeserver", func(t *testing.T) {
			r := h.Get(t, directoryAPI+"/homeserver"+q("medium", "uzi", "address", "900012345"), u.Token).Want(t, http.StatusOK, "")
			wantKeys(t, r.Body, "medium", "address", "homeserver", "mxid")
			m := r.JSON(t)
			if m["medium"] != "uzi" || m["address"] != "900012345" || m["homeserver"] != hs1 || m["mxid"] != "@m.vandenberg:"+hs1 {
				t.Fatalf("homeserver of 900012345: %s", r.Body)
			}
			// The Nuts name of the medium answers in the canonical one; surrounding space is trimmed.
			r = h.Get(t, directoryAPI+"/homeserver"+q("medium", "uzi_nr", "address", " 900023456 "), u.Token).Want(t, http.StatusOK, "")
			if m := r.JSON(t); m["medium"] != "uzi" || m["address"] != "900023456" || m["homeserver"] != hs2 || m["mxid"] != "@h.dekker:"+hs2 {
				t.Fatalf("homeserver of 900023456 by uzi_nr: %s", r.Body)
			}
			// Placed by the hospital's homeserver Endpoint although the role's Endpoint is off: a
			// homeserver without an MXID.
			r = h.Get(t, directoryAPI+"/homeserver"+q("medium", "uzi", "address", "900012348"), u.Token).Want(t, http.StatusOK, "")
			wantKeys(t, r.Body, "medium", "address", "homeserver")
			if r.JSON(t)["homeserver"] != hs1 {
				t.Fatalf("homeserver of 900012348: %s", r.Body)
			}
			h.Get(t, directoryAPI+"/homeserver"+q("medium", "uzi", "address", "999999999"), u.Token).Want(t, http.StatusNotFound, "M_NOT_FOUND")
		})

		t.Run("search practitioners", func(t *testing.T) {
			r := h.Get(t, directoryAPI+"/practitioners"+q("q", "BERG"), u.Token).Want(t, http.StatusOK, "")
			// What a person needs to pick a colleague, and no UZI number.
			if strings.Contains(string(r.Body), "900012345") || strings.Contains(string(r.Body), "uzi") {
				t.Fatalf("search result exposes the UZI number: %s", r.Body)
			}
			wantKeys(t, r.Body, "results")
			var p resultPage[map[string]json.RawMessage]
			json.Unmarshal(r.Body, &p)
			if len(p.Results) != 1 {
				t.Fatalf("q=BERG: %s", r.Body)
			}
			var got []string
			for k := range p.Results[0] {
				got = append(got, k)
			}
			slices.Sort(got)
			if want := []string{"id", "location", "mxid", "name", "organization", "role"}; !slices.Equal(got, want) {
				t.Fatalf("result members %v, want %v", got, want)
			}
			hit := getPage[practitioner](t, h, u, directoryAPI+"/practitioners"+q("q", "berg")).Results[0]
			if hit.Name != "dr. Marieke van den Berg" || hit.Role != "Cardioloog" || hit.Organization.Name != "Afdeling Cardiologie" ||
				hit.Organization.URA != "29001201" || hit.Location == nil || hit.Location.Name != "Locatie Deventer" ||
				hit.Location.City != "Deventer" || hit.MXID != "@m.vandenberg:"+hs1 || hit.ID == "" {
				t.Fatalf("q=berg: %+v", hit)
			}

			// By care provider and role together; the hospital's spoof of the GP's URA is not there.
			ps := getPage[practitioner](t, h, u, directoryAPI+"/practitioners"+q("organization", "17004512", "role", "01.015")).Results
			if got := practitionerNames(ps); !slices.Equal(got, []string{"Eva Mulder", "Hans Dekker"}) {
				t.Fatalf("organization=17004512&role=01.015: %v", got)
			}
			for _, p := range ps {
				if p.Organization.URA != "17004512" {
					t.Fatalf("result of another care provider: %+v", p)
				}
			}
			// By organisation name: two roles of one practitioner are two results.
			ps = getPage[practitioner](t, h, u, directoryAPI+"/practitioners"+q("organization", "interne")).Results
			if got := practitionerNames(ps); !slices.Equal(got, []string{"Johan Jansen", "Johan Jansen"}) || ps[0].ID == ps[1].ID {
				t.Fatalf("organization=interne: %+v", ps)
			}
			if got := practitionerNames(getPage[practitioner](t, h, u, directoryAPI+"/practitioners"+q("role", "wijkverpleegkundige", "q", "kok")).Results); !slices.Equal(got, []string{"Fatima Kok"}) {
				t.Fatalf("role by specialty and q: %v", got)
			}
			// LIKE wildcards are literal.
			if n := len(getPage[practitioner](t, h, u, directoryAPI+"/practitioners"+q("q", "%")).Results); n != 0 {
				t.Fatalf("q=%%: %d results", n)
			}
		})

		t.Run("paging", func(t *testing.T) {
			// Five namesakes at the GP practice: the cursor must page through equal names too.
			gp := srv.Directory(gpDir)
			for i := range 5 {
				put(t, gp, fmt.Appendf(nil, `{"resourceType":"Practitioner","id":"p-hp-visser-%d","active":true,
					"identifier":[{"system":"http://fhir.nl/fhir/NamingSystem/uzi-nr-pers","value":"90005000%d"}],
					"name":[{"use":"official","text":"Sam Visser"}]}`, i, i))
				put(t, gp, fmt.Appendf(nil, `{"resourceType":"PractitionerRole","id":"r-hp-visser-%d","active":true,
					"practitioner":{"reference":"Practitioner/p-hp-visser-%d"},"organization":{"reference":"Organization/hp-de-linde"},
					"code":[{"coding":[{"system":"http://fhir.nl/fhir/NamingSystem/uzi-rolcode","code":"01.015","display":"Huisarts"}]}],
					"telecom":[{"system":"other","value":"matrix:u/s.visser%d:${hs2}"}]}`, i, i, i))
			}
			syncDirectories(t, h)

			id := func(p practitioner) string { return p.ID }
			vissers := pageAll(t, h, u, directoryAPI+"/practitioners"+q("q", "sam visser", "limit", "2"), id)
			if len(vissers) != 5 {
				t.Fatalf("paged %d namesakes, want 5: %+v", len(vissers), vissers)
			}
			var mxids []string
			for _, p := range vissers {
				mxids = append(mxids, p.MXID)
			}
			slices.Sort(mxids)
			for i, m := range mxids {
				if m != fmt.Sprintf("@s.visser%d:%s", i, hs2) {
					t.Fatalf("namesakes' MXIDs: %v", mxids)
				}
			}
			// Small pages visit what one large page holds, in the same order.
			one := getPage[practitioner](t, h, u, directoryAPI+"/practitioners"+q("role", "01.015", "limit", "100"))
			if one.NextBatch != nil || len(one.Results) != 7 {
				t.Fatalf("role=01.015 in one page: %d results, next %v", len(one.Results), one.NextBatch)
			}
			for _, size := range []string{"1", "3"} {
				paged := pageAll(t, h, u, directoryAPI+"/practitioners"+q("role", "01.015", "limit", size), id)
				if !slices.EqualFunc(paged, one.Results, func(a, b practitioner) bool { return a.ID == b.ID }) {
					t.Fatalf("limit=%s paged %v, one page %v", size, practitionerNames(paged), practitionerNames(one.Results))
				}
			}
			// Default page size is 20: with fewer results no next_batch.
			if p := getPage[practitioner](t, h, u, directoryAPI+"/practitioners"+q("role", "01.015")); len(p.Results) != 7 || p.NextBatch != nil {
				t.Fatalf("default page: %d results, next %v", len(p.Results), p.NextBatch)
			}
		})

		t.Run("search organizations", func(t *testing.T) {
			orgs := getPage[organization](t, h, u, directoryAPI+"/organizations"+q("q", "linde")).Results
			if len(orgs) != 1 || orgs[0].Name == "" || orgs[0].URA != "17004512" || orgs[0].MXID != "@praktijk.delinde:"+hs2 ||
				orgs[0].Homeserver != hs2 || orgs[0].City != "Apeldoorn" || orgs[0].ID == "" {
				t.Fatalf("q=linde: %+v", orgs)
			}
			var names []string
			for _, o := range getPage[organization](t, h, u, directoryAPI+"/organizations"+q("ura", "29001201")).Results {
				names = append(names, o.Name)
				if o.URA != "29001201" {
					t.Fatalf("ura=29001201 found %+v", o)
				}
				if o.Name == "Ziekenhuis IJsselvallei" && o.Homeserver != hs1 {
					t.Fatalf("hospital: %+v", o)
				}
			}
			if !slices.Equal(names, []string{"Afdeling Cardiologie", "Afdeling Interne Geneeskunde", "Polikliniek Dermatologie", "Ziekenhuis IJsselvallei"}) {
				t.Fatalf("ura=29001201: %v", names)
			}
			// q and ura together narrow down; a care provider known only from the LRZA is found.
			if got := getPage[organization](t, h, u, directoryAPI+"/organizations"+q("ura", "29001201", "q", "cardio")).Results; len(got) != 1 || got[0].Name != "Afdeling Cardiologie" {
				t.Fatalf("ura and q: %+v", got)
			}
			if got := getPage[organization](t, h, u, directoryAPI+"/organizations"+q("q", "vijzel")).Results; len(got) != 1 || got[0].URA != "41002233" {
				t.Fatalf("q=vijzel: %+v", got)
			}
			if got := getPage[organization](t, h, u, directoryAPI+"/organizations"+q("ura", "99999999")).Results; len(got) != 0 {
				t.Fatalf("unknown ura: %+v", got)
			}
			all := pageAll(t, h, u, directoryAPI+"/organizations"+q("q", "e", "limit", "2"), func(o organization) string { return o.ID })
			one := getPage[organization](t, h, u, directoryAPI+"/organizations"+q("q", "e", "limit", "100"))
			if len(all) < 5 || !slices.EqualFunc(all, one.Results, func(a, b organization) bool { return a.ID == b.ID }) {
				t.Fatalf("paged %d organisations, one page %d", len(all), len(one.Results))
			}
		})

		t.Run("v2 lookup through the chain", func(t *testing.T) {
			if got := h.LookupOne(t, u, "uzi", "900012345"); got != "@m.vandenberg:"+hs1 {
				t.Fatalf("lookup none uzi: %q", got)
			}
			pepper := h.Pepper(t, u)
			hUZI, hNr := sha256Hash("900023457", "uzi", pepper), sha256Hash("900023457", "uzi_nr", pepper)
			unknown := sha256Hash("999999999", "uzi", pepper)
			got := lookupHashed(t, h, u, hUZI, hNr, unknown)
			if got[hUZI] != "@e.mulder:"+hs2 || got[hNr] != "@e.mulder:"+hs2 || len(got) != 2 {
				t.Fatalf("lookup sha256: %v", got)
			}
		})

		// Last, as it changes the directories: the district nurse moves from the home-care
		// organisation (hs1) to the GP practice (hs2).
		t.Run("moved", func(t *testing.T) {
			path := directoryAPI + "/homeserver" + q("medium", "uzi", "address", "900034567")
			before := h.Get(t, path, u.Token).Want(t, http.StatusOK, "")
			wantKeys(t, before.Body, "medium", "address", "homeserver", "mxid")
			if m := before.JSON(t); m["homeserver"] != hs1 || m["mxid"] != "@f.kok:"+hs1 {
				t.Fatalf("before the move: %s", before.Body)
			}
			srv.Directory(homecareDir).Delete("PractitionerRole", "r-tz-kok")
			gp := srv.Directory(gpDir)
			put(t, gp, []byte(`{"resourceType":"Endpoint","id":"ep-hp-kok","status":"active",
				"connectionType":{"system":"https://ozo-platform.github.io/fhir/CodeSystem/matrix","code":"matrix"},
				"payloadType":[{"coding":[{"code":"matrix-messaging"}]}],"address":"matrix:u/fatima.kok:${hs2}"}`))
			put(t, gp, []byte(`{"resourceType":"Practitioner","id":"p-hp-kok","active":true,
				"identifier":[{"system":"http://fhir.nl/fhir/NamingSystem/uzi-nr-pers","value":"900034567"}],
				"name":[{"use":"official","text":"Fatima Kok"}]}`))
			put(t, gp, []byte(`{"resourceType":"PractitionerRole","id":"r-hp-kok","active":true,
				"practitioner":{"reference":"Practitioner/p-hp-kok"},"organization":{"reference":"Organization/hp-de-linde"},
				"code":[{"coding":[{"system":"http://fhir.nl/fhir/NamingSystem/uzi-rolcode","code":"30.000","display":"Verpleegkundige"}]}],
				"endpoint":[{"reference":"Endpoint/ep-hp-kok"}]}`))
			moved := time.Now()
			syncDirectories(t, h)

			r := h.Get(t, path, u.Token).Want(t, http.StatusOK, "")
			wantKeys(t, r.Body, "medium", "address", "homeserver", "mxid", "previous_homeserver", "moved_at")
			var got struct {
				Homeserver string `json:"homeserver"`
				MXID       string `json:"mxid"`
				Previous   string `json:"previous_homeserver"`
				MovedAt    int64  `json:"moved_at"`
			}
			if err := json.Unmarshal(r.Body, &got); err != nil {
				t.Fatal(err)
			}
			if got.Homeserver != hs2 || got.MXID != "@fatima.kok:"+hs2 || got.Previous != hs1 {
				t.Fatalf("after the move: %s", r.Body)
			}
			if d := time.UnixMilli(got.MovedAt).Sub(moved); d < -10*time.Second || d > 10*time.Second {
				t.Fatalf("moved_at %v, moved about %v", time.UnixMilli(got.MovedAt), moved)
			}
			// The search follows: she is at the GP practice now, not at the home-care organisation.
			ps := getPage[practitioner](t, h, u, directoryAPI+"/practitioners"+q("q", "fatima")).Results
			if len(ps) != 1 || ps[0].Organization.URA != "17004512" || ps[0].MXID != "@fatima.kok:"+hs2 {
				t.Fatalf("q=fatima after the move: %+v", ps)
			}
			// Lookups resolve to the new address.
			if got := h.LookupOne(t, u, "uzi", "900034567"); got != "@fatima.kok:"+hs2 {
				t.Fatalf("lookup after the move: %q", got)
			}
			// A practitioner who stayed has no previous homeserver.
			r = h.Get(t, directoryAPI+"/homeserver"+q("medium", "uzi", "address", "900023456"), u.Token).Want(t, http.StatusOK, "")
			wantKeys(t, r.Body, "medium", "address", "homeserver", "mxid")
		})
	})
}

func TestDirectoryHostile(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		h, _ := directoryHarness(t, e)
		u := h.NewUser(t, "mallory")
		noTerms := h.Register(t, "newcomer")
		endpoints := []string{
			directoryAPI + "/homeserver" + q("medium", "uzi", "address", "900012345"),
			directoryAPI + "/practitioners" + q("q", "berg"),
			directoryAPI + "/organizations" + q("q", "linde"),
		}
		for _, path := range endpoints {
			h.Get(t, path, "").Want(t, http.StatusUnauthorized, "M_UNAUTHORIZED")
			h.Get(t, path, "not-a-token").Want(t, http.StatusUnauthorized, "M_UNAUTHORIZED")
			h.Get(t, path, noTerms.Token).Want(t, http.StatusForbidden, "M_TERMS_NOT_SIGNED")
			h.Post(t, path, u.Token, map[string]any{}).Want(t, http.StatusMethodNotAllowed, "M_UNRECOGNIZED")
			h.Get(t, path, u.Token).Want(t, http.StatusOK, "")
		}
		// The token also works as the deprecated access_token parameter, as for the v2 API.
		h.Get(t, endpoints[1]+"&access_token="+url.QueryEscape(u.Token), "").Want(t, http.StatusOK, "")

		for _, c := range []struct {
			query       string
			status      int
			code        string
			explanation string
		}{
			{q("address", "900012345"), 400, "M_MISSING_PARAMS", "no medium"},
			{q("medium", "uzi"), 400, "M_MISSING_PARAMS", "no address"},
			{q("medium", "email", "address", "alice@example.org"), 400, "M_INVALID_PARAM", "a medium mCSD does not place"},
			{q("medium", "ura", "address", "17004512"), 400, "M_INVALID_PARAM", "organisations have no homeserver localisation"},
			{q("medium", "UZI", "address", "900012345"), 400, "M_INVALID_PARAM", "media are case-sensitive"},
			{q("medium", "msisdn", "address", "31612345678"), 400, "M_INVALID_PARAM", "unknown medium"},
			{q("medium", "uzi", "address", "12345"), 400, "M_INVALID_PARAM", "too short"},
			{q("medium", "uzi", "address", "9000123456"), 400, "M_INVALID_PARAM", "too long"},
			{q("medium", "uzi", "address", "90001234x"), 400, "M_INVALID_PARAM", "not digits"},
			{q("medium", "uzi", "address", "９00012345"), 400, "M_INVALID_PARAM", "a full-width digit"},
			{q("medium", "uzi", "address", "900012345\x00"), 400, "M_INVALID_PARAM", "NUL"},
			{q("medium", "uzi", "address", "90001234%"), 400, "M_INVALID_PARAM", "a wildcard"},
			{q("medium", "uzi", "address", "999999999"), 404, "M_NOT_FOUND", "unknown"},
			{q("medium", "uzi", "address", "000000000"), 404, "M_NOT_FOUND", "all zeros"},
		} {
			r := h.Get(t, directoryAPI+"/homeserver"+c.query, u.Token)
			if r.Status != c.status || r.Errcode() != c.code {
				t.Errorf("homeserver, %s (%s): HTTP %d %s, want %d %s", c.explanation, c.query, r.Status, r.Errcode(), c.status, c.code)
			}
		}

		long := strings.Repeat("a", 201)
		for _, c := range []struct {
			path, code, explanation string
		}{
			{"/practitioners", "M_MISSING_PARAMS", "no filter"},
			{"/practitioners" + q("q", "", "role", ""), "M_MISSING_PARAMS", "empty filters"},
			{"/organizations", "M_MISSING_PARAMS", "no filter"},
			{"/practitioners" + q("q", "berg", "from", "not-a-cursor"), "M_INVALID_PARAM", "bad cursor"},
			{"/practitioners" + q("q", "berg", "from", "WyJhIiwiYiJd"), "M_INVALID_PARAM", "a cursor of two parts"},
			{"/practitioners" + q("q", "berg", "from", strings.Repeat("A", 5000)), "M_INVALID_PARAM", "a huge cursor"},
			{"/organizations" + q("q", "linde", "from", "%%%"), "M_INVALID_PARAM", "bad cursor"},
			{"/practitioners" + q("q", "berg", "limit", "0"), "M_INVALID_PARAM", "limit=0"},
			{"/practitioners" + q("q", "berg", "limit", "1000"), "M_INVALID_PARAM", "limit=1000"},
			{"/practitioners" + q("q", "berg", "limit", "101"), "M_INVALID_PARAM", "limit=101"},
			{"/practitioners" + q("q", "berg", "limit", "-1"), "M_INVALID_PARAM", "limit=-1"},
			{"/practitioners" + q("q", "berg", "limit", "ten"), "M_INVALID_PARAM", "limit=ten"},
			{"/practitioners" + q("q", "berg", "limit", "99999999999999999999"), "M_INVALID_PARAM", "limit overflows"},
			{"/organizations" + q("q", "linde", "limit", "0"), "M_INVALID_PARAM", "limit=0"},
			{"/organizations" + q("q", "linde", "limit", "1000"), "M_INVALID_PARAM", "limit=1000"},
			{"/practitioners" + q("q", long), "M_INVALID_PARAM", "q too long"},
			{"/practitioners" + q("role", "a\x00b"), "M_INVALID_PARAM", "NUL in role"},
			{"/practitioners" + q("organization", "x\ny"), "M_INVALID_PARAM", "newline"},
			{"/practitioners?q=%ff%fe", "M_INVALID_PARAM", "invalid UTF-8"},
			{"/practitioners?q=a&q=b", "M_INVALID_PARAM", "q twice"},
			{"/organizations" + q("ura", "1700451"), "M_INVALID_PARAM", "ura of 7 digits"},
			{"/organizations" + q("ura", "1700451x"), "M_INVALID_PARAM", "ura not digits"},
			{"/organizations" + q("ura", "17004512 OR 1=1"), "M_INVALID_PARAM", "ura injection"},
			{"/organizations?q=%ff", "M_INVALID_PARAM", "invalid UTF-8"},
		} {
			r := h.Get(t, directoryAPI+c.path, u.Token)
			if r.Status != http.StatusBadRequest || r.Errcode() != c.code {
				t.Errorf("%s (%s): HTTP %d %s, want 400 %s", c.explanation, c.path, r.Status, r.Errcode(), c.code)
			}
		}
		// Boundaries that are fine: limit 1 and 100, a term of 200 bytes, SQL in a term.
		if p := getPage[practitioner](t, h, u, directoryAPI+"/practitioners"+q("role", "01.015", "limit", "1")); len(p.Results) != 1 || p.NextBatch == nil {
			t.Fatalf("limit=1: %+v", p)
		}
		getPage[practitioner](t, h, u, directoryAPI+"/practitioners"+q("role", "01.015", "limit", "100"))
		if p := getPage[practitioner](t, h, u, directoryAPI+"/practitioners"+q("q", long[:200])); len(p.Results) != 0 {
			t.Fatalf("200 a's found %+v", p)
		}
		if p := getPage[practitioner](t, h, u, directoryAPI+"/practitioners"+q("q", "' OR '1'='1")); len(p.Results) != 0 {
			t.Fatalf("SQL in q found %+v", p)
		}
		// A cursor of one search used in another is harmless: it only says where to start.
		next := getPage[practitioner](t, h, u, directoryAPI+"/practitioners"+q("role", "01.015", "limit", "1")).NextBatch
		getPage[organization](t, h, u, directoryAPI+"/organizations"+q("q", "e", "from", *next))
		// Unknown paths under the prefix are not served.
		h.Get(t, directoryAPI+"/practitioners/x", u.Token).Want(t, http.StatusNotFound, "M_UNRECOGNIZED")
	})
}

// Directory calls are bounded per account, and localisation also by the homeserver's lookup
// budget; over budget answers 429 with Retry-After, and other accounts are unaffected.
func TestDirectoryRateLimit(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		h := apitest.New(t, e, func(c *config.Config) {
			c.RateLimits.DirectoryPerAccount = 3
			c.RateLimits.LookupPerServer = 5
		})
		var users []apitest.User
		for _, name := range []string{"alice", "bob", "carol", "dave", "erin"} {
			users = append(users, h.NewUser(t, name))
		}
		alice, bob, carol, dave, erin := users[0], users[1], users[2], users[3], users[4]
		search := directoryAPI + "/organizations" + q("q", "linde")
		locate := directoryAPI + "/homeserver" + q("medium", "uzi", "address", "900012345")
		for range 3 {
			h.Get(t, search, alice.Token).Want(t, http.StatusOK, "")
		}
		for _, path := range []string{search, directoryAPI + "/practitioners" + q("q", "a"), locate} {
			r := h.Get(t, path, alice.Token).Want(t, http.StatusTooManyRequests, "M_LIMIT_EXCEEDED")
			if r.Header.Get("Retry-After") == "" || r.JSON(t)["retry_after_ms"] == nil {
				t.Fatalf("429 without Retry-After or retry_after_ms: %v %s", r.Header, r.Body)
			}
		}
		// Bad requests count too, so probing is not free.
		h.Get(t, directoryAPI+"/practitioners"+q("limit", "0"), bob.Token).Want(t, http.StatusBadRequest, "M_INVALID_PARAM")
		h.Get(t, directoryAPI+"/homeserver"+q("medium", "uzi", "address", "1"), bob.Token).Want(t, http.StatusBadRequest, "M_INVALID_PARAM")
		h.Get(t, search, bob.Token).Want(t, http.StatusOK, "")
		h.Get(t, search, bob.Token).Want(t, http.StatusTooManyRequests, "M_LIMIT_EXCEEDED")

		// All users share one homeserver, whose lookup budget of 5 a minute localisations and v2
		// lookups use together: bob's bad localisation above, carol's 3 (the index is empty here,
		// so the UZI number is unknown) and one lookup.
		for range 3 {
			h.Get(t, locate, carol.Token).Want(t, http.StatusNotFound, "M_NOT_FOUND")
		}
		h.Post(t, v2+"/lookup", dave.Token, map[string]any{"addresses": []string{"900012345 uzi"}, "algorithm": "none",
			"pepper": h.Pepper(t, dave)}).Want(t, http.StatusOK, "")
		h.Get(t, locate, erin.Token).Want(t, http.StatusTooManyRequests, "M_LIMIT_EXCEEDED")
		// Searches do not use the lookup budget: erin still has her own.
		h.Get(t, search, erin.Token).Want(t, http.StatusOK, "")
	})
}
