package identity

// The port identity needs: what the identity server keeps durably, independent of the database
// engine. storage/sqlstore implements it; every implementation passes identity/identitytest.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ozo-platform/ozo-identity/audit"
	"github.com/ozo-platform/ozo-identity/threepid"
)

// Errors shared by every implementation so callers can map them to Matrix error codes.
var (
	ErrNotFound      = errors.New("storage: not found")
	ErrAlreadyExists = errors.New("storage: already exists")
	// ErrTooManyAttempts: the session already had its allowed number of wrong tokens.
	ErrTooManyAttempts = errors.New("storage: too many failed attempts")
	// ErrLimitExceeded is wrapped by the quota errors below.
	ErrLimitExceeded = errors.New("storage: limit exceeded")
	// ErrThreePIDInviteLimit: the 3PID already has its allowed number of pending invites.
	ErrThreePIDInviteLimit = fmt.Errorf("%w: pending invites for this 3PID", ErrLimitExceeded)
	// ErrSenderInviteLimit: the sender already has its allowed number of pending invites.
	ErrSenderInviteLimit = fmt.Errorf("%w: pending invites from this sender", ErrLimitExceeded)
	// ErrSessionMailLimit: the session already sent its allowed number of mails.
	ErrSessionMailLimit = fmt.Errorf("%w: mails for this session", ErrLimitExceeded)
	// ErrAddressMailLimit: the address already got its allowed number of validation mails.
	ErrAddressMailLimit = fmt.Errorf("%w: validation mails to this address", ErrLimitExceeded)
	// ErrPepperChanged: the lookup hashes of a write were made with a pepper that is no longer
	// the current one (a rotation committed first); make them again with the stored pepper.
	ErrPepperChanged = errors.New("storage: the lookup pepper changed")
)

// Binding associates a 3PID with a Matrix user ID.
type Binding struct {
	threepid.ThreePID
	MXID      string
	CreatedAt time.Time
	NotBefore time.Time
	NotAfter  time.Time
	// Source says who created it: "bind" (3PID validation), "admin", "sso".
	Source string
}

// Session is a 3PID validation session (requestToken / submitToken).
type Session struct {
	SID            string
	ClientSecret   string
	ThreePID       threepid.ThreePID
	SendAttempt    int64
	NextLink       string
	CreatedAt      time.Time
	ValidatedAt    time.Time // zero until validated
	FailedAttempts int
	// MailsSent counts the validation mails sent for the session.
	MailsSent int
}

// MailQuota bounds validation mails; a zero limit is no limit.
type MailQuota struct {
	PerSession int
	// PerAddress bounds the mails of all sessions for one address created at or after Since.
	PerAddress int
	Since      time.Time
}

// InviteLimits bound pending (undelivered, unexpired) invites; a zero limit is no limit.
type InviteLimits struct {
	PerThreePID int
	PerSender   int
}

// Invite is a pending room invite for a 3PID that has no binding yet (store-invite).
type Invite struct {
	Token     string
	ThreePID  threepid.ThreePID
	RoomID    string
	Sender    string
	CreatedAt time.Time
	ExpiresAt time.Time
	// Extra carries the remaining store-invite fields verbatim (room name, sender display name, ...).
	Extra map[string]string
	// EphemeralKey is the public half of the key mailed with the invite; sign-ed25519 signs only
	// with its private half. It expires with the invite; empty for invites stored before it was kept.
	EphemeralKey string
}

// SigningKey is the public half of a long-term signing key the server has used.
type SigningKey struct {
	ID        string // ed25519:N
	PublicKey string // unpadded base64
	// Private is the key in Synapse's format while it may still sign (not retired, not from a
	// signing_key_file); empty otherwise.
	Private string
	Created time.Time
	// Retired is when an operator retired it (zero: it still verifies).
	Retired time.Time
}

// OnBindDelivery is a queued /3pid/onbind call to a homeserver.
type OnBindDelivery struct {
	ID            string
	ServerName    string
	Body          []byte
	Attempts      int
	NextAttemptAt time.Time
	ExpiresAt     time.Time
	CreatedAt     time.Time
	LastError     string
}

// AccessToken is an identity-server access token issued by account/register.
type AccessToken struct {
	TokenHash string
	UserID    string
	CreatedAt time.Time
}

// BindRequest is everything Bind needs to make the binding and queue the pending invites in one step.
type BindRequest struct {
	Binding Binding
	// Hashes are the lookup hashes of the binding's 3PID (one per medium alias) for Pepper.
	Hashes []string
	// Pepper is the pepper of Hashes and FoldedHashes: when another one is current, Bind fails
	// with ErrPepperChanged and stores nothing. Empty: not checked.
	Pepper string
	// FoldedHashes are lookup hashes of the lower-cased 3PID, answered only when one binding has
	// them; empty when lower-casing changes nothing.
	FoldedHashes []string
	// Deliver builds the onbind deliveries for the invites found for the 3PID; called inside the transaction.
	Deliver func(invites []Invite) ([]OnBindDelivery, error)
	// Audit returns the records of the binding and of the invites it delivered, appended in the
	// same transaction: when they cannot be written, nothing is bound.
	Audit func(delivered []Invite) []audit.Record
}

