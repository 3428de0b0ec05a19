package ozoaccount_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/audit"
	"github.com/ozo-platform/ozo-identity/ozoaccount"
)

// want is what one record of a step must say.
type want struct {
	action  audit.Action
	outcome audit.Outcome
	actor   audit.AgentKind
	detail  string // a part of the detail
	count   int64  // 0: not checked
}

// expect checks that the records since *after are exactly want, in order, each naming the account
// (when id is set) with its FHIR reference and carrying the scope's source and request ID.
func (f *fixture) expect(t *testing.T, step string, after *int64, scope *audit.Scope, id, subject string, wants ...want) []audit.Record {
	t.Helper()
	recs := f.records(t, after)
	describe := func() string {
		var b strings.Builder
		for _, r := range recs {
			fmt.Fprintf(&b, "\n  %s %s %s:%s %q count=%d resource=%s subject=%s", r.Action, r.Outcome, r.Actor.Kind, r.Actor.ID, r.Detail, r.Count, r.Resource, r.Subject)
		}
		return b.String()
	}
	if len(recs) != len(wants) {
		t.Fatalf("%s: %d records, want %d:%s", step, len(recs), len(wants), describe())
	}
	for i, w := range wants {
		r := recs[i]
		ok := r.Action == w.action && r.Outcome == w.outcome && r.Actor.Kind == w.actor && strings.Contains(r.Detail, w.detail) &&
			(w.count == 0 || r.Count == w.count) && r.Source == scope.Source && r.RequestID == scope.RequestID
		if id != "" {
			ok = ok && r.Resource == ozoaccount.AuditResource(id) && r.Subject == subject
			if w.actor == audit.AgentAccount {
				ok = ok && r.Actor.ID == id
			}
		}
		if !ok {
			t.Fatalf("%s: record %d is not %+v:%s", step, i, w, describe())
		}
	}
	return recs
}

// in runs a call in a request scope, as the HTTP layer starts one.
func in(scope *audit.Scope) context.Context {
	return audit.WithScope(context.Background(), scope)
}

