package mcsd

import (
	"context"
	"database/sql"
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
	_, err := x.exec(ctx, `INSERT INTO mcsd_directories (id, base_url, kind, origin, active, created_at)
		VALUES ($1, $2, $3, $4, 1, $5)
		ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, origin = excluded.origin, active = 1
		WHERE mcsd_directories.kind <> excluded.kind OR mcsd_directories.origin <> excluded.origin OR mcsd_directories.active = 0`,
		id, baseURL, kind, origin, x.now().UnixMilli())
	if err != nil {
		return "", fmt.Errorf("register directory %s: %w", baseURL, err)
	}
	return id, nil
}

// setURAs replaces the URAs a directory is authoritative for; a change makes it revalidate.
func (x *Index) setURAs(ctx context.Context, id string, uras []string) error {
	return x.tx(ctx, func(tx *sql.Tx) error {
		var old []string
		rows, err := tx.QueryContext(ctx, `SELECT ura FROM mcsd_directory_uras WHERE dir = $1 ORDER BY ura`, id)
		if err != nil {
			return fmt.Errorf("read directory URAs: %w", err)
		}
		for rows.Next() {
			var u string
			if err := rows.Scan(&u); err != nil {
				rows.Close()
				return fmt.Errorf("read directory URAs: %w", err)
			}
			old = append(old, u)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("read directory URAs: %w", err)
		}
		uras = slices.Compact(slices.Sorted(slices.Values(uras)))
		if slices.Equal(old, uras) {
			return nil
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM mcsd_directory_uras WHERE dir = $1`, id); err != nil {
			return fmt.Errorf("replace directory URAs: %w", err)
		}
		for _, u := range uras {
			if _, err := tx.ExecContext(ctx, `INSERT INTO mcsd_directory_uras (dir, ura) VALUES ($1, $2)`, id, u); err != nil {
				return fmt.Errorf("replace directory URAs: %w", err)
			}
		}
		if _, err := tx.ExecContext(ctx, `UPDATE mcsd_directories SET dirty = 1 WHERE id = $1`, id); err != nil {
			return fmt.Errorf("replace directory URAs: %w", err)
		}
		return nil
	})
}

// directories lists the active directories of a kind with their URAs.
func (x *Index) directories(ctx context.Context, kind string) ([]directory, error) {
	rows, err := x.db.QueryContext(ctx, `SELECT d.id, d.base_url, d.kind, d.origin, d.failures, d.next_attempt_at, d.last_error, d.dirty, COALESCE(u.ura, '')
		FROM mcsd_directories d LEFT JOIN mcsd_directory_uras u ON u.dir = d.id
		WHERE d.active = 1 AND d.kind = $1 ORDER BY d.base_url, u.ura`, kind)
	if err != nil {
		return nil, fmt.Errorf("list directories: %w", err)
	}
	defer rows.Close()
	var out []directory
	for rows.Next() {
		var d directory
		var dirty int
		var ura string
		if err := rows.Scan(&d.id, &d.baseURL, &d.kind, &d.origin, &d.failures, &d.nextAttempt, &d.lastError, &dirty, &ura); err != nil {
			return nil, fmt.Errorf("list directories: %w", err)
		}
		if n := len(out); n > 0 && out[n-1].id == d.id {
			out[n-1].uras = append(out[n-1].uras, ura)
			continue
		}
		d.dirty = dirty == 1
		if ura != "" {
			d.uras = []string{ura}
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

// markProvidersOf makes the provider directories of care providers whose LRZA Organization
// changed in this run validate again: the LRZA's name and status of a URA override theirs.
func (x *Index) markProvidersOf(ctx context.Context, lrza string, run int64) error {
	if _, err := x.exec(ctx, `UPDATE mcsd_directories SET dirty = 1 WHERE kind = 'provider' AND dirty = 0 AND id IN
		(SELECT u.dir FROM mcsd_directory_uras u JOIN mcsd_resources l ON l.type = 'Organization' AND l.ura = u.ura
		WHERE l.dir = $1 AND l.seen_run = $2)`, lrza, run); err != nil {
		return fmt.Errorf("mark directories of changed care providers: %w", err)
	}
	return nil
}

// watermarks returns the _since of the next request per resource type of a directory.
func (x *Index) watermarks(ctx context.Context, dir string) (map[string]string, error) {
	out := map[string]string{}
	err := x.scanEach(ctx, `SELECT type, since FROM mcsd_watermarks WHERE dir = $1`, []any{dir}, func(r *sql.Rows) error {
		var t, v string
		err := r.Scan(&t, &v)
		out[t] = v
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("read watermarks: %w", err)
	}
	return out, nil
}

// ResetDirectory forgets the watermarks of the directory at baseURL, so that its next sync
// fetches its whole history and removes what that no longer contains. This is the explicit full
// resync; a restart never does it by itself.
func (x *Index) ResetDirectory(ctx context.Context, baseURL string) error {
	if _, err := x.exec(ctx, `DELETE FROM mcsd_watermarks WHERE dir = $1`, directoryID(normalizeBase(baseURL))); err != nil {
		return fmt.Errorf("reset directory: %w", err)
	}
	return nil
}

// recordAttempt stores the outcome of a directory's sync and its backoff.
func (x *Index) recordAttempt(ctx context.Context, d directory, start time.Time, syncErr error, backoff func(failures int) time.Duration) error {
	now := x.now()
	if syncErr == nil {
		_, err := x.exec(ctx, `UPDATE mcsd_directories SET last_attempt_at = $2, last_success_at = $3, last_error = '',
			failures = 0, next_attempt_at = 0 WHERE id = $1`, d.id, start.UnixMilli(), now.UnixMilli())
		if err != nil {
			return fmt.Errorf("record sync of %s: %w", d.baseURL, err)
		}
		return nil
	}
	failures := d.failures + 1
	_, err := x.exec(ctx, `UPDATE mcsd_directories SET last_attempt_at = $2, last_error = $3, failures = $4,
		next_attempt_at = $5 WHERE id = $1`, d.id, start.UnixMilli(), clean(syncErr.Error(), 1000), failures,
		now.Add(backoff(failures)).UnixMilli())
	if err != nil {
		return fmt.Errorf("record sync of %s: %w", d.baseURL, err)
	}
	return nil
}

// deactivate removes a directory that is no longer listed: its resources stop counting at once.
func (x *Index) deactivate(ctx context.Context, id string) error {
	return x.tx(ctx, func(tx *sql.Tx) error {
		if err := markDirty(ctx, tx, id); err != nil {
			return err
		}
		for _, q := range []string{
			`DELETE FROM mcsd_addresses WHERE dir = $1`,
			`DELETE FROM mcsd_hashes WHERE dir = $1`,
			`DELETE FROM mcsd_resources WHERE dir = $1`,
			`DELETE FROM mcsd_refs WHERE dir = $1`,
			`DELETE FROM mcsd_identifiers WHERE dir = $1`,
			`DELETE FROM mcsd_org_roots WHERE dir = $1`,
			`DELETE FROM mcsd_role_uzis WHERE dir = $1`,
			`DELETE FROM mcsd_watermarks WHERE dir = $1`,
			`DELETE FROM mcsd_directory_uras WHERE dir = $1`,
			`UPDATE mcsd_directories SET active = 0, dirty = 0 WHERE id = $1`,
		} {
			if _, err := tx.ExecContext(ctx, q, id); err != nil {
				return fmt.Errorf("remove directory: %w", err)
			}
		}
		return nil
	})
}

// discovered lists the provider directories the LRZA index points at, with the URAs of the care
// providers that registered each: an accepted, active Organization with a URA that references an
// active Endpoint marked as an mCSD directory (either Dutch guide's payloadType).
func (x *Index) discovered(ctx context.Context, lrza string) (map[string][]string, error) {
	now := x.now().UnixMilli()
	rows, err := x.db.QueryContext(ctx, `SELECT DISTINCT e.address, o.ura FROM mcsd_resources o
		JOIN mcsd_refs f ON f.dir = o.dir AND f.from_type = 'Organization' AND f.from_id = o.id AND f.kind = 'endpoint'
		JOIN mcsd_resources e ON e.dir = o.dir AND e.type = 'Endpoint' AND e.id = f.to_id
		WHERE o.dir = $1 AND o.type = 'Organization' AND o.deleted = 0 AND o.reason = '' AND o.ura <> '' AND o.active = 1
		AND e.deleted = 0 AND e.reason = '' AND e.active = 1 AND e.kind = 'mcsd-directory'
		AND (e.period_start = 0 OR e.period_start <= $2) AND (e.period_end = 0 OR e.period_end > $2)
		ORDER BY e.address, o.ura`, lrza, now)
	if err != nil {
		return nil, fmt.Errorf("discover directories: %w", err)
	}
	defer rows.Close()
	out := make(map[string][]string)
	for rows.Next() {
		var addr, ura string
		if err := rows.Scan(&addr, &ura); err != nil {
			return nil, fmt.Errorf("discover directories: %w", err)
		}
		base := normalizeBase(addr)
		out[base] = append(out[base], ura)
	}
	return out, rows.Err()
}

func normalizeBase(u string) string { return strings.TrimRight(strings.TrimSpace(u), "/") }