// ImportBinding is one binding of a bulk import with its lookup hashes for the current pepper,
// exact and folded as in BindRequest.
type ImportBinding struct {
	Binding      Binding
	Hashes       []string
	FoldedHashes []string
	// Pepper is checked as BindRequest.Pepper is: any item's pepper that is not the current
	// one fails the whole import with ErrPepperChanged.
	Pepper string
}

// ImportResult counts what a bulk import did: new bindings, 3PIDs rebound to another MXID, and
// bindings already there with the same MXID (left as they were, so re-importing changes nothing).
type ImportResult struct {
	Created, Updated, Unchanged int
	// Seq is the change number the import's writes were logged under.
	Seq int64
}

// Changes is what the store's change log says happened after a change number: what the
// in-memory views of a replica (the lookup index, the token cache) must read again.
type Changes struct {
	// Seq is the number of the last change included: read the next changes after it.
	Seq int64
	// Reload: the log cannot say which lookup hashes changed (a new pepper, changes pruned
	// before they were read, too many changes at once): read them all again.
	Reload bool
	// Pruned: changes after the number asked for were pruned, so revoked tokens may be missing
	// from Tokens.
	Pruned bool
	// Hashes are lookup hashes whose answer may have changed.
	Hashes []string
	// Tokens are the hashes of revoked access tokens.
	Tokens []string
}

// LookupSnapshot describes a consistent read of every lookup hash (ScanLookupHashes).
type LookupSnapshot struct {
	// Seq is the number of the last change the snapshot includes.
	Seq int64
	// Pepper is the pepper the hashes were made with.
	Pepper string
	// Count is about how many hashes follow, for sizing.
	Count int
}

