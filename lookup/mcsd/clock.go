package mcsd

import (
	"context"
	"fmt"
	"time"
)

// maxClockSkew is how far a directory's meta.lastUpdated may lie ahead of the time of fetching
// before it counts as that time.
const maxClockSkew = time.Minute

// fetchedAt is the time that counts for a version whose meta.lastUpdated lies in the future: the
// time it was first fetched. An attacker's lastUpdated of 2099 then neither wins over what is
// published later nor blocks the resource's own later versions and deletes; the same version
// served again (a history's _since is inclusive) keeps the time it got the first time.
func (x *Index) fetchedAt(ctx context.Context, dir string, r Resource) (int64, error) {
	now := time.Now().UnixMilli()
	if r.VersionID == "" || r.Deleted {
		return now, nil
	}
	vid, ts, ok, err := x.db.StoredVersion(ctx, dir, r.Type, r.ID)
	switch {
	case err != nil:
		return 0, fmt.Errorf("read stored version of %s/%s: %w", r.Type, r.ID, err)
	case ok && vid == r.VersionID && ts <= now:
		return ts, nil
	}
	return now, nil
}
