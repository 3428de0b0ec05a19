package audit

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"
)

// Appender appends records that describe no stored change.
type Appender interface {
	AppendAudit(ctx context.Context, recs ...Record) error
}

// Aggregator records lookups and refused attempts without a database write per request:
// it counts them per caller and interval in memory and writes one record per caller and
// interval in the background. A crash loses at most the current interval.
type Aggregator struct {
	store    Appender
	interval time.Duration
	log      *slog.Logger
	// maxKeys bounds memory: callers beyond it are counted under one overflow key.
	maxKeys int

	mu      sync.Mutex
	lookups map[aggKey]*aggregate
	refused map[aggKey]*aggregate
}

type aggKey struct {
	action   Action // refused attempts: a count names one kind of attempt
	actor    Agent
	source   string
	resource string
}

type aggregate struct {
	first      Record
	count      int64
	found      int64
	media      map[string]struct{}
	written    bool // refused: the first attempt was written at once
	suppressed int64
}

// NewAggregator returns an aggregator flushing every interval (at least a second).
func NewAggregator(store Appender, interval time.Duration, log *slog.Logger) *Aggregator {
	if interval < time.Second {
		interval = time.Second
	}
	return &Aggregator{store: store, interval: interval, log: log, maxKeys: 10000,
		lookups: map[aggKey]*aggregate{}, refused: map[aggKey]*aggregate{}}
}

func (a *Aggregator) key(m map[aggKey]*aggregate, k aggKey) aggKey {
	if _, ok := m[k]; ok || len(m) < a.maxKeys {
		return k
	}
	return aggKey{action: k.action, actor: Agent{Kind: AgentAnonymous, ID: "(too many callers)"}, resource: k.resource}
}

// Lookup counts one lookup request: addresses asked, found answered, in media (such as
// "email", "uzi", or "sha256" for hashed lookups, where the medium is not known).
func (a *Aggregator) Lookup(s *Scope, media []string, addresses, found int) {
	k := aggKey{actor: s.Actor, source: s.Source, resource: s.Resource}
	a.mu.Lock()
	defer a.mu.Unlock()
	k = a.key(a.lookups, k)
	g := a.lookups[k]
	if g == nil {
		g = &aggregate{first: s.Record(ActionLookup, OutcomeSuccess), media: map[string]struct{}{}}
		g.first.Actor, g.first.Source, g.first.Resource = k.actor, k.source, k.resource
		g.first.At = time.Now()
		a.lookups[k] = g
	}
	g.count += int64(addresses)
	g.found += int64(found)
	for _, m := range media {
		if len(g.media) < 16 {
			g.media[m] = struct{}{}
		}
	}
}

// Refused records a refused attempt. The first attempt of an action by a caller from a source
// in an interval is written at once (so a single guess leaves a trace even in a crash); later
// ones are counted and written as one record when the interval ends.
func (a *Aggregator) Refused(ctx context.Context, rec Record) error {
	k := aggKey{action: rec.Action, actor: rec.Actor, source: rec.Source}
	a.mu.Lock()
	k = a.key(a.refused, k)
	g := a.refused[k]
	if g != nil {
		g.suppressed++
		// The counted record names the latest attempt; the first has its own.
		g.first.Resource, g.first.Subject, g.first.RequestID, g.first.Detail = rec.Resource, rec.Subject, rec.RequestID, rec.Detail
		a.mu.Unlock()
		return nil
	}
	a.refused[k] = &aggregate{first: rec, written: true}
	a.mu.Unlock()
	rec.Count = 1
	return a.store.AppendAudit(ctx, rec)
}

// Run flushes every interval until ctx ends, then once more.
func (a *Aggregator) Run(ctx context.Context) {
	t := time.NewTicker(a.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			a.Flush(fctx)
			cancel()
			return
		case <-t.C:
			a.Flush(ctx)
		}
	}
}

// Flush writes the counts of the interval that ends now. When the write fails they are
// kept and merged into the next interval.
func (a *Aggregator) Flush(ctx context.Context) error {
	a.mu.Lock()
	lookups, refused := a.lookups, a.refused
	a.lookups, a.refused = map[aggKey]*aggregate{}, map[aggKey]*aggregate{}
	a.mu.Unlock()
	var recs []Record
	for _, g := range lookups {
		r := g.first
		r.Count, r.Found = g.count, g.found
		media := make([]string, 0, len(g.media))
		for m := range g.media {
			media = append(media, m)
		}
		slices.Sort(media)
		r.Detail = "media=" + strings.Join(media, ",") + " interval=" + a.interval.String()
		recs = append(recs, r)
	}
	for _, g := range refused {
		if g.suppressed == 0 {
			continue
		}
		r := g.first
		r.At = time.Now()
		r.Count = g.suppressed
		r.Detail = "further refused attempts in this interval, the latest shown; the first is recorded separately. " + r.Detail
		recs = append(recs, r)
	}
	if len(recs) == 0 {
		return nil
	}
	slices.SortFunc(recs, func(x, y Record) int { return x.At.Compare(y.At) })
	if err := a.store.AppendAudit(ctx, recs...); err != nil {
		a.log.Error("audit: aggregated records not written, keeping them for the next interval", "records", len(recs), "err", err)
		a.mu.Lock()
		for k, g := range lookups {
			if cur := a.lookups[k]; cur != nil {
				cur.count += g.count
				cur.found += g.found
				for m := range g.media {
					cur.media[m] = struct{}{}
				}
			} else {
				a.lookups[k] = g
			}
		}
		for k, g := range refused {
			if cur := a.refused[k]; cur != nil {
				cur.suppressed += g.suppressed
			} else if g.suppressed > 0 {
				a.refused[k] = g
			}
		}
		a.mu.Unlock()
		return err
	}
	return nil
}
