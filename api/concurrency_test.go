package api_test

import (
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/api/apitest"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
)

// parallel runs fn n times at once and waits for all.
func parallel(n int, fn func()) {
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fn()
		}()
	}
	wg.Wait()
}

// Guesses sent all at once are bounded like guesses sent one by one.
func TestConcurrentWrongTokensBounded(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		h := apitest.New(t, e)
		mallory := h.NewUser(t, "mallory")
		s, token := h.RequestToken(t, mallory, "victim@example.org")
		var mu sync.Mutex
		codes := map[string]int{}
		parallel(30, func() {
			r := h.Post(t, v2+"/validate/email/submitToken", mallory.Token, map[string]any{"sid": s.SID, "client_secret": s.ClientSecret, "token": "guess"})
			mu.Lock()
			codes[r.Errcode()]++
			mu.Unlock()
		})
		if codes["M_TOKEN_INCORRECT"] != h.Config.Validation.MaxFailedAttempts || codes["M_LIMIT_EXCEEDED"] != 30-h.Config.Validation.MaxFailedAttempts {
			t.Fatalf("30 concurrent guesses answered %v; want %d checked", codes, h.Config.Validation.MaxFailedAttempts)
		}
		h.Post(t, v2+"/validate/email/submitToken", mallory.Token, map[string]any{"sid": s.SID, "client_secret": s.ClientSecret, "token": token}).
			Want(t, http.StatusTooManyRequests, "M_LIMIT_EXCEEDED")
	})
}

// Retries of one requestToken racing each other make one session and one mail.
func TestConcurrentRequestTokenOneSession(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		h := apitest.New(t, e)
		bob := h.NewUser(t, "bob")
		secret := apitest.Secret()
		var mu sync.Mutex
		sids := map[string]int{}
		parallel(8, func() {
			r := h.Post(t, v2+"/validate/email/requestToken", bob.Token, map[string]any{"client_secret": secret, "email": "bob@example.org", "send_attempt": 1})
			mu.Lock()
			defer mu.Unlock()
			if r.Status != http.StatusOK {
				t.Errorf("requestToken: HTTP %d %s", r.Status, r.Body)
				return
			}
			sids[r.Str(t, "sid")]++
		})
		if len(sids) != 1 || len(h.Mail.Messages()) != 1 {
			t.Fatalf("sids %v, %d mails; want one session and one mail", sids, len(h.Mail.Messages()))
		}
	})
}

// Binds racing each other deliver a pending invite once.
func TestConcurrentBindsDeliverOnce(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		h := apitest.New(t, e)
		alice := h.NewUser(t, "alice")
		bob := h.NewUser(t, "bob")
		storeInvite(t, h, alice, emailInvite(alice, "bob@example.org"))
		s := h.ValidateEmail(t, bob, "bob@example.org")
		parallel(8, func() {
			r := h.Post(t, v2+"/3pid/bind", bob.Token, map[string]any{"sid": s.SID, "client_secret": s.ClientSecret, "mxid": bob.MXID})
			if r.Status != http.StatusOK {
				t.Errorf("bind: HTTP %d %s", r.Status, r.Body)
			}
		})
		waitDelivered(t, h, 1)
		time.Sleep(500 * time.Millisecond)
		if n := len(h.HS.OnBinds()); n != 1 {
			t.Fatalf("%d onbind calls, want 1", n)
		}
	})
}
