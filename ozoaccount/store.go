// Package ozoaccount keeps the OZO accounts of family caregivers (FHIR RelatedPerson) and
// patients: provisioned by an admin or from the platform's FHIR data, activated through a mailed
// one-time link, logged in with email + password (argon2id) + TOTP, and given a Matrix account on
// the OZO homeserver with their email bound to it.
package ozoaccount

import (
	"context"
	"errors"
	"time"

	"github.com/ozo-platform/ozo-identity/audit"
)

// Kind is who the account is for.
type Kind string

const (
	KindRelatedPerson Kind = "related_person"
	KindPatient       Kind = "patient"
)

// Status is where an account is in its life.
type Status string

const (
	StatusInvited  Status = "invited"  // provisioned, activation link mailed
	StatusActive   Status = "active"   // password and TOTP set
	StatusDisabled Status = "disabled" // refused at login, email unbound
)

// Purpose says what a one-time token is for.
type Purpose string

const (
	PurposeActivation Purpose = "activation"
	PurposeReset      Purpose = "reset"
	// PurposeLogin is the ticket between a right password and the second factor.
	PurposeLogin Purpose = "login"
	// PurposeHandoff is the one-time code that hands a completed login to the client that is
	// waiting for it; its hash covers the client's PKCE challenge too.
	PurposeHandoff Purpose = "handoff"
)

// Errors of a Store.
var (
	ErrNotFound      = errors.New("ozoaccount: not found")
	ErrAlreadyExists = errors.New("ozoaccount: already exists")
	ErrTokenUsed     = errors.New("ozoaccount: token already used")
	ErrTokenExpired  = errors.New("ozoaccount: token expired")
)

// Account is one OZO account. FHIRRef is the platform's own resource id
// ("RelatedPerson/<id>" or "Patient/<id>"); a BSN is never kept.
type Account struct {
	ID          string
	Email       string
	DisplayName string
	Kind        Kind
	FHIRRef     string
	Status      Status
	Language    string // "nl" or "en": mails and pages
	MXID        string // set once the Matrix account exists
	// PasswordHash is an argon2id PHC string; empty until activation.
	PasswordHash string
	TOTPSecret   string // base32; empty until enrolment is confirmed
	TOTPPending  string // shown during enrolment, until a first code confirms it
	TOTPLastStep int64  // the last TOTP time step accepted
	CreatedAt    time.Time
	UpdatedAt    time.Time
	ActivatedAt  time.Time
}

// Token is a one-time link or login ticket; only its hash is stored.
type Token struct {
	Hash      string
	AccountID string
	Purpose   Purpose
	CreatedAt time.Time
	ExpiresAt time.Time
	UsedAt    time.Time
}

// Lockout is the failure count of one login name.
type Lockout struct {
	Failures    int
	LastFailure time.Time
	LockedUntil time.Time
}

// Store is the durable state of OZO accounts. storage/sqlstore implements it on SQLite and
// PostgreSQL; every implementation passes ozoaccount/storetest.
//
// The methods that make an account event take its audit records (recs) and append them to the
// audit chain in the same transaction: when a record cannot be written, nothing changes.
type Store interface {
	// CreateAccount stores a new account; ErrAlreadyExists when its ID, email or (non-empty)
	// FHIR reference is taken.
	CreateAccount(ctx context.Context, a Account, recs ...audit.Record) error
	GetAccount(ctx context.Context, id string) (Account, error)
	GetAccountByEmail(ctx context.Context, email string) (Account, error)
	GetAccountByFHIRRef(ctx context.Context, ref string) (Account, error)
	// ListAccounts returns up to limit accounts with IDs after after, by ID.
	ListAccounts(ctx context.Context, after string, limit int) ([]Account, error)
	// UpdateAccount writes every field of a but ID, CreatedAt and TOTPLastStep; ErrAlreadyExists
	// when the new email is another account's.
	UpdateAccount(ctx context.Context, a Account, recs ...audit.Record) error
	// DeleteAccount removes the account with its tokens and recovery codes.
	DeleteAccount(ctx context.Context, id string, recs ...audit.Record) error

	CreateToken(ctx context.Context, t Token, recs ...audit.Record) error
	// GetToken returns a usable token: ErrNotFound, ErrTokenUsed or ErrTokenExpired otherwise.
	GetToken(ctx context.Context, hash string, purpose Purpose, now time.Time) (Token, error)
	// UseToken marks a usable token used, so that of concurrent callers exactly one succeeds
	// (and appends recs); errors as GetToken.
	UseToken(ctx context.Context, hash string, purpose Purpose, now time.Time, recs ...audit.Record) (Token, error)
	// ReleaseToken makes a token that UseToken spent usable again, for a use that could not be
	// completed (the homeserver failed): only while usedAt is still the token's used time (that
	// use, not a later one) and it has not expired. It reports whether it did.
	ReleaseToken(ctx context.Context, hash string, purpose Purpose, usedAt, now time.Time) (bool, error)
	// DeleteTokens removes the account's tokens of purpose (all purposes when empty).
	DeleteTokens(ctx context.Context, accountID string, purpose Purpose) error
	// PruneTokens removes the tokens of every purpose that expired by now, and those used
	// before usedBefore; it returns how many it removed.
	PruneTokens(ctx context.Context, now, usedBefore time.Time) (int64, error)

	// CompleteActivation is the end of an activation, in one transaction: it uses the
	// activation link hash of account a (errors as UseToken; ErrNotFound for a link of another
	// account, or an account that is gone or disabled), writes every field of a as UpdateAccount
	// does, sets the last accepted TOTP step to step, replaces the recovery codes by
	// recoveryHashes and appends recs. When any of it fails, nothing changes: the link stays usable.
	CompleteActivation(ctx context.Context, hash string, now time.Time, a Account, step int64, recoveryHashes []string,
		recs ...audit.Record) error

	// CompleteReset is the end of a password reset, in one transaction: it uses the reset link
	// hash of account a (errors as UseToken; ErrNotFound for a link of another account, or an
	// account that is gone, not active or has another email than a), sets the account's
	// password hash and updated time to a's, removes its login tickets and hand-off codes, clears the failures of
	// lockKey and appends recs. When any of it fails, nothing changes: the link stays usable.
	CompleteReset(ctx context.Context, hash string, now time.Time, a Account, lockKey string, recs ...audit.Record) error

	// UseTOTPStep records step as the account's last accepted TOTP step if it is later than the
	// one recorded, atomically; it reports whether it was.
	UseTOTPStep(ctx context.Context, accountID string, step int64) (bool, error)
	// SetRecoveryCodes replaces the account's recovery codes by these hashes.
	SetRecoveryCodes(ctx context.Context, accountID string, hashes []string) error
	// UseRecoveryCode marks an unused code used, atomically; it reports whether it was.
	UseRecoveryCode(ctx context.Context, accountID, hash string, now time.Time) (bool, error)
	RecoveryCodesLeft(ctx context.Context, accountID string) (int, error)

	// RecordFailure counts a failed login for key (starting over when the last failure is older
	// than window) and sets LockedUntil to now + lockFor(failures), atomically. When the failure
	// locks the key and onLock is not nil, the records onLock returns are appended with it.
	RecordFailure(ctx context.Context, key string, now time.Time, window time.Duration, lockFor func(failures int) time.Duration,
		onLock func(Lockout) []audit.Record) (Lockout, error)
	// GetLockout returns key's failures; the zero Lockout when there are none.
	GetLockout(ctx context.Context, key string) (Lockout, error)
	ClearFailures(ctx context.Context, key string) error
}