// Store is the durable state of the identity server.
type Store interface {
	// Settings hold generated, persisted values such as the lookup pepper and the signing key.
	GetSetting(ctx context.Context, name string) (string, error)
	// SetSettingIfAbsent stores value unless name is set, and returns what is stored, so that
	// concurrent replicas starting together agree on one value.
	SetSettingIfAbsent(ctx context.Context, name, value string) (string, error)
	SetSetting(ctx context.Context, name, value string) error

	// RecordSigningKey remembers a long-term key in use (idempotent) and returns the public key
	// stored under its id, which differs from publicKey when the id was reused for another key.
	RecordSigningKey(ctx context.Context, k SigningKey) (string, error)
	// RotateSigningKey makes next (Synapse's key format) the signing key if the stored one is
	// still current, recording it as k (next being its private half), in one transaction; ErrAlreadyExists when
	// another rotation came first or k's id is taken.
	RotateSigningKey(ctx context.Context, current, next string, k SigningKey) error
	// SigningKeys lists every recorded key, oldest first.
	SigningKeys(ctx context.Context) ([]SigningKey, error)
	// RetireSigningKey marks a key retired at at; ErrNotFound when there is no such key.
	RetireSigningKey(ctx context.Context, keyID string, at time.Time) error

	CreateAccessToken(ctx context.Context, a AccessToken) error
	GetAccessToken(ctx context.Context, tokenHash string) (AccessToken, error)
	DeleteAccessToken(ctx context.Context, tokenHash string) error
	AcceptTerms(ctx context.Context, userID string, urls []string) error
	AcceptedTerms(ctx context.Context, userID string) ([]string, error)

	// CreateSession stores a new session with its first token, unless the address has had
	// quota.PerAddress mails already (ErrAddressMailLimit), atomically across replicas.
	CreateSession(ctx context.Context, s Session, tokenHash string, tokenExpires time.Time, quota MailQuota) error
	GetSession(ctx context.Context, sid string) (Session, error)
	FindSession(ctx context.Context, clientSecret string, tp threepid.ThreePID) (Session, error)
	// MailsSent sums the validation mails sent to tp by sessions created at or after since.
	MailsSent(ctx context.Context, tp threepid.ThreePID, since time.Time) (int, error)
	// AddSessionToken replaces the session's tokens with a new one (only the newest mail works),
	// records the send attempt it answered and counts the mail, within quota
	// (ErrSessionMailLimit, ErrAddressMailLimit).
	AddSessionToken(ctx context.Context, sid string, sendAttempt int64, tokenHash string, expires time.Time, quota MailQuota) error
	// CheckSessionToken marks the session validated when tokenHash is one of its unexpired tokens,
	// and otherwise counts a failed attempt; it reports whether the token matched. A session that
	// already failed maxFailed times is refused with ErrTooManyAttempts, atomically across replicas.
	CheckSessionToken(ctx context.Context, sid, tokenHash string, now time.Time, maxFailed int) (bool, Session, error)
	DeleteSession(ctx context.Context, sid string) error
	DeleteExpiredSessions(ctx context.Context, createdBefore time.Time) (int64, error)

	// Bind stores the binding, replaces its lookup hashes, marks pending invites for the 3PID
	// delivered and queues their onbind deliveries, all or nothing.
	Bind(ctx context.Context, req BindRequest) error
	GetBinding(ctx context.Context, tp threepid.ThreePID) (Binding, error)
	// DeleteBinding removes the binding of tp if it is bound to mxid (any mxid when empty),
	// appending recs to the audit chain in the same transaction.
	DeleteBinding(ctx context.Context, tp threepid.ThreePID, mxid string, recs ...audit.Record) error
	ListBindings(ctx context.Context, medium, after string, limit int) ([]Binding, error)
	// LookupHashes maps lookup hashes to MXIDs; unknown hashes are absent from the result. A hash
	// that is no binding's exact hash is answered from the folded hashes when exactly one binding
	// has it.
	LookupHashes(ctx context.Context, hashes []string) (map[string]string, error)
	LookupThreePIDs(ctx context.Context, tps []threepid.ThreePID) (map[threepid.ThreePID]string, error)
	// ImportBindings stores many bindings in one transaction, each as Bind would: a 3PID bound to
	// another MXID is rebound (the later one wins), one bound to the same MXID is left untouched.
	// Pending invites of created or rebound 3PIDs are delivered through deliver, as Bind does.
	// When a 3PID occurs twice, the later entry wins.
	// record is called once for each binding created or rebound, with the invites it
	// delivered, and returns their audit records, appended in the same transaction.
	ImportBindings(ctx context.Context, items []ImportBinding, deliver func(b Binding, invites []Invite) ([]OnBindDelivery, error),
		record func(b Binding, delivered []Invite) []audit.Record) (ImportResult, error)
	// RehashBindings recomputes every binding's lookup hashes (exact and folded, as in
	// BindRequest) with hashFn and stores pepper, the one hashFn uses, as the current pepper, in
	// one transaction.
	RehashBindings(ctx context.Context, pepper string, hashFn func(threepid.ThreePID) (hashes, folded []string)) error

	// Changes reads the change log after number after: every transaction that changes what a
	// lookup hash answers or revokes an access token logs it, numbered in commit order. More
	// than max changed hashes make a Reload instead.
	Changes(ctx context.Context, after int64, max int) (Changes, error)
	// ChangeSeq is the number of the last change committed: a replica whose views have applied
	// it holds every write acknowledged before the call.
	ChangeSeq(ctx context.Context) (int64, error)
	// ScanLookupHashes reads, from one consistent snapshot, every lookup hash that has an
	// answer, with the MXID LookupHashes would give it: begin gets the snapshot's change number
	// and pepper first, then each is called per hash (its slices are valid during the call only).
	ScanLookupHashes(ctx context.Context, begin func(LookupSnapshot) error, each func(hash, mxid []byte) error) error
	// PruneChanges deletes the changes logged before t; readers behind them will reload.
	PruneChanges(ctx context.Context, before time.Time) (int64, error)

	// CreateInvite stores the invite and its ephemeral key together, unless the 3PID or the sender
	// already has its limit of pending invites (ErrThreePIDInviteLimit, ErrSenderInviteLimit).
	// recs are appended to the audit chain in the same transaction.
	CreateInvite(ctx context.Context, inv Invite, limits InviteLimits, recs ...audit.Record) error
	GetInvite(ctx context.Context, token string) (Invite, error)
	// DeleteInvite removes an invite and its ephemeral key (its mail could not be sent).
	DeleteInvite(ctx context.Context, token, ephemeralKey string) error
	PendingInvites(ctx context.Context, tp threepid.ThreePID) ([]Invite, error)
	EphemeralKeyExists(ctx context.Context, publicKey string) (bool, error)
	// PruneInvites deletes invites and ephemeral keys that expired before now.
	PruneInvites(ctx context.Context, now time.Time) (invites, keys int64, err error)

	// DueDeliveries returns up to limit queued onbinds whose next attempt is due, oldest first.
	DueDeliveries(ctx context.Context, now time.Time, limit int) ([]OnBindDelivery, error)
	// ClaimDelivery moves a delivery's next attempt from due to until if it is still due then
	// (compare-and-set): postponing it claims it for one replica, setting it back to now gives the
	// claim up. It reports whether this caller won.
	ClaimDelivery(ctx context.Context, id string, due, until time.Time) (bool, error)
	// DeliveryDone removes a delivery, appending recs to the audit chain in the same transaction.
	DeliveryDone(ctx context.Context, id string, recs ...audit.Record) error
	// ReplaceDelivery swaps a delivery for smaller ones (a batch split after a refusal), all or nothing.
	ReplaceDelivery(ctx context.Context, id string, parts []OnBindDelivery) error
	DeliveryFailed(ctx context.Context, id string, next time.Time, lastError string) error
	ListDeliveries(ctx context.Context) ([]OnBindDelivery, error)

	Close() error
}
