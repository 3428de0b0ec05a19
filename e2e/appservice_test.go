package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/ozo-platform/ozo-identity/homeserver"
)

// TestAppServiceAccounts: with an application-service registration for the "zv_" namespace,
// Dendrite creates a practitioner's account and logs it in for ozo-identity's as_token, no
// password involved; the token works (/whoami); a second registration of the same name is
// M_USER_IN_USE; a name outside the namespace and a wrong as_token are refused.
// (The first piece of onboarding, issue 15 point 4; see docs/sso.md.)
func TestAppServiceAccounts(t *testing.T) {
	asToken, hsToken := "as-"+randomHex(t, 16), "hs-"+randomHex(t, 16)
	reg := fmt.Sprintf(`id: ozo-identity
url: ""
as_token: %q
hs_token: %q
sender_localpart: ozo-identity
rate_limited: false
namespaces:
  users:
    - exclusive: true
      regex: "@zv_.*"
  aliases: []
  rooms: []
`, asToken, hsToken)
	fed := StartFederation(t, Options{Homeservers: 1, AppServices: []string{reg}})
	hs := fed.Homeservers[0]
	ctx := t.Context()
	as := homeserver.NewAppService(hs.ClientURL, asToken, fed.HTTPClient())

	userID, err := as.Register(ctx, "zv_900000009")
	if err != nil {
		t.Fatalf("register: %v", err)
	}
	if want := "@zv_900000009:" + hs.ServerName; userID != want {
		t.Fatalf("registered %q, want %q", userID, want)
	}
	if _, err := as.Register(ctx, "zv_900000009"); !errors.Is(err, homeserver.ErrUserInUse) {
		t.Fatalf("second registration: %v", err)
	}
	loggedIn, token, _, err := as.Login(ctx, "zv_900000009")
	if err != nil || loggedIn != userID {
		t.Fatalf("login: %q, %v", loggedIn, err)
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
	if _, err := homeserver.NewAppService(hs.ClientURL, "wrong-token", fed.HTTPClient()).Register(ctx, "zv_900000017"); err == nil {
		t.Fatal("a wrong as_token registered an account")
	}
}
