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

// New builds the service. hs and binder may be nil when no OZO homeserver is configured.
func New(store Store, mailer Mailer, hs Homeserver, binder Binder, opts Options, log *slog.Logger) (*Service, error) {
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
	return &Service{store: store, mailer: mailer, hs: hs, binder: binder, opts: opts, log: log, now: time.Now, dummy: dummy, aead: aead}, nil
}

// SetClock replaces the clock, for tests of expiry.
func (s *Service) SetClock(now func() time.Time) { s.now = now }

// Wait waits for mails sent in the background (reset requests).
func (s *Service) Wait() { s.background.Wait() }

// audit logs an audit event. The audit package will take these; never pass secrets or a BSN.
func (s *Service) audit(ctx context.Context, action string, attrs ...any) {
	s.log.InfoContext(ctx, "ozo account "+action, append([]any{"audit", true, "action", "ozo_account." + action}, attrs...)...)
}

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
	if err := s.store.CreateAccount(ctx, a); errors.Is(err, ErrAlreadyExists) {
		// A concurrent call may have made the account of this resource first: update that one.
		if existing, gerr := s.store.GetAccountByFHIRRef(ctx, req.FHIRRef); gerr == nil {
			return s.update(ctx, existing, req, now)
		}
		return Account{}, false, ErrEmailInUse
	} else if err != nil {
		return Account{}, false, err
	}
	s.audit(ctx, "provisioned", "account", a.ID, "kind", a.Kind, "fhir_ref", a.FHIRRef)
	if err := s.sendActivation(ctx, a, false); err != nil {
		return a, true, err
	}
	return a, true, nil
}

