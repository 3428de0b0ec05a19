package api_test

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"maunium.net/go/mautrix/federation"

	"github.com/ozo-platform/ozo-identity/api/apitest"
	"github.com/ozo-platform/ozo-identity/config"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
)

// xff sends the request as if through a trusted proxy (the harness connects from loopback)
// with the given X-Forwarded-For header lines.
func xff(lines ...string) http.Header { return http.Header{"X-Forwarded-For": lines} }

// Item 2: a client outside v1.networks sends its own X-Forwarded-For line naming an address
// inside them; the proxy appends the real address as a second line. Every line counts, walked
// from the right, so the client is the proxy's word, not its own.
func TestForwardedForOverSeveralLines(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		h := apitest.New(t, e, func(c *config.Config) {
			c.V1.Enabled = true
			c.V1.Networks = []string{"10.1.0.0/16"}
			c.HTTP.TrustedProxies = []string{"127.0.0.0/8", "10.9.0.0/16"}
			c.RateLimits.PerClient = 3
		})
		alice := h.NewUser(t, "alice")
		h.Bind(t, alice, "alice@example.org")
		attacker := xff("10.1.2.3", "203.0.113.9")
		lookup := v1 + "/lookup" + q("medium", "email", "address", "alice@example.org")

		h.Do(t, apitest.Request{Path: lookup, Header: attacker}).Want(t, http.StatusForbidden, "M_FORBIDDEN")
		h.Do(t, apitest.Request{Method: http.MethodPost, Path: v1 + "/bulk_lookup", Header: attacker,
			Body: map[string]any{"threepids": [][]string{{"email", "alice@example.org"}}}}).Want(t, http.StatusForbidden, "M_FORBIDDEN")
		h.Do(t, apitest.Request{Method: http.MethodPost, Path: v1 + "/store-invite", Header: attacker, Body: url.Values{
			"medium": {"email"}, "address": {"x@example.org"}, "room_id": {"!r:hs.example"}, "sender": {"@a:hs.example"}}}).
			Want(t, http.StatusForbidden, "M_FORBIDDEN")
		// The same inside one line, and a hop the proxy could not have written.
		h.Do(t, apitest.Request{Path: lookup, Header: xff("10.1.2.3, 203.0.113.9")}).Want(t, http.StatusForbidden, "M_FORBIDDEN")
		h.Do(t, apitest.Request{Path: lookup, Header: xff("10.1.2.3", "unknown")}).Want(t, http.StatusForbidden, "M_FORBIDDEN")

		// A homeserver behind two trusted proxies is still recognised.
		r := h.Do(t, apitest.Request{Path: lookup, Header: xff("198.51.100.1, 10.1.2.3", "10.9.0.5")}).Want(t, http.StatusOK, "")
		if r.JSON(t)["mxid"] != alice.MXID {
			t.Fatalf("v1 lookup from the homeserver network: %s", r.Body)
		}

		// Per-client limits: inventing a first line per request does not give a fresh budget.
		for i := range 5 {
			r := h.Do(t, apitest.Request{Method: http.MethodPost, Path: v2 + "/account/register", Body: "{}",
				Header: xff(fmt.Sprintf("192.0.2.%d", i+1), "203.0.113.9")})
			if i < 3 {
				r.Want(t, http.StatusBadRequest, "M_MISSING_PARAMS")
			} else {
				r.Want(t, http.StatusTooManyRequests, "M_LIMIT_EXCEEDED")
			}
		}
		if got := h.LookupOne(t, alice, "email", "alice@example.org"); got != alice.MXID {
			t.Fatalf("binding after the attack: %q", got)
		}
	})
}

// Item 15: IPv6 clients share one budget per /64, so walking through the 2^64 addresses a
// subscriber gets does not multiply it; another /64 has its own.
func TestIPv6ClientsLimitedPer64(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		h := apitest.New(t, e, func(c *config.Config) {
			c.HTTP.TrustedProxies = []string{"127.0.0.0/8"}
			c.RateLimits.PerClient = 3
		})
		alice := h.NewUser(t, "alice")
		h.Bind(t, alice, "alice@example.org")
		register := func(client string) *apitest.Response {
			return h.Do(t, apitest.Request{Method: http.MethodPost, Path: v2 + "/account/register", Body: "{}", Header: xff(client)})
		}
		for i := range 3 {
			register(fmt.Sprintf("2001:db8:1:2::%x", i+1)).Want(t, http.StatusBadRequest, "M_MISSING_PARAMS")
		}
		register("2001:db8:1:2:ffff:ffff:ffff:ffff").Want(t, http.StatusTooManyRequests, "M_LIMIT_EXCEEDED")
		register("[2001:db8:1:2::99]:4711").Want(t, http.StatusTooManyRequests, "M_LIMIT_EXCEEDED")
		register("2001:db8:1:3::1").Want(t, http.StatusBadRequest, "M_MISSING_PARAMS")
		// IPv4 stays per address.
		register("192.0.2.1").Want(t, http.StatusBadRequest, "M_MISSING_PARAMS")
		if got := h.LookupOne(t, alice, "email", "alice@example.org"); got != alice.MXID {
			t.Fatalf("binding after the attack: %q", got)
		}
	})
}

