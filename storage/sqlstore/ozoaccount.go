package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/ozo-platform/ozo-identity/audit"
	"github.com/ozo-platform/ozo-identity/ozoaccount"
)

// OZOAccounts implements ozoaccount.Store. Account events are appended to store's audit chain
// in their own transaction.
type OZOAccounts struct {
	db    *DB
	store *Store
}

var _ ozoaccount.Store = (*OZOAccounts)(nil)

// NewOZOAccounts returns the OZO account store on store's migrated database; its audit chain
// (SetAuditChain) must be set before an account event can be stored.
func NewOZOAccounts(store *Store) *OZOAccounts { return &OZOAccounts{db: store.db, store: store} }

const ozoAccountColumns = `id, email, display_name, kind, fhir_ref, status, language, mxid, password_hash,
	totp_secret, totp_pending, totp_last_step, created_at, updated_at, activated_at`

func scanOZOAccount(row interface{ Scan(...any) error }) (ozoaccount.Account, error) {
	var a ozoaccount.Account
	var kind, status string
	var created, updated, activated int64
	err := row.Scan(&a.ID, &a.Email, &a.DisplayName, &kind, &a.FHIRRef, &status, &a.Language, &a.MXID, &a.PasswordHash,
		&a.TOTPSecret, &a.TOTPPending, &a.TOTPLastStep, &created, &updated, &activated)
	if errors.Is(err, sql.ErrNoRows) {
		return a, ozoaccount.ErrNotFound
	}
	if err != nil {
		return a, err
	}
	a.Kind, a.Status = ozoaccount.Kind(kind), ozoaccount.Status(status)
	a.CreatedAt, a.UpdatedAt, a.ActivatedAt = fromMS(created), fromMS(updated), fromMS(activated)
	return a, nil
}

func (s *OZOAccounts) CreateAccount(ctx context.Context, a ozoaccount.Account, recs ...audit.Record) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO ozo_accounts (`+ozoAccountColumns+`)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)`,
			a.ID, a.Email, a.DisplayName, string(a.Kind), a.FHIRRef, string(a.Status), a.Language, a.MXID, a.PasswordHash,
			a.TOTPSecret, a.TOTPPending, a.TOTPLastStep, ms(a.CreatedAt), ms(a.UpdatedAt), ms(a.ActivatedAt))
		if isUniqueViolation(err) {
			return ozoaccount.ErrAlreadyExists
		}
		if err != nil {
			return fmt.Errorf("create ozo account: %w", err)
		}
		return s.store.appendAudit(ctx, tx, recs)
	})
}

func (s *OZOAccounts) getBy(ctx context.Context, column, value string) (ozoaccount.Account, error) {
	a, err := scanOZOAccount(s.db.QueryRowContext(ctx,
		`SELECT `+ozoAccountColumns+` FROM ozo_accounts WHERE `+column+` = $1 ORDER BY id LIMIT 1`, value))
	if err != nil && !errors.Is(err, ozoaccount.ErrNotFound) {
		return a, fmt.Errorf("get ozo account: %w", err)
	}
	return a, err
}

func (s *OZOAccounts) GetAccount(ctx context.Context, id string) (ozoaccount.Account, error) {
	return s.getBy(ctx, "id", id)
}

func (s *OZOAccounts) GetAccountByEmail(ctx context.Context, email string) (ozoaccount.Account, error) {
	return s.getBy(ctx, "email", email)
}

func (s *OZOAccounts) GetAccountByFHIRRef(ctx context.Context, ref string) (ozoaccount.Account, error) {
	if ref == "" {
		return ozoaccount.Account{}, ozoaccount.ErrNotFound
	}
	return s.getBy(ctx, "fhir_ref", ref)
}

func (s *OZOAccounts) ListAccounts(ctx context.Context, after string, limit int) ([]ozoaccount.Account, error) {
	rows, err := s.db.QueryContext(ctx,
		`SELECT `+ozoAccountColumns+` FROM ozo_accounts WHERE id > $1 ORDER BY id LIMIT $2`, after, limit)
	if err != nil {
		return nil, fmt.Errorf("list ozo accounts: %w", err)
	}
	defer rows.Close()
	var out []ozoaccount.Account
	for rows.Next() {
		a, err := scanOZOAccount(rows)
		if err != nil {
			return nil, fmt.Errorf("list ozo accounts: %w", err)
		}
		out = append(out, a)
	}
	return out, rows.Err()
}

func (s *OZOAccounts) UpdateAccount(ctx context.Context, a ozoaccount.Account, recs ...audit.Record) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE ozo_accounts SET email = $2, display_name = $3, kind = $4, fhir_ref = $5,
			status = $6, language = $7, mxid = $8, password_hash = $9, totp_secret = $10, totp_pending = $11,
			updated_at = $12, activated_at = $13 WHERE id = $1`,
			a.ID, a.Email, a.DisplayName, string(a.Kind), a.FHIRRef, string(a.Status), a.Language, a.MXID, a.PasswordHash,
			a.TOTPSecret, a.TOTPPending, ms(a.UpdatedAt), ms(a.ActivatedAt))
		if isUniqueViolation(err) {
			return ozoaccount.ErrAlreadyExists
		}
		if err != nil {
			return fmt.Errorf("update ozo account: %w", err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return ozoaccount.ErrNotFound
		}
		return s.store.appendAudit(ctx, tx, recs)
	})
}

