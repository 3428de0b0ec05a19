package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/ozo-platform/ozo-identity/app"
	"github.com/ozo-platform/ozo-identity/audit"
	"github.com/ozo-platform/ozo-identity/config"
)

func auditCheckpoint(ctx context.Context, cfg config.Config, log *slog.Logger, out string, stdout io.Writer) error {
	a, err := app.New(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer a.Close()
	if out != "" {
		path, err := a.ExportCheckpoint(ctx, out)
		if err != nil {
			return err
		}
		log.Info("audit checkpoint written", "file", path)
		return nil
	}
	cp, err := a.Checkpoint(ctx)
	if err != nil {
		return err
	}
	data, _ := json.MarshalIndent(cp, "", "  ")
	_, err = fmt.Fprintf(stdout, "%s\n", data)
	return err
}

func auditVerify(ctx context.Context, cfg config.Config, log *slog.Logger, file string, stdout io.Writer) error {
	a, err := app.New(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer a.Close()
	var cp *audit.Checkpoint
	if file != "" {
		data, err := os.ReadFile(file)
		if err != nil {
			return fmt.Errorf("read checkpoint: %w", err)
		}
		c, err := audit.ParseCheckpoint(data)
		if err != nil {
			return err
		}
		cp = &c
	} else if c, err := a.Store.LatestCheckpoint(ctx); err == nil {
		// The database's copy: an insider could have removed newer ones, so pass the file you kept.
		log.Warn("verifying against the newest checkpoint in the database; pass --checkpoint with a copy kept elsewhere", "seq", c.Seq)
		cp = &c
	} else if !errors.Is(err, audit.ErrNoCheckpoint) {
		return err
	}
	rep, verr := a.VerifyAudit(ctx, cp)
	data, _ := json.MarshalIndent(map[string]any{"intact": verr == nil, "report": rep, "error": errString(verr)}, "", "  ")
	fmt.Fprintf(stdout, "%s\n", data)
	if verr != nil {
		return fmt.Errorf("audit chain not intact: %w", verr)
	}
	return nil
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func auditExport(ctx context.Context, cfg config.Config, log *slog.Logger, since, format, out string, stdout io.Writer) error {
	if format != "fhir" && format != "jsonl" {
		return fmt.Errorf("audit export: --format must be fhir or jsonl")
	}
	var from time.Time
	if since != "" {
		if d, err := time.ParseDuration(since); err == nil {
			from = time.Now().Add(-d)
		} else if from, err = time.Parse(time.RFC3339, since); err != nil {
			return fmt.Errorf("audit export: --since must be an RFC 3339 time or a duration")
		}
	}
	a, err := app.New(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer a.Close()
	w := stdout
	if out != "" {
		f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return fmt.Errorf("audit export: %w", err)
		}
		defer f.Close()
		w = f
	}
	bw := bufio.NewWriter(w)
	if err := exportRecords(ctx, a, from, format, bw); err != nil {
		return err
	}
	return bw.Flush()
}

// exportRecords streams the records: a Bundle is written entry by entry, never held whole.
func exportRecords(ctx context.Context, a *app.App, from time.Time, format string, w io.Writer) error {
	obs := audit.Observer{ServerName: a.Config.ServerName, BaseURL: a.Config.PublicBaseURL}
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	if format == "fhir" {
		fmt.Fprint(w, `{"resourceType":"Bundle","type":"collection","entry":[`)
	}
	n := 0
	for after := int64(0); ; {
		recs, err := a.Store.ListAudit(ctx, from, after, 1000)
		if err != nil {
			return err
		}
		for _, r := range recs {
			var err error
			if format == "jsonl" {
				err = enc.Encode(r)
			} else {
				if n > 0 {
					fmt.Fprint(w, ",")
				}
				n++
				err = enc.Encode(map[string]any{"resource": r.AuditEvent(obs)})
			}
			if err != nil {
				return err
			}
		}
		if len(recs) < 1000 {
			break
		}
		after = recs[len(recs)-1].Seq
	}
	if format == "fhir" {
		fmt.Fprintln(w, "]}")
	}
	return nil
}
