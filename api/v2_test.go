package api_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.mau.fi/util/exhttp"
	"maunium.net/go/mautrix/federation"
	"maunium.net/go/mautrix/federation/signutil"
	"maunium.net/go/mautrix/id"

	"github.com/ozo-platform/ozo-identity/api/apitest"
	"github.com/ozo-platform/ozo-identity/config"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
)

func TestDiscovery(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		h := apitest.New(t, e)
		r := h.Get(t, "/_matrix/identity/versions", "").Want(t, http.StatusOK, "")
		var versions struct{ Versions []string }
		if err := json.Unmarshal(r.Body, &versions); err != nil || !strings.Contains(strings.Join(versions.Versions, " "), "v1.1") {
			t.Fatalf("versions: %s", r.Body)
		}
		if got := string(h.Get(t, v2, "").Want(t, http.StatusOK, "").Body); got != "{}\n" {
			t.Fatalf("GET /v2 answered %s", got)
		}
		h.Get(t, v2+"/", "").Want(t, http.StatusOK, "")

		pub := publicKey(t, h)
		if raw, err := base64.RawStdEncoding.DecodeString(pub); err != nil || len(raw) != 32 {
			t.Fatalf("public key %q is not unpadded base64 of 32 bytes", pub)
		}
		h.Get(t, v2+"/pubkey/ed25519:1", "").Want(t, http.StatusNotFound, "M_NOT_FOUND")
		if !valid(t, h.Get(t, v2+"/pubkey/isvalid"+q("public_key", pub), "").Want(t, http.StatusOK, "")) {
			t.Fatal("the server's own key is not valid")
		}
		if !valid(t, h.Get(t, v2+"/pubkey/isvalid"+q("public_key", pub+"="), "").Want(t, http.StatusOK, "")) {
			t.Fatal("padded form of the key is not valid")
		}
		other, _ := ephemeralKey(t)
		if valid(t, h.Get(t, v2+"/pubkey/isvalid"+q("public_key", other), "").Want(t, http.StatusOK, "")) {
			t.Fatal("a random key is valid")
		}
		if valid(t, h.Get(t, v2+"/pubkey/ephemeral/isvalid"+q("public_key", pub), "").Want(t, http.StatusOK, "")) {
			t.Fatal("the long-term key is reported as an ephemeral key")
		}
		h.Get(t, v2+"/pubkey/isvalid", "").Want(t, http.StatusBadRequest, "M_MISSING_PARAMS")
		h.Get(t, v2+"/pubkey/ephemeral/isvalid", "").Want(t, http.StatusBadRequest, "M_MISSING_PARAMS")

		h.Get(t, v2+"/no/such/endpoint", "").Want(t, http.StatusNotFound, "M_UNRECOGNIZED")
		h.Do(t, apitest.Request{Method: http.MethodPut, Path: v2 + "/lookup"}).Want(t, http.StatusMethodNotAllowed, "M_UNRECOGNIZED")
		u := h.NewUser(t, "alice")
		h.Post(t, v2+"/validate/msisdn/requestToken", u.Token, map[string]any{}).Want(t, http.StatusBadRequest, "M_UNRECOGNIZED")
	})
}

func TestAccount(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		h := apitest.New(t, e)
		u := h.Register(t, "alice")
		if got := h.Get(t, v2+"/account", u.Token).Want(t, http.StatusOK, "").Str(t, "user_id"); got != u.MXID {
			t.Fatalf("account user_id %q, want %q", got, u.MXID)
		}
		// The deprecated query parameter works too.
		h.Get(t, v2+"/account"+q("access_token", u.Token), "").Want(t, http.StatusOK, "")
		other := h.Register(t, "alice")
		if other.Token == u.Token {
			t.Fatal("two registrations got the same token")
		}

		h.Get(t, v2+"/account", "").Want(t, http.StatusUnauthorized, "M_UNAUTHORIZED")
		h.Get(t, v2+"/account", "not-a-token").Want(t, http.StatusUnauthorized, "M_UNAUTHORIZED")
		h.Do(t, apitest.Request{Path: v2 + "/account", Header: http.Header{"Authorization": {"Basic YTpi"}}}).
			Want(t, http.StatusUnauthorized, "M_UNAUTHORIZED")

		h.Post(t, v2+"/account/logout", u.Token, nil).Want(t, http.StatusOK, "")
		h.Get(t, v2+"/account", u.Token).Want(t, http.StatusUnauthorized, "M_UNAUTHORIZED")
		h.Post(t, v2+"/account/logout", u.Token, nil).Want(t, http.StatusUnauthorized, "M_UNAUTHORIZED")
		// Logging out one token leaves the other session alone.
		h.Get(t, v2+"/account", other.Token).Want(t, http.StatusOK, "")

		// An OpenID token the homeserver does not know.
		h.Post(t, v2+"/account/register", "", map[string]any{"access_token": "unknown", "token_type": "Bearer",
			"matrix_server_name": h.HS.Name, "expires_in": 3600}).Want(t, http.StatusUnauthorized, "M_UNAUTHORIZED")
		h.Post(t, v2+"/account/register", "", map[string]any{"access_token": "x", "token_type": "MAC",
			"matrix_server_name": h.HS.Name}).Want(t, http.StatusBadRequest, "M_INVALID_PARAM")
	})
}

