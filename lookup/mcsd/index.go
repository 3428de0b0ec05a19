package mcsd

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ozo-platform/ozo-identity/internal/matrixid"
	"github.com/ozo-platform/ozo-identity/threepid"
)

// ErrNotFound: the index has nothing for the number asked about.
var ErrNotFound = errors.New("mcsd: not found")

// Index is the mCSD index in the database: what the synced directories publish, checked against
// the anti-spoofing rules, and the resolution candidates derived from it. It is a lookup.Resolver
// for the media uzi and ura, hashed or not.
type Index struct {
	db  Store
	now func() time.Time

	// written counts rows written since the planner statistics were refreshed; a first sync
	// grows the tables from nothing, and plans made for empty tables scan them whole.
	// analyzed is what was written before that refresh: the next waits until the rows
	// written since match it, so a first sync of n rows refreshes O(log n) times.
	written   atomic.Int64
	analyzed  int64 // under analyzeMu
	analyzeMu sync.Mutex
}

// NewIndex returns the index kept in db, which must be migrated.
func NewIndex(db Store) *Index {
	return &Index{db: db, now: time.Now}
}

// analyzeEvery is how many written rows make the statistics stale at least.
const analyzeEvery = 5000

// analyzeIfStale refreshes the planner statistics of the index tables when the rows written
// since the last time are as many as were written before it (and at least analyzeEvery),
// before a directory is validated with plans based on them.
func (x *Index) analyzeIfStale(ctx context.Context) error {
	if x.written.Load() < analyzeEvery {
		return nil
	}
	x.analyzeMu.Lock()
	defer x.analyzeMu.Unlock()
	w := x.written.Load()
	if w < max(analyzeEvery, x.analyzed) {
		return nil // another worker just did it, or not stale enough yet
	}
	if err := x.db.Analyze(ctx); err != nil {
		return err
	}
	x.analyzed += w
	x.written.Add(-w)
	return nil
}

// SetClock replaces the clock that decides which periods are current; for tests.
func (x *Index) SetClock(now func() time.Time) { x.now = now }

func directoryID(baseURL string) string {
	sum := sha256.Sum256([]byte(baseURL))
	return hex.EncodeToString(sum[:8])
}

// candidate is one way mCSD says a 3PID reaches a Matrix user or homeserver.
type candidate struct {
	mxid, homeserver string
	pref             int
	updated          int64
	sourceID, dir    string
	ura              string // the care provider whose directory says so
}

// provider is the key of the care provider behind a candidate: its URA, or its directory for
// candidates derived before the URA was recorded.
func (c candidate) provider() string {
	if c.ura != "" {
		return c.ura
	}
	return "dir:" + c.dir
}

// better implements the deterministic choice between the candidates of one care provider (see
// the package documentation): lower preference first, then the most recently updated, then the
// lowest resource id, directory id and MXID.
func better(a, b candidate) bool {
	if a.pref != b.pref {
		return a.pref < b.pref
	}
	if a.updated != b.updated {
		return a.updated > b.updated
	}
	if a.sourceID != b.sourceID {
		return a.sourceID < b.sourceID
	}
	if a.dir != b.dir {
		return a.dir < b.dir
	}
	return a.mxid < b.mxid
}

// resolution is what the index says about one 3PID: the candidate it resolves to, or a conflict
// between care providers, which resolves to nothing.
type resolution struct {
	best     candidate
	conflict bool
	claims   []candidate // each care provider's own choice, by URA
}

