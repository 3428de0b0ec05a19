package api_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/api/apitest"
	"github.com/ozo-platform/ozo-identity/config"
	"github.com/ozo-platform/ozo-identity/email/smtptest"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
	"github.com/ozo-platform/ozo-identity/threepid"
)

// The regression tests of issue 10 items 3, 4, 6, 14 and 16: each performs the attack and then
// checks that what was stored before is intact.

var inviteLinkRE = regexp.MustCompile(`https?://[^\s"'<>]+/#/room/[^\s"'<>]+`)

// earlierState makes a binding and a pending invite that every attack below must leave intact.
type earlierState struct {
	alice       apitest.User
	boundAddr   string
	inviteToken string
}

func makeEarlierState(t *testing.T, h *apitest.Harness) earlierState {
	t.Helper()
	alice := h.NewUser(t, "alice")
	h.Bind(t, alice, "alice@zorg.example.nl")
	inv := storeInvite(t, h, alice, emailInvite(alice, "pending.before@zorg.example.nl"))
	return earlierState{alice: alice, boundAddr: "alice@zorg.example.nl", inviteToken: inv.Token}
}

func (e earlierState) check(t *testing.T, h *apitest.Harness) {
	t.Helper()
	if got := h.LookupOne(t, e.alice, "email", e.boundAddr); got != e.alice.MXID {
		t.Fatalf("earlier binding of %s: %q, want %q", e.boundAddr, got, e.alice.MXID)
	}
	inv, err := h.App.Store.GetInvite(t.Context(), e.inviteToken)
	if err != nil || inv.Sender != e.alice.MXID {
		t.Fatalf("earlier invite: %+v %v", inv, err)
	}
	pending, err := h.App.Store.PendingInvites(t.Context(), threepid.ThreePID{Medium: "email", Address: "pending.before@zorg.example.nl"})
	if err != nil || len(pending) != 1 {
		t.Fatalf("earlier invite no longer pending: %v %v", pending, err)
	}
}

// Item 3: with Bob's token, an invite in the name of the board with a look-alike login page as
// web client is refused; Bob's own invite names Bob as verified sender and links to the
// configured client. v1 store-invite from the homeserver network keeps working.
func TestInviteSenderSpoofing(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		h := apitest.New(t, e, func(c *config.Config) {
			c.V1.Enabled = true
			c.V1.Networks = []string{"127.0.0.0/8"}
			c.Invites.WebClientLocation = "https://zorgchat.ozo.test"
			c.Invites.WebClientLocations = []string{"https://zorgchat.ozo.test", "https://element.ozo.test/"}
		})
		before := makeEarlierState(t, h)
		bob := h.NewUser(t, "bob")
		victim := "raad.van.bestuur@ziekenhuis.example.nl"
		spoof := map[string]any{"medium": "email", "address": victim, "room_id": "!board:hs.ozo.test",
			"sender": "@directeur:ziekenhuis.nl", "sender_display_name": "Raad v. Bestuur",
			"org.matrix.web_client_location": "https://zorgchat-login.evil.example"}
		h.Post(t, v2+"/store-invite", bob.Token, spoof).Want(t, http.StatusForbidden, "M_FORBIDDEN")
		if n := len(h.Mail.To(victim)); n != 0 {
			t.Fatalf("%d mails sent for a spoofed sender", n)
		}
		if p, _ := h.App.Store.PendingInvites(t.Context(), threepid.ThreePID{Medium: "email", Address: victim}); len(p) != 0 {
			t.Fatalf("spoofed invite stored: %+v", p)
		}

		// As himself, Bob still cannot choose where the join link (with the private key) goes.
		spoof["sender"] = bob.MXID
		storeInvite(t, h, bob, spoof)
		m := h.Mail.Wait(t, victim, 1, apitest.MailWait)
		for _, part := range []string{m.Text, m.HTML} {
			if strings.Contains(part, "evil.example") {
				t.Fatalf("the mail links to the attacker's site:\n%s", part)
			}
			if !strings.Contains(part, "("+bob.MXID+")") {
				t.Fatalf("the mail does not name the verified sender %s:\n%s", bob.MXID, part)
			}
		}
		if link := inviteLinkRE.FindString(m.Text); !strings.HasPrefix(link, "https://zorgchat.ozo.test/#/room/") {
			t.Fatalf("join link %q, want the configured client", link)
		}
		// A listed client is honoured, as Element users of that deployment expect.
		spoof["org.matrix.web_client_location"] = "https://element.ozo.test"
		storeInvite(t, h, bob, spoof)
		if link := inviteLinkRE.FindString(h.Mail.Wait(t, victim, 2, apitest.MailWait).Text); !strings.HasPrefix(link, "https://element.ozo.test/#/room/") {
			t.Fatalf("join link %q, want the listed client", link)
		}

		// v1 (homeserver network, no token) names the sender the homeserver gives.
		r := h.Do(t, apitest.Request{Method: http.MethodPost, Path: v1 + "/store-invite", Body: url.Values{
			"medium": {"email"}, "address": {"v1.invitee@example.org"}, "room_id": {"!r:hs.ozo.test"}, "sender": {"@carol:hs.ozo.test"}}})
		r.Want(t, http.StatusOK, "")
		if m := h.Mail.Wait(t, "v1.invitee@example.org", 1, apitest.MailWait); !strings.Contains(m.Text, "@carol:hs.ozo.test") {
			t.Fatalf("v1 invite mail:\n%s", m.Text)
		}
		before.check(t, h)
	})
}