// Registration may only reach allowed homeservers, and never loopback or private addresses
// unless those networks are allowed.
func TestRegisterGuards(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		t.Run("not on the allow-list", func(t *testing.T) {
			h := apitest.New(t, e, func(c *config.Config) { c.Homeservers.Allowed = []string{"hs.elsewhere.test"} })
			token, _ := h.HS.IssueOpenIDToken("alice")
			h.Post(t, v2+"/account/register", "", map[string]any{"access_token": token, "token_type": "Bearer",
				"matrix_server_name": h.HS.Name}).Want(t, http.StatusForbidden, "M_FORBIDDEN")
			if n := h.HS.Hits(); n != 0 {
				t.Fatalf("the homeserver got %d requests", n)
			}
		})
		t.Run("loopback not allowed", func(t *testing.T) {
			h := apitest.New(t, e, func(c *config.Config) {
				c.Homeservers.Allowed = []string{"*"}
				c.Homeservers.AllowedNetworks = nil
			})
			token, _ := h.HS.IssueOpenIDToken("alice")
			_, port, _ := net.SplitHostPort(h.HS.Name)
			for _, name := range []string{h.HS.Name, "localhost:" + port, "[::1]:" + port} {
				h.Post(t, v2+"/account/register", "", map[string]any{"access_token": token, "token_type": "Bearer",
					"matrix_server_name": name}).Want(t, http.StatusForbidden, "M_FORBIDDEN")
			}
			if n := h.HS.Hits(); n != 0 {
				t.Fatalf("the homeserver got %d requests", n)
			}
			h.Post(t, v2+"/account/register", "", map[string]any{"access_token": token,
				"matrix_server_name": "not a server name"}).Want(t, http.StatusBadRequest, "M_INVALID_PARAM")
		})
	})
}

// Taking a homeserver off the allow-list ends its users' access, tokens issued before included.
func TestAllowListAppliesToExistingTokens(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		h := apitest.New(t, e)
		u := h.Register(t, "alice")
		h.Get(t, v2+"/account", u.Token).Want(t, http.StatusOK, "")
		h.Config.Homeservers.Allowed = []string{"hs.elsewhere.test"}
		h.Restart()
		h.Get(t, v2+"/account", u.Token).Want(t, http.StatusForbidden, "M_FORBIDDEN")
		h.Get(t, v2+"/hash_details", u.Token).Want(t, http.StatusForbidden, "M_FORBIDDEN")
	})
}

func TestTerms(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		t.Run("configured", func(t *testing.T) {
			h := apitest.New(t, e)
			r := h.Get(t, v2+"/terms", "").Want(t, http.StatusOK, "")
			var terms struct {
				Policies map[string]map[string]json.RawMessage `json:"policies"`
			}
			if err := json.Unmarshal(r.Body, &terms); err != nil {
				t.Fatal(err)
			}
			if len(terms.Policies) != 2 || string(terms.Policies["privacy_policy"]["version"]) != `"1.0"` ||
				!strings.Contains(string(terms.Policies["privacy_policy"]["nl"]), apitest.PrivacyURLNl) ||
				!strings.Contains(string(terms.Policies["terms_of_service"]["en"]), apitest.TermsURLEn) {
				t.Fatalf("terms: %s", r.Body)
			}
			u := h.Register(t, "alice")
			addr := "alice@example.org"
			h.Get(t, v2+"/hash_details", u.Token).Want(t, http.StatusForbidden, "M_TERMS_NOT_SIGNED")
			h.Post(t, v2+"/validate/email/requestToken", u.Token, map[string]any{"client_secret": "s", "email": addr,
				"send_attempt": 1}).Want(t, http.StatusForbidden, "M_TERMS_NOT_SIGNED")
			h.Post(t, v2+"/terms", "", map[string]any{"user_accepts": []string{apitest.PrivacyURLEn}}).Want(t, http.StatusUnauthorized, "M_UNAUTHORIZED")
			h.Post(t, v2+"/terms", u.Token, map[string]any{"user_accepts": []string{"https://evil.test/terms"}}).
				Want(t, http.StatusBadRequest, "M_INVALID_PARAM")
			// One of two policies is not enough.
			h.Post(t, v2+"/terms", u.Token, map[string]any{"user_accepts": []string{apitest.PrivacyURLNl}}).Want(t, http.StatusOK, "")
			h.Get(t, v2+"/hash_details", u.Token).Want(t, http.StatusForbidden, "M_TERMS_NOT_SIGNED")
			h.Post(t, v2+"/terms", u.Token, map[string]any{"user_accepts": []string{apitest.TermsURLEn}}).Want(t, http.StatusOK, "")
			h.Get(t, v2+"/hash_details", u.Token).Want(t, http.StatusOK, "")
			if len(h.Mail.Messages()) != 0 {
				t.Fatal("a mail was sent before the terms were accepted")
			}
			// Acceptance belongs to the user, not the token.
			again := h.Register(t, "alice")
			h.Get(t, v2+"/hash_details", again.Token).Want(t, http.StatusOK, "")
		})
		t.Run("none configured", func(t *testing.T) {
			h := apitest.New(t, e, func(c *config.Config) { c.Terms.Policies = nil })
			if got := string(h.Get(t, v2+"/terms", "").Want(t, http.StatusOK, "").Body); got != `{"policies":{}}`+"\n" {
				t.Fatalf("terms: %s", got)
			}
			u := h.Register(t, "alice")
			h.Get(t, v2+"/hash_details", u.Token).Want(t, http.StatusOK, "")
			h.Post(t, v2+"/terms", u.Token, map[string]any{"user_accepts": []string{}}).Want(t, http.StatusOK, "")
		})
	})
}

