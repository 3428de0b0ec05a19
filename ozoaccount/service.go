package ozoaccount

import (
	"context"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/ozo-platform/ozo-identity/audit"
	"github.com/ozo-platform/ozo-identity/email"
	"github.com/ozo-platform/ozo-identity/threepid"
)

// Mail kinds the service sends (templates in the email package).
const (
	MailInvite = email.KindAccountInvite
	MailReset  = email.KindAccountReset
)

// Mailer sends the invitation and reset mails.
type Mailer interface {
	Send(ctx context.Context, kind email.Kind, to string, vars map[string]string) error
}

// Homeserver makes and signs in the Matrix accounts on the OZO homeserver, as its application service.
type Homeserver interface {
	// Register creates the user (an existing one is fine) and returns its Matrix user ID.
	Register(ctx context.Context, localpart string) (string, error)
	// Login returns a new access token and device ID for the user.
	Login(ctx context.Context, userID string) (accessToken, deviceID string, err error)
	// LogoutAll ends every session of the user.
	LogoutAll(ctx context.Context, userID string) error
	// SetDisplayName sets the name other people see in rooms.
	SetDisplayName(ctx context.Context, userID, name string) error
}

// Auditor records the attempts that change nothing: wrong passwords and codes, unusable links,
// reset requests for no account. The audit trail writes the first of a source at once and counts
// the rest per interval (audit.Aggregator), so guessing cannot flood it.
type Auditor interface {
	Refused(ctx context.Context, rec audit.Record) error
}

// Binder binds and unbinds the account's email in the identity service, so that invites waiting
// for the email are delivered (onbind) once it is bound.
type Binder interface {
	BindEmail(ctx context.Context, address, mxid string) error
	UnbindEmail(ctx context.Context, address string) error
}

// Errors of the service; the API maps them to Matrix errors.
var (
	ErrInvalid = errors.New("invalid request")
	// ErrInvalidCredentials is the one answer to a wrong email, password, code or a disabled account.
	ErrInvalidCredentials = errors.New("wrong email address, password or code")
	ErrInvalidLink        = errors.New("this link is not valid")
	ErrLinkUsed           = fmt.Errorf("%w: it was already used", ErrInvalidLink)
	ErrLinkExpired        = fmt.Errorf("%w: it has expired", ErrInvalidLink)
	ErrWeakPassword       = errors.New("password too weak")
	ErrWrongCode          = errors.New("wrong code")
	// ErrEnrolmentRequired: the password was right but the second factor was reset.
	ErrEnrolmentRequired = errors.New("set up your second factor first: follow the link in the mail you were sent")
	ErrEmailInUse        = errors.New("another account has this email address")
	// ErrMailNotSent: the account was stored, but its mail could not be sent.
	ErrMailNotSent = errors.New("the mail could not be sent")
)

// LockedError says logins for this email are refused until Until.
type LockedError struct{ Until time.Time }

func (e *LockedError) Error() string {
	return "too many failed attempts: try again after " + e.Until.UTC().Format(time.RFC3339)
}

// Lockout is the growing delay after failed passwords or codes: after Free failures within
// Window, each further one locks the login name for Base, 2×Base, 4×Base … up to Max.
type LockoutPolicy struct {
	Free   int
	Base   time.Duration
	Max    time.Duration
	Window time.Duration
}

func (p LockoutPolicy) lockFor(failures int) time.Duration {
	if failures < p.Free {
		return 0
	}
	d := p.Base
	for i := p.Free; i < failures && d < p.Max; i++ {
		d *= 2
	}
	return min(d, p.Max)
}

// MatrixConfig says where the accounts' Matrix users live.
type MatrixConfig struct {
	ServerName string // the OZO homeserver's server name
	UserPrefix string // localpart prefix of the users the application service owns
}

// Options configure the service.
type Options struct {
	Argon2             Argon2Params
	Issuer             string // shown in authenticator apps
	PublicBaseURL      string // links in mails
	ActivationLifetime time.Duration
	ResetLifetime      time.Duration
	TicketLifetime     time.Duration // between password and second factor
	HandoffLifetime    time.Duration // between a completed login and its client redeeming the code
	MinPasswordLength  int
	Lockout            LockoutPolicy
	Matrix             MatrixConfig
	// SecretKey (32 bytes) encrypts TOTP secrets in the store; empty keeps them readable.
	SecretKey []byte
}

// Result of a complete login.
type LoginResult struct {
	Account     Account
	UserID      string
	AccessToken string
	DeviceID    string
}

// HomeServer is the server name of the Matrix user.
func (r LoginResult) HomeServer() string {
	if i := strings.IndexByte(r.UserID, ':'); i >= 0 {
		return r.UserID[i+1:]
	}
	return ""
}

// Service implements OZO accounts.
type Service struct {
	store  Store
	audit  Auditor
	mailer Mailer
	hs     Homeserver // nil: no Matrix accounts
	binder Binder     // nil: nothing bound
	opts   Options
	log    *slog.Logger
	now    func() time.Time
	dummy  string // a password hash to verify against for unknown emails
	aead   cipher.AEAD

	background sync.WaitGroup
}

