// Command ozo-identity is a Matrix identity server for cross-organisational care chat.
//
//	ozo-identity serve            [--config FILE] [--listen ADDR] [--data-dir DIR]
//	ozo-identity migrate          [--config FILE] [--data-dir DIR]
//	ozo-identity directory sync   [--config FILE] [--data-dir DIR] [--force] [--wait] [--allow-mass-delete] [--full [URA|URL|lrza …]]
//	ozo-identity directory status [--config FILE] [--data-dir DIR] [--json]
//	ozo-identity admin account    create|list|show|disable|enable|delete|reset-2fa|resend …
//	ozo-identity admin signing-key rotate|list|retire KEY_ID [--config FILE] [--data-dir DIR]
//	ozo-identity admin pepper rotate [--config FILE] [--data-dir DIR]
//	ozo-identity admin bindings import FILE [--config FILE] [--data-dir DIR] [--format ndjson|csv] [--strict] [--batch N] [--restart]
//	ozo-identity healthcheck      [--url URL] [--timeout D]
//	ozo-identity audit checkpoint [--config FILE] [--data-dir DIR] [--out FILE]
//	ozo-identity audit verify     [--config FILE] [--data-dir DIR] [--checkpoint FILE]
//	ozo-identity audit export     [--config FILE] [--data-dir DIR] [--since TIME] [--format fhir|jsonl]
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/ozo-platform/ozo-identity/api"
	"github.com/ozo-platform/ozo-identity/app"
	"github.com/ozo-platform/ozo-identity/config"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Environ(), os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "ozo-identity:", err)
		os.Exit(1)
	}
}

const usage = `usage: ozo-identity <command> [flags]

commands:
  serve              run the identity server; syncs the mCSD directories every
                     directory.sync_interval (default 15m, with up to 10 % random jitter)
  migrate            apply database migrations and exit
  directory sync     sync every mCSD directory once (the LRZA and the providers' directories),
                     with progress on stderr and a summary on stdout; exits non-zero when a
                     directory failed or the LRZA was not synced (what every directory applied
                     is kept). One sync of a database at a time: while another runs (serve's
                     schedule, a replica, another CLI) it exits non-zero, or waits with --wait
  directory status   show every known directory: last success, errors, backoff, watermarks, counts
  admin account      provision OZO accounts of family caregivers and patients:
                     create|list|show|disable|enable|delete|reset-2fa|resend (see admin account -h)
  admin signing-key  rotate|list|retire KEY_ID: a new long-term signing key, earlier keys valid
                     until retired (see admin signing-key -h)
  admin pepper rotate
                     a new lookup pepper; every lookup hash recomputed
  admin bindings import FILE
                     bind the 3PIDs of FILE: NDJSON ({"medium","address","mxid"} per line) or CSV
                     with a header medium,address,mxid; transactions of --batch lines, a later
                     MXID for a bound 3PID wins as in a bind, the same MXID is left unchanged;
                     invalid lines are listed and skipped; progress is kept in FILE.import-state
                     so an interrupted import resumes where it stopped
  healthcheck        exit 0 when --url (default http://127.0.0.1:9090/readyz) answers 200;
                     the container image's health check, which has no shell or curl
  audit checkpoint   sign the audit chain head with the server key and write it (JSON) to --out
                     or stdout; keep it outside the system: verify proves nothing before it changed
  audit verify       check the whole audit chain against the audit key and a checkpoint
                     (--checkpoint, else the newest exported one); exits non-zero on the first
                     rewritten or missing record, or a truncation since the checkpoint
  audit export       write the audit records since --since (RFC 3339 or a duration such as 720h)
                     as FHIR R4 AuditEvents (a Bundle, --format fhir) or JSON lines (jsonl)

flags:
  --config FILE    YAML configuration (every key also settable as OZO_<KEY>, e.g. OZO_DATABASE_URL)
  --listen ADDR    listen address (OZO_LISTEN, default :8090; serve only)
  --data-dir DIR   data directory for the SQLite database (OZO_DATA_DIR, default ./data)
  --force          directory sync: also sync directories that are backing off after failures
  --wait           directory sync: wait for a sync that is running instead of exiting
  --full [URA …]   directory sync: re-read the whole history of the directories of these URAs
                   (or base URLs, or "lrza"; every directory when none), replacing what the
                   index holds of them once the new snapshot is complete
  --allow-mass-delete  directory sync: apply deletions even when they remove more than
                   directory.max_delete_share of a directory's resources at once
  --json           directory status: print JSON instead of tables
  --format F       admin bindings import: ndjson or csv (default: by extension, then content)
  --strict         admin bindings import: stop at the first invalid line (lines before it are kept)
  --batch N        admin bindings import: lines per transaction (default 50000, at most 200000)
  --restart        admin bindings import: ignore FILE.import-state and start at the first line
  --out FILE       audit checkpoint / export: write to FILE instead of stdout
  --checkpoint FILE  audit verify: the checkpoint to verify against
  --since TIME     audit export: first record time (default: everything)
  --format F       audit export: fhir (default) or jsonl
`