func TestLookup(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		h := apitest.New(t, e)
		alice := h.NewUser(t, "alice")
		h.Bind(t, alice, "alice@example.org")
		bob := h.NewUser(t, "bob")

		r := h.Get(t, v2+"/hash_details", bob.Token).Want(t, http.StatusOK, "")
		var details struct {
			Algorithms []string `json:"algorithms"`
			Pepper     string   `json:"lookup_pepper"`
		}
		json.Unmarshal(r.Body, &details)
		if !strings.Contains(strings.Join(details.Algorithms, ","), "sha256") || !strings.Contains(strings.Join(details.Algorithms, ","), "none") || details.Pepper == "" {
			t.Fatalf("hash_details: %s", r.Body)
		}
		hash := sha256Hash("alice@example.org", "email", details.Pepper)
		miss := sha256Hash("nobody@example.org", "email", details.Pepper)
		got := lookupHashed(t, h, bob, hash, miss)
		if len(got) != 1 || got[hash] != alice.MXID {
			t.Fatalf("sha256 lookup: %v", got)
		}
		if got := h.LookupOne(t, bob, "email", "alice@example.org"); got != alice.MXID {
			t.Fatalf("none lookup: %q", got)
		}
		if got := h.LookupOne(t, bob, "email", "nobody@example.org"); got != "" {
			t.Fatalf("unbound address resolved to %q", got)
		}

		h.Post(t, v2+"/lookup", bob.Token, map[string]any{"addresses": []string{hash}, "algorithm": "sha256",
			"pepper": "wrong"}).Want(t, http.StatusBadRequest, "M_INVALID_PEPPER")
		h.Post(t, v2+"/lookup", bob.Token, map[string]any{"addresses": []string{hash}, "algorithm": "md5",
			"pepper": details.Pepper}).Want(t, http.StatusBadRequest, "M_INVALID_PARAM")

		batch := make([]string, h.Config.Lookup.MaxBatch)
		for i := range batch {
			batch[i] = sha256Hash("x"+string(rune('a'+i%26))+"@example.org", "email", details.Pepper)
		}
		batch[0] = hash
		if got := lookupHashed(t, h, bob, batch...); got[hash] != alice.MXID {
			t.Fatalf("full batch: %v", got)
		}
		h.Post(t, v2+"/lookup", bob.Token, map[string]any{"addresses": append(batch, miss), "algorithm": "sha256",
			"pepper": details.Pepper}).Want(t, http.StatusRequestEntityTooLarge, "M_TOO_LARGE")
	})
}