// New builds the service. Account events are audit records: the store writes them with the
// change, auditor the refused attempts. hs and binder may be nil when no OZO homeserver is
// configured.
func New(store Store, auditor Auditor, mailer Mailer, hs Homeserver, binder Binder, opts Options, log *slog.Logger) (*Service, error) {
	if auditor == nil {
		return nil, errors.New("ozoaccount: an auditor for refused attempts is required")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.Argon2 == (Argon2Params{}) {
		opts.Argon2 = DefaultArgon2
	}
	if opts.Issuer == "" {
		opts.Issuer = "OZO"
	}
	if opts.ActivationLifetime <= 0 {
		opts.ActivationLifetime = 7 * 24 * time.Hour
	}
	if opts.ResetLifetime <= 0 {
		opts.ResetLifetime = time.Hour
	}
	if opts.TicketLifetime <= 0 {
		opts.TicketLifetime = 5 * time.Minute
	}
	if opts.HandoffLifetime <= 0 {
		opts.HandoffLifetime = time.Minute
	}
	if opts.MinPasswordLength <= 0 {
		opts.MinPasswordLength = 12
	}
	if opts.Lockout == (LockoutPolicy{}) {
		opts.Lockout = LockoutPolicy{Free: 5, Base: 30 * time.Second, Max: time.Hour, Window: 24 * time.Hour}
	}
	dummy, err := hashPassword("ozo-identity dummy password", opts.Argon2)
	if err != nil {
		return nil, err
	}
	aead, err := newAEAD(opts.SecretKey)
	if err != nil {
		return nil, err
	}
	return &Service{store: store, audit: auditor, mailer: mailer, hs: hs, binder: binder, opts: opts, log: log, now: time.Now, dummy: dummy, aead: aead}, nil
}

// SetClock replaces the clock, for tests of expiry.
func (s *Service) SetClock(now func() time.Time) { s.now = now }

// Wait waits for mails sent in the background (reset requests).
func (s *Service) Wait() { s.background.Wait() }

// record starts the audit record of an event on account a: the request's actor, source and
// request ID, the account as resource and the person's FHIR reference as subject. Records never
// carry the email, a password, a TOTP secret or code, a link's token or a BSN.
func record(ctx context.Context, action audit.Action, a Account, detail string) audit.Record {
	r := audit.ScopeFrom(ctx).Record(action, audit.OutcomeSuccess)
	if a.ID != "" {
		r.Resource = AuditResource(a.ID)
	} else {
		r.Resource = "ozo_account"
	}
	r.Subject, r.Detail = a.FHIRRef, detail
	return r
}

// AuditResource names an account in audit records.
func AuditResource(id string) string { return "ozo_account/" + id }

// byHolder makes r the record of something the account's holder did, proven by a link, a
// password or a code.
func byHolder(r audit.Record, a Account) audit.Record {
	r.Actor = audit.Agent{Kind: audit.AgentAccount, ID: a.ID}
	return r
}

// refused records an attempt that changed nothing; a (zero when unknown) is the account it
// named. A record that cannot be written is logged: the attempt is refused either way.
func (s *Service) refused(ctx context.Context, action audit.Action, a Account, detail string) {
	r := record(ctx, action, a, detail)
	r.Outcome = audit.OutcomeRefused
	// A client that hangs up does not take the record of its refused attempt with it.
	if err := s.audit.Refused(context.WithoutCancel(ctx), r); err != nil {
		s.log.ErrorContext(ctx, "audit record of a refused ozo account attempt not written", "action", action, "err", err)
	}
}

// done tells the admin API that the call's change is in the audit trail, so no separate record
// of the call is needed; called when an admin operation succeeded.
func done(ctx context.Context) { audit.ScopeFrom(ctx).MarkRecorded() }

func randomToken() string {
	b := make([]byte, 32)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func hashToken(t string) string {
	sum := sha256.Sum256([]byte(t))
	return hex.EncodeToString(sum[:])
}

func newID() string {
	b := make([]byte, 10)
	rand.Read(b)
	return strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b))
}

// lockKey names the failure counter of a login name; hashed so the table holds no addresses.
func lockKey(address string) string {
	sum := sha256.Sum256([]byte("ozo-login:" + address))
	return hex.EncodeToString(sum[:])
}

// ProvisionRequest is what an admin or the platform's FHIR data says about a person.
type ProvisionRequest struct {
	Email       string
	DisplayName string
	Kind        Kind
	FHIRRef     string // "RelatedPerson/<id>" or "Patient/<id>"; may be empty for admin-made accounts
	Language    string
}

func (r *ProvisionRequest) check() error {
	tp, err := threepid.Normalize("email", r.Email)
	if err != nil {
		return fmt.Errorf("%w: email: %v", ErrInvalid, err)
	}
	r.Email = tp.Address
	r.DisplayName = strings.TrimSpace(r.DisplayName)
	if utf8.RuneCountInString(r.DisplayName) > 200 || strings.ContainsFunc(r.DisplayName, func(c rune) bool { return c < 0x20 || c == 0x7f }) {
		return fmt.Errorf("%w: display_name too long or holds control characters", ErrInvalid)
	}
	if r.Kind != KindRelatedPerson && r.Kind != KindPatient {
		return fmt.Errorf("%w: kind must be related_person or patient", ErrInvalid)
	}
	if r.FHIRRef != "" {
		typ, id, ok := strings.Cut(r.FHIRRef, "/")
		want := "RelatedPerson"
		if r.Kind == KindPatient {
			want = "Patient"
		}
		if !ok || typ != want || !validFHIRID(id) {
			return fmt.Errorf("%w: fhir_reference must be %s/<id>", ErrInvalid, want)
		}
	}
	switch r.Language {
	case "":
		r.Language = "nl"
	case "nl", "en":
	default:
		return fmt.Errorf("%w: language must be nl or en", ErrInvalid)
	}
	return nil
}

