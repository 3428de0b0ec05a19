package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ozo-platform/ozo-identity/internal/sqlin"
	"github.com/ozo-platform/ozo-identity/lookup/mcsd"
	"github.com/ozo-platform/ozo-identity/threepid"
)

// Candidates returns the candidates current at now for addresses of one medium.
func (db *DB) Candidates(ctx context.Context, medium string, addrs []string, now int64, withHomeserverOnly bool) ([]mcsd.Candidate, error) {
	filter := "mxid <> '' AND "
	if withHomeserverOnly {
		filter = ""
	}
	var out []mcsd.Candidate
	err := sqlin.Scan(ctx, db, addrs, mcsdChunk, []any{now, medium}, func(in string) string {
		return `SELECT address, mxid, homeserver, pref, updated, source_id, dir, ura
			FROM mcsd_addresses WHERE ` + filter + `(not_before = 0 OR not_before <= $1) AND (not_after = 0 OR not_after > $1)
			AND medium = $2 AND address IN (` + in + `)`
	}, func(rows *sql.Rows) error {
		var c mcsd.Candidate
		err := rows.Scan(&c.Address, &c.MXID, &c.Homeserver, &c.Pref, &c.Updated, &c.SourceID, &c.Dir, &c.URA)
		out = append(out, c)
		return err
	})
	return out, err
}

// HashedThreePIDs returns the 3PIDs of the index behind lookup hashes.
func (db *DB) HashedThreePIDs(ctx context.Context, hashes []string) ([]mcsd.HashedThreePID, error) {
	var out []mcsd.HashedThreePID
	err := sqlin.Scan(ctx, db, hashes, mcsdChunk, nil, func(in string) string {
		return `SELECT DISTINCT hash, medium, address FROM mcsd_hashes WHERE hash IN (` + in + `)`
	}, func(rows *sql.Rows) error {
		var h mcsd.HashedThreePID
		err := rows.Scan(&h.Hash, &h.Medium, &h.Address)
		out = append(out, h)
		return err
	})
	return out, err
}

// Rehash stores pepper and, when it changed, replaces every hash, in one transaction that holds
// the pepper exclusively, so that a directory's derivation never writes hashes of another pepper.
func (db *DB) Rehash(ctx context.Context, pepper string) error {
	return db.writeTx(ctx, func(tx *sql.Tx) error {
		old, err := db.lockPepper(ctx, tx, true)
		if err != nil {
			return err
		}
		if old != pepper {
			if _, err := tx.ExecContext(ctx, `UPDATE mcsd_state SET value = $1 WHERE name = 'pepper'`, pepper); err != nil {
				return fmt.Errorf("store pepper: %w", err)
			}
			if _, err := tx.ExecContext(ctx, `DELETE FROM mcsd_hashes`); err != nil {
				return fmt.Errorf("clear mcsd hashes: %w", err)
			}
		}
		return fillHashes(ctx, tx, "", pepper)
	})
}

// Placements returns the stored placements of UZI numbers.
func (db *DB) Placements(ctx context.Context, uzis []string) (map[string]mcsd.Placement, error) {
	out := make(map[string]mcsd.Placement)
	err := sqlin.Scan(ctx, db, uzis, mcsdChunk, nil, func(in string) string {
		return `SELECT uzi, homeserver, mxid, since, prev_homeserver, prev_mxid FROM mcsd_placements WHERE uzi IN (` + in + `)`
	}, func(r *sql.Rows) error {
		var u string
		var p mcsd.Placement
		err := r.Scan(&u, &p.Homeserver, &p.MXID, &p.Since, &p.PrevHomeserver, &p.PrevMXID)
		out[u] = p
		return err
	})
	return out, err
}

// OrganizationName returns the name of the care provider with a URA: the LRZA's first, else that
// of an accepted Organization in a provider directory.
func (db *DB) OrganizationName(ctx context.Context, ura string) (string, error) {
	var name string
	err := db.QueryRowContext(ctx, `SELECT o.display_name FROM mcsd_resources o JOIN mcsd_directories d ON d.id = o.dir
		WHERE o.type = 'Organization' AND o.ura = $1 AND o.deleted = 0 AND o.reason = '' AND d.active = 1
		ORDER BY CASE WHEN d.kind = 'lrza' THEN 0 ELSE 1 END, o.dir, o.id LIMIT 1`, ura).Scan(&name)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return "", err
	}
	return name, nil
}