func TestEmailValidation(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		h := apitest.New(t, e)
		u := h.NewUser(t, "alice")
		addr := "alice@example.org"
		secret := apitest.Secret()
		request := func(attempt int, nextLink string) string {
			t.Helper()
			body := map[string]any{"client_secret": secret, "email": addr, "send_attempt": attempt}
			if nextLink != "" {
				body["next_link"] = nextLink
			}
			return h.Post(t, v2+"/validate/email/requestToken", u.Token, body).Want(t, http.StatusOK, "").Str(t, "sid")
		}
		sid := request(1, "")
		first := h.Mail.Wait(t, addr, 1, apitest.MailWait)
		if len(first.To) != 1 || first.To[0] != addr {
			t.Fatalf("envelope recipients %v", first.To)
		}
		token1 := apitest.ValidationLink(t, first).Get("token")
		if !strings.Contains(first.Text, token1) || !strings.Contains(first.HTML, token1) {
			t.Fatal("the token is not in both parts of the mail")
		}
		// The same or a lower send_attempt sends nothing and answers the same sid.
		for _, attempt := range []int{1, 0} {
			if again := request(attempt, ""); again != sid {
				t.Fatalf("send_attempt %d: sid %q, want %q", attempt, again, sid)
			}
		}
		if n := len(h.Mail.To(addr)); n != 1 {
			t.Fatalf("%d mails after repeating send_attempt 1, want 1", n)
		}
		if again := request(2, ""); again != sid {
			t.Fatalf("send_attempt 2: sid %q, want %q", again, sid)
		}
		token2 := apitest.ValidationLink(t, h.Mail.Wait(t, addr, 2, apitest.MailWait)).Get("token")
		if token2 == token1 {
			t.Fatal("a higher send_attempt sent the same token")
		}

		getValidated := v2 + "/3pid/getValidated3pid" + q("sid", sid, "client_secret", secret)
		h.Get(t, getValidated, u.Token).Want(t, http.StatusBadRequest, "M_SESSION_NOT_VALIDATED")
		h.Get(t, v2+"/3pid/getValidated3pid"+q("sid", sid, "client_secret", "wrong"), u.Token).Want(t, http.StatusNotFound, "M_NO_VALID_SESSION")

		// Only the newest mail's token works: the first is void, the second works through the mailed link (GET).
		h.Post(t, v2+"/validate/email/submitToken", u.Token, map[string]any{"sid": sid, "client_secret": secret, "token": token1}).
			Want(t, http.StatusBadRequest, "M_TOKEN_INCORRECT")
		h.Get(t, getValidated, u.Token).Want(t, http.StatusBadRequest, "M_SESSION_NOT_VALIDATED")
		page := h.Get(t, v2+"/validate/email/submitToken"+q("sid", sid, "client_secret", secret, "token", token2), "")
		if page.Status != http.StatusOK || !strings.HasPrefix(page.Header.Get("Content-Type"), "text/html") || !strings.Contains(string(page.Body), "bevestigd") {
			t.Fatalf("GET submitToken: HTTP %d %s\n%s", page.Status, page.Header.Get("Content-Type"), page.Body)
		}
		h.Post(t, v2+"/validate/email/submitToken", u.Token, map[string]any{"sid": sid, "client_secret": secret, "token": "not-the-token"}).
			Want(t, http.StatusBadRequest, "M_TOKEN_INCORRECT")
		bad := h.Get(t, v2+"/validate/email/submitToken"+q("sid", sid, "client_secret", secret, "token", "nope"), "")
		if bad.Status != http.StatusBadRequest || !strings.Contains(string(bad.Body), "klopt niet") {
			t.Fatalf("GET submitToken with a wrong token: HTTP %d\n%s", bad.Status, bad.Body)
		}

		r := h.Get(t, getValidated, u.Token).Want(t, http.StatusOK, "").JSON(t)
		if r["medium"] != "email" || r["address"] != addr {
			t.Fatalf("getValidated3pid: %v", r)
		}
		if ts, _ := r["validated_at"].(float64); time.Since(time.UnixMilli(int64(ts))) > time.Minute {
			t.Fatalf("validated_at %v", r["validated_at"])
		}

		// With a next_link the mailed link redirects there once validated.
		secret = apitest.Secret()
		next := h.URL + "/validated?step=2" // the public base URL's host is allowed by default
		sid = request(1, next)
		link := apitest.ValidationLink(t, h.Mail.Wait(t, addr, 3, apitest.MailWait))
		wrong := h.Get(t, v2+"/validate/email/submitToken"+q("sid", sid, "client_secret", secret, "token", "nope"), "")
		if wrong.Status == http.StatusFound {
			t.Fatal("a wrong token redirected to next_link")
		}
		redirect := h.Get(t, v2+"/validate/email/submitToken"+q("sid", sid, "client_secret", secret, "token", link.Get("token")), "")
		if redirect.Status != http.StatusFound || redirect.Header.Get("Location") != next {
			t.Fatalf("GET submitToken with next_link: HTTP %d Location %q", redirect.Status, redirect.Header.Get("Location"))
		}
		h.Post(t, v2+"/validate/email/requestToken", u.Token, map[string]any{"client_secret": apitest.Secret(), "email": addr,
			"send_attempt": 1, "next_link": "javascript:alert(1)"}).Want(t, http.StatusBadRequest, "M_INVALID_PARAM")
		h.Post(t, v2+"/validate/email/requestToken", u.Token, map[string]any{"client_secret": "bad secret!", "email": addr,
			"send_attempt": 1}).Want(t, http.StatusBadRequest, "M_INVALID_PARAM")
	})
}

// Wrong tokens are bounded: max_failed_attempts incorrect answers, then the session is locked,
// even for the right token.
func TestSubmitTokenAttemptLimit(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		h := apitest.New(t, e)
		u := h.NewUser(t, "mallory")
		s, token := h.RequestToken(t, u, "victim@example.org")
		submit := func(tok string) *apitest.Response {
			return h.Post(t, v2+"/validate/email/submitToken", u.Token, map[string]any{"sid": s.SID, "client_secret": s.ClientSecret, "token": tok})
		}
		for i := range h.Config.Validation.MaxFailedAttempts {
			submit("guess-"+string(rune('a'+i))).Want(t, http.StatusBadRequest, "M_TOKEN_INCORRECT")
		}
		submit("guess-z").Want(t, http.StatusTooManyRequests, "M_LIMIT_EXCEEDED")
		submit(token).Want(t, http.StatusTooManyRequests, "M_LIMIT_EXCEEDED")
		h.Get(t, v2+"/3pid/getValidated3pid"+q("sid", s.SID, "client_secret", s.ClientSecret), u.Token).
			Want(t, http.StatusBadRequest, "M_SESSION_NOT_VALIDATED")
		h.Post(t, v2+"/3pid/bind", u.Token, map[string]any{"sid": s.SID, "client_secret": s.ClientSecret, "mxid": u.MXID}).
			Want(t, http.StatusBadRequest, "M_SESSION_NOT_VALIDATED")
	})
}

