package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// UserID is the Matrix ID localpart would have on this homeserver.
func (hs *Homeserver) UserID(localpart string) id.UserID {
	return id.NewUserID(localpart, hs.ServerName)
}

// Register creates a user with m.login.dummy (open registration) and returns
// a client logged in as that user, talking to the plain-HTTP client API.
func (hs *Homeserver) Register(t testing.TB, localpart string) *mautrix.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	cli, err := mautrix.NewClient(hs.ClientURL, "", "")
	if err != nil {
		t.Fatalf("e2e: client for %s: %v", hs.ServerName, err)
	}
	resp, err := cli.RegisterDummy(ctx, &mautrix.ReqRegister[any]{
		Username:                 localpart,
		Password:                 Password(localpart),
		InitialDeviceDisplayName: "e2e",
	})
	if err != nil {
		t.Fatalf("e2e: register %s on %s: %v", localpart, hs.ServerName, err)
	}
	if want := hs.UserID(localpart); resp.UserID != want {
		t.Fatalf("e2e: registered %s, want %s", resp.UserID, want)
	}
	cli.UserID, cli.AccessToken, cli.DeviceID = resp.UserID, resp.AccessToken, resp.DeviceID
	return cli
}

// Login logs in a user created by Register and returns a client with a new device.
func (hs *Homeserver) Login(t testing.TB, localpart string) *mautrix.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	cli, err := mautrix.NewClient(hs.ClientURL, "", "")
	if err != nil {
		t.Fatalf("e2e: client for %s: %v", hs.ServerName, err)
	}
	_, err = cli.Login(ctx, &mautrix.ReqLogin{
		Type:                     mautrix.AuthTypePassword,
		Identifier:               mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: localpart},
		Password:                 Password(localpart),
		InitialDeviceDisplayName: "e2e",
		StoreCredentials:         true,
	})
	if err != nil {
		t.Fatalf("e2e: log in %s on %s: %v", localpart, hs.ServerName, err)
	}
	return cli
}

// Password is the password Register gives localpart.
func Password(localpart string) string {
	return "e2e-password-" + localpart
}

// SyncUntil long-polls /sync (from the start) until cond accepts a response or
// timeout passes, failing the test then with what. It returns the accepting
// response. cond sees each incremental response once.
func SyncUntil(t testing.TB, cli *mautrix.Client, timeout time.Duration, what string, cond func(*mautrix.RespSync) bool) *mautrix.RespSync {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	since := ""
	for {
		// A short server-side wait keeps each poll well inside ctx.
		resp, err := cli.SyncRequest(ctx, 1000, since, "", false, event.PresenceOffline)
		if ctx.Err() != nil {
			t.Fatalf("e2e: %s: %s did not see %s within %s", cli.UserID, cli.HomeserverURL, what, timeout)
		}
		if err != nil {
			t.Fatalf("e2e: %s: sync: %v", cli.UserID, fmt.Errorf("waiting for %s: %w", what, err))
		}
		if cond(resp) {
			return resp
		}
		since = resp.NextBatch
	}
}
