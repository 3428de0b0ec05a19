package identity

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ozo-platform/ozo-identity/lookup/hashindex"
	"github.com/ozo-platform/ozo-identity/threepid"
)

// MirrorOptions tune a Mirror; zero values take the defaults.
type MirrorOptions struct {
	// Staleness bounds how old an answer from memory may be: a change committed elsewhere (another
	// replica, the admin CLI) is answered within it. The change log is read twice per Staleness;
	// when the last successful read started longer ago, lookups and token checks go to the
	// database until one succeeds. Default 1s.
	Staleness time.Duration
	// TokenTTL is how long a verified access token is trusted without the database (default 1m);
	// revocations reach the cache sooner, through the change log.
	TokenTTL time.Duration
	// TokenEntries bounds the token cache (default 10,000; negative: no token cache).
	TokenEntries int
	// MaxChanges is the most changed lookup hashes read one by one; more reload (default 100,000).
	MaxChanges int
	// NoIndex keeps only the token cache: lookups always ask the database.
	NoIndex bool
}

func (o MirrorOptions) withDefaults() MirrorOptions {
	if o.Staleness <= 0 {
		o.Staleness = time.Second
	}
	if o.TokenTTL <= 0 {
		o.TokenTTL = time.Minute
	}
	if o.TokenEntries == 0 {
		o.TokenEntries = 10_000
	}
	if o.MaxChanges <= 0 {
		o.MaxChanges = 100_000
	}
	return o
}

// Mirror keeps in memory what every lookup and token check reads: the answer of every lookup hash
// of the local bindings, and recently verified access tokens. The database stays the truth. A
// write through this process's Service is in the mirror before the write returns; one made
// elsewhere arrives through the store's change log, which a request checks before it is
// answered from memory (current); when the mirror cannot tell that it is current, it answers
// nothing and the database answers.
//
// It is the first link of the lookup chain (a lookup.Resolver).
type Mirror struct {
	store Store
	opts  MirrorOptions
	log   *slog.Logger
	now   func() time.Time

	// syncMu runs one catch-up at a time, so database reads are applied in the order they were
	// made and a slower, older read never overwrites a newer one.
	syncMu   ctxMutex
	seq      int64        // the last change applied; under syncMu
	applied  atomic.Int64 // seq, for readers outside syncMu
	nextLoad time.Time    // after a failed load, when to try again; under syncMu

	mu     sync.RWMutex
	table  *hashindex.Table // nil: lookups go to the database
	pepper string           // the pepper of table's hashes

	// freshAt is when the last successful catch-up started (UnixNano); 0 after a failed one.
	freshAt atomic.Int64

	onPepper func(string)
	tokens   tokenCache
	batches  sync.Pool // *hashBatch

	head headReads

	// active is set by Load: before, the mirror stands aside (catch-ups do nothing, the database
	// answers), so that commands that never serve do not read every hash.
	active atomic.Bool
}

// NewMirror returns an empty mirror of store, standing aside until Load fills it.
func NewMirror(store Store, opts MirrorOptions, log *slog.Logger) *Mirror {
	opts = opts.withDefaults()
	return &Mirror{store: store, opts: opts, log: log, now: time.Now, syncMu: newCtxMutex(), head: headReads{mu: newCtxMutex()},
		tokens: tokenCache{ttl: opts.TokenTTL, max: opts.TokenEntries, m: map[string]tokenEntry{}}}
}

// ctxMutex is a mutex whose Lock gives up when ctx ends. Catch-ups and head reads hold theirs
// while they ask the database; when it stops answering, a request waiting behind one must still
// end at its deadline.
type ctxMutex chan struct{}

func newCtxMutex() ctxMutex { return make(ctxMutex, 1) }

