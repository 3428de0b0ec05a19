package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/app"
	"github.com/ozo-platform/ozo-identity/audit"
	"github.com/ozo-platform/ozo-identity/config"
	"github.com/ozo-platform/ozo-identity/email/smtptest"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore/dbtest"
)

// TestAdminAccountCLI provisions, shows, lists, disables, enables, resets and deletes an
// account with `ozo-identity admin account`, on SQLite and PostgreSQL: the invitation is
// mailed, and each change is in the audit log under the OS user.
func TestAdminAccountCLI(t *testing.T) {
	for _, engine := range dbtest.Engines {
		t.Run(string(engine), func(t *testing.T) {
			sink := smtptest.Start(t)
			env := []string{
				"OZO_DATABASE_URL=" + dbtest.URL(t, engine),
				"OZO_PUBLIC_BASE_URL=https://id.ozo.example.nl",
				"OZO_EMAIL_SMTP_HOST=127.0.0.1", fmt.Sprintf("OZO_EMAIL_SMTP_PORT=%d", sink.Port), "OZO_EMAIL_SMTP_SECURITY=none",
			}
			dir := t.TempDir()
			cli := func(args ...string) (string, error) {
				var out, errb bytes.Buffer
				err := run(t.Context(), append([]string{"admin", "account"}, append(args, "--data-dir", dir)...), env, &out, &errb)
				return out.String(), err
			}
			out, err := cli("create", "--email", "Els@Example.nl", "--name", "Els de Vries", "--kind", "related_person",
				"--fhir-ref", "RelatedPerson/rp-9", "--json")
			if err != nil {
				t.Fatalf("create: %v\n%s", err, out)
			}
			var acct struct{ ID, Email, Status string }
			if err := json.Unmarshal([]byte(out), &acct); err != nil || acct.Email != "els@example.nl" || acct.Status != "invited" {
				t.Fatalf("create printed %q (%v)", out, err)
			}
			msg := sink.Wait(t, "els@example.nl", 1, 10*time.Second)
			if !strings.Contains(msg.Text, "https://id.ozo.example.nl/_ozo/web/account/activate?token=") {
				t.Fatalf("invitation without activation link:\n%s", msg.Text)
			}
			if _, err := cli("create", "--email", "x@example.nl", "--kind", "uncle"); err == nil {
				t.Fatal("an unknown kind was accepted")
			}
			if out, err = cli("list"); err != nil || !strings.Contains(out, acct.ID) || !strings.Contains(out, "RelatedPerson/rp-9") {
				t.Fatalf("list: %v\n%s", err, out)
			}
			if out, err = cli("disable", acct.ID); err != nil || !strings.Contains(out, "disabled") {
				t.Fatalf("disable: %v\n%s", err, out)
			}
			if out, err = cli("enable", acct.ID); err != nil || !strings.Contains(out, "invited") {
				t.Fatalf("enable: %v\n%s", err, out)
			}
			if _, err = cli("reset-2fa", acct.ID); err != nil {
				t.Fatalf("reset-2fa: %v", err)
			}
			sink.Wait(t, "els@example.nl", 2, 10*time.Second)
			if out, err = cli("delete", acct.ID); err != nil || !strings.Contains(out, "deleted "+acct.ID) {
				t.Fatalf("delete: %v\n%s", err, out)
			}
			if _, err = cli("show", acct.ID); err == nil || !strings.Contains(err.Error(), "no account") {
				t.Fatalf("show after delete: %v", err)
			}
			if _, err = cli("show"); err == nil {
				t.Fatal("show without an ID was accepted")
			}
			a, err := newTestApp(t, env, dir)
			if err != nil {
				t.Fatal(err)
			}
			recs, err := a.Store.ListAudit(t.Context(), time.Time{}, 0, 100)
			if err != nil {
				t.Fatal(err)
			}
			// Each change is the account's own record under the OS user, written with the change.
			var events []string
			for _, r := range recs {
				if !strings.HasPrefix(r.Actor.ID, "cli") || r.Actor.Kind != audit.AgentSystem {
					t.Errorf("record %d by %+v, want the CLI's OS user", r.Seq, r.Actor)
				}
				switch {
				case r.Resource == "ozo_account/"+acct.ID && r.Subject == "RelatedPerson/rp-9":
					events = append(events, string(r.Action)+" "+strings.Fields(r.Detail)[0])
				default:
					t.Errorf("unexpected record %+v", r)
				}
			}
			want := "account.create kind=related_person,account.credentials activation,account.update change=disable," +
				"account.update change=enable,account.credentials second,account.credentials activation,account.delete kind=related_person"
			if strings.Join(events, ",") != want {
				t.Fatalf("audit records\n%s\nwant\n%s", strings.Join(events, ","), want)
			}
			a.Close()
			// The chain of account events verifies, and exports as FHIR with the person as entity.
			env = append(env, "OZO_DATA_DIR="+dir)
			if r := runCLI(t, env, "audit", "verify"); r.err != nil || !strings.Contains(r.stdout, `"intact": true`) {
				t.Fatalf("verify after account events: %v\n%s%s", r.err, r.stdout, r.stderr)
			}
			r := runCLI(t, env, "audit", "export", "--format", "fhir")
			if r.err != nil || !strings.Contains(r.stdout, `"reference":"RelatedPerson/rp-9"`) || strings.Contains(r.stdout, "els@example.nl") {
				t.Fatalf("fhir export: %v\n%s", r.err, r.stdout)
			}
		})
	}
}

// newTestApp opens the same configuration as the CLI did, to inspect what it wrote.
func newTestApp(t *testing.T, env []string, dir string) (*app.App, error) {
	cfg, err := config.Load("", env)
	if err != nil {
		return nil, err
	}
	cfg.DataDir = dir
	a, err := app.New(t.Context(), cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { a.Close() })
	return a, nil
}