// resolveClaims applies the rule between care providers to each provider's own choice: when
// any of them names a user, they must all name the same user (or only a homeserver); otherwise
// they must name the same homeserver. Neither recency nor preference decides between providers,
// so no directory can take over a 3PID that another care provider publishes.
func resolveClaims(byProvider map[string]candidate) resolution {
	var res resolution
	for _, c := range byProvider {
		res.claims = append(res.claims, c)
	}
	slices.SortFunc(res.claims, func(a, b candidate) int {
		return strings.Compare(a.provider()+"\x00"+a.mxid, b.provider()+"\x00"+b.mxid)
	})
	users, servers := map[string]bool{}, map[string]bool{}
	for _, c := range res.claims {
		if c.mxid != "" {
			users[c.mxid] = true
		}
		servers[c.homeserver] = true
	}
	res.conflict = len(users) > 1 || len(users) == 0 && len(servers) > 1
	if res.conflict {
		return res
	}
	first := true
	for _, c := range res.claims {
		if (len(users) == 0 || c.mxid != "") && (first || better(c, res.best)) {
			res.best, first = c, false
		}
	}
	return res
}

// candidates returns what the index says about the given 3PIDs; withHomeserverOnly includes the
// candidates that name a homeserver without a user.
func (x *Index) candidates(ctx context.Context, tps []threepid.ThreePID, withHomeserverOnly bool) (map[threepid.ThreePID]resolution, error) {
	byTP := make(map[threepid.ThreePID]map[string]candidate)
	now := x.now().UnixMilli()
	byMedium := map[string][]string{}
	for _, tp := range tps {
		byMedium[tp.Medium] = append(byMedium[tp.Medium], tp.Address)
	}
	for medium, addrs := range byMedium {
		found, err := x.db.Candidates(ctx, medium, addrs, now, withHomeserverOnly)
		if err != nil {
			return nil, fmt.Errorf("query mcsd candidates: %w", err)
		}
		for _, f := range found {
			tp := threepid.ThreePID{Medium: medium, Address: f.Address}
			c := candidate{mxid: f.MXID, homeserver: f.Homeserver, pref: f.Pref, updated: f.Updated, sourceID: f.SourceID, dir: f.Dir, ura: f.URA}
			if c.mxid != "" {
				c.homeserver = matrixid.ServerOf(c.mxid)
			}
			m := byTP[tp]
			if m == nil {
				m = map[string]candidate{}
				byTP[tp] = m
			}
			if cur, ok := m[c.provider()]; !ok || better(c, cur) {
				m[c.provider()] = c
			}
		}
	}
	out := make(map[threepid.ThreePID]resolution, len(byTP))
	for tp, m := range byTP {
		out[tp] = resolveClaims(m)
	}
	return out, nil
}

// Resolve answers uzi and ura 3PIDs from the index; other media are not in mCSD. A 3PID that
// care providers resolve to different users (a conflict) is answered with "": withheld, so that
// no later link of the lookup chain answers it either.
func (x *Index) Resolve(ctx context.Context, tps []threepid.ThreePID) (map[threepid.ThreePID]string, error) {
	var want []threepid.ThreePID
	for _, tp := range tps {
		if tp.Medium == threepid.MediumUZI || tp.Medium == threepid.MediumURA {
			want = append(want, tp)
		}
	}
	out := make(map[threepid.ThreePID]string)
	if len(want) == 0 {
		return out, nil
	}
	res, err := x.candidates(ctx, want, false)
	if err != nil {
		return nil, err
	}
	for tp, r := range res {
		if r.conflict {
			out[tp] = ""
			continue
		}
		out[tp] = r.best.mxid
	}
	return out, nil
}

// ResolveHashes answers v2 lookup hashes made with the pepper last given to Rehash.
func (x *Index) ResolveHashes(ctx context.Context, hashes []string) (map[string]string, error) {
	found, err := x.db.HashedThreePIDs(ctx, hashes)
	if err != nil {
		return nil, fmt.Errorf("lookup mcsd hashes: %w", err)
	}
	byTP := make(map[threepid.ThreePID][]string)
	for _, h := range found {
		byTP[h.ThreePID] = append(byTP[h.ThreePID], h.Hash)
	}
	out := make(map[string]string)
	if len(byTP) == 0 {
		return out, nil
	}
	tps := make([]threepid.ThreePID, 0, len(byTP))
	for tp := range byTP {
		tps = append(tps, tp)
	}
	resolved, err := x.Resolve(ctx, tps)
	if err != nil {
		return nil, err
	}
	for tp, mxid := range resolved {
		for _, h := range byTP[tp] {
			out[h] = mxid
		}
	}
	return out, nil
}

