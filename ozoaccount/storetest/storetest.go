// Package storetest is the conformance suite every ozoaccount.Store implementation passes.
package storetest

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/audit"
	"github.com/ozo-platform/ozo-identity/ozoaccount"
)

// Run runs the suite; open returns a fresh, empty store for each subtest.
func Run(t *testing.T, open func(t *testing.T) ozoaccount.Store) {
	t.Run("Accounts", func(t *testing.T) { testAccounts(t, open(t)) })
	t.Run("Tokens", func(t *testing.T) { testTokens(t, open(t)) })
	t.Run("TOTPStepOnce", func(t *testing.T) { testTOTPStep(t, open(t)) })
	t.Run("RecoveryCodes", func(t *testing.T) { testRecoveryCodes(t, open(t)) })
	t.Run("Lockout", func(t *testing.T) { testLockout(t, open(t)) })
	t.Run("AuditFailsClosed", func(t *testing.T) { testAuditFailsClosed(t, open(t)) })
	t.Run("LockRecordsOnlyWhenLocking", func(t *testing.T) { testLockRecords(t, open(t)) })
	t.Run("CompleteActivation", func(t *testing.T) { testCompleteActivation(t, open(t)) })
	t.Run("CompleteActivationOnce", func(t *testing.T) { testCompleteActivationOnce(t, open(t)) })
	t.Run("CompleteReset", func(t *testing.T) { testCompleteReset(t, open(t)) })
	t.Run("CompleteResetOnce", func(t *testing.T) { testCompleteResetOnce(t, open(t)) })
	t.Run("ReleaseToken", func(t *testing.T) { testReleaseToken(t, open(t)) })
	t.Run("PruneTokens", func(t *testing.T) { testPruneTokens(t, open(t)) })
}

var t0 = time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)

func account(id, email string) ozoaccount.Account {
	return ozoaccount.Account{ID: id, Email: email, DisplayName: "Els de Vries", Kind: ozoaccount.KindRelatedPerson,
		FHIRRef: "RelatedPerson/" + id, Status: ozoaccount.StatusInvited, Language: "nl", CreatedAt: t0, UpdatedAt: t0}
}

func testAccounts(t *testing.T, s ozoaccount.Store) {
	ctx := t.Context()
	a := account("a1", "els@example.nl")
	if err := s.CreateAccount(ctx, a); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateAccount(ctx, account("a2", "els@example.nl")); !errors.Is(err, ozoaccount.ErrAlreadyExists) {
		t.Fatalf("second account with the same email: %v, want ErrAlreadyExists", err)
	}
	sameRef := account("a3", "other@example.nl")
	sameRef.FHIRRef = a.FHIRRef
	if err := s.CreateAccount(ctx, sameRef); !errors.Is(err, ozoaccount.ErrAlreadyExists) {
		t.Fatalf("second account of the same FHIR resource: %v, want ErrAlreadyExists", err)
	}
	for _, id := range []string{"n1", "n2"} { // admin-made accounts without a resource
		noRef := account(id, id+"@example.nl")
		noRef.FHIRRef = ""
		if err := s.CreateAccount(ctx, noRef); err != nil {
			t.Fatalf("account without FHIR reference: %v", err)
		}
	}
	b := account("b1", "jan@example.nl")
	b.Kind, b.FHIRRef = ozoaccount.KindPatient, "Patient/b1"
	if err := s.CreateAccount(ctx, b); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetAccountByEmail(ctx, "els@example.nl")
	if err != nil || got != a {
		t.Fatalf("by email: %+v, %v; want %+v", got, err, a)
	}
	if got, err = s.GetAccountByFHIRRef(ctx, "Patient/b1"); err != nil || got.ID != "b1" || got.Kind != ozoaccount.KindPatient {
		t.Fatalf("by FHIR reference: %+v, %v", got, err)
	}
	if _, err := s.GetAccount(ctx, "nobody"); !errors.Is(err, ozoaccount.ErrNotFound) {
		t.Fatalf("unknown id: %v", err)
	}
	a.Status, a.PasswordHash, a.TOTPSecret, a.MXID = ozoaccount.StatusActive, "$argon2id$x", "SECRET", "@ozo_a1:hs"
	a.ActivatedAt, a.UpdatedAt = t0.Add(time.Hour), t0.Add(time.Hour)
	if err := s.UpdateAccount(ctx, a); err != nil {
		t.Fatal(err)
	}
	if got, _ = s.GetAccount(ctx, "a1"); got != a {
		t.Fatalf("after update: %+v, want %+v", got, a)
	}
	clash := a
	clash.Email = "jan@example.nl"
	if err := s.UpdateAccount(ctx, clash); !errors.Is(err, ozoaccount.ErrAlreadyExists) {
		t.Fatalf("update to another account's email: %v", err)
	}
	list, err := s.ListAccounts(ctx, "", 1)
	if err != nil || len(list) != 1 || list[0].ID != "a1" {
		t.Fatalf("list page 1: %+v, %v", list, err)
	}
	if list, _ = s.ListAccounts(ctx, "a1", 10); len(list) != 3 || list[0].ID != "b1" {
		t.Fatalf("list page 2: %+v", list)
	}
	s.CreateToken(ctx, ozoaccount.Token{Hash: "h", AccountID: "a1", Purpose: ozoaccount.PurposeReset, CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)})
	s.SetRecoveryCodes(ctx, "a1", []string{"r1"})
	if err := s.DeleteAccount(ctx, "a1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetAccount(ctx, "a1"); !errors.Is(err, ozoaccount.ErrNotFound) {
		t.Fatalf("deleted account still there: %v", err)
	}
	if _, err := s.GetToken(ctx, "h", ozoaccount.PurposeReset, t0); !errors.Is(err, ozoaccount.ErrNotFound) {
		t.Fatalf("deleted account's token still there: %v", err)
	}
	if n, _ := s.RecoveryCodesLeft(ctx, "a1"); n != 0 {
		t.Fatalf("deleted account's recovery codes still there: %d", n)
	}
	if err := s.DeleteAccount(ctx, "a1"); !errors.Is(err, ozoaccount.ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	if got, _ := s.GetAccount(ctx, "b1"); got != b {
		t.Fatalf("other account changed: %+v", got)
	}
}

