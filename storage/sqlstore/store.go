package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/ozo-platform/ozo-identity/audit"
	"github.com/ozo-platform/ozo-identity/identity"
	"github.com/ozo-platform/ozo-identity/internal/sqlin"
	"github.com/ozo-platform/ozo-identity/threepid"
)

// Store implements identity.Store.
type Store struct {
	db    *DB
	chain *audit.Chain // see SetAuditChain

	mu    sync.Mutex
	stmts map[string]*sql.Stmt
}

var _ identity.Store = (*Store)(nil)

// New returns a Store on a migrated database.
func New(db *DB) *Store { return &Store{db: db, stmts: map[string]*sql.Stmt{}} }

// DB exposes the database for packages that keep their own tables in it (the mCSD index).
func (s *Store) DB() *DB { return s.db }

func (s *Store) Close() error {
	s.mu.Lock()
	for q, st := range s.stmts {
		st.Close()
		delete(s.stmts, q)
	}
	s.mu.Unlock()
	return s.db.Close()
}

// stmt returns query prepared once for the whole pool (database/sql prepares it again on
// each connection that runs it). For the hot path, lookups and token checks: SQLite otherwise
// parses and plans the SQL on every request. The set of queries is small and fixed.
// The lock is not held while preparing: a database that stops answering mid-prepare must not
// hold every other request's statements with it.
func (s *Store) stmt(ctx context.Context, query string) (*sql.Stmt, error) {
	s.mu.Lock()
	st, ok := s.stmts[query]
	s.mu.Unlock()
	if ok {
		return st, nil
	}
	st, err := s.db.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if first, ok := s.stmts[query]; ok {
		st.Close() // another request prepared it meanwhile
		return first, nil
	}
	s.stmts[query] = st
	return st, nil
}

func ms(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

func fromMS(v int64) time.Time {
	if v == 0 {
		return time.Time{}
	}
	return time.UnixMilli(v).UTC()
}

// isUniqueViolation recognises a primary-key or unique conflict on both engines.
func isUniqueViolation(err error) bool {
	if err == nil {
		return false
	}
	msg := err.Error()
	return strings.Contains(msg, "UNIQUE constraint failed") || // SQLite
		strings.Contains(msg, "SQLSTATE 23505") // PostgreSQL unique_violation
}

// tx runs fn in a transaction, committing when fn returns nil.
func (s *Store) tx(ctx context.Context, fn func(*sql.Tx) error) error {
	return inTx(ctx, s.db.DB, "", fn)
}

// inTx runs setup (unless empty), then fn in a transaction of db, committing when fn returns nil.
func inTx(ctx context.Context, db *sql.DB, setup string, fn func(*sql.Tx) error) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	if setup != "" {
		if _, err := tx.ExecContext(ctx, setup); err != nil {
			tx.Rollback()
			return fmt.Errorf("begin: %w", err)
		}
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

func (s *Store) GetSetting(ctx context.Context, name string) (string, error) {
	var v string
	err := s.db.QueryRowContext(ctx, `SELECT value FROM settings WHERE name = $1`, name).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return "", identity.ErrNotFound
	}
	if err != nil {
		return "", fmt.Errorf("get setting %s: %w", name, err)
	}
	return v, nil
}

func (s *Store) SetSettingIfAbsent(ctx context.Context, name, value string) (string, error) {
	if _, err := s.db.ExecContext(ctx,
		`INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING`, name, value); err != nil {
		return "", fmt.Errorf("set setting %s: %w", name, err)
	}
	return s.GetSetting(ctx, name)
}

func (s *Store) SetSetting(ctx context.Context, name, value string) error {
	_, err := s.db.ExecContext(ctx,
		`INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = excluded.value`,
		name, value)
	if err != nil {
		return fmt.Errorf("set setting %s: %w", name, err)
	}
	return nil
}

func (s *Store) RecordSigningKey(ctx context.Context, k identity.SigningKey) (string, error) {
	if _, err := s.db.ExecContext(ctx, `INSERT INTO signing_keys (key_id, public_key, private_key, created_at) VALUES ($1, $2, $3, $4)
		ON CONFLICT (key_id) DO NOTHING`, k.ID, k.PublicKey, k.Private, ms(k.Created)); err != nil {
		return "", fmt.Errorf("record signing key: %w", err)
	}
	var pub string
	if err := s.db.QueryRowContext(ctx, `SELECT public_key FROM signing_keys WHERE key_id = $1`, k.ID).Scan(&pub); err != nil {
		return "", fmt.Errorf("record signing key: %w", err)
	}
	return pub, nil
}

func (s *Store) RotateSigningKey(ctx context.Context, current, next string, k identity.SigningKey) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE settings SET value = $1 WHERE name = 'signing_key' AND value = $2`, next, current)
		if err != nil {
			return fmt.Errorf("rotate signing key: %w", err)
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return fmt.Errorf("rotate signing key: the stored key is no longer the current one: %w", identity.ErrAlreadyExists)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO signing_keys (key_id, public_key, private_key, created_at) VALUES ($1, $2, $3, $4)`,
			k.ID, k.PublicKey, next, ms(k.Created)); isUniqueViolation(err) {
			return fmt.Errorf("rotate signing key: %s is taken: %w", k.ID, identity.ErrAlreadyExists)
		} else if err != nil {
			return fmt.Errorf("rotate signing key: %w", err)
		}
		return nil
	})
}

