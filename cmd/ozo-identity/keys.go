package main

import (
	"context"
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
)

const keysUsage = `usage: ozo-identity admin signing-key rotate|list|retire KEY_ID [--config FILE] [--data-dir DIR]
       ozo-identity admin pepper rotate [--config FILE] [--data-dir DIR]

  signing-key rotate   make a new long-term key (ed25519:N+1) the signing key; running replicas
                       take it up within 5s. Earlier keys stay served by /pubkey/{keyId} and
                       valid for /pubkey/isvalid, so invites signed before stay verifiable
  signing-key list     every key used: id, public key, since when, current/valid/retired
  signing-key retire KEY_ID
                       stop serving and accepting an earlier key (after its invites expired:
                       invites.lifetime after the rotation)
  pepper rotate        a new lookup pepper: recompute every binding's and the directory index's
                       lookup hashes, then store it; running replicas take it up within 5s
`

// adminKeys runs `ozo-identity admin signing-key …` and `admin pepper rotate` on the configured
// database, beside running replicas; each change is an audit record with the OS user as actor.
func adminKeys(ctx context.Context, what string, args, env []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		fmt.Fprint(stderr, keysUsage)
		return fmt.Errorf("admin %s: missing action", what)
	}
	action, rest := args[0], args[1:]
	fs := flag.NewFlagSet("admin "+what+" "+action, flag.ContinueOnError)
	fs.SetOutput(stderr)
	configFile := fs.String("config", "", "YAML configuration file")
	dataDir := fs.String("data-dir", "", "data directory")
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
	switch what + " " + action {
	case "signing-key rotate", "signing-key list", "pepper rotate":
		if len(ids) > 0 {
			return fmt.Errorf("admin %s %s: unexpected argument %q", what, action, ids[0])
		}
	case "signing-key retire":
		if len(ids) != 1 {
			return errors.New("admin signing-key retire: give exactly one key id (such as ed25519:0)")
		}
	default:
		fmt.Fprint(stderr, keysUsage)
		return fmt.Errorf("admin %s: unknown action %q", what, action)
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
	actor := "cli"
	if u, err := user.Current(); err == nil {
		actor = "cli:" + u.Username
	}
	record := func(target string, err error) {
		rec := audit.Record{Action: audit.ActionAdminCall, Outcome: audit.OutcomeSuccess,
			Actor: audit.Agent{Kind: audit.AgentSystem, ID: actor}, Resource: "admin " + what + " " + action + " " + target}
		if err != nil {
			rec.Outcome, rec.Detail = audit.OutcomeRefused, "failed"
		}
		if aerr := a.Store.AppendAudit(ctx, rec); aerr != nil {
			fmt.Fprintln(stderr, "warning: audit record not written:", aerr)
		}
	}
	svc := a.Service
	switch what + " " + action {
	case "signing-key rotate":
		prev := svc.Signer().KeyID()
		k, err := svc.RotateSigningKey(ctx)
		record(k.ID, err)
		if err != nil {
			return fmt.Errorf("admin signing-key rotate: %w", err)
		}
		fmt.Fprintf(stdout, "signing with %s (public key %s) now; %s stays valid until retired\n", k.ID, k.PublicKey, prev)
		return nil
	case "signing-key retire":
		err := svc.RetireSigningKey(ctx, ids[0])
		record(ids[0], err)
		if err != nil {
			return fmt.Errorf("admin signing-key retire: %w", err)
		}
		fmt.Fprintf(stdout, "%s retired: no longer served nor valid\n", ids[0])
		return nil
	case "signing-key list":
		keys, err := svc.SigningKeys(ctx)
		if err != nil {
			return err
		}
		current := svc.Signer().KeyID()
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "KEY ID\tPUBLIC KEY\tSINCE\tSTATUS")
		for _, k := range keys {
			status := "valid"
			switch {
			case k.ID == current:
				status = "current"
			case !k.Retired.IsZero():
				status = "retired " + k.Retired.UTC().Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", k.ID, k.PublicKey, k.Created.UTC().Format(time.RFC3339), status)
		}
		return tw.Flush()
	default: // pepper rotate
		start := time.Now()
		_, err := svc.RotatePepper(ctx)
		record("lookup_pepper", err)
		if err != nil {
			return fmt.Errorf("admin pepper rotate: %w", err)
		}
		fmt.Fprintf(stdout, "new lookup pepper stored; every lookup hash recomputed in %s\n", time.Since(start).Round(time.Millisecond))
		return nil
	}
}