// Short lifetimes: a token stops working after token_lifetime, a session after session_lifetime.
func TestExpiry(t *testing.T) {
	const tokenLife, sessionLife = time.Second, 3 * time.Second
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		h := apitest.New(t, e, func(c *config.Config) {
			c.Validation.TokenLifetime = tokenLife
			c.Validation.SessionLifetime = sessionLife
		})
		u := h.NewUser(t, "alice")
		kept := h.Bind(t, u, "kept@example.org")
		_ = kept
		start := time.Now()
		s, token := h.RequestToken(t, u, "alice@example.org")
		time.Sleep(tokenLife + 200*time.Millisecond)
		submit := func(tok string) *apitest.Response {
			return h.Post(t, v2+"/validate/email/submitToken", u.Token, map[string]any{"sid": s.SID, "client_secret": s.ClientSecret, "token": tok})
		}
		submit(token).Want(t, http.StatusBadRequest, "M_TOKEN_INCORRECT")
		getValidated := v2 + "/3pid/getValidated3pid" + q("sid", s.SID, "client_secret", s.ClientSecret)
		h.Get(t, getValidated, u.Token).Want(t, http.StatusBadRequest, "M_SESSION_NOT_VALIDATED")
		// A new send attempt mails a fresh token, which works while the session lives.
		h.Post(t, v2+"/validate/email/requestToken", u.Token, map[string]any{"client_secret": s.ClientSecret, "email": s.Address,
			"send_attempt": 2}).Want(t, http.StatusOK, "")
		fresh := apitest.ValidationLink(t, h.Mail.Wait(t, s.Address, 2, apitest.MailWait)).Get("token")
		submit(fresh).Want(t, http.StatusOK, "")
		h.Get(t, getValidated, u.Token).Want(t, http.StatusOK, "")

		time.Sleep(time.Until(start.Add(sessionLife + 300*time.Millisecond)))
		h.Get(t, getValidated, u.Token).Want(t, http.StatusBadRequest, "M_SESSION_EXPIRED")
		h.Post(t, v2+"/3pid/bind", u.Token, map[string]any{"sid": s.SID, "client_secret": s.ClientSecret, "mxid": u.MXID}).
			Want(t, http.StatusBadRequest, "M_SESSION_EXPIRED")
		submit(fresh).Want(t, http.StatusBadRequest, "M_SESSION_EXPIRED")
		h.Post(t, v2+"/validate/email/requestToken", u.Token, map[string]any{"client_secret": s.ClientSecret, "email": s.Address,
			"send_attempt": 3}).Want(t, http.StatusBadRequest, "M_SESSION_EXPIRED")
		if got := h.LookupOne(t, u, "email", "alice@example.org"); got != "" {
			t.Fatalf("expired session bound the address to %q", got)
		}
		if got := h.LookupOne(t, u, "email", "kept@example.org"); got != u.MXID {
			t.Fatalf("earlier binding lost: %q", got)
		}
	})
}

func TestBind(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		h := apitest.New(t, e)
		alice := h.NewUser(t, "alice")
		bob := h.NewUser(t, "bob")
		s := h.ValidateEmail(t, alice, "Alice@Example.org")
		bind := func(u apitest.User, mxid string) *apitest.Response {
			return h.Post(t, v2+"/3pid/bind", u.Token, map[string]any{"sid": s.SID, "client_secret": s.ClientSecret, "mxid": mxid})
		}
		bind(alice, bob.MXID).Want(t, http.StatusForbidden, "M_FORBIDDEN")
		if got := h.LookupOne(t, bob, "email", "alice@example.org"); got != "" {
			t.Fatalf("a refused bind stored a binding to %q", got)
		}
		r := bind(alice, alice.MXID).Want(t, http.StatusOK, "")
		wantKeys(t, r.Body, "address", "medium", "mxid", "not_before", "not_after", "ts", "signatures")
		verifyServerSigned(t, h, r.Body)
		assoc := r.JSON(t)
		if assoc["address"] != "alice@example.org" || assoc["medium"] != "email" || assoc["mxid"] != alice.MXID {
			t.Fatalf("association: %s", r.Body)
		}
		nb, _ := assoc["not_before"].(float64)
		na, _ := assoc["not_after"].(float64)
		ts, _ := assoc["ts"].(float64)
		if !(nb <= ts && ts < na) || time.Since(time.UnixMilli(int64(ts))) > time.Minute {
			t.Fatalf("association times: %s", r.Body)
		}
		if got := h.LookupOne(t, bob, "email", "alice@example.org"); got != alice.MXID {
			t.Fatalf("lookup after bind: %q", got)
		}
	})
}

// identityPath lets mautrix's federation client sign and send to an identity-server path.
type identityPath []any

func (p identityPath) FullPath() []any { return p }