// validFHIRID is FHIR's id type: [A-Za-z0-9\-\.]{1,64}.
func validFHIRID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// Provision creates the account (and mails the invitation) or, when one exists for the FHIR
// reference, updates its email and name. It reports whether it created one.
func (s *Service) Provision(ctx context.Context, req ProvisionRequest) (Account, bool, error) {
	if err := req.check(); err != nil {
		return Account{}, false, err
	}
	now := s.now().UTC().Truncate(time.Millisecond)
	if req.FHIRRef != "" {
		a, err := s.store.GetAccountByFHIRRef(ctx, req.FHIRRef)
		if err == nil {
			return s.update(ctx, a, req, now)
		}
		if !errors.Is(err, ErrNotFound) {
			return Account{}, false, err
		}
	}
	if existing, err := s.store.GetAccountByEmail(ctx, req.Email); err == nil {
		if req.FHIRRef != "" && existing.FHIRRef == req.FHIRRef {
			return s.update(ctx, existing, req, now) // made by a concurrent call just now
		}
		return Account{}, false, ErrEmailInUse
	} else if !errors.Is(err, ErrNotFound) {
		return Account{}, false, err
	}
	a := Account{ID: newID(), Email: req.Email, DisplayName: req.DisplayName, Kind: req.Kind, FHIRRef: req.FHIRRef,
		Status: StatusInvited, Language: req.Language, CreatedAt: now, UpdatedAt: now}
	rec := record(ctx, audit.ActionAccountCreate, a, "kind="+string(a.Kind))
	if err := s.store.CreateAccount(ctx, a, rec); errors.Is(err, ErrAlreadyExists) {
		// A concurrent call may have made the account of this resource first: update that one.
		if existing, gerr := s.store.GetAccountByFHIRRef(ctx, req.FHIRRef); gerr == nil {
			return s.update(ctx, existing, req, now)
		}
		return Account{}, false, ErrEmailInUse
	} else if err != nil {
		return Account{}, false, err
	}
	if err := s.sendActivation(ctx, a, false); err != nil {
		return a, true, err
	}
	done(ctx)
	return a, true, nil
}

func (s *Service) update(ctx context.Context, a Account, req ProvisionRequest, now time.Time) (Account, bool, error) {
	oldEmail, oldName := a.Email, a.DisplayName
	var changed []string
	for _, c := range []struct {
		name     string
		old, new string
	}{{"email", a.Email, req.Email}, {"name", a.DisplayName, req.DisplayName}, {"language", a.Language, req.Language}} {
		if c.old != c.new {
			changed = append(changed, c.name)
		}
	}
	if len(changed) == 0 {
		changed = []string{"none"}
	}
	a.Email, a.DisplayName, a.Language, a.UpdatedAt = req.Email, req.DisplayName, req.Language, now
	// The record names what changed, not the values: the email and name stay out of the trail.
	rec := record(ctx, audit.ActionAccountUpdate, a, "change=provision fields="+strings.Join(changed, ","))
	if err := s.store.UpdateAccount(ctx, a, rec); errors.Is(err, ErrAlreadyExists) {
		return Account{}, false, ErrEmailInUse
	} else if err != nil {
		return Account{}, false, err
	}
	if s.hs != nil && a.MXID != "" && a.DisplayName != oldName && a.DisplayName != "" && a.Status == StatusActive {
		if err := s.hs.SetDisplayName(ctx, a.MXID, a.DisplayName); err != nil {
			s.log.WarnContext(ctx, "ozo account: display name not updated", "account", a.ID, "err", err)
		}
	}
	if oldEmail == a.Email {
		done(ctx)
		return a, false, nil
	}
	// The old address must stop resolving to the person; the new one is bound (active) or
	// invited again (not yet active: the link went to the old address).
	switch a.Status {
	case StatusActive:
		if s.binder != nil && a.MXID != "" {
			if err := s.binder.UnbindEmail(ctx, oldEmail); err != nil {
				return a, false, fmt.Errorf("unbind old email: %w", err)
			}
			if err := s.binder.BindEmail(ctx, a.Email, a.MXID); err != nil {
				return a, false, fmt.Errorf("bind new email: %w", err)
			}
		}
	case StatusInvited:
		if err := s.sendActivation(ctx, a, false); err != nil {
			return a, false, err
		}
	}
	done(ctx)
	return a, false, nil
}

// link is an absolute link to a page of this server.
func (s *Service) link(path, token string) string {
	return strings.TrimSuffix(s.opts.PublicBaseURL, "/") + path + "?token=" + url.QueryEscape(token)
}

// Paths of the pages the mailed links open.
const (
	ActivatePath = "/_ozo/web/account/activate"
	ResetPath    = "/_ozo/web/account/reset"
)

func (s *Service) sendActivation(ctx context.Context, a Account, reenrol bool) error {
	// Only the newest link works: an older one must not reset a password after activation.
	if err := s.store.DeleteTokens(ctx, a.ID, PurposeActivation); err != nil {
		return err
	}
	token := randomToken()
	now := s.now().UTC()
	what := "activation link issued"
	if reenrol {
		what = "link to enrol again issued"
	}
	rec := record(ctx, audit.ActionAccountCredentials, a,
		fmt.Sprintf("%s, valid until %s", what, now.Add(s.opts.ActivationLifetime).Format(time.RFC3339)))
	if err := s.store.CreateToken(ctx, Token{Hash: hashToken(token), AccountID: a.ID, Purpose: PurposeActivation,
		CreatedAt: now, ExpiresAt: now.Add(s.opts.ActivationLifetime)}, rec); err != nil {
		return err
	}
	vars := map[string]string{"link": s.link(ActivatePath, token), "display_name": a.DisplayName, "lang": a.Language,
		"expires": now.Add(s.opts.ActivationLifetime).Format("2006-01-02 15:04 MST")}
	if reenrol {
		vars["reenrol"] = "1"
	}
	if err := s.mailer.Send(ctx, MailInvite, a.Email, vars); err != nil {
		s.log.WarnContext(ctx, "ozo account: invitation not sent", "account", a.ID, "err", err)
		return ErrMailNotSent
	}
	return nil
}