// Rehash makes the hashed lookups of the index work with pepper: call it at start-up and whenever
// the identity server rotates its pepper. With the same pepper it only fills in what is missing.
func (x *Index) Rehash(ctx context.Context, pepper string) error {
	if pepper == "" {
		return errors.New("rehash: empty pepper")
	}
	if err := x.db.Rehash(ctx, pepper); err != nil {
		return fmt.Errorf("rehash: %w", err)
	}
	return nil
}

// Homeserver says on which homeserver mCSD places the practitioner with this UZI number now and,
// when a directory moved them, the homeserver they came from and since when they are on the
// current one. Without any placement it returns ErrNotFound.
func (x *Index) Homeserver(ctx context.Context, uzi string) (current, previous string, since time.Time, err error) {
	tp, err := threepid.Normalize(threepid.MediumUZI, uzi)
	if err != nil {
		return "", "", time.Time{}, err
	}
	ps, err := x.db.Placements(ctx, []string{tp.Address})
	if err != nil {
		return "", "", time.Time{}, fmt.Errorf("homeserver of uzi %s: %w", tp.Address, err)
	}
	p, ok := ps[tp.Address]
	if !ok || p.Homeserver == "" && p.PrevHomeserver == "" {
		return "", "", time.Time{}, fmt.Errorf("homeserver of uzi %s: %w", tp.Address, ErrNotFound)
	}
	return p.Homeserver, p.PrevHomeserver, time.UnixMilli(p.Since).UTC(), nil
}

// DirectoryStatus is the state of one directory as kept in the database.
type DirectoryStatus struct {
	BaseURL     string
	Kind        string // "lrza" or "provider"
	Origin      string // "root" (the LRZA), "lrza" (listed by it), "static" (configured) or "lrza+static"
	Active      bool   // still listed; inactive directories have had their resources removed
	URAs        []string
	Watermarks  map[string]string // resource type → _since of the next request
	LastAttempt time.Time
	LastSuccess time.Time
	LastError   string
	Refused     string // why a directory the LRZA lists is not synced (plain http), "" when it is
	Failures    int
	NextAttempt time.Time      // while backing off
	Counts      map[string]int // resource type → resources that count
	Rejected    map[string]int // resource type → resources rejected
	// Recorded is what counted after the last sync that changed the directory and Previous what
	// counted before it (-1: not known yet). Collapsed says, when non-empty, that the count fell
	// by more than half in that sync or since (rows lost from the index).
	Recorded, Previous int
	Collapsed          string
}

// collapsed explains a resource count that fell by more than half, "" when it did not.
func collapsed(now, recorded, previous int) string {
	switch {
	case recorded > 0 && now*2 < recorded:
		return fmt.Sprintf("%d resources count now, %d did after the last sync: rows were lost from the index", now, recorded)
	case previous > 0 && recorded >= 0 && recorded*2 < previous:
		return fmt.Sprintf("the last sync that changed it went from %d resources to %d", previous, recorded)
	}
	return ""
}

// Status reports every directory the index knows, in base URL order.
func (x *Index) Status(ctx context.Context) ([]DirectoryStatus, error) {
	out, err := x.db.DirectoryStatuses(ctx)
	if err != nil {
		return nil, fmt.Errorf("mcsd status: %w", err)
	}
	for i := range out {
		n := 0
		for _, c := range out[i].Counts {
			n += c
		}
		if out[i].Active {
			out[i].Collapsed = collapsed(n, out[i].Recorded, out[i].Previous)
		}
	}
	return out, nil
}
