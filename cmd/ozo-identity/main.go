// Command ozo-identity is a Matrix identity server for cross-organisational care chat.
//
//	ozo-identity serve   [--config FILE] [--listen ADDR] [--data-dir DIR]
//	ozo-identity migrate [--config FILE] [--data-dir DIR]
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

	"github.com/ozo-platform/ozo-identity/app"
	"github.com/ozo-platform/ozo-identity/config"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Environ(), os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "ozo-identity:", err)
		os.Exit(1)
	}
}

const usage = `usage: ozo-identity <command> [flags]

commands:
  serve     run the identity server
  migrate   apply database migrations and exit

flags:
  --config FILE    YAML configuration (every key also settable as OZO_<KEY>, e.g. OZO_DATABASE_URL)
  --listen ADDR    listen address (OZO_LISTEN, default :8090)
  --data-dir DIR   data directory for the SQLite database (OZO_DATA_DIR, default ./data)
`

func run(ctx context.Context, args, env []string, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, usage)
		if len(args) == 0 {
			return fmt.Errorf("no command given")
		}
		return nil
	}
	cmd := args[0]
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	configFile := fs.String("config", "", "YAML configuration file")
	listen := fs.String("listen", "", "listen address")
	dataDir := fs.String("data-dir", "", "data directory")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	cfg, err := config.Load(*configFile, env)
	if err != nil {
		return err
	}
	if *listen != "" {
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
		db, err := sqlstore.Open(ctx, cfg.Database.URL, cfg.DataDir)
		if err != nil {
			return err
		}
		defer db.Close()
		if err := db.Migrate(ctx, log); err != nil {
			return err
		}
		log.Info("database is up to date", "engine", string(db.Engine))
		return nil
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("unknown command %q", cmd)
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
	if strings.EqualFold(cfg.LogFormat, "json") {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