// Resend mails a new activation link to an account that is not active yet.
func (s *Service) Resend(ctx context.Context, id string) error {
	a, err := s.store.GetAccount(ctx, id)
	if err != nil {
		return err
	}
	if a.Status != StatusInvited {
		return fmt.Errorf("%w: the account is %s", ErrInvalid, a.Status)
	}
	if err := s.sendActivation(ctx, a, false); err != nil {
		return err
	}
	done(ctx)
	return nil
}

func (s *Service) Get(ctx context.Context, id string) (Account, error) {
	return s.store.GetAccount(ctx, id)
}

func (s *Service) List(ctx context.Context, after string, limit int) ([]Account, error) {
	return s.store.ListAccounts(ctx, after, limit)
}

// usedTokenGrace is how long a used link, ticket or code is kept: a link followed again the
// same day is told "already used" rather than "unknown".
const usedTokenGrace = 24 * time.Hour

// PruneTokens removes the links, login tickets and hand-off codes that expired, and those used
// more than a day ago; the hourly housekeeping calls it. It returns how many it removed.
func (s *Service) PruneTokens(ctx context.Context) (int64, error) {
	now := s.now().UTC()
	return s.store.PruneTokens(ctx, now, now.Add(-usedTokenGrace))
}

// RecoveryCodesLeft counts the account's unused recovery codes.
func (s *Service) RecoveryCodesLeft(ctx context.Context, id string) (int, error) {
	return s.store.RecoveryCodesLeft(ctx, id)
}

func (s *Service) checkPassword(pw string) error {
	if utf8.RuneCountInString(pw) < s.opts.MinPasswordLength {
		return fmt.Errorf("%w: use at least %d characters", ErrWeakPassword, s.opts.MinPasswordLength)
	}
	if len(pw) > maxPasswordBytes {
		return fmt.Errorf("%w: at most %d bytes", ErrInvalid, maxPasswordBytes)
	}
	if !utf8.ValidString(pw) {
		return fmt.Errorf("%w: password is not valid UTF-8", ErrInvalid)
	}
	return nil
}

func linkErr(err error) error {
	switch {
	case errors.Is(err, ErrTokenUsed):
		return ErrLinkUsed
	case errors.Is(err, ErrTokenExpired):
		return ErrLinkExpired
	case errors.Is(err, ErrNotFound):
		return ErrInvalidLink
	}
	return err
}

// activationAccount returns the account of a usable activation link.
func (s *Service) activationAccount(ctx context.Context, token string) (Account, error) {
	t, err := s.store.GetToken(ctx, hashToken(token), PurposeActivation, s.now())
	if err != nil {
		return Account{}, s.linkRefused(ctx, "activation", t.AccountID, err)
	}
	a, err := s.store.GetAccount(ctx, t.AccountID)
	if err != nil {
		return Account{}, s.linkRefused(ctx, "activation", t.AccountID, err)
	}
	if a.Status == StatusDisabled {
		s.refused(ctx, audit.ActionAccountCredentials, a, "activation link refused: the account is disabled")
		return Account{}, ErrInvalidLink
	}
	return a, nil
}

// linkRefused records the attempt to use a link that is unknown, used or expired, naming the
// account when the link is known, and returns the error to answer.
func (s *Service) linkRefused(ctx context.Context, kind, accountID string, err error) error {
	var why string
	switch {
	case errors.Is(err, ErrTokenUsed):
		why = "already used"
	case errors.Is(err, ErrTokenExpired):
		why = "expired"
	case errors.Is(err, ErrNotFound):
		why = "unknown"
	default:
		return err // the store failed: nothing was refused
	}
	a := Account{ID: accountID}
	if accountID != "" {
		if got, gerr := s.store.GetAccount(ctx, accountID); gerr == nil {
			a = got
		}
	}
	s.refused(ctx, audit.ActionAccountCredentials, a, kind+" link refused: "+why)
	return linkErr(err)
}

// CheckActivation reports whether an activation link can still be used, and for whom.
func (s *Service) CheckActivation(ctx context.Context, token string) (Account, error) {
	return s.activationAccount(ctx, token)
}

// BeginActivation sets the password and starts TOTP enrolment; the link stays usable until
// CompleteActivation confirms a first code.
func (s *Service) BeginActivation(ctx context.Context, token, password string) (Enrolment, error) {
	a, err := s.activationAccount(ctx, token)
	if err != nil {
		return Enrolment{}, err
	}
	if err := s.checkPassword(password); err != nil {
		return Enrolment{}, err
	}
	hash, err := hashPassword(password, s.opts.Argon2)
	if err != nil {
		return Enrolment{}, err
	}
	enrol, err := newEnrolment(s.opts.Issuer, a.Email)
	if err != nil {
		return Enrolment{}, err
	}
	sealed, err := s.sealSecret(enrol.Secret)
	if err != nil {
		return Enrolment{}, err
	}
	a.PasswordHash, a.TOTPPending, a.UpdatedAt = hash, sealed, s.now().UTC()
	rec := byHolder(record(ctx, audit.ActionAccountCredentials, a, "activation: password set, second factor enrolment started"), a)
	if err := s.store.UpdateAccount(ctx, a, rec); err != nil {
		return Enrolment{}, err
	}
	return enrol, nil
}