func testTokens(t *testing.T, s ozoaccount.Store) {
	ctx := t.Context()
	s.CreateAccount(ctx, account("a1", "els@example.nl"))
	tok := ozoaccount.Token{Hash: "h1", AccountID: "a1", Purpose: ozoaccount.PurposeActivation, CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}
	if err := s.CreateToken(ctx, tok); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetToken(ctx, "h1", ozoaccount.PurposeReset, t0); !errors.Is(err, ozoaccount.ErrNotFound) {
		t.Fatalf("token of another purpose: %v", err)
	}
	if _, err := s.GetToken(ctx, "h1", ozoaccount.PurposeActivation, t0.Add(time.Hour)); !errors.Is(err, ozoaccount.ErrTokenExpired) {
		t.Fatalf("at expiry: %v", err)
	}
	if _, err := s.UseToken(ctx, "h1", ozoaccount.PurposeActivation, t0.Add(2*time.Hour)); !errors.Is(err, ozoaccount.ErrTokenExpired) {
		t.Fatalf("use after expiry: %v", err)
	}
	// Concurrent use: exactly one wins.
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	for range 8 {
		wg.Go(func() {
			if got, err := s.UseToken(ctx, "h1", ozoaccount.PurposeActivation, t0.Add(time.Minute)); err == nil {
				mu.Lock()
				wins++
				mu.Unlock()
				if got.AccountID != "a1" {
					t.Errorf("used token of %q", got.AccountID)
				}
			} else if !errors.Is(err, ozoaccount.ErrTokenUsed) {
				t.Errorf("concurrent use: %v", err)
			}
		})
	}
	wg.Wait()
	if wins != 1 {
		t.Fatalf("%d concurrent uses succeeded, want 1", wins)
	}
	if _, err := s.GetToken(ctx, "h1", ozoaccount.PurposeActivation, t0.Add(time.Minute)); !errors.Is(err, ozoaccount.ErrTokenUsed) {
		t.Fatalf("used token: %v", err)
	}
	s.CreateToken(ctx, ozoaccount.Token{Hash: "h2", AccountID: "a1", Purpose: ozoaccount.PurposeReset, CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)})
	s.CreateToken(ctx, ozoaccount.Token{Hash: "h3", AccountID: "a1", Purpose: ozoaccount.PurposeLogin, CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)})
	if err := s.DeleteTokens(ctx, "a1", ozoaccount.PurposeReset); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetToken(ctx, "h2", ozoaccount.PurposeReset, t0); !errors.Is(err, ozoaccount.ErrNotFound) {
		t.Fatalf("deleted reset token: %v", err)
	}
	if _, err := s.GetToken(ctx, "h3", ozoaccount.PurposeLogin, t0); err != nil {
		t.Fatalf("login token of the same account lost: %v", err)
	}
}

