package mcsd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"
)

// Options configure a Syncer. Zero values take the defaults in brackets.
type Options struct {
	// LRZA is the base URL of the LRZA's mCSD directory; provider directories are discovered
	// from it. Empty: only Directories are synced.
	LRZA string
	// Directories are provider directories configured by the operator, each authoritative for
	// the URAs given (anti-spoofing still applies). Like LRZA, they may be plain http URLs.
	Directories []StaticDirectory
	// AllowHTTP lists base URLs of directories the LRZA lists that may be fetched over plain
	// http. Any other http directory the LRZA lists is refused and reported [none].
	AllowHTTP []string
	// Client makes the HTTP requests [a client with no overall timeout; RequestTimeout applies].
	Client *http.Client
	// Concurrency bounds how many directories sync at once [8].
	Concurrency int
	// RequestTimeout bounds one HTTP request including reading its body [30s].
	RequestTimeout time.Duration
	// DirectoryTimeout bounds one directory's sync in one run [10m].
	DirectoryTimeout time.Duration
	// BackoffBase and BackoffMax: after n failures in a row a directory waits
	// min(BackoffBase·2^(n-1), BackoffMax) before the next attempt [1m, 6h].
	BackoffBase, BackoffMax time.Duration
	// IgnoreBackoff attempts every directory now, as an operator's manual sync does.
	IgnoreBackoff bool
	// Full re-reads the whole history of the selected directories, ignoring their watermarks
	// and backoff: FullOnly lists URAs, base URLs or "lrza"; empty selects every directory.
	// The old rows keep resolving until the new snapshot is complete; then one transaction
	// per directory removes what it lacks and derives the candidates again.
	Full     bool
	FullOnly []string
	// MaxDeleteShare and MaxDeleteMin guard against a directory that lost its data (or a
	// broken sync): deleting more than MaxDeleteMin and more than MaxDeleteShare of a
	// directory's live resources of one type in one sync stops that directory with nothing
	// deleted and reports it [0.5, 10]. AllowMassDelete lets such a sync through.
	MaxDeleteShare  float64
	MaxDeleteMin    int
	AllowMassDelete bool
	// Wait for a sync that holds the lease (another process, replica or run) instead of
	// returning ErrSyncRunning; OnWait, if set, hears who holds it before the wait starts.
	Wait   bool
	OnWait func(*LeaseHeldError)
	// LeaseTTL is how long the sync lease outlives its holder's last renewal [1m]; a holder
	// that dies keeps others out that long.
	LeaseTTL time.Duration
	// PageSize is the _count asked for [100].
	PageSize int
	// MaxPageBytes bounds one history page [32 MiB]; MaxPages bounds the pages of one resource
	// type in one run [100000], against servers that page forever.
	MaxPageBytes int64
	MaxPages     int
	// MaxRejections bounds the rejections listed in one report [100]; all are counted.
	MaxRejections int
	// Progress, if set, hears about every directory as it starts, after every page and when it
	// is done. It is called from several goroutines at once.
	Progress func(Progress)
	// OnMove, if set, hears about every practitioner mCSD moved to another homeserver.
	OnMove func(context.Context, Move)
	Logger *slog.Logger
}

// StaticDirectory is a provider directory configured by the operator.
type StaticDirectory struct {
	BaseURL string
	URAs    []string
}

// Progress is one step of a sync, for progress bars.
type Progress struct {
	Directory string // base URL
	Kind      string // "lrza" or "provider"
	Total     int    // directories in this phase of the run
	Type      string // resource type being fetched, "" before the first and when done
	Fetched   int    // history entries received so far
	Done      bool
	Report    *DirectoryReport // when Done
}