// PendingEnrolment shows the enrolment started by BeginActivation again.
func (s *Service) PendingEnrolment(ctx context.Context, token string) (Enrolment, error) {
	a, err := s.activationAccount(ctx, token)
	if err != nil {
		return Enrolment{}, err
	}
	if a.TOTPPending == "" {
		return Enrolment{}, fmt.Errorf("%w: set a password first", ErrInvalid)
	}
	secret, err := s.openSecret(a.TOTPPending)
	if err != nil {
		return Enrolment{}, err
	}
	return enrolmentFor(s.opts.Issuer, a.Email, secret)
}

// CompleteActivation confirms the enrolment with a first code, uses up the link, activates the
// account, makes its Matrix account and binds its email. It returns the recovery codes, which
// are shown once.
func (s *Service) CompleteActivation(ctx context.Context, token, code string) ([]string, Account, error) {
	a, err := s.activationAccount(ctx, token)
	if err != nil {
		return nil, Account{}, err
	}
	if a.TOTPPending == "" || a.PasswordHash == "" {
		// A concurrent completion may have just used the link (and cleared the pending secret).
		if _, err := s.store.GetToken(ctx, hashToken(token), PurposeActivation, s.now()); err != nil {
			return nil, Account{}, s.linkRefused(ctx, "activation", a.ID, err)
		}
		return nil, Account{}, fmt.Errorf("%w: set a password first", ErrInvalid)
	}
	pending, err := s.openSecret(a.TOTPPending)
	if err != nil {
		return nil, Account{}, err
	}
	step, ok := matchTOTP(pending, code, s.now())
	if !ok {
		s.refused(ctx, audit.ActionAccountCredentials, a, "activation: wrong code")
		return nil, Account{}, ErrWrongCode
	}
	codes, hashes, err := newRecoveryCodes()
	if err != nil {
		return nil, Account{}, err
	}
	now := s.now().UTC().Truncate(time.Millisecond)
	a.TOTPSecret, a.TOTPPending, a.Status, a.UpdatedAt = a.TOTPPending, "", StatusActive, now
	what := "activated: second factor enrolled, recovery codes issued"
	if !a.ActivatedAt.IsZero() {
		what = "second factor enrolled again, recovery codes issued"
	} else {
		a.ActivatedAt = now
	}
	rec := byHolder(record(ctx, audit.ActionAccountCredentials, a, what), a)
	// One transaction: a failure anywhere leaves the link usable and the account as it was, so
	// the person simply tries again. The confirming code's step is used up like any other.
	err = s.store.CompleteActivation(ctx, hashToken(token), s.now(), a, step, hashes, rec)
	switch {
	case errors.Is(err, ErrNotFound) || errors.Is(err, ErrTokenUsed) || errors.Is(err, ErrTokenExpired):
		return nil, Account{}, s.linkRefused(ctx, "activation", a.ID, err)
	case err != nil:
		return nil, Account{}, err
	}
	a.TOTPLastStep = step
	if a, err = s.ensureMatrix(ctx, a); err != nil {
		// The account is active; the next login tries again.
		s.log.WarnContext(ctx, "ozo account: matrix account not ready", "account", a.ID, "err", err)
	}
	return codes, a, nil
}

// ensureMatrix creates the Matrix user of an active account when it has none, and binds its email.
func (s *Service) ensureMatrix(ctx context.Context, a Account) (Account, error) {
	if s.hs == nil || a.Status != StatusActive {
		return a, nil
	}
	if a.MXID == "" {
		mxid, err := s.hs.Register(ctx, s.opts.Matrix.UserPrefix+a.ID)
		if err != nil {
			return a, fmt.Errorf("register matrix user: %w", err)
		}
		a.MXID, a.UpdatedAt = mxid, s.now().UTC()
		// Made for the holder, who is activating or logging in.
		rec := byHolder(record(ctx, audit.ActionAccountUpdate, a, "change=matrix_user matrix_user="+mxid), a)
		if err := s.store.UpdateAccount(ctx, a, rec); err != nil {
			return a, err
		}
		// Practitioners see the name from the platform's record, not the generated localpart.
		if a.DisplayName != "" {
			if err := s.hs.SetDisplayName(ctx, a.MXID, a.DisplayName); err != nil {
				s.log.WarnContext(ctx, "ozo account: display name not set", "account", a.ID, "err", err)
			}
		}
	}
	if s.binder != nil {
		if err := s.binder.BindEmail(ctx, a.Email, a.MXID); err != nil {
			return a, fmt.Errorf("bind email: %w", err)
		}
	}
	return a, nil
}

// locked refuses a login name that is locked out.
func (s *Service) locked(ctx context.Context, key string) error {
	l, err := s.store.GetLockout(ctx, key)
	if err != nil {
		return err
	}
	if s.now().Before(l.LockedUntil) {
		return &LockedError{Until: l.LockedUntil}
	}
	return nil
}

// fail counts a failed password or code against the login name key and records it. The failure
// is a refused attempt (counted per source); a lockout of an existing account is recorded with
// the lock itself, so every account locked out has its record.
func (s *Service) fail(ctx context.Context, key string, a Account, why string) error {
	var onLock func(Lockout) []audit.Record
	if a.ID != "" {
		onLock = func(l Lockout) []audit.Record {
			r := record(ctx, audit.ActionLoginFailure, a, fmt.Sprintf("locked out until %s after %d failed attempts",
				l.LockedUntil.UTC().Format(time.RFC3339), l.Failures))
			r.Outcome = audit.OutcomeRefused
			return []audit.Record{r}
		}
	}
	l, err := s.store.RecordFailure(ctx, key, s.now(), s.opts.Lockout.Window, s.opts.Lockout.lockFor, onLock)
	if err != nil {
		return err
	}
	detail := fmt.Sprintf("%s; failures=%d", why, l.Failures)
	if !l.LockedUntil.IsZero() {
		detail += " locked_until=" + l.LockedUntil.UTC().Format(time.RFC3339)
	}
	s.refused(ctx, audit.ActionLoginFailure, a, detail)
	return ErrInvalidCredentials
}