func (m ctxMutex) Lock(ctx context.Context) error {
	select {
	case m <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (m ctxMutex) Unlock() { <-m }

// Load reads every lookup hash from the database; lookups are answered from memory from then on.
func (m *Mirror) Load(ctx context.Context) error {
	if err := m.syncMu.Lock(ctx); err != nil {
		return err
	}
	defer m.syncMu.Unlock()
	m.active.Store(true)
	return m.reload(ctx, m.now())
}

func (m *Mirror) setSeq(seq int64) {
	m.seq = seq
	m.applied.Store(seq)
}

// headReads coalesces reads of the change log's last number: a read that started after a request
// arrived answers for that request too, so concurrent requests share one query.
type headReads struct {
	mu     ctxMutex
	readAt int64 // UnixNano when the last successful read started
	seq    int64
}

// arrivalKey carries when a request arrived (WithArrival), so that its token check and its
// lookup share one read of the change log.
type arrivalKey struct{}

// Arrived marks ctx as serving a request that arrives now: the mirror answers it with every
// change committed before now, and one read of the change log serves all of its checks.
func (s *Service) Arrived(ctx context.Context) context.Context {
	if s.mirror == nil {
		return ctx
	}
	return context.WithValue(ctx, arrivalKey{}, s.mirror.now())
}

// arrival is when the request of ctx arrived, or now.
func (m *Mirror) arrival(ctx context.Context) time.Time {
	if t, ok := ctx.Value(arrivalKey{}).(time.Time); ok {
		return t
	}
	return m.now()
}

// current makes sure the mirror holds every change committed before arrived, catching up when
// it does not: a write acknowledged by any replica is answered from then on (read after write
// across replicas). False: it cannot tell, and the database answers.
func (m *Mirror) current(ctx context.Context, arrived time.Time) bool {
	if !m.active.Load() || !m.fresh() {
		return false
	}
	if m.head.mu.Lock(ctx) != nil {
		return false
	}
	if m.head.readAt < arrived.UnixNano() {
		started := m.now()
		seq, err := m.store.ChangeSeq(ctx)
		if err != nil {
			m.head.mu.Unlock()
			return false
		}
		m.head.readAt, m.head.seq = started.UnixNano(), seq
	}
	seq := m.head.seq
	m.head.mu.Unlock()
	if m.applied.Load() >= seq {
		return true
	}
	return m.CatchUp(ctx) == nil && m.applied.Load() >= seq
}

// fresh reports whether what the mirror holds is within the staleness bound.
func (m *Mirror) fresh() bool {
	at := m.freshAt.Load()
	return at != 0 && m.now().UnixNano()-at <= int64(m.opts.Staleness)
}

// reload replaces the table with a new one read from a database snapshot; under syncMu.
func (m *Mirror) reload(ctx context.Context, started time.Time) error {
	if m.opts.NoIndex {
		seq, err := m.latest(ctx)
		if err != nil {
			return err
		}
		m.setSeq(seq)
		m.freshAt.Store(started.UnixNano())
		return nil
	}
	var snap LookupSnapshot
	var t *hashindex.Table
	err := m.store.ScanLookupHashes(ctx, func(s LookupSnapshot) error {
		snap = s
		// Sized for the hashes there are, so loading does not grow it; growth later doubles it.
		t = hashindex.New(s.Count + 1024)
		return nil
	}, func(hash, mxid []byte) error {
		h, err := hashindex.ParseBytes(hash)
		if err != nil {
			return fmt.Errorf("lookup hash %.50q: %w", hash, err)
		}
		return t.SetBytes(&h, mxid)
	})
	if err != nil {
		if t != nil {
			t.Close()
		}
		m.setTable(nil, "")
		m.freshAt.Store(0)
		m.nextLoad = m.now().Add(time.Minute)
		return fmt.Errorf("load lookup index: %w", err)
	}
	m.setTable(t, snap.Pepper)
	m.setSeq(snap.Seq)
	m.freshAt.Store(started.UnixNano())
	if snap.Pepper != "" && m.onPepper != nil {
		m.onPepper(snap.Pepper)
	}
	m.log.Debug("lookup index loaded", "hashes", t.Len(), "bytes", t.Bytes(), "change", snap.Seq)
	return nil
}

// latest is the newest change number, for a mirror without an index.
func (m *Mirror) latest(ctx context.Context) (int64, error) {
	ch, err := m.store.Changes(ctx, m.seq, 0)
	if err != nil {
		return 0, err
	}
	return ch.Seq, nil
}

// setTable replaces the table and returns the old one's memory: readers use the table only
// under mu, so none still holds it.
func (m *Mirror) setTable(t *hashindex.Table, pepper string) {
	m.mu.Lock()
	old := m.table
	m.table, m.pepper = t, pepper
	m.mu.Unlock()
	if old != nil && old != t {
		old.Close()
	}
}

// CatchUp applies what the change log says changed since the last catch-up. Service calls it
// after each of its writes, Run twice per staleness bound. On failure the mirror answers
// nothing until a catch-up succeeds.
func (m *Mirror) CatchUp(ctx context.Context) error {
	if !m.active.Load() {
		return nil
	}
	if err := m.syncMu.Lock(ctx); err != nil {
		return err
	}
	defer m.syncMu.Unlock()
	return m.catchUpNow(ctx)
}

// catchUpNow is CatchUp under syncMu.
func (m *Mirror) catchUpNow(ctx context.Context) error {
	started := m.now()
	if err := m.catchUp(ctx, started); err != nil {
		m.freshAt.Store(0)
		return err
	}
	m.freshAt.Store(started.UnixNano())
	return nil
}

// Wrote applies change seq, a write of this process whose every logged hash answers is given
// in answers (hash → MXID). When the mirror holds every change before seq and the same pepper,
// nothing needs reading back; otherwise it catches up.
func (m *Mirror) Wrote(ctx context.Context, seq int64, pepper string, answers map[string]string) error {
	if !m.active.Load() {
		return nil
	}
	if err := m.syncMu.Lock(ctx); err != nil {
		return err
	}
	defer m.syncMu.Unlock()
	if m.seq >= seq {
		return nil // a catch-up read it already
	}
	m.mu.RLock()
	next := m.seq == seq-1 && m.table != nil && m.pepper == pepper
	m.mu.RUnlock()
	if !next || m.opts.NoIndex {
		return m.catchUpNow(ctx)
	}
	// freshAt stays: this says nothing of other writers. A newer change to one of these
	// hashes has a higher number, and is read when the mirror catches up to it.
	m.mu.Lock()
	var err error
	for s, mxid := range answers {
		h, perr := hashindex.Parse(s)
		if perr != nil {
			err = fmt.Errorf("lookup hash %.50q: %w", s, perr)
			break
		}
		if err = m.table.Set(&h, mxid); err != nil {
			break
		}
	}
	m.mu.Unlock()
	if err != nil {
		m.setTable(nil, "")
		m.nextLoad = time.Time{}
		m.freshAt.Store(0)
		return err
	}
	m.setSeq(seq)
	return nil
}

func (m *Mirror) catchUp(ctx context.Context, started time.Time) error {
	ch, err := m.store.Changes(ctx, m.seq, m.opts.MaxChanges)
	if err != nil {
		return fmt.Errorf("read change log: %w", err)
	}
	// Revoked tokens first: a reload may take seconds.
	if ch.Pruned {
		m.tokens.clear()
	}
	for _, t := range ch.Tokens {
		m.tokens.revoke(t)
	}
	m.mu.RLock()
	loaded := m.table != nil
	m.mu.RUnlock()
	if ch.Reload || !loaded && !m.opts.NoIndex {
		if !ch.Reload && m.now().Before(m.nextLoad) {
			return fmt.Errorf("lookup index not loaded; next attempt at %s", m.nextLoad.Format(time.TimeOnly))
		}
		return m.reload(ctx, started)
	}
	if len(ch.Hashes) > 0 && !m.opts.NoIndex {
		// The database's answer now, whatever the order of the changes that led to it.
		found, err := m.store.LookupHashes(ctx, ch.Hashes)
		if err != nil {
			return fmt.Errorf("read changed lookup hashes: %w", err)
		}
		// That read is newer than the log's. A newer answer for a hash is fine, but not one of
		// a new pepper (a rotation changes every hash without naming them): reload instead.
		// Read after the hashes, so a rotation that committed before them shows here.
		pepper, err := m.store.GetSetting(ctx, SettingPepper)
		if err != nil {
			return fmt.Errorf("read pepper: %w", err)
		}
		m.mu.RLock()
		rotated := pepper != m.pepper
		m.mu.RUnlock()
		if rotated {
			return m.reload(ctx, started)
		}
		m.mu.Lock()
		err = apply(m.table, ch.Hashes, found)
		m.mu.Unlock()
		if err != nil {
			m.setTable(nil, "")
			m.nextLoad = time.Time{}
			return err
		}
	}
	m.setSeq(ch.Seq)
	return nil
}

// apply sets each hash to its answer in found, or removes it.
func apply(t *hashindex.Table, hashes []string, found map[string]string) error {
	for _, s := range hashes {
		h, err := hashindex.Parse(s)
		if err != nil {
			if _, ok := found[s]; ok {
				return fmt.Errorf("lookup hash %.50q: %w", s, err)
			}
			continue // nothing answers it, in memory or not
		}
		if mxid, ok := found[s]; ok {
			if err := t.Set(&h, mxid); err != nil {
				return err
			}
		} else {
			t.Delete(&h)
		}
	}
	return nil
}

// Run catches up twice per staleness bound until ctx ends.
func (m *Mirror) Run(ctx context.Context) {
	t := time.NewTicker(m.opts.Staleness / 2)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		// Bounded: a catch-up stuck on a database that stopped answering (a partition that drops
		// packets lasts the kernel's retransmissions, minutes) would keep the mirror stale after
		// the database is back. Loading ten million hashes takes well under this.
		cctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		err := m.CatchUp(cctx)
		cancel()
		switch {
		case err != nil && ctx.Err() == nil && !failing:
			m.log.Warn("lookup index and token cache behind the database; answering from the database", "err", err)
			failing = true
		case err == nil && failing:
			m.log.Info("lookup index and token cache current again")
			failing = false
		}
	}
}

// pepperKey carries the pepper a lookup's hashes were made with (Service.Lookup), so that the
// mirror can tell them from hashes of another pepper during a rotation.
type pepperKey struct{}

// ResolveHashes answers from memory while the mirror is current and has the hashes' pepper (from
// Service.Lookup), and from the database otherwise. When that pepper is no longer the stored one it
// fails with ErrPepperChanged rather than answer "not bound" for bound addresses.
func (m *Mirror) ResolveHashes(ctx context.Context, hashes []string) (map[string]string, error) {
	pepper, _ := ctx.Value(pepperKey{}).(string)
	if m.current(ctx, m.arrival(ctx)) {
		out, ok, err := m.resolveHashes(pepper, hashes)
		if ok || err != nil {
			return out, err
		}
	}
	out, err := m.store.LookupHashes(ctx, hashes)
	if err != nil || pepper == "" || !m.active.Load() {
		return out, err
	}
	// Read after the hashes: a rotation committed before them shows here.
	current, err := m.store.GetSetting(ctx, SettingPepper)
	if err != nil {
		return nil, fmt.Errorf("read pepper: %w", err)
	}
	if current != pepper {
		return nil, ErrPepperChanged
	}
	return out, nil
}

func (m *Mirror) resolveHashes(pepper string, hashes []string) (map[string]string, bool, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.table == nil || !m.fresh() {
		return nil, false, nil
	}
	if pepper != "" && pepper != m.pepper {
		// A rotation the mirror has not read yet (or one it read before this lookup's caller
		// did): the database answers, and refuses a pepper that is really gone.
		return nil, false, nil
	}
	out := make(map[string]string, len(hashes))
	if len(hashes) == 1 {
		if h, err := hashindex.Parse(hashes[0]); err == nil {
			if mxid, ok := m.table.Get(&h); ok {
				out[hashes[0]] = mxid
			}
		}
		return out, true, nil
	}
	b, _ := m.batches.Get().(*hashBatch)
	if b == nil {
		b = &hashBatch{}
	}
	keys, asked := b.keys[:0], b.asked[:0] // asked: the string of each key
	for _, s := range hashes {
		// Every hash in the table is canonical base64 of 32 bytes (apply and reload refuse
		// others), so a string that does not parse matches nothing in the database either.
		h, err := hashindex.Parse(s)
		if err != nil {
			continue
		}
		keys = append(keys, h)
		asked = append(asked, s)
	}
	m.table.GetAll(keys, func(i int, mxid []byte) { out[asked[i]] = string(mxid) })
	clear(asked) // the pool keeps no request's strings
	b.keys, b.asked = keys[:0], asked[:0]
	m.batches.Put(b)
	return out, true, nil
}

// hashBatch is resolveHashes' decoded batch, reused across requests: 48 KB per 1,000 addresses
// that the collector would otherwise chase.
type hashBatch struct {
	keys  []hashindex.Hash
	asked []string
}

// Resolve answers plain 3PIDs (algorithm "none") from the database.
func (m *Mirror) Resolve(ctx context.Context, tps []threepid.ThreePID) (map[threepid.ThreePID]string, error) {
	return m.store.LookupThreePIDs(ctx, tps)
}

// Stats describe the mirror for metrics.
type MirrorStats struct {
	Hashes int
	Bytes  int
	// Age is how long ago the last successful catch-up started; -1 when none counts.
	Age time.Duration
	// Tokens is the number of cached access tokens.
	Tokens int
}

// Stats returns the mirror's current size and age.
func (m *Mirror) Stats() MirrorStats {
	var s MirrorStats
	m.mu.RLock()
	if m.table != nil {
		s.Hashes, s.Bytes = m.table.Len(), m.table.Bytes()
	}
	m.mu.RUnlock()
	s.Age = -1
	if at := m.freshAt.Load(); at != 0 {
		s.Age = time.Duration(m.now().UnixNano() - at)
	}
	s.Tokens = m.tokens.len()
	return s
}

// token returns a cached, unexpired access token while the mirror is current.
func (m *Mirror) token(ctx context.Context, hash string) (AccessToken, bool) {
	if !m.current(ctx, m.arrival(ctx)) {
		return AccessToken{}, false
	}
	return m.tokens.get(hash, m.now())
}

// tokenCache holds verified access tokens. A revocation bumps epoch, and a token read from the
// database before a revocation is not cached after it: the read may predate it.
type tokenCache struct {
	ttl   time.Duration
	max   int
	epoch atomic.Uint64

	mu sync.RWMutex
	m  map[string]tokenEntry
}

type tokenEntry struct {
	acct    AccessToken
	expires time.Time
}

func (c *tokenCache) get(hash string, now time.Time) (AccessToken, bool) {
	c.mu.RLock()
	e, ok := c.m[hash]
	c.mu.RUnlock()
	if !ok || !now.Before(e.expires) {
		return AccessToken{}, false
	}
	return e.acct, true
}

// put caches a token read from the database while the epoch was epoch.
func (c *tokenCache) put(hash string, a AccessToken, epoch uint64, now time.Time) {
	if c.max <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.epoch.Load() != epoch {
		return
	}
	if len(c.m) >= c.max {
		for k, e := range c.m {
			if !now.Before(e.expires) || len(c.m) >= c.max {
				delete(c.m, k)
			}
			if len(c.m) < c.max*7/8 {
				break
			}
		}
	}
	c.m[hash] = tokenEntry{acct: a, expires: now.Add(c.ttl)}
}

func (c *tokenCache) revoke(hash string) {
	c.mu.Lock()
	c.epoch.Add(1)
	delete(c.m, hash)
	c.mu.Unlock()
}

func (c *tokenCache) clear() {
	c.mu.Lock()
	c.epoch.Add(1)
	clear(c.m)
	c.mu.Unlock()
}

func (c *tokenCache) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.m)
}