// Item 5: a lookup is charged per address, to the account and to its homeserver; v1 lookups
// per client address; directory localisation as one address. A batch larger than a budget is
// refused outright, since it could never fit.
func TestLookupChargedPerAddress(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		h := apitest.New(t, e, func(c *config.Config) {
			c.Lookup.MaxBatch = 10000
			c.RateLimits.LookupPerAccount = 10
			c.RateLimits.LookupPerServer = 25
			c.V1.Enabled = true
			c.V1.Networks = []string{"127.0.0.0/8"}
		})
		alice := h.NewUser(t, "alice")
		bob := h.NewUser(t, "bob")
		carol := h.NewUser(t, "carol")
		h.Bind(t, alice, "alice@example.org")
		pepper := h.Pepper(t, bob)
		lookup := func(u apitest.User, n int) *apitest.Response {
			addrs := []string{"alice@example.org email"}
			for i := len(addrs); i < n; i++ {
				addrs = append(addrs, fmt.Sprintf("%09d uzi", 100000000+i))
			}
			return h.Post(t, v2+"/lookup", u.Token, map[string]any{"addresses": addrs, "algorithm": "none", "pepper": pepper})
		}
		// The attack: one request carrying thousands of UZI numbers.
		lookup(bob, 3800).Want(t, http.StatusRequestEntityTooLarge, "M_TOO_LARGE")
		lookup(bob, 11).Want(t, http.StatusRequestEntityTooLarge, "M_TOO_LARGE")
		if !strings.Contains(string(lookup(bob, 8).Want(t, http.StatusOK, "").Body), alice.MXID) {
			t.Fatal("lookup within budget did not resolve")
		}
		r := lookup(bob, 3).Want(t, http.StatusTooManyRequests, "M_LIMIT_EXCEEDED")
		if ms, ok := r.JSON(t)["retry_after_ms"].(float64); !ok || ms <= 0 || ms > 60000 {
			t.Fatalf("429 without a sensible retry_after_ms: %s", r.Body)
		}
		lookup(bob, 2).Want(t, http.StatusOK, "") // the refused 3 cost nothing
		lookup(bob, 1).Want(t, http.StatusTooManyRequests, "M_LIMIT_EXCEEDED")
		// Localisation counts as one address of the account's budget.
		h.Get(t, "/_ozo/v1/directory/homeserver"+q("medium", "uzi", "address", "900012345"), bob.Token).
			Want(t, http.StatusTooManyRequests, "M_LIMIT_EXCEEDED")
		// The homeserver's 25: bob used 10, carol 10, so 5 remain for anyone on it. The account
		// is charged first: a charge the homeserver refuses costs the account, never the server.
		lookup(carol, 10).Want(t, http.StatusOK, "")
		lookup(alice, 6).Want(t, http.StatusTooManyRequests, "M_LIMIT_EXCEEDED")
		lookup(alice, 4).Want(t, http.StatusOK, "")

		// v1 (for homeservers, by client address): bulk_lookup is charged per address as well.
		bulk := func(n int) *apitest.Response {
			var tps [][]string
			for i := range n {
				tps = append(tps, []string{"uzi", fmt.Sprintf("%09d", 200000000+i)})
			}
			return h.Post(t, v1+"/bulk_lookup", "", map[string]any{"threepids": tps})
		}
		bulk(3800).Want(t, http.StatusRequestEntityTooLarge, "M_TOO_LARGE")
		bulk(24).Want(t, http.StatusOK, "")
		h.Get(t, v1+"/lookup"+q("medium", "email", "address", "alice@example.org"), "").Want(t, http.StatusOK, "")
		h.Get(t, v1+"/lookup"+q("medium", "email", "address", "alice@example.org"), "").Want(t, http.StatusTooManyRequests, "M_LIMIT_EXCEEDED")
		bulk(1).Want(t, http.StatusTooManyRequests, "M_LIMIT_EXCEEDED")

		// Nothing was lost: the binding is there.
		var out struct {
			Bindings []map[string]any `json:"bindings"`
		}
		raw := h.Do(t, apitest.Request{Path: admin + "/bindings", Header: http.Header{"Authorization": {"Bearer " + apitest.AdminToken}}}).
			Want(t, http.StatusOK, "").Body
		if json.Unmarshal(raw, &out); len(out.Bindings) != 1 || out.Bindings[0]["mxid"] != alice.MXID {
			t.Fatalf("bindings after the attack: %s", raw)
		}
	})
}