func (s *Store) SigningKeys(ctx context.Context) ([]identity.SigningKey, error) {
	var out []identity.SigningKey
	err := sqlin.Each(ctx, s.db, `SELECT key_id, public_key, private_key, created_at, retired_at FROM signing_keys ORDER BY created_at, key_id`, nil,
		func(r *sql.Rows) error {
			var k identity.SigningKey
			var created, retired int64
			if err := r.Scan(&k.ID, &k.PublicKey, &k.Private, &created, &retired); err != nil {
				return err
			}
			k.Created = time.UnixMilli(created)
			if retired != 0 {
				k.Retired = time.UnixMilli(retired)
			}
			out = append(out, k)
			return nil
		})
	if err != nil {
		return nil, fmt.Errorf("list signing keys: %w", err)
	}
	return out, nil
}

func (s *Store) RetireSigningKey(ctx context.Context, keyID string, at time.Time) error {
	// A retired key signs nothing more: its private half goes.
	res, err := s.db.ExecContext(ctx, `UPDATE signing_keys SET retired_at = $1, private_key = '' WHERE key_id = $2 AND retired_at = 0`, ms(at), keyID)
	if err != nil {
		return fmt.Errorf("retire signing key: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		var exists int
		if err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM signing_keys WHERE key_id = $1`, keyID).Scan(&exists); err != nil {
			return fmt.Errorf("retire signing key: %w", err)
		}
		if exists == 0 {
			return identity.ErrNotFound
		}
	}
	return nil
}

func (s *Store) CreateAccessToken(ctx context.Context, a identity.AccessToken) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO accounts (token_hash, user_id, created_at) VALUES ($1, $2, $3)`,
		a.TokenHash, a.UserID, ms(a.CreatedAt))
	if isUniqueViolation(err) {
		return identity.ErrAlreadyExists
	}
	if err != nil {
		return fmt.Errorf("create account: %w", err)
	}
	return nil
}

func (s *Store) GetAccessToken(ctx context.Context, tokenHash string) (identity.AccessToken, error) {
	a := identity.AccessToken{TokenHash: tokenHash}
	var created int64
	st, err := s.stmt(ctx, `SELECT user_id, created_at FROM accounts WHERE token_hash = $1`)
	if err != nil {
		return a, fmt.Errorf("get account: %w", err)
	}
	err = st.QueryRowContext(ctx, tokenHash).Scan(&a.UserID, &created)
	if errors.Is(err, sql.ErrNoRows) {
		return a, identity.ErrNotFound
	}
	if err != nil {
		return a, fmt.Errorf("get account: %w", err)
	}
	a.CreatedAt = fromMS(created)
	return a, nil
}

// DeleteAccessToken revokes a token and logs it, so other replicas drop it from their caches.
func (s *Store) DeleteAccessToken(ctx context.Context, tokenHash string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		seq, err := nextChange(ctx, tx)
		if err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM accounts WHERE token_hash = $1`, tokenHash)
		if err != nil {
			return fmt.Errorf("delete account: %w", err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return identity.ErrNotFound
		}
		return s.logChanges(ctx, tx, seq, changeToken, tokenHash)
	})
}

func (s *Store) AcceptTerms(ctx context.Context, userID string, urls []string) error {
	now := ms(time.Now())
	return s.tx(ctx, func(tx *sql.Tx) error {
		for _, u := range urls {
			if _, err := tx.ExecContext(ctx, `INSERT INTO accepted_terms (user_id, url, accepted_at) VALUES ($1, $2, $3)
				ON CONFLICT (user_id, url) DO NOTHING`, userID, u, now); err != nil {
				return fmt.Errorf("accept terms: %w", err)
			}
		}
		return nil
	})
}

func (s *Store) AcceptedTerms(ctx context.Context, userID string) ([]string, error) {
	st, err := s.stmt(ctx, `SELECT url FROM accepted_terms WHERE user_id = $1 ORDER BY url`)
	if err != nil {
		return nil, fmt.Errorf("accepted terms: %w", err)
	}
	rows, err := st.QueryContext(ctx, userID)
	if err != nil {
		return nil, fmt.Errorf("accepted terms: %w", err)
	}
	defer rows.Close()
	var urls []string
	for rows.Next() {
		var u string
		if err := rows.Scan(&u); err != nil {
			return nil, fmt.Errorf("accepted terms: %w", err)
		}
		urls = append(urls, u)
	}
	return urls, rows.Err()
}

const sessionColumns = `sid, client_secret, medium, address, send_attempt, next_link, created_at, validated_at, failed_attempts, mails_sent`

func scanSession(row interface{ Scan(...any) error }) (identity.Session, error) {
	var s identity.Session
	var created, validated int64
	err := row.Scan(&s.SID, &s.ClientSecret, &s.ThreePID.Medium, &s.ThreePID.Address, &s.SendAttempt,
		&s.NextLink, &created, &validated, &s.FailedAttempts, &s.MailsSent)
	if errors.Is(err, sql.ErrNoRows) {
		return s, identity.ErrNotFound
	}
	if err != nil {
		return s, fmt.Errorf("scan session: %w", err)
	}
	s.CreatedAt, s.ValidatedAt = fromMS(created), fromMS(validated)
	return s, nil
}

// Advisory lock classes: PostgreSQL serialises quota checks per key with them (SQLite's
// immediate transactions already run one writer at a time).
const (
	lockInviteThreePID = 1
	lockInviteSender   = 2
	lockMailAddress    = 3
)

// lock takes a transaction-scoped lock on (class, key) on PostgreSQL, so that counting and
// inserting under a quota is atomic across replicas. Callers take classes in ascending order.
func (s *Store) lock(ctx context.Context, tx *sql.Tx, class int, key string) error {
	if s.db.Engine != Postgres {
		return nil
	}
	if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1, hashtext($2))`, class, key); err != nil {
		return fmt.Errorf("lock: %w", err)
	}
	return nil
}

