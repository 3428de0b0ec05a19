package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os/user"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ozo-platform/ozo-identity/app"
	"github.com/ozo-platform/ozo-identity/audit"
	"github.com/ozo-platform/ozo-identity/config"
	"github.com/ozo-platform/ozo-identity/ozoaccount"
)

const accountUsage = `usage: ozo-identity admin account <action> [flags] [ID]

actions:
  create --email ADDR --kind related_person|patient [--name NAME] [--fhir-ref RelatedPerson/ID] [--language nl|en]
                     make an account and mail its activation link
  list [--json]      every account
  show ID [--json]   one account
  disable ID         refuse its logins, unbind its email, log its Matrix user out
  enable ID          undo disable
  delete ID          remove the account and its personal data (the audit log keeps its ID)
  reset-2fa ID       forget its TOTP secret and recovery codes, mail a link to enrol again
  resend ID          mail a new activation link to an account not activated yet

flags: --config FILE, --data-dir DIR as for serve
`

// adminAccount runs `ozo-identity admin account …` on the configured database, mail server and
// homeserver, as the admin API would; every change is an audit record with the OS user as actor.
func adminAccount(ctx context.Context, args, env []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		fmt.Fprint(stderr, accountUsage)
		return errors.New("admin account: missing action")
	}
	action, rest := args[0], args[1:]
	fs := flag.NewFlagSet("admin account "+action, flag.ContinueOnError)
	fs.SetOutput(stderr)
	configFile := fs.String("config", "", "YAML configuration file")
	dataDir := fs.String("data-dir", "", "data directory")
	asJSON := fs.Bool("json", false, "print JSON")
	var req ozoaccount.ProvisionRequest
	var kind string
	if action == "create" {
		fs.StringVar(&req.Email, "email", "", "email address")
		fs.StringVar(&req.DisplayName, "name", "", "display name")
		fs.StringVar(&kind, "kind", "", "related_person or patient")
		fs.StringVar(&req.FHIRRef, "fhir-ref", "", "the platform's RelatedPerson/<id> or Patient/<id>")
		fs.StringVar(&req.Language, "language", "", "nl (default) or en")
	}
	// Flags may come before or after the ID.
	var ids []string
	for len(rest) > 0 {
		if err := fs.Parse(rest); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			break
		}
		ids, rest = append(ids, fs.Arg(0)), fs.Args()[1:]
	}
	switch action {
	case "create", "list":
		if len(ids) > 0 {
			return fmt.Errorf("admin account %s: unexpected argument %q", action, ids[0])
		}
	case "show", "disable", "enable", "delete", "reset-2fa", "resend":
		if len(ids) != 1 {
			return fmt.Errorf("admin account %s: give exactly one account ID", action)
		}
	default:
		fmt.Fprint(stderr, accountUsage)
		return fmt.Errorf("admin account: unknown action %q", action)
	}
	cfg, err := config.Load(*configFile, env)
	if err != nil {
		return err
	}
	if *dataDir != "" {
		cfg.DataDir = *dataDir
	}
	a, err := app.New(ctx, cfg, newLogger(cfg, stderr))
	if err != nil {
		return err
	}
	defer a.Close()
	svc := a.Accounts
	actor := "cli"
	if u, err := user.Current(); err == nil {
		actor = "cli:" + u.Username
	}
	// The account's own records (written with each change) name the operator as their actor;
	// a call that changed nothing gets a record of the call.
	scope := &audit.Scope{Actor: audit.Agent{Kind: audit.AgentSystem, ID: actor}, Resource: "admin account " + action}
	ctx = audit.WithScope(ctx, scope)
	record := func(target string, err error) {
		if scope.Recorded() && err == nil {
			return
		}
		rec := scope.Record(audit.ActionAdminCall, audit.OutcomeSuccess)
		rec.Resource += " " + target
		if err != nil {
			rec.Outcome, rec.Detail = audit.OutcomeRefused, "failed"
		}
		if aerr := a.Store.AppendAudit(ctx, rec); aerr != nil {
			fmt.Fprintln(stderr, "warning: audit record not written:", aerr)
		}
	}
	var acct ozoaccount.Account
	switch action {
	case "create":
		req.Kind = ozoaccount.Kind(kind)
		var created bool
		acct, created, err = svc.Provision(ctx, req)
		if acct.ID != "" {
			record("ozo_account:"+acct.ID, err)
		}
		if err == nil && !created {
			fmt.Fprintf(stderr, "an account for %s existed already: its email and name were updated\n", req.FHIRRef)
		}
		if err != nil && acct.ID == "" {
			return err
		}
		if err != nil { // stored, but the invitation failed: resend it
			printAccount(stdout, acct, *asJSON)
			return fmt.Errorf("%w; try `ozo-identity admin account resend %s`", err, acct.ID)
		}
	case "list":
		var all []ozoaccount.Account
		for after := ""; ; {
			page, err := svc.List(ctx, after, 500)
			if err != nil {
				return err
			}
			all = append(all, page...)
			if len(page) < 500 {
				break
			}
			after = page[len(page)-1].ID
		}
		if *asJSON {
			out := make([]accountOut, 0, len(all))
			for _, a := range all {
				out = append(out, toOut(a))
			}
			return json.NewEncoder(stdout).Encode(out)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tSTATUS\tKIND\tEMAIL\tFHIR\tMATRIX")
		for _, a := range all {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", a.ID, a.Status, a.Kind, a.Email, dash(a.FHIRRef), dash(a.MXID))
		}
		return tw.Flush()
	case "show":
		if acct, err = svc.Get(ctx, ids[0]); err != nil {
			return accountErr(err, ids[0])
		}
	case "disable":
		acct, err = svc.Disable(ctx, ids[0])
		record("ozo_account:"+ids[0], err)
	case "enable":
		acct, err = svc.Enable(ctx, ids[0])
		record("ozo_account:"+ids[0], err)
	case "reset-2fa":
		acct, err = svc.ResetSecondFactor(ctx, ids[0])
		record("ozo_account:"+ids[0], err)
	case "resend":
		if err = svc.Resend(ctx, ids[0]); err == nil {
			acct, err = svc.Get(ctx, ids[0])
		}
		record("ozo_account:"+ids[0], err)
	case "delete":
		err = svc.Delete(ctx, ids[0])
		record("ozo_account:"+ids[0], err)
		if err != nil {
			return accountErr(err, ids[0])
		}
		fmt.Fprintf(stdout, "deleted %s\n", ids[0])
		return nil
	}
	if err != nil {
		return accountErr(err, ids[0])
	}
	printAccount(stdout, acct, *asJSON)
	return nil
}