func (s *OZOAccounts) DeleteAccount(ctx context.Context, id string, recs ...audit.Record) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		// Foreign keys cascade on both engines, but SQLite only with the pragma on: delete explicitly.
		for _, q := range []string{`DELETE FROM ozo_account_tokens WHERE account_id = $1`,
			`DELETE FROM ozo_account_recovery_codes WHERE account_id = $1`} {
			if _, err := tx.ExecContext(ctx, q, id); err != nil {
				return fmt.Errorf("delete ozo account: %w", err)
			}
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM ozo_accounts WHERE id = $1`, id)
		if err != nil {
			return fmt.Errorf("delete ozo account: %w", err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return ozoaccount.ErrNotFound
		}
		return s.store.appendAudit(ctx, tx, recs)
	})
}

// tx runs fn in a transaction, committing when fn returns nil.
func (s *OZOAccounts) tx(ctx context.Context, fn func(*sql.Tx) error) error {
	return inTx(ctx, s.db.DB, "", fn)
}

func (s *OZOAccounts) CreateToken(ctx context.Context, t ozoaccount.Token, recs ...audit.Record) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO ozo_account_tokens (token_hash, account_id, purpose, created_at, expires_at, used_at)
			VALUES ($1, $2, $3, $4, $5, $6)`, t.Hash, t.AccountID, string(t.Purpose), ms(t.CreatedAt), ms(t.ExpiresAt), ms(t.UsedAt))
		if isUniqueViolation(err) {
			return ozoaccount.ErrAlreadyExists
		}
		if err != nil {
			return fmt.Errorf("create ozo account token: %w", err)
		}
		return s.store.appendAudit(ctx, tx, recs)
	})
}

func (s *OZOAccounts) readToken(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, hash string, purpose ozoaccount.Purpose, now time.Time) (ozoaccount.Token, error) {
	t := ozoaccount.Token{Hash: hash, Purpose: purpose}
	var created, expires, used int64
	err := q.QueryRowContext(ctx, `SELECT account_id, created_at, expires_at, used_at FROM ozo_account_tokens
		WHERE token_hash = $1 AND purpose = $2`, hash, string(purpose)).Scan(&t.AccountID, &created, &expires, &used)
	if errors.Is(err, sql.ErrNoRows) {
		return t, ozoaccount.ErrNotFound
	}
	if err != nil {
		return t, fmt.Errorf("get ozo account token: %w", err)
	}
	t.CreatedAt, t.ExpiresAt, t.UsedAt = fromMS(created), fromMS(expires), fromMS(used)
	switch {
	case used != 0:
		return t, ozoaccount.ErrTokenUsed
	case !now.Before(t.ExpiresAt):
		return t, ozoaccount.ErrTokenExpired
	}
	return t, nil
}

func (s *OZOAccounts) GetToken(ctx context.Context, hash string, purpose ozoaccount.Purpose, now time.Time) (ozoaccount.Token, error) {
	return s.readToken(ctx, s.db, hash, purpose, now)
}

