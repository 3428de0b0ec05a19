package app_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix/federation/signutil"
	"maunium.net/go/mautrix/id"

	"github.com/ozo-platform/ozo-identity/api/apitest"
	"github.com/ozo-platform/ozo-identity/app"
	"github.com/ozo-platform/ozo-identity/config"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
)

const v2 = apitest.V2

// A binding, a pending invite and a queued onbind survive a restart: the app is closed and a new
// app.New opens the same database (on SQLite: the default file in the data directory).
func TestRestartKeepsState(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		h := apitest.New(t, e, func(c *config.Config) {
			if e == sqlstore.SQLite {
				c.Database.URL = "" // the embedded default: ozo-identity.db in data_dir
			}
		})
		if e == sqlstore.SQLite {
			if got := h.App.DB.Engine; got != sqlstore.SQLite {
				t.Fatalf("engine %s", got)
			}
		}
		alice := h.NewUser(t, "alice")
		bob := h.NewUser(t, "bob")
		h.Bind(t, alice, "alice@example.org")

		pending := storeInvite(t, h, alice, "carol@example.org")
		queued := storeInvite(t, h, alice, "bob.work@example.org")

		// The homeserver is down: the onbind for bob's invite stays queued.
		h.HS.SetOnBindStatus(http.StatusServiceUnavailable)
		h.Bind(t, bob, "bob.work@example.org")
		waitFor(t, "a failed onbind attempt recorded", func() bool {
			d, err := h.App.Store.ListDeliveries(context.Background())
			return err == nil && len(d) == 1 && d[0].Attempts >= 1 && d[0].LastError != ""
		})
		if n := len(h.HS.Delivered()); n != 0 {
			t.Fatalf("%d onbinds delivered while the homeserver answered 503", n)
		}
		pub := pubkey(t, h)
		pepper := h.Pepper(t, bob)

		h.Stop()
		h.HS.SetOnBindStatus(http.StatusOK)
		restarted := time.Now()
		h.Restart()

		// Accounts, keys and the pepper are the same.
		if got := h.Get(t, v2+"/account", alice.Token).Want(t, http.StatusOK, "").Str(t, "user_id"); got != alice.MXID {
			t.Fatalf("account after restart: %q", got)
		}
		if got := pubkey(t, h); got != pub {
			t.Fatalf("signing key changed across the restart: %s → %s", pub, got)
		}
		if got := h.Pepper(t, bob); got != pepper {
			t.Fatal("pepper changed across the restart")
		}
		// The binding resolves.
		if got := h.LookupOne(t, bob, "email", "alice@example.org"); got != alice.MXID {
			t.Fatalf("binding after restart: %q", got)
		}
		// The pending invite is still there: its ephemeral key is valid, its token signs, and
		// the address is not taken.
		eph := pending.PublicKeys[1].PublicKey
		var valid struct{ Valid bool }
		json.Unmarshal(h.Get(t, v2+"/pubkey/ephemeral/isvalid?public_key="+url.QueryEscape(eph), "").Want(t, http.StatusOK, "").Body, &valid)
		if !valid.Valid {
			t.Fatal("ephemeral key of the pending invite forgotten")
		}
		priv := apitest.InviteSignURL(t, h.Mail.Wait(t, "carol@example.org", 1, apitest.MailWait)).Query().Get("private_key")
		h.Post(t, v2+"/sign-ed25519", bob.Token, map[string]any{"mxid": "@carol:hs.ozo.test", "token": pending.Token,
			"private_key": priv}).Want(t, http.StatusOK, "")
		if got := h.LookupOne(t, bob, "email", "carol@example.org"); got != "" {
			t.Fatalf("carol resolves to %q", got)
		}

		// The queued onbind is delivered by the new process.
		var ob apitest.OnBind
		waitFor(t, "the queued onbind delivered after the restart", func() bool {
			d := h.HS.Delivered()
			if len(d) > 0 {
				ob = d[0]
			}
			return len(d) > 0
		})
		if time.Since(restarted) > 20*time.Second {
			t.Fatal("delivery took too long")
		}
		var body struct {
			MXID    string `json:"mxid"`
			Invites []struct {
				Signed json.RawMessage `json:"signed"`
			} `json:"invites"`
		}
		if err := json.Unmarshal(ob.Body, &body); err != nil || body.MXID != bob.MXID || len(body.Invites) != 1 {
			t.Fatalf("onbind after restart: %v\n%s", err, ob.Body)
		}
		var signed struct{ MXID, Token string }
		json.Unmarshal(body.Invites[0].Signed, &signed)
		if signed.Token != queued.Token || signed.MXID != bob.MXID {
			t.Fatalf("delivered invite %s, want token %s", body.Invites[0].Signed, queued.Token)
		}
		if err := signutil.VerifyJSON(h.Config.ServerName, "ed25519:0", id.SigningKey(pub), body.Invites[0].Signed); err != nil {
			t.Fatalf("invite signature after restart: %v", err)
		}
		waitFor(t, "the delivered onbind leaving the queue", func() bool {
			d, err := h.App.Store.ListDeliveries(context.Background())
			return err == nil && len(d) == 0
		})
		if n := len(h.HS.Delivered()); n != 1 {
			t.Fatalf("%d deliveries, want 1", n)
		}
	})
}