func testTOTPStep(t *testing.T, s ozoaccount.Store) {
	ctx := t.Context()
	s.CreateAccount(ctx, account("a1", "els@example.nl"))
	for _, c := range []struct {
		step int64
		want bool
	}{{100, true}, {100, false}, {99, false}, {101, true}} {
		if ok, err := s.UseTOTPStep(ctx, "a1", c.step); err != nil || ok != c.want {
			t.Fatalf("step %d: %v, %v; want %v", c.step, ok, err, c.want)
		}
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	for range 8 {
		wg.Go(func() {
			if ok, err := s.UseTOTPStep(ctx, "a1", 200); err == nil && ok {
				mu.Lock()
				wins++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if wins != 1 {
		t.Fatalf("the same step accepted %d times concurrently", wins)
	}
}

func testRecoveryCodes(t *testing.T, s ozoaccount.Store) {
	ctx := t.Context()
	s.CreateAccount(ctx, account("a1", "els@example.nl"))
	s.CreateAccount(ctx, account("b1", "jan@example.nl"))
	if err := s.SetRecoveryCodes(ctx, "a1", []string{"c1", "c2"}); err != nil {
		t.Fatal(err)
	}
	if ok, _ := s.UseRecoveryCode(ctx, "b1", "c1", t0); ok {
		t.Fatal("another account's recovery code accepted")
	}
	if ok, err := s.UseRecoveryCode(ctx, "a1", "c1", t0); err != nil || !ok {
		t.Fatalf("first use: %v, %v", ok, err)
	}
	if ok, _ := s.UseRecoveryCode(ctx, "a1", "c1", t0); ok {
		t.Fatal("recovery code accepted twice")
	}
	if n, _ := s.RecoveryCodesLeft(ctx, "a1"); n != 1 {
		t.Fatalf("codes left: %d, want 1", n)
	}
	s.SetRecoveryCodes(ctx, "a1", []string{"c3"})
	if ok, _ := s.UseRecoveryCode(ctx, "a1", "c2", t0); ok {
		t.Fatal("replaced recovery code accepted")
	}
}

func testLockout(t *testing.T, s ozoaccount.Store) {
	ctx := t.Context()
	lockFor := func(n int) time.Duration {
		if n < 3 {
			return 0
		}
		return time.Duration(n) * time.Minute
	}
	if l, err := s.GetLockout(ctx, "k"); err != nil || l != (ozoaccount.Lockout{}) {
		t.Fatalf("no failures: %+v, %v", l, err)
	}
	var l ozoaccount.Lockout
	var err error
	for i := range 3 {
		if l, err = s.RecordFailure(ctx, "k", t0.Add(time.Duration(i)*time.Second), time.Hour, lockFor, nil); err != nil {
			t.Fatal(err)
		}
	}
	if l.Failures != 3 || !l.LockedUntil.Equal(t0.Add(2*time.Second+3*time.Minute)) {
		t.Fatalf("after 3 failures: %+v", l)
	}
	if got, _ := s.GetLockout(ctx, "k"); got != l {
		t.Fatalf("stored lockout %+v, want %+v", got, l)
	}
	// Concurrent failures are all counted.
	var wg sync.WaitGroup
	for range 5 {
		wg.Go(func() {
			if _, err := s.RecordFailure(ctx, "k", t0.Add(time.Minute), time.Hour, lockFor, nil); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if got, _ := s.GetLockout(ctx, "k"); got.Failures != 8 {
		t.Fatalf("failures after 5 concurrent ones: %d, want 8", got.Failures)
	}
	// A failure after the window starts over.
	if l, _ = s.RecordFailure(ctx, "k", t0.Add(3*time.Hour), time.Hour, lockFor, nil); l.Failures != 1 || !l.LockedUntil.IsZero() {
		t.Fatalf("after the window: %+v", l)
	}
	if l, _ := s.RecordFailure(ctx, "other", t0, time.Hour, lockFor, nil); l.Failures != 1 {
		t.Fatalf("another key: %+v", l)
	}
	if err := s.ClearFailures(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.GetLockout(ctx, "k"); got != (ozoaccount.Lockout{}) {
		t.Fatalf("after clear: %+v", got)
	}
	if got, _ := s.GetLockout(ctx, "other"); got.Failures != 1 {
		t.Fatalf("clearing one key cleared another: %+v", got)
	}
}

// good is a record the chain accepts; bad one it refuses (an action outside the closed set).
var (
	good = audit.Record{Action: audit.ActionAccountUpdate, Outcome: audit.OutcomeSuccess, Actor: audit.Agent{Kind: audit.AgentAdmin},
		Resource: "ozo_account/a1", Subject: "RelatedPerson/a1"}
	bad = audit.Record{Action: "made-up", Outcome: audit.OutcomeSuccess, Actor: audit.Agent{Kind: audit.AgentAdmin}}
)

// testAuditFailsClosed: an account event whose audit record cannot be written does not happen.
func testAuditFailsClosed(t *testing.T, s ozoaccount.Store) {
	ctx := t.Context()
	a := account("a1", "els@example.nl")
	if err := s.CreateAccount(ctx, a, bad); err == nil {
		t.Fatal("an account whose record could not be written was made")
	}
	if _, err := s.GetAccount(ctx, "a1"); !errors.Is(err, ozoaccount.ErrNotFound) {
		t.Fatalf("account after a failed record: %v", err)
	}
	if err := s.CreateAccount(ctx, a, good); err != nil {
		t.Fatal(err)
	}
	changed := a
	changed.Status, changed.PasswordHash = ozoaccount.StatusDisabled, "x"
	if err := s.UpdateAccount(ctx, changed, bad); err == nil {
		t.Fatal("an update whose record could not be written was made")
	}
	if got, _ := s.GetAccount(ctx, "a1"); got != a {
		t.Fatalf("account after a failed update record: %+v", got)
	}
	tok := ozoaccount.Token{Hash: "h1", AccountID: "a1", Purpose: ozoaccount.PurposeReset, CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}
	if err := s.CreateToken(ctx, tok, bad); err == nil {
		t.Fatal("a link whose record could not be written was made")
	}
	if _, err := s.GetToken(ctx, "h1", ozoaccount.PurposeReset, t0); !errors.Is(err, ozoaccount.ErrNotFound) {
		t.Fatalf("link after a failed record: %v", err)
	}
	if err := s.CreateToken(ctx, tok, good); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UseToken(ctx, "h1", ozoaccount.PurposeReset, t0, bad); err == nil {
		t.Fatal("a link was used though its record could not be written")
	}
	if _, err := s.GetToken(ctx, "h1", ozoaccount.PurposeReset, t0); err != nil {
		t.Fatalf("link after a failed use record: %v", err)
	}
	if got, err := s.UseToken(ctx, "h1", ozoaccount.PurposeReset, t0, good); err != nil || got.AccountID != "a1" {
		t.Fatalf("use with a good record: %+v, %v", got, err)
	}
	lockAt3 := func(n int) time.Duration {
		if n >= 3 {
			return time.Minute
		}
		return 0
	}
	for i := range 2 {
		if _, err := s.RecordFailure(ctx, "k", t0, time.Hour, lockAt3, func(ozoaccount.Lockout) []audit.Record { return []audit.Record{bad} }); err != nil {
			t.Fatalf("failure %d without a lock: %v", i+1, err)
		}
	}
	if _, err := s.RecordFailure(ctx, "k", t0, time.Hour, lockAt3, func(ozoaccount.Lockout) []audit.Record { return []audit.Record{bad} }); err == nil {
		t.Fatal("a lockout whose record could not be written was made")
	}
	if l, _ := s.GetLockout(ctx, "k"); l.Failures != 2 || !l.LockedUntil.IsZero() {
		t.Fatalf("lockout after a failed record: %+v", l)
	}
	if err := s.DeleteAccount(ctx, "a1", bad); err == nil {
		t.Fatal("a delete whose record could not be written was made")
	}
	if _, err := s.GetAccount(ctx, "a1"); err != nil {
		t.Fatalf("account after a failed delete record: %v", err)
	}
	if err := s.DeleteAccount(ctx, "a1", good); err != nil {
		t.Fatal(err)
	}
}

// testLockRecords: onLock is asked for records exactly when a failure locks the key, with the lock.
func testLockRecords(t *testing.T, s ozoaccount.Store) {
	ctx := t.Context()
	lockAt3 := func(n int) time.Duration {
		if n >= 3 {
			return time.Duration(n) * time.Minute
		}
		return 0
	}
	var seen []ozoaccount.Lockout
	onLock := func(l ozoaccount.Lockout) []audit.Record {
		seen = append(seen, l)
		return []audit.Record{good}
	}
	for i := range 4 {
		if _, err := s.RecordFailure(ctx, "k", t0.Add(time.Duration(i)*time.Second), time.Hour, lockAt3, onLock); err != nil {
			t.Fatal(err)
		}
	}
	if len(seen) != 2 || seen[0].Failures != 3 || !seen[0].LockedUntil.Equal(t0.Add(2*time.Second+3*time.Minute)) || seen[1].Failures != 4 {
		t.Fatalf("onLock saw %+v, want the 3rd and 4th failures", seen)
	}
}

// activated is a's state after a completed activation with secret.
func activated(a ozoaccount.Account, secret string) ozoaccount.Account {
	a.Status, a.PasswordHash, a.TOTPSecret, a.TOTPPending = ozoaccount.StatusActive, "$argon2id$new", secret, ""
	a.ActivatedAt, a.UpdatedAt = t0.Add(time.Minute), t0.Add(time.Minute)
	return a
}

// usable reports whether the recovery code hash is one of the account's unused codes, using it.
func usable(t *testing.T, s ozoaccount.Store, id, hash string) bool {
	t.Helper()
	ok, err := s.UseRecoveryCode(t.Context(), id, hash, t0)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

// testCompleteActivation: the link, the account's credentials and status, the TOTP step, the
// recovery codes and the record change together or not at all.
func testCompleteActivation(t *testing.T, s ozoaccount.Store) {
	ctx := t.Context()
	a := account("a1", "els@example.nl")
	a.PasswordHash, a.TOTPPending = "$argon2id$new", "PENDING"
	if err := s.CreateAccount(ctx, a); err != nil {
		t.Fatal(err)
	}
	s.CreateAccount(ctx, account("b1", "jan@example.nl"))
	// An account enrolling again still has its old codes until the new ones replace them.
	if err := s.SetRecoveryCodes(ctx, "a1", []string{"old1", "old2"}); err != nil {
		t.Fatal(err)
	}
	link := ozoaccount.Token{Hash: "act", AccountID: "a1", Purpose: ozoaccount.PurposeActivation, CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}
	s.CreateToken(ctx, link)
	s.CreateToken(ctx, ozoaccount.Token{Hash: "reset", AccountID: "a1", Purpose: ozoaccount.PurposeReset, CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)})
	done := activated(a, "SECRET")
	now := t0.Add(time.Minute)

	unchanged := func(t *testing.T, when string) {
		t.Helper()
		if got, _ := s.GetAccount(ctx, "a1"); got != a {
			t.Fatalf("%s: account %+v, want it unchanged %+v", when, got, a)
		}
		if _, err := s.GetToken(ctx, "act", ozoaccount.PurposeActivation, now); err != nil {
			t.Fatalf("%s: the link is no longer usable: %v", when, err)
		}
		if n, _ := s.RecoveryCodesLeft(ctx, "a1"); n != 2 {
			t.Fatalf("%s: %d recovery codes, want the 2 old ones", when, n)
		}
	}
	// The audit record is refused: nothing happened.
	if err := s.CompleteActivation(ctx, "act", now, done, 42, []string{"n1", "n2", "n3"}, good, bad); err == nil {
		t.Fatal("an activation whose record could not be written completed")
	}
	unchanged(t, "after a refused record")
	// Not a link of this account, not an activation link, unknown, expired: refused, nothing changes.
	other := done
	other.ID = "b1"
	for name, c := range map[string]struct {
		hash string
		a    ozoaccount.Account
		now  time.Time
		want error
	}{
		"another account's link": {"act", other, now, ozoaccount.ErrNotFound},
		"a reset link":           {"reset", done, now, ozoaccount.ErrNotFound},
		"unknown link":           {"nope", done, now, ozoaccount.ErrNotFound},
		"expired link":           {"act", done, t0.Add(time.Hour), ozoaccount.ErrTokenExpired},
	} {
		if err := s.CompleteActivation(ctx, c.hash, c.now, c.a, 42, []string{"n1"}, good); !errors.Is(err, c.want) {
			t.Fatalf("%s: %v, want %v", name, err, c.want)
		}
		unchanged(t, name)
	}
	if got, _ := s.GetAccount(ctx, "b1"); got.Status != ozoaccount.StatusInvited || got.TOTPSecret != "" {
		t.Fatalf("the other account changed: %+v", got)
	}

	if err := s.CompleteActivation(ctx, "act", now, done, 42, []string{"n1", "n2", "n3"}, good); err != nil {
		t.Fatal(err)
	}
	want := done
	want.TOTPLastStep = 42
	if got, _ := s.GetAccount(ctx, "a1"); got != want {
		t.Fatalf("after activation: %+v, want %+v", got, want)
	}
	if ok, _ := s.UseTOTPStep(ctx, "a1", 42); ok {
		t.Fatal("the confirming code's step was accepted again")
	}
	if n, _ := s.RecoveryCodesLeft(ctx, "a1"); n != 3 || usable(t, s, "a1", "old1") || !usable(t, s, "a1", "n2") {
		t.Fatalf("recovery codes after activation: %d left, or the old ones still work", n)
	}
	if _, err := s.GetToken(ctx, "act", ozoaccount.PurposeActivation, now); !errors.Is(err, ozoaccount.ErrTokenUsed) {
		t.Fatalf("the link after activation: %v", err)
	}
	if err := s.CompleteActivation(ctx, "act", now, done, 43, []string{"x"}, good); !errors.Is(err, ozoaccount.ErrTokenUsed) {
		t.Fatalf("the link used twice: %v", err)
	}
	if n, _ := s.RecoveryCodesLeft(ctx, "a1"); n != 2 {
		t.Fatalf("a second completion touched the recovery codes: %d left", n)
	}

	// A disabled account's link does not activate it.
	c := account("c1", "piet@example.nl")
	c.Status = ozoaccount.StatusDisabled
	s.CreateAccount(ctx, c)
	s.CreateToken(ctx, ozoaccount.Token{Hash: "act-c", AccountID: "c1", Purpose: ozoaccount.PurposeActivation, CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)})
	if err := s.CompleteActivation(ctx, "act-c", now, activated(c, "S"), 1, []string{"x"}, good); !errors.Is(err, ozoaccount.ErrNotFound) {
		t.Fatalf("activation of a disabled account: %v", err)
	}
	if got, _ := s.GetAccount(ctx, "c1"); got != c {
		t.Fatalf("disabled account after a refused activation: %+v", got)
	}
	if _, err := s.GetToken(ctx, "act-c", ozoaccount.PurposeActivation, now); err != nil {
		t.Fatalf("the link of a refused activation was used: %v", err)
	}
}

// testCompleteActivationOnce: of concurrent completions with one link, exactly one activates
// the account, and only its recovery codes exist.
func testCompleteActivationOnce(t *testing.T, s ozoaccount.Store) {
	ctx := t.Context()
	a := account("a1", "els@example.nl")
	s.CreateAccount(ctx, a)
	s.CreateToken(ctx, ozoaccount.Token{Hash: "act", AccountID: "a1", Purpose: ozoaccount.PurposeActivation, CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)})
	const n = 8
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			codes := []string{fmt.Sprintf("c%d-1", i), fmt.Sprintf("c%d-2", i)}
			errs[i] = s.CompleteActivation(ctx, "act", t0.Add(time.Minute), activated(a, fmt.Sprintf("SECRET%d", i)), int64(100+i), codes, good)
		})
	}
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner >= 0:
			t.Fatalf("completions %d and %d both succeeded", winner, i)
		case err == nil:
			winner = i
		case !errors.Is(err, ozoaccount.ErrTokenUsed):
			t.Fatalf("completion %d: %v", i, err)
		}
	}
	if winner < 0 {
		t.Fatal("no completion succeeded")
	}
	got, _ := s.GetAccount(ctx, "a1")
	if got.Status != ozoaccount.StatusActive || got.TOTPSecret != fmt.Sprintf("SECRET%d", winner) || got.TOTPLastStep != int64(100+winner) {
		t.Fatalf("account after concurrent completions: %+v, winner %d", got, winner)
	}
	if left, _ := s.RecoveryCodesLeft(ctx, "a1"); left != 2 {
		t.Fatalf("%d recovery codes, want the winner's 2", left)
	}
	for i := range n {
		if usable(t, s, "a1", fmt.Sprintf("c%d-1", i)) != (i == winner) {
			t.Fatalf("recovery code of completion %d (winner %d)", i, winner)
		}
	}
}

// testCompleteReset: the reset link, the password, the account's login tickets, its lockout
// and the record change together or not at all.
func testCompleteReset(t *testing.T, s ozoaccount.Store) {
	ctx := t.Context()
	a := activated(account("a1", "els@example.nl"), "SECRET")
	a.PasswordHash = "$argon2id$old"
	if err := s.CreateAccount(ctx, a); err != nil {
		t.Fatal(err)
	}
	b := activated(account("b1", "jan@example.nl"), "SECRET")
	s.CreateAccount(ctx, b)
	for _, tok := range []ozoaccount.Token{
		{Hash: "rst", AccountID: "a1", Purpose: ozoaccount.PurposeReset},
		{Hash: "act", AccountID: "a1", Purpose: ozoaccount.PurposeActivation},
		{Hash: "ticket-a", AccountID: "a1", Purpose: ozoaccount.PurposeLogin},
		{Hash: "ticket-b", AccountID: "b1", Purpose: ozoaccount.PurposeLogin},
		{Hash: "rst-b", AccountID: "b1", Purpose: ozoaccount.PurposeReset},
	} {
		tok.CreatedAt, tok.ExpiresAt = t0, t0.Add(time.Hour)
		if err := s.CreateToken(ctx, tok); err != nil {
			t.Fatal(err)
		}
	}
	lockAll := func(int) time.Duration { return time.Hour }
	for _, key := range []string{"key-a1", "key-b1"} {
		if _, err := s.RecordFailure(ctx, key, t0, time.Hour, lockAll, nil); err != nil {
			t.Fatal(err)
		}
	}
	now := t0.Add(time.Minute)
	done := a
	done.PasswordHash, done.UpdatedAt = "$argon2id$new", now

	unchanged := func(t *testing.T, when string) {
		t.Helper()
		if got, _ := s.GetAccount(ctx, "a1"); got != a {
			t.Fatalf("%s: account %+v, want it unchanged %+v", when, got, a)
		}
		for _, h := range []struct {
			hash    string
			purpose ozoaccount.Purpose
		}{{"rst", ozoaccount.PurposeReset}, {"ticket-a", ozoaccount.PurposeLogin}} {
			if _, err := s.GetToken(ctx, h.hash, h.purpose, now); err != nil {
				t.Fatalf("%s: %s is no longer usable: %v", when, h.hash, err)
			}
		}
		if l, _ := s.GetLockout(ctx, "key-a1"); l.Failures != 1 {
			t.Fatalf("%s: lockout %+v, want it kept", when, l)
		}
	}
	if err := s.CompleteReset(ctx, "rst", now, done, "key-a1", good, bad); err == nil {
		t.Fatal("a reset whose record could not be written completed")
	}
	unchanged(t, "after a refused record")
	other, moved := done, done
	other.ID = "b1"
	moved.Email = "els.new@example.nl"
	for name, c := range map[string]struct {
		hash string
		a    ozoaccount.Account
		now  time.Time
		want error
	}{
		"another account's link":     {"rst", other, now, ozoaccount.ErrNotFound},
		"an activation link":         {"act", done, now, ozoaccount.ErrNotFound},
		"unknown link":               {"nope", done, now, ozoaccount.ErrNotFound},
		"expired link":               {"rst", done, t0.Add(time.Hour), ozoaccount.ErrTokenExpired},
		"the account's email before": {"rst", moved, now, ozoaccount.ErrNotFound},
	} {
		if err := s.CompleteReset(ctx, c.hash, c.now, c.a, "key-a1", good); !errors.Is(err, c.want) {
			t.Fatalf("%s: %v, want %v", name, err, c.want)
		}
		unchanged(t, name)
	}
	if got, _ := s.GetAccount(ctx, "b1"); got != b {
		t.Fatalf("the other account changed: %+v", got)
	}

	if err := s.CompleteReset(ctx, "rst", now, done, "key-a1", good); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.GetAccount(ctx, "a1"); got != done {
		t.Fatalf("after reset: %+v, want %+v", got, done)
	}
	if _, err := s.GetToken(ctx, "rst", ozoaccount.PurposeReset, now); !errors.Is(err, ozoaccount.ErrTokenUsed) {
		t.Fatalf("the link after the reset: %v", err)
	}
	if _, err := s.GetToken(ctx, "ticket-a", ozoaccount.PurposeLogin, now); !errors.Is(err, ozoaccount.ErrNotFound) {
		t.Fatalf("a login ticket from before the reset: %v", err)
	}
	if l, _ := s.GetLockout(ctx, "key-a1"); l != (ozoaccount.Lockout{}) {
		t.Fatalf("lockout after the reset: %+v", l)
	}
	for _, h := range []struct {
		hash    string
		purpose ozoaccount.Purpose
	}{{"ticket-b", ozoaccount.PurposeLogin}, {"rst-b", ozoaccount.PurposeReset}} {
		if _, err := s.GetToken(ctx, h.hash, h.purpose, now); err != nil {
			t.Fatalf("the other account's %s: %v", h.hash, err)
		}
	}
	if l, _ := s.GetLockout(ctx, "key-b1"); l.Failures != 1 {
		t.Fatalf("the other account's lockout: %+v", l)
	}
	again := done
	again.PasswordHash = "$argon2id$again"
	if err := s.CompleteReset(ctx, "rst", now, again, "key-a1", good); !errors.Is(err, ozoaccount.ErrTokenUsed) {
		t.Fatalf("the link used twice: %v", err)
	}
	if got, _ := s.GetAccount(ctx, "a1"); got != done {
		t.Fatalf("a second completion changed the account: %+v", got)
	}

	// A disabled account's link sets no password.
	c := activated(account("c1", "piet@example.nl"), "S")
	c.Status = ozoaccount.StatusDisabled
	s.CreateAccount(ctx, c)
	s.CreateToken(ctx, ozoaccount.Token{Hash: "rst-c", AccountID: "c1", Purpose: ozoaccount.PurposeReset, CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)})
	cDone := c
	cDone.PasswordHash = "$argon2id$c"
	if err := s.CompleteReset(ctx, "rst-c", now, cDone, "key-c1", good); !errors.Is(err, ozoaccount.ErrNotFound) {
		t.Fatalf("reset of a disabled account: %v", err)
	}
	if got, _ := s.GetAccount(ctx, "c1"); got != c {
		t.Fatalf("disabled account after a refused reset: %+v", got)
	}
	if _, err := s.GetToken(ctx, "rst-c", ozoaccount.PurposeReset, now); err != nil {
		t.Fatalf("the link of a refused reset was used: %v", err)
	}
}

// testCompleteResetOnce: of concurrent completions with one reset link, exactly one sets its
// password.
func testCompleteResetOnce(t *testing.T, s ozoaccount.Store) {
	ctx := t.Context()
	a := activated(account("a1", "els@example.nl"), "SECRET")
	s.CreateAccount(ctx, a)
	s.CreateToken(ctx, ozoaccount.Token{Hash: "rst", AccountID: "a1", Purpose: ozoaccount.PurposeReset, CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)})
	const n = 8
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			b := a
			b.PasswordHash = fmt.Sprintf("$argon2id$%d", i)
			errs[i] = s.CompleteReset(ctx, "rst", t0.Add(time.Minute), b, "key-a1", good)
		})
	}
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner >= 0:
			t.Fatalf("completions %d and %d both succeeded", winner, i)
		case err == nil:
			winner = i
		case !errors.Is(err, ozoaccount.ErrTokenUsed):
			t.Fatalf("completion %d: %v", i, err)
		}
	}
	if winner < 0 {
		t.Fatal("no completion succeeded")
	}
	if got, _ := s.GetAccount(ctx, "a1"); got.PasswordHash != fmt.Sprintf("$argon2id$%d", winner) {
		t.Fatalf("password after concurrent completions: %q, winner %d", got.PasswordHash, winner)
	}
}