// Conflicts lists the recorded conflicts by medium and address.
func (db *DB) Conflicts(ctx context.Context) ([]mcsd.Conflict, error) {
	var out []mcsd.Conflict
	err := sqlin.Each(ctx, db, `SELECT medium, address, claims, first_seen FROM mcsd_conflicts ORDER BY medium, address`, nil,
		func(r *sql.Rows) error {
			var c mcsd.Conflict
			var raw string
			var first int64
			if err := r.Scan(&c.Medium, &c.Address, &raw, &first); err != nil {
				return err
			}
			if err := json.Unmarshal([]byte(raw), &c.Claims); err != nil {
				return fmt.Errorf("claims of %s: %w", c.Address, err)
			}
			c.FirstSeen = time.UnixMilli(first).UTC()
			out = append(out, c)
			return nil
		})
	return out, err
}

// MarkPeriodChanges marks the UZI numbers whose candidates' periods began or ended between the
// last placement pass and now.
func (db *DB) MarkPeriodChanges(ctx context.Context, now int64) error {
	var lastStr string
	if err := db.QueryRowContext(ctx, `SELECT value FROM mcsd_state WHERE name = 'placements_at'`).Scan(&lastStr); err != nil {
		return fmt.Errorf("read placement pass: %w", err)
	}
	last, _ := strconv.ParseInt(lastStr, 10, 64)
	_, err := db.execWrite(ctx, `INSERT INTO mcsd_dirty (dir, medium, address)
		SELECT DISTINCT dir, medium, address FROM mcsd_addresses WHERE medium = 'uzi'
		AND ((not_before > $1 AND not_before <= $2) OR (not_after > $1 AND not_after <= $2))
		ON CONFLICT DO NOTHING`, last, now)
	return err
}

// ChangedUZIs returns up to limit marked UZI numbers after after, in order.
func (db *DB) ChangedUZIs(ctx context.Context, after string, limit int) ([]string, error) {
	var uzis []string
	err := sqlin.Each(ctx, db, `SELECT DISTINCT address FROM mcsd_dirty WHERE medium = 'uzi' AND address > $1 ORDER BY address LIMIT $2`,
		[]any{after, limit}, func(r *sql.Rows) error {
			var u string
			err := r.Scan(&u)
			uzis = append(uzis, u)
			return err
		})
	return uzis, err
}