// Item 4: 2000 junk invites for one UZI from many senders are capped; the invite sent before
// them reaches the homeserver after the bind, in onbind requests bounded by count and bytes,
// and an invite the homeserver refuses fails on its own.
func TestInviteFlood(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		// A homeserver with a small body limit: batches must be cut by bytes, not only by count.
		h := apitest.New(t, e, func(c *config.Config) { c.Invites.OnBindMaxBytes = 8 << 10 })
		before := makeEarlierState(t, h)
		cfg := h.Config.Invites
		uzi := "000000111"
		legit := storeInvite(t, h, before.alice, map[string]any{"medium": "uzi", "address": uzi,
			"room_id": "!zorgteam:hs.ozo.test", "sender": before.alice.MXID})

		// The homeserver refuses oversized requests, as Synapse does, and one invite it rejects.
		h.HS.SetOnBindRule(func(body []byte) int {
			switch {
			case len(body) > cfg.OnBindMaxBytes:
				return http.StatusRequestEntityTooLarge
			case bytes.Contains(body, []byte(`"room_id":"!poison:evil.example"`)):
				return http.StatusBadRequest
			}
			return 0
		})

		const senders, perSender = 40, 50
		users := make([]apitest.User, senders)
		for i := range users {
			users[i] = h.NewUser(t, fmt.Sprintf("mallory%d", i))
		}
		var mu sync.Mutex
		accepted, limited := 0, 0
		var wg sync.WaitGroup
		jobs := make(chan int)
		for range 8 {
			wg.Go(func() {
				for n := range jobs {
					u := users[n%senders]
					room := fmt.Sprintf("!junk%d%s:evil.example", n, strings.Repeat("j", 200))
					if n == 0 {
						room = "!poison:evil.example"
					}
					body := map[string]any{"medium": "uzi", "address": uzi, "room_id": room, "sender": u.MXID,
						"room_name": strings.Repeat("x", 1000), "sender_display_name": strings.Repeat("y", 1000)}
					r := h.Do(t, apitest.Request{Method: http.MethodPost, Path: v2 + "/store-invite", Token: u.Token, Body: body,
						Header: http.Header{"X-Forwarded-For": {fmt.Sprintf("198.51.100.%d", n%34)}}})
					mu.Lock()
					switch {
					case r.Status == http.StatusOK:
						accepted++
					case r.Status == http.StatusTooManyRequests && r.Errcode() == "M_LIMIT_EXCEEDED":
						limited++
					default:
						t.Errorf("junk invite %d: HTTP %d %s", n, r.Status, r.Body)
					}
					mu.Unlock()
				}
			})
		}
		for n := range senders * perSender {
			jobs <- n
		}
		close(jobs)
		wg.Wait()
		if accepted != cfg.MaxPendingPerThreePID-1 || accepted+limited != senders*perSender {
			t.Fatalf("junk: %d accepted, %d limited; want %d accepted", accepted, limited, cfg.MaxPendingPerThreePID-1)
		}

		// One sender's pending invites are capped too, whatever the 3PIDs.
		solo := h.NewUser(t, "spammer")
		for i := range cfg.MaxPendingPerSender {
			storeInvite(t, h, solo, map[string]any{"medium": "uzi", "address": fmt.Sprintf("1%08d", i), "room_id": "!spam:evil.example", "sender": solo.MXID})
		}
		h.Post(t, v2+"/store-invite", solo.Token, map[string]any{"medium": "uzi", "address": "299999999", "room_id": "!spam:evil.example", "sender": solo.MXID}).
			Want(t, http.StatusTooManyRequests, "M_LIMIT_EXCEEDED")

		// The practitioner is bound (admin): the pending invites are delivered in bounded batches.
		drecht := "@drecht:" + h.HS.Name
		h.Do(t, apitest.Request{Method: http.MethodPost, Path: admin + "/bindings", Header: http.Header{"Authorization": {"Bearer " + apitest.AdminToken}},
			Body: map[string]any{"medium": "uzi", "address": uzi, "mxid": drecht}}).Want(t, http.StatusOK, "")
		deadline := time.Now().Add(30 * time.Second)
		for {
			ds, err := h.App.Store.ListDeliveries(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if len(ds) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d onbind deliveries still queued", len(ds))
			}
			time.Sleep(100 * time.Millisecond)
		}
		delivered := map[string]bool{}
		for _, ob := range h.HS.OnBinds() {
			var body struct {
				Invites []struct {
					Token  string `json:"token"`
					RoomID string `json:"room_id"`
				} `json:"invites"`
			}
			if err := json.Unmarshal(ob.Body, &body); err != nil {
				t.Fatalf("onbind body: %v", err)
			}
			if len(body.Invites) > cfg.OnBindMaxInvites || len(ob.Body) > cfg.OnBindMaxBytes {
				t.Fatalf("onbind with %d invites, %d bytes; bounds %d, %d", len(body.Invites), len(ob.Body), cfg.OnBindMaxInvites, cfg.OnBindMaxBytes)
			}
			if ob.Status != http.StatusOK {
				continue
			}
			for _, inv := range body.Invites {
				if inv.RoomID == "!poison:evil.example" {
					t.Fatal("the refused invite counts as delivered")
				}
				delivered[inv.Token] = true
			}
		}
		if !delivered[legit.Token] {
			t.Fatal("the legitimate invite was not delivered")
		}
		// Everything stored but the refused invite arrived: the 400 took nothing else with it.
		if len(delivered) != cfg.MaxPendingPerThreePID-1 {
			t.Fatalf("%d invites delivered, want %d", len(delivered), cfg.MaxPendingPerThreePID-1)
		}
		before.check(t, h)
	})
}