// testReleaseToken: a spent token is put back only for the use that spent it, only while it
// lives; a later use (a successful redemption) cannot be undone by it.
func testReleaseToken(t *testing.T, s ozoaccount.Store) {
	ctx := t.Context()
	s.CreateAccount(ctx, account("a1", "els@example.nl"))
	s.CreateToken(ctx, ozoaccount.Token{Hash: "h", AccountID: "a1", Purpose: ozoaccount.PurposeHandoff, CreatedAt: t0, ExpiresAt: t0.Add(time.Minute)})
	if ok, err := s.ReleaseToken(ctx, "h", ozoaccount.PurposeHandoff, t0, t0); err != nil || ok {
		t.Fatalf("release of an unused token: %v, %v", ok, err)
	}
	first, err := s.UseToken(ctx, "h", ozoaccount.PurposeHandoff, t0.Add(time.Second))
	if err != nil || !first.UsedAt.Equal(t0.Add(time.Second)) {
		t.Fatalf("use: %+v, %v", first, err)
	}
	for name, c := range map[string]struct {
		hash    string
		purpose ozoaccount.Purpose
		usedAt  time.Time
	}{
		"another use's time": {"h", ozoaccount.PurposeHandoff, t0.Add(2 * time.Second)},
		"no use":             {"h", ozoaccount.PurposeHandoff, time.Time{}},
		"another purpose":    {"h", ozoaccount.PurposeLogin, first.UsedAt},
		"unknown token":      {"x", ozoaccount.PurposeHandoff, first.UsedAt},
	} {
		if ok, err := s.ReleaseToken(ctx, c.hash, c.purpose, c.usedAt, t0.Add(2*time.Second)); err != nil || ok {
			t.Fatalf("release with %s: %v, %v", name, ok, err)
		}
	}
	if _, err := s.GetToken(ctx, "h", ozoaccount.PurposeHandoff, t0.Add(2*time.Second)); !errors.Is(err, ozoaccount.ErrTokenUsed) {
		t.Fatalf("after refused releases: %v", err)
	}
	if ok, err := s.ReleaseToken(ctx, "h", ozoaccount.PurposeHandoff, first.UsedAt, t0.Add(2*time.Second)); err != nil || !ok {
		t.Fatalf("release: %v, %v", ok, err)
	}
	if ok, _ := s.ReleaseToken(ctx, "h", ozoaccount.PurposeHandoff, first.UsedAt, t0.Add(2*time.Second)); ok {
		t.Fatal("released twice")
	}
	second, err := s.UseToken(ctx, "h", ozoaccount.PurposeHandoff, t0.Add(3*time.Second))
	if err != nil {
		t.Fatalf("use after the release: %v", err)
	}
	// The first use's release, late, does not bring back a code the second use spent.
	if ok, _ := s.ReleaseToken(ctx, "h", ozoaccount.PurposeHandoff, first.UsedAt, t0.Add(3*time.Second)); ok {
		t.Fatal("a stale release resurrected a token spent by a later use")
	}
	if _, err := s.UseToken(ctx, "h", ozoaccount.PurposeHandoff, t0.Add(4*time.Second)); !errors.Is(err, ozoaccount.ErrTokenUsed) {
		t.Fatalf("third use: %v", err)
	}
	// Expired: nothing to give back.
	if ok, _ := s.ReleaseToken(ctx, "h", ozoaccount.PurposeHandoff, second.UsedAt, t0.Add(time.Minute)); ok {
		t.Fatal("an expired token was released")
	}
}

