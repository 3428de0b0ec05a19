package mcsd

import (
	"context"
	"fmt"
	"time"

	"github.com/ozo-platform/ozo-identity/threepid"
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
	if err := x.db.MarkPeriodChanges(ctx, now); err != nil {
		return 0, fmt.Errorf("mark 3pids with changed periods: %w", err)
	}
	moves := 0
	after := ""
	for {
		uzis, err := x.db.ChangedUZIs(ctx, after, 500)
		if err != nil {
			return moves, fmt.Errorf("list changed 3pids: %w", err)
		}
		if len(uzis) == 0 {
			break
		}
		after = uzis[len(uzis)-1]
		tps := make([]threepid.ThreePID, len(uzis))
		for i, u := range uzis {
			tps[i] = threepid.ThreePID{Medium: "uzi", Address: u}
		}
		best, err := x.candidates(ctx, tps, true)
		if err != nil {
			return moves, err
		}
		cur, err := x.db.Placements(ctx, uzis)
		if err != nil {
			return moves, fmt.Errorf("read placements: %w", err)
		}
		names, err := x.orgNames(ctx, best)
		if err != nil {
			return moves, err
		}
		page := PlacementPage{UZIs: uzis, Conflicts: map[string]*Conflict{}, Placements: map[string]Placement{}, Now: now}
		var pageMoves []Move
		for _, u := range uzis {
			res, ok := best[threepid.ThreePID{Medium: "uzi", Address: u}]
			page.Conflicts[u] = nil
			if ok && res.conflict {
				// A conflict moves nobody: the placement stays as it was until it is resolved.
				page.Conflicts[u] = &Conflict{Medium: threepid.MediumUZI, Address: u, Claims: toClaims(res, names),
					FirstSeen: time.UnixMilli(now).UTC()}
				continue
			}
			p, exists := cur[u]
			next, changed, mv := place(u, res.best, ok, fromStored(p), exists, now)
			if mv != nil {
				pageMoves = append(pageMoves, *mv)
			}
			if changed {
				page.Placements[u] = next.stored()
			}
		}
		newConflicts, resolved, err := x.db.StorePlacements(ctx, page)
		if err != nil {
			return moves, fmt.Errorf("store placements: %w", err)
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
	if err := x.db.EndPlacementPass(ctx, now); err != nil {
		return moves, fmt.Errorf("record placement pass: %w", err)
	}
	return moves, nil
}

func fromStored(p Placement) placement {
	return placement{homeserver: p.Homeserver, mxid: p.MXID, prevHomeserver: p.PrevHomeserver, prevMXID: p.PrevMXID, since: p.Since}
}

func (p placement) stored() Placement {
	return Placement{Homeserver: p.homeserver, MXID: p.mxid, PrevHomeserver: p.prevHomeserver, PrevMXID: p.prevMXID, Since: p.since}
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
