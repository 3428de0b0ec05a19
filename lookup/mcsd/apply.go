package mcsd

import "context"

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

// applyBatch writes one batch of versions of resources of type typ in one short transaction and
// returns how many changed the index and how many of those were deletes.
func (x *Index) applyBatch(ctx context.Context, dir, typ string, run int64, full bool, batch []Resource) (applied, deleted int, err error) {
	batch = dedupe(batch)
	if len(batch) == 0 {
		return 0, 0, nil
	}
	applied, deleted, err = x.db.ApplyResources(ctx, dir, typ, run, full, batch)
	if err == nil {
		x.written.Add(int64(applied))
	}
	return applied, deleted, err
}
