package mcsd

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ozo-platform/ozo-identity/internal/matrixid"
	"github.com/ozo-platform/ozo-identity/internal/sqlin"
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

	smu   sync.Mutex
	stmts map[string]*sql.Stmt // statements run for every directory, parsed once

	// written counts rows written since the planner statistics were refreshed; a first sync
	// grows the tables from nothing, and plans made for empty tables scan them whole.
	written   atomic.Int64
	analyzeMu sync.Mutex
}

// NewIndex returns the index kept in db, which must be migrated.
func NewIndex(db Store) *Index {
	return &Index{db: db, now: time.Now, stmts: map[string]*sql.Stmt{}}
}

// analyzeEvery is how many written rows make the statistics stale.
const analyzeEvery = 5000

// analyzeIfStale refreshes the planner statistics of the index tables when many rows were
// written since the last time, before a directory is validated with plans based on them.
func (x *Index) analyzeIfStale(ctx context.Context) error {
	if x.written.Load() < analyzeEvery {
		return nil
	}
	x.analyzeMu.Lock()
	defer x.analyzeMu.Unlock()
	if x.written.Load() < analyzeEvery {
		return nil // another worker just did it
	}
	defer x.db.WriteLock()() // SQLite writes its statistics into a table
	for _, t := range []string{"mcsd_resources", "mcsd_refs", "mcsd_identifiers", "mcsd_role_uzis", "mcsd_addresses", "mcsd_hashes"} {
		if _, err := x.db.ExecContext(ctx, `ANALYZE `+t); err != nil {
			return fmt.Errorf("analyze %s: %w", t, err)
		}
	}
	x.written.Store(0)
	return nil
}

// prepared returns q as a statement of tx, parsed once per connection rather than per use: the
// validation statements are long, and SQLite would otherwise parse them for every directory.
func (x *Index) prepared(ctx context.Context, tx *sql.Tx, q string) (*sql.Stmt, error) {
	x.smu.Lock()
	st, ok := x.stmts[q]
	if !ok {
		var err error
		if st, err = x.db.PrepareContext(ctx, q); err != nil {
			x.smu.Unlock()
			return nil, err
		}
		x.stmts[q] = st
	}
	x.smu.Unlock()
	return tx.StmtContext(ctx, st), nil
}

// execPrepared runs q in tx as a prepared statement.
func (x *Index) execPrepared(ctx context.Context, tx *sql.Tx, q string, args ...any) (sql.Result, error) {
	st, err := x.prepared(ctx, tx, q)
	if err != nil {
		return nil, err
	}
	return st.ExecContext(ctx, args...)
}

// SetClock replaces the clock that decides which periods are current; for tests.
func (x *Index) SetClock(now func() time.Time) { x.now = now }

func directoryID(baseURL string) string {
	sum := sha256.Sum256([]byte(baseURL))
	return hex.EncodeToString(sum[:8])
}

// inChunk bounds the parameters of one statement well below both engines' limits.
const inChunk = 400

// exec runs one write statement.
func (x *Index) exec(ctx context.Context, q string, args ...any) (sql.Result, error) {
	return x.db.ExecWrite(ctx, q, args...)
}