// Item 4: expired invites and their ephemeral keys are pruned by the periodic job (it runs at
// start, then hourly); live ones stay.
func TestExpiredInvitesPruned(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		h := apitest.New(t, e, func(c *config.Config) { c.Invites.Lifetime = time.Second })
		alice := h.NewUser(t, "alice")
		h.Bind(t, alice, "alice@zorg.example.nl")
		old := storeInvite(t, h, alice, map[string]any{"medium": "uzi", "address": "000000222", "room_id": "!r:hs.ozo.test", "sender": alice.MXID})
		time.Sleep(1100 * time.Millisecond)
		h.Config.Invites.Lifetime = time.Hour
		h.Restart()
		live := storeInvite(t, h, alice, map[string]any{"medium": "uzi", "address": "000000222", "room_id": "!r2:hs.ozo.test", "sender": alice.MXID})
		keyValid := func(key string) bool {
			return valid(t, h.Get(t, v2+"/pubkey/ephemeral/isvalid"+q("public_key", key), "").Want(t, http.StatusOK, ""))
		}
		deadline := time.Now().Add(10 * time.Second)
		for keyValid(old.PublicKeys[1].PublicKey) {
			if time.Now().After(deadline) {
				t.Fatal("expired ephemeral key not pruned")
			}
			time.Sleep(50 * time.Millisecond)
		}
		if _, err := h.App.Store.GetInvite(t.Context(), old.Token); err == nil {
			t.Fatal("expired invite not pruned")
		}
		if !keyValid(live.PublicKeys[1].PublicKey) {
			t.Fatal("live ephemeral key pruned")
		}
		if _, err := h.App.Store.GetInvite(t.Context(), live.Token); err != nil {
			t.Fatalf("live invite: %v", err)
		}
		if got := h.LookupOne(t, alice, "email", "alice@zorg.example.nl"); got != alice.MXID {
			t.Fatalf("earlier binding: %q", got)
		}
	})
}