// StorePlacements stores one page of the placement pass in one transaction: a few statements
// for the whole page, and one per UZI number only where a conflict exists.
func (db *DB) StorePlacements(ctx context.Context, p mcsd.PlacementPage) (added, resolved []mcsd.Conflict, err error) {
	var clear []string
	for _, u := range p.UZIs {
		if p.Conflicts[u] == nil {
			clear = append(clear, u)
		}
	}
	err = db.writeTx(ctx, func(tx *sql.Tx) error {
		added, resolved = added[:0], resolved[:0]
		// Conflicts that no longer exist, in one statement for the page.
		err := db.deleteIn(ctx, tx, `DELETE FROM mcsd_conflicts WHERE medium = $1 AND address`, []any{threepid.MediumUZI}, clear,
			"address, claims, first_seen", func(rows *sql.Rows) error {
				var raw string
				var first int64
				old := mcsd.Conflict{Medium: threepid.MediumUZI}
				if err := rows.Scan(&old.Address, &raw, &first); err != nil {
					return err
				}
				old.FirstSeen = time.UnixMilli(first).UTC()
				_ = json.Unmarshal([]byte(raw), &old.Claims)
				resolved = append(resolved, old)
				return nil
			})
		if err != nil {
			return fmt.Errorf("clear conflicts: %w", err)
		}
		slices.SortFunc(resolved, func(a, b mcsd.Conflict) int { return strings.Compare(a.Address, b.Address) })
		for _, u := range p.UZIs {
			if p.Conflicts[u] == nil {
				continue
			}
			isNew, err := recordConflict(ctx, tx, u, p.Conflicts[u], p.Now)
			if err != nil {
				return err
			}
			if isNew != nil {
				added = append(added, *isNew)
			}
		}
		if err := db.upsertPlacements(ctx, tx, p); err != nil {
			return fmt.Errorf("store placements: %w", err)
		}
		if err := db.deleteIn(ctx, tx, `DELETE FROM mcsd_dirty WHERE medium = $1 AND address`, []any{threepid.MediumUZI}, p.UZIs, "", nil); err != nil {
			return fmt.Errorf("clear changed 3pids: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return added, resolved, nil
}

const placementUpsert = ` ON CONFLICT (uzi) DO UPDATE SET homeserver = excluded.homeserver, mxid = excluded.mxid, since = excluded.since,
	prev_homeserver = excluded.prev_homeserver, prev_mxid = excluded.prev_mxid, updated_at = excluded.updated_at`

// upsertPlacements writes the page's changed placements, in UZI order.
func (db *DB) upsertPlacements(ctx context.Context, tx *sql.Tx, p mcsd.PlacementPage) error {
	uzis := slices.Sorted(maps.Keys(p.Placements))
	if len(uzis) == 0 {
		return nil
	}
	if db.Engine == Postgres {
		var hs, mxid, prevHS, prevMXID []string
		var since []int64
		for _, u := range uzis {
			pl := p.Placements[u]
			hs, mxid, prevHS, prevMXID = append(hs, pl.Homeserver), append(mxid, pl.MXID), append(prevHS, pl.PrevHomeserver), append(prevMXID, pl.PrevMXID)
			since = append(since, pl.Since)
		}
		_, err := db.execPrepared(ctx, tx, `INSERT INTO mcsd_placements (uzi, homeserver, mxid, since, prev_homeserver, prev_mxid, updated_at)
			SELECT u.*, $7 FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[]) AS u`+placementUpsert,
			uzis, hs, mxid, since, prevHS, prevMXID, p.Now)
		return err
	}
	for len(uzis) > 0 {
		n := rowSize(len(uzis))
		part := uzis[:n]
		uzis = uzis[n:]
		args := make([]any, 0, 7*n)
		for _, u := range part {
			pl := p.Placements[u]
			args = append(args, u, pl.Homeserver, pl.MXID, pl.Since, pl.PrevHomeserver, pl.PrevMXID, p.Now)
		}
		if _, err := db.execPrepared(ctx, tx, `INSERT INTO mcsd_placements (uzi, homeserver, mxid, since, prev_homeserver, prev_mxid, updated_at)
			VALUES `+valueRows(n, 7)+placementUpsert, args...); err != nil {
			return err
		}
	}
	return nil
}

// recordConflict records the conflict c over a UZI number, or updates its claims; it returns c
// when the conflict is new.
func recordConflict(ctx context.Context, tx *sql.Tx, uzi string, c *mcsd.Conflict, now int64) (*mcsd.Conflict, error) {
	raw, err := json.Marshal(c.Claims)
	if err != nil {
		return nil, fmt.Errorf("record conflict: %w", err)
	}
	res, err := tx.ExecContext(ctx, `INSERT INTO mcsd_conflicts (medium, address, claims, first_seen, updated_at)
		VALUES ('uzi', $1, $2, $3, $3) ON CONFLICT (medium, address) DO NOTHING`, uzi, string(raw), now)
	if err != nil {
		return nil, fmt.Errorf("record conflict: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 1 {
		return c, nil
	}
	if _, err := tx.ExecContext(ctx, `UPDATE mcsd_conflicts SET claims = $2, updated_at = $3
		WHERE medium = 'uzi' AND address = $1 AND claims <> $2`, uzi, string(raw), now); err != nil {
		return nil, fmt.Errorf("record conflict: %w", err)
	}
	return nil, nil
}

// EndPlacementPass records now as the time of the last placement pass.
func (db *DB) EndPlacementPass(ctx context.Context, now int64) error {
	_, err := db.execWrite(ctx, `UPDATE mcsd_state SET value = $1 WHERE name = 'placements_at'`, strconv.FormatInt(now, 10))
	return err
}