// tx runs fn in a write transaction of the store.
func (x *Index) tx(ctx context.Context, fn func(*sql.Tx) error) error {
	return x.db.WriteTx(ctx, fn)
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
func (x *Index) candidates(ctx context.Context, q interface {
	QueryContext(context.Context, string, ...any) (*sql.Rows, error)
}, tps []threepid.ThreePID, withHomeserverOnly bool) (map[threepid.ThreePID]resolution, error) {
	byTP := make(map[threepid.ThreePID]map[string]candidate)
	now := x.now().UnixMilli()
	byMedium := map[string][]string{}
	for _, tp := range tps {
		byMedium[tp.Medium] = append(byMedium[tp.Medium], tp.Address)
	}
	filter := "mxid <> '' AND "
	if withHomeserverOnly {
		filter = ""
	}
	for medium, addrs := range byMedium {
		err := sqlin.Scan(ctx, q, addrs, inChunk, []any{now, medium}, func(in string) string {
			return `SELECT address, mxid, homeserver, pref, updated, source_id, dir, ura
				FROM mcsd_addresses WHERE ` + filter + `(not_before = 0 OR not_before <= $1) AND (not_after = 0 OR not_after > $1)
				AND medium = $2 AND address IN (` + in + `)`
		}, func(rows *sql.Rows) error {
			tp := threepid.ThreePID{Medium: medium}
			var c candidate
			if err := rows.Scan(&tp.Address, &c.mxid, &c.homeserver, &c.pref, &c.updated, &c.sourceID, &c.dir, &c.ura); err != nil {
				return err
			}
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
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("query mcsd candidates: %w", err)
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
	res, err := x.candidates(ctx, x.db, want, false)
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
	byTP := make(map[threepid.ThreePID][]string)
	err := sqlin.Scan(ctx, x.db, hashes, inChunk, nil, func(in string) string {
		return `SELECT DISTINCT hash, medium, address FROM mcsd_hashes WHERE hash IN (` + in + `)`
	}, func(rows *sql.Rows) error {
		var h string
		var tp threepid.ThreePID
		if err := rows.Scan(&h, &tp.Medium, &tp.Address); err != nil {
			return err
		}
		byTP[tp] = append(byTP[tp], h)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("lookup mcsd hashes: %w", err)
	}
	out := make(map[string]string)
	if len(byTP) == 0 {
		return out, nil
	}
	tps := make([]threepid.ThreePID, 0, len(byTP))
	for tp := range byTP {
		tps = append(tps, tp)
	}
	found, err := x.Resolve(ctx, tps)
	if err != nil {
		return nil, err
	}
	for tp, mxid := range found {
		for _, h := range byTP[tp] {
			out[h] = mxid
		}
	}
	return out, nil
}

// lockPepper reads the pepper and holds it for the transaction: Rehash takes it exclusively, so
// hashes written by a directory's derivation are always made with the pepper that is current.
func (x *Index) lockPepper(ctx context.Context, tx *sql.Tx, exclusive bool) (string, error) {
	q := `SELECT value FROM mcsd_state WHERE name = 'pepper'` + x.db.RowLock(exclusive)
	var pepper string
	if err := tx.QueryRowContext(ctx, q).Scan(&pepper); err != nil {
		return "", fmt.Errorf("read pepper: %w", err)
	}
	return pepper, nil
}

// Rehash makes the hashed lookups of the index work with pepper: call it at start-up and whenever
// the identity server rotates its pepper. With the same pepper it only fills in what is missing.
func (x *Index) Rehash(ctx context.Context, pepper string) error {
	if pepper == "" {
		return errors.New("rehash: empty pepper")
	}
	return x.tx(ctx, func(tx *sql.Tx) error {
		old, err := x.lockPepper(ctx, tx, true)
		if err != nil {
			return err
		}
		if old != pepper {
			if _, err := tx.ExecContext(ctx, `UPDATE mcsd_state SET value = $1 WHERE name = 'pepper'`, pepper); err != nil {
				return fmt.Errorf("store pepper: %w", err)
			}
			if _, err := tx.ExecContext(ctx, `DELETE FROM mcsd_hashes`); err != nil {
				return fmt.Errorf("clear mcsd hashes: %w", err)
			}
		}
		return fillHashes(ctx, tx, "", pepper)
	})
}

// fillHashes adds the missing hashes of the candidates of directory dir (all when dir is ""),
// a page at a time so that memory stays bounded.
func fillHashes(ctx context.Context, tx *sql.Tx, dir, pepper string) error {
	if pepper == "" {
		return nil
	}
	type key struct{ dir, medium, address string }
	var last key
	for {
		args := []any{last.dir, last.medium, last.address}
		dirCond := ""
		if dir != "" {
			dirCond = "a.dir = $4 AND "
			args = append(args, dir)
		}
		rows, err := tx.QueryContext(ctx, `SELECT DISTINCT a.dir, a.medium, a.address FROM mcsd_addresses a
			WHERE `+dirCond+`(a.dir > $1 OR (a.dir = $1 AND (a.medium > $2 OR (a.medium = $2 AND a.address > $3))))
			AND NOT EXISTS (SELECT 1 FROM mcsd_hashes h WHERE h.dir = a.dir AND h.medium = a.medium AND h.address = a.address)
			ORDER BY a.dir, a.medium, a.address LIMIT 500`, args...)
		if err != nil {
			return fmt.Errorf("list mcsd addresses: %w", err)
		}
		var page []key
		for rows.Next() {
			var k key
			if err := rows.Scan(&k.dir, &k.medium, &k.address); err != nil {
				rows.Close()
				return fmt.Errorf("list mcsd addresses: %w", err)
			}
			page = append(page, k)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("list mcsd addresses: %w", err)
		}
		if len(page) == 0 {
			return nil
		}
		last = page[len(page)-1]
		var vals []any
		var q strings.Builder
		q.WriteString(`INSERT INTO mcsd_hashes (dir, hash, medium, address) VALUES `)
		n := 0
		for _, k := range page {
			for _, h := range threepid.LookupHashes(threepid.ThreePID{Medium: k.medium, Address: k.address}, pepper) {
				if n > 0 {
					q.WriteByte(',')
				}
				fmt.Fprintf(&q, "(%s)", sqlin.Placeholders(len(vals)+1, 4))
				vals = append(vals, k.dir, h, k.medium, k.address)
				n++
			}
		}
		q.WriteString(` ON CONFLICT DO NOTHING`)
		if _, err := tx.ExecContext(ctx, q.String(), vals...); err != nil {
			return fmt.Errorf("store mcsd hashes: %w", err)
		}
	}
}

// Homeserver says on which homeserver mCSD places the practitioner with this UZI number now and,
// when a directory moved them, the homeserver they came from and since when they are on the
// current one. Without any placement it returns ErrNotFound.
func (x *Index) Homeserver(ctx context.Context, uzi string) (current, previous string, since time.Time, err error) {
	tp, err := threepid.Normalize(threepid.MediumUZI, uzi)
	if err != nil {
		return "", "", time.Time{}, err
	}
	var sinceMS int64
	err = x.db.QueryRowContext(ctx, `SELECT homeserver, prev_homeserver, since FROM mcsd_placements WHERE uzi = $1`,
		tp.Address).Scan(&current, &previous, &sinceMS)
	if errors.Is(err, sql.ErrNoRows) || err == nil && current == "" && previous == "" {
		return "", "", time.Time{}, fmt.Errorf("homeserver of uzi %s: %w", tp.Address, ErrNotFound)
	}
	if err != nil {
		return "", "", time.Time{}, fmt.Errorf("homeserver of uzi %s: %w", tp.Address, err)
	}
	return current, previous, time.UnixMilli(sinceMS).UTC(), nil
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
	rows, err := x.db.QueryContext(ctx, `SELECT id, base_url, kind, origin, active, last_attempt_at, last_success_at,
		last_error, refused, failures, next_attempt_at, resource_count, prev_resource_count FROM mcsd_directories ORDER BY base_url`)
	if err != nil {
		return nil, fmt.Errorf("mcsd status: %w", err)
	}
	var out []DirectoryStatus
	byID := map[string]*DirectoryStatus{}
	var ids []string
	for rows.Next() {
		var s DirectoryStatus
		var id string
		var active int
		var attempt, success, next int64
		if err := rows.Scan(&id, &s.BaseURL, &s.Kind, &s.Origin, &active, &attempt, &success, &s.LastError, &s.Refused, &s.Failures, &next, &s.Recorded, &s.Previous); err != nil {
			rows.Close()
			return nil, fmt.Errorf("mcsd status: %w", err)
		}
		s.Active = active == 1
		s.LastAttempt, s.LastSuccess, s.NextAttempt = fromMS(attempt), fromMS(success), fromMS(next)
		s.Watermarks, s.Counts, s.Rejected = map[string]string{}, map[string]int{}, map[string]int{}
		out = append(out, s)
		ids = append(ids, id)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("mcsd status: %w", err)
	}
	for i, id := range ids {
		byID[id] = &out[i]
	}
	if err := x.scanEach(ctx, `SELECT dir, ura FROM mcsd_directory_uras ORDER BY dir, ura`, nil, func(r *sql.Rows) error {
		var id, u string
		if err := r.Scan(&id, &u); err != nil {
			return err
		}
		if s := byID[id]; s != nil {
			s.URAs = append(s.URAs, u)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	if err := x.scanEach(ctx, `SELECT dir, type, since FROM mcsd_watermarks`, nil, func(r *sql.Rows) error {
		var id, t, v string
		if err := r.Scan(&id, &t, &v); err != nil {
			return err
		}
		if s := byID[id]; s != nil {
			s.Watermarks[t] = v
		}
		return nil
	}); err != nil {
		return nil, err
	}
	if err := x.scanEach(ctx, `SELECT dir, type, SUM(CASE WHEN reason = '' THEN 1 ELSE 0 END), SUM(CASE WHEN reason <> '' THEN 1 ELSE 0 END)
		FROM mcsd_resources WHERE deleted = 0 GROUP BY dir, type`, nil, func(r *sql.Rows) error {
		var id, t string
		var ok, bad int
		if err := r.Scan(&id, &t, &ok, &bad); err != nil {
			return err
		}
		if s := byID[id]; s != nil {
			s.Counts[t], s.Rejected[t] = ok, bad
		}
		return nil
	}); err != nil {
		return nil, err
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

func (x *Index) scanEach(ctx context.Context, q string, args []any, fn func(*sql.Rows) error) error {
	if err := sqlin.Each(ctx, x.db, q, args, fn); err != nil {
		return fmt.Errorf("mcsd status: %w", err)
	}
	return nil
}

func fromMS(v int64) time.Time {
	if v == 0 {
		return time.Time{}
	}
	return time.UnixMilli(v).UTC()
}