func (s *Service) update(ctx context.Context, a Account, req ProvisionRequest, now time.Time) (Account, bool, error) {
	oldEmail, oldName := a.Email, a.DisplayName
	a.Email, a.DisplayName, a.Language, a.UpdatedAt = req.Email, req.DisplayName, req.Language, now
	if err := s.store.UpdateAccount(ctx, a); errors.Is(err, ErrAlreadyExists) {
		return Account{}, false, ErrEmailInUse
	} else if err != nil {
		return Account{}, false, err
	}
	s.audit(ctx, "updated", "account", a.ID, "fhir_ref", a.FHIRRef, "email_changed", oldEmail != a.Email)
	if s.hs != nil && a.MXID != "" && a.DisplayName != oldName && a.DisplayName != "" && a.Status == StatusActive {
		if err := s.hs.SetDisplayName(ctx, a.MXID, a.DisplayName); err != nil {
			s.log.WarnContext(ctx, "ozo account: display name not updated", "account", a.ID, "err", err)
		}
	}
	if oldEmail == a.Email {
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
	if err := s.store.CreateToken(ctx, Token{Hash: hashToken(token), AccountID: a.ID, Purpose: PurposeActivation,
		CreatedAt: now, ExpiresAt: now.Add(s.opts.ActivationLifetime)}); err != nil {
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
	s.audit(ctx, "invitation_sent", "account", a.ID, "reenrol", reenrol)
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
	return s.sendActivation(ctx, a, false)
}

func (s *Service) Get(ctx context.Context, id string) (Account, error) {
	return s.store.GetAccount(ctx, id)
}

func (s *Service) List(ctx context.Context, after string, limit int) ([]Account, error) {
	return s.store.ListAccounts(ctx, after, limit)
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
		return Account{}, linkErr(err)
	}
	a, err := s.store.GetAccount(ctx, t.AccountID)
	if err != nil {
		return Account{}, linkErr(err)
	}
	if a.Status == StatusDisabled {
		return Account{}, ErrInvalidLink
	}
	return a, nil
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
	if err := s.store.UpdateAccount(ctx, a); err != nil {
		return Enrolment{}, err
	}
	s.audit(ctx, "activation_started", "account", a.ID)
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
		return nil, Account{}, fmt.Errorf("%w: set a password first", ErrInvalid)
	}
	pending, err := s.openSecret(a.TOTPPending)
	if err != nil {
		return nil, Account{}, err
	}
	step, ok := matchTOTP(pending, code, s.now())
	if !ok {
		s.audit(ctx, "activation_wrong_code", "account", a.ID)
		return nil, Account{}, ErrWrongCode
	}
	if _, err := s.store.UseToken(ctx, hashToken(token), PurposeActivation, s.now()); err != nil {
		return nil, Account{}, linkErr(err)
	}
	codes, hashes, err := newRecoveryCodes()
	if err != nil {
		return nil, Account{}, err
	}
	now := s.now().UTC().Truncate(time.Millisecond)
	a.TOTPSecret, a.TOTPPending, a.Status, a.UpdatedAt = a.TOTPPending, "", StatusActive, now
	if a.ActivatedAt.IsZero() {
		a.ActivatedAt = now
	}
	if err := s.store.UpdateAccount(ctx, a); err != nil {
		return nil, Account{}, err
	}
	if err := s.store.ResetTOTPStep(ctx, a.ID); err != nil {
		return nil, Account{}, err
	}
	// The confirming code is used up like any other.
	if _, err := s.store.UseTOTPStep(ctx, a.ID, step); err != nil {
		return nil, Account{}, err
	}
	if err := s.store.SetRecoveryCodes(ctx, a.ID, hashes); err != nil {
		return nil, Account{}, err
	}
	s.audit(ctx, "activated", "account", a.ID)
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
		if err := s.store.UpdateAccount(ctx, a); err != nil {
			return a, err
		}
		s.audit(ctx, "matrix_user_created", "account", a.ID, "mxid", mxid)
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

func (s *Service) fail(ctx context.Context, key, what, accountID string) error {
	l, err := s.store.RecordFailure(ctx, key, s.now(), s.opts.Lockout.Window, s.opts.Lockout.lockFor)
	if err != nil {
		return err
	}
	s.audit(ctx, "login_failed", "factor", what, "account", accountID, "failures", l.Failures)
	if !l.LockedUntil.IsZero() {
		s.audit(ctx, "locked_out", "account", accountID, "until", l.LockedUntil)
	}
	return ErrInvalidCredentials
}

// Login checks email and password and returns a ticket for the second factor. Unknown emails
// get the same answer after the same work (argon2 against a dummy hash) and lock out alike.
func (s *Service) Login(ctx context.Context, address, password string) (string, error) {
	tp, err := threepid.Normalize("email", address)
	if err != nil || len(password) > maxPasswordBytes {
		return "", ErrInvalidCredentials
	}
	key := lockKey(tp.Address)
	if err := s.locked(ctx, key); err != nil {
		return "", err
	}
	a, err := s.store.GetAccountByEmail(ctx, tp.Address)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return "", err
	}
	hash := a.PasswordHash
	usable := err == nil && a.Status == StatusActive && hash != ""
	if !usable {
		hash = s.dummy
	}
	ok, rehash, verr := verifyPassword(password, hash, s.opts.Argon2)
	if verr != nil {
		return "", fmt.Errorf("verify password: %w", verr)
	}
	if !ok || !usable {
		return "", s.fail(ctx, key, "password", a.ID)
	}
	if rehash {
		if h, err := hashPassword(password, s.opts.Argon2); err == nil {
			a.PasswordHash = h
			if err := s.store.UpdateAccount(ctx, a); err != nil {
				return "", err
			}
		}
	}
	if a.TOTPSecret == "" {
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
	t, err := s.store.GetToken(ctx, hashToken(ticket), PurposeLogin, s.now())
	if err != nil {
		if errors.Is(err, ErrNotFound) || errors.Is(err, ErrTokenUsed) || errors.Is(err, ErrTokenExpired) {
			return LoginResult{}, fmt.Errorf("%w: log in again", ErrInvalidLink)
		}
		return LoginResult{}, err
	}
	a, err := s.store.GetAccount(ctx, t.AccountID)
	if err != nil {
		return LoginResult{}, ErrInvalidCredentials
	}
	key := lockKey(a.Email)
	if err := s.locked(ctx, key); err != nil {
		return LoginResult{}, err
	}
	if a.Status != StatusActive || a.TOTPSecret == "" {
		return LoginResult{}, ErrInvalidCredentials
	}
	var accepted bool
	switch {
	case recoveryCode != "":
		accepted, err = s.store.UseRecoveryCode(ctx, a.ID, hashRecoveryCode(recoveryCode), s.now())
		if accepted {
			s.audit(ctx, "recovery_code_used", "account", a.ID)
		}
	default:
		var secret string
		if secret, err = s.openSecret(a.TOTPSecret); err != nil {
			return LoginResult{}, err
		}
		if step, ok := matchTOTP(secret, code, s.now()); ok {
			// Refused when this or a later step was accepted before: a code works once.
			accepted, err = s.store.UseTOTPStep(ctx, a.ID, step)
			if !accepted && err == nil {
				s.audit(ctx, "totp_replayed", "account", a.ID)
			}
		}
	}
	if err != nil {
		return LoginResult{}, err
	}
	if !accepted {
		return LoginResult{}, s.fail(ctx, key, "second_factor", a.ID)
	}
	if _, err := s.store.UseToken(ctx, hashToken(ticket), PurposeLogin, s.now()); err != nil {
		return LoginResult{}, fmt.Errorf("%w: log in again", ErrInvalidLink)
	}
	if err := s.store.ClearFailures(ctx, key); err != nil {
		return LoginResult{}, err
	}
	s.audit(ctx, "logged_in", "account", a.ID)
	res := LoginResult{Account: a}
	if s.hs != nil {
		if a, err = s.ensureMatrix(ctx, a); err != nil {
			return LoginResult{}, err
		}
		res.Account, res.UserID = a, a.MXID
		if res.AccessToken, res.DeviceID, err = s.hs.Login(ctx, a.MXID); err != nil {
			return LoginResult{}, fmt.Errorf("matrix login: %w", err)
		}
	}
	return res, nil
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
		s.audit(ctx, "reset_requested", "known", false)
		return nil
	}
	if err != nil {
		return err
	}
	if a.Status != StatusActive {
		s.audit(ctx, "reset_requested", "account", a.ID, "status", a.Status)
		return nil
	}
	// Anyone may ask for a reset of any address: bound the mails one mailbox gets.
	l, err := s.store.RecordFailure(ctx, resetKey(a.Email), s.now(), time.Hour, func(n int) time.Duration {
		if n >= maxResetMailsPerHour {
			return time.Hour
		}
		return 0
	})
	if err != nil {
		return err
	}
	if l.Failures > maxResetMailsPerHour {
		s.audit(ctx, "reset_mail_limited", "account", a.ID)
		return nil
	}
	// Only the newest link works.
	if err := s.store.DeleteTokens(ctx, a.ID, PurposeReset); err != nil {
		return err
	}
	token := randomToken()
	now := s.now().UTC()
	if err := s.store.CreateToken(ctx, Token{Hash: hashToken(token), AccountID: a.ID, Purpose: PurposeReset,
		CreatedAt: now, ExpiresAt: now.Add(s.opts.ResetLifetime)}); err != nil {
		return err
	}
	if err := s.mailer.Send(ctx, MailReset, a.Email, map[string]string{"link": s.link(ResetPath, token),
		"display_name": a.DisplayName, "lang": a.Language, "expires": now.Add(s.opts.ResetLifetime).Format("2006-01-02 15:04 MST")}); err != nil {
		return fmt.Errorf("send reset mail: %w", err)
	}
	s.audit(ctx, "reset_requested", "account", a.ID)
	return nil
}