// Item 6: next_link only to https on allowed hosts, over v2 and v1; a stored next_link whose
// host is no longer allowed does not redirect.
func TestNextLinkAllowList(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		h := apitest.New(t, e, func(c *config.Config) {
			c.V1.Enabled = true
			c.V1.Networks = []string{"127.0.0.0/8"}
			c.Invites.WebClientLocation = "https://zorgchat.ozo.test"
		})
		before := makeEarlierState(t, h)
		u := h.NewUser(t, "bob")
		addr := "bob@zorg.example.nl"
		mails := len(h.Mail.To(addr))
		self, err := url.Parse(h.URL)
		if err != nil {
			t.Fatal(err)
		}
		for _, link := range []string{
			"https://evil.example/zorg-login",
			"http://127.0.0.1:9999/admin",
			"http://" + self.Host + "/validated",       // allowed host, but not https
			"https://" + self.Host + "@evil.example/x", // userinfo trick: the host is evil.example
			"https://zorgchat.ozo.test.evil.example/",
			"javascript:alert(1)",
		} {
			h.Post(t, v2+"/validate/email/requestToken", u.Token, map[string]any{"client_secret": apitest.Secret(), "email": addr,
				"send_attempt": 1, "next_link": link}).Want(t, http.StatusBadRequest, "M_INVALID_PARAM")
			h.Do(t, apitest.Request{Method: http.MethodPost, Path: v1 + "/validate/email/requestToken", Body: url.Values{
				"client_secret": {apitest.Secret()}, "email": {addr}, "send_attempt": {"1"}, "next_link": {link}}}).
				Want(t, http.StatusBadRequest, "M_INVALID_PARAM")
		}
		if n := len(h.Mail.To(addr)); n != mails {
			t.Fatalf("%d mails sent for refused next_links", n-mails)
		}
		// The public base URL's host and the configured client are allowed.
		for i, link := range []string{h.URL + "/validated", "https://zorgchat.ozo.test/#/validated"} {
			secret := apitest.Secret()
			sid := h.Post(t, v2+"/validate/email/requestToken", u.Token, map[string]any{"client_secret": secret, "email": addr,
				"send_attempt": 1, "next_link": link}).Want(t, http.StatusOK, "").Str(t, "sid")
			token := apitest.ValidationLink(t, h.Mail.Wait(t, addr, mails+i+1, apitest.MailWait)).Get("token")
			r := h.Get(t, v2+"/validate/email/submitToken"+q("sid", sid, "client_secret", secret, "token", token), "")
			if r.Status != http.StatusFound || r.Header.Get("Location") != link {
				t.Fatalf("allowed next_link %s: HTTP %d Location %q", link, r.Status, r.Header.Get("Location"))
			}
		}
		// A session stored with a next_link whose host the operator then removes: no redirect.
		secret := apitest.Secret()
		sid := h.Post(t, v2+"/validate/email/requestToken", u.Token, map[string]any{"client_secret": secret, "email": addr,
			"send_attempt": 1, "next_link": "https://zorgchat.ozo.test/#/validated"}).Want(t, http.StatusOK, "").Str(t, "sid")
		token := apitest.ValidationLink(t, h.Mail.Wait(t, addr, mails+3, apitest.MailWait)).Get("token")
		h.Config.Validation.NextLinkHosts = []string{"other.ozo.test"}
		h.Restart()
		if r := h.Get(t, v2+"/validate/email/submitToken"+q("sid", sid, "client_secret", secret, "token", token), ""); r.Status != http.StatusOK {
			t.Fatalf("a next_link no longer allowed: HTTP %d Location %q", r.Status, r.Header.Get("Location"))
		}
		before.check(t, h)
	})
}