// Item 7: X-Matrix unbind names an origin, and the server fetches that origin's keys. Whatever
// listens there (nothing, a plain socket, an HTTP error, a server without keys, a real
// homeserver with a forged signature) or whether the origin may use the server at all, the
// answer is the same 401; the calls are limited per client; bindings stay.
func TestXMatrixUnbindUniformAndLimited(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		closed, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		closedAddr := closed.Addr().String()
		closed.Close()
		plain, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { plain.Close() })
		go func() {
			for {
				c, err := plain.Accept()
				if err != nil {
					return
				}
				c.Write([]byte("SSH-2.0-OpenSSH_9.6\r\n"))
				c.Close()
			}
		}()
		failing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "nope", http.StatusInternalServerError)
		}))
		t.Cleanup(failing.Close)

		var allowed []string
		h := apitest.New(t, e, func(c *config.Config) {
			c.Homeservers.Allowed = append(c.Homeservers.Allowed, closedAddr, plain.Addr().String(),
				strings.TrimPrefix(failing.URL, "http://"), "unresolvable.invalid")
			allowed = c.Homeservers.Allowed
			c.RateLimits.PerClient = 8
		})
		alice := h.NewUser(t, "alice")
		addr := "alice@example.org"
		h.Bind(t, alice, addr)

		path := v2 + "/3pid/unbind"
		forger := federation.GenerateSigningKey()
		forger.ID = h.HS.Key.ID
		unbindAs := func(origin string) *apitest.Response {
			raw, _ := json.Marshal(map[string]any{"mxid": alice.MXID, "threepid": map[string]string{"medium": "email", "address": addr}})
			return h.Do(t, apitest.Request{Method: http.MethodPost, Path: path, Body: raw, Header: http.Header{
				"Authorization": {apitest.SignXMatrix(t, forger, origin, http.MethodPost, path, h.Config.ServerName, raw)}}})
		}
		origins := append(allowed[1:], h.HS.Name, "not-allowed.example", "127.0.0.1:22")
		var first *apitest.Response
		for _, o := range origins {
			r := unbindAs(o).Want(t, http.StatusUnauthorized, "M_UNAUTHORIZED")
			if first == nil {
				first = r
			} else if string(r.Body) != string(first.Body) {
				t.Fatalf("origin %s answered %s, %s answered %s", o, r.Body, origins[0], first.Body)
			}
		}
		if len(origins) != 7 {
			t.Fatalf("%d origins tried", len(origins))
		}
		unbindAs(h.HS.Name).Want(t, http.StatusUnauthorized, "M_UNAUTHORIZED") // the 8th
		unbindAs(h.HS.Name).Want(t, http.StatusTooManyRequests, "M_LIMIT_EXCEEDED")
		if got := h.LookupOne(t, alice, "email", addr); got != alice.MXID {
			t.Fatalf("binding after the attack: %q", got)
		}
	})
}