func (s *OZOAccounts) UseToken(ctx context.Context, hash string, purpose ozoaccount.Purpose, now time.Time, recs ...audit.Record) (ozoaccount.Token, error) {
	// The conditional update is the decision: of two concurrent users only one changes the row,
	// and only that one appends the records.
	var t ozoaccount.Token
	used := false
	err := s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE ozo_account_tokens SET used_at = $3
			WHERE token_hash = $1 AND purpose = $2 AND used_at = 0 AND expires_at > $3`, hash, string(purpose), ms(now))
		if err != nil {
			return fmt.Errorf("use ozo account token: %w", err)
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return nil
		}
		used = true
		if t, err = s.readToken(ctx, tx, hash, purpose, now); err != nil && !errors.Is(err, ozoaccount.ErrTokenUsed) {
			return err
		}
		return s.store.appendAudit(ctx, tx, recs)
	})
	if err != nil || used {
		return t, err
	}
	t, err = s.readToken(ctx, s.db, hash, purpose, now)
	if err == nil {
		err = ozoaccount.ErrTokenUsed // used between our update and read
	}
	return t, err
}

func (s *OZOAccounts) ReleaseToken(ctx context.Context, hash string, purpose ozoaccount.Purpose, usedAt, now time.Time) (bool, error) {
	if usedAt.IsZero() {
		return false, nil
	}
	// Matching the used time is the guard: a use that completed after a release (or any other
	// use) carries its own time, and this one's release cannot undo it.
	res, err := s.db.ExecContext(ctx, `UPDATE ozo_account_tokens SET used_at = 0
		WHERE token_hash = $1 AND purpose = $2 AND used_at = $3 AND expires_at > $4`, hash, string(purpose), ms(usedAt), ms(now))
	if err != nil {
		return false, fmt.Errorf("release ozo account token: %w", err)
	}
	n, _ := res.RowsAffected()
	return n == 1, nil
}

func (s *OZOAccounts) PruneTokens(ctx context.Context, now, usedBefore time.Time) (int64, error) {
	res, err := s.db.ExecContext(ctx, `DELETE FROM ozo_account_tokens WHERE expires_at <= $1 OR (used_at <> 0 AND used_at < $2)`,
		ms(now), ms(usedBefore))
	if err != nil {
		return 0, fmt.Errorf("prune ozo account tokens: %w", err)
	}
	n, _ := res.RowsAffected()
	return n, nil
}

// useLink marks the account's unused, unexpired link of purpose used and reports whether this
// call did: as in UseToken, the conditional update decides between concurrent completions.
func useLink(ctx context.Context, tx *sql.Tx, hash string, purpose ozoaccount.Purpose, accountID string, now time.Time) (bool, error) {
	res, err := tx.ExecContext(ctx, `UPDATE ozo_account_tokens SET used_at = $4
		WHERE token_hash = $1 AND purpose = $2 AND account_id = $3 AND used_at = 0 AND expires_at > $4`,
		hash, string(purpose), accountID, ms(now))
	if err != nil {
		return false, fmt.Errorf("use %s link: %w", purpose, err)
	}
	n, _ := res.RowsAffected()
	return n == 1, nil
}

func (s *OZOAccounts) CompleteActivation(ctx context.Context, hash string, now time.Time, a ozoaccount.Account, step int64,
	recoveryHashes []string, recs ...audit.Record) error {
	used := false
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var err error
		if used, err = useLink(ctx, tx, hash, ozoaccount.PurposeActivation, a.ID, now); err != nil || !used {
			return err // the loser of concurrent completions changes nothing else
		}
		res, err := tx.ExecContext(ctx, `UPDATE ozo_accounts SET email = $2, display_name = $3, kind = $4, fhir_ref = $5,
			status = $6, language = $7, mxid = $8, password_hash = $9, totp_secret = $10, totp_pending = $11,
			updated_at = $12, activated_at = $13, totp_last_step = $14 WHERE id = $1 AND status <> $15`,
			a.ID, a.Email, a.DisplayName, string(a.Kind), a.FHIRRef, string(a.Status), a.Language, a.MXID, a.PasswordHash,
			a.TOTPSecret, a.TOTPPending, ms(a.UpdatedAt), ms(a.ActivatedAt), step, string(ozoaccount.StatusDisabled))
		if isUniqueViolation(err) {
			return ozoaccount.ErrAlreadyExists
		}
		if err != nil {
			return fmt.Errorf("complete activation: update account: %w", err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return ozoaccount.ErrNotFound // deleted or disabled since the link was checked
		}
		if err := replaceRecoveryCodes(ctx, tx, a.ID, recoveryHashes); err != nil {
			return fmt.Errorf("complete activation: %w", err)
		}
		return s.store.appendAudit(ctx, tx, recs)
	})
	if err != nil || used {
		return err
	}
	return s.unusable(ctx, hash, ozoaccount.PurposeActivation, now, a.ID)
}

// unusable says why the link hash of account accountID could not be used by a completion.
func (s *OZOAccounts) unusable(ctx context.Context, hash string, purpose ozoaccount.Purpose, now time.Time, accountID string) error {
	t, err := s.readToken(ctx, s.db, hash, purpose, now)
	switch {
	case t.AccountID != "" && t.AccountID != accountID:
		return ozoaccount.ErrNotFound // another account's link names nothing here
	case err == nil:
		return ozoaccount.ErrTokenUsed // used between our update and read
	}
	return err
}

func (s *OZOAccounts) CompleteReset(ctx context.Context, hash string, now time.Time, a ozoaccount.Account, lockKey string,
	recs ...audit.Record) error {
	used := false
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var err error
		if used, err = useLink(ctx, tx, hash, ozoaccount.PurposeReset, a.ID, now); err != nil || !used {
			return err
		}
		// Only the password: an admin's concurrent change of the other fields stays. The email
		// guard keeps lockKey the account's own.
		res, err := tx.ExecContext(ctx, `UPDATE ozo_accounts SET password_hash = $2, updated_at = $3
			WHERE id = $1 AND status = $4 AND email = $5`,
			a.ID, a.PasswordHash, ms(a.UpdatedAt), string(ozoaccount.StatusActive), a.Email)
		if err != nil {
			return fmt.Errorf("complete reset: update account: %w", err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return ozoaccount.ErrNotFound // deleted, disabled or readdressed since the link was checked
		}
		// A reset may follow a stolen password: logins begun or completed before it end here.
		if _, err := tx.ExecContext(ctx, `DELETE FROM ozo_account_tokens WHERE account_id = $1 AND purpose IN ($2, $3)`,
			a.ID, string(ozoaccount.PurposeLogin), string(ozoaccount.PurposeHandoff)); err != nil {
			return fmt.Errorf("complete reset: end login tickets and hand-off codes: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM ozo_login_failures WHERE login_key = $1`, lockKey); err != nil {
			return fmt.Errorf("complete reset: clear login failures: %w", err)
		}
		return s.store.appendAudit(ctx, tx, recs)
	})
	if err != nil || used {
		return err
	}
	return s.unusable(ctx, hash, ozoaccount.PurposeReset, now, a.ID)
}