// DirectoryReport is what one sync did with one directory.
type DirectoryReport struct {
	Directory  string // base URL
	Kind       string // "lrza" or "provider"
	URAs       []string
	Fetched    int // history entries received
	Applied    int // entries that changed the index, deletes included
	Deleted    int
	Rejected   int         // entries unusable plus resources that do not count, among those this run touched
	Rejections []Rejection // the first MaxRejections of them, with the reason
	Skipped    string      // why the directory was not attempted (backoff), "" when it was
	RetryAt    time.Time   // when a skipped directory is attempted again
	LastError  string      // the failure a skipped directory is backing off from
	Removed    bool        // no longer listed: its resources were removed from the index
	Refused    string      // why a directory the LRZA lists is not synced, such as plain http
	Err        error       // why the sync stopped; what it applied before stays indexed
	Started    time.Time
	Duration   time.Duration
}

// Syncer keeps the index up to date with the directories (IHE ITI-91 Update Client).
type Syncer struct {
	idx  *Index
	opts Options
	log  *slog.Logger
	mu   sync.Mutex // one run at a time per Syncer
}

// LeaseName is the lease every directory sync of one database holds.
const LeaseName = "mcsd-sync"

// ErrSyncRunning says another sync holds the lease; the error wrapping it names the holder.
var ErrSyncRunning = errors.New("another directory sync is running")

// NewSyncer returns a syncer writing to idx.
func NewSyncer(idx *Index, opts Options) *Syncer {
	if opts.Client == nil {
		opts.Client = &http.Client{}
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = 8
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = 30 * time.Second
	}
	if opts.DirectoryTimeout <= 0 {
		opts.DirectoryTimeout = 10 * time.Minute
	}
	if opts.BackoffBase <= 0 {
		opts.BackoffBase = time.Minute
	}
	if opts.BackoffMax <= 0 {
		opts.BackoffMax = 6 * time.Hour
	}
	if opts.PageSize <= 0 {
		opts.PageSize = 100
	}
	if opts.MaxPageBytes <= 0 {
		opts.MaxPageBytes = 32 << 20
	}
	if opts.MaxPages <= 0 {
		opts.MaxPages = 100000
	}
	if opts.MaxRejections <= 0 {
		opts.MaxRejections = 100
	}
	if opts.MaxDeleteShare <= 0 {
		opts.MaxDeleteShare = 0.5
	}
	if opts.MaxDeleteMin <= 0 {
		opts.MaxDeleteMin = 10
	}
	if opts.LeaseTTL <= 0 {
		opts.LeaseTTL = time.Minute
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Syncer{idx: idx, opts: opts, log: log}
}

func (s *Syncer) backoff(failures int) time.Duration {
	d := s.opts.BackoffBase
	for i := 1; i < failures && d < s.opts.BackoffMax; i++ {
		d *= 2
	}
	return min(d, s.opts.BackoffMax)
}

// SyncAll takes the sync lease (waiting for it with Options.Wait, else failing with
// ErrSyncRunning), runs one sync under it and releases it.
func (s *Syncer) SyncAll(ctx context.Context) ([]DirectoryReport, error) {
	l, err := s.Lease(ctx)
	if err != nil {
		return nil, err
	}
	return s.SyncHeld(ctx, l)
}

// Lease takes the lease of the directory sync of this database without syncing, so that a caller
// can answer before the sync runs; SyncHeld then runs it. Without Options.Wait, a lease held
// elsewhere is an error wrapping ErrSyncRunning and a *LeaseHeldError.
func (s *Syncer) Lease(ctx context.Context) (Lease, error) {
	holder := NewHolder()
	l, err := s.idx.db.AcquireLease(ctx, LeaseName, holder, s.opts.LeaseTTL)
	var held *LeaseHeldError
	if errors.As(err, &held) && s.opts.Wait {
		if s.opts.OnWait != nil {
			s.opts.OnWait(held)
		}
		l, err = s.idx.db.WaitLease(ctx, LeaseName, holder, s.opts.LeaseTTL, min(time.Second, s.opts.LeaseTTL/4))
	}
	if errors.As(err, &held) {
		return nil, fmt.Errorf("%w: %w", ErrSyncRunning, err)
	}
	return l, err
}

// SyncHeld runs one sync under l, a lease from Lease, renewing it, and releases it after. A
// lease lost midway (its holder stalled past the ttl) stops the sync like a cancellation.
func (s *Syncer) SyncHeld(ctx context.Context, l Lease) ([]DirectoryReport, error) {
	var reports []DirectoryReport
	err := l.Hold(ctx, func(ctx context.Context) error {
		var err error
		reports, err = s.syncAll(ctx)
		if err != nil && context.Cause(ctx) != nil && ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", err, context.Cause(ctx))
		}
		return err
	})
	return reports, err
}

