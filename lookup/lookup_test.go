package lookup_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/identity"
	"github.com/ozo-platform/ozo-identity/lookup"
	"github.com/ozo-platform/ozo-identity/lookup/mcsd"
	"github.com/ozo-platform/ozo-identity/lookup/mcsd/mcsdtest"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore/dbtest"
	"github.com/ozo-platform/ozo-identity/threepid"
)

// peerIS is a minimal identity server speaking the v2 hash_details and lookup of the Matrix spec.
type peerIS struct {
	*httptest.Server
	token string
	mu    sync.Mutex
	pep   string
	binds map[threepid.ThreePID]string
	fail  int // answer lookups with this status
	extra map[string]string
	calls int
}

func newPeerIS(t *testing.T, binds map[threepid.ThreePID]string) *peerIS {
	p := &peerIS{token: "peer-token", pep: "peer-pepper-1", binds: binds}
	p.Server = httptest.NewTLSServer(http.HandlerFunc(p.serve))
	t.Cleanup(p.Close)
	return p
}

func (p *peerIS) serve(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	defer p.mu.Unlock()
	writeErr := func(status int, code, msg string) {
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(map[string]string{"errcode": code, "error": msg})
	}
	if r.Header.Get("Authorization") != "Bearer "+p.token {
		writeErr(401, "M_UNAUTHORIZED", "unknown token")
		return
	}
	switch r.URL.Path {
	case "/_matrix/identity/v2/hash_details":
		json.NewEncoder(w).Encode(map[string]any{"algorithms": []string{"none", "sha256"}, "lookup_pepper": p.pep})
	case "/_matrix/identity/v2/lookup":
		p.calls++
		if p.fail != 0 {
			writeErr(p.fail, "M_UNKNOWN", "broken")
			return
		}
		var req struct {
			Addresses []string `json:"addresses"`
			Algorithm string   `json:"algorithm"`
			Pepper    string   `json:"pepper"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Algorithm != "sha256" {
			writeErr(400, "M_INVALID_PARAM", "bad request")
			return
		}
		if req.Pepper != p.pep {
			writeErr(400, "M_INVALID_PEPPER", "pepper does not match")
			return
		}
		mappings := map[string]string{}
		for tp, mxid := range p.binds {
			for _, h := range threepid.LookupHashes(tp, p.pep) {
				for _, a := range req.Addresses {
					if a == h {
						mappings[h] = mxid
					}
				}
			}
		}
		for k, v := range p.extra {
			mappings[k] = v
		}
		json.NewEncoder(w).Encode(map[string]any{"mappings": mappings})
	default:
		writeErr(404, "M_UNRECOGNIZED", "no")
	}
}

type failing struct{}

func (failing) Resolve(context.Context, []threepid.ThreePID) (map[threepid.ThreePID]string, error) {
	return nil, errors.New("link down")
}
func (failing) ResolveHashes(context.Context, []string) (map[string]string, error) {
	return nil, errors.New("link down")
}

func uzi(n string) threepid.ThreePID { return threepid.ThreePID{Medium: "uzi", Address: n} }

func TestChain(t *testing.T) {
	for _, engine := range dbtest.Engines {
		t.Run(string(engine), func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			db := dbtest.Open(t, engine)
			store := sqlstore.New(db)
			const pepper = "local-pepper"

			// Link 1: a practitioner who logged in here is bound locally.
			local := identity.Binding{ThreePID: uzi("900012345"), MXID: "@marieke:ozo.example.nl", CreatedAt: time.Now(), Source: "sso"}
			if err := store.Bind(ctx, identity.BindRequest{Binding: local, Hashes: threepid.LookupHashes(local.ThreePID, pepper)}); err != nil {
				t.Fatal(err)
			}
			// Link 2: the mCSD index.
			srv := mcsdtest.Start(t, mcsdtest.Options{})
			idx := mcsd.NewIndex(db)
			if err := idx.Rehash(ctx, pepper); err != nil {
				t.Fatal(err)
			}
			if _, err := mcsd.NewSyncer(idx, mcsd.Options{LRZA: srv.LRZAURL(), Client: srv.Client()}).SyncAll(ctx); err != nil {
				t.Fatal(err)
			}
			// Link 3: a peer identity server of another vendor.
			peer := newPeerIS(t, map[threepid.ThreePID]string{
				uzi("900099999"):                     "@gp:peer.example.nl",
				uzi("900023457"):                     "@mulder:peer.example.nl", // mCSD answers first
				{Medium: "email", Address: "a@b.nl"}: "@a:peer.example.nl",
			})
			var logs bytes.Buffer
			log := slog.New(slog.NewTextHandler(&logs, nil))
			chain := lookup.Chain(
				lookup.Bindings(store),
				idx,
				lookup.Optional("peer", lookup.NewPeer(lookup.PeerOptions{BaseURL: peer.URL, Token: peer.token, Client: peer.Client()}), log),
			)

			email := threepid.ThreePID{Medium: "email", Address: "a@b.nl"}
			got, err := chain.Resolve(ctx, []threepid.ThreePID{uzi("900012345"), uzi("900023457"), uzi("900099999"), uzi("900000001"), email})
			if err != nil {
				t.Fatal(err)
			}
			want := map[threepid.ThreePID]string{
				uzi("900012345"): "@marieke:ozo.example.nl", // local binding beats mCSD
				uzi("900023457"): "@e.mulder:" + srv.Homeserver("hs2"),
				uzi("900099999"): "@gp:peer.example.nl",
			}
			if len(got) != len(want) {
				t.Errorf("got %v, want %v (email is not asked of the peer)", got, want)
			}
			for tp, mxid := range want {
				if got[tp] != mxid {
					t.Errorf("%v: got %q, want %q", tp, got[tp], mxid)
				}
			}

			// Hashed lookups: local bindings and the mCSD index; not the peer (other pepper).
			h := func(tp threepid.ThreePID, i int) string { return threepid.LookupHashes(tp, pepper)[i] }
			hashes := []string{h(uzi("900012345"), 0), h(uzi("900023457"), 1), h(uzi("900099999"), 0), "unknown"}
			gotH, err := chain.ResolveHashes(ctx, hashes)
			if err != nil {
				t.Fatal(err)
			}
			if len(gotH) != 2 || gotH[hashes[0]] != "@marieke:ozo.example.nl" || gotH[hashes[1]] != "@e.mulder:"+srv.Homeserver("hs2") {
				t.Errorf("hashed chain: %v", gotH)
			}
			// Repeats in a batch: answered once each, by the first link that knows them.
			for _, batch := range [][]string{
				{hashes[0], hashes[0], hashes[0]},
				{hashes[0], hashes[1], hashes[0], hashes[1], "unknown", "unknown"},
			} {
				got, err := chain.ResolveHashes(ctx, batch)
				if err != nil {
					t.Fatal(err)
				}
				want := map[string]string{hashes[0]: "@marieke:ozo.example.nl"}
				if len(batch) > 3 {
					want[hashes[1]] = "@e.mulder:" + srv.Homeserver("hs2")
				}
				if fmt.Sprint(got) != fmt.Sprint(want) {
					t.Errorf("batch with repeats %d: got %v, want %v", len(batch), got, want)
				}
			}

			// The peer rotates its pepper: the link fetches the new one and retries.
			peer.mu.Lock()
			peer.pep = "peer-pepper-2"
			peer.mu.Unlock()
			if got, err := chain.Resolve(ctx, []threepid.ThreePID{uzi("900099999")}); err != nil || got[uzi("900099999")] != "@gp:peer.example.nl" {
				t.Errorf("after pepper rotation: %v %v", got, err)
			}
			// A peer answering what was not asked is ignored.
			peer.mu.Lock()
			peer.extra = map[string]string{"someone-else": "@evil:peer.example.nl"}
			peer.mu.Unlock()
			if got, err := chain.Resolve(ctx, []threepid.ThreePID{uzi("900088888")}); err != nil || len(got) != 0 {
				t.Errorf("unasked mapping taken: %v %v", got, err)
			}

			// A failing optional link is logged and skipped.
			peer.mu.Lock()
			peer.fail = 500
			peer.mu.Unlock()
			got, err = chain.Resolve(ctx, []threepid.ThreePID{uzi("900023457"), uzi("900099999")})
			if err != nil || got[uzi("900023457")] == "" || got[uzi("900099999")] != "" {
				t.Errorf("with the peer down: %v %v", got, err)
			}
			if !strings.Contains(logs.String(), "optional lookup failed") || !strings.Contains(logs.String(), "link=peer") {
				t.Errorf("peer failure not logged: %s", logs.String())
			}
			// No further question reaches the peer when earlier links answered everything.
			peer.mu.Lock()
			calls := peer.calls
			peer.mu.Unlock()
			if _, err := chain.Resolve(ctx, []threepid.ThreePID{uzi("900012345")}); err != nil {
				t.Fatal(err)
			}
			peer.mu.Lock()
			if peer.calls != calls {
				t.Error("the peer was asked about a 3PID an earlier link resolved")
			}
			peer.mu.Unlock()

			// A failing required link fails the lookup.
			if _, err := lookup.Chain(lookup.Bindings(store), failing{}).Resolve(ctx, []threepid.ThreePID{uzi("900000001")}); err == nil {
				t.Error("a required link's error was swallowed")
			}
			if _, err := lookup.Chain(lookup.Bindings(store), failing{}).ResolveHashes(ctx, []string{"x"}); err == nil {
				t.Error("a required link's error was swallowed (hashes)")
			}
			// A wrong token at the peer is an error of that link.
			bad := lookup.NewPeer(lookup.PeerOptions{BaseURL: peer.URL, Token: "wrong", Client: peer.Client()})
			if _, err := bad.Resolve(ctx, []threepid.ThreePID{uzi("900099999")}); err == nil || !strings.Contains(err.Error(), "M_UNAUTHORIZED") {
				t.Errorf("wrong peer token: %v", err)
			}
		})
	}
}

// TestChainWithConflictingDirectory: a directory registered for its own URA publishes two UZI
// numbers that another care provider publishes too. A binding proven here still wins; for the
// other, the index withholds the answer and the chain asks no peer, which the same attacker
// could have misled.
func TestChainWithConflictingDirectory(t *testing.T) {
	for _, engine := range dbtest.Engines {
		t.Run(string(engine), func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			db := dbtest.Open(t, engine)
			store := sqlstore.New(db)
			const pepper = "local-pepper"
			bound := identity.Binding{ThreePID: uzi("900012345"), MXID: "@marieke:ozo.example.nl", CreatedAt: time.Now(), Source: "admin"}
			if err := store.Bind(ctx, identity.BindRequest{Binding: bound, Hashes: threepid.LookupHashes(bound.ThreePID, pepper)}); err != nil {
				t.Fatal(err)
			}
			srv := mcsdtest.Start(t, mcsdtest.Options{})
			lrza := srv.Directory("lrza")
			for _, body := range []string{
				`{"resourceType":"Organization","id":"lrza-org-mallory","active":true,"name":"Zorggroep Mallory",
				"identifier":[{"system":"http://fhir.nl/fhir/NamingSystem/ura","value":"22222222"}],"endpoint":[{"reference":"Endpoint/lrza-ep-mallory"}]}`,
				`{"resourceType":"Endpoint","id":"lrza-ep-mallory","status":"active","connectionType":{"code":"hl7-fhir-rest"},
				"payloadType":[{"coding":[{"code":"` + mcsd.DirectoryPayloadTypes[0] + `"}]}],"address":"` + srv.URL("mallory") + `"}`,
			} {
				if _, err := lrza.Put([]byte(body)); err != nil {
					t.Fatal(err)
				}
			}
			mal := srv.Directory("mallory")
			for _, body := range []string{
				`{"resourceType":"Organization","id":"mal-org","active":true,"name":"Mallory",
				"identifier":[{"system":"http://fhir.nl/fhir/NamingSystem/ura","value":"22222222"}]}`,
				`{"resourceType":"Endpoint","id":"ep-mal","status":"active","address":"matrix:u/mallory:evil.example"}`,
				`{"resourceType":"PractitionerRole","id":"r-mal","active":true,"organization":{"reference":"Organization/mal-org"},
				"identifier":[{"system":"http://fhir.nl/fhir/NamingSystem/uzi-nr-pers","value":"900012345"},
				{"system":"http://fhir.nl/fhir/NamingSystem/uzi-nr-pers","value":"900023457"}],"endpoint":[{"reference":"Endpoint/ep-mal"}]}`,
			} {
				if _, err := mal.Put([]byte(body)); err != nil {
					t.Fatal(err)
				}
			}
			idx := mcsd.NewIndex(db)
			if err := idx.Rehash(ctx, pepper); err != nil {
				t.Fatal(err)
			}
			if _, err := mcsd.NewSyncer(idx, mcsd.Options{LRZA: srv.LRZAURL(), Client: srv.Client()}).SyncAll(ctx); err != nil {
				t.Fatal(err)
			}
			peer := newPeerIS(t, map[threepid.ThreePID]string{uzi("900023457"): "@mallory:evil.example"})
			chain := lookup.Chain(lookup.Bindings(store), idx,
				lookup.Optional("peer", lookup.NewPeer(lookup.PeerOptions{BaseURL: peer.URL, Token: peer.token, Client: peer.Client()}), slog.New(slog.DiscardHandler)))

			got, err := chain.Resolve(ctx, []threepid.ThreePID{uzi("900012345"), uzi("900023457"), uzi("900034567")})
			if err != nil {
				t.Fatal(err)
			}
			want := map[threepid.ThreePID]string{
				uzi("900012345"): "@marieke:ozo.example.nl", // the binding, over both directories
				uzi("900034567"): "@f.kok:" + srv.Homeserver("hs1"),
			}
			if len(got) != len(want) || got[uzi("900012345")] != want[uzi("900012345")] || got[uzi("900034567")] != want[uzi("900034567")] {
				t.Errorf("chain: %v, want %v (900023457 withheld)", got, want)
			}
			peer.mu.Lock()
			calls := peer.calls
			peer.mu.Unlock()
			if calls != 0 {
				t.Errorf("the peer was asked %d times about a withheld UZI number", calls)
			}
			hashes := []string{threepid.LookupHashes(uzi("900012345"), pepper)[0], threepid.LookupHashes(uzi("900023457"), pepper)[0]}
			gotH, err := chain.ResolveHashes(ctx, hashes)
			if err != nil {
				t.Fatal(err)
			}
			if len(gotH) != 1 || gotH[hashes[0]] != "@marieke:ozo.example.nl" {
				t.Errorf("hashed chain: %v", gotH)
			}
		})
	}
}