// app.New refuses configurations it cannot run with, instead of failing at first use.
func TestNewRejectsBrokenConfig(t *testing.T) {
	discard := slog.New(slog.NewTextHandler(io.Discard, nil))
	base := func(t *testing.T) config.Config {
		cfg := config.Defaults()
		cfg.DataDir = t.TempDir()
		if err := cfg.Validate(); err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	for _, tc := range []struct {
		name, want string
		change     func(*config.Config)
	}{
		{"missing homeserver CA", "homeservers.ca_file", func(c *config.Config) { c.Homeservers.CAFile = filepath.Join(c.DataDir, "none.pem") }},
		{"missing SMTP CA", "email.smtp.ca_file", func(c *config.Config) { c.Email.SMTP.CAFile = filepath.Join(c.DataDir, "none.pem") }},
		{"unreachable PostgreSQL", "postgres", func(c *config.Config) {
			c.Database.URL = "postgres://nobody@127.0.0.1:1/none?sslmode=disable&connect_timeout=2"
		}},
		{"missing submit page", "submit page", func(c *config.Config) { c.Validation.SubmitPage = filepath.Join(c.DataDir, "none.html") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := base(t)
			tc.change(&cfg)
			a, err := app.New(context.Background(), cfg, discard)
			if err == nil {
				a.Close()
				t.Fatal("app.New accepted the configuration")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not mention %q", err, tc.want)
			}
		})
	}
	// The defaults alone start (the embedded SQLite in the data directory).
	a, err := app.New(context.Background(), base(t), discard)
	if err != nil {
		t.Fatalf("defaults: %v", err)
	}
	a.Close()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func pubkey(t *testing.T, h *apitest.Harness) string {
	t.Helper()
	return h.Get(t, v2+"/pubkey/ed25519:0", "").Want(t, http.StatusOK, "").Str(t, "public_key")
}

type invite struct {
	Token      string `json:"token"`
	PublicKeys []struct {
		PublicKey string `json:"public_key"`
	} `json:"public_keys"`
}

func storeInvite(t *testing.T, h *apitest.Harness, u apitest.User, address string) invite {
	t.Helper()
	r := h.Post(t, v2+"/store-invite", u.Token, map[string]any{"medium": "email", "address": address,
		"room_id": "!zorgteam:hs.ozo.test", "sender": u.MXID}).Want(t, http.StatusOK, "")
	var inv invite
	if err := json.Unmarshal(r.Body, &inv); err != nil || inv.Token == "" || len(inv.PublicKeys) != 2 {
		t.Fatalf("store-invite: %v %s", err, r.Body)
	}
	return inv
}