// syncAll runs one sync: the LRZA first, then the directories it lists and the configured ones,
// at most Concurrency at a time, then homeserver localisation. A failing directory is reported,
// backs off and keeps what was indexed; the error is for failures of the index itself.
func (s *Syncer) syncAll(ctx context.Context) ([]DirectoryReport, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	run := time.Now().UnixNano()
	var reports []DirectoryReport

	discovered := map[string][]string{}
	discoveryOK := false
	if s.opts.LRZA != "" {
		base := normalizeBase(s.opts.LRZA)
		id, err := s.idx.ensureDirectory(ctx, base, "lrza", "root")
		if err != nil {
			return nil, err
		}
		lrzas, err := s.idx.directories(ctx, "lrza")
		if err != nil {
			return nil, err
		}
		for _, d := range lrzas {
			if d.id != id {
				if err := s.idx.deactivate(ctx, d.id); err != nil {
					return nil, err
				}
				continue
			}
			rep := s.syncDirectory(ctx, d, run, 1)
			reports = append(reports, rep)
			if err := s.idx.markProvidersOf(ctx, id, run); err != nil {
				return reports, err
			}
			// Discovery only follows an LRZA that synced and validated; otherwise the
			// directories found last time stay as they are.
			if rep.Err == nil && rep.Skipped == "" {
				if discovered, err = s.idx.discovered(ctx, id); err != nil {
					return reports, err
				}
				discoveryOK = true
			}
		}
	} else {
		discoveryOK = true
		lrzas, err := s.idx.directories(ctx, "lrza")
		if err != nil {
			return nil, err
		}
		for _, d := range lrzas {
			if err := s.idx.deactivate(ctx, d.id); err != nil {
				return nil, err
			}
		}
	}

	// The provider directories: what the LRZA lists plus what the operator configured.
	want := make(map[string][]string)
	origin := make(map[string]string)
	refused := make(map[string]string)
	for base, uras := range discovered {
		if why := s.refuse(base); why != "" {
			refused[base] = why
			continue
		}
		want[base] = append(want[base], uras...)
		origin[base] = "lrza"
	}
	for _, sd := range s.opts.Directories {
		base := normalizeBase(sd.BaseURL)
		want[base] = append(want[base], sd.URAs...)
		if origin[base] == "lrza" {
			origin[base] = "lrza+static"
		} else {
			origin[base] = "static"
		}
	}
	existing, err := s.idx.directories(ctx, "provider")
	if err != nil {
		return reports, err
	}
	known := make(map[string]directory, len(existing))
	for _, d := range existing {
		known[d.baseURL] = d
		if _, ok := want[d.baseURL]; ok {
			continue
		}
		if !discoveryOK && s.refuse(d.baseURL) == "" {
			// The LRZA could not be read: keep what it listed before, with its URAs.
			want[d.baseURL] = d.uras
			origin[d.baseURL] = d.origin
			continue
		}
		if err := s.idx.deactivate(ctx, d.id); err != nil {
			return reports, err
		}
		if refused[d.baseURL] != "" {
			continue // reported as refused below
		}
		reports = append(reports, DirectoryReport{Directory: d.baseURL, Kind: "provider", URAs: d.uras, Removed: true})
		s.log.InfoContext(ctx, "mCSD directory no longer listed; removed from the index", "directory", d.baseURL)
	}
	for _, base := range slices.Sorted(maps.Keys(refused)) {
		uras := slices.Compact(slices.Sorted(slices.Values(discovered[base])))
		isNew, err := s.idx.refuseDirectory(ctx, base, refused[base])
		if err != nil {
			return reports, err
		}
		reports = append(reports, DirectoryReport{Directory: base, Kind: "provider", URAs: uras, Refused: refused[base]})
		if isNew {
			s.log.WarnContext(ctx, "mCSD directory listed by the LRZA refused", "directory", base, "uras", uras, "reason", refused[base])
		}
	}
	for base, uras := range want {
		uras = slices.Compact(slices.Sorted(slices.Values(uras)))
		if d, ok := known[base]; ok && d.origin == origin[base] && slices.Equal(d.uras, uras) {
			continue
		}
		id, err := s.idx.ensureDirectory(ctx, base, "provider", origin[base])
		if err != nil {
			return reports, err
		}
		if err := s.idx.setURAs(ctx, id, uras); err != nil {
			return reports, err
		}
	}
	dirs, err := s.idx.directories(ctx, "provider")
	if err != nil {
		return reports, err
	}

	results := make([]DirectoryReport, len(dirs))
	work := make(chan int)
	var wg sync.WaitGroup
	for range min(s.opts.Concurrency, max(len(dirs), 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				results[i] = s.syncDirectory(ctx, dirs[i], run, len(dirs))
			}
		}()
	}
	for i := range dirs {
		select {
		case work <- i:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(work)
	wg.Wait()
	for _, r := range results {
		if r.Directory != "" {
			reports = append(reports, r)
		}
	}

	onMove := func(m Move) {
		s.log.InfoContext(ctx, "practitioner moved homeserver", "uzi", m.UZI, "from", m.From, "to", m.To)
		if s.opts.OnMove != nil {
			s.opts.OnMove(ctx, m)
		}
	}
	hooks := placementHooks{onMove: onMove,
		onConflict: func(c Conflict) {
			s.log.WarnContext(ctx, "conflict: care providers publish one UZI number with different Matrix users (or, without users, homeservers); it resolves to none of them until they agree",
				"uzi", c.Address, "claims", claimsAttr(c.Claims))
		},
		onResolved: func(c Conflict) {
			s.log.InfoContext(ctx, "conflict over a UZI number resolved", "uzi", c.Address)
		},
	}
	if _, err := s.idx.updatePlacements(ctx, hooks); err != nil {
		return reports, err
	}
	return reports, ctx.Err()
}

// fullSelected says whether Options.Full re-reads d.
func (s *Syncer) fullSelected(d directory) bool {
	if !s.opts.Full {
		return false
	}
	if len(s.opts.FullOnly) == 0 {
		return true
	}
	for _, sel := range s.opts.FullOnly {
		if sel == "lrza" && d.kind == "lrza" || normalizeBase(sel) == d.baseURL || slices.Contains(d.uras, sel) {
			return true
		}
	}
	return false
}

// refuse says why a provider directory the LRZA lists must not be fetched, "" when it may. The
// LRZA is a third party: plain http would let anyone on the path rewrite what a care provider
// publishes, so only the operator can allow it (Options.AllowHTTP, or configuring the directory).
func (s *Syncer) refuse(base string) string {
	u, err := url.Parse(base)
	if err != nil || u.Host == "" {
		return "not an absolute URL"
	}
	switch strings.ToLower(u.Scheme) {
	case "https":
		return ""
	case "http":
		for _, a := range s.opts.AllowHTTP {
			if normalizeBase(a) == base {
				return ""
			}
		}
		for _, d := range s.opts.Directories {
			if normalizeBase(d.BaseURL) == base {
				return ""
			}
		}
		return "plain http: a directory the LRZA lists must use https unless it is in directory.allow_http_urls"
	default:
		return "not an https URL"
	}
}

// syncDirectory fetches every resource type's history of one directory, then validates it.
func (s *Syncer) syncDirectory(ctx context.Context, d directory, run int64, total int) DirectoryReport {
	rep := DirectoryReport{Directory: d.baseURL, Kind: d.kind, URAs: d.uras, Started: time.Now()}
	progress := func(p Progress) {
		if s.opts.Progress != nil {
			p.Directory, p.Kind, p.Total = d.baseURL, d.kind, total
			s.opts.Progress(p)
		}
	}
	full := s.fullSelected(d)
	if !s.opts.IgnoreBackoff && !full && d.nextAttempt > s.idx.now().UnixMilli() {
		rep.Skipped = fmt.Sprintf("backing off after %d failed attempt(s) in a row", d.failures)
		rep.RetryAt = time.UnixMilli(d.nextAttempt).UTC()
		rep.LastError = d.lastError
		progress(Progress{Done: true, Report: &rep})
		return rep
	}
	progress(Progress{})
	dctx, cancel := context.WithTimeout(ctx, s.opts.DirectoryTimeout)
	defer cancel()

	marks, err := s.idx.watermarks(dctx, d.id)
	if full {
		// The stored watermarks are replaced when the new snapshot is stored.
		marks = map[string]string{}
	}
	var done []TypeResult
	var pend pending
	if err == nil {
		for _, typ := range d.types() {
			var tr TypeResult
			if tr, err = s.syncType(dctx, d, typ, marks[typ], run, &pend, &rep, progress); err != nil {
				break
			}
			done = append(done, tr)
		}
	}
	// One transaction stores the versions not written yet, what the completed types leave
	// (deletes, watermarks, sweeps) and the outcome of the attempt, and, after a complete fetch,
	// judges the directory: a half-read directory is judged on its last complete state; what was
	// applied stays and is judged next time. Nothing changed, nothing judged.
	fctx := dctx
	if err != nil {
		fctx = context.WithoutCancel(ctx) // keep the types that completed before a time-out
	}
	if err != nil && ctx.Err() == nil && dctx.Err() != nil {
		err = fmt.Errorf("the whole directory took longer than %s; the types read completely are kept", s.opts.DirectoryTimeout)
	}
	g := deleteGuard{share: s.opts.MaxDeleteShare, min: s.opts.MaxDeleteMin, off: s.opts.AllowMassDelete}
	apply := pend.take()
	attempt := s.idx.attempt(d, rep.Started, err, s.backoff)
	res, ferr := s.idx.finish(fctx, d, run, apply, done, err == nil, d.dirty || rep.Applied > 0 || len(apply) > 0, g, s.opts.MaxRejections, &attempt)
	rep.Applied += res.Applied + res.Swept
	rep.Deleted += res.Deleted + res.Swept
	rep.Rejected += res.Rejected
	for _, r := range res.Rejections {
		if len(rep.Rejections) < s.opts.MaxRejections {
			rep.Rejections = append(rep.Rejections, r)
		}
	}
	if err == nil {
		err = ferr
	}
	rep.Err = err
	rep.Duration = time.Since(rep.Started)
	if ferr != nil {
		// The finish transaction, and the attempt in it, rolled back: record the outcome alone,
		// even when the run's context ended, so a new context is used.
		a := s.idx.attempt(d, rep.Started, err, s.backoff)
		if rerr := s.idx.recordAttempt(context.WithoutCancel(ctx), d, a); rerr != nil && rep.Err == nil {
			rep.Err = rerr
		}
	}
	if rep.Err != nil {
		s.log.WarnContext(ctx, "mCSD directory sync failed", "directory", d.baseURL, "err", rep.Err)
	}
	progress(Progress{Fetched: rep.Fetched, Done: true, Report: &rep})
	return rep
}

// FetchError is why reading a directory's history stopped: one wording per cause, with the URL
// of the page without its query (no cursor, no _since).
type FetchError struct {
	Type   string // resource type whose history was read
	URL    string // the page asked for, without its query
	Reason string
}

func (e *FetchError) Error() string {
	if e.URL == "" {
		return e.Type + " history: " + e.Reason
	}
	return e.Type + " history: " + e.Reason + " (GET " + e.URL + ")"
}

// withoutQuery drops the query and fragment of u: they carry cursors and instants that make
// every error line unique and long.
func withoutQuery(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		if i := strings.IndexAny(u, "?#"); i >= 0 {
			u = u[:i]
		}
		return clean(u, 300)
	}
	p.RawQuery, p.Fragment, p.User = "", "", nil
	return clean(p.String(), 300)
}