// lockedOut refuses and records a login of a locked login name.
func (s *Service) lockedOut(ctx context.Context, a Account, factor string, err error) error {
	s.refused(ctx, audit.ActionLoginFailure, a, factor+": refused while locked out")
	return err
}

// Login checks email and password and returns a ticket for the second factor. Unknown emails
// get the same answer after the same work (argon2 against a dummy hash) and lock out alike.
func (s *Service) Login(ctx context.Context, address, password string) (string, error) {
	tp, err := threepid.Normalize("email", address)
	if err != nil || len(password) > maxPasswordBytes {
		s.refused(ctx, audit.ActionLoginFailure, Account{}, "password: not an email address or too long a password")
		return "", ErrInvalidCredentials
	}
	key := lockKey(tp.Address)
	a, err := s.store.GetAccountByEmail(ctx, tp.Address)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return "", err
	}
	known := err == nil
	if err := s.locked(ctx, key); err != nil {
		return "", s.lockedOut(ctx, a, "password", err)
	}
	hash := a.PasswordHash
	usable := known && a.Status == StatusActive && hash != ""
	if !usable {
		hash = s.dummy
	}
	ok, rehash, verr := verifyPassword(password, hash, s.opts.Argon2)
	if verr != nil {
		return "", fmt.Errorf("verify password: %w", verr)
	}
	switch {
	case !known:
		return "", s.fail(ctx, key, a, "password: no account has this email address")
	case !usable:
		return "", s.fail(ctx, key, a, "password: the account is "+string(a.Status))
	case !ok:
		return "", s.fail(ctx, key, a, "password: wrong password")
	}
	if rehash {
		// The same password under the configured parameters: no event of its own.
		if h, err := hashPassword(password, s.opts.Argon2); err == nil {
			a.PasswordHash = h
			if err := s.store.UpdateAccount(ctx, a); err != nil {
				return "", err
			}
		}
	}
	if a.TOTPSecret == "" {
		s.refused(ctx, audit.ActionLoginFailure, a, "password right, but the second factor was reset and is not enrolled again")
		return "", ErrEnrolmentRequired
	}
	ticket := randomToken()
	now := s.now().UTC()
	if err := s.store.CreateToken(ctx, Token{Hash: hashToken(ticket), AccountID: a.ID, Purpose: PurposeLogin,
		CreatedAt: now, ExpiresAt: now.Add(s.opts.TicketLifetime)}); err != nil {
		return "", err
	}
	return ticket, nil
}

// SecondFactor completes a login with a TOTP code or, instead, an unused recovery code. A code
// of a time step already accepted is refused. It hands back a Matrix access token when a
// homeserver is configured.
func (s *Service) SecondFactor(ctx context.Context, ticket, code, recoveryCode string) (LoginResult, error) {
	a, err := s.completeLogin(ctx, ticket, code, recoveryCode)
	if err != nil {
		return LoginResult{}, err
	}
	res := LoginResult{Account: a, UserID: a.MXID}
	if s.hs != nil {
		if res.AccessToken, res.DeviceID, err = s.hs.Login(ctx, a.MXID); err != nil {
			return LoginResult{}, fmt.Errorf("%w: %v", ErrHomeserver, err)
		}
	}
	return res, nil
}

// completeLogin checks the second factor of the login ticket, records the login and makes sure
// the account's Matrix user exists (when a homeserver is configured). The ticket is spent.
func (s *Service) completeLogin(ctx context.Context, ticket, code, recoveryCode string) (Account, error) {
	t, err := s.store.GetToken(ctx, hashToken(ticket), PurposeLogin, s.now())
	if err != nil {
		if errors.Is(err, ErrNotFound) || errors.Is(err, ErrTokenUsed) || errors.Is(err, ErrTokenExpired) {
			s.ticketRefused(ctx, t.AccountID, err)
			return Account{}, fmt.Errorf("%w: log in again", ErrInvalidLink)
		}
		return Account{}, err
	}
	a, err := s.store.GetAccount(ctx, t.AccountID)
	if err != nil {
		s.refused(ctx, audit.ActionLoginFailure, Account{ID: t.AccountID}, "second factor: the account is gone")
		return Account{}, ErrInvalidCredentials
	}
	key := lockKey(a.Email)
	if err := s.locked(ctx, key); err != nil {
		return Account{}, s.lockedOut(ctx, a, "second factor", err)
	}
	if a.Status != StatusActive || a.TOTPSecret == "" {
		s.refused(ctx, audit.ActionLoginFailure, a, "second factor: the account is "+string(a.Status)+" or has no second factor")
		return Account{}, ErrInvalidCredentials
	}
	var accepted bool
	factor, why := "totp", "second factor: wrong code"
	switch {
	case recoveryCode != "":
		factor, why = "recovery_code", "second factor: unknown or used recovery code"
		accepted, err = s.store.UseRecoveryCode(ctx, a.ID, hashRecoveryCode(recoveryCode), s.now())
	default:
		var secret string
		if secret, err = s.openSecret(a.TOTPSecret); err != nil {
			return Account{}, err
		}
		if step, ok := matchTOTP(secret, code, s.now()); ok {
			// Refused when this or a later step was accepted before: a code works once.
			accepted, err = s.store.UseTOTPStep(ctx, a.ID, step)
			why = "second factor: code of a time step already used (replay)"
		}
	}
	if err != nil {
		return Account{}, err
	}
	if !accepted {
		return Account{}, s.fail(ctx, key, a, why)
	}
	rec := byHolder(record(ctx, audit.ActionLogin, a, "factors=password,"+factor), a)
	rec.OnBehalfOf = a.MXID
	if _, err := s.store.UseToken(ctx, hashToken(ticket), PurposeLogin, s.now(), rec); err != nil {
		if errors.Is(err, ErrNotFound) || errors.Is(err, ErrTokenUsed) || errors.Is(err, ErrTokenExpired) {
			s.ticketRefused(ctx, a.ID, err)
			return Account{}, fmt.Errorf("%w: log in again", ErrInvalidLink)
		}
		return Account{}, err
	}
	if err := s.store.ClearFailures(ctx, key); err != nil {
		return Account{}, err
	}
	return s.ensureMatrix(ctx, a)
}

