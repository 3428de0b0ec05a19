package e2e

import (
	"encoding/json"
	"errors"
	"net/http"
	"testing"

	"github.com/ozo-platform/ozo-identity/homeserver"
)

// TestAppServiceAccounts: with an application-service registration for the "zv_" namespace,
// Dendrite creates a practitioner's account and logs it in for ozo-identity's as_token, no
// password involved; the token works (/whoami); a second registration of the same name gives
// the same account; a name outside the namespace and a wrong as_token are refused.
// (The first piece of onboarding, issue 15 point 4; see docs/sso.md.)
func TestAppServiceAccounts(t *testing.T) {
	reg := &AppService{ID: "ozo-identity", ASToken: "as-" + randomHex(t, 16), HSToken: "hs-" + randomHex(t, 16),
		SenderLocalpart: "ozo-identity", UserPrefix: "zv_"}
	fed := StartFederation(t, Options{Homeservers: 1, AppService: reg})
	hs := fed.Homeservers[0]
	ctx := t.Context()
	as := homeserver.NewAppService(hs.ClientURL, hs.ServerName, reg.ASToken, fed.HTTPClient())

	userID, err := as.Register(ctx, "zv_900000009")
	if err != nil {
		t.Fatalf("register: %v", err)
	}
	if want := "@zv_900000009:" + hs.ServerName; userID != want {
		t.Fatalf("registered %q, want %q", userID, want)
	}
	// A retried registration (the account exists: M_USER_IN_USE) is the same account.
	if again, err := as.Register(ctx, "zv_900000009"); err != nil || again != userID {
		t.Fatalf("second registration: %q, %v", again, err)
	}
	token, _, err := as.Login(ctx, userID)
	if err != nil {
		t.Fatalf("login: %v", err)
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, hs.ClientURL+"/_matrix/client/v3/account/whoami", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := fed.HTTPClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var who struct {
		UserID string `json:"user_id"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&who); err != nil || resp.StatusCode != http.StatusOK || who.UserID != userID {
		t.Fatalf("whoami: %s %+v %v", resp.Status, who, err)
	}
	if _, err := as.Register(ctx, "alice"); !errors.Is(err, homeserver.ErrRejected) {
		t.Fatalf("a name outside the namespace: %v", err)
	}
	if _, err := homeserver.NewAppService(hs.ClientURL, hs.ServerName, "wrong-token", fed.HTTPClient()).Register(ctx, "zv_900000017"); err == nil {
		t.Fatal("a wrong as_token registered an account")
	}
}
