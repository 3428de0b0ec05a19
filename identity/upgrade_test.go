package identity_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/identity"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore/dbtest"
	"github.com/ozo-platform/ozo-identity/threepid"
)

// TestFoldedHashesBackfilled: an idp binding made before folded lookup hashes existed is found
// by its lower-cased hash after the next start (LoadPepper adds them once).
func TestFoldedHashesBackfilled(t *testing.T) {
	for _, engine := range dbtest.Engines {
		t.Run(string(engine), func(t *testing.T) {
			db := dbtest.Open(t, engine)
			store := sqlstore.New(db)
			ctx := context.Background()
			pepper, err := identity.LoadPepper(ctx, store)
			if err != nil {
				t.Fatal(err)
			}
			// The state an older version left: the binding and its exact hash only.
			addr := "zorgnet:Alice.DeVries"
			now := time.Now().UnixMilli()
			for _, q := range []struct {
				sql  string
				args []any
			}{
				{`INSERT INTO bindings (medium, address, mxid, created_at, not_before, not_after, source) VALUES ('idp', $1, '@alice:hs', $2, $2, $2, 'admin')`, []any{addr, now}},
				{`INSERT INTO binding_hashes (hash, medium, address) VALUES ($1, 'idp', $2)`, []any{threepid.LookupHash(addr, "idp", pepper), addr}},
				{`DELETE FROM settings WHERE name = 'folded_lookup_hashes'`, nil},
			} {
				if _, err := db.ExecContext(ctx, q.sql, q.args...); err != nil {
					t.Fatal(err)
				}
			}
			lower := threepid.LookupHash(strings.ToLower(addr), "idp", pepper)
			if m, _ := store.LookupHashes(ctx, []string{lower}); len(m) != 0 {
				t.Fatalf("found before the backfill: %v", m)
			}
			if again, err := identity.LoadPepper(ctx, store); err != nil || again != pepper {
				t.Fatalf("restart: %q %v", again, err)
			}
			if m, _ := store.LookupHashes(ctx, []string{lower, threepid.LookupHash(addr, "idp", pepper)}); len(m) != 2 {
				t.Fatalf("after the backfill: %v", m)
			}
		})
	}
}

// TestSignInviteStoredBeforeKeyKept: an invite stored before its ephemeral key was kept signs
// with a key store-invite handed out, and with no other.
func TestSignInviteStoredBeforeKeyKept(t *testing.T) {
	for _, engine := range dbtest.Engines {
		t.Run(string(engine), func(t *testing.T) {
			db := dbtest.Open(t, engine)
			store := sqlstore.New(db)
			ctx := context.Background()
			signer, err := identity.LoadSigner(ctx, store, "id.example.nl", "")
			if err != nil {
				t.Fatal(err)
			}
			svc := identity.New(store, signer, "pepper", nil, nil, identity.Options{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
			pub, priv, _ := ed25519.GenerateKey(rand.Reader)
			_, stranger, _ := ed25519.GenerateKey(rand.Reader)
			now := time.Now().UTC().Truncate(time.Millisecond)
			// As an older version stored it: the key on its own, not on the invite.
			if _, err := db.ExecContext(ctx, `INSERT INTO ephemeral_keys (public_key, created_at, expires_at) VALUES ($1, $2, $3)`,
				base64.RawStdEncoding.EncodeToString(pub), now.UnixMilli(), now.Add(time.Hour).UnixMilli()); err != nil {
				t.Fatal(err)
			}
			tp := threepid.ThreePID{Medium: "email", Address: "bob@example.org"}
			for _, inv := range []identity.Invite{
				{Token: "old", ThreePID: tp, RoomID: "!r:hs", Sender: "@alice:hs", CreatedAt: now, ExpiresAt: now.Add(time.Hour)},
				{Token: "expired", ThreePID: tp, RoomID: "!r:hs", Sender: "@alice:hs", CreatedAt: now.Add(-2 * time.Hour), ExpiresAt: now.Add(-time.Hour)},
			} {
				if err := store.CreateInvite(ctx, inv, identity.InviteLimits{}); err != nil {
					t.Fatal(err)
				}
			}
			key := func(k ed25519.PrivateKey) string { return base64.RawURLEncoding.EncodeToString(k.Seed()) }
			if _, err := svc.SignEd25519(ctx, "@bob:hs", "old", key(priv)); err != nil {
				t.Fatalf("a handed-out key: %v", err)
			}
			var ie *identity.Error
			if _, err := svc.SignEd25519(ctx, "@bob:hs", "old", key(stranger)); !errors.As(err, &ie) || ie.Code != identity.CodeForbidden {
				t.Fatalf("a key nobody handed out: %v", err)
			}
			if _, err := svc.SignEd25519(ctx, "@bob:hs", "expired", key(priv)); !errors.As(err, &ie) || ie.Code != identity.CodeNotFound {
				t.Fatalf("an expired invite: %v", err)
			}
		})
	}
}