func (s *OZOAccounts) DeleteTokens(ctx context.Context, accountID string, purpose ozoaccount.Purpose) error {
	var err error
	if purpose == "" {
		_, err = s.db.ExecContext(ctx, `DELETE FROM ozo_account_tokens WHERE account_id = $1`, accountID)
	} else {
		_, err = s.db.ExecContext(ctx, `DELETE FROM ozo_account_tokens WHERE account_id = $1 AND purpose = $2`, accountID, string(purpose))
	}
	if err != nil {
		return fmt.Errorf("delete ozo account tokens: %w", err)
	}
	return nil
}

func (s *OZOAccounts) UseTOTPStep(ctx context.Context, accountID string, step int64) (bool, error) {
	res, err := s.db.ExecContext(ctx, `UPDATE ozo_accounts SET totp_last_step = $2 WHERE id = $1 AND totp_last_step < $2`,
		accountID, step)
	if err != nil {
		return false, fmt.Errorf("use totp step: %w", err)
	}
	n, _ := res.RowsAffected()
	return n == 1, nil
}

func (s *OZOAccounts) SetRecoveryCodes(ctx context.Context, accountID string, hashes []string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		if err := replaceRecoveryCodes(ctx, tx, accountID, hashes); err != nil {
			return fmt.Errorf("set recovery codes: %w", err)
		}
		return nil
	})
}