func mailsSent(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, tp threepid.ThreePID, since time.Time) (int, error) {
	var n int
	if err := q.QueryRowContext(ctx, `SELECT COALESCE(SUM(mails_sent), 0) FROM validation_sessions
		WHERE medium = $1 AND address = $2 AND created_at >= $3`, tp.Medium, tp.Address, ms(since)).Scan(&n); err != nil {
		return 0, fmt.Errorf("count mails: %w", err)
	}
	return n, nil
}

func (s *Store) MailsSent(ctx context.Context, tp threepid.ThreePID, since time.Time) (int, error) {
	return mailsSent(ctx, s.db, tp, since)
}

func (s *Store) CreateSession(ctx context.Context, sess identity.Session, tokenHash string, tokenExpires time.Time, quota identity.MailQuota) error {
	if sess.MailsSent == 0 {
		sess.MailsSent = 1
	}
	return s.tx(ctx, func(tx *sql.Tx) error {
		if quota.PerAddress > 0 {
			if err := s.lock(ctx, tx, lockMailAddress, sess.ThreePID.Medium+" "+sess.ThreePID.Address); err != nil {
				return err
			}
			n, err := mailsSent(ctx, tx, sess.ThreePID, quota.Since)
			if err != nil {
				return err
			}
			if n+sess.MailsSent > quota.PerAddress {
				return identity.ErrAddressMailLimit
			}
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO validation_sessions (`+sessionColumns+`)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
			sess.SID, sess.ClientSecret, sess.ThreePID.Medium, sess.ThreePID.Address, sess.SendAttempt,
			sess.NextLink, ms(sess.CreatedAt), ms(sess.ValidatedAt), sess.FailedAttempts, sess.MailsSent)
		if isUniqueViolation(err) {
			return identity.ErrAlreadyExists
		}
		if err != nil {
			return fmt.Errorf("create session: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO session_tokens (sid, token_hash, expires_at) VALUES ($1, $2, $3)`,
			sess.SID, tokenHash, ms(tokenExpires)); err != nil {
			return fmt.Errorf("create session token: %w", err)
		}
		return nil
	})
}

func (s *Store) GetSession(ctx context.Context, sid string) (identity.Session, error) {
	return scanSession(s.db.QueryRowContext(ctx, `SELECT `+sessionColumns+` FROM validation_sessions WHERE sid = $1`, sid))
}

func (s *Store) FindSession(ctx context.Context, clientSecret string, tp threepid.ThreePID) (identity.Session, error) {
	return scanSession(s.db.QueryRowContext(ctx, `SELECT `+sessionColumns+` FROM validation_sessions
		WHERE client_secret = $1 AND medium = $2 AND address = $3`, clientSecret, tp.Medium, tp.Address))
}

func (s *Store) AddSessionToken(ctx context.Context, sid string, sendAttempt int64, tokenHash string, expires time.Time, quota identity.MailQuota) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		sess, err := scanSession(tx.QueryRowContext(ctx, `SELECT `+sessionColumns+` FROM validation_sessions WHERE sid = $1`, sid))
		if err != nil {
			return err
		}
		if quota.PerAddress > 0 {
			if err := s.lock(ctx, tx, lockMailAddress, sess.ThreePID.Medium+" "+sess.ThreePID.Address); err != nil {
				return err
			}
		}
		// Counting under the row lock of the update keeps concurrent attempts of one session in line.
		q := `UPDATE validation_sessions SET send_attempt = $1, mails_sent = mails_sent + 1 WHERE sid = $2`
		args := []any{sendAttempt, sid}
		if quota.PerSession > 0 {
			q += ` AND mails_sent < $3`
			args = append(args, quota.PerSession)
		}
		res, err := tx.ExecContext(ctx, q, args...)
		if err != nil {
			return fmt.Errorf("update session: %w", err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return identity.ErrSessionMailLimit
		}
		if quota.PerAddress > 0 {
			n, err := mailsSent(ctx, tx, sess.ThreePID, quota.Since)
			if err != nil {
				return err
			}
			if n > quota.PerAddress {
				return identity.ErrAddressMailLimit
			}
		}
		// Only the newest mail's token works: an older mail, perhaps read by someone else, is void.
		if _, err := tx.ExecContext(ctx, `DELETE FROM session_tokens WHERE sid = $1`, sid); err != nil {
			return fmt.Errorf("replace session token: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO session_tokens (sid, token_hash, expires_at) VALUES ($1, $2, $3)`,
			sid, tokenHash, ms(expires)); err != nil {
			return fmt.Errorf("add session token: %w", err)
		}
		return nil
	})
}