func TestUnbind(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		h := apitest.New(t, e)
		alice := h.NewUser(t, "alice")
		bob := h.NewUser(t, "bob")
		addr := "alice@example.org"
		unbindBody := func(s *apitest.Session, mxid, address string) map[string]any {
			b := map[string]any{"mxid": mxid, "threepid": map[string]string{"medium": "email", "address": address}}
			if s != nil {
				b["sid"], b["client_secret"] = s.SID, s.ClientSecret
			}
			return b
		}
		bound := func() string { return h.LookupOne(t, bob, "email", addr) }

		t.Run("by session", func(t *testing.T) {
			h.Bind(t, alice, addr)
			other := h.ValidateEmail(t, bob, "bob@example.org")
			h.Post(t, v2+"/3pid/unbind", "", unbindBody(&other, alice.MXID, addr)).Want(t, http.StatusForbidden, "M_FORBIDDEN")
			h.Post(t, v2+"/3pid/unbind", "", unbindBody(nil, alice.MXID, addr)).Want(t, http.StatusUnauthorized, "M_UNAUTHORIZED")
			s := h.ValidateEmail(t, alice, addr)
			h.Post(t, v2+"/3pid/unbind", "", unbindBody(&apitest.Session{SID: s.SID, ClientSecret: "wrong"}, alice.MXID, addr)).
				Want(t, http.StatusNotFound, "M_NO_VALID_SESSION")
			h.Post(t, v2+"/3pid/unbind", "", unbindBody(&s, bob.MXID, addr)).Want(t, http.StatusNotFound, "M_NOT_FOUND")
			if got := bound(); got != alice.MXID {
				t.Fatalf("refused unbinds changed the binding: %q", got)
			}
			h.Post(t, v2+"/3pid/unbind", "", unbindBody(&s, alice.MXID, addr)).Want(t, http.StatusOK, "")
			if got := bound(); got != "" {
				t.Fatalf("still bound to %q", got)
			}
		})

		t.Run("signed by the homeserver with mautrix", func(t *testing.T) {
			h.Bind(t, alice, addr)
			fc := federation.NewClient(h.HS.Name, h.HS.Key, nil, exhttp.SensibleClientSettings.WithTLSConfig(h.CA.ClientTLSConfig()))
			fc.AllowIP = func(net.IP) bool { return true }
			var out map[string]any
			_, _, err := fc.MakeFullRequest(context.Background(), federation.RequestParams{
				ServerName:   h.Config.ServerName,
				Method:       http.MethodPost,
				Path:         identityPath{"_matrix", "identity", "v2", "3pid", "unbind"},
				Authenticate: true,
				RequestJSON:  unbindBody(nil, alice.MXID, addr),
				ResponseJSON: &out,
			})
			if err != nil {
				t.Fatalf("X-Matrix unbind: %v", err)
			}
			if got := bound(); got != "" {
				t.Fatalf("still bound to %q", got)
			}
		})

		t.Run("signed by the homeserver by hand", func(t *testing.T) {
			h.Bind(t, alice, addr)
			path := v2 + "/3pid/unbind"
			send := func(body map[string]any, sign func([]byte) string) *apitest.Response {
				raw, _ := json.Marshal(body)
				return h.Do(t, apitest.Request{Method: http.MethodPost, Path: path, Body: raw,
					Header: http.Header{"Authorization": {sign(raw)}}})
			}
			good := func(raw []byte) string { return h.HS.SignRequest(t, http.MethodPost, path, h.Config.ServerName, raw) }
			forger := federation.GenerateSigningKey()
			forger.ID = h.HS.Key.ID
			forged := func(raw []byte) string {
				return apitest.SignXMatrix(t, forger, h.HS.Name, http.MethodPost, path, h.Config.ServerName, raw)
			}
			send(unbindBody(nil, alice.MXID, addr), forged).Want(t, http.StatusUnauthorized, "M_UNAUTHORIZED")
			// A homeserver may only unbind its own users.
			send(unbindBody(nil, "@alice:other.example.org", addr), good).Want(t, http.StatusForbidden, "M_FORBIDDEN")
			// The signature covers the body: a different body does not verify.
			send(unbindBody(nil, alice.MXID, addr), func([]byte) string {
				raw, _ := json.Marshal(unbindBody(nil, alice.MXID, "other@example.org"))
				return good(raw)
			}).Want(t, http.StatusUnauthorized, "M_UNAUTHORIZED")
			if got := bound(); got != alice.MXID {
				t.Fatalf("refused unbinds changed the binding: %q", got)
			}
			send(unbindBody(nil, alice.MXID, addr), good).Want(t, http.StatusOK, "")
			if got := bound(); got != "" {
				t.Fatalf("still bound to %q", got)
			}
			send(unbindBody(nil, alice.MXID, addr), good).Want(t, http.StatusNotFound, "M_NOT_FOUND")
		})
	})
}