// winner is the version of an id a history read decided on so far.
type winner struct {
	ts      int64
	deleted bool
}

// syncType pages through {base}/{typ}/_history since the watermark and applies every live
// version; tombstones wait for the caller, which stores the new watermark only when the whole
// history was read.
func (s *Syncer) syncType(ctx context.Context, d directory, typ, since string, run int64, pend *pending, rep *DirectoryReport, progress func(Progress)) (TypeResult, error) {
	full := since == ""
	q := url.Values{"_count": {fmt.Sprint(s.opts.PageSize)}}
	if !full {
		q.Set("_since", since)
	}
	next := d.baseURL + "/" + typ + "/_history?" + q.Encode()
	origin, err := url.Parse(d.baseURL)
	if err != nil || origin.Host == "" || origin.Scheme != "https" && origin.Scheme != "http" {
		return TypeResult{}, &FetchError{Type: typ, Reason: fmt.Sprintf("directory base URL %q is not an http(s) URL", clean(d.baseURL, 200))}
	}

	// The history lists the newest version first; like the store's upsert, a later entry only
	// replaces the one decided on when it is strictly newer.
	decided := map[string]winner{}
	deletes := map[string]Resource{}
	flush := func() error {
		if pend.n < flushAt {
			return nil
		}
		applied, _, err := s.idx.applyBatches(ctx, d.id, run, pend.take())
		rep.Applied += applied
		return err
	}
	var newMark string
	var maxTS int64
	snapshot := s.idx.now().UnixMilli()
	var recent []string // the last pages' URLs, against a server that loops; MaxPages bounds the rest
	for page := 0; next != ""; page++ {
		if page >= s.opts.MaxPages {
			return TypeResult{}, &FetchError{Type: typ, Reason: fmt.Sprintf("more than %d pages", s.opts.MaxPages)}
		}
		if slices.Contains(recent, next) {
			return TypeResult{}, &FetchError{Type: typ, URL: withoutQuery(next), Reason: "the next link repeats an earlier page"}
		}
		if recent = append(recent, next); len(recent) > 16 {
			recent = recent[1:]
		}
		info, err := s.fetchPage(ctx, next, func(raw json.RawMessage) error {
			rep.Fetched++
			r, perr := parseEntry(raw, typ, d.baseURL)
			if perr != nil {
				rep.Rejected++
				if len(rep.Rejections) < s.opts.MaxRejections {
					rep.Rejections = append(rep.Rejections, Rejection{Type: typ, ID: r.ID, Reason: perr.Error()})
				}
				return nil
			}
			r.Type = typ
			if r.TS > time.Now().Add(maxClockSkew).UnixMilli() {
				if r.TS, perr = s.idx.fetchedAt(ctx, d.id, r); perr != nil {
					return perr
				}
			}
			maxTS = max(maxTS, r.TS)
			if w, ok := decided[r.ID]; ok && r.TS <= w.ts {
				return nil
			}
			decided[r.ID] = winner{ts: r.TS, deleted: r.Deleted}
			if r.Deleted {
				deletes[r.ID] = r
				return nil
			}
			delete(deletes, r.ID)
			pend.add(typ, full, r)
			return nil
		})
		if ferr := flush(); err == nil && ferr != nil {
			err = ferr
		}
		if err != nil {
			var fe *FetchError
			if !errors.As(err, &fe) {
				return TypeResult{}, fmt.Errorf("%s history: %w", typ, err)
			}
			fe.Type = typ
			return TypeResult{}, err
		}
		if page == 0 {
			newMark = info.LastUpdated
			if ts, err := parseInstant(info.LastUpdated, false); err == nil && ts > 0 {
				snapshot = ts
			}
		}
		progress(Progress{Type: typ, Fetched: rep.Fetched})
		next = ""
		if info.Next != "" {
			u, err := url.Parse(info.Next)
			if err != nil || u.Scheme != origin.Scheme || u.Host != origin.Host {
				return TypeResult{}, &FetchError{Type: typ, URL: withoutQuery(info.Next), Reason: "the next link leaves the directory's origin"}
			}
			next = u.String()
		}
	}
	if _, err := parseInstant(newMark, false); err != nil || newMark == "" {
		// Without the server's time of the query, the newest version seen is the next _since; a
		// version at that instant is fetched again, which applying ignores.
		newMark = ""
		if maxTS > 0 {
			newMark = formatInstant(maxTS)
		}
	}
	tr := TypeResult{Type: typ, Since: newMark, Full: full, Snapshot: snapshot}
	for _, r := range deletes {
		tr.Deletes = append(tr.Deletes, r)
	}
	if full {
		tr.Seen = make(map[string]bool, len(decided))
		for id := range decided {
			tr.Seen[id] = true
		}
	}
	return tr, nil
}