// maxResetMailsPerHour bounds the reset mails to one address.
const maxResetMailsPerHour = 3

// resetKey counts the reset mails of an address in the failure counter table.
func resetKey(address string) string { return lockKey("reset:" + address) }

// CheckReset reports whether a reset link can still be used.
func (s *Service) CheckReset(ctx context.Context, token string) error {
	_, err := s.store.GetToken(ctx, hashToken(token), PurposeReset, s.now())
	return linkErr(err)
}

// ResetPassword sets a new password with a reset link, once. The second factor stays as it is.
func (s *Service) ResetPassword(ctx context.Context, token, password string) error {
	if err := s.CheckReset(ctx, token); err != nil {
		return err
	}
	if err := s.checkPassword(password); err != nil {
		return err
	}
	hash, err := hashPassword(password, s.opts.Argon2)
	if err != nil {
		return err
	}
	t, err := s.store.UseToken(ctx, hashToken(token), PurposeReset, s.now())
	if err != nil {
		return linkErr(err)
	}
	a, err := s.store.GetAccount(ctx, t.AccountID)
	if err != nil {
		return linkErr(err)
	}
	if a.Status != StatusActive {
		return ErrInvalidLink
	}
	a.PasswordHash, a.UpdatedAt = hash, s.now().UTC()
	if err := s.store.UpdateAccount(ctx, a); err != nil {
		return err
	}
	if err := s.store.DeleteTokens(ctx, a.ID, PurposeLogin); err != nil {
		return err
	}
	if err := s.store.ClearFailures(ctx, lockKey(a.Email)); err != nil {
		return err
	}
	s.audit(ctx, "password_reset", "account", a.ID)
	return nil
}

// Disable refuses the account's logins, unbinds its email and logs its Matrix user out.
func (s *Service) Disable(ctx context.Context, id string) (Account, error) {
	a, err := s.store.GetAccount(ctx, id)
	if err != nil {
		return a, err
	}
	a.Status, a.UpdatedAt = StatusDisabled, s.now().UTC()
	if err := s.store.UpdateAccount(ctx, a); err != nil {
		return a, err
	}
	if err := s.store.DeleteTokens(ctx, a.ID, ""); err != nil {
		return a, err
	}
	s.audit(ctx, "disabled", "account", a.ID)
	return a, s.detachMatrix(ctx, a)
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
	if err := s.store.UpdateAccount(ctx, a); err != nil {
		return a, err
	}
	s.audit(ctx, "enabled", "account", a.ID)
	if a.Status == StatusActive && s.binder != nil && a.MXID != "" {
		if err := s.binder.BindEmail(ctx, a.Email, a.MXID); err != nil {
			return a, fmt.Errorf("bind email: %w", err)
		}
	}
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
	if err := s.store.DeleteAccount(ctx, a.ID); err != nil {
		return err
	}
	if err := s.store.ClearFailures(ctx, lockKey(a.Email)); err != nil {
		return err
	}
	s.audit(ctx, "deleted", "account", a.ID, "kind", a.Kind, "fhir_ref", a.FHIRRef, "mxid", a.MXID)
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
	if err := s.store.UpdateAccount(ctx, a); err != nil {
		return a, err
	}
	if err := s.store.SetRecoveryCodes(ctx, a.ID, nil); err != nil {
		return a, err
	}
	if err := s.store.DeleteTokens(ctx, a.ID, ""); err != nil {
		return a, err
	}
	s.audit(ctx, "second_factor_reset", "account", a.ID)
	return a, s.sendActivation(ctx, a, a.Status == StatusActive)
}