func TestStoreInvite(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		h := apitest.New(t, e)
		alice := h.NewUser(t, "alice")
		addr := "carol.devries@zorg.example.nl"
		inv := storeInvite(t, h, alice, emailInvite(alice, addr))
		if inv.DisplayName != "car...@zor..." || strings.Contains(inv.DisplayName, "devries") {
			t.Fatalf("display_name %q is not redacted", inv.DisplayName)
		}
		pub := publicKey(t, h)
		if inv.PublicKey != pub || inv.PublicKeys[0].PublicKey != pub ||
			inv.PublicKeys[0].KeyValidityURL != h.URL+v2+"/pubkey/isvalid" {
			t.Fatalf("long-term key entry: %+v (published %s)", inv, pub)
		}
		eph := inv.PublicKeys[1]
		if eph.PublicKey == pub || eph.KeyValidityURL != h.URL+v2+"/pubkey/ephemeral/isvalid" {
			t.Fatalf("ephemeral key entry: %+v", eph)
		}
		if !valid(t, h.Get(t, v2+"/pubkey/ephemeral/isvalid"+q("public_key", eph.PublicKey), "").Want(t, http.StatusOK, "")) {
			t.Fatal("the ephemeral key is not valid")
		}
		if valid(t, h.Get(t, v2+"/pubkey/isvalid"+q("public_key", eph.PublicKey), "").Want(t, http.StatusOK, "")) {
			t.Fatal("the ephemeral key passes as the long-term key")
		}

		m := h.Mail.Wait(t, addr, 1, apitest.MailWait)
		if len(m.To) != 1 || m.To[0] != addr || m.Header.Get("To") == "" || !strings.Contains(m.Header.Get("To"), addr) {
			t.Fatalf("invite mail envelope %v To %q", m.To, m.Header.Get("To"))
		}
		if !strings.Contains(m.Text, "Zorgteam Jansen") || !strings.Contains(m.Text, "Dr. Alice") {
			t.Fatalf("invite mail lacks room or sender:\n%s", m.Text)
		}

		// Another 3PID medium: no mail, redacted display name.
		uzi := storeInvite(t, h, alice, map[string]any{"medium": "uzi_nr", "address": "012345678", "room_id": "!r:hs.ozo.test", "sender": alice.MXID})
		if uzi.DisplayName != "UZI ...678" {
			t.Fatalf("uzi display_name %q", uzi.DisplayName)
		}

		// sign-ed25519 signs {mxid, sender, token} with the ephemeral private key mailed with the
		// invite, and with no other.
		priv := inviteSignURL(t, m).Query().Get("private_key")
		pubKey, _ := base64.RawStdEncoding.DecodeString(eph.PublicKey)
		other, _ := ephemeralKey(t)
		h.Post(t, v2+"/sign-ed25519", alice.Token, map[string]any{"mxid": "@carol:hs.ozo.test", "token": inv.Token, "private_key": other}).
			Want(t, http.StatusForbidden, "M_FORBIDDEN")
		signed := h.Post(t, v2+"/sign-ed25519", alice.Token, map[string]any{"mxid": "@carol:hs.ozo.test", "token": inv.Token, "private_key": priv}).
			Want(t, http.StatusOK, "")
		wantKeys(t, signed.Body, "mxid", "sender", "token", "signatures")
		if err := signutil.VerifyJSON(h.Config.ServerName, "ed25519:0", id.SigningKey(base64.RawStdEncoding.EncodeToString(pubKey)), json.RawMessage(signed.Body)); err != nil {
			t.Fatalf("sign-ed25519 signature: %v\n%s", err, signed.Body)
		}
		if s := signed.JSON(t); s["sender"] != alice.MXID || s["token"] != inv.Token {
			t.Fatalf("sign-ed25519: %s", signed.Body)
		}
		h.Post(t, v2+"/sign-ed25519", alice.Token, map[string]any{"mxid": "@carol:hs.ozo.test", "token": "unknown", "private_key": priv}).
			Want(t, http.StatusNotFound, "M_NOT_FOUND")
		h.Post(t, v2+"/sign-ed25519", "", map[string]any{"mxid": "@carol:hs.ozo.test", "token": inv.Token, "private_key": priv}).
			Want(t, http.StatusUnauthorized, "M_UNAUTHORIZED")

		// A bound address is not invited by email: the inviter should invite the MXID.
		h.Bind(t, alice, "alice@example.org")
		mails := len(h.Mail.Messages())
		h.Post(t, v2+"/store-invite", alice.Token, emailInvite(alice, "alice@example.org")).Want(t, http.StatusBadRequest, "M_THREEPID_IN_USE")
		h.Post(t, v2+"/store-invite", alice.Token, emailInvite(alice, "ALICE@example.org")).Want(t, http.StatusBadRequest, "M_THREEPID_IN_USE")
		if n := len(h.Mail.Messages()); n != mails {
			t.Fatal("an invite mail went to a bound address")
		}
	})
}

