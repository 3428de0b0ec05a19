package mcsd

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
)

// directory is one directory as the syncer schedules it.
type directory struct {
	id, baseURL, kind string
	origin            string
	uras              []string
	failures          int
	nextAttempt       int64
	lastError         string
	dirty             bool
}

func (d directory) types() []string {
	if d.kind == "lrza" {
		return lrzaTypes
	}
	return providerTypes
}

// ensureDirectory registers a directory (or reactivates it) and returns its id.
func (x *Index) ensureDirectory(ctx context.Context, baseURL, kind, origin string) (string, error) {
	id := directoryID(baseURL)
	d := Directory{ID: id, BaseURL: baseURL, Kind: kind, Origin: origin}
	if err := x.db.EnsureDirectory(ctx, d, x.now().UnixMilli()); err != nil {
		return "", fmt.Errorf("register directory %s: %w", baseURL, err)
	}
	return id, nil
}

// refuseDirectory records that a directory the LRZA lists is not synced, and why; it stays
// inactive, so nothing of it counts. A directory synced before is removed first by the caller.
// It reports whether the refusal is new.
func (x *Index) refuseDirectory(ctx context.Context, baseURL, reason string) (bool, error) {
	d := Directory{ID: directoryID(baseURL), BaseURL: baseURL, Kind: "provider", Origin: "lrza"}
	isNew, err := x.db.RefuseDirectory(ctx, d, reason, x.now().UnixMilli())
	if err != nil {
		return false, fmt.Errorf("record refused directory %s: %w", baseURL, err)
	}
	return isNew, nil
}

// setURAs replaces the URAs a directory is authoritative for; a change makes it revalidate.
func (x *Index) setURAs(ctx context.Context, id string, uras []string) error {
	if err := x.db.SetDirectoryURAs(ctx, id, slices.Compact(slices.Sorted(slices.Values(uras)))); err != nil {
		return fmt.Errorf("replace directory URAs: %w", err)
	}
	return nil
}

// directories lists the active directories of a kind with their URAs.
func (x *Index) directories(ctx context.Context, kind string) ([]directory, error) {
	ds, err := x.db.Directories(ctx, kind)
	if err != nil {
		return nil, fmt.Errorf("list directories: %w", err)
	}
	out := make([]directory, 0, len(ds))
	for _, d := range ds {
		out = append(out, directory{id: d.ID, baseURL: d.BaseURL, kind: d.Kind, origin: d.Origin, uras: d.URAs,
			failures: d.Failures, nextAttempt: d.NextAttempt, lastError: d.LastError, dirty: d.Dirty})
	}
	return out, nil
}

// markProvidersOf makes the provider directories of care providers whose LRZA Organization
// changed in this run validate again: the LRZA's name and status of a URA override theirs.
func (x *Index) markProvidersOf(ctx context.Context, lrza string, run int64) error {
	if err := x.db.MarkProvidersOf(ctx, lrza, run); err != nil {
		return fmt.Errorf("mark directories of changed care providers: %w", err)
	}
	return nil
}

// watermarks returns the _since of the next request per resource type of a directory.
func (x *Index) watermarks(ctx context.Context, dir string) (map[string]string, error) {
	out, err := x.db.Watermarks(ctx, dir)
	if err != nil {
		return nil, fmt.Errorf("read watermarks: %w", err)
	}
	return out, nil
}

// ResetDirectory forgets the watermarks of the directory at baseURL, so that its next sync
// fetches its whole history and removes what that no longer contains. This is the explicit full
// resync; a restart never does it by itself.
func (x *Index) ResetDirectory(ctx context.Context, baseURL string) error {
	if err := x.db.ResetWatermarks(ctx, directoryID(normalizeBase(baseURL))); err != nil {
		return fmt.Errorf("reset directory: %w", err)
	}
	return nil
}

// attempt is the outcome of a directory's sync that started at start, with its backoff.
func (x *Index) attempt(d directory, start time.Time, syncErr error, backoff func(failures int) time.Duration) Attempt {
	now := x.now()
	if syncErr == nil {
		return Attempt{OK: true, Start: start.UnixMilli(), Now: now.UnixMilli()}
	}
	failures := d.failures + 1
	return Attempt{Start: start.UnixMilli(), Now: now.UnixMilli(), Error: clean(syncErr.Error(), 1000),
		Failures: failures, NextAttempt: now.Add(backoff(failures)).UnixMilli()}
}

// recordAttempt stores the outcome of a directory's sync on its own.
func (x *Index) recordAttempt(ctx context.Context, d directory, a Attempt) error {
	if err := x.db.RecordAttempt(ctx, d.id, a); err != nil {
		return fmt.Errorf("record sync of %s: %w", d.baseURL, err)
	}
	return nil
}

// deactivate removes a directory that is no longer listed: its resources stop counting at once.
func (x *Index) deactivate(ctx context.Context, id string) error {
	if err := x.db.RemoveDirectory(ctx, id); err != nil {
		return fmt.Errorf("remove directory: %w", err)
	}
	return nil
}

// discovered lists the provider directories the LRZA index points at, with the URAs of the care
// providers that registered each: an accepted, active Organization with a URA that references an
// active Endpoint marked as an mCSD directory (either Dutch guide's payloadType).
func (x *Index) discovered(ctx context.Context, lrza string) (map[string][]string, error) {
	eps, err := x.db.Endpoints(ctx, lrza, x.now().UnixMilli())
	if err != nil {
		return nil, fmt.Errorf("discover directories: %w", err)
	}
	out := make(map[string][]string)
	for _, e := range eps {
		base := normalizeBase(e.Address)
		out[base] = append(out[base], e.URA)
	}
	return out, nil
}

func normalizeBase(u string) string { return strings.TrimRight(strings.TrimSpace(u), "/") }
