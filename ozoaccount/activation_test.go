package ozoaccount_test

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/ozoaccount"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
)

// refuseRecords makes the database refuse audit records whose detail starts with prefix (a
// plain prefix: no quotes, % or _), as a full disk or a lost connection would at the last write
// of the transaction that appends it. It returns the function that lifts the refusal.
func refuseRecords(t *testing.T, f *fixture, prefix string) func() {
	t.Helper()
	ctx := t.Context()
	stmts := []string{`CREATE TRIGGER refuse_records BEFORE INSERT ON audit_records
		WHEN NEW.detail LIKE '` + prefix + `%'
		BEGIN SELECT RAISE(ABORT, 'record refused by the test'); END`}
	undo := []string{`DROP TRIGGER refuse_records`}
	if f.db.Engine == sqlstore.Postgres {
		stmts = []string{`CREATE FUNCTION refuse_records() RETURNS trigger LANGUAGE plpgsql AS $$
			BEGIN
				IF NEW.detail LIKE '` + prefix + `%' THEN RAISE EXCEPTION 'record refused by the test'; END IF;
				RETURN NEW;
			END $$`,
			`CREATE TRIGGER refuse_records BEFORE INSERT ON audit_records FOR EACH ROW EXECUTE FUNCTION refuse_records()`}
		undo = []string{`DROP TRIGGER refuse_records ON audit_records`, `DROP FUNCTION refuse_records()`}
	}
	for _, q := range stmts {
		if _, err := f.db.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	return func() {
		for _, q := range undo {
			if _, err := f.db.ExecContext(ctx, q); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestActivationAtomic: completing an activation whose audit record the database refuses
// changes nothing (the link stays usable, the account stays invited, no recovery codes, the
// confirming code's step is not spent), and the person completes it with the same link once
// the database takes records again.
func TestActivationAtomic(t *testing.T) {
	forEngines(t, func(t *testing.T, f *fixture) {
		ctx := t.Context()
		const addr = "atomic@example.nl"
		a, _, err := f.svc.Provision(ctx, ozoaccount.ProvisionRequest{Email: addr, Kind: ozoaccount.KindPatient, FHIRRef: "Patient/p-atomic"})
		if err != nil {
			t.Fatal(err)
		}
		tok := f.mailedToken(t, addr, 1, ozoaccount.ActivatePath)
		enrol, err := f.svc.BeginActivation(ctx, tok, password)
		if err != nil {
			t.Fatal(err)
		}
		before := mustAccount(t, f, addr)

		lift := refuseRecords(t, f, "activated:")
		code := f.code(t, enrol.Secret)
		if _, _, err := f.svc.CompleteActivation(ctx, tok, code); err == nil || !strings.Contains(err.Error(), "refused by the test") {
			t.Fatalf("completion with its record refused: %v", err)
		}
		if got := mustAccount(t, f, addr); got != before {
			t.Fatalf("account after the failed completion: %+v, want %+v", got, before)
		}
		if n, _ := f.store.RecoveryCodesLeft(ctx, a.ID); n != 0 {
			t.Fatalf("%d recovery codes after the failed completion", n)
		}
		if _, err := f.svc.CheckActivation(ctx, tok); err != nil {
			t.Fatalf("the link after the failed completion: %v", err)
		}
		if _, err := f.svc.Login(ctx, addr, password); !errors.Is(err, ozoaccount.ErrInvalidCredentials) {
			t.Fatalf("login of a half-activated account: %v", err)
		}
		lift()

		// The same link and the same code (its step was not spent) complete it now.
		codes, got, err := f.svc.CompleteActivation(ctx, tok, code)
		if err != nil {
			t.Fatalf("completion once records are taken again: %v", err)
		}
		if got.Status != ozoaccount.StatusActive || len(codes) == 0 {
			t.Fatalf("after completion: %+v, %d codes", got, len(codes))
		}
		if n, _ := f.store.RecoveryCodesLeft(ctx, a.ID); n != len(codes) {
			t.Fatalf("%d recovery codes stored, %d shown", n, len(codes))
		}
		if _, _, err := f.svc.CompleteActivation(ctx, tok, code); !errors.Is(err, ozoaccount.ErrLinkUsed) {
			t.Fatalf("the link used again: %v", err)
		}
	})
}

// TestActivationOnce: two browsers completing the activation with the same link at once (the
// link forwarded, a double submit): one activates the account and is shown recovery codes, the
// other is told the link was used; only the shown codes work.
func TestActivationOnce(t *testing.T) {
	forEngines(t, func(t *testing.T, f *fixture) {
		ctx := t.Context()
		const addr = "twice@example.nl"
		a, _, err := f.svc.Provision(ctx, ozoaccount.ProvisionRequest{Email: addr, Kind: ozoaccount.KindRelatedPerson, FHIRRef: "RelatedPerson/rp-twice"})
		if err != nil {
			t.Fatal(err)
		}
		tok := f.mailedToken(t, addr, 1, ozoaccount.ActivatePath)
		enrol, err := f.svc.BeginActivation(ctx, tok, password)
		if err != nil {
			t.Fatal(err)
		}
		code := f.code(t, enrol.Secret)
		const n = 4
		shown := make([][]string, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() { shown[i], _, errs[i] = f.svc.CompleteActivation(ctx, tok, code) })
		}
		wg.Wait()
		winner := -1
		for i, err := range errs {
			switch {
			case err == nil && winner >= 0:
				t.Fatalf("completions %d and %d both succeeded", winner, i)
			case err == nil:
				winner = i
			case !errors.Is(err, ozoaccount.ErrLinkUsed):
				t.Fatalf("completion %d: %v", i, err)
			}
		}
		if winner < 0 {
			t.Fatal("no completion succeeded")
		}
		if left, _ := f.store.RecoveryCodesLeft(ctx, a.ID); left != len(shown[winner]) {
			t.Fatalf("%d recovery codes stored, %d shown to the winner", left, len(shown[winner]))
		}
		for _, c := range shown[winner] {
			ticket, err := f.svc.Login(ctx, addr, password)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.svc.SecondFactor(ctx, ticket, "", c); err != nil {
				t.Fatalf("a recovery code shown to the winner: %v", err)
			}
		}
		if left, _ := f.store.RecoveryCodesLeft(ctx, a.ID); left != 0 {
			t.Fatalf("%d recovery codes left that nobody was shown", left)
		}
	})
}

// TestPruneTokens: the housekeeping removes the links, tickets and codes a real account left
// behind once they expired or were used more than a day ago, and keeps a link still waiting.
func TestPruneTokens(t *testing.T) {
	forEngines(t, func(t *testing.T, f *fixture) {
		ctx := t.Context()
		const addr = "prune@example.nl"
		secret, _ := f.activate(t, addr) // a used activation link
		_, challenge := pkce(t, "pruning")
		// A used login ticket and a waiting hand-off code, then a ticket never used.
		f.handoffLogin(t, addr, secret, challenge)
		if _, err := f.svc.Login(ctx, addr, password); err != nil {
			t.Fatal(err)
		}
		var before int
		f.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM ozo_account_tokens`).Scan(&before)
		if before != 4 {
			t.Fatalf("%d tokens after activation and two logins, want 4", before)
		}
		if n, err := f.svc.PruneTokens(ctx); err != nil || n != 0 {
			t.Fatalf("prune with nothing expired or long used: %d, %v", n, err)
		}
		f.clock.add(25 * time.Hour)
		other, _, err := f.svc.Provision(ctx, ozoaccount.ProvisionRequest{Email: "waiting@example.nl", Kind: ozoaccount.KindPatient})
		if err != nil {
			t.Fatal(err)
		}
		n, err := f.svc.PruneTokens(ctx)
		if err != nil || n != int64(before) {
			t.Fatalf("pruned %d of %d tokens, %v", n, before, err)
		}
		var left int
		f.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM ozo_account_tokens WHERE account_id = $1`, other.ID).Scan(&left)
		if left != 1 {
			t.Fatalf("the waiting activation link of another account: %d rows", left)
		}
		if _, err := f.svc.CheckActivation(ctx, f.mailedToken(t, "waiting@example.nl", 1, ozoaccount.ActivatePath)); err != nil {
			t.Fatalf("a live link after pruning: %v", err)
		}
	})
}