// fetchPage GETs one history page and streams its entries to fn. Its errors are *FetchError.
func (s *Syncer) fetchPage(ctx context.Context, u string, fn func(json.RawMessage) error) (pageInfo, error) {
	fail := func(reason string) error { return &FetchError{URL: withoutQuery(u), Reason: reason} }
	hang := fmt.Sprintf("no complete answer within %s", s.opts.RequestTimeout)
	rctx, cancel := context.WithTimeout(ctx, s.opts.RequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, u, nil)
	if err != nil {
		return pageInfo{}, fail("bad URL")
	}
	req.Header.Set("Accept", "application/fhir+json")
	resp, err := s.opts.Client.Do(req)
	if err != nil {
		switch {
		case ctx.Err() != nil:
			return pageInfo{}, fail("interrupted")
		case rctx.Err() != nil:
			return pageInfo{}, fail(hang)
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return pageInfo{}, fail("cannot connect: " + clean(err.Error(), 200))
	}
	defer func() {
		// Drain a little so that the connection can serve the next page.
		io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
		resp.Body.Close()
	}()
	if resp.StatusCode != http.StatusOK {
		return pageInfo{}, fail("HTTP " + resp.Status + outcome(resp.Body))
	}
	body := &limitedReader{r: resp.Body, left: s.opts.MaxPageBytes}
	var fnErr error // the index's, not the page's
	info, err := readBundle(body, func(raw json.RawMessage) error {
		fnErr = fn(raw)
		return fnErr
	})
	if fnErr != nil {
		return info, fnErr
	}
	if err != nil {
		var fe *FetchError
		switch {
		case errors.As(err, &fe):
		case body.exceeded:
			err = fail(fmt.Sprintf("page larger than %d bytes", s.opts.MaxPageBytes))
		case ctx.Err() != nil:
			err = fail("interrupted")
		case rctx.Err() != nil:
			err = fail(hang)
		default:
			var ue *url.Error
			if errors.As(err, &ue) {
				err = ue.Err
			}
			err = fail("malformed page: " + clean(err.Error(), 200))
		}
		return info, err
	}
	return info, nil
}

// outcome summarises an error response: the diagnostics of a FHIR OperationOutcome, if any.
func outcome(r io.Reader) string {
	var oo struct {
		Issue []struct {
			Diagnostics string `json:"diagnostics"`
			Code        string `json:"code"`
		} `json:"issue"`
	}
	if json.NewDecoder(io.LimitReader(r, 64<<10)).Decode(&oo) != nil || len(oo.Issue) == 0 {
		return ""
	}
	msg := oo.Issue[0].Diagnostics
	if msg == "" {
		msg = oo.Issue[0].Code
	}
	if msg == "" {
		return ""
	}
	return " (" + strings.Map(func(r rune) rune {
		if r < 0x20 {
			return ' '
		}
		return r
	}, clean(msg, 200)) + ")"
}

type limitedReader struct {
	r        io.Reader
	left     int64
	exceeded bool
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.left <= 0 {
		l.exceeded = true
		return 0, errors.New("page too large")
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.r.Read(p)
	l.left -= int64(n)
	return n, err
}