// Item 11: the admin token only in the Authorization header; bindings whose address holds
// "/" or "@" can be deleted; wrong tokens are limited per client address, after which even
// the right token is refused until the window is over, so guessing on learns nothing.
func TestAdminHardening(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		h := apitest.New(t, e, func(c *config.Config) {
			c.HTTP.TrustedProxies = []string{"127.0.0.0/8"}
			c.RateLimits.AdminFailuresPerClient = 3
		})
		bob := h.NewUser(t, "bob")
		mxid := "@dr.jansen:" + h.HS.Name
		call := func(method, path, token string, body any, client string) *apitest.Response {
			t.Helper()
			hdr := xff(client)
			if token != "" {
				hdr.Set("Authorization", "Bearer "+token)
			}
			return h.Do(t, apitest.Request{Method: method, Path: admin + path, Body: body, Header: hdr})
		}
		const operator = "192.0.2.10"
		addresses := []struct{ medium, address string }{
			{"email", "o/brien@example.org"},
			{"idp", "ziekenhuis-a:https://idp.example/users/jan@zorg"},
			{"idp", "ziekenhuis-a:a%2Fb"}, // a literal percent sign survives too
			{"email", "keep@example.org"},
		}
		for _, a := range addresses {
			call(http.MethodPost, "/bindings", apitest.AdminToken, map[string]any{"medium": a.medium, "address": a.address, "mxid": mxid}, operator).
				Want(t, http.StatusOK, "")
		}

		// A token in the query is refused, right or wrong, alone or next to the header.
		call(http.MethodGet, "/bindings?access_token="+apitest.AdminToken, "", nil, operator).Want(t, http.StatusUnauthorized, "M_UNAUTHORIZED")
		call(http.MethodGet, "/bindings?access_token="+apitest.AdminToken, apitest.AdminToken, nil, operator).Want(t, http.StatusUnauthorized, "M_UNAUTHORIZED")
		call(http.MethodDelete, "/bindings/email/keep@example.org?access_token="+apitest.AdminToken, "", nil, operator).
			Want(t, http.StatusUnauthorized, "M_UNAUTHORIZED")

		// Deleting by escaped path segments, as clients must send "/" (and may send "@").
		for _, a := range addresses[:3] {
			call(http.MethodDelete, "/bindings/"+a.medium+"/"+url.PathEscape(a.address), apitest.AdminToken, nil, operator).
				Want(t, http.StatusOK, "")
			if got := h.LookupOne(t, bob, a.medium, a.address); got != "" {
				t.Fatalf("%s:%s still resolves to %q after delete", a.medium, a.address, got)
			}
		}
		call(http.MethodDelete, "/bindings/email/"+url.PathEscape("o/brien@example.org"), apitest.AdminToken, nil, operator).
			Want(t, http.StatusNotFound, "M_NOT_FOUND")

		// Guessing: 3 wrong tokens, then 429 for wrong and right tokens alike from that address.
		const guesser = "203.0.113.66"
		for range 3 {
			call(http.MethodGet, "/bindings", "guess", nil, guesser).Want(t, http.StatusForbidden, "M_FORBIDDEN")
		}
		r := call(http.MethodGet, "/bindings", "guess", nil, guesser).Want(t, http.StatusTooManyRequests, "M_LIMIT_EXCEEDED")
		if r.JSON(t)["retry_after_ms"] == nil {
			t.Fatalf("429 without retry_after_ms: %s", r.Body)
		}
		call(http.MethodDelete, "/bindings/email/keep@example.org", apitest.AdminToken, nil, guesser).
			Want(t, http.StatusTooManyRequests, "M_LIMIT_EXCEEDED")
		// The operator elsewhere is not locked out, and nothing was lost.
		if got := h.LookupOne(t, bob, "email", "keep@example.org"); got != mxid {
			t.Fatalf("keep@example.org resolves to %q", got)
		}
		var out struct {
			Bindings []map[string]any `json:"bindings"`
		}
		json.Unmarshal(call(http.MethodGet, "/bindings", apitest.AdminToken, nil, operator).Want(t, http.StatusOK, "").Body, &out)
		if len(out.Bindings) != 1 || out.Bindings[0]["address"] != "keep@example.org" {
			t.Fatalf("bindings: %v", out.Bindings)
		}
	})
}

// store-invite tells whether a 3PID is bound (M_THREEPID_IN_USE), so it uses the lookup budget
// as a lookup of one address would: it cannot be the cheaper enumeration oracle.
func TestStoreInviteChargedAsLookup(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		h := apitest.New(t, e, func(c *config.Config) { c.RateLimits.LookupPerAccount = 3 })
		alice := h.NewUser(t, "alice")
		bob := h.NewUser(t, "bob")
		h.Bind(t, alice, "alice@example.org")
		h.Post(t, v2+"/store-invite", bob.Token, emailInvite(bob, "alice@example.org")).Want(t, http.StatusBadRequest, "M_THREEPID_IN_USE")
		storeInvite(t, h, bob, emailInvite(bob, "carol@example.org"))
		h.Post(t, v2+"/lookup", bob.Token, map[string]any{"addresses": []string{"dave@example.org email"}, "algorithm": "none",
			"pepper": h.Pepper(t, bob)}).Want(t, http.StatusOK, "")
		h.Post(t, v2+"/store-invite", bob.Token, emailInvite(bob, "erin@example.org")).Want(t, http.StatusTooManyRequests, "M_LIMIT_EXCEEDED")
		if got := h.LookupOne(t, alice, "email", "alice@example.org"); got != alice.MXID {
			t.Fatalf("binding: %q", got)
		}
	})
}
