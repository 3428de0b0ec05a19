package sqlstore_test

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/identity"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore/dbtest"
	"github.com/ozo-platform/ozo-identity/threepid"
)

// TestSSOSessions: a session an SSO login validated keeps every proven 3PID and its owner, on
// both engines; other sessions are not SSO sessions; expired sessions leave nothing behind.
func TestSSOSessions(t *testing.T) {
	for _, engine := range dbtest.Engines {
		t.Run(string(engine), func(t *testing.T) {
			s := sqlstore.New(dbtest.Open(t, engine))
			ctx := t.Context()
			now := time.Now().Truncate(time.Millisecond)
			idp := threepid.ThreePID{Medium: "idp", Address: "dezi:abc"}
			uzi := threepid.ThreePID{Medium: "uzi", Address: "900000009"}
			sess := identity.Session{SID: "sid1", ClientSecret: "cs", ThreePID: idp, CreatedAt: now, ValidatedAt: now}
			if err := s.CreateSSOSession(ctx, sess, "@a:hs.test", "dezi", []threepid.ThreePID{idp, uzi}); err != nil {
				t.Fatal(err)
			}
			got, err := s.GetSession(ctx, "sid1")
			if err != nil || got.ThreePID != idp || !got.ValidatedAt.Equal(now) {
				t.Fatalf("session %+v, %v", got, err)
			}
			owner, tps, err := s.SSOSession(ctx, "sid1")
			if err != nil || owner != "@a:hs.test" || !slices.Equal(tps, []threepid.ThreePID{idp, uzi}) {
				t.Fatalf("sso session %q %v %v", owner, tps, err)
			}
			// The same client secret and identity again: refused, the first intact.
			sess.SID = "sid2"
			if err := s.CreateSSOSession(ctx, sess, "@b:hs.test", "dezi", []threepid.ThreePID{idp}); !errors.Is(err, identity.ErrAlreadyExists) {
				t.Fatalf("duplicate: %v", err)
			}
			if _, _, err := s.SSOSession(ctx, "sid2"); !errors.Is(err, identity.ErrNotFound) {
				t.Fatalf("refused session stored: %v", err)
			}
			// An email session is no SSO session.
			mail := identity.Session{SID: "sid3", ClientSecret: "cs", ThreePID: threepid.ThreePID{Medium: "email", Address: "a@b.nl"}, CreatedAt: now}
			if err := s.CreateSession(ctx, mail, "tok", now.Add(time.Hour), identity.MailQuota{}); err != nil {
				t.Fatal(err)
			}
			if _, _, err := s.SSOSession(ctx, "sid3"); !errors.Is(err, identity.ErrNotFound) {
				t.Fatalf("email session: %v", err)
			}
			// Expired: the session goes, and its 3PIDs with the next login.
			if _, err := s.DeleteExpiredSessions(ctx, now.Add(time.Second)); err != nil {
				t.Fatal(err)
			}
			if _, _, err := s.SSOSession(ctx, "sid1"); !errors.Is(err, identity.ErrNotFound) {
				t.Fatalf("expired session: %v", err)
			}
			later := identity.Session{SID: "sid4", ClientSecret: "cs2", ThreePID: idp, CreatedAt: now, ValidatedAt: now}
			if err := s.CreateSSOSession(ctx, later, "@a:hs.test", "dezi", []threepid.ThreePID{idp}); err != nil {
				t.Fatal(err)
			}
			var n int
			if err := s.DB().QueryRowContext(ctx, `SELECT COUNT(*) FROM session_threepids WHERE sid = 'sid1'`).Scan(&n); err != nil || n != 0 {
				t.Fatalf("%d 3PIDs of an expired session left, %v", n, err)
			}
		})
	}
}