// testPruneTokens: expired tokens and those used before the cut-off go, of every purpose and
// account; live ones and recently used ones stay.
func testPruneTokens(t *testing.T, s ozoaccount.Store) {
	ctx := t.Context()
	s.CreateAccount(ctx, account("a1", "els@example.nl"))
	s.CreateAccount(ctx, account("b1", "jan@example.nl"))
	now := t0.Add(48 * time.Hour)
	purposes := []ozoaccount.Purpose{ozoaccount.PurposeActivation, ozoaccount.PurposeReset, ozoaccount.PurposeLogin, ozoaccount.PurposeHandoff}
	type tok struct {
		hash, account string
		purpose       ozoaccount.Purpose
		expires, used time.Time
		stays         bool
	}
	var toks []tok
	for i, p := range purposes {
		acc := []string{"a1", "b1"}[i%2]
		toks = append(toks,
			tok{"live-" + string(p), acc, p, now.Add(time.Hour), time.Time{}, true},
			tok{"expired-" + string(p), acc, p, now.Add(-time.Second), time.Time{}, false},
			tok{"at-expiry-" + string(p), acc, p, now, time.Time{}, false},
			tok{"used-long-ago-" + string(p), acc, p, now.Add(time.Hour), now.Add(-25 * time.Hour), false},
			tok{"used-recently-" + string(p), acc, p, now.Add(time.Hour), now.Add(-time.Hour), true},
			tok{"used-and-expired-" + string(p), acc, p, now.Add(-time.Minute), now.Add(-time.Hour), false},
		)
	}
	for _, k := range toks {
		if err := s.CreateToken(ctx, ozoaccount.Token{Hash: k.hash, AccountID: k.account, Purpose: k.purpose, CreatedAt: t0,
			ExpiresAt: k.expires, UsedAt: k.used}); err != nil {
			t.Fatal(err)
		}
	}
	n, err := s.PruneTokens(ctx, now, now.Add(-24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if n != 4*4 {
		t.Fatalf("pruned %d tokens, want 16", n)
	}
	for _, k := range toks {
		_, err := s.GetToken(ctx, k.hash, k.purpose, now.Add(-time.Hour))
		gone := errors.Is(err, ozoaccount.ErrNotFound)
		if gone == k.stays {
			t.Fatalf("%s: gone=%v (%v), want stays=%v", k.hash, gone, err, k.stays)
		}
	}
	if n, err := s.PruneTokens(ctx, now, now.Add(-24*time.Hour)); err != nil || n != 0 {
		t.Fatalf("second prune: %d, %v", n, err)
	}
}