// Item 14: one session sent a mail for every send_attempt 1..10, each with a live token. Now a
// session sends at most max_mails_per_session mails, only the newest token works, and an address
// gets at most max_mails_per_address mails however many sessions ask.
func TestValidationMailLimits(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		h := apitest.New(t, e)
		before := makeEarlierState(t, h)
		perSession, perAddress := h.Config.Validation.MaxMailsPerSession, h.Config.Validation.MaxMailsPerAddress
		u := h.NewUser(t, "mallory")
		addr := "victim@zorg.example.nl"
		secret := apitest.Secret()
		var sid string
		var tokens []string
		for attempt := 1; attempt <= 10; attempt++ {
			r := h.Post(t, v2+"/validate/email/requestToken", u.Token, map[string]any{"client_secret": secret, "email": addr, "send_attempt": attempt})
			if attempt > perSession {
				r.Want(t, http.StatusTooManyRequests, "M_LIMIT_EXCEEDED")
				continue
			}
			sid = r.Want(t, http.StatusOK, "").Str(t, "sid")
			tokens = append(tokens, apitest.ValidationLink(t, h.Mail.Wait(t, addr, attempt, apitest.MailWait)).Get("token"))
		}
		time.Sleep(200 * time.Millisecond) // a mail sent despite the refusal would have arrived
		if n := len(h.Mail.To(addr)); n != perSession {
			t.Fatalf("%d mails for one session, want %d", n, perSession)
		}
		// Earlier tokens are void (each counts as a wrong attempt); the newest validates.
		for _, tok := range tokens[:len(tokens)-1] {
			h.Post(t, v2+"/validate/email/submitToken", u.Token, map[string]any{"sid": sid, "client_secret": secret, "token": tok}).
				Want(t, http.StatusBadRequest, "M_TOKEN_INCORRECT")
		}
		h.Post(t, v2+"/validate/email/submitToken", u.Token, map[string]any{"sid": sid, "client_secret": secret, "token": tokens[len(tokens)-1]}).
			Want(t, http.StatusOK, "")

		// New sessions for the same address share its budget.
		for sent := perSession; sent < perAddress; sent++ {
			h.Post(t, v2+"/validate/email/requestToken", u.Token, map[string]any{"client_secret": apitest.Secret(), "email": addr, "send_attempt": 1}).
				Want(t, http.StatusOK, "")
		}
		h.Post(t, v2+"/validate/email/requestToken", u.Token, map[string]any{"client_secret": apitest.Secret(), "email": addr, "send_attempt": 1}).
			Want(t, http.StatusTooManyRequests, "M_LIMIT_EXCEEDED")
		h.Do(t, apitest.Request{Method: http.MethodPost, Path: v2 + "/validate/email/requestToken", Token: u.Token,
			Body: map[string]any{"client_secret": apitest.Secret(), "email": strings.ToUpper(addr), "send_attempt": 1}}).
			Want(t, http.StatusTooManyRequests, "M_LIMIT_EXCEEDED")
		h.Mail.Wait(t, addr, perAddress, apitest.MailWait)
		time.Sleep(200 * time.Millisecond)
		if n := len(h.Mail.To(addr)); n != perAddress {
			t.Fatalf("%d mails to one address, want %d", n, perAddress)
		}
		// Another address is not affected.
		h.ValidateEmail(t, u, "other@zorg.example.nl")
		before.check(t, h)
	})
}