func (s *Store) CheckSessionToken(ctx context.Context, sid, tokenHash string, now time.Time, maxFailed int) (bool, identity.Session, error) {
	var ok bool
	var sess identity.Session
	err := s.tx(ctx, func(tx *sql.Tx) error {
		// A no-op update takes the row lock first (SQLite's immediate transaction already has the
		// write lock), so concurrent guesses are counted one after another.
		if _, err := tx.ExecContext(ctx, `UPDATE validation_sessions SET failed_attempts = failed_attempts WHERE sid = $1`, sid); err != nil {
			return fmt.Errorf("lock session: %w", err)
		}
		var err error
		sess, err = scanSession(tx.QueryRowContext(ctx, `SELECT `+sessionColumns+` FROM validation_sessions WHERE sid = $1`, sid))
		if err != nil {
			return err
		}
		if sess.FailedAttempts >= maxFailed {
			return identity.ErrTooManyAttempts
		}
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM session_tokens WHERE sid = $1 AND token_hash = $2 AND expires_at > $3`,
			sid, tokenHash, ms(now)).Scan(&n); err != nil {
			return fmt.Errorf("check token: %w", err)
		}
		ok = n > 0
		if ok {
			if sess.ValidatedAt.IsZero() {
				sess.ValidatedAt = now.UTC().Truncate(time.Millisecond)
			}
			_, err = tx.ExecContext(ctx, `UPDATE validation_sessions SET validated_at = $1 WHERE sid = $2`, ms(sess.ValidatedAt), sid)
		} else {
			sess.FailedAttempts++
			_, err = tx.ExecContext(ctx, `UPDATE validation_sessions SET failed_attempts = failed_attempts + 1 WHERE sid = $1`, sid)
		}
		if err != nil {
			return fmt.Errorf("update session: %w", err)
		}
		return nil
	})
	return ok, sess, err
}

func (s *Store) DeleteSession(ctx context.Context, sid string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM session_tokens WHERE sid = $1`, sid); err != nil {
			return fmt.Errorf("delete session tokens: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM validation_sessions WHERE sid = $1`, sid); err != nil {
			return fmt.Errorf("delete session: %w", err)
		}
		return nil
	})
}

func (s *Store) DeleteExpiredSessions(ctx context.Context, createdBefore time.Time) (int64, error) {
	var n int64
	err := s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM session_tokens WHERE sid IN
			(SELECT sid FROM validation_sessions WHERE created_at < $1)`, ms(createdBefore)); err != nil {
			return fmt.Errorf("delete expired tokens: %w", err)
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM validation_sessions WHERE created_at < $1`, ms(createdBefore))
		if err != nil {
			return fmt.Errorf("delete expired sessions: %w", err)
		}
		n, _ = res.RowsAffected()
		return nil
	})
	return n, err
}

