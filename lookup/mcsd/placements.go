package mcsd

import (
	"github.com/ozo-platform/ozo-identity/internal/sqlin"

	"context"
	"database/sql"
	"fmt"
	"github.com/ozo-platform/ozo-identity/threepid"
	"strconv"
	"time"
)

// Move is a practitioner whom mCSD now places on another homeserver (design.md §10: the caller
// may rebind their uzi and hand over their rooms).
type Move struct {
	UZI              string
	From, To         string // homeserver names
	FromMXID, ToMXID string // "" when only the homeserver was published
	Since            time.Time
}

type placement struct {
	homeserver, mxid, prevHomeserver, prevMXID string
	since                                      int64
}

// placementHooks hear what a placement pass found.
type placementHooks struct {
	onMove     func(Move)
	onConflict func(Conflict) // a conflict that is new, not one that was already recorded
	onResolved func(Conflict) // a recorded conflict that no longer exists
}

// updatePlacements brings homeserver localisation and the record of conflicts up to date for the
// UZI numbers whose candidates changed since the last pass, or whose periods began or ended since.
// It works a page of UZI numbers at a time.
func (x *Index) updatePlacements(ctx context.Context, hooks placementHooks) (int, error) {
	now := x.now().UnixMilli()
	var lastStr string
	if err := x.db.QueryRowContext(ctx, `SELECT value FROM mcsd_state WHERE name = 'placements_at'`).Scan(&lastStr); err != nil {
		return 0, fmt.Errorf("read placement pass: %w", err)
	}
	last, _ := strconv.ParseInt(lastStr, 10, 64)
	if _, err := x.exec(ctx, `INSERT INTO mcsd_dirty (dir, medium, address)
		SELECT DISTINCT dir, medium, address FROM mcsd_addresses WHERE medium = 'uzi'
		AND ((not_before > $1 AND not_before <= $2) OR (not_after > $1 AND not_after <= $2))
		ON CONFLICT DO NOTHING`, last, now); err != nil {
		return 0, fmt.Errorf("mark 3pids with changed periods: %w", err)
	}
	moves := 0
	after := ""
	for {
		var uzis []string
		if err := x.scanEach(ctx, `SELECT DISTINCT address FROM mcsd_dirty WHERE medium = 'uzi' AND address > $1 ORDER BY address LIMIT 500`,
			[]any{after}, func(r *sql.Rows) error {
				var u string
				err := r.Scan(&u)
				uzis = append(uzis, u)
				return err
			}); err != nil {
			return moves, err
		}
		if len(uzis) == 0 {
			break
		}
		after = uzis[len(uzis)-1]
		tps := make([]threepid.ThreePID, len(uzis))
		args := make([]any, len(uzis))
		for i, u := range uzis {
			tps[i] = threepid.ThreePID{Medium: "uzi", Address: u}
			args[i] = u
		}
		best, err := x.candidates(ctx, x.db, tps, true)
		if err != nil {
			return moves, err
		}
		cur := make(map[string]placement)
		if err := x.scanEach(ctx, `SELECT uzi, homeserver, mxid, since, prev_homeserver, prev_mxid FROM mcsd_placements
			WHERE uzi IN (`+sqlin.Placeholders(1, len(uzis))+`)`, args, func(r *sql.Rows) error {
			var u string
			var p placement
			err := r.Scan(&u, &p.homeserver, &p.mxid, &p.since, &p.prevHomeserver, &p.prevMXID)
			cur[u] = p
			return err
		}); err != nil {
			return moves, err
		}
		names, err := x.orgNames(ctx, best)
		if err != nil {
			return moves, err
		}
		var pageMoves []Move
		var newConflicts, resolved []Conflict
		err = x.tx(ctx, func(tx *sql.Tx) error {
			pageMoves, newConflicts, resolved = pageMoves[:0], newConflicts[:0], resolved[:0]
			for _, u := range uzis {
				res, ok := best[threepid.ThreePID{Medium: "uzi", Address: u}]
				isNew, wasResolved, err := recordConflict(ctx, tx, u, res, ok, names, now)
				if err != nil {
					return err
				}
				if isNew != nil {
					newConflicts = append(newConflicts, *isNew)
				}
				if wasResolved != nil {
					resolved = append(resolved, *wasResolved)
				}
				if ok && res.conflict {
					// A conflict moves nobody: the placement stays as it was until it is resolved.
					continue
				}
				p, exists := cur[u]
				next, changed, mv := place(u, res.best, ok, p, exists, now)
				if mv != nil {
					pageMoves = append(pageMoves, *mv)
				}
				if !changed {
					continue
				}
				if _, err := tx.ExecContext(ctx, `INSERT INTO mcsd_placements (uzi, homeserver, mxid, since, prev_homeserver, prev_mxid, updated_at)
					VALUES ($1, $2, $3, $4, $5, $6, $7)
					ON CONFLICT (uzi) DO UPDATE SET homeserver = excluded.homeserver, mxid = excluded.mxid, since = excluded.since,
					prev_homeserver = excluded.prev_homeserver, prev_mxid = excluded.prev_mxid, updated_at = excluded.updated_at`,
					u, next.homeserver, next.mxid, next.since, next.prevHomeserver, next.prevMXID, now); err != nil {
					return fmt.Errorf("store placement: %w", err)
				}
			}
			if _, err := tx.ExecContext(ctx, `DELETE FROM mcsd_dirty WHERE medium = 'uzi' AND address IN (`+sqlin.Placeholders(1, len(uzis))+`)`, args...); err != nil {
				return fmt.Errorf("clear changed 3pids: %w", err)
			}
			return nil
		})
		if err != nil {
			return moves, err
		}
		for _, m := range pageMoves {
			moves++
			if hooks.onMove != nil {
				hooks.onMove(m)
			}
		}
		for _, c := range newConflicts {
			if hooks.onConflict != nil {
				hooks.onConflict(c)
			}
		}
		for _, c := range resolved {
			if hooks.onResolved != nil {
				hooks.onResolved(c)
			}
		}
	}
	if _, err := x.exec(ctx, `UPDATE mcsd_state SET value = $1 WHERE name = 'placements_at'`, strconv.FormatInt(now, 10)); err != nil {
		return moves, fmt.Errorf("record placement pass: %w", err)
	}
	return moves, nil
}