// ticketRefused records a second factor sent with a login ticket that is unknown, used or expired.
func (s *Service) ticketRefused(ctx context.Context, accountID string, err error) {
	why := "unknown"
	if errors.Is(err, ErrTokenUsed) {
		why = "already used"
	} else if errors.Is(err, ErrTokenExpired) {
		why = "expired"
	}
	a := Account{ID: accountID}
	if accountID != "" {
		if got, gerr := s.store.GetAccount(ctx, accountID); gerr == nil {
			a = got
		}
	}
	s.refused(ctx, audit.ActionLoginFailure, a, "second factor: login ticket "+why)
}

// RequestReset mails a one-time reset link to an active account. Whether the address has an
// account is not told: the lookup and the mail happen after the answer, in the background.
func (s *Service) RequestReset(ctx context.Context, address string) error {
	tp, err := threepid.Normalize("email", address)
	if err != nil {
		return fmt.Errorf("%w: email: %v", ErrInvalid, err)
	}
	bg := context.WithoutCancel(ctx)
	s.background.Go(func() {
		ctx, cancel := context.WithTimeout(bg, time.Minute)
		defer cancel()
		if err := s.sendReset(ctx, tp.Address); err != nil {
			s.log.WarnContext(ctx, "ozo account: reset mail not sent", "err", err)
		}
	})
	return nil
}

func (s *Service) sendReset(ctx context.Context, address string) error {
	a, err := s.store.GetAccountByEmail(ctx, address)
	if errors.Is(err, ErrNotFound) {
		s.refused(ctx, audit.ActionAccountCredentials, Account{}, "password reset requested for an address without an account")
		return nil
	}
	if err != nil {
		return err
	}
	if a.Status != StatusActive {
		s.refused(ctx, audit.ActionAccountCredentials, a, "password reset requested for an account that is "+string(a.Status))
		return nil
	}
	// Anyone may ask for a reset of any address: bound the mails one mailbox gets.
	l, err := s.store.RecordFailure(ctx, resetKey(a.Email), s.now(), time.Hour, func(n int) time.Duration {
		if n >= maxResetMailsPerHour {
			return time.Hour
		}
		return 0
	}, nil)
	if err != nil {
		return err
	}
	if l.Failures > maxResetMailsPerHour {
		s.refused(ctx, audit.ActionAccountCredentials, a, fmt.Sprintf("password reset requested, but %d reset mails were sent this hour", maxResetMailsPerHour))
		return nil
	}
	// Only the newest link works.
	if err := s.store.DeleteTokens(ctx, a.ID, PurposeReset); err != nil {
		return err
	}
	token := randomToken()
	now := s.now().UTC()
	// Anyone who knows the address may ask: the requester is not the holder.
	rec := record(ctx, audit.ActionAccountCredentials, a, "password reset link issued, valid until "+
		now.Add(s.opts.ResetLifetime).Format(time.RFC3339))
	if err := s.store.CreateToken(ctx, Token{Hash: hashToken(token), AccountID: a.ID, Purpose: PurposeReset,
		CreatedAt: now, ExpiresAt: now.Add(s.opts.ResetLifetime)}, rec); err != nil {
		return err
	}
	if err := s.mailer.Send(ctx, MailReset, a.Email, map[string]string{"link": s.link(ResetPath, token),
		"display_name": a.DisplayName, "lang": a.Language, "expires": now.Add(s.opts.ResetLifetime).Format("2006-01-02 15:04 MST")}); err != nil {
		return fmt.Errorf("send reset mail: %w", err)
	}
	return nil
}

// maxResetMailsPerHour bounds the reset mails to one address.
const maxResetMailsPerHour = 3

// resetKey counts the reset mails of an address in the failure counter table.
func resetKey(address string) string { return lockKey("reset:" + address) }

// CheckReset reports whether a reset link can still be used.
func (s *Service) CheckReset(ctx context.Context, token string) error {
	t, err := s.store.GetToken(ctx, hashToken(token), PurposeReset, s.now())
	if err != nil {
		return s.linkRefused(ctx, "password reset", t.AccountID, err)
	}
	return nil
}

