package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"slices"

	"github.com/ozo-platform/ozo-identity/internal/sqlin"
	"github.com/ozo-platform/ozo-identity/lookup/mcsd"
)

// EnsureDirectory registers a directory or reactivates it; an unchanged active one is not written.
func (db *DB) EnsureDirectory(ctx context.Context, d mcsd.Directory, now int64) error {
	_, err := db.execWrite(ctx, `INSERT INTO mcsd_directories (id, base_url, kind, origin, active, created_at)
		VALUES ($1, $2, $3, $4, 1, $5)
		ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, origin = excluded.origin, active = 1, refused = ''
		WHERE mcsd_directories.kind <> excluded.kind OR mcsd_directories.origin <> excluded.origin OR mcsd_directories.active = 0`,
		d.ID, d.BaseURL, d.Kind, d.Origin, now)
	return err
}

// RefuseDirectory records an inactive directory that is not synced and why.
func (db *DB) RefuseDirectory(ctx context.Context, d mcsd.Directory, reason string, now int64) (bool, error) {
	res, err := db.execWrite(ctx, `INSERT INTO mcsd_directories (id, base_url, kind, origin, active, created_at, refused)
		VALUES ($1, $2, $3, $4, 0, $5, $6)
		ON CONFLICT (id) DO UPDATE SET refused = excluded.refused
		WHERE mcsd_directories.active = 0 AND mcsd_directories.refused <> excluded.refused`,
		d.ID, d.BaseURL, d.Kind, d.Origin, now, reason)
	if err != nil {
		return false, err
	}
	n, _ := res.RowsAffected()
	return n > 0, nil
}

