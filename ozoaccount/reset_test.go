package ozoaccount_test

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/ozo-platform/ozo-identity/audit"
	"github.com/ozo-platform/ozo-identity/ozoaccount"
)

const resetRecord = "password reset with a mailed link"

// resetRecords counts the records of completed password resets.
func resetRecords(t *testing.T, f *fixture) int {
	t.Helper()
	n := 0
	for _, r := range f.records(t, nil) {
		if r.Action == audit.ActionAccountCredentials && r.Outcome == audit.OutcomeSuccess && r.Detail == resetRecord {
			n++
		}
	}
	return n
}

// liveTickets counts the account's unused login tickets.
func liveTickets(t *testing.T, f *fixture, id string) int {
	t.Helper()
	var n int
	if err := f.db.QueryRowContext(t.Context(), `SELECT COUNT(*) FROM ozo_account_tokens
		WHERE account_id = $1 AND purpose = $2 AND used_at = 0`, id, string(ozoaccount.PurposeLogin)).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestResetAtomic: a reset whose audit record the database refuses changes nothing: the link
// stays usable, the old password works, the failed logins still count and the login tickets
// live. Once records are taken again the same link sets the password, ends the tickets and
// lifts the lockout.
func TestResetAtomic(t *testing.T) {
	forEngines(t, func(t *testing.T, f *fixture) {
		ctx := t.Context()
		const addr = "reset-atomic@example.nl"
		secret, _ := f.activate(t, addr)
		before := mustAccount(t, f, addr)
		// Two wrong passwords: one more locks the address (the fixture allows three).
		for range 2 {
			if _, err := f.svc.Login(ctx, addr, "wrong password x"); !errors.Is(err, ozoaccount.ErrInvalidCredentials) {
				t.Fatal(err)
			}
		}
		ticket, err := f.svc.Login(ctx, addr, password)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.svc.RequestReset(ctx, addr); err != nil {
			t.Fatal(err)
		}
		f.svc.Wait()
		tok := f.mailedToken(t, addr, 2, ozoaccount.ResetPath)
		const newPassword = "a brand new passphrase 42"

		lift := refuseRecords(t, f, resetRecord)
		if err := f.svc.ResetPassword(ctx, tok, newPassword); err == nil || !strings.Contains(err.Error(), "refused by the test") {
			t.Fatalf("reset with its record refused: %v", err)
		}
		if got := mustAccount(t, f, addr); got != before {
			t.Fatalf("account after the failed reset: %+v, want %+v", got, before)
		}
		if err := f.svc.CheckReset(ctx, tok); err != nil {
			t.Fatalf("the link after the failed reset: %v", err)
		}
		if n := liveTickets(t, f, before.ID); n != 1 {
			t.Fatalf("%d login tickets after the failed reset, want the 1 from before", n)
		}
		if n := resetRecords(t, f); n != 0 {
			t.Fatalf("%d reset records after the failed reset", n)
		}
		if _, err := f.svc.Login(ctx, addr, password); err != nil {
			t.Fatalf("the old password after the failed reset: %v", err)
		}
		// The failures were not cleared: a third locks the address.
		f.svc.Login(ctx, addr, "wrong password x")
		var locked *ozoaccount.LockedError
		if _, err := f.svc.Login(ctx, addr, password); !errors.As(err, &locked) {
			t.Fatalf("login after a third failure: %v, want locked out", err)
		}
		lift()

		if err := f.svc.ResetPassword(ctx, tok, newPassword); err != nil {
			t.Fatalf("reset once records are taken again: %v", err)
		}
		if n := resetRecords(t, f); n != 1 {
			t.Fatalf("%d reset records, want 1", n)
		}
		if n := liveTickets(t, f, before.ID); n != 0 {
			t.Fatalf("%d login tickets from before the reset still usable", n)
		}
		if _, err := f.svc.SecondFactor(ctx, ticket, f.code(t, secret), ""); !errors.Is(err, ozoaccount.ErrInvalidLink) {
			t.Fatalf("a login ticket from before the reset: %v", err)
		}
		// The reset lifted the lockout: the new password works at once, the old one not.
		if _, err := f.svc.Login(ctx, addr, newPassword); err != nil {
			t.Fatalf("the new password: %v", err)
		}
		if _, err := f.svc.Login(ctx, addr, password); !errors.Is(err, ozoaccount.ErrInvalidCredentials) {
			t.Fatalf("the old password after the reset: %v", err)
		}
		if err := f.svc.ResetPassword(ctx, tok, "yet another passphrase"); !errors.Is(err, ozoaccount.ErrLinkUsed) {
			t.Fatalf("the link used again: %v", err)
		}
	})
}

// TestResetOnce: two browsers completing a reset with the same link at once (a forwarded mail,
// a double submit): one sets its password, the others are told the link was used, and only the
// winner's password works.
func TestResetOnce(t *testing.T) {
	forEngines(t, func(t *testing.T, f *fixture) {
		ctx := t.Context()
		const addr = "reset-once@example.nl"
		f.activate(t, addr)
		if err := f.svc.RequestReset(ctx, addr); err != nil {
			t.Fatal(err)
		}
		f.svc.Wait()
		tok := f.mailedToken(t, addr, 2, ozoaccount.ResetPath)
		const n = 4
		passwords := make([]string, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			passwords[i] = fmt.Sprintf("new passphrase number %d", i)
			wg.Go(func() { errs[i] = f.svc.ResetPassword(ctx, tok, passwords[i]) })
		}
		wg.Wait()
		winner := -1
		for i, err := range errs {
			switch {
			case err == nil && winner >= 0:
				t.Fatalf("resets %d and %d both succeeded", winner, i)
			case err == nil:
				winner = i
			case !errors.Is(err, ozoaccount.ErrLinkUsed):
				t.Fatalf("reset %d: %v", i, err)
			}
		}
		if winner < 0 {
			t.Fatal("no reset succeeded")
		}
		if n := resetRecords(t, f); n != 1 {
			t.Fatalf("%d reset records, want 1", n)
		}
		if _, err := f.svc.Login(ctx, addr, passwords[winner]); err != nil {
			t.Fatalf("the winner's password: %v", err)
		}
		for i, pw := range passwords {
			if _, err := f.svc.Login(ctx, addr, pw); i != winner && !errors.Is(err, ozoaccount.ErrInvalidCredentials) {
				t.Fatalf("the password of losing reset %d: %v", i, err)
			}
		}
	})
}

// TestResetEndsPendingHandoffs: a reset may follow a stolen password, so a login completed
// before it cannot be handed to a client after it.
func TestResetEndsPendingHandoffs(t *testing.T) {
	forEngines(t, func(t *testing.T, f *fixture) {
		ctx := t.Context()
		const addr = "reset-handoff@example.nl"
		secret, _ := f.activate(t, addr)
		verifier, challenge := pkce(t, "before-reset")
		_, h := f.handoffLogin(t, addr, secret, challenge)
		if err := f.svc.RequestReset(ctx, addr); err != nil {
			t.Fatal(err)
		}
		f.svc.Wait()
		tok := f.mailedToken(t, addr, 2, ozoaccount.ResetPath)
		if err := f.svc.ResetPassword(ctx, tok, "a brand new passphrase"); err != nil {
			t.Fatal(err)
		}
		if _, err := f.svc.RedeemHandoff(ctx, h.Code, verifier); !errors.Is(err, ozoaccount.ErrHandoffRefused) {
			t.Fatalf("a hand-off code from before the reset: %v", err)
		}
	})
}
