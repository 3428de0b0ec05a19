package app_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/ozo-platform/ozo-identity/api/apitest"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
)

// TestOnBindGivenUpLogsErrcode: a homeserver refusing an onbind with a 4xx is not retried; the log
// says its errcode and error, and /metrics counts it under that errcode — a code outside the spec
// under "other", so the homeserver cannot grow the label set. Bindings stay.
func TestOnBindGivenUpLogsErrcode(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		h := apitest.New(t, e)
		ops := httptest.NewServer(h.App.OpsServer().Handler)
		t.Cleanup(ops.Close)
		alice := h.NewUser(t, "alice")
		bob := h.NewUser(t, "bob")

		h.HS.SetOnBindError(http.StatusBadRequest, "M_UNSUPPORTED_ROOM_VERSION", "Room version not supported")
		storeInvite(t, h, alice, "bob@example.org")
		h.Bind(t, bob, "bob@example.org")
		waitFor(t, "the refused onbind given up", func() bool {
			return strings.Contains(h.Logs(), "onbind given up")
		})
		logs := h.Logs()
		if !strings.Contains(logs, "errcode=M_UNSUPPORTED_ROOM_VERSION") || !strings.Contains(logs, `error="Room version not supported"`) {
			t.Fatalf("the give-up log lacks errcode and error:\n%s", logs)
		}

		h.HS.SetOnBindError(http.StatusForbidden, "X_SOMETHING_"+strings.Repeat("A", 40), "no")
		storeInvite(t, h, alice, "carol@example.org")
		carol := h.NewUser(t, "carol")
		h.Bind(t, carol, "carol@example.org")
		want := []string{
			`ozo_identity_onbind_given_up_total{errcode="M_UNSUPPORTED_ROOM_VERSION"} 1`,
			`ozo_identity_onbind_given_up_total{errcode="other"} 1`,
		}
		var body string
		waitFor(t, "both give-ups counted", func() bool {
			resp, err := http.Get(ops.URL + "/metrics")
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
			return strings.Contains(body, want[0]) && strings.Contains(body, want[1])
		})
		if strings.Contains(body, "X_SOMETHING") {
			t.Fatal("a homeserver's own errcode became a label value")
		}
		// Only one attempt each: a 4xx is not retried.
		if n := len(h.HS.OnBinds()); n != 2 {
			t.Fatalf("%d onbind calls, want 2", n)
		}
		if got := h.LookupOne(t, alice, "email", "bob@example.org"); got != bob.MXID {
			t.Fatalf("binding lost: %q", got)
		}
	})
}