func (s *Store) Bind(ctx context.Context, req identity.BindRequest) error {
	b := req.Binding
	return s.tx(ctx, func(tx *sql.Tx) error {
		seq, err := nextChange(ctx, tx)
		if err != nil {
			return err
		}
		if err := checkPepper(ctx, tx, req.Pepper); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO bindings (medium, address, mxid, created_at, not_before, not_after, source)
			VALUES ($1, $2, $3, $4, $5, $6, $7)
			ON CONFLICT (medium, address) DO UPDATE SET mxid = excluded.mxid, created_at = excluded.created_at,
				not_before = excluded.not_before, not_after = excluded.not_after, source = excluded.source`,
			b.Medium, b.Address, b.MXID, ms(b.CreatedAt), ms(b.NotBefore), ms(b.NotAfter), b.Source); err != nil {
			return fmt.Errorf("store binding: %w", err)
		}
		old, err := deleteReturning(ctx, tx, `DELETE FROM binding_hashes WHERE medium = $1 AND address = $2 RETURNING hash`, b.Medium, b.Address)
		if err != nil {
			return fmt.Errorf("replace lookup hashes: %w", err)
		}
		for _, h := range req.Hashes {
			if _, err := tx.ExecContext(ctx, `INSERT INTO binding_hashes (hash, medium, address) VALUES ($1, $2, $3)
				ON CONFLICT (hash) DO UPDATE SET medium = excluded.medium, address = excluded.address`, h, b.Medium, b.Address); err != nil {
				return fmt.Errorf("store lookup hash: %w", err)
			}
		}
		oldFolded, err := replaceFoldedHashes(ctx, tx, b.ThreePID, req.FoldedHashes)
		if err != nil {
			return err
		}
		changed := append(append(append(old, req.Hashes...), oldFolded...), req.FoldedHashes...)
		if err := s.logChanges(ctx, tx, seq, changeHash, changed...); err != nil {
			return err
		}
		if req.Deliver == nil {
			return s.appendBindAudit(ctx, tx, req, nil)
		}
		invites, err := queueInvites(ctx, tx, b, req.Deliver)
		if err != nil {
			return err
		}
		return s.appendBindAudit(ctx, tx, req, invites)
	})
}

// queueInvites marks the invites pending for b's 3PID delivered and queues the onbind
// deliveries deliver builds for them, inside the binding's transaction; it returns the invites.
func queueInvites(ctx context.Context, tx *sql.Tx, b identity.Binding, deliver func([]identity.Invite) ([]identity.OnBindDelivery, error)) ([]identity.Invite, error) {
	invites, err := pendingInvites(ctx, tx, b.ThreePID, b.CreatedAt)
	if err != nil {
		return nil, err
	}
	if len(invites) == 0 {
		return nil, nil
	}
	deliveries, err := deliver(invites)
	if err != nil {
		return nil, fmt.Errorf("build onbind: %w", err)
	}
	for _, inv := range invites {
		if _, err := tx.ExecContext(ctx, `UPDATE invites SET delivered_at = $1 WHERE token = $2`, ms(b.CreatedAt), inv.Token); err != nil {
			return nil, fmt.Errorf("mark invite delivered: %w", err)
		}
	}
	for _, d := range deliveries {
		if err := insertDelivery(ctx, tx, d); err != nil {
			return nil, err
		}
	}
	return invites, nil
}

// appendBindAudit appends the records of a binding and the invites it delivered, last in
// Bind's transaction.
func (s *Store) appendBindAudit(ctx context.Context, tx *sql.Tx, req identity.BindRequest, delivered []identity.Invite) error {
	if req.Audit == nil {
		return nil
	}
	return s.appendAudit(ctx, tx, req.Audit(delivered))
}

const bindingColumns = `medium, address, mxid, created_at, not_before, not_after, source`

func scanBinding(row interface{ Scan(...any) error }) (identity.Binding, error) {
	var b identity.Binding
	var created, nb, na int64
	err := row.Scan(&b.Medium, &b.Address, &b.MXID, &created, &nb, &na, &b.Source)
	if errors.Is(err, sql.ErrNoRows) {
		return b, identity.ErrNotFound
	}
	if err != nil {
		return b, fmt.Errorf("scan binding: %w", err)
	}
	b.CreatedAt, b.NotBefore, b.NotAfter = fromMS(created), fromMS(nb), fromMS(na)
	return b, nil
}

func (s *Store) GetBinding(ctx context.Context, tp threepid.ThreePID) (identity.Binding, error) {
	return scanBinding(s.db.QueryRowContext(ctx, `SELECT `+bindingColumns+` FROM bindings WHERE medium = $1 AND address = $2`,
		tp.Medium, tp.Address))
}

func (s *Store) DeleteBinding(ctx context.Context, tp threepid.ThreePID, mxid string, recs ...audit.Record) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		seq, err := nextChange(ctx, tx)
		if err != nil {
			return err
		}
		q := `DELETE FROM bindings WHERE medium = $1 AND address = $2`
		args := []any{tp.Medium, tp.Address}
		if mxid != "" {
			q += ` AND mxid = $3`
			args = append(args, mxid)
		}
		res, err := tx.ExecContext(ctx, q, args...)
		if err != nil {
			return fmt.Errorf("delete binding: %w", err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return identity.ErrNotFound
		}
		old, err := deleteReturning(ctx, tx, `DELETE FROM binding_hashes WHERE medium = $1 AND address = $2 RETURNING hash`, tp.Medium, tp.Address)
		if err != nil {
			return fmt.Errorf("delete lookup hashes: %w", err)
		}
		oldFolded, err := replaceFoldedHashes(ctx, tx, tp, nil)
		if err != nil {
			return err
		}
		if err := s.logChanges(ctx, tx, seq, changeHash, append(old, oldFolded...)...); err != nil {
			return err
		}
		return s.appendAudit(ctx, tx, recs)
	})
}

func (s *Store) ListBindings(ctx context.Context, medium, after string, limit int) ([]identity.Binding, error) {
	q := `SELECT ` + bindingColumns + ` FROM bindings WHERE address > $1`
	args := []any{after}
	if medium != "" {
		q += ` AND medium = $2`
		args = append(args, medium)
	}
	q += fmt.Sprintf(` ORDER BY address, medium LIMIT %d`, limit)
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list bindings: %w", err)
	}
	defer rows.Close()
	var out []identity.Binding
	for rows.Next() {
		b, err := scanBinding(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, rows.Err()
}

// inChunk bounds the parameters per statement: larger IN lists cost more per address on SQLite.
const inChunk = 100

const lookupHashesQuery = `SELECT h.hash, b.mxid FROM binding_hashes h
	JOIN bindings b ON b.medium = h.medium AND b.address = h.address WHERE h.hash `

// foldedHashesQuery answers a folded hash only when exactly one binding has it.
const foldedHashesQuery = `SELECT f.hash, MIN(b.mxid) FROM binding_folded_hashes f
	JOIN bindings b ON b.medium = f.medium AND b.address = f.address WHERE f.hash `
const foldedHashesGroup = ` GROUP BY f.hash HAVING COUNT(*) = 1`

func (s *Store) LookupHashes(ctx context.Context, hashes []string) (map[string]string, error) {
	out := make(map[string]string, len(hashes))
	if err := s.queryHashes(ctx, lookupHashesQuery, "", hashes, out); err != nil {
		return nil, err
	}
	var rest []string
	for _, h := range hashes {
		if _, ok := out[h]; !ok {
			rest = append(rest, h)
		}
	}
	if err := s.queryHashes(ctx, foldedHashesQuery, foldedHashesGroup, rest, out); err != nil {
		return nil, err
	}
	return out, nil
}

// lookupSizes are the IN-list lengths SQLite lookups are prepared for; a chunk is padded to
// the next one by repeating its last hash (SQLite drops duplicates from an IN list).
var lookupSizes = []int{1, 2, 4, 8, 16, 32, 64, inChunk}

// queryHashes runs query (ending in "WHERE hash ") for hashes in batches, adding hash → MXID to
// out, on statements prepared once.
func (s *Store) queryHashes(ctx context.Context, query, suffix string, hashes []string, out map[string]string) error {
	for len(hashes) > 0 {
		var st *sql.Stmt
		var args []any
		var err error
		if s.db.Engine == Postgres {
			// One round trip with an array parameter, whatever the batch size.
			st, err = s.stmt(ctx, query+`= ANY($1)`+suffix)
			args = []any{hashes}
			hashes = nil
		} else {
			chunk := hashes[:min(len(hashes), inChunk)]
			hashes = hashes[len(chunk):]
			size := lookupSizes[0]
			for _, n := range lookupSizes {
				if size = n; n >= len(chunk) {
					break
				}
			}
			args = make([]any, size)
			for i := range args {
				args[i] = chunk[min(i, len(chunk)-1)]
			}
			// ? rather than $N: SQLite finds a named parameter by a linear search.
			st, err = s.stmt(ctx, query+`IN (`+strings.TrimSuffix(strings.Repeat("?,", size), ",")+`)`+suffix)
		}
		if err != nil {
			return fmt.Errorf("lookup hashes: %w", err)
		}
		rows, err := st.QueryContext(ctx, args...)
		if err != nil {
			return fmt.Errorf("lookup hashes: %w", err)
		}
		for rows.Next() {
			var h, mxid string
			if err := rows.Scan(&h, &mxid); err != nil {
				rows.Close()
				return fmt.Errorf("lookup hashes: %w", err)
			}
			out[h] = mxid
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("lookup hashes: %w", err)
		}
	}
	return nil
}

// replaceFoldedHashes gives tp the folded hashes hashes and returns the ones it had.
func replaceFoldedHashes(ctx context.Context, tx *sql.Tx, tp threepid.ThreePID, hashes []string) ([]string, error) {
	old, err := deleteReturning(ctx, tx, `DELETE FROM binding_folded_hashes WHERE medium = $1 AND address = $2 RETURNING hash`, tp.Medium, tp.Address)
	if err != nil {
		return nil, fmt.Errorf("replace folded lookup hashes: %w", err)
	}
	for _, h := range hashes {
		if _, err := tx.ExecContext(ctx, `INSERT INTO binding_folded_hashes (hash, medium, address) VALUES ($1, $2, $3)
			ON CONFLICT DO NOTHING`, h, tp.Medium, tp.Address); err != nil {
			return nil, fmt.Errorf("store folded lookup hash: %w", err)
		}
	}
	return old, nil
}

func (s *Store) LookupThreePIDs(ctx context.Context, tps []threepid.ThreePID) (map[threepid.ThreePID]string, error) {
	out := make(map[threepid.ThreePID]string)
	for len(tps) > 0 {
		chunk := tps[:min(len(tps), inChunk/2)]
		tps = tps[len(chunk):]
		var cond strings.Builder
		args := make([]any, 0, 2*len(chunk))
		for i, tp := range chunk {
			if i > 0 {
				cond.WriteString(" OR ")
			}
			fmt.Fprintf(&cond, "(medium = $%d AND address = $%d)", 2*i+1, 2*i+2)
			args = append(args, tp.Medium, tp.Address)
		}
		rows, err := s.db.QueryContext(ctx, `SELECT medium, address, mxid FROM bindings WHERE `+cond.String(), args...)
		if err != nil {
			return nil, fmt.Errorf("lookup 3pids: %w", err)
		}
		for rows.Next() {
			var tp threepid.ThreePID
			var mxid string
			if err := rows.Scan(&tp.Medium, &tp.Address, &mxid); err != nil {
				rows.Close()
				return nil, fmt.Errorf("lookup 3pids: %w", err)
			}
			out[tp] = mxid
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("lookup 3pids: %w", err)
		}
	}
	return out, nil
}

func (s *Store) RehashBindings(ctx context.Context, pepper string, hashFn func(threepid.ThreePID) (hashes, folded []string)) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		seq, err := nextChange(ctx, tx)
		if err != nil {
			return err
		}
		if err := s.logChanges(ctx, tx, seq, changeRehash, ""); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO settings (name, value) VALUES ($1, $2)
			ON CONFLICT (name) DO UPDATE SET value = excluded.value`, identity.SettingPepper, pepper); err != nil {
			return fmt.Errorf("store pepper: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM binding_hashes`); err != nil {
			return fmt.Errorf("clear lookup hashes: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM binding_folded_hashes`); err != nil {
			return fmt.Errorf("clear folded lookup hashes: %w", err)
		}
		rows, err := tx.QueryContext(ctx, `SELECT medium, address FROM bindings`)
		if err != nil {
			return fmt.Errorf("read bindings: %w", err)
		}
		var tps []threepid.ThreePID
		for rows.Next() {
			var tp threepid.ThreePID
			if err := rows.Scan(&tp.Medium, &tp.Address); err != nil {
				rows.Close()
				return fmt.Errorf("read bindings: %w", err)
			}
			tps = append(tps, tp)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("read bindings: %w", err)
		}
		stmt, err := tx.PrepareContext(ctx, `INSERT INTO binding_hashes (hash, medium, address) VALUES ($1, $2, $3)`)
		if err != nil {
			return fmt.Errorf("prepare rehash: %w", err)
		}
		defer stmt.Close()
		for _, tp := range tps {
			hashes, folded := hashFn(tp)
			for _, h := range hashes {
				if _, err := stmt.ExecContext(ctx, h, tp.Medium, tp.Address); err != nil {
					return fmt.Errorf("store lookup hash: %w", err)
				}
			}
			if _, err := replaceFoldedHashes(ctx, tx, tp, folded); err != nil {
				return err
			}
		}
		return nil
	})
}

func (s *Store) CreateInvite(ctx context.Context, inv identity.Invite, limits identity.InviteLimits, recs ...audit.Record) error {
	extra, err := json.Marshal(inv.Extra)
	if err != nil {
		return fmt.Errorf("encode invite: %w", err)
	}
	return s.tx(ctx, func(tx *sql.Tx) error {
		pending := func(cond string, args ...any) (int, error) {
			var n int
			args = append(args, ms(inv.CreatedAt))
			err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM invites WHERE `+cond+
				fmt.Sprintf(` AND delivered_at = 0 AND expires_at > $%d`, len(args)), args...).Scan(&n)
			if err != nil {
				return 0, fmt.Errorf("count pending invites: %w", err)
			}
			return n, nil
		}
		if limits.PerThreePID > 0 {
			if err := s.lock(ctx, tx, lockInviteThreePID, inv.ThreePID.Medium+" "+inv.ThreePID.Address); err != nil {
				return err
			}
			n, err := pending(`medium = $1 AND address = $2`, inv.ThreePID.Medium, inv.ThreePID.Address)
			if err != nil {
				return err
			}
			if n >= limits.PerThreePID {
				return identity.ErrThreePIDInviteLimit
			}
		}
		if limits.PerSender > 0 {
			if err := s.lock(ctx, tx, lockInviteSender, inv.Sender); err != nil {
				return err
			}
			n, err := pending(`sender = $1`, inv.Sender)
			if err != nil {
				return err
			}
			if n >= limits.PerSender {
				return identity.ErrSenderInviteLimit
			}
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO invites (token, medium, address, room_id, sender, extra, created_at, expires_at, ephemeral_key)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`, inv.Token, inv.ThreePID.Medium, inv.ThreePID.Address, inv.RoomID,
			inv.Sender, string(extra), ms(inv.CreatedAt), ms(inv.ExpiresAt), inv.EphemeralKey)
		if isUniqueViolation(err) {
			return identity.ErrAlreadyExists
		}
		if err != nil {
			return fmt.Errorf("create invite: %w", err)
		}
		if inv.EphemeralKey != "" {
			if _, err := tx.ExecContext(ctx, `INSERT INTO ephemeral_keys (public_key, created_at, expires_at) VALUES ($1, $2, $3)`,
				inv.EphemeralKey, ms(inv.CreatedAt), ms(inv.ExpiresAt)); err != nil {
				return fmt.Errorf("store ephemeral key: %w", err)
			}
		}
		return s.appendAudit(ctx, tx, recs)
	})
}

const inviteColumns = `token, medium, address, room_id, sender, extra, created_at, expires_at, ephemeral_key`

func scanInvite(row interface{ Scan(...any) error }) (identity.Invite, error) {
	var inv identity.Invite
	var extra string
	var created, expires int64
	err := row.Scan(&inv.Token, &inv.ThreePID.Medium, &inv.ThreePID.Address, &inv.RoomID, &inv.Sender, &extra, &created, &expires, &inv.EphemeralKey)
	if errors.Is(err, sql.ErrNoRows) {
		return inv, identity.ErrNotFound
	}
	if err != nil {
		return inv, fmt.Errorf("scan invite: %w", err)
	}
	if err := json.Unmarshal([]byte(extra), &inv.Extra); err != nil {
		return inv, fmt.Errorf("decode invite: %w", err)
	}
	inv.CreatedAt, inv.ExpiresAt = fromMS(created), fromMS(expires)
	return inv, nil
}

func (s *Store) GetInvite(ctx context.Context, token string) (identity.Invite, error) {
	return scanInvite(s.db.QueryRowContext(ctx, `SELECT `+inviteColumns+` FROM invites WHERE token = $1`, token))
}

func (s *Store) DeleteInvite(ctx context.Context, token, ephemeralKey string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM invites WHERE token = $1`, token); err != nil {
			return fmt.Errorf("delete invite: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM ephemeral_keys WHERE public_key = $1`, ephemeralKey); err != nil {
			return fmt.Errorf("delete ephemeral key: %w", err)
		}
		return nil
	})
}

