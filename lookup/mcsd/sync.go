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

// SyncAll runs one sync: the LRZA first, then the directories it lists and the configured ones,
// at most Concurrency at a time, then homeserver localisation. A failing directory is reported,
// backs off and keeps what was indexed; the error is for failures of the index itself.
func (s *Syncer) SyncAll(ctx context.Context) ([]DirectoryReport, error) {
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
	if !s.opts.IgnoreBackoff && d.nextAttempt > s.idx.now().UnixMilli() {
		rep.Skipped = fmt.Sprintf("backing off after %d failures until %s", d.failures,
			time.UnixMilli(d.nextAttempt).UTC().Format(time.RFC3339))
		progress(Progress{Done: true, Report: &rep})
		return rep
	}
	progress(Progress{})
	dctx, cancel := context.WithTimeout(ctx, s.opts.DirectoryTimeout)
	defer cancel()

	marks, err := s.idx.watermarks(dctx, d.id)
	var done []typeResult
	if err == nil {
		for _, typ := range d.types() {
			var tr typeResult
			if tr, err = s.syncType(dctx, d, typ, marks[typ], run, &rep, progress); err != nil {
				break
			}
			done = append(done, tr)
		}
	}
	// One transaction stores what the completed types leave (watermarks, sweeps) and, after a
	// complete fetch, judges the directory: a half-read directory is judged on its last complete
	// state; what was applied stays and is judged next time. Nothing changed, nothing judged.
	fctx := dctx
	if err != nil {
		fctx = context.WithoutCancel(ctx) // keep the types that completed before a time-out
	}
	res, ferr := s.idx.finish(fctx, d, run, done, err == nil, d.dirty || rep.Applied > 0, s.opts.MaxRejections)
	rep.Applied += res.swept
	rep.Deleted += res.swept
	rep.Rejected += res.rejected
	for _, r := range res.rejections {
		if len(rep.Rejections) < s.opts.MaxRejections {
			rep.Rejections = append(rep.Rejections, r)
		}
	}
	if err == nil {
		err = ferr
	}
	if err != nil && ctx.Err() == nil && dctx.Err() != nil {
		err = fmt.Errorf("directory took longer than %s: %w", s.opts.DirectoryTimeout, err)
	}
	rep.Err = err
	rep.Duration = time.Since(rep.Started)
	// The outcome is recorded even when the run's context ended, so a new context is used.
	if rerr := s.idx.recordAttempt(context.WithoutCancel(ctx), d, rep.Started, err, s.backoff); rerr != nil && rep.Err == nil {
		rep.Err = rerr
	}
	if rep.Err != nil {
		s.log.WarnContext(ctx, "mCSD directory sync failed", "directory", d.baseURL, "err", rep.Err)
	}
	progress(Progress{Fetched: rep.Fetched, Done: true, Report: &rep})
	return rep
}

// typeResult is what a complete read of one type's history leaves to store.
type typeResult struct {
	typ   string
	since string // the _since of the next request; "" keeps the stored one
	full  bool   // the whole history was read, so what it lacks is gone
}

// syncType pages through {base}/{typ}/_history since the watermark and applies every entry; the
// caller stores the new watermark only when the whole history was read.
func (s *Syncer) syncType(ctx context.Context, d directory, typ, since string, run int64, rep *DirectoryReport, progress func(Progress)) (typeResult, error) {
	full := since == ""
	q := url.Values{"_count": {fmt.Sprint(s.opts.PageSize)}}
	if !full {
		q.Set("_since", since)
	}
	next := d.baseURL + "/" + typ + "/_history?" + q.Encode()
	origin, err := url.Parse(d.baseURL)
	if err != nil || origin.Host == "" || origin.Scheme != "https" && origin.Scheme != "http" {
		return typeResult{}, fmt.Errorf("directory base URL %q is not an http(s) URL", d.baseURL)
	}

	var batch []row
	const batchSize = 200
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		applied, deleted, err := s.idx.applyBatch(ctx, d.id, typ, run, full, batch)
		batch = batch[:0]
		rep.Applied += applied
		rep.Deleted += deleted
		return err
	}
	var newMark string
	var maxTS int64
	var recent []string // the last pages' URLs, against a server that loops; MaxPages bounds the rest
	for page := 0; next != ""; page++ {
		if page >= s.opts.MaxPages {
			return typeResult{}, fmt.Errorf("%s history: more than %d pages", typ, s.opts.MaxPages)
		}
		if slices.Contains(recent, next) {
			return typeResult{}, fmt.Errorf("%s history: next link repeats %s", typ, next)
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
			batch = append(batch, r)
			if len(batch) >= batchSize {
				return flush()
			}
			return nil
		})
		if ferr := flush(); err == nil {
			err = ferr
		}
		if err != nil {
			return typeResult{}, fmt.Errorf("%s history: %w", typ, err)
		}
		if page == 0 {
			newMark = info.LastUpdated
		}
		progress(Progress{Type: typ, Fetched: rep.Fetched})
		next = ""
		if info.Next != "" {
			u, err := url.Parse(info.Next)
			if err != nil || u.Scheme != origin.Scheme || u.Host != origin.Host {
				return typeResult{}, fmt.Errorf("%s history: next link %q leaves the directory's origin", typ, clean(info.Next, 200))
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
	return typeResult{typ: typ, since: newMark, full: full}, nil
}

// fetchPage GETs one history page and streams its entries to fn.
func (s *Syncer) fetchPage(ctx context.Context, u string, fn func(json.RawMessage) error) (pageInfo, error) {
	rctx, cancel := context.WithTimeout(ctx, s.opts.RequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, u, nil)
	if err != nil {
		return pageInfo{}, err
	}
	req.Header.Set("Accept", "application/fhir+json")
	resp, err := s.opts.Client.Do(req)
	if err != nil {
		if rctx.Err() != nil && ctx.Err() == nil {
			return pageInfo{}, fmt.Errorf("GET %s: no answer within %s", u, s.opts.RequestTimeout)
		}
		return pageInfo{}, fmt.Errorf("GET %s: %w", u, err)
	}
	defer func() {
		// Drain a little so that the connection can serve the next page.
		io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
		resp.Body.Close()
	}()
	if resp.StatusCode != http.StatusOK {
		return pageInfo{}, fmt.Errorf("GET %s: %s%s", u, resp.Status, outcome(resp.Body))
	}
	body := &limitedReader{r: resp.Body, left: s.opts.MaxPageBytes}
	info, err := readBundle(body, fn)
	if err != nil {
		switch {
		case body.exceeded:
			err = fmt.Errorf("page larger than %d bytes", s.opts.MaxPageBytes)
		case rctx.Err() != nil && ctx.Err() == nil:
			err = fmt.Errorf("page not read within %s", s.opts.RequestTimeout)
		}
		return info, fmt.Errorf("GET %s: %w", u, err)
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