// A pending invite reaches the homeserver once the address is validated and bound.
func TestPendingInviteDelivered(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		h := apitest.New(t, e)
		alice := h.NewUser(t, "alice")
		bob := h.NewUser(t, "bob")
		addr := "bob.work@example.org"
		inv := storeInvite(t, h, alice, emailInvite(alice, addr))
		other := storeInvite(t, h, alice, emailInvite(alice, "someone.else@example.org"))
		if n := len(h.HS.OnBinds()); n != 0 {
			t.Fatalf("%d onbinds before any bind", n)
		}
		h.Bind(t, bob, addr)

		ob := waitDelivered(t, h, 1)
		var body struct {
			Address, Medium, MXID string
			Invites               []map[string]json.RawMessage
		}
		if err := json.Unmarshal(ob.Body, &body); err != nil {
			t.Fatalf("onbind body: %v\n%s", err, ob.Body)
		}
		if body.Address != addr || body.Medium != "email" || body.MXID != bob.MXID || len(body.Invites) != 1 {
			t.Fatalf("onbind body: %s", ob.Body)
		}
		got := body.Invites[0]
		var str = func(k string) string {
			var s string
			json.Unmarshal(got[k], &s)
			return s
		}
		if str("address") != addr || str("medium") != "email" || str("mxid") != bob.MXID ||
			str("room_id") != "!zorgteam:hs.ozo.test" || str("sender") != alice.MXID {
			t.Fatalf("invite in onbind: %s", ob.Body)
		}
		signed := got["signed"]
		wantKeys(t, signed, "mxid", "token", "signatures")
		var s struct{ MXID, Token string }
		json.Unmarshal(signed, &s)
		if s.MXID != bob.MXID || s.Token != inv.Token || s.Token == other.Token {
			t.Fatalf("signed: %s (invite token %s)", signed, inv.Token)
		}
		verifyServerSigned(t, h, signed)

		// The address is bound now: no new invite by email.
		h.Post(t, v2+"/store-invite", alice.Token, emailInvite(alice, addr)).Want(t, http.StatusBadRequest, "M_THREEPID_IN_USE")
		// Binding again does not deliver the same invite twice.
		h.Bind(t, bob, addr)
		time.Sleep(300 * time.Millisecond)
		if n := len(h.HS.OnBinds()); n != 1 {
			t.Fatalf("%d onbind calls, want 1", n)
		}
	})
}

func waitDelivered(t *testing.T, h *apitest.Harness, n int) apitest.OnBind {
	t.Helper()
	deadline := time.After(15 * time.Second)
	for {
		if got := h.HS.Delivered(); len(got) >= n {
			return got[n-1]
		}
		select {
		case <-h.HS.Notify():
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			t.Fatalf("onbind %d not delivered within 15s; calls: %d", n, len(h.HS.OnBinds()))
		}
	}
}

// A room name cannot add a header or a recipient to the invite mail.
func TestInviteMailHeaderInjection(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		h := apitest.New(t, e)
		alice := h.NewUser(t, "alice")
		addr := "invitee@example.org"
		body := emailInvite(alice, addr)
		body["room_name"] = "Zorg\r\nBcc: evil@example.org"
		body["sender_display_name"] = "Eve\nCc: evil2@example.org"
		storeInvite(t, h, alice, body)
		m := h.Mail.Wait(t, addr, 1, apitest.MailWait)
		if len(m.To) != 1 || m.To[0] != addr {
			t.Fatalf("envelope recipients %v", m.To)
		}
		for _, name := range []string{"Bcc", "Cc", "Resent-To", "Resent-Bcc"} {
			if hasHeader(m, name) {
				t.Fatalf("mail has a %s header:\n%s", name, m.Raw)
			}
		}
		to, err := m.Header.AddressList("To")
		if err != nil || len(to) != 1 || to[0].Address != addr {
			t.Fatalf("To %q: %v", m.Header.Get("To"), err)
		}
		if n := len(h.Mail.Messages()); n != 1 {
			t.Fatalf("%d messages, want 1", n)
		}
	})
}

// TestSendAttemptDigitString: matrix-js-sdk's requestEmailToken sends send_attempt as "1". A
// string of digits counts as the number it spells, in the same session as numbers; any other
// string is refused and leaves the session as it was.
func TestSendAttemptDigitString(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		h := apitest.New(t, e)
		u := h.NewUser(t, "alice")
		addr := "alice@example.org"
		secret := apitest.Secret()
		request := func(attempt any) *apitest.Response {
			return h.Post(t, v2+"/validate/email/requestToken", u.Token,
				map[string]any{"client_secret": secret, "email": addr, "send_attempt": attempt})
		}
		sid := request("1").Want(t, http.StatusOK, "").Str(t, "sid")
		h.Mail.Wait(t, addr, 1, apitest.MailWait)
		if again := request(1).Want(t, http.StatusOK, "").Str(t, "sid"); again != sid {
			t.Fatalf("number 1 after string \"1\": sid %q, want %q", again, sid)
		}
		for _, bad := range []any{"1.5", "-1", " 1", "1 ", "+1", "1e3", "", "0x1", "١"} {
			request(bad).Want(t, http.StatusBadRequest, "M_BAD_JSON")
		}
		if n := len(h.Mail.To(addr)); n != 1 {
			t.Fatalf("%d mails, want 1: a repeated or refused send_attempt sent mail", n)
		}
		if again := request("0002").Want(t, http.StatusOK, "").Str(t, "sid"); again != sid {
			t.Fatalf("send_attempt \"0002\": sid %q, want %q", again, sid)
		}
		token := apitest.ValidationLink(t, h.Mail.Wait(t, addr, 2, apitest.MailWait)).Get("token")
		h.Post(t, v2+"/validate/email/submitToken", u.Token, map[string]any{"sid": sid, "client_secret": secret, "token": token}).
			Want(t, http.StatusOK, "")
	})
}