// TestEveryAccountEventIsAnAuditRecord walks an account through its life — provisioning by an
// admin, activation, login, failures, password reset, disable, enable, second-factor reset,
// delete — and checks that each step leaves exactly its records, with the right actor and
// outcome, the account and its FHIR reference, the caller's address and request ID; that the
// chain verifies; and that no password, code, secret, token or email reached the trail.
func TestEveryAccountEventIsAnAuditRecord(t *testing.T) {
	forEngines(t, func(t *testing.T, f *fixture) {
		const addr, ref = "els@example.nl", "RelatedPerson/rp-42"
		var seq int64
		admin := &audit.Scope{Actor: audit.Agent{Kind: audit.AgentAdmin}, Source: "192.0.2.1", RequestID: "admin-1"}
		a, _, err := f.svc.Provision(in(admin), ozoaccount.ProvisionRequest{Email: addr, DisplayName: "Els", Kind: ozoaccount.KindRelatedPerson, FHIRRef: ref})
		if err != nil {
			t.Fatal(err)
		}
		if !admin.Recorded() {
			t.Error("provisioning did not tell the admin API its change is recorded")
		}
		f.expect(t, "provision", &seq, admin, a.ID, ref,
			want{audit.ActionAccountCreate, audit.OutcomeSuccess, audit.AgentAdmin, "kind=related_person", 0},
			want{audit.ActionAccountCredentials, audit.OutcomeSuccess, audit.AgentAdmin, "activation link issued", 0})

		// The person, from their browser: anonymous until a link, password or code proves them.
		person := &audit.Scope{Actor: audit.Agent{Kind: audit.AgentAnonymous}, Source: "198.51.100.7", RequestID: "p-1"}
		ctx := in(person)
		tok := f.mailedToken(t, addr, 1, ozoaccount.ActivatePath)
		enrol, err := f.svc.BeginActivation(ctx, tok, password)
		if err != nil {
			t.Fatal(err)
		}
		f.expect(t, "activation: password", &seq, person, a.ID, ref,
			want{audit.ActionAccountCredentials, audit.OutcomeSuccess, audit.AgentAccount, "password set", 0})
		if _, _, err := f.svc.CompleteActivation(ctx, tok, "000000"); err == nil {
			t.Fatal("wrong first code accepted")
		}
		f.expect(t, "activation: wrong code", &seq, person, a.ID, ref,
			want{audit.ActionAccountCredentials, audit.OutcomeRefused, audit.AgentAnonymous, "activation: wrong code", 1})
		first := f.code(t, enrol.Secret)
		codes, _, err := f.svc.CompleteActivation(ctx, tok, first)
		if err != nil {
			t.Fatal(err)
		}
		f.expect(t, "activation: confirmed", &seq, person, a.ID, ref,
			want{audit.ActionAccountCredentials, audit.OutcomeSuccess, audit.AgentAccount, "activated", 0})
		if _, err := f.svc.BeginActivation(ctx, tok, password); err == nil {
			t.Fatal("used activation link accepted")
		}
		f.expect(t, "activation: reused link", &seq, person, a.ID, ref,
			want{audit.ActionAccountCredentials, audit.OutcomeRefused, audit.AgentAnonymous, "activation link refused: already used", 1})

		// A login with both factors is one record, by the holder.
		f.clock.add(30 * time.Second)
		ticket, err := f.svc.Login(ctx, addr, password)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.svc.SecondFactor(ctx, ticket, f.code(t, enrol.Secret), ""); err != nil {
			t.Fatal(err)
		}
		f.expect(t, "login", &seq, person, a.ID, ref,
			want{audit.ActionLogin, audit.OutcomeSuccess, audit.AgentAccount, "factors=password,totp", 0})
		ticket, _ = f.svc.Login(ctx, addr, password)
		if _, err := f.svc.SecondFactor(ctx, ticket, "", codes[0]); err != nil {
			t.Fatal(err)
		}
		f.expect(t, "login with a recovery code", &seq, person, a.ID, ref,
			want{audit.ActionLogin, audit.OutcomeSuccess, audit.AgentAccount, "factors=password,recovery_code", 0})

		// Failures are refused attempts: a wrong password, a used recovery code, a stale ticket.
		f.svc.Login(ctx, addr, "not the password at all")
		ticket, _ = f.svc.Login(ctx, addr, password)
		f.svc.SecondFactor(ctx, ticket, "", codes[0])
		f.svc.SecondFactor(ctx, "no such ticket", "123456", "")
		f.expect(t, "failures", &seq, person, "", "",
			want{audit.ActionLoginFailure, audit.OutcomeRefused, audit.AgentAnonymous, "password: wrong password", 1},
			want{audit.ActionLoginFailure, audit.OutcomeRefused, audit.AgentAnonymous, "login ticket unknown", 2})

		// A reset: asked for by anyone who knows the address, done by whoever has the mail.
		asker := &audit.Scope{Actor: audit.Agent{Kind: audit.AgentAnonymous}, Source: "203.0.113.5", RequestID: "r-1"}
		if err := f.svc.RequestReset(in(asker), addr); err != nil {
			t.Fatal(err)
		}
		f.svc.Wait()
		f.expect(t, "reset requested", &seq, asker, a.ID, ref,
			want{audit.ActionAccountCredentials, audit.OutcomeSuccess, audit.AgentAnonymous, "password reset link issued", 0})
		resetTok := f.mailedToken(t, addr, 2, ozoaccount.ResetPath)
		const newPassword = "a brand new passphrase 42"
		if err := f.svc.ResetPassword(ctx, resetTok, newPassword); err != nil {
			t.Fatal(err)
		}
		f.expect(t, "reset", &seq, person, a.ID, ref,
			want{audit.ActionAccountCredentials, audit.OutcomeSuccess, audit.AgentAccount, "password reset with a mailed link", 0})
		f.svc.ResetPassword(ctx, resetTok, "yet another passphrase")
		f.expect(t, "reset link reused", &seq, person, a.ID, ref,
			want{audit.ActionAccountCredentials, audit.OutcomeRefused, audit.AgentAnonymous, "password reset link refused: already used", 1})
		f.svc.RequestReset(in(asker), "nobody@example.nl")
		f.expect(t, "reset for no account", &seq, asker, "", "",
			want{audit.ActionAccountCredentials, audit.OutcomeRefused, audit.AgentAnonymous, "without an account", 1})

		// The admin's changes.
		for _, step := range []struct {
			name  string
			do    func(context.Context) error
			wants []want
		}{
			{"disable", func(ctx context.Context) error { _, err := f.svc.Disable(ctx, a.ID); return err },
				[]want{{audit.ActionAccountUpdate, audit.OutcomeSuccess, audit.AgentAdmin, "change=disable", 0}}},
			{"enable", func(ctx context.Context) error { _, err := f.svc.Enable(ctx, a.ID); return err },
				[]want{{audit.ActionAccountUpdate, audit.OutcomeSuccess, audit.AgentAdmin, "change=enable status=active", 0}}},
			{"update from FHIR", func(ctx context.Context) error {
				_, _, err := f.svc.Provision(ctx, ozoaccount.ProvisionRequest{Email: addr, DisplayName: "Els Jansen", Kind: ozoaccount.KindRelatedPerson, FHIRRef: ref})
				return err
			}, []want{{audit.ActionAccountUpdate, audit.OutcomeSuccess, audit.AgentAdmin, "change=provision fields=name", 0}}},
			{"reset-2fa", func(ctx context.Context) error { _, err := f.svc.ResetSecondFactor(ctx, a.ID); return err },
				[]want{{audit.ActionAccountCredentials, audit.OutcomeSuccess, audit.AgentAdmin, "second factor and recovery codes reset", 0},
					{audit.ActionAccountCredentials, audit.OutcomeSuccess, audit.AgentAdmin, "link to enrol again issued", 0}}},
			{"delete", func(ctx context.Context) error { return f.svc.Delete(ctx, a.ID) },
				[]want{{audit.ActionAccountDelete, audit.OutcomeSuccess, audit.AgentAdmin, "kind=related_person", 0}}},
		} {
			scope := &audit.Scope{Actor: audit.Agent{Kind: audit.AgentAdmin}, Source: "192.0.2.1", RequestID: "admin-" + step.name}
			if err := step.do(in(scope)); err != nil {
				t.Fatalf("%s: %v", step.name, err)
			}
			if !scope.Recorded() {
				t.Errorf("%s did not tell the admin API its change is recorded", step.name)
			}
			f.expect(t, step.name, &seq, scope, a.ID, ref, step.wants...)
		}

		// The chain verifies, and nothing secret or personal is in it.
		all := f.records(t, nil)
		head, err := f.trail.AuditHead(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		v := audit.NewVerifier(f.chain, head, nil)
		if err := f.trail.ScanAudit(t.Context(), 0, head.Seq, v.Add); err != nil {
			t.Fatal(err)
		}
		if _, err := v.Finish(); err != nil {
			t.Fatalf("chain after account events: %v", err)
		}
		for i := range all {
			all[i].MAC, all[i].PrevMAC = "", "" // hex: a six-digit code could turn up in one by chance
		}
		dump, _ := json.Marshal(all)
		secrets := append([]string{password, newPassword, "not the password at all", enrol.Secret, first, tok, resetTok, addr, "Els"}, codes...)
		for _, secret := range secrets {
			if strings.Contains(string(dump), secret) {
				t.Fatalf("%q is in the audit trail:\n%s", secret, dump)
			}
		}
	})
}

// TestFailedLoginsAggregated: guessing passwords from one address leaves one record at once,
// one counted record per interval and one record of the lockout itself; another address gets
// its own first record; nothing grows with the number of guesses.
func TestFailedLoginsAggregated(t *testing.T) {
	forEngines(t, func(t *testing.T, f *fixture) {
		f.activate(t, "els@example.nl")
		a := mustAccount(t, f, "els@example.nl")
		var seq int64
		f.records(t, &seq)
		guesser := &audit.Scope{Actor: audit.Agent{Kind: audit.AgentAnonymous}, Source: "203.0.113.66", RequestID: "g"}
		ctx := in(guesser)
		// Three wrong passwords lock the email (the fixture's policy); the rest are refused as locked.
		for i := range 50 {
			if _, err := f.svc.Login(ctx, "els@example.nl", fmt.Sprintf("guess number %d", i)); err == nil {
				t.Fatal("a guess logged in")
			}
		}
		recs := f.expect(t, "50 guesses", &seq, guesser, a.ID, a.FHIRRef,
			want{audit.ActionLoginFailure, audit.OutcomeRefused, audit.AgentAnonymous, "wrong password; failures=1", 1},
			want{audit.ActionLoginFailure, audit.OutcomeRefused, audit.AgentAnonymous, "locked out until", 0},
			want{audit.ActionLoginFailure, audit.OutcomeRefused, audit.AgentAnonymous, "refused while locked out", 49})
		if !strings.Contains(recs[1].Detail, "after 3 failed attempts") {
			t.Fatalf("lockout record: %q", recs[1].Detail)
		}
		// Another source guessing another (unknown) address: its own first record, counted apart.
		other := &audit.Scope{Actor: audit.Agent{Kind: audit.AgentAnonymous}, Source: "203.0.113.67", RequestID: "h"}
		for range 10 {
			f.svc.Login(in(other), "nobody@example.nl", "wrong password x")
		}
		f.expect(t, "unknown address", &seq, other, "", "",
			want{audit.ActionLoginFailure, audit.OutcomeRefused, audit.AgentAnonymous, "no account has this email address", 1},
			want{audit.ActionLoginFailure, audit.OutcomeRefused, audit.AgentAnonymous, "refused while locked out", 9})
	})
}

// TestAccountEventFailsClosed: without a chain key no account event can be stored, so none
// happens without its record; refused attempts are still refused.
func TestAccountEventFailsClosed(t *testing.T) {
	forEngines(t, func(t *testing.T, f *fixture) {
		secret, _ := f.activate(t, "els@example.nl")
		f.trail.SetAuditChain(nil)
		ctx := t.Context()
		if _, _, err := f.svc.Provision(ctx, ozoaccount.ProvisionRequest{Email: "jan@example.nl", Kind: ozoaccount.KindPatient, FHIRRef: "Patient/p-9"}); err == nil {
			t.Fatal("an account was made without its record")
		}
		if _, err := f.store.GetAccountByEmail(ctx, "jan@example.nl"); err == nil {
			t.Fatal("the account is stored without its record")
		}
		a := mustAccount(t, f, "els@example.nl")
		if _, err := f.svc.Disable(ctx, a.ID); err == nil {
			t.Fatal("an account was disabled without its record")
		}
		f.clock.add(30 * time.Second)
		ticket, err := f.svc.Login(ctx, "els@example.nl", password)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.svc.SecondFactor(ctx, ticket, f.code(t, secret), ""); err == nil {
			t.Fatal("a login completed without its record")
		}
		if got := mustAccount(t, f, "els@example.nl"); got.Status != ozoaccount.StatusActive {
			t.Fatalf("status %s after a refused disable", got.Status)
		}
		if _, err := f.svc.Login(ctx, "els@example.nl", "wrong password here"); err == nil {
			t.Fatal("a wrong password logged in")
		}
	})
}