// Item 16: a room_id with NUL answered 500 on PostgreSQL and left an orphaned ephemeral key.
// Room IDs and the other store-invite strings are checked first, and the key is stored with its
// invite or not at all.
func TestStoreInviteRejectsBadStrings(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		h := apitest.New(t, e, func(c *config.Config) {
			c.V1.Enabled = true
			c.V1.Networks = []string{"127.0.0.0/8"}
		})
		before := makeEarlierState(t, h)
		keys := func() int {
			var n int
			if err := h.App.DB.QueryRowContext(t.Context(), `SELECT COUNT(*) FROM ephemeral_keys`).Scan(&n); err != nil {
				t.Fatal(err)
			}
			return n
		}
		keysBefore := keys()
		u := before.alice
		base := func() map[string]any {
			return map[string]any{"medium": "email", "address": "new.colleague@zorg.example.nl", "room_id": "!zorgteam:hs.ozo.test", "sender": u.MXID}
		}
		for field, bad := range map[string][]string{
			"room_id": {"!a\u0000b:x.example", "!a\u0007b:x.example", "!a b:x.example", "!ab:", "!:x.example", "#alias:x.example",
				"!ab:x.example\n", "!ab:bad host", "!tooshort"},
			"sender":              {"@a\u0000b:hs.ozo.test"},
			"address":             {"a\u0000b@zorg.example.nl"},
			"room_name":           {"Zorg\u0000team"},
			"sender_display_name": {"Dr.\u0000Alice"},
			"room_avatar_url":     {"mxc://hs/abc\r\n"},
		} {
			for _, v := range bad {
				body := base()
				body[field] = v
				r := h.Post(t, v2+"/store-invite", u.Token, body)
				if r.Status != http.StatusBadRequest || (r.Errcode() != "M_INVALID_PARAM" && r.Errcode() != "M_INVALID_EMAIL") {
					t.Fatalf("%s %q: HTTP %d %s", field, v, r.Status, r.Body)
				}
			}
		}
		// Form-encoded v1 can carry bytes JSON cannot: invalid UTF-8 and NUL.
		for _, v := range []string{"!a\x00b:x.example", "!a\xffb:x.example"} {
			h.Do(t, apitest.Request{Method: http.MethodPost, Path: v1 + "/store-invite", Body: url.Values{
				"medium": {"email"}, "address": {"v1@example.org"}, "room_id": {v}, "sender": {"@carol:hs.ozo.test"}}}).
				Want(t, http.StatusBadRequest, "M_INVALID_PARAM")
		}
		if n := keys(); n != keysBefore {
			t.Fatalf("refused invites left %d ephemeral keys", n-keysBefore)
		}
		// The invite's other endpoints take the same care: no 500 from PostgreSQL.
		priv, _ := ephemeralKey(t)
		h.Post(t, v2+"/sign-ed25519", u.Token, map[string]any{"mxid": u.MXID, "token": "a\u0000b", "private_key": priv}).
			Want(t, http.StatusBadRequest, "M_INVALID_PARAM")
		if valid(t, h.Get(t, v2+"/pubkey/ephemeral/isvalid?public_key=a%00b", "").Want(t, http.StatusOK, "")) {
			t.Fatal("a key with NUL is valid")
		}
		if valid(t, h.Get(t, v2+"/pubkey/ephemeral/isvalid?public_key=a%FFb", "").Want(t, http.StatusOK, "")) {
			t.Fatal("a key with invalid UTF-8 is valid")
		}
		if n := len(h.Mail.To("new.colleague@zorg.example.nl")); n != 0 {
			t.Fatalf("%d mails for refused invites", n)
		}
		// Valid forms still work: a server name with port, an IPv6 literal, and room version 12's
		// room ID without a server name.
		for _, room := range []string{"!abc:hs.ozo.test:8448", "!abc:[::1]:8448", "!" + strings.Repeat("A", 42) + "_"} {
			body := base()
			body["room_id"] = room
			storeInvite(t, h, u, body)
		}
		if n := keys(); n != keysBefore+3 {
			t.Fatalf("%d ephemeral keys for 3 invites", n-keysBefore)
		}
		before.check(t, h)
	})
}

// Item 9: with only a remote SMTP host configured, a server that does not offer STARTTLS gets
// no mail in clear; the caller gets M_EMAIL_SEND_ERROR and nothing is left behind.
func TestMailNotInClearByDefault(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		ip := nonLoopbackIP(t)
		plain := smtptest.StartWith(t, smtptest.Options{Host: ip})
		h := apitest.New(t, e)
		before := makeEarlierState(t, h)
		h.Config.Email.SMTP = config.Defaults().Email.SMTP
		h.Config.Email.SMTP.Host, h.Config.Email.SMTP.Port = ip, plain.Port
		h.Restart()
		u := h.NewUser(t, "bob")
		h.Post(t, v2+"/validate/email/requestToken", u.Token, map[string]any{"client_secret": apitest.Secret(),
			"email": "bob@zorg.example.nl", "send_attempt": 1}).Want(t, http.StatusInternalServerError, "M_EMAIL_SEND_ERROR")
		h.Post(t, v2+"/store-invite", u.Token, emailInvite(u, "invitee@zorg.example.nl")).
			Want(t, http.StatusInternalServerError, "M_EMAIL_SEND_ERROR")
		if n := len(plain.Messages()); n != 0 {
			t.Fatalf("%d mails went out in clear", n)
		}
		if p, _ := h.App.Store.PendingInvites(t.Context(), threepid.ThreePID{Medium: "email", Address: "invitee@zorg.example.nl"}); len(p) != 0 {
			t.Fatalf("an invite whose mail failed was kept: %+v", p)
		}
		before.check(t, h)
	})
}

// nonLoopbackIP returns an IPv4 address of this machine that is not loopback, for a mail server
// the service must treat as remote.
func nonLoopbackIP(t *testing.T) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && !ipn.IP.IsLoopback() && ipn.IP.To4() != nil && !ipn.IP.IsLinkLocalUnicast() {
			return ipn.IP.String()
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("no non-loopback IPv4 address to run a remote SMTP server on")
	}
	t.Skip("no non-loopback IPv4 address")
	return ""
}