func (s *Store) PendingInvites(ctx context.Context, tp threepid.ThreePID) ([]identity.Invite, error) {
	tx, err := s.db.BeginTx(ctx, &sql.TxOptions{ReadOnly: s.db.Engine == Postgres})
	if err != nil {
		return nil, fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback()
	return pendingInvites(ctx, tx, tp, time.Now())
}

func pendingInvites(ctx context.Context, tx *sql.Tx, tp threepid.ThreePID, now time.Time) ([]identity.Invite, error) {
	rows, err := tx.QueryContext(ctx, `SELECT `+inviteColumns+` FROM invites
		WHERE medium = $1 AND address = $2 AND delivered_at = 0 AND expires_at > $3 ORDER BY created_at, token`,
		tp.Medium, tp.Address, ms(now))
	if err != nil {
		return nil, fmt.Errorf("pending invites: %w", err)
	}
	defer rows.Close()
	var out []identity.Invite
	for rows.Next() {
		inv, err := scanInvite(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, inv)
	}
	return out, rows.Err()
}

func (s *Store) EphemeralKeyExists(ctx context.Context, publicKey string) (bool, error) {
	var n int
	if err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM ephemeral_keys WHERE public_key = $1`, publicKey).Scan(&n); err != nil {
		return false, fmt.Errorf("ephemeral key: %w", err)
	}
	return n > 0, nil
}

func (s *Store) PruneInvites(ctx context.Context, now time.Time) (int64, int64, error) {
	var invites, keys int64
	err := s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM invites WHERE expires_at < $1`, ms(now))
		if err != nil {
			return fmt.Errorf("prune invites: %w", err)
		}
		invites, _ = res.RowsAffected()
		if res, err = tx.ExecContext(ctx, `DELETE FROM ephemeral_keys WHERE expires_at < $1`, ms(now)); err != nil {
			return fmt.Errorf("prune ephemeral keys: %w", err)
		}
		keys, _ = res.RowsAffected()
		return nil
	})
	return invites, keys, err
}

