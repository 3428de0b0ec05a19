package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ozo-platform/ozo-identity/app"
	"github.com/ozo-platform/ozo-identity/config"
	"github.com/ozo-platform/ozo-identity/lookup/mcsd"
)

// maxRejectionsShown is how many rejection reasons the summary lists per directory; the status
// command and the database keep the counts.
const maxRejectionsShown = 5

// syncFlags are the choices of one `directory sync`.
type syncFlags struct {
	force           bool     // attempt directories that are backing off
	wait            bool     // wait for a sync that holds the lease
	full            bool     // re-read from scratch …
	only            []string // … only these directories (URAs, base URLs, "lrza"); all when empty
	allowMassDelete bool
}

// directorySync runs one sync of every configured directory, drawing progress on stderr, then
// prints a summary on stdout. A failing directory or an LRZA that was not synced fails the
// command; the others' work is kept.
func directorySync(ctx context.Context, cfg config.Config, f syncFlags, stdout, stderr io.Writer) error {
	if cfg.Directory.LRZAURL == "" && len(cfg.Directory.Directories) == 0 {
		return errors.New("no directory configured: set directory.lrza_url (OZO_DIRECTORY_LRZA_URL) " +
			"or directory.directories in the configuration file")
	}
	progress := newSyncProgress(stderr)
	defer progress.Close()
	// Log lines pass through the progress display so that they do not break its bar.
	log := newLogger(cfg, progress)
	a, err := app.New(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer a.Close()
	syncer := a.NewSyncer(func(o *mcsd.Options) {
		o.IgnoreBackoff = f.force
		o.Wait = f.wait
		o.OnWait = func(held *mcsd.LeaseHeldError) {
			fmt.Fprintf(stderr, "waiting: %s is running another directory sync of this database (since %s) …\n",
				clean(held.Holder, 200), held.Acquired.UTC().Format(time.RFC3339))
		}
		o.Full, o.FullOnly = f.full, f.only
		o.AllowMassDelete = f.allowMassDelete
		o.Progress = progress.Event
		// Failures are in the progress lines and the summary; the log would repeat each one.
		o.Logger = quieter(cfg, log)
	})
	reports, err := syncer.SyncAll(ctx)
	a.RecordDirectorySync(ctx, reports)
	progress.Close()
	if errors.Is(err, mcsd.ErrSyncRunning) {
		return fmt.Errorf("%w; nothing was synced — run again with --wait to wait for it", err)
	}
	writeSyncSummary(stdout, reports, time.Now())
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("directory sync interrupted: %w", err)
		}
		return fmt.Errorf("directory sync: %w", err)
	}
	for _, r := range reports {
		if r.Kind == "lrza" && (r.Err != nil || r.Skipped != "") {
			return errors.New("the LRZA was not synced, so no provider directory was discovered anew; see above")
		}
	}
	if failed := failedCount(reports); failed > 0 {
		return fmt.Errorf("%d of %d directories failed; what they and the others applied is kept", failed, len(reports))
	}
	return nil
}

// quieter keeps a log at warnings and above out, unless debug logging was asked for.
func quieter(cfg config.Config, log *slog.Logger) *slog.Logger {
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.LogLevel)); err == nil && level < slog.LevelInfo {
		return log
	}
	return slog.New(minLevel{log.Handler(), slog.LevelError})
}

type minLevel struct {
	slog.Handler
	level slog.Level
}

func (h minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.level && h.Handler.Enabled(ctx, l)
}

func failedCount(reports []mcsd.DirectoryReport) int {
	n := 0
	for _, r := range reports {
		if r.Err != nil {
			n++
		}
	}
	return n
}

// reason is a failure in one line, without the page URL (the directory is named beside it).
func reason(err error) string {
	var fe *mcsd.FetchError
	var md *mcsd.MassDeleteError
	switch {
	case errors.As(err, &fe):
		return clean(fe.Type+" history: "+fe.Reason, 300)
	case errors.As(err, &md):
		return clean(md.Error(), 300) + "; if the directory really lost them: ozo-identity directory sync --allow-mass-delete"
	}
	return clean(err.Error(), 300)
}

// skipReason says why a directory was skipped, when it is retried and how to force it.
func skipReason(r mcsd.DirectoryReport, now time.Time) string {
	msg := clean(r.Skipped, 200)
	if r.LastError != "" {
		msg += " (last: " + clean(r.LastError, 200) + ")"
	}
	if !r.RetryAt.IsZero() {
		msg += "; next attempt " + r.RetryAt.UTC().Format("2006-01-02 15:04:05 UTC") + " (" + relative(r.RetryAt, now) + ")"
	}
	return msg + "; run 'ozo-identity directory sync --force' to try now"
}