// place decides the new placement of one UZI number from its best candidate (if ok) and its
// stored placement (if exists); since is when the move took effect: the lastUpdated of what
// placed them on the new homeserver when that is after the previous placement, else now.
func place(uzi string, c candidate, ok bool, p placement, exists bool, now int64) (placement, bool, *Move) {
	hs, mxid := "", ""
	if ok {
		hs, mxid = c.homeserver, c.mxid
	}
	switch {
	case !exists && hs == "":
		return p, false, nil
	case !exists:
		since := c.updated
		if since == 0 || since > now {
			since = now
		}
		return placement{homeserver: hs, mxid: mxid, since: since}, true, nil
	case p.homeserver == hs:
		if p.mxid == mxid {
			return p, false, nil
		}
		p.mxid = mxid
		return p, true, nil
	}
	since := now
	if ok && c.updated > p.since && c.updated <= now {
		since = c.updated
	}
	next := placement{homeserver: hs, mxid: mxid, since: since, prevHomeserver: p.prevHomeserver, prevMXID: p.prevMXID}
	if p.homeserver != "" {
		next.prevHomeserver, next.prevMXID = p.homeserver, p.mxid
	}
	var mv *Move
	if hs != "" && next.prevHomeserver != "" && next.prevHomeserver != hs {
		mv = &Move{UZI: uzi, From: next.prevHomeserver, FromMXID: next.prevMXID, To: hs, ToMXID: mxid, Since: time.UnixMilli(since).UTC()}
	}
	return next, true, mv
}