// SetDirectoryURAs replaces the URAs of a directory, in one transaction, when they changed.
func (db *DB) SetDirectoryURAs(ctx context.Context, id string, uras []string) error {
	return db.writeTx(ctx, func(tx *sql.Tx) error {
		var old []string
		if err := sqlin.Each(ctx, tx, `SELECT ura FROM mcsd_directory_uras WHERE dir = $1 ORDER BY ura`, []any{id}, func(r *sql.Rows) error {
			var u string
			err := r.Scan(&u)
			old = append(old, u)
			return err
		}); err != nil {
			return fmt.Errorf("read directory URAs: %w", err)
		}
		if slices.Equal(old, uras) {
			return nil
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM mcsd_directory_uras WHERE dir = $1`, id); err != nil {
			return err
		}
		for _, u := range uras {
			if _, err := tx.ExecContext(ctx, `INSERT INTO mcsd_directory_uras (dir, ura) VALUES ($1, $2)`, id, u); err != nil {
				return err
			}
		}
		_, err := tx.ExecContext(ctx, `UPDATE mcsd_directories SET dirty = 1 WHERE id = $1`, id)
		return err
	})
}

// Directories lists the active directories of a kind with their URAs.
func (db *DB) Directories(ctx context.Context, kind string) ([]mcsd.Directory, error) {
	var out []mcsd.Directory
	err := sqlin.Each(ctx, db, `SELECT d.id, d.base_url, d.kind, d.origin, d.failures, d.next_attempt_at, d.last_error, d.dirty, COALESCE(u.ura, '')
		FROM mcsd_directories d LEFT JOIN mcsd_directory_uras u ON u.dir = d.id
		WHERE d.active = 1 AND d.kind = $1 ORDER BY d.base_url, u.ura`, []any{kind}, func(rows *sql.Rows) error {
		var d mcsd.Directory
		var dirty int
		var ura string
		if err := rows.Scan(&d.ID, &d.BaseURL, &d.Kind, &d.Origin, &d.Failures, &d.NextAttempt, &d.LastError, &dirty, &ura); err != nil {
			return err
		}
		if n := len(out); n > 0 && out[n-1].ID == d.ID {
			out[n-1].URAs = append(out[n-1].URAs, ura)
			return nil
		}
		d.Dirty = dirty == 1
		if ura != "" {
			d.URAs = []string{ura}
		}
		out = append(out, d)
		return nil
	})
	return out, err
}

// MarkProvidersOf marks the provider directories of care providers whose LRZA Organization
// changed in run.
func (db *DB) MarkProvidersOf(ctx context.Context, lrza string, run int64) error {
	_, err := db.execWrite(ctx, `UPDATE mcsd_directories SET dirty = 1 WHERE kind = 'provider' AND dirty = 0 AND id IN
		(SELECT u.dir FROM mcsd_directory_uras u JOIN mcsd_resources l ON l.type = 'Organization' AND l.ura = u.ura
		WHERE l.dir = $1 AND l.seen_run = $2)`, lrza, run)
	return err
}

// Endpoints lists the mCSD directory Endpoints of the accepted Organizations with a URA in dir.
func (db *DB) Endpoints(ctx context.Context, dir string, now int64) ([]mcsd.DirectoryEndpoint, error) {
	var out []mcsd.DirectoryEndpoint
	err := sqlin.Each(ctx, db, `SELECT DISTINCT e.address, o.ura FROM mcsd_resources o
		JOIN mcsd_refs f ON f.dir = o.dir AND f.from_type = 'Organization' AND f.from_id = o.id AND f.kind = 'endpoint'
		JOIN mcsd_resources e ON e.dir = o.dir AND e.type = 'Endpoint' AND e.id = f.to_id
		WHERE o.dir = $1 AND o.type = 'Organization' AND o.deleted = 0 AND o.reason = '' AND o.ura <> '' AND o.active = 1
		AND e.deleted = 0 AND e.reason = '' AND e.active = 1 AND e.kind = 'mcsd-directory'
		AND (e.period_start = 0 OR e.period_start <= $2) AND (e.period_end = 0 OR e.period_end > $2)
		ORDER BY e.address, o.ura`, []any{dir, now}, func(rows *sql.Rows) error {
		var e mcsd.DirectoryEndpoint
		err := rows.Scan(&e.Address, &e.URA)
		out = append(out, e)
		return err
	})
	return out, err
}

// Watermarks returns the _since of the next request per resource type of a directory.
func (db *DB) Watermarks(ctx context.Context, dir string) (map[string]string, error) {
	out := map[string]string{}
	err := sqlin.Each(ctx, db, `SELECT type, since FROM mcsd_watermarks WHERE dir = $1`, []any{dir}, func(r *sql.Rows) error {
		var t, v string
		err := r.Scan(&t, &v)
		out[t] = v
		return err
	})
	return out, err
}

// ResetWatermarks forgets the watermarks of a directory.
func (db *DB) ResetWatermarks(ctx context.Context, dir string) error {
	_, err := db.execWrite(ctx, `DELETE FROM mcsd_watermarks WHERE dir = $1`, dir)
	return err
}

// RecordAttempt stores the outcome of a directory's sync.
func (db *DB) RecordAttempt(ctx context.Context, dir string, a mcsd.Attempt) error {
	return db.writeTx(ctx, func(tx *sql.Tx) error { return db.recordAttemptTx(ctx, tx, dir, a) })
}

func (db *DB) recordAttemptTx(ctx context.Context, tx *sql.Tx, dir string, a mcsd.Attempt) error {
	var err error
	if a.OK {
		_, err = db.execPrepared(ctx, tx, `UPDATE mcsd_directories SET last_attempt_at = $2, last_success_at = $3, last_error = '',
			failures = 0, next_attempt_at = 0 WHERE id = $1`, dir, a.Start, a.Now)
	} else {
		_, err = db.execPrepared(ctx, tx, `UPDATE mcsd_directories SET last_attempt_at = $2, last_error = $3, failures = $4,
			next_attempt_at = $5 WHERE id = $1`, dir, a.Start, a.Error, a.Failures, a.NextAttempt)
	}
	if err != nil {
		return fmt.Errorf("record sync attempt: %w", err)
	}
	return nil
}

// RemoveDirectory deletes everything of a directory in one transaction and makes it inactive;
// its UZI numbers are marked for the placement pass first.
func (db *DB) RemoveDirectory(ctx context.Context, id string) error {
	return db.writeTx(ctx, func(tx *sql.Tx) error {
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
				return err
			}
		}
		return nil
	})
}

// DirectoryStatuses reports every directory the index knows, in base URL order.
func (db *DB) DirectoryStatuses(ctx context.Context) ([]mcsd.DirectoryStatus, error) {
	var out []mcsd.DirectoryStatus
	var ids []string
	err := sqlin.Each(ctx, db, `SELECT id, base_url, kind, origin, active, last_attempt_at, last_success_at,
		last_error, refused, failures, next_attempt_at, resource_count, prev_resource_count FROM mcsd_directories ORDER BY base_url`, nil,
		func(rows *sql.Rows) error {
			var s mcsd.DirectoryStatus
			var id string
			var active int
			var attempt, success, next int64
			if err := rows.Scan(&id, &s.BaseURL, &s.Kind, &s.Origin, &active, &attempt, &success, &s.LastError, &s.Refused, &s.Failures, &next, &s.Recorded, &s.Previous); err != nil {
				return err
			}
			s.Active = active == 1
			s.LastAttempt, s.LastSuccess, s.NextAttempt = fromMS(attempt), fromMS(success), fromMS(next)
			s.Watermarks, s.Counts, s.Rejected = map[string]string{}, map[string]int{}, map[string]int{}
			out = append(out, s)
			ids = append(ids, id)
			return nil
		})
	if err != nil {
		return nil, err
	}
	byID := map[string]*mcsd.DirectoryStatus{}
	for i, id := range ids {
		byID[id] = &out[i]
	}
	if err := sqlin.Each(ctx, db, `SELECT dir, ura FROM mcsd_directory_uras ORDER BY dir, ura`, nil, func(r *sql.Rows) error {
		var id, u string
		if err := r.Scan(&id, &u); err != nil {
			return err
		}
		if s := byID[id]; s != nil {
			s.URAs = append(s.URAs, u)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	if err := sqlin.Each(ctx, db, `SELECT dir, type, since FROM mcsd_watermarks`, nil, func(r *sql.Rows) error {
		var id, t, v string
		if err := r.Scan(&id, &t, &v); err != nil {
			return err
		}
		if s := byID[id]; s != nil {
			s.Watermarks[t] = v
		}
		return nil
	}); err != nil {
		return nil, err
	}
	if err := sqlin.Each(ctx, db, `SELECT dir, type, SUM(CASE WHEN reason = '' THEN 1 ELSE 0 END), SUM(CASE WHEN reason <> '' THEN 1 ELSE 0 END)
		FROM mcsd_resources WHERE deleted = 0 GROUP BY dir, type`, nil, func(r *sql.Rows) error {
		var id, t string
		var ok, bad int
		if err := r.Scan(&id, &t, &ok, &bad); err != nil {
			return err
		}
		if s := byID[id]; s != nil {
			s.Counts[t], s.Rejected[t] = ok, bad
		}
		return nil
	}); err != nil {
		return nil, err
	}
	return out, nil
}