func replaceRecoveryCodes(ctx context.Context, tx *sql.Tx, accountID string, hashes []string) error {
	if _, err := tx.ExecContext(ctx, `DELETE FROM ozo_account_recovery_codes WHERE account_id = $1`, accountID); err != nil {
		return fmt.Errorf("delete recovery codes: %w", err)
	}
	for _, h := range hashes {
		if _, err := tx.ExecContext(ctx, `INSERT INTO ozo_account_recovery_codes (account_id, code_hash) VALUES ($1, $2)`,
			accountID, h); err != nil {
			return fmt.Errorf("insert recovery code: %w", err)
		}
	}
	return nil
}

func (s *OZOAccounts) UseRecoveryCode(ctx context.Context, accountID, hash string, now time.Time) (bool, error) {
	res, err := s.db.ExecContext(ctx, `UPDATE ozo_account_recovery_codes SET used_at = $3
		WHERE account_id = $1 AND code_hash = $2 AND used_at = 0`, accountID, hash, ms(now))
	if err != nil {
		return false, fmt.Errorf("use recovery code: %w", err)
	}
	n, _ := res.RowsAffected()
	return n == 1, nil
}

func (s *OZOAccounts) RecoveryCodesLeft(ctx context.Context, accountID string) (int, error) {
	var n int
	if err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM ozo_account_recovery_codes WHERE account_id = $1 AND used_at = 0`,
		accountID).Scan(&n); err != nil {
		return 0, fmt.Errorf("count recovery codes: %w", err)
	}
	return n, nil
}

func (s *OZOAccounts) RecordFailure(ctx context.Context, key string, now time.Time, window time.Duration, lockFor func(int) time.Duration,
	onLock func(ozoaccount.Lockout) []audit.Record) (ozoaccount.Lockout, error) {
	var l ozoaccount.Lockout
	err := s.tx(ctx, func(tx *sql.Tx) error {
		// The upsert takes the row lock (PostgreSQL) or the write lock (SQLite, immediate
		// transactions), so concurrent failures count one by one.
		var failures int
		err := tx.QueryRowContext(ctx, `INSERT INTO ozo_login_failures (login_key, failures, last_failure) VALUES ($1, 1, $2)
			ON CONFLICT (login_key) DO UPDATE SET
				failures = CASE WHEN ozo_login_failures.last_failure < $3 THEN 1 ELSE ozo_login_failures.failures + 1 END,
				last_failure = $2
			RETURNING failures`, key, ms(now), ms(now.Add(-window))).Scan(&failures)
		if err != nil {
			return fmt.Errorf("record login failure: %w", err)
		}
		l = ozoaccount.Lockout{Failures: failures, LastFailure: now.UTC().Truncate(time.Millisecond)}
		if d := lockFor(failures); d > 0 {
			l.LockedUntil = now.Add(d).UTC().Truncate(time.Millisecond)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE ozo_login_failures SET locked_until = $2 WHERE login_key = $1`,
			key, ms(l.LockedUntil)); err != nil {
			return fmt.Errorf("record login failure: %w", err)
		}
		if onLock == nil || l.LockedUntil.IsZero() {
			return nil
		}
		return s.store.appendAudit(ctx, tx, onLock(l))
	})
	return l, err
}

func (s *OZOAccounts) GetLockout(ctx context.Context, key string) (ozoaccount.Lockout, error) {
	var failures int
	var last, until int64
	err := s.db.QueryRowContext(ctx, `SELECT failures, last_failure, locked_until FROM ozo_login_failures WHERE login_key = $1`, key).
		Scan(&failures, &last, &until)
	if errors.Is(err, sql.ErrNoRows) {
		return ozoaccount.Lockout{}, nil
	}
	if err != nil {
		return ozoaccount.Lockout{}, fmt.Errorf("get lockout: %w", err)
	}
	return ozoaccount.Lockout{Failures: failures, LastFailure: fromMS(last), LockedUntil: fromMS(until)}, nil
}

func (s *OZOAccounts) ClearFailures(ctx context.Context, key string) error {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM ozo_login_failures WHERE login_key = $1`, key); err != nil {
		return fmt.Errorf("clear login failures: %w", err)
	}
	return nil
}
