package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/ozo-platform/ozo-identity/audit"
	"github.com/ozo-platform/ozo-identity/identity"
	"github.com/ozo-platform/ozo-identity/threepid"
)

// CreateSSOSession stores a validation session an SSO login completed: its row (with its first
// 3PID, validated), every 3PID it proved and the user who started it, all or nothing.
func (s *Store) CreateSSOSession(ctx context.Context, sess identity.Session, userID, idp string, tps []threepid.ThreePID, recs ...audit.Record) error {
	if len(tps) == 0 || tps[0] != sess.ThreePID {
		return errors.New("create sso session: the session's 3PID must be the first proven one")
	}
	return s.tx(ctx, func(tx *sql.Tx) error {
		// Sessions expire by validation_sessions alone; what they leave here goes with the next login.
		for _, q := range []string{
			`DELETE FROM session_threepids WHERE sid NOT IN (SELECT sid FROM validation_sessions)`,
			`DELETE FROM sso_sessions WHERE sid NOT IN (SELECT sid FROM validation_sessions)`,
		} {
			if _, err := tx.ExecContext(ctx, q); err != nil {
				return fmt.Errorf("create sso session: prune: %w", err)
			}
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO validation_sessions (`+sessionColumns+`)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
			sess.SID, sess.ClientSecret, sess.ThreePID.Medium, sess.ThreePID.Address, 0,
			sess.NextLink, ms(sess.CreatedAt), ms(sess.ValidatedAt), 0, 0)
		if isUniqueViolation(err) {
			return identity.ErrAlreadyExists
		}
		if err != nil {
			return fmt.Errorf("create sso session: %w", err)
		}
		for _, tp := range tps {
			if _, err := tx.ExecContext(ctx, `INSERT INTO session_threepids (sid, medium, address) VALUES ($1, $2, $3)`,
				sess.SID, tp.Medium, tp.Address); err != nil && !isUniqueViolation(err) {
				return fmt.Errorf("create sso session 3PID: %w", err)
			}
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO sso_sessions (sid, user_id, idp, created_at) VALUES ($1, $2, $3, $4)`,
			sess.SID, userID, idp, ms(time.Now())); err != nil {
			return fmt.Errorf("create sso session owner: %w", err)
		}
		return s.appendAudit(ctx, tx, recs)
	})
}

// SSOSession returns who started an SSO session and the 3PIDs it proved (the session's own
// first); identity.ErrNotFound when sid is no SSO session.
func (s *Store) SSOSession(ctx context.Context, sid string) (string, []threepid.ThreePID, error) {
	var userID string
	err := s.db.QueryRowContext(ctx, `SELECT user_id FROM sso_sessions WHERE sid = $1`, sid).Scan(&userID)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil, identity.ErrNotFound
	}
	if err != nil {
		return "", nil, fmt.Errorf("sso session: %w", err)
	}
	var first threepid.ThreePID
	if err := s.db.QueryRowContext(ctx, `SELECT medium, address FROM validation_sessions WHERE sid = $1`, sid).
		Scan(&first.Medium, &first.Address); errors.Is(err, sql.ErrNoRows) {
		return "", nil, identity.ErrNotFound
	} else if err != nil {
		return "", nil, fmt.Errorf("sso session: %w", err)
	}
	rows, err := s.db.QueryContext(ctx, `SELECT medium, address FROM session_threepids WHERE sid = $1 ORDER BY medium, address`, sid)
	if err != nil {
		return "", nil, fmt.Errorf("sso session 3PIDs: %w", err)
	}
	defer rows.Close()
	tps := []threepid.ThreePID{first}
	for rows.Next() {
		var tp threepid.ThreePID
		if err := rows.Scan(&tp.Medium, &tp.Address); err != nil {
			return "", nil, fmt.Errorf("sso session 3PIDs: %w", err)
		}
		if tp != first {
			tps = append(tps, tp)
		}
	}
	return userID, tps, rows.Err()
}
