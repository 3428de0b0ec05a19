package app

import "context"

// RunWorkers runs a replica's background work until ctx ends, for tests that start a second
// replica without its listeners.
func (a *App) RunWorkers(ctx context.Context) {
	stop := make(chan struct{})
	context.AfterFunc(ctx, func() { close(stop) })
	a.runWorkers(lifetimes{jobs: ctx, lookups: ctx, queues: ctx, stop: stop})
}
