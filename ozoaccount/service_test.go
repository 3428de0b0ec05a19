package ozoaccount_test

import (
	"bytes"
	"errors"
	"image/png"
	"log/slog"
	"net/url"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pquerna/otp/totp"

	"github.com/ozo-platform/ozo-identity/audit"
	"github.com/ozo-platform/ozo-identity/email"
	"github.com/ozo-platform/ozo-identity/email/smtptest"
	"github.com/ozo-platform/ozo-identity/ozoaccount"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore/dbtest"
)

// syncBuffer is a log sink tests read while the service writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

type fixture struct {
	svc   *ozoaccount.Service
	store *sqlstore.OZOAccounts
	db    *sqlstore.DB
	// trail is the audit chain the service writes to; refused the aggregation of refused attempts.
	trail   *sqlstore.Store
	chain   *audit.Chain
	refused *audit.Aggregator
	smtp    *smtptest.Server
	log     *syncBuffer
	clock   *clock
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func newFixture(t *testing.T, engine sqlstore.Engine) *fixture {
	t.Helper()
	return newFixtureWith(t, engine, ozoaccount.LockoutPolicy{Free: 3, Base: time.Minute, Max: 8 * time.Minute, Window: 24 * time.Hour})
}

func newFixtureWith(t *testing.T, engine sqlstore.Engine, lockout ozoaccount.LockoutPolicy) *fixture {
	t.Helper()
	db := dbtest.Open(t, engine)
	sink := smtptest.Start(t)
	mailer, err := email.New(email.Config{Host: "127.0.0.1", Port: sink.Port, From: "OZO <noreply@ozo.example.nl>"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	logger := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	trail := sqlstore.New(db)
	chain, err := audit.NewChain(bytes.Repeat([]byte{9}, 32))
	if err != nil {
		t.Fatal(err)
	}
	trail.SetAuditChain(chain)
	// Flushed by the tests (records), never by a timer.
	refused := audit.NewAggregator(trail, time.Hour, logger)
	store := sqlstore.NewOZOAccounts(trail)
	svc, err := ozoaccount.New(store, refused, mailer, nil, nil, ozoaccount.Options{
		PublicBaseURL: "https://id.ozo.example.nl",
		Lockout:       lockout,
		SecretKey:     bytes.Repeat([]byte{7}, 32),
	}, logger)
	if err != nil {
		t.Fatal(err)
	}
	// Whole steps from a step boundary, so codes of "the next step" are predictable.
	c := &clock{t: time.Now().UTC().Truncate(30 * time.Second).Add(time.Second)}
	svc.SetClock(c.now)
	return &fixture{svc: svc, store: store, db: db, trail: trail, chain: chain, refused: refused, smtp: sink, log: logs, clock: c}
}

// records flushes the counted refused attempts and returns the audit records after seq *after,
// moving *after past them (nil: all records).
func (f *fixture) records(t *testing.T, after *int64) []audit.Record {
	t.Helper()
	f.svc.Wait()
	if err := f.refused.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	var from int64
	if after != nil {
		from = *after
	}
	recs, err := f.trail.ListAudit(t.Context(), time.Time{}, from, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if after != nil && len(recs) > 0 {
		*after = recs[len(recs)-1].Seq
	}
	return recs
}

// has reports whether recs hold a record of action and outcome whose detail contains detail.
func has(recs []audit.Record, action audit.Action, outcome audit.Outcome, detail string) bool {
	for _, r := range recs {
		if r.Action == action && r.Outcome == outcome && strings.Contains(r.Detail, detail) {
			return true
		}
	}
	return false
}

func forEngines(t *testing.T, fn func(t *testing.T, f *fixture)) {
	for _, engine := range dbtest.Engines {
		t.Run(string(engine), func(t *testing.T) { fn(t, newFixture(t, engine)) })
	}
}

var linkRE = regexp.MustCompile(`https://id\.ozo\.example\.nl(/_ozo/web/account/[a-z]+)\?token=([A-Za-z0-9_%-]+)`)

// mailedToken returns the token of the n-th mail to rcpt, checking the link's path.
func (f *fixture) mailedToken(t *testing.T, rcpt string, n int, path string) string {
	t.Helper()
	msg := f.smtp.Wait(t, rcpt, n, 10*time.Second)
	m := linkRE.FindStringSubmatch(msg.Text)
	if m == nil || m[1] != path {
		t.Fatalf("no %s link in mail %d to %s:\n%s", path, n, rcpt, msg.Text)
	}
	tok, _ := url.QueryUnescape(m[2])
	return tok
}

const password = "correct horse battery staple"

func (f *fixture) code(t *testing.T, secret string) string {
	t.Helper()
	c, err := totp.GenerateCode(secret, f.clock.now())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// activate provisions and activates an account, returning its TOTP secret and recovery codes.
func (f *fixture) activate(t *testing.T, addr string) (string, []string) {
	t.Helper()
	_, created, err := f.svc.Provision(t.Context(), ozoaccount.ProvisionRequest{Email: addr, DisplayName: "Els de Vries",
		Kind: ozoaccount.KindRelatedPerson, FHIRRef: "RelatedPerson/rp-" + strings.Split(addr, "@")[0]})
	if err != nil || !created {
		t.Fatalf("provision: %v, %v", created, err)
	}
	tok := f.mailedToken(t, addr, 1, ozoaccount.ActivatePath)
	enrol, err := f.svc.BeginActivation(t.Context(), tok, password)
	if err != nil {
		t.Fatal(err)
	}
	codes, _, err := f.svc.CompleteActivation(t.Context(), tok, f.code(t, enrol.Secret))
	if err != nil {
		t.Fatal(err)
	}
	return enrol.Secret, codes
}

func TestActivationAndLogin(t *testing.T) {
	forEngines(t, func(t *testing.T, f *fixture) {
		ctx := t.Context()
		a, created, err := f.svc.Provision(ctx, ozoaccount.ProvisionRequest{Email: " Els@Example.NL ", DisplayName: "Els de Vries",
			Kind: ozoaccount.KindRelatedPerson, FHIRRef: "RelatedPerson/rp-1", Language: "en"})
		if err != nil || !created || a.Email != "els@example.nl" || a.Status != ozoaccount.StatusInvited {
			t.Fatalf("provision: %+v, %v, %v", a, created, err)
		}
		msg := f.smtp.Wait(t, "els@example.nl", 1, 10*time.Second)
		if msg.Subject != "Activate your OZO account" || !strings.Contains(msg.Text, "Hello Els de Vries") {
			t.Fatalf("invitation in English expected: %q\n%s", msg.Subject, msg.Text)
		}
		tok := f.mailedToken(t, "els@example.nl", 1, ozoaccount.ActivatePath)

		if _, err := f.svc.BeginActivation(ctx, tok, "short"); !errors.Is(err, ozoaccount.ErrWeakPassword) {
			t.Fatalf("weak password: %v", err)
		}
		if _, err := f.svc.BeginActivation(ctx, tok+"x", password); !errors.Is(err, ozoaccount.ErrInvalidLink) {
			t.Fatalf("wrong link: %v", err)
		}
		enrol, err := f.svc.BeginActivation(ctx, tok, password)
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(bytes.NewReader(enrol.QRPNG))
		if err != nil || img.Bounds().Dx() < 200 {
			t.Fatalf("QR code is not a usable PNG: %v", err)
		}
		if !strings.HasPrefix(enrol.OTPAuthURL, "otpauth://totp/OZO:els@example.nl?") || !strings.Contains(enrol.OTPAuthURL, "secret="+enrol.Secret) {
			t.Fatalf("otpauth URL: %s", enrol.OTPAuthURL)
		}
		// A wrong first code does not use up the link.
		if _, _, err := f.svc.CompleteActivation(ctx, tok, "000000"); !errors.Is(err, ozoaccount.ErrWrongCode) {
			t.Fatalf("wrong first code: %v", err)
		}
		// Before activation, the password alone does not log in.
		if _, err := f.svc.Login(ctx, "els@example.nl", password); !errors.Is(err, ozoaccount.ErrInvalidCredentials) {
			t.Fatalf("login before activation: %v", err)
		}
		first := f.code(t, enrol.Secret)
		codes, a, err := f.svc.CompleteActivation(ctx, tok, first)
		if err != nil || a.Status != ozoaccount.StatusActive || len(codes) != 10 {
			t.Fatalf("complete: %+v, %d codes, %v", a, len(codes), err)
		}
		// Recovery codes are stored hashed only.
		var dump strings.Builder
		rows, _ := f.db.QueryContext(ctx, `SELECT code_hash FROM ozo_account_recovery_codes`)
		for rows.Next() {
			var h string
			rows.Scan(&h)
			dump.WriteString(h + "\n")
		}
		rows.Close()
		for _, c := range codes {
			if strings.Contains(dump.String(), c) || strings.Contains(dump.String(), strings.ReplaceAll(c, "-", "")) {
				t.Fatalf("recovery code %s stored in clear", c)
			}
		}
		// The TOTP secret is stored sealed, not as the authenticator app got it.
		if stored := mustAccount(t, f, "els@example.nl"); stored.TOTPSecret == "" || strings.Contains(stored.TOTPSecret, enrol.Secret) {
			t.Fatalf("TOTP secret stored in clear: %q", stored.TOTPSecret)
		}
		// The link works once.
		if _, err := f.svc.BeginActivation(ctx, tok, password); !errors.Is(err, ozoaccount.ErrLinkUsed) {
			t.Fatalf("reused activation link: %v", err)
		}
		if _, _, err := f.svc.CompleteActivation(ctx, tok, first); !errors.Is(err, ozoaccount.ErrLinkUsed) {
			t.Fatalf("reused activation link (confirm): %v", err)
		}

		ticket, err := f.svc.Login(ctx, "ELS@example.nl", password)
		if err != nil {
			t.Fatal(err)
		}
		// The code that confirmed the enrolment was used: replaying it in the same step fails.
		if _, err := f.svc.SecondFactor(ctx, ticket, first, ""); !errors.Is(err, ozoaccount.ErrInvalidCredentials) {
			t.Fatalf("replayed TOTP code: %v", err)
		}
		f.clock.add(30 * time.Second)
		next := f.code(t, enrol.Secret)
		res, err := f.svc.SecondFactor(ctx, ticket, next, "")
		if err != nil || res.Account.ID != a.ID {
			t.Fatalf("second factor: %+v, %v", res, err)
		}
		// The ticket and the code are both used up.
		if _, err := f.svc.SecondFactor(ctx, ticket, next, ""); !errors.Is(err, ozoaccount.ErrInvalidLink) {
			t.Fatalf("reused ticket: %v", err)
		}
		ticket2, err := f.svc.Login(ctx, "els@example.nl", password)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.svc.SecondFactor(ctx, ticket2, next, ""); !errors.Is(err, ozoaccount.ErrInvalidCredentials) {
			t.Fatalf("replayed TOTP code on a new login: %v", err)
		}
		// An earlier step's code (still within the skew) is refused once a later one was used.
		f.clock.add(-30 * time.Second)
		if _, err := f.svc.SecondFactor(ctx, ticket2, f.code(t, enrol.Secret), ""); !errors.Is(err, ozoaccount.ErrInvalidCredentials) {
			t.Fatalf("older step's code: %v", err)
		}
		f.clock.add(60 * time.Second)
		if _, err := f.svc.SecondFactor(ctx, ticket2, f.code(t, enrol.Secret), ""); err != nil {
			t.Fatalf("next step's code: %v", err)
		}
		if !has(f.records(t, nil), audit.ActionLoginFailure, audit.OutcomeRefused, "already used (replay)") {
			t.Fatal("no audit record of the replay")
		}
	})
}

func TestRecoveryCodeOnce(t *testing.T) {
	forEngines(t, func(t *testing.T, f *fixture) {
		ctx := t.Context()
		_, codes := f.activate(t, "jan@example.nl")
		ticket, err := f.svc.Login(ctx, "jan@example.nl", password)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.svc.SecondFactor(ctx, ticket, "", strings.ToUpper(codes[3])); err != nil {
			t.Fatalf("recovery code: %v", err)
		}
		if n, _ := f.svc.RecoveryCodesLeft(ctx, mustAccount(t, f, "jan@example.nl").ID); n != 9 {
			t.Fatalf("codes left %d, want 9", n)
		}
		ticket, _ = f.svc.Login(ctx, "jan@example.nl", password)
		if _, err := f.svc.SecondFactor(ctx, ticket, "", codes[3]); !errors.Is(err, ozoaccount.ErrInvalidCredentials) {
			t.Fatalf("used recovery code: %v", err)
		}
		if _, err := f.svc.SecondFactor(ctx, ticket, "", codes[4]); err != nil {
			t.Fatalf("another recovery code after a failure: %v", err)
		}
	})
}

func mustAccount(t *testing.T, f *fixture, addr string) ozoaccount.Account {
	t.Helper()
	a, err := f.store.GetAccountByEmail(t.Context(), addr)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestExpiredActivationLink(t *testing.T) {
	forEngines(t, func(t *testing.T, f *fixture) {
		ctx := t.Context()
		if _, _, err := f.svc.Provision(ctx, ozoaccount.ProvisionRequest{Email: "late@example.nl", Kind: ozoaccount.KindPatient,
			FHIRRef: "Patient/p-1"}); err != nil {
			t.Fatal(err)
		}
		tok := f.mailedToken(t, "late@example.nl", 1, ozoaccount.ActivatePath)
		f.clock.add(7*24*time.Hour + time.Second)
		if _, err := f.svc.BeginActivation(ctx, tok, password); !errors.Is(err, ozoaccount.ErrLinkExpired) {
			t.Fatalf("expired link: %v", err)
		}
		if a := mustAccount(t, f, "late@example.nl"); a.PasswordHash != "" || a.Status != ozoaccount.StatusInvited {
			t.Fatalf("expired link changed the account: %+v", a)
		}
		// The admin sends a new link; it works.
		if err := f.svc.Resend(ctx, mustAccount(t, f, "late@example.nl").ID); err != nil {
			t.Fatal(err)
		}
		if _, err := f.svc.BeginActivation(ctx, f.mailedToken(t, "late@example.nl", 2, ozoaccount.ActivatePath), password); err != nil {
			t.Fatalf("new link: %v", err)
		}
	})
}

func TestLockoutGrowingDelays(t *testing.T) {
	forEngines(t, func(t *testing.T, f *fixture) {
		ctx := t.Context()
		secret, _ := f.activate(t, "els@example.nl")
		var locked *ozoaccount.LockedError
		for i := range 3 {
			if _, err := f.svc.Login(ctx, "els@example.nl", "wrong password "+string(rune('a'+i))); !errors.Is(err, ozoaccount.ErrInvalidCredentials) {
				t.Fatalf("wrong password %d: %v", i, err)
			}
		}
		// Locked: even the right password is refused, without a password check.
		if _, err := f.svc.Login(ctx, "els@example.nl", password); !errors.As(err, &locked) {
			t.Fatalf("right password while locked: %v", err)
		}
		if d := locked.Until.Sub(f.clock.now()); d < 59*time.Second || d > time.Minute {
			t.Fatalf("first lock %v, want 1m", d)
		}
		f.clock.add(time.Minute)
		f.svc.Login(ctx, "els@example.nl", "wrong again")
		_, err := f.svc.Login(ctx, "els@example.nl", password)
		if !errors.As(err, &locked) || locked.Until.Sub(f.clock.now()) < 119*time.Second {
			t.Fatalf("second lock should be 2m: %v", err)
		}
		f.clock.add(2 * time.Minute)
		ticket, err := f.svc.Login(ctx, "els@example.nl", password)
		if err != nil {
			t.Fatalf("after the delay: %v", err)
		}
		// Wrong codes count too, and each further failure doubles the delay up to the maximum.
		for i, want := range []time.Duration{4 * time.Minute, 8 * time.Minute, 8 * time.Minute} {
			if _, err := f.svc.SecondFactor(ctx, ticket, "123456", ""); !errors.Is(err, ozoaccount.ErrInvalidCredentials) {
				t.Fatalf("wrong code %d: %v", i, err)
			}
			if _, err := f.svc.SecondFactor(ctx, ticket, f.code(t, secret), ""); !errors.As(err, &locked) {
				t.Fatalf("right code while locked: %v", err)
			}
			if d := locked.Until.Sub(f.clock.now()); d != want {
				t.Fatalf("lock after wrong code %d: %v, want %v", i, d, want)
			}
			f.clock.add(want)
			if ticket, err = f.svc.Login(ctx, "els@example.nl", password); err != nil {
				t.Fatalf("login after the delay: %v", err)
			}
		}
		f.clock.add(30 * time.Second)
		if _, err := f.svc.SecondFactor(ctx, ticket, f.code(t, secret), ""); err != nil {
			t.Fatalf("after the delay: %v", err)
		}
		if !has(f.records(t, nil), audit.ActionLoginFailure, audit.OutcomeRefused, "locked out until") {
			t.Fatal("no audit record of the lockout")
		}
		// An unknown email locks out just like a known one.
		for range 3 {
			f.svc.Login(ctx, "nobody@example.nl", "wrong password x")
		}
		if _, err := f.svc.Login(ctx, "nobody@example.nl", "wrong password x"); !errors.As(err, &locked) {
			t.Fatalf("unknown email not locked alike: %v", err)
		}
	})
}

func TestPasswordReset(t *testing.T) {
	forEngines(t, func(t *testing.T, f *fixture) {
		ctx := t.Context()
		secret, _ := f.activate(t, "els@example.nl")
		if err := f.svc.RequestReset(ctx, "els@example.nl"); err != nil {
			t.Fatal(err)
		}
		if err := f.svc.RequestReset(ctx, "nobody@example.nl"); err != nil {
			t.Fatalf("unknown email answered differently: %v", err)
		}
		f.svc.Wait()
		if n := len(f.smtp.To("nobody@example.nl")); n != 0 {
			t.Fatalf("%d mails to an address without account", n)
		}
		msg := f.smtp.Wait(t, "els@example.nl", 2, 10*time.Second)
		if !strings.Contains(msg.Subject, "wachtwoord") {
			t.Fatalf("reset mail in Dutch expected: %q", msg.Subject)
		}
		tok := f.mailedToken(t, "els@example.nl", 2, ozoaccount.ResetPath)
		const newPassword = "a brand new passphrase 42"
		if err := f.svc.ResetPassword(ctx, tok, newPassword); err != nil {
			t.Fatal(err)
		}
		if err := f.svc.ResetPassword(ctx, tok, "yet another passphrase"); !errors.Is(err, ozoaccount.ErrLinkUsed) {
			t.Fatalf("reused reset link: %v", err)
		}
		if _, err := f.svc.Login(ctx, "els@example.nl", password); !errors.Is(err, ozoaccount.ErrInvalidCredentials) {
			t.Fatalf("old password: %v", err)
		}
		ticket, err := f.svc.Login(ctx, "els@example.nl", newPassword)
		if err != nil {
			t.Fatalf("new password: %v", err)
		}
		f.clock.add(30 * time.Second)
		if _, err := f.svc.SecondFactor(ctx, ticket, f.code(t, secret), ""); err != nil {
			t.Fatalf("the second factor survives a reset: %v", err)
		}
		// A reset link expires.
		f.svc.RequestReset(ctx, "els@example.nl")
		f.svc.Wait()
		tok = f.mailedToken(t, "els@example.nl", 3, ozoaccount.ResetPath)
		f.clock.add(time.Hour + time.Second)
		if err := f.svc.ResetPassword(ctx, tok, "yet another passphrase"); !errors.Is(err, ozoaccount.ErrLinkExpired) {
			t.Fatalf("expired reset link: %v", err)
		}
		// Anyone can ask for resets of any address: at most three mails an hour reach it.
		before := len(f.smtp.To("els@example.nl"))
		for range 5 {
			f.svc.RequestReset(ctx, "els@example.nl")
			f.svc.Wait()
		}
		if n := len(f.smtp.To("els@example.nl")) - before; n != 3 {
			t.Fatalf("%d reset mails in an hour, want 3", n)
		}
	})
}

// TestNoEnumeration: an unknown email gets the same answer as a known one with a wrong
// password, after the same work (one argon2id verification), at login; and reset requests
// answer alike and at once whether or not the address has an account.
func TestNoEnumeration(t *testing.T) {
	for _, engine := range dbtest.Engines {
		t.Run(string(engine), func(t *testing.T) { testNoEnumeration(t, engine) })
	}
}

func testNoEnumeration(t *testing.T, engine sqlstore.Engine) {
	// No lockout during the measurement.
	f := newFixtureWith(t, engine, ozoaccount.LockoutPolicy{Free: 1000, Base: time.Second, Max: time.Second, Window: time.Hour})
	ctx := t.Context()
	f.activate(t, "els@example.nl")
	time1 := func(fn func() error) (time.Duration, error) {
		start := time.Now()
		err := fn()
		return time.Since(start), err
	}
	var known, unknown []time.Duration
	for i := range 7 {
		for _, addr := range []string{"els@example.nl", "nobody@example.nl"} {
			d, err := time1(func() error { _, err := f.svc.Login(ctx, addr, "wrong password!"); return err })
			if !errors.Is(err, ozoaccount.ErrInvalidCredentials) {
				t.Fatalf("login %s: %v", addr, err)
			}
			if i == 0 {
				continue // warm-up
			}
			if addr == "nobody@example.nl" {
				unknown = append(unknown, d)
			} else {
				known = append(known, d)
			}
		}
	}
	// One argon2id verification at the default cost takes milliseconds; a skipped one would
	// make unknown emails an order of magnitude faster.
	mk, mu := median(known), median(unknown)
	if mu < mk/3 || mu > mk*3 {
		t.Fatalf("login timing differs: known %v, unknown %v", mk, mu)
	}
	if mu < 5*time.Millisecond {
		t.Fatalf("unknown email answered in %v: no password hashing done", mu)
	}
	dk, errK := time1(func() error { return f.svc.RequestReset(ctx, "els@example.nl") })
	du, errU := time1(func() error { return f.svc.RequestReset(ctx, "nobody@example.nl") })
	f.svc.Wait()
	if errK != nil || errU != nil {
		t.Fatalf("reset answers differ: %v, %v", errK, errU)
	}
	// Both answer before any database write or mail: well under the SMTP round trip.
	if dk > 50*time.Millisecond || du > 50*time.Millisecond {
		t.Fatalf("reset requests took %v (known) and %v (unknown): the answer waits for work that depends on the address", dk, du)
	}
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func TestDisableEnableDelete(t *testing.T) {
	forEngines(t, func(t *testing.T, f *fixture) {
		ctx := t.Context()
		secret, _ := f.activate(t, "els@example.nl")
		f.activate(t, "jan@example.nl")
		a := mustAccount(t, f, "els@example.nl")
		if _, err := f.svc.Disable(ctx, a.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := f.svc.Login(ctx, "els@example.nl", password); !errors.Is(err, ozoaccount.ErrInvalidCredentials) {
			t.Fatalf("disabled account logged in: %v", err)
		}
		if _, err := f.svc.Enable(ctx, a.ID); err != nil {
			t.Fatal(err)
		}
		ticket, err := f.svc.Login(ctx, "els@example.nl", password)
		if err != nil {
			t.Fatalf("enabled again: %v", err)
		}
		f.clock.add(30 * time.Second)
		if _, err := f.svc.SecondFactor(ctx, ticket, f.code(t, secret), ""); err != nil {
			t.Fatal(err)
		}
		// reset-2fa: the old secret stops working, a new enrolment link is mailed.
		if _, err := f.svc.ResetSecondFactor(ctx, a.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := f.svc.Login(ctx, "els@example.nl", password); !errors.Is(err, ozoaccount.ErrEnrolmentRequired) {
			t.Fatalf("login after reset-2fa: %v", err)
		}
		tok := f.mailedToken(t, "els@example.nl", 2, ozoaccount.ActivatePath)
		enrol, err := f.svc.BeginActivation(ctx, tok, password)
		if err != nil || enrol.Secret == secret {
			t.Fatalf("re-enrolment: %v (same secret: %v)", err, enrol.Secret == secret)
		}
		f.clock.add(30 * time.Second)
		if _, _, err := f.svc.CompleteActivation(ctx, tok, f.code(t, enrol.Secret)); err != nil {
			t.Fatal(err)
		}
		if err := f.svc.Delete(ctx, a.ID); err != nil {
			t.Fatal(err)
		}
		for _, table := range []string{"ozo_accounts", "ozo_account_tokens", "ozo_account_recovery_codes"} {
			var n int
			f.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM `+table+` WHERE `+map[bool]string{true: "id", false: "account_id"}[table == "ozo_accounts"]+` = $1`, a.ID).Scan(&n)
			if n != 0 {
				t.Fatalf("%d rows of the deleted account left in %s", n, table)
			}
		}
		var emails int
		f.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM ozo_accounts WHERE email = 'els@example.nl'`).Scan(&emails)
		if emails != 0 {
			t.Fatal("the deleted account's email is still stored")
		}
		if _, err := f.svc.Login(ctx, "jan@example.nl", password); err != nil {
			t.Fatalf("the other account was touched: %v", err)
		}
	})
}

// TestConcurrentProvisioning: the platform posts the same RelatedPerson several times at once;
// one account is made, one invitation sent, the other calls update it.
func TestConcurrentProvisioning(t *testing.T) {
	forEngines(t, func(t *testing.T, f *fixture) {
		var wg sync.WaitGroup
		var mu sync.Mutex
		created := 0
		for range 6 {
			wg.Go(func() {
				_, c, err := f.svc.Provision(t.Context(), ozoaccount.ProvisionRequest{Email: "race@example.nl", DisplayName: "Race",
					Kind: ozoaccount.KindRelatedPerson, FHIRRef: "RelatedPerson/race"})
				if err != nil {
					t.Errorf("provision: %v", err)
					return
				}
				if c {
					mu.Lock()
					created++
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		list, _ := f.store.ListAccounts(t.Context(), "", 10)
		if created != 1 || len(list) != 1 {
			t.Fatalf("%d calls created an account, %d accounts stored; want 1 and 1", created, len(list))
		}
		// Provision sends synchronously: every mail is in by now.
		if n := len(f.smtp.To("race@example.nl")); n != 1 {
			t.Fatalf("%d invitations, want 1", n)
		}
	})
}
