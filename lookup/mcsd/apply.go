package mcsd

import "context"

// flushAt is how many fetched versions a directory's sync holds before writing them in a
// transaction of their own; fewer wait for the directory's finish transaction, so that a small
// directory is written in one transaction, and memory stays bounded for a large one.
const flushAt = 1000

// pending holds the versions a directory's sync fetched and has not written yet, by type in
// the order fetched.
type pending struct {
	batches []Batch
	n       int
}

func (p *pending) add(typ string, full bool, r Resource) {
	if k := len(p.batches); k == 0 || p.batches[k-1].Type != typ || p.batches[k-1].Full != full {
		p.batches = append(p.batches, Batch{Type: typ, Full: full})
	}
	b := &p.batches[len(p.batches)-1]
	b.Resources = append(b.Resources, r)
	p.n++
}

// take returns the pending batches, one version per id each, and empties p.
func (p *pending) take() []Batch {
	out := p.batches
	for i := range out {
		out[i].Resources = dedupe(out[i].Resources)
	}
	p.batches, p.n = nil, 0
	return out
}

// dedupe keeps one version per id of a batch by the rule of the store's upsert (FinishInput.Run),
// because one statement may not touch a row twice.
func dedupe(rows []Resource) []Resource {
	idx := make(map[string]int, len(rows))
	out := rows[:0:0]
	for _, r := range rows {
		if i, ok := idx[r.ID]; ok {
			if r.TS > out[i].TS {
				out[i] = r
			}
			continue
		}
		idx[r.ID] = len(out)
		out = append(out, r)
	}
	return out
}

// applyBatches writes batches of versions in one short transaction and returns how many changed
// the index and how many of those were deletes.
func (x *Index) applyBatches(ctx context.Context, dir string, run int64, batches []Batch) (applied, deleted int, err error) {
	if len(batches) == 0 {
		return 0, 0, nil
	}
	applied, deleted, err = x.db.ApplyResources(ctx, dir, run, batches)
	if err == nil {
		x.written.Add(int64(applied))
	}
	return applied, deleted, err
}
