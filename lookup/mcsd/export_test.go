package mcsd

import "context"

// SyncAllUnleased runs one sync without the lease, for tests of runs that overlap anyway.
func (s *Syncer) SyncAllUnleased(ctx context.Context) ([]DirectoryReport, error) {
	return s.syncAll(ctx)
}
