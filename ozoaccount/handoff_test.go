package ozoaccount_test

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/audit"
	"github.com/ozo-platform/ozo-identity/ozoaccount"
)

// pkce returns a fresh PKCE verifier and its S256 challenge.
func pkce(t *testing.T, seed string) (verifier, challenge string) {
	t.Helper()
	verifier = strings.Repeat(seed, 43/len(seed)+1)[:43] + "-verifier.~_"
	sum := sha256.Sum256([]byte(verifier))
	return verifier, base64.RawURLEncoding.EncodeToString(sum[:])
}

// handoffLogin logs addr in with password and the next TOTP step's code, for a client with challenge.
func (f *fixture) handoffLogin(t *testing.T, addr, secret, challenge string) (ozoaccount.LoginResult, ozoaccount.Handoff) {
	t.Helper()
	ticket, err := f.svc.Login(t.Context(), addr, password)
	if err != nil {
		t.Fatal(err)
	}
	f.clock.add(30 * time.Second) // every login takes a code of a step not used before
	res, h, err := f.svc.SecondFactorHandoff(t.Context(), ticket, f.code(t, secret), "", challenge)
	if err != nil {
		t.Fatalf("second factor: %v", err)
	}
	return res, h
}

// TestHandoff: a login on the page hands its client a one-time code, not a token. The code is
// redeemed once, only with the verifier of the client's challenge, only within its lifetime,
// only while it is the account's newest and the account is active; every refusal is a failed
// login in the audit trail; the code itself is stored nowhere.
func TestHandoff(t *testing.T) {
	forEngines(t, func(t *testing.T, f *fixture) {
		ctx := t.Context()
		const addr = "handoff@example.nl"
		secret, _ := f.activate(t, addr)
		a := mustAccount(t, f, addr)
		verifier, challenge := pkce(t, "client-one")
		var seq int64
		f.records(t, &seq)

		// A malformed challenge is the client's mistake: refused before the ticket is spent.
		ticket, err := f.svc.Login(ctx, addr, password)
		if err != nil {
			t.Fatal(err)
		}
		f.clock.add(30 * time.Second)
		code := f.code(t, secret)
		for _, bad := range []string{"short", challenge + "A", strings.Replace(challenge, challenge[:1], "+", 1), challenge[:42] + "="} {
			if _, _, err := f.svc.SecondFactorHandoff(ctx, ticket, code, "", bad); !errors.Is(err, ozoaccount.ErrInvalid) {
				t.Fatalf("challenge %q: %v", bad, err)
			}
		}
		res, h, err := f.svc.SecondFactorHandoff(ctx, ticket, code, "", challenge)
		if err != nil || h.Code == "" || res.Account.ID != a.ID || res.AccessToken != "" {
			t.Fatalf("second factor with a client: %+v %+v %v", res, h, err)
		}
		if want := f.clock.now().Add(time.Minute); !h.ExpiresAt.Equal(want) {
			t.Fatalf("code expires %v, want %v (the default lifetime)", h.ExpiresAt, want)
		}
		recs := f.records(t, &seq)
		if len(recs) != 1 || recs[0].Action != audit.ActionLogin || recs[0].Outcome != audit.OutcomeSuccess {
			t.Fatalf("the login's records: %+v", recs)
		}

		// The code is stored only as a hash that also covers the challenge, and logged nowhere.
		for table, cols := range map[string]string{"ozo_account_tokens": "token_hash || account_id",
			"audit_records": "detail || resource || actor || on_behalf_of"} {
			var n int
			if err := f.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM `+table+` WHERE `+cols+` LIKE '%' || $1 || '%'`, h.Code).Scan(&n); err != nil || n != 0 {
				t.Fatalf("the code is in %s: %d rows, %v", table, n, err)
			}
		}
		if strings.Contains(f.log.String(), h.Code) {
			t.Fatal("the code is logged")
		}
		sum := sha256.Sum256([]byte(h.Code))
		if _, err := f.store.GetToken(ctx, base64.RawURLEncoding.EncodeToString(sum[:]), ozoaccount.PurposeHandoff, f.clock.now()); !errors.Is(err, ozoaccount.ErrNotFound) {
			t.Fatalf("the code's plain hash names a stored row: %v", err)
		}

		// Hostile redemptions: no verifier of the right shape, another client's verifier, a
		// guessed code. None of them spends the code: only the verifier's holder can name it.
		otherVerifier, _ := pkce(t, "client-two")
		for _, c := range []struct{ code, verifier string }{
			{"", verifier}, {h.Code, ""}, {h.Code, "short"}, {h.Code, verifier + " "}, {strings.Repeat("x", 256), verifier},
			{h.Code, otherVerifier}, {h.Code + "x", verifier}, {strings.ToUpper(h.Code), verifier},
		} {
			if _, err := f.svc.RedeemHandoff(ctx, c.code, c.verifier); !errors.Is(err, ozoaccount.ErrHandoffRefused) {
				t.Fatalf("redeem %q with %q: %v", c.code, c.verifier, err)
			}
		}
		got, err := f.svc.RedeemHandoff(ctx, h.Code, verifier)
		if err != nil || got.Account.ID != a.ID || got.Account.Status != ozoaccount.StatusActive {
			t.Fatalf("redeem: %+v %v", got, err)
		}
		// Once.
		if _, err := f.svc.RedeemHandoff(ctx, h.Code, verifier); !errors.Is(err, ozoaccount.ErrHandoffRefused) {
			t.Fatalf("redeemed twice: %v", err)
		}
		// Nine refusals (eight hostile redemptions and the reuse), counted per source: the first
		// recorded on its own, the rest aggregated under the latest, which names the account.
		recs = f.records(t, &seq)
		refused := 0
		for _, r := range recs {
			if r.Action != audit.ActionLoginFailure || r.Outcome != audit.OutcomeRefused || !strings.Contains(r.Detail, "handoff: ") {
				t.Fatalf("unexpected record of a redemption: %+v", r)
			}
			refused += int(r.Count)
		}
		if refused != 9 || !strings.HasSuffix(recs[len(recs)-1].Detail, "handoff: code already used") ||
			recs[len(recs)-1].Resource != ozoaccount.AuditResource(a.ID) || recs[len(recs)-1].Subject != a.FHIRRef {
			t.Fatalf("refused redemptions, %d counted: %+v", refused, recs)
		}

		// Expired.
		_, h = f.handoffLogin(t, addr, secret, challenge)
		f.clock.add(time.Minute)
		if _, err := f.svc.RedeemHandoff(ctx, h.Code, verifier); !errors.Is(err, ozoaccount.ErrHandoffRefused) {
			t.Fatalf("expired code: %v", err)
		}
		if recs := f.records(t, &seq); len(recs) != 2 || !has(recs, audit.ActionLoginFailure, audit.OutcomeRefused, "handoff: code expired") {
			t.Fatal("the expired code's refusal is not recorded")
		}

		// A newer login's code replaces the older one.
		_, older := f.handoffLogin(t, addr, secret, challenge)
		_, newer := f.handoffLogin(t, addr, secret, challenge)
		if _, err := f.svc.RedeemHandoff(ctx, older.Code, verifier); !errors.Is(err, ozoaccount.ErrHandoffRefused) {
			t.Fatalf("the older code still works: %v", err)
		}
		if _, err := f.svc.RedeemHandoff(ctx, newer.Code, verifier); err != nil {
			t.Fatalf("the newer code: %v", err)
		}

		// Disabling the account ends its waiting login.
		_, h = f.handoffLogin(t, addr, secret, challenge)
		if _, err := f.svc.Disable(ctx, a.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := f.svc.RedeemHandoff(ctx, h.Code, verifier); !errors.Is(err, ozoaccount.ErrHandoffRefused) {
			t.Fatalf("code of a disabled account: %v", err)
		}
		if _, err := f.svc.Enable(ctx, a.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := f.svc.RedeemHandoff(ctx, h.Code, verifier); !errors.Is(err, ozoaccount.ErrHandoffRefused) {
			t.Fatalf("code from before the account was disabled, after enabling it: %v", err)
		}

		// Without a client nothing is handed over.
		res, h = f.handoffLogin(t, addr, secret, "")
		if h.Code != "" || res.Account.ID != a.ID {
			t.Fatalf("login without a client: %+v %+v", res, h)
		}
	})
}

// TestHandoffOnce: of concurrent redemptions of one code (replicas sharing the database),
// exactly one gets the session.
func TestHandoffOnce(t *testing.T) {
	forEngines(t, func(t *testing.T, f *fixture) {
		const addr = "race@example.nl"
		secret, _ := f.activate(t, addr)
		verifier, challenge := pkce(t, "racer")
		_, h := f.handoffLogin(t, addr, secret, challenge)
		const n = 8
		var wg sync.WaitGroup
		errs := make([]error, n)
		for i := range n {
			wg.Go(func() { _, errs[i] = f.svc.RedeemHandoff(t.Context(), h.Code, verifier) })
		}
		wg.Wait()
		won := 0
		for _, err := range errs {
			switch {
			case err == nil:
				won++
			case !errors.Is(err, ozoaccount.ErrHandoffRefused):
				t.Fatalf("redeem: %v", err)
			}
		}
		if won != 1 {
			t.Fatalf("%d of %d concurrent redemptions succeeded, want exactly 1", won, n)
		}
	})
}