// writeSyncSummary prints a table of what the sync did per directory, the first rejections,
// then the directories that were skipped and those that failed, one line each.
func writeSyncSummary(w io.Writer, reports []mcsd.DirectoryReport, now time.Time) {
	if len(reports) == 0 {
		fmt.Fprintln(w, "no directory was synced")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "DIRECTORY\tKIND\tFETCHED\tAPPLIED\tDELETED\tREJECTED\tTIME\tSTATUS")
	var ok, failed, skipped, removed, refused int
	for _, r := range reports {
		status := "ok"
		switch {
		case r.Removed:
			status, removed = "removed: no longer listed by the LRZA", removed+1
		case r.Refused != "":
			status, refused = "REFUSED: "+clean(r.Refused, 300), refused+1
		case r.Skipped != "":
			status, skipped = "skipped: "+clean(r.Skipped, 200), skipped+1
		case r.Err != nil:
			status, failed = "FAILED: "+reason(r.Err), failed+1
		default:
			ok++
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%s\t%s\n", clean(r.Directory, 200), r.Kind, r.Fetched, r.Applied,
			r.Deleted, r.Rejected, r.Duration.Round(time.Millisecond), status)
	}
	tw.Flush()
	fmt.Fprintf(w, "\n%d directories: %d synced, %d failed, %d skipped, %d removed",
		len(reports), ok, failed, skipped, removed)
	if refused > 0 {
		fmt.Fprintf(w, ", %d refused", refused)
	}
	fmt.Fprintln(w)

	for _, r := range reports {
		if r.Rejected == 0 {
			continue
		}
		fmt.Fprintf(w, "\nrejected in %s: %d\n", clean(r.Directory, 200), r.Rejected)
		for _, rej := range r.Rejections[:min(len(r.Rejections), maxRejectionsShown)] {
			what := rej.Type
			if rej.ID != "" {
				what += "/" + rej.ID
			}
			fmt.Fprintf(w, "  %s: %s\n", clean(what, 120), clean(rej.Reason, 300))
		}
		if more := r.Rejected - min(len(r.Rejections), maxRejectionsShown); more > 0 {
			fmt.Fprintf(w, "  … and %d more\n", more)
		}
	}
	if skipped > 0 {
		fmt.Fprintf(w, "\nskipped (%d):\n", skipped)
		for _, r := range reports {
			if r.Skipped != "" && !r.Removed {
				fmt.Fprintf(w, "  %s (%s): %s\n", clean(r.Directory, 200), r.Kind, skipReason(r, now))
			}
		}
	}
	if failed > 0 {
		fmt.Fprintf(w, "\nfailed (%d):\n", failed)
		for _, r := range reports {
			if r.Err != nil && r.Skipped == "" && !r.Removed {
				fmt.Fprintf(w, "  %s (%s): %s\n", clean(r.Directory, 200), r.Kind, reason(r.Err))
			}
		}
	}
}

