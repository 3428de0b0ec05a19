package mcsd

import (
	"context"
	"fmt"
)

// Rejection says why a resource of a directory does not count.
type Rejection struct {
	Type, ID string
	Reason   string
}

// deleteGuard bounds what one sync may delete of a directory's live resources of one type.
type deleteGuard struct {
	share float64
	min   int
	off   bool
}

// MassDeleteError says a sync stopped before deleting most of a directory's resources of a
// type in one go; nothing of that sync's deletions, watermarks or derivation was stored.
type MassDeleteError struct {
	Type       string
	Delete, Of int
	Share      float64
}

func (e *MassDeleteError) Error() string {
	return fmt.Sprintf("would delete %d of %d %s resources in one sync (more than %.0f%%); kept them all",
		e.Delete, e.Of, e.Type, e.Share*100)
}

// check is the guard as FinishInput.Guard: it refuses a sync that deletes more than min and
// more than share of the live resources of one of the types.
func (g deleteGuard) check(types []string) func(before, after map[string]int) error {
	if g.off {
		return nil
	}
	return func(before, after map[string]int) error {
		for _, typ := range types {
			gone := before[typ] - after[typ]
			if gone > g.min && float64(gone) > g.share*float64(before[typ]) {
				return &MassDeleteError{Type: typ, Delete: gone, Of: before[typ], Share: g.share}
			}
		}
		return nil
	}
}

// finish ends a directory's sync in one transaction of the store (FinishInput): the versions
// not written yet, tombstones, watermarks, sweeps, the mass-delete guard, the attempt and, if
// judge is set and anything changed, the directory's validation and derivation.
func (x *Index) finish(ctx context.Context, d directory, run int64, apply []Batch, done []TypeResult, judge, changed bool, g deleteGuard, max int, a *Attempt) (FinishResult, error) {
	if judge && changed {
		if err := x.analyzeIfStale(ctx); err != nil {
			return FinishResult{}, err
		}
	}
	res, err := x.db.FinishDirectory(ctx, FinishInput{Dir: d.id, TrustAll: d.kind == "lrza", Run: run, Apply: apply, Done: done,
		Judge: judge, Changed: changed, MaxRejections: max, Now: x.now().UnixMilli(), Guard: g.check(d.types()), Attempt: a})
	if err != nil {
		return FinishResult{}, err
	}
	x.written.Add(int64(res.Applied))
	return res, nil
}
