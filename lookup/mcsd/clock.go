package mcsd

import (
	"context"
	"database/sql"
	"errors"
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
func (x *Index) fetchedAt(ctx context.Context, dir string, r row) (int64, error) {
	now := time.Now().UnixMilli()
	if r.VersionID == "" || r.Deleted {
		return now, nil
	}
	var vid string
	var ts int64
	err := x.db.QueryRowContext(ctx, `SELECT version_id, version_ts FROM mcsd_resources WHERE dir = $1 AND type = $2 AND id = $3`,
		dir, r.Type, r.ID).Scan(&vid, &ts)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return now, nil
	case err != nil:
		return 0, fmt.Errorf("read stored version of %s/%s: %w", r.Type, r.ID, err)
	case vid == r.VersionID && ts <= now:
		return ts, nil
	}
	return now, nil
}