// ResetPassword sets a new password with a reset link, once. The second factor stays as it is.
func (s *Service) ResetPassword(ctx context.Context, token, password string) error {
	t, err := s.store.GetToken(ctx, hashToken(token), PurposeReset, s.now())
	if err != nil {
		return s.linkRefused(ctx, "password reset", t.AccountID, err)
	}
	if err := s.checkPassword(password); err != nil {
		return err
	}
	a, err := s.store.GetAccount(ctx, t.AccountID)
	if err != nil {
		return s.linkRefused(ctx, "password reset", t.AccountID, err)
	}
	if a.Status != StatusActive {
		s.refused(ctx, audit.ActionAccountCredentials, a, "password reset link refused: the account is "+string(a.Status))
		return ErrInvalidLink
	}
	hash, err := hashPassword(password, s.opts.Argon2)
	if err != nil {
		return err
	}
	a.PasswordHash, a.UpdatedAt = hash, s.now().UTC()
	rec := byHolder(record(ctx, audit.ActionAccountCredentials, a, "password reset with a mailed link"), a)
	// One transaction: the link, the password, the login tickets, the lockout and the record
	// change together, so a failure leaves the link usable and the old password working.
	err = s.store.CompleteReset(ctx, hashToken(token), s.now(), a, lockKey(a.Email), rec)
	if errors.Is(err, ErrNotFound) || errors.Is(err, ErrTokenUsed) || errors.Is(err, ErrTokenExpired) {
		return s.linkRefused(ctx, "password reset", a.ID, err)
	}
	if err != nil {
		return err
	}
	// Whoever knew the old password may hold a Matrix session from it: end them all, as a
	// Matrix homeserver does on a password change. The new password is set either way.
	if s.hs != nil && a.MXID != "" {
		if err := s.hs.LogoutAll(ctx, a.MXID); err != nil {
			s.log.WarnContext(ctx, "password reset: Matrix sessions not ended", "account", a.ID, "err", err)
		}
	}
	return nil
}

// Disable refuses the account's logins, unbinds its email and logs its Matrix user out.
func (s *Service) Disable(ctx context.Context, id string) (Account, error) {
	a, err := s.store.GetAccount(ctx, id)
	if err != nil {
		return a, err
	}
	a.Status, a.UpdatedAt = StatusDisabled, s.now().UTC()
	if err := s.store.UpdateAccount(ctx, a, record(ctx, audit.ActionAccountUpdate, a, "change=disable")); err != nil {
		return a, err
	}
	if err := s.store.DeleteTokens(ctx, a.ID, ""); err != nil {
		return a, err
	}
	if err := s.detachMatrix(ctx, a); err != nil {
		return a, err
	}
	done(ctx)
	return a, nil
}

func (s *Service) detachMatrix(ctx context.Context, a Account) error {
	if s.binder != nil {
		if err := s.binder.UnbindEmail(ctx, a.Email); err != nil {
			return fmt.Errorf("unbind email: %w", err)
		}
	}
	if s.hs != nil && a.MXID != "" {
		if err := s.hs.LogoutAll(ctx, a.MXID); err != nil {
			return fmt.Errorf("log matrix user out: %w", err)
		}
	}
	return nil
}

// Enable lets a disabled account log in again (or finish activation) and binds its email again.
func (s *Service) Enable(ctx context.Context, id string) (Account, error) {
	a, err := s.store.GetAccount(ctx, id)
	if err != nil {
		return a, err
	}
	if a.Status != StatusDisabled {
		return a, nil
	}
	a.Status = StatusInvited
	if !a.ActivatedAt.IsZero() {
		a.Status = StatusActive
	}
	a.UpdatedAt = s.now().UTC()
	if err := s.store.UpdateAccount(ctx, a, record(ctx, audit.ActionAccountUpdate, a, "change=enable status="+string(a.Status))); err != nil {
		return a, err
	}
	if a.Status == StatusActive && s.binder != nil && a.MXID != "" {
		if err := s.binder.BindEmail(ctx, a.Email, a.MXID); err != nil {
			return a, fmt.Errorf("bind email: %w", err)
		}
	}
	done(ctx)
	return a, nil
}

// Delete removes the account and its personal data, after unbinding and logging out. What
// remains is the audit trail's account ID, kind and FHIR reference.
func (s *Service) Delete(ctx context.Context, id string) error {
	a, err := s.store.GetAccount(ctx, id)
	if err != nil {
		return err
	}
	if err := s.detachMatrix(ctx, a); err != nil {
		return err
	}
	// The record keeps what the trail must: the account ID, its kind, the person's FHIR reference
	// and the Matrix user, which stays on the homeserver.
	detail := "kind=" + string(a.Kind)
	if a.MXID != "" {
		detail += " matrix_user=" + a.MXID
	}
	if err := s.store.DeleteAccount(ctx, a.ID, record(ctx, audit.ActionAccountDelete, a, detail)); err != nil {
		return err
	}
	if err := s.store.ClearFailures(ctx, lockKey(a.Email)); err != nil {
		return err
	}
	done(ctx)
	return nil
}

// ResetSecondFactor forgets the TOTP secret and recovery codes and mails a link to enrol again
// (with a new password); until then the account cannot log in.
func (s *Service) ResetSecondFactor(ctx context.Context, id string) (Account, error) {
	a, err := s.store.GetAccount(ctx, id)
	if err != nil {
		return a, err
	}
	if a.Status == StatusDisabled {
		return a, fmt.Errorf("%w: the account is disabled", ErrInvalid)
	}
	a.TOTPSecret, a.TOTPPending, a.UpdatedAt = "", "", s.now().UTC()
	rec := record(ctx, audit.ActionAccountCredentials, a, "second factor and recovery codes reset")
	if err := s.store.UpdateAccount(ctx, a, rec); err != nil {
		return a, err
	}
	if err := s.store.SetRecoveryCodes(ctx, a.ID, nil); err != nil {
		return a, err
	}
	if err := s.store.DeleteTokens(ctx, a.ID, ""); err != nil {
		return a, err
	}
	if err := s.sendActivation(ctx, a, a.Status == StatusActive); err != nil {
		return a, err
	}
	done(ctx)
	return a, nil
}