// run is main without the process: args without the program name, env as os.Environ gives it.
// Results go to stdout, logs, progress and usage to stderr.
func run(ctx context.Context, args, env []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, usage)
		if len(args) == 0 {
			return fmt.Errorf("no command given")
		}
		return nil
	}
	cmd, rest := args[0], args[1:]
	if cmd == "admin" && len(rest) > 0 && rest[0] == "account" {
		if len(rest) > 1 && (rest[1] == "-h" || rest[1] == "--help") {
			fmt.Fprint(stderr, accountUsage)
			return nil
		}
		return adminAccount(ctx, rest[1:], env, stdout, stderr)
	}
	if cmd == "admin" && len(rest) > 0 && (rest[0] == "signing-key" || rest[0] == "pepper") {
		if len(rest) > 1 && (rest[1] == "-h" || rest[1] == "--help") {
			fmt.Fprint(stderr, keysUsage)
			return nil
		}
		return adminKeys(ctx, rest[0], rest[1:], env, stdout, stderr)
	}
	switch cmd {
	case "healthcheck":
		return healthcheck(ctx, rest, stderr)
	case "serve", "migrate":
	case "directory":
		if len(rest) == 0 || strings.HasPrefix(rest[0], "-") {
			fmt.Fprint(stderr, usage)
			return fmt.Errorf("directory: missing subcommand (sync or status)")
		}
		if rest[0] != "sync" && rest[0] != "status" {
			fmt.Fprint(stderr, usage)
			return fmt.Errorf("directory: unknown subcommand %q (want sync or status)", rest[0])
		}
		cmd, rest = cmd+" "+rest[0], rest[1:]
	case "admin":
		if len(rest) < 2 || rest[0] != "bindings" || rest[1] != "import" {
			fmt.Fprint(stderr, usage)
			return fmt.Errorf("admin: unknown subcommand (want: admin bindings import FILE, admin account …, admin signing-key …, admin pepper rotate)")
		}
		cmd, rest = "admin bindings import", rest[2:]
	case "audit":
		if len(rest) == 0 || (rest[0] != "checkpoint" && rest[0] != "verify" && rest[0] != "export") {
			fmt.Fprint(stderr, usage)
			return fmt.Errorf("audit: missing or unknown subcommand (want checkpoint, verify or export)")
		}
		cmd, rest = cmd+" "+rest[0], rest[1:]
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("unknown command %q", cmd)
	}
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	configFile := fs.String("config", "", "YAML configuration file")
	dataDir := fs.String("data-dir", "", "data directory")
	var listen *string
	var force, wait, full, allowMassDelete, asJSON *bool
	var imp importOptions
	switch cmd {
	case "serve", "migrate":
		listen = fs.String("listen", "", "listen address")
	case "directory sync":
		force = fs.Bool("force", false, "also sync directories that are backing off")
		wait = fs.Bool("wait", false, "wait for a running sync instead of exiting")
		full = fs.Bool("full", false, "re-read the given directories (URAs, base URLs, lrza; all when none) from scratch")
		allowMassDelete = fs.Bool("allow-mass-delete", false, "apply deletions the mass-delete guard would stop")
	case "directory status":
		asJSON = fs.Bool("json", false, "print JSON")
	case "admin bindings import":
		fs.StringVar(&imp.format, "format", "", "ndjson or csv")
		fs.BoolVar(&imp.strict, "strict", false, "stop at the first invalid line")
		// Large: each transaction rewrites every page of the random-keyed indexes it touches,
		// so at a million bindings 5,000 per transaction wrote twice as much as 50,000.
		fs.IntVar(&imp.batch, "batch", 50000, "lines per transaction")
		fs.BoolVar(&imp.restart, "restart", false, "ignore the recorded progress")
		// FILE may come before the flags.
		if len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
			imp.file, rest = rest[0], rest[1:]
		}
	}
	var out, checkpoint, since, format *string
	switch cmd {
	case "audit checkpoint":
		out = fs.String("out", "", "write the checkpoint to FILE")
	case "audit verify":
		checkpoint = fs.String("checkpoint", "", "checkpoint FILE to verify against")
	case "audit export":
		out = fs.String("out", "", "write to FILE")
		since = fs.String("since", "", "first record time (RFC 3339 or a duration back from now)")
		format = fs.String("format", "fhir", "fhir or jsonl")
	}
	if err := fs.Parse(rest); err != nil {
		return err
	}
	if cmd == "admin bindings import" && imp.file == "" && fs.NArg() > 0 {
		imp.file = fs.Arg(0)
		if err := fs.Parse(fs.Args()[1:]); err != nil {
			return err
		}
	}
	var only []string
	if fs.NArg() > 0 {
		if full == nil || !*full {
			return fmt.Errorf("%s: unexpected argument %q", cmd, fs.Arg(0))
		}
		for _, sel := range fs.Args() {
			if strings.HasPrefix(sel, "-") {
				return fmt.Errorf("%s: flag %s after the directories: put flags first", cmd, sel)
			}
			if !validSelector(sel) {
				return fmt.Errorf("%s: %q is neither a URA (8 digits), a directory base URL nor \"lrza\"", cmd, sel)
			}
			only = append(only, sel)
		}
	}
	if cmd == "admin bindings import" {
		if imp.file == "" {
			return fmt.Errorf("admin bindings import: missing FILE")
		}
		if imp.batch < 1 || imp.batch > 200000 {
			return fmt.Errorf("admin bindings import: --batch must be 1-200000")
		}
	}
	cfg, err := config.Load(*configFile, env)
	if err != nil {
		return err
	}
	if listen != nil && *listen != "" {
		cfg.Listen = *listen
	}
	if *dataDir != "" {
		cfg.DataDir = *dataDir
	}
	log := newLogger(cfg, stderr)
	switch cmd {
	case "serve":
		return serve(ctx, cfg, log)
	case "migrate":
		db, err := app.OpenDatabase(ctx, cfg, log)
		if err != nil {
			return err
		}
		defer db.Close()
		log.Info("database is up to date", "engine", string(db.Engine))
		return nil
	case "directory sync":
		return directorySync(ctx, cfg, syncFlags{force: *force, wait: *wait, full: *full, only: only,
			allowMassDelete: *allowMassDelete}, stdout, stderr)
	case "admin bindings import":
		return importBindings(ctx, cfg, imp, stdout, stderr)
	case "audit checkpoint":
		return auditCheckpoint(ctx, cfg, log, *out, stdout)
	case "audit verify":
		return auditVerify(ctx, cfg, log, *checkpoint, stdout)
	case "audit export":
		return auditExport(ctx, cfg, log, *since, *format, *out, stdout)
	default: // "directory status"
		return directoryStatus(ctx, cfg, *asJSON, stdout, log)
	}
}

func serve(ctx context.Context, cfg config.Config, log *slog.Logger) error {
	a, err := app.New(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer a.Close()
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	return a.Serve(ctx, ln, nil)
}

func newLogger(cfg config.Config, w io.Writer) *slog.Logger {
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		level = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: level}
	// Records logged while serving a request carry its request_id.
	if strings.EqualFold(cfg.LogFormat, "json") {
		return slog.New(api.NewLogHandler(slog.NewJSONHandler(w, opts)))
	}
	return slog.New(api.NewLogHandler(slog.NewTextHandler(w, opts)))
}

// validSelector accepts what --full selects directories by.
func validSelector(s string) bool {
	if s == "lrza" || strings.HasPrefix(s, "https://") || strings.HasPrefix(s, "http://") {
		return true
	}
	if len(s) != 8 {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}