const deliveryColumns = `id, server_name, body, attempts, next_attempt_at, expires_at, created_at, last_error`

func scanDelivery(row interface{ Scan(...any) error }) (identity.OnBindDelivery, error) {
	var d identity.OnBindDelivery
	var body string
	var next, expires, created int64
	if err := row.Scan(&d.ID, &d.ServerName, &body, &d.Attempts, &next, &expires, &created, &d.LastError); err != nil {
		return d, fmt.Errorf("scan delivery: %w", err)
	}
	d.Body = []byte(body)
	d.NextAttemptAt, d.ExpiresAt, d.CreatedAt = fromMS(next), fromMS(expires), fromMS(created)
	return d, nil
}

func (s *Store) queryDeliveries(ctx context.Context, q string, args ...any) ([]identity.OnBindDelivery, error) {
	var out []identity.OnBindDelivery
	err := sqlin.Each(ctx, s.db, q, args, func(rows *sql.Rows) error {
		d, err := scanDelivery(rows)
		out = append(out, d)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("deliveries: %w", err)
	}
	return out, nil
}

func (s *Store) DueDeliveries(ctx context.Context, now time.Time, limit int) ([]identity.OnBindDelivery, error) {
	return s.queryDeliveries(ctx, `SELECT `+deliveryColumns+` FROM onbind_queue WHERE next_attempt_at <= $1
		ORDER BY next_attempt_at, id LIMIT `+fmt.Sprint(limit), ms(now))
}

func (s *Store) ListDeliveries(ctx context.Context) ([]identity.OnBindDelivery, error) {
	return s.queryDeliveries(ctx, `SELECT `+deliveryColumns+` FROM onbind_queue ORDER BY created_at, id`)
}

func (s *Store) ClaimDelivery(ctx context.Context, id string, due, until time.Time) (bool, error) {
	res, err := s.db.ExecContext(ctx, `UPDATE onbind_queue SET next_attempt_at = $1 WHERE id = $2 AND next_attempt_at = $3`,
		ms(until), id, ms(due))
	if err != nil {
		return false, fmt.Errorf("claim delivery: %w", err)
	}
	n, _ := res.RowsAffected()
	return n == 1, nil
}

func (s *Store) DeliveryDone(ctx context.Context, id string, recs ...audit.Record) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM onbind_queue WHERE id = $1`, id); err != nil {
			return fmt.Errorf("delivery done: %w", err)
		}
		return s.appendAudit(ctx, tx, recs)
	})
}

func (s *Store) ReplaceDelivery(ctx context.Context, id string, parts []identity.OnBindDelivery) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM onbind_queue WHERE id = $1`, id)
		if err != nil {
			return fmt.Errorf("replace delivery: %w", err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return identity.ErrNotFound
		}
		for _, d := range parts {
			if err := insertDelivery(ctx, tx, d); err != nil {
				return err
			}
		}
		return nil
	})
}

func insertDelivery(ctx context.Context, tx *sql.Tx, d identity.OnBindDelivery) error {
	if _, err := tx.ExecContext(ctx, `INSERT INTO onbind_queue (id, server_name, body, attempts, next_attempt_at, expires_at, created_at, last_error)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
		d.ID, d.ServerName, string(d.Body), d.Attempts, ms(d.NextAttemptAt), ms(d.ExpiresAt), ms(d.CreatedAt), d.LastError); err != nil {
		return fmt.Errorf("queue onbind: %w", err)
	}
	return nil
}

func (s *Store) DeliveryFailed(ctx context.Context, id string, next time.Time, lastError string) error {
	if _, err := s.db.ExecContext(ctx, `UPDATE onbind_queue SET attempts = attempts + 1, next_attempt_at = $1, last_error = $2 WHERE id = $3`,
		ms(next), lastError, id); err != nil {
		return fmt.Errorf("delivery failed: %w", err)
	}
	return nil
}
