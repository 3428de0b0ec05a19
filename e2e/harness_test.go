package e2e

import (
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// TestHarness proves the two homeservers federate: Alice on hs1 invites Bob
// on hs2 by Matrix ID, Bob sees the invite and joins, Alice sees the join.
func TestHarness(t *testing.T) {
	fed := StartFederation(t, Options{})
	hs1, hs2 := fed.Homeservers[0], fed.Homeservers[1]
	if hs1.ServerName == hs2.ServerName {
		t.Fatalf("both homeservers are named %s", hs1.ServerName)
	}
	alice := hs1.Register(t, "alice")
	bob := hs2.Register(t, "bob")
	ctx := t.Context()

	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "harness"})
	if err != nil {
		t.Fatalf("create room: %v", err)
	}
	if _, err := alice.InviteUser(ctx, room.RoomID, &mautrix.ReqInviteUser{UserID: bob.UserID}); err != nil {
		t.Fatalf("invite %s: %v", bob.UserID, err)
	}

	SyncUntil(t, bob, 20*time.Second, "the invite to "+room.RoomID.String(), func(r *mautrix.RespSync) bool {
		inv, ok := r.Rooms.Invite[room.RoomID]
		if !ok {
			return false
		}
		for _, ev := range inv.State.Events {
			if ev.Type == event.StateMember && ev.GetStateKey() == bob.UserID.String() {
				if ev.Sender != alice.UserID {
					t.Fatalf("invite sent by %s, want %s", ev.Sender, alice.UserID)
				}
				return true
			}
		}
		return false
	})

	if _, err := bob.JoinRoomByID(ctx, room.RoomID); err != nil {
		t.Fatalf("bob joins over federation: %v", err)
	}

	SyncUntil(t, alice, 20*time.Second, bob.UserID.String()+" joining", func(r *mautrix.RespSync) bool {
		return hasMembership(r, room.RoomID, bob.UserID, event.MembershipJoin)
	})

	// Both servers now agree on the membership: ask hs1 for the room's joined members.
	members, err := alice.JoinedMembers(ctx, room.RoomID)
	if err != nil {
		t.Fatalf("joined members: %v", err)
	}
	if _, ok := members.Joined[bob.UserID]; !ok || len(members.Joined) != 2 {
		t.Fatalf("joined members on %s = %v, want alice and bob", hs1.ServerName, members.Joined)
	}
}

// TestDendriteBinaryMissing checks the CI rule: a missing binary fails under CI
// and skips elsewhere, with the build hint in the message.
func TestDendriteBinaryMissing(t *testing.T) {
	for _, ci := range []string{"", "true"} {
		t.Run("CI="+ci, func(t *testing.T) {
			t.Setenv("CI", ci)
			t.Setenv("OZO_DENDRITE_BIN", filepath.Join(t.TempDir(), "no-such-dendrite"))
			r := &recorder{TB: t}
			done := make(chan struct{})
			// Skip and Fatal end their goroutine, as they would in a real test.
			go func() { defer close(done); DendriteBinary(r) }()
			<-done
			switch {
			case ci != "" && (!r.failed || r.skipped):
				t.Fatalf("CI set: failed=%v skipped=%v, want a failure", r.failed, r.skipped)
			case ci == "" && (r.failed || !r.skipped):
				t.Fatalf("CI unset: failed=%v skipped=%v, want a skip", r.failed, r.skipped)
			}
			if !strings.Contains(r.msg, "scripts/build-dendrite.sh") {
				t.Fatalf("message %q lacks the build hint", r.msg)
			}
		})
	}
}

// recorder captures Fatal and Skip instead of ending the real test.
type recorder struct {
	testing.TB
	failed, skipped bool
	msg             string
}

func (r *recorder) Helper() {}

func (r *recorder) Fatal(args ...any) {
	r.failed, r.msg = true, fmt.Sprint(args...)
	runtime.Goexit()
}

func (r *recorder) Fatalf(format string, args ...any) {
	r.failed, r.msg = true, fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (r *recorder) Skip(args ...any) {
	r.skipped, r.msg = true, fmt.Sprint(args...)
	runtime.Goexit()
}

// hasMembership reports whether r shows user with membership m in the joined room.
func hasMembership(r *mautrix.RespSync, roomID id.RoomID, user id.UserID, m event.Membership) bool {
	joined, ok := r.Rooms.Join[roomID]
	if !ok {
		return false
	}
	for _, evs := range [][]*event.Event{joined.Timeline.Events, joined.State.Events} {
		for _, ev := range evs {
			if ev.Type == event.StateMember && ev.GetStateKey() == user.String() && membership(ev) == m {
				return true
			}
		}
	}
	return false
}

func membership(ev *event.Event) event.Membership {
	if err := ev.Content.ParseRaw(ev.Type); err != nil && !errors.Is(err, event.ErrContentAlreadyParsed) {
		return ""
	}
	return ev.Content.AsMember().Membership
}

func TestModFileDeclares(t *testing.T) {
	for _, tc := range []struct {
		mod  string
		want bool
	}{
		{"module github.com/ozo-platform/ozo-identity\n\ngo 1.26\n", true},
		{"// x\nmodule \"github.com/ozo-platform/ozo-identity\"\n", true},
		{"module github.com/ozo-platform/ozo-identity/tools/dendrite\n", false},
		{"require github.com/ozo-platform/ozo-identity v1.0.0\n", false},
		{"", false},
	} {
		if got := modFileDeclares([]byte(tc.mod), modulePath); got != tc.want {
			t.Errorf("modFileDeclares(%q) = %v, want %v", tc.mod, got, tc.want)
		}
	}
}
