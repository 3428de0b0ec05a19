package identity

import (
	"context"
	"errors"
	"github.com/ozo-platform/ozo-identity/internal/matrixid"
	"time"

	"github.com/ozo-platform/ozo-identity/audit"
	"github.com/ozo-platform/ozo-identity/threepid"
)

// ImportEntry is one binding of a bulk import (the CLI's file, the admin batch endpoint).
type ImportEntry struct {
	Medium  string `json:"medium"`
	Address string `json:"address"`
	MXID    string `json:"mxid"`
}

// ImportError says why the entry at Index was not imported.
type ImportError struct {
	Index   int    `json:"index"`
	Code    string `json:"errcode"`
	Message string `json:"error"`
}

// ImportReport accounts for every entry of a batch: Created + Updated + Unchanged + Superseded +
// len(Invalid) is the number of entries.
type ImportReport struct {
	ImportResult
	// Superseded entries were followed by a later entry for the same 3PID, which won.
	Superseded int
	Invalid    []ImportError
}

// Add sums reports of consecutive batches.
func (r *ImportReport) Add(o ImportReport) {
	r.Created += o.Created
	r.Updated += o.Updated
	r.Unchanged += o.Unchanged
	r.Superseded += o.Superseded
	r.Invalid = append(r.Invalid, o.Invalid...)
}

// ImportBindings binds entries in one transaction with the rules of AdminBind: the 3PID is
// normalised, a 3PID bound to another MXID is rebound (the later entry wins, as a second bind
// would), one already bound to the same MXID is left as it is, so re-importing changes nothing.
// Invalid entries are reported and skipped; with strict, any invalid entry imports nothing.
func (s *Service) ImportBindings(ctx context.Context, entries []ImportEntry, source string, strict bool) (ImportReport, error) {
	var rep ImportReport
	now := s.now().UTC().Truncate(time.Millisecond)
	items := make([]ImportBinding, 0, len(entries))
	for i, e := range entries {
		tp, err := threepid.Normalize(e.Medium, e.Address)
		if err == nil && !matrixid.ValidUserID(e.MXID) {
			err = errorf(CodeInvalidParam, "mxid is not a Matrix user ID")
		}
		if err != nil {
			var ie *Error
			if !errors.As(normalizeErr(err), &ie) {
				return rep, err
			}
			rep.Invalid = append(rep.Invalid, ImportError{Index: i, Code: ie.Code, Message: ie.Message})
			continue
		}
		items = append(items, ImportBinding{
			Binding: Binding{ThreePID: tp, MXID: e.MXID, CreatedAt: now, NotBefore: now,
				NotAfter: now.Add(bindingLifetime), Source: source},
		})
	}
	if len(items) == 0 || strict && len(rep.Invalid) > 0 {
		return rep, nil
	}
	queued := false
	scope := audit.ScopeFrom(ctx)
	var res ImportResult
	var changed []Binding
	var used string
	err := s.withPepper(ctx, func(pepper string) error {
		for i := range items {
			tp := items[i].Binding.ThreePID
			items[i].Hashes, items[i].FoldedHashes = threepid.LookupHashes(tp, pepper), threepid.FoldedLookupHashes(tp, pepper)
			items[i].Pepper = pepper
		}
		var err error
		used = pepper
		res, changed, err = s.importItems(ctx, items, source, scope, &queued)
		return err
	})
	if err != nil {
		return rep, err
	}
	if res.Created+res.Updated > 0 {
		s.wroteImport(ctx, res.Seq, used, items, changed)
	}
	// Not MarkRecorded: the caller's record of the whole batch (what it did) follows.
	if queued {
		s.Wake()
	}
	rep.ImportResult = res
	rep.Superseded = len(items) - res.Created - res.Updated - res.Unchanged
	return rep, nil
}

// importItems stores items in one transaction, queueing the onbinds of pending invites, and
// returns the bindings it created or rebound.
func (s *Service) importItems(ctx context.Context, items []ImportBinding, source string, scope *audit.Scope, queued *bool) (ImportResult, []Binding, error) {
	var changed []Binding
	res, err := s.store.ImportBindings(ctx, items, func(b Binding, invites []Invite) ([]OnBindDelivery, error) {
		assoc, err := s.association(b)
		if err != nil {
			return nil, err
		}
		ds, err := s.onBindDeliveries(b, assoc, invites)
		if err != nil {
			return nil, err
		}
		*queued = *queued || len(ds) > 0
		return ds, nil
	}, func(b Binding, delivered []Invite) []audit.Record {
		changed = append(changed, b)
		return bindRecords(scope, b, delivered, "source="+source+" import")
	})
	return res, changed, err
}

// wroteImport puts an import's changed bindings in the lookup index. Their exact hashes answer
// their MXIDs, which the mirror takes from here instead of reading back thousands of rows just
// written; a folded hash's answer depends on other bindings, so then it catches up as usual.
func (s *Service) wroteImport(ctx context.Context, seq int64, pepper string, items []ImportBinding, changed []Binding) {
	if s.mirror == nil {
		return
	}
	byThreePID := make(map[threepid.ThreePID]*ImportBinding, len(items))
	for i := range items {
		byThreePID[items[i].Binding.ThreePID] = &items[i]
	}
	answers := map[string]string{}
	for _, b := range changed {
		it := byThreePID[b.ThreePID]
		if it == nil || len(it.FoldedHashes) > 0 {
			s.written(ctx)
			return
		}
		for _, h := range it.Hashes {
			answers[h] = b.MXID
		}
	}
	ctx, cancel := detached(ctx)
	defer cancel()
	if err := s.mirror.Wrote(ctx, seq, pepper, answers); err != nil {
		s.log.Warn("lookup index behind a write; lookups go to the database until it caught up", "err", err)
	}
}