// directoryStatus prints what the database knows of every directory.
func directoryStatus(ctx context.Context, cfg config.Config, asJSON bool, stdout io.Writer, log *slog.Logger) error {
	db, err := app.OpenDatabase(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer db.Close()
	idx := mcsd.NewIndex(db)
	status, err := idx.Status(ctx)
	if err != nil {
		return err
	}
	conflicts, err := idx.Conflicts(ctx)
	if err != nil {
		return err
	}
	if asJSON {
		return writeStatusJSON(stdout, status, conflicts)
	}
	writeStatusTable(stdout, status, time.Now())
	writeConflictsTable(stdout, conflicts)
	return nil
}

// statusJSON is the --json form of a directory's status; times are absent when they never were.
type statusJSON struct {
	Directory   string            `json:"directory"`
	Kind        string            `json:"kind"`
	Origin      string            `json:"origin"`
	Active      bool              `json:"active"`
	URAs        []string          `json:"uras"`
	LastAttempt *time.Time        `json:"last_attempt,omitempty"`
	LastSuccess *time.Time        `json:"last_success,omitempty"`
	LastError   string            `json:"last_error,omitempty"`
	Refused     string            `json:"refused,omitempty"`
	Failures    int               `json:"failures"`
	NextAttempt *time.Time        `json:"next_attempt,omitempty"`
	Watermarks  map[string]string `json:"watermarks"`
	Counts      map[string]int    `json:"counts"`
	Rejected    map[string]int    `json:"rejected"`
	Collapsed   string            `json:"collapsed,omitempty"`
}

func writeStatusJSON(w io.Writer, status []mcsd.DirectoryStatus, conflicts []mcsd.Conflict) error {
	out := struct {
		Directories []statusJSON   `json:"directories"`
		Conflicts   []conflictJSON `json:"conflicts"`
	}{Directories: []statusJSON{}, Conflicts: conflictsJSON(conflicts)}
	for _, s := range status {
		out.Directories = append(out.Directories, statusJSON{
			Directory: s.BaseURL, Kind: s.Kind, Origin: s.Origin, Active: s.Active,
			URAs:        nonNil(s.URAs),
			LastAttempt: timePtr(s.LastAttempt), LastSuccess: timePtr(s.LastSuccess),
			LastError: s.LastError, Refused: s.Refused, Failures: s.Failures, NextAttempt: timePtr(s.NextAttempt),
			Watermarks: nonNilMap(s.Watermarks), Counts: nonNilMap(s.Counts), Rejected: nonNilMap(s.Rejected),
			Collapsed: s.Collapsed,
		})
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func nonNilMap[V any](m map[string]V) map[string]V {
	if m == nil {
		return map[string]V{}
	}
	return m
}

// writeStatusTable prints one row per directory, then its resource types with their counts and
// the watermark the next sync asks from.
func writeStatusTable(w io.Writer, status []mcsd.DirectoryStatus, now time.Time) {
	if len(status) == 0 {
		fmt.Fprintln(w, "no directory known yet: run 'ozo-identity directory sync'")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "DIRECTORY\tKIND\tORIGIN\tACTIVE\tURAS\tRESOURCES\tREJECTED\tLAST SUCCESS\tFAILURES\tNEXT ATTEMPT\tLAST ERROR")
	for _, s := range status {
		uras := "-"
		if len(s.URAs) > 0 {
			uras = clean(strings.Join(s.URAs, ","), 60)
		}
		active := "yes"
		if !s.Active {
			active = "no"
		}
		lastErr := "-"
		if s.LastError != "" {
			lastErr = clean(s.LastError, 300)
		}
		if s.Refused != "" {
			active, lastErr = "refused", clean(s.Refused, 300)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t%d\t%s\t%s\n", clean(s.BaseURL, 200), s.Kind, s.Origin, active, uras,
			sum(s.Counts), sum(s.Rejected), when(s.LastSuccess, now), s.Failures, when(s.NextAttempt, now), lastErr)
	}
	tw.Flush()

	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "DIRECTORY\tTYPE\tRESOURCES\tREJECTED\tWATERMARK")
	for _, s := range status {
		types := slices.Sorted(maps.Keys(s.Watermarks))
		for t := range s.Counts {
			if !slices.Contains(types, t) {
				types = append(types, t)
			}
		}
		slices.Sort(types)
		for _, t := range types {
			mark := s.Watermarks[t]
			if mark == "" {
				mark = "- (full read next)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\n", clean(s.BaseURL, 200), clean(t, 40), s.Counts[t], s.Rejected[t], clean(mark, 60))
		}
	}
	tw.Flush()

	var flagged []mcsd.DirectoryStatus
	for _, s := range status {
		if s.Collapsed != "" {
			flagged = append(flagged, s)
		}
	}
	if len(flagged) > 0 {
		fmt.Fprintf(w, "\nCOLLAPSED (%d): resources that stopped counting\n", len(flagged))
		for _, s := range flagged {
			sel := "lrza"
			if s.Kind != "lrza" {
				sel = strings.Join(s.URAs, " ")
				if sel == "" {
					sel = s.BaseURL
				}
			}
			fmt.Fprintf(w, "  %s: %s; if that is wrong, re-read it: ozo-identity directory sync --full %s\n",
				clean(s.BaseURL, 200), clean(s.Collapsed, 300), clean(sel, 200))
		}
	}
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// when formats a time with how long ago or ahead it is, "-" when it never was.
func when(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04:05") + " (" + relative(t, now) + ")"
}

// relative says how long ago or ahead t is.
func relative(t, now time.Time) string {
	d := now.Sub(t).Round(time.Second)
	if d < 0 {
		return "in " + (-d).String()
	}
	return d.String() + " ago"
}