func accountErr(err error, id string) error {
	if errors.Is(err, ozoaccount.ErrNotFound) {
		return fmt.Errorf("no account %s", id)
	}
	return err
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

type accountOut struct {
	ID            string `json:"id"`
	Email         string `json:"email"`
	DisplayName   string `json:"display_name"`
	Kind          string `json:"kind"`
	Status        string `json:"status"`
	FHIRReference string `json:"fhir_reference,omitempty"`
	Language      string `json:"language"`
	MatrixUserID  string `json:"matrix_user_id,omitempty"`
	TOTPEnrolled  bool   `json:"totp_enrolled"`
	CreatedAt     string `json:"created_at"`
	ActivatedAt   string `json:"activated_at,omitempty"`
}

func toOut(a ozoaccount.Account) accountOut {
	o := accountOut{ID: a.ID, Email: a.Email, DisplayName: a.DisplayName, Kind: string(a.Kind), Status: string(a.Status),
		FHIRReference: a.FHIRRef, Language: a.Language, MatrixUserID: a.MXID, TOTPEnrolled: a.TOTPSecret != "",
		CreatedAt: a.CreatedAt.Format(time.RFC3339)}
	if !a.ActivatedAt.IsZero() {
		o.ActivatedAt = a.ActivatedAt.Format(time.RFC3339)
	}
	return o
}

func printAccount(w io.Writer, a ozoaccount.Account, asJSON bool) {
	o := toOut(a)
	if asJSON {
		json.NewEncoder(w).Encode(o)
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, kv := range [][2]string{{"id", o.ID}, {"email", o.Email}, {"name", o.DisplayName}, {"kind", o.Kind},
		{"status", o.Status}, {"fhir", dash(o.FHIRReference)}, {"language", o.Language}, {"matrix", dash(o.MatrixUserID)},
		{"totp", fmt.Sprint(o.TOTPEnrolled)}, {"created", o.CreatedAt}, {"activated", dash(o.ActivatedAt)}} {
		fmt.Fprintf(tw, "%s:\t%s\n", kv[0], kv[1])
	}
	tw.Flush()
}
