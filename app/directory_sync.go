package app

import (
	"context"
	"errors"
	"sync"

	"github.com/ozo-platform/ozo-identity/lookup/mcsd"
)

// adminSync runs the directory syncs the admin API asks for, in the background and under the
// sync lease, so that one never overlaps serve's schedule, a replica's or the CLI's.
type adminSync struct {
	mu  sync.Mutex
	app *App
	ctx context.Context // the workers' lifetime, from runWorkers
}

func (s *adminSync) setContext(ctx context.Context) {
	s.mu.Lock()
	s.ctx = ctx
	s.mu.Unlock()
}

// StartSync implements api.DirectorySyncer.
func (s *adminSync) StartSync(ctx context.Context, full bool, uras []string, allowMassDelete bool) (string, error) {
	s.mu.Lock()
	a, runCtx := s.app, s.ctx
	s.mu.Unlock()
	if a == nil || runCtx == nil || runCtx.Err() != nil {
		return "", errors.New("the server is not running its background work")
	}
	syncer := a.NewSyncer(func(o *mcsd.Options) {
		o.IgnoreBackoff = true // an operator asked for it now
		o.Full, o.FullOnly, o.AllowMassDelete = full, uras, allowMassDelete
	})
	l, err := syncer.Lease(ctx)
	if err != nil {
		return "", err
	}
	a.workers.Go(func() {
		if _, err := a.logReports(syncer.SyncHeld(runCtx, l)); err != nil && runCtx.Err() == nil {
			a.log.Warn("directory sync asked for by the admin API", "err", err)
		}
	})
	return l.Holder(), nil
}
