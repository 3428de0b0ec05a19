package identity

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"maunium.net/go/mautrix/federation"

	"github.com/ozo-platform/ozo-identity/audit"
	"github.com/ozo-platform/ozo-identity/internal/matrixid"
	"github.com/ozo-platform/ozo-identity/lookup"
	"github.com/ozo-platform/ozo-identity/threepid"
)

// Mailer sends the validation and invite mails.
type Mailer interface {
	Send(ctx context.Context, kind MailKind, to string, vars map[string]string) error
}

// MailKind names the mail to send; the mailer picks its templates by it.
type MailKind string

// The mails identity sends.
const (
	MailValidation MailKind = "validation"
	MailInvite     MailKind = "invite"
)

// Resolver answers which MXID a 3PID belongs to; lookup.Chain builds the full chain.
type Resolver = lookup.Resolver

// Options are the tunables of the Service, from configuration.
type Options struct {
	PublicBaseURL     string
	SessionLifetime   time.Duration
	TokenLifetime     time.Duration
	MaxFailedAttempts int
	InviteLifetime    time.Duration
	WebClientLocation string
	// WebClientLocations are the clients an invite's org.matrix.web_client_location may name;
	// empty means WebClientLocation only.
	WebClientLocations []string
	// NextLinkHosts are the hosts a validation next_link may point at (https only); empty means
	// the host of PublicBaseURL and of the web client locations.
	NextLinkHosts []string
	// InviteLimits caps pending invites per 3PID and per sender.
	InviteLimits InviteLimits
	// MaxMailsPerSession and MaxMailsPerAddress (per SessionLifetime) cap validation mails; 0 is no cap.
	MaxMailsPerSession int
	MaxMailsPerAddress int
	// OnBindMaxInvites and OnBindMaxBytes bound one onbind request; 0 means the defaults.
	OnBindMaxInvites int
	OnBindMaxBytes   int
	OnBindRetryFor   time.Duration
	// OnBindClaim is how long a replica's claim on a delivery hides it from the others
	// (DefaultOnBindClaim when 0): after a kill -9, the delay before another replica sends it.
	OnBindClaim time.Duration
	// OnPepper is told every new pepper so that other hash indexes (the mCSD index) follow it.
	OnPepper func(ctx context.Context, pepper string) error
	// OnBindGivenUp is told of each onbind delivery given up: the homeserver's errcode ("" when
	// it sent none) and whether it ran out of time rather than being refused.
	OnBindGivenUp func(errcode string, expired bool)
	// Policies maps policy name → version → language → URL; users must accept every current URL.
	Policies map[string]Policy
}

// Policy is a document users must accept before using the service.
type Policy struct {
	Version   string
	Languages map[string]PolicyDocument
}

type PolicyDocument struct{ Name, URL string }

// Service implements the Identity Service API's behaviour.
type Service struct {
	store    Store
	signer   *Signer
	mailer   Mailer
	resolver Resolver
	opts     Options
	log      *slog.Logger
	now      func() time.Time

	mu     sync.RWMutex
	pepper string

	// wake nudges the onbind worker after a bind queued deliveries.
	wake chan struct{}

	// ssoStore knows the sessions SSO logins validated (NewSSO sets it); nil without SSO.
	ssoStore SSOStore

	// mirror answers lookups and token checks from memory (UseMirror); nil: the store does.
	mirror *Mirror

	terms acceptedSet // users known to have accepted every policy
}

// UseMirror makes the service keep m current after each of its writes, check tokens through
// its cache and take the pepper m reads (a rotation by another replica). The caller puts m
// into the lookup chain (SetResolver), loads it and runs it.
func (s *Service) UseMirror(m *Mirror) {
	s.mirror = m
	m.onPepper = s.setPepper
}

func (s *Service) setPepper(p string) {
	s.mu.Lock()
	s.pepper = p
	s.mu.Unlock()
}

// detached is ctx without its cancellation, for work that must outlive a caller who hung up (an
// audit record, the mirror catching up), bounded so that a database that does not answer cannot
// hold it for ever.
func detached(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
}

// written brings the mirror up to a write this service just committed, so that the write is
// answered from the moment it returns. When that fails the mirror answers nothing until it has
// caught up, and the database answers.
func (s *Service) written(ctx context.Context) {
	if s.mirror == nil {
		return
	}
	ctx, cancel := detached(ctx)
	defer cancel()
	if err := s.mirror.CatchUp(ctx); err != nil {
		s.log.Warn("lookup index behind a write; lookups go to the database until it caught up", "err", err)
	}
}

// New builds the service; resolver may be nil to resolve from local bindings only.
func New(store Store, signer *Signer, pepper string, mailer Mailer, resolver Resolver, opts Options, log *slog.Logger) *Service {
	if len(opts.WebClientLocations) == 0 && opts.WebClientLocation != "" {
		opts.WebClientLocations = []string{opts.WebClientLocation}
	}
	if len(opts.NextLinkHosts) == 0 {
		for _, u := range append([]string{opts.PublicBaseURL}, opts.WebClientLocations...) {
			if pu, err := url.Parse(u); err == nil && pu.Host != "" {
				opts.NextLinkHosts = append(opts.NextLinkHosts, pu.Host)
			}
		}
	}
	s := &Service{store: store, signer: signer, mailer: mailer, opts: opts, log: log, now: time.Now,
		pepper: pepper, wake: make(chan struct{}, 1)}
	if resolver == nil {
		resolver = lookup.Bindings(store)
	}
	s.resolver = resolver
	return s
}

// Signer returns the server's signing key.
func (s *Service) Signer() *Signer { return s.signer }

// Store returns the storage the service uses.
func (s *Service) Store() Store { return s.store }

// Pepper returns the current lookup pepper.
func (s *Service) Pepper() string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.pepper
}

// RotatePepper stores a new pepper and recomputes every binding's lookup hashes.
func (s *Service) RotatePepper(ctx context.Context) (string, error) {
	b := make([]byte, 24)
	rand.Read(b)
	pepper := base64.RawURLEncoding.EncodeToString(b)
	// The bindings' hashes and the pepper change in one transaction; the mirror (here at once,
	// on other replicas through the change log) reloads with both.
	if err := s.store.RehashBindings(ctx, pepper, hashesWith(pepper)); err != nil {
		return "", err
	}
	s.written(ctx)
	s.setPepper(pepper)
	if s.opts.OnPepper != nil {
		if err := s.opts.OnPepper(ctx, pepper); err != nil {
			return "", err
		}
	}
	return pepper, nil
}

func randomToken(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func hashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// validSecret checks the grammar the spec gives client secrets and session IDs: [0-9a-zA-Z.=_-], 1–255.
func validSecret(s string) bool {
	if len(s) == 0 || len(s) > 255 {
		return false
	}
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || strings.ContainsRune(".=_-", c)) {
			return false
		}
	}
	return true
}

// ValidRoomID checks the shape of a room ID: "!opaque:server" with a valid server name, or room
// version 12's "!" and 43 characters of unpadded URL-safe base64 (the create event's hash, no
// server name), which current homeservers send. The opaque part holds no control characters or
// spaces: PostgreSQL refuses NUL, and the ID ends up in mail links.
func ValidRoomID(id string) bool {
	if len(id) > 255 || !strings.HasPrefix(id, "!") || !utf8.ValidString(id) {
		return false
	}
	opaque, server, ok := strings.Cut(id[1:], ":")
	if !ok {
		if len(opaque) != 43 {
			return false
		}
		for _, c := range opaque {
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-' || c == '_') {
				return false
			}
		}
		return true
	}
	if opaque == "" || strings.ContainsFunc(opaque, func(r rune) bool { return unicode.IsControl(r) || unicode.IsSpace(r) }) {
		return false
	}
	_, _, ok = federation.ParseServerName(server)
	return ok
}

// checkText refuses what cannot be stored or passed on: invalid UTF-8 and NUL anywhere, and
// other control characters unless free text (names; the mailer drops them) may hold them.
func checkText(field, v string, freeText bool) error {
	if !utf8.ValidString(v) || strings.ContainsRune(v, 0) {
		return errorf(CodeInvalidParam, "%s holds invalid UTF-8 or a NUL character", field)
	}
	if !freeText && strings.ContainsFunc(v, unicode.IsControl) {
		return errorf(CodeInvalidParam, "%s holds control characters", field)
	}
	return nil
}

func normalizeErr(err error) error {
	switch {
	case errors.Is(err, threepid.ErrInvalidEmail):
		return errorf(CodeInvalidEmail, "%s", err.Error())
	case errors.Is(err, threepid.ErrUnsupportedMedium), errors.Is(err, threepid.ErrInvalidAddress):
		return errorf(CodeInvalidParam, "%s", err.Error())
	}
	return err
}

// RequestEmailToken starts (or continues) an email validation session and mails a token.
// Following the spec, a send_attempt not higher than the last one sends nothing and returns the same sid.
func (s *Service) RequestEmailToken(ctx context.Context, clientSecret, address string, sendAttempt int64, nextLink, clientIP string) (string, error) {
	if !validSecret(clientSecret) {
		return "", errorf(CodeInvalidParam, "client_secret must be 1-255 characters of [0-9a-zA-Z.=_-]")
	}
	if nextLink != "" && !s.AllowedNextLink(nextLink) {
		return "", errorf(CodeInvalidParam, "next_link must be an https URL on an allowed host (validation.next_link_hosts)")
	}
	tp, err := threepid.Normalize(threepid.MediumEmail, address)
	if err != nil {
		return "", normalizeErr(err)
	}
	now := s.now()
	sess, err := s.store.FindSession(ctx, clientSecret, tp)
	switch {
	case err == nil && now.Sub(sess.CreatedAt) > s.opts.SessionLifetime:
		return "", errorf(CodeSessionExpired, "this validation session has expired; use a new client_secret")
	case err == nil && sendAttempt <= sess.SendAttempt:
		return sess.SID, nil
	case err == nil:
		// Checked before mailing so that a refused attempt sends nothing; AddSessionToken checks
		// again atomically.
		if q := s.opts.MaxMailsPerSession; q > 0 && sess.MailsSent >= q {
			return "", mailLimitErr(ErrSessionMailLimit)
		}
		if q := s.opts.MaxMailsPerAddress; q > 0 {
			n, err := s.store.MailsSent(ctx, tp, s.mailQuota(now).Since)
			if err != nil {
				return "", err
			}
			if n >= q {
				return "", mailLimitErr(ErrAddressMailLimit)
			}
		}
		// Mail first: a failed send records nothing, so the client's retry with the same send_attempt sends again.
		token := randomToken(24)
		if err := s.sendValidation(ctx, sess.SID, clientSecret, tp.Address, token, nextLink, clientIP); err != nil {
			return "", err
		}
		err := s.store.AddSessionToken(ctx, sess.SID, sendAttempt, hashToken(token), now.Add(s.opts.TokenLifetime), s.mailQuota(now))
		if errors.Is(err, ErrLimitExceeded) {
			return "", mailLimitErr(err)
		}
		return sess.SID, err
	case !errors.Is(err, ErrNotFound):
		return "", err
	}
	sess = Session{SID: randomToken(12), ClientSecret: clientSecret, ThreePID: tp, SendAttempt: sendAttempt,
		NextLink: nextLink, CreatedAt: now, MailsSent: 1}
	token := randomToken(24)
	if err := s.store.CreateSession(ctx, sess, hashToken(token), now.Add(s.opts.TokenLifetime), s.mailQuota(now)); err != nil {
		if errors.Is(err, ErrLimitExceeded) {
			return "", mailLimitErr(err)
		}
		if errors.Is(err, ErrAlreadyExists) {
			// A concurrent request with the same secret won; answer with its session.
			if again, err := s.store.FindSession(ctx, clientSecret, tp); err == nil {
				return again.SID, nil
			}
		}
		return "", err
	}
	if err := s.sendValidation(ctx, sess.SID, clientSecret, tp.Address, token, nextLink, clientIP); err != nil {
		// Nothing was mailed, so the session is useless: drop it so a retry starts afresh.
		if derr := s.store.DeleteSession(ctx, sess.SID); derr != nil {
			s.log.Warn("remove session after failed mail", "sid", sess.SID, "err", derr)
		}
		return "", err
	}
	return sess.SID, nil
}

// mailQuota counts the mails of the sessions still alive, so the address budget renews as they expire.
func (s *Service) mailQuota(now time.Time) MailQuota {
	return MailQuota{PerSession: s.opts.MaxMailsPerSession, PerAddress: s.opts.MaxMailsPerAddress,
		Since: now.Add(-s.opts.SessionLifetime)}
}

func mailLimitErr(err error) error {
	if errors.Is(err, ErrSessionMailLimit) {
		return errorf(CodeLimitExceeded, "this validation session has sent its maximum number of mails; use the newest mail or start a new session later")
	}
	return errorf(CodeLimitExceeded, "too many validation mails to this address; try again later")
}

// AllowedNextLink reports whether a validation may redirect to link: https on an allowed host,
// so that the mailed link cannot send a person to a look-alike login page.
func (s *Service) AllowedNextLink(link string) bool {
	u, err := url.Parse(link)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil || u.Opaque != "" {
		return false
	}
	for _, h := range s.opts.NextLinkHosts {
		// An entry without a port allows any port of that host.
		if strings.EqualFold(h, u.Host) || !strings.Contains(h, ":") && strings.EqualFold(h, u.Hostname()) {
			return true
		}
	}
	return false
}

// allowedWebClient reports whether loc is one of the configured web clients.
func (s *Service) allowedWebClient(loc string) bool {
	want := strings.TrimRight(loc, "/")
	for _, l := range s.opts.WebClientLocations {
		if strings.EqualFold(strings.TrimRight(l, "/"), want) {
			return true
		}
	}
	return false
}

func (s *Service) sendValidation(ctx context.Context, sid, clientSecret, to, token, nextLink, clientIP string) error {
	q := url.Values{"sid": {sid}, "client_secret": {clientSecret}, "token": {token}}
	if nextLink != "" {
		q.Set("nextLink", nextLink)
	}
	link := strings.TrimRight(s.opts.PublicBaseURL, "/") + "/_matrix/identity/v2/validate/email/submitToken?" + q.Encode()
	vars := map[string]string{"token": token, "link": link, "sid": sid, "client_secret": clientSecret}
	if clientIP != "" {
		vars["ipaddress"] = clientIP
	}
	if err := s.mailer.Send(ctx, MailValidation, to, vars); err != nil {
		s.log.Warn("validation mail failed", "sid", sid, "err", err)
		return errorf(CodeEmailSendError, "could not send the validation email")
	}
	return nil
}

// liveSession loads a session and checks the client secret and expiry.
func (s *Service) liveSession(ctx context.Context, sid, clientSecret string) (Session, error) {
	if !validSecret(sid) || !validSecret(clientSecret) {
		return Session{}, errorf(CodeInvalidParam, "sid and client_secret must be 1-255 characters of [0-9a-zA-Z.=_-]")
	}
	sess, err := s.store.GetSession(ctx, sid)
	if errors.Is(err, ErrNotFound) || err == nil && sess.ClientSecret != clientSecret {
		return sess, errorf(CodeNoValidSession, "no validation session with this sid and client_secret")
	}
	if err != nil {
		return sess, err
	}
	if s.now().Sub(sess.CreatedAt) > s.opts.SessionLifetime {
		return sess, errorf(CodeSessionExpired, "this validation session has expired")
	}
	return sess, nil
}

// SubmitToken validates a session with the mailed token and returns its next_link.
func (s *Service) SubmitToken(ctx context.Context, sid, clientSecret, token string) (string, error) {
	sess, err := s.liveSession(ctx, sid, clientSecret)
	if err != nil {
		return "", err
	}
	if len(token) > 255 {
		token = token[:255]
	}
	ok, sess, err := s.store.CheckSessionToken(ctx, sess.SID, hashToken(token), s.now(), s.opts.MaxFailedAttempts)
	if errors.Is(err, ErrTooManyAttempts) {
		return "", errorf(CodeLimitExceeded, "too many wrong tokens for this session; start a new one")
	}
	if err != nil {
		return "", err
	}
	if !ok {
		return "", errorf(CodeTokenIncorrect, "the token is incorrect")
	}
	return sess.NextLink, nil
}

// Validated returns the validated 3PID of a session.
func (s *Service) Validated(ctx context.Context, sid, clientSecret string) (Session, error) {
	sess, err := s.liveSession(ctx, sid, clientSecret)
	if err != nil {
		return sess, err
	}
	if sess.ValidatedAt.IsZero() {
		return sess, errorf(CodeSessionNotValidated, "this validation session has not been validated yet")
	}
	return sess, nil
}

// Association is a signed 3PID association as the spec's bind and v1 lookup return it.
type Association = map[string]any

func (s *Service) association(b Binding) (Association, error) {
	a := Association{
		"address":    b.Address,
		"medium":     b.Medium,
		"mxid":       b.MXID,
		"not_before": b.NotBefore.UnixMilli(),
		"not_after":  b.NotAfter.UnixMilli(),
		"ts":         b.CreatedAt.UnixMilli(),
	}
	if err := s.signer.Sign(a); err != nil {
		return nil, err
	}
	return a, nil
}

// Association returns the signed association of a binding, for v1 lookup.
func (s *Service) Association(b Binding) (Association, error) { return s.association(b) }

// Bind binds the session's validated 3PID to mxid. The caller (an account) may only bind its own MXID;
// callerUserID is empty for the unauthenticated v1 API, which the network gate protects.
func (s *Service) Bind(ctx context.Context, sid, clientSecret, mxid, callerUserID string) (Association, error) {
	if !matrixid.ValidUserID(mxid) {
		return nil, errorf(CodeInvalidParam, "mxid is not a Matrix user ID")
	}
	if callerUserID != "" && callerUserID != mxid {
		return nil, errorf(CodeForbidden, "you may only bind 3PIDs to your own Matrix ID")
	}
	sess, err := s.Validated(ctx, sid, clientSecret)
	if err != nil {
		return nil, err
	}
	owner, tps, isSSO, err := s.ssoThreePIDs(ctx, sess.SID)
	if err != nil {
		return nil, err
	}
	if !isSSO {
		return s.bind(ctx, sess.ThreePID, mxid, "bind")
	}
	// A login proves a person, not an account: what it proved goes only to the account whose
	// token started it, so a login link sent to someone else binds nothing to the sender.
	if callerUserID == "" || owner != mxid {
		return nil, errorf(CodeForbidden, "this session was validated by a login started by another Matrix user")
	}
	var first Association
	for _, tp := range tps {
		a, err := s.bind(ctx, tp, mxid, "sso")
		if err != nil {
			return nil, err
		}
		if first == nil {
			first = a
		}
	}
	return first, nil
}

// AdminBind binds a 3PID without validation, for provisioning through the admin API or SSO.
func (s *Service) AdminBind(ctx context.Context, medium, address, mxid, source string) (Association, error) {
	tp, err := threepid.Normalize(medium, address)
	if err != nil {
		return nil, normalizeErr(err)
	}
	if !matrixid.ValidUserID(mxid) {
		return nil, errorf(CodeInvalidParam, "mxid is not a Matrix user ID")
	}
	return s.bind(ctx, tp, mxid, source)
}

// bindingLifetime is how long a signed association is valid; homeservers re-check after it.
const bindingLifetime = 100 * 365 * 24 * time.Hour

func (s *Service) bind(ctx context.Context, tp threepid.ThreePID, mxid, source string) (Association, error) {
	now := s.now().UTC().Truncate(time.Millisecond)
	b := Binding{ThreePID: tp, MXID: mxid, CreatedAt: now, NotBefore: now, NotAfter: now.Add(bindingLifetime), Source: source}
	assoc, err := s.association(b)
	if err != nil {
		return nil, err
	}
	queued := false
	scope := audit.ScopeFrom(ctx)
	err = s.withPepper(ctx, func(pepper string) error {
		return s.store.Bind(ctx, BindRequest{
			Audit: func(delivered []Invite) []audit.Record {
				return bindRecords(scope, b, delivered, "source="+source)
			},
			Binding:      b,
			Hashes:       threepid.LookupHashes(tp, pepper),
			FoldedHashes: threepid.FoldedLookupHashes(tp, pepper),
			Pepper:       pepper,
			Deliver: func(invites []Invite) ([]OnBindDelivery, error) {
				ds, err := s.onBindDeliveries(b, assoc, invites)
				if err != nil {
					return nil, err
				}
				queued = len(ds) > 0
				return ds, nil
			},
		})
	})
	if err != nil {
		return nil, err
	}
	s.written(ctx)
	scope.MarkRecorded()
	if queued {
		s.Wake()
	}
	return assoc, nil
}

// withPepper runs write with the current pepper, and again with the stored one when a rotation
// (here or on another replica) committed in between: hashes of an old pepper would never be found.
func (s *Service) withPepper(ctx context.Context, write func(pepper string) error) error {
	pepper := s.Pepper()
	for attempt := 0; ; attempt++ {
		err := write(pepper)
		if !errors.Is(err, ErrPepperChanged) || attempt == 3 {
			return err
		}
		if pepper, err = s.store.GetSetting(ctx, SettingPepper); err != nil {
			return fmt.Errorf("read pepper: %w", err)
		}
	}
}

// bindRecords are the audit records of binding b and of the invites it delivered.
func bindRecords(scope *audit.Scope, b Binding, delivered []Invite, detail string) []audit.Record {
	recs := []audit.Record{bindRecord(scope, audit.ActionBind, b.ThreePID, b.MXID, detail)}
	for _, inv := range delivered {
		r := scope.Record(audit.ActionInviteDelivered, audit.OutcomeSuccess)
		r.Medium, r.Address, r.Resource, r.OnBehalfOf = b.Medium, b.Address, inv.RoomID, inv.Sender
		r.Detail = "bound to " + b.MXID + "; onbind queued for " + matrixid.ServerOf(b.MXID)
		recs = append(recs, r)
	}
	return recs
}

// bindRecord is the audit record of a binding change of tp to mxid.
func bindRecord(scope *audit.Scope, action audit.Action, tp threepid.ThreePID, mxid, detail string) audit.Record {
	r := scope.Record(action, audit.OutcomeSuccess)
	r.Medium, r.Address, r.Resource, r.Detail = tp.Medium, tp.Address, mxid, detail
	if r.OnBehalfOf == "" && r.Actor.ID != mxid {
		r.OnBehalfOf = mxid
	}
	return r
}

// Unbind removes a binding. Authorised either by a validated session for the 3PID, or by the
// homeserver of mxid (originServer, from X-Matrix authentication).
func (s *Service) Unbind(ctx context.Context, sid, clientSecret, medium, address, mxid, originServer string) error {
	tp, err := threepid.Normalize(medium, address)
	if err != nil {
		return normalizeErr(err)
	}
	if !matrixid.ValidUserID(mxid) {
		return errorf(CodeInvalidParam, "mxid is not a Matrix user ID")
	}
	switch {
	case sid != "" || clientSecret != "":
		_, tps, err := s.ValidatedThreePIDs(ctx, sid, clientSecret)
		if err != nil {
			return err
		}
		if !slices.Contains(tps, tp) {
			return errorf(CodeForbidden, "the session validated a different 3PID")
		}
	case originServer != "":
		if matrixid.ServerOf(mxid) != originServer {
			return errorf(CodeForbidden, "a homeserver may only unbind its own users")
		}
	default:
		return errorf(CodeForbidden, "unbind needs a validated session or a signed request from the user's homeserver")
	}
	scope := audit.ScopeFrom(ctx)
	if err := s.store.DeleteBinding(ctx, tp, mxid, bindRecord(scope, audit.ActionUnbind, tp, mxid, "")); errors.Is(err, ErrNotFound) {
		return errorf(CodeNotFound, "this 3PID is not bound to this Matrix ID")
	} else if err != nil {
		return err
	}
	s.written(ctx)
	scope.MarkRecorded()
	return nil
}

// AdminUnbind removes a binding whatever its MXID.
func (s *Service) AdminUnbind(ctx context.Context, medium, address string) error {
	tp, err := threepid.Normalize(medium, address)
	if err != nil {
		return normalizeErr(err)
	}
	scope := audit.ScopeFrom(ctx)
	b, err := s.store.GetBinding(ctx, tp)
	if errors.Is(err, ErrNotFound) {
		return errorf(CodeNotFound, "this 3PID is not bound")
	} else if err != nil {
		return err
	}
	// Bound to b.MXID: a binding changed in between is left alone and reported not found.
	if err := s.store.DeleteBinding(ctx, tp, b.MXID, bindRecord(scope, audit.ActionUnbind, tp, b.MXID, "")); errors.Is(err, ErrNotFound) {
		return errorf(CodeNotFound, "this 3PID is not bound")
	} else if err != nil {
		return err
	}
	s.written(ctx)
	scope.MarkRecorded()
	return nil
}

// SetResolver replaces the resolution chain (local bindings, then directories, then peers).
func (s *Service) SetResolver(r Resolver) { s.resolver = r }

// Lookup answers a v2 lookup: hashed ("sha256") or plain ("none", "address medium") addresses.
func (s *Service) Lookup(ctx context.Context, algorithm, pepper string, addresses []string) (map[string]string, error) {
	if algorithm != "sha256" && algorithm != "none" {
		return nil, errorf(CodeInvalidParam, "unsupported algorithm %q; see /hash_details", algorithm)
	}
	if pepper != s.Pepper() {
		// Another replica may have taken up a rotated pepper first: look before refusing.
		if _, err := s.refreshPepper(ctx); err != nil {
			return nil, err
		}
	}
	if pepper != s.Pepper() {
		return nil, errorf(CodeInvalidPepper, "the pepper is not the current one; see /hash_details")
	}
	out := make(map[string]string)
	if algorithm == "sha256" {
		found, err := s.resolver.ResolveHashes(context.WithValue(ctx, pepperKey{}, pepper), addresses)
		if errors.Is(err, ErrPepperChanged) {
			return nil, errorf(CodeInvalidPepper, "the pepper changed during the lookup; see /hash_details")
		}
		if err != nil {
			return nil, err
		}
		return found, nil // the chain answers only what was asked
	}
	byTP := make(map[threepid.ThreePID][]string)
	var tps []threepid.ThreePID
	for _, a := range addresses {
		i := strings.LastIndexByte(a, ' ')
		if i < 0 {
			continue // not "address medium": it cannot match anything
		}
		tp, err := threepid.Normalize(a[i+1:], a[:i])
		if err != nil {
			continue
		}
		if _, seen := byTP[tp]; !seen {
			tps = append(tps, tp)
		}
		byTP[tp] = append(byTP[tp], a)
	}
	found, err := s.resolver.Resolve(ctx, tps)
	if err != nil {
		return nil, err
	}
	for tp, mxid := range found {
		for _, a := range byTP[tp] {
			out[a] = mxid
		}
	}
	return out, nil
}

// LookupOne resolves a single 3PID (v1 lookup, invites): its MXID or "".
func (s *Service) LookupOne(ctx context.Context, medium, address string) (threepid.ThreePID, string, error) {
	tp, err := threepid.Normalize(medium, address)
	if err != nil {
		return tp, "", normalizeErr(err)
	}
	found, err := s.resolver.Resolve(ctx, []threepid.ThreePID{tp})
	if err != nil {
		return tp, "", err
	}
	return tp, found[tp], nil
}

// InviteRequest is the body of store-invite.
type InviteRequest struct {
	Medium, Address, RoomID, Sender string
	// Caller is the authenticated user (v2: the token's user), who must be the sender; empty for
	// v1, where the network gate vouches for the homeserver.
	Caller string
	// Extra holds the optional fields: room_name, room_alias, room_avatar_url, room_join_rules,
	// room_type, sender_display_name, sender_avatar_url.
	Extra map[string]string
}

// InviteFields lists the optional store-invite fields kept and passed to the mail template.
var InviteFields = []string{"room_name", "room_alias", "room_avatar_url", "room_join_rules", "room_type",
	"sender_display_name", "sender_avatar_url", "org.matrix.web_client_location"}

// StoredInvite is what store-invite answers.
type StoredInvite struct {
	Token       string
	DisplayName string
	PublicKey   string // long-term key
	Ephemeral   string // ephemeral public key
}

// StoreInvite records a pending invite for an unbound 3PID and mails the invitee when it is an email.
func (s *Service) StoreInvite(ctx context.Context, req InviteRequest) (StoredInvite, error) {
	if req.Medium == "" || req.Address == "" || req.RoomID == "" || req.Sender == "" {
		return StoredInvite{}, errorf(CodeMissingParams, "medium, address, room_id and sender are required")
	}
	for _, f := range []struct{ name, v string }{{"medium", req.Medium}, {"address", req.Address}, {"room_id", req.RoomID}, {"sender", req.Sender}} {
		if err := checkText(f.name, f.v, false); err != nil {
			return StoredInvite{}, err
		}
	}
	if !matrixid.ValidUserID(req.Sender) {
		return StoredInvite{}, errorf(CodeInvalidParam, "sender is not a Matrix user ID")
	}
	// The mail names the sender; over v2 only the token's own user may be named.
	if req.Caller != "" && req.Caller != req.Sender {
		return StoredInvite{}, errorf(CodeForbidden, "sender must be your own Matrix ID")
	}
	if !ValidRoomID(req.RoomID) {
		return StoredInvite{}, errorf(CodeInvalidParam, "room_id is not a Matrix room ID")
	}
	extra := map[string]string{}
	for _, k := range InviteFields {
		v := req.Extra[k]
		if v == "" {
			continue
		}
		if len(v) > 1024 {
			return StoredInvite{}, errorf(CodeInvalidParam, "%s is too long", k)
		}
		if err := checkText(k, v, k == "room_name" || k == "sender_display_name"); err != nil {
			return StoredInvite{}, err
		}
		extra[k] = v
	}
	// Element sends its own address with every invite. Refusing unknown ones would fail the
	// homeserver's invite for users of any other deployment, so an unlisted location is dropped
	// and the mail links to the configured client: the link carries the invite's private key.
	if loc, ok := extra["org.matrix.web_client_location"]; ok && !s.allowedWebClient(loc) {
		s.log.Info("ignoring a web client location that is not configured", "location", truncate(loc, 100))
		delete(extra, "org.matrix.web_client_location")
	}
	tp, mxid, err := s.LookupOne(ctx, req.Medium, req.Address)
	if err != nil {
		return StoredInvite{}, err
	}
	if mxid != "" {
		return StoredInvite{}, errorf(CodeThreePIDInUse, "this 3PID is already bound to a Matrix user; invite them directly")
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return StoredInvite{}, fmt.Errorf("generate ephemeral key: %w", err)
	}
	ephemeral := base64.RawStdEncoding.EncodeToString(pub)
	now := s.now()
	inv := Invite{Token: randomToken(24), ThreePID: tp, RoomID: req.RoomID, Sender: req.Sender,
		CreatedAt: now, ExpiresAt: now.Add(s.opts.InviteLifetime), Extra: extra, EphemeralKey: ephemeral}
	// Stored (with its key, under the caps) before the mail, so a refused invite mails nobody.
	scope := audit.ScopeFrom(ctx)
	rec := scope.Record(audit.ActionInviteStored, audit.OutcomeSuccess)
	rec.Medium, rec.Address, rec.Resource, rec.OnBehalfOf = tp.Medium, tp.Address, inv.RoomID, inv.Sender
	switch err := s.store.CreateInvite(ctx, inv, s.opts.InviteLimits, rec); {
	case errors.Is(err, ErrThreePIDInviteLimit):
		return StoredInvite{}, errorf(CodeLimitExceeded, "this 3PID has too many pending invites; they are delivered when it is bound")
	case errors.Is(err, ErrSenderInviteLimit):
		return StoredInvite{}, errorf(CodeLimitExceeded, "you have too many pending invites; wait until some are accepted or expire")
	case err != nil:
		return StoredInvite{}, err
	}
	if tp.Medium == threepid.MediumEmail {
		vars := map[string]string{"token": inv.Token, "room_id": inv.RoomID, "sender": inv.Sender,
			"medium": tp.Medium, "address": tp.Address,
			// URL-safe, unpadded: the form Sydent mails and sign-ed25519 accepts.
			"ephemeral_private_key": base64.RawURLEncoding.EncodeToString(priv.Seed()),
			"web_client_location":   s.opts.WebClientLocation}
		for k, v := range extra {
			vars[k] = v
		}
		// The account that asked, not the request, fills the verified sender.
		if req.Caller != "" {
			vars["verified_sender"] = req.Caller
		}
		// An invite whose mail failed is not kept: the homeserver's invite fails with
		// M_EMAIL_SEND_ERROR instead of leaving a room event nobody was told of.
		if err := s.mailer.Send(ctx, MailInvite, tp.Address, vars); err != nil {
			s.log.Warn("invite mail failed", "room_id", inv.RoomID, "err", err)
			if derr := s.store.DeleteInvite(ctx, inv.Token, inv.EphemeralKey); derr != nil {
				s.log.Warn("remove invite after failed mail", "err", derr)
			}
			return StoredInvite{}, errorf(CodeEmailSendError, "the invite email could not be sent")
		}
	}
	return StoredInvite{Token: inv.Token, DisplayName: RedactedDisplayName(tp), PublicKey: s.signer.PublicKey(), Ephemeral: ephemeral}, nil
}

// RedactedDisplayName is what room members see for a 3PID invite: enough to recognise, not to harvest.
func RedactedDisplayName(tp threepid.ThreePID) string {
	switch tp.Medium {
	case threepid.MediumEmail:
		local, domain, _ := strings.Cut(tp.Address, "@")
		return keep(local, 3) + "...@" + keep(domain, 3) + "..."
	case threepid.MediumUZI, threepid.MediumURA:
		return strings.ToUpper(tp.Medium) + " ..." + tp.Address[len(tp.Address)-3:]
	default:
		return tp.Medium + " invite"
	}
}

func keep(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return string(r)
	}
	return string(r[:n])
}

// SignEd25519 signs {mxid, sender, token} of a stored invite with the caller's ephemeral private key.
func (s *Service) SignEd25519(ctx context.Context, mxid, token, privateKey string) (map[string]any, error) {
	if mxid == "" || token == "" || privateKey == "" {
		return nil, errorf(CodeMissingParams, "mxid, token and private_key are required")
	}
	if !matrixid.ValidUserID(mxid) {
		return nil, errorf(CodeInvalidParam, "mxid is not a Matrix user ID")
	}
	if err := checkText("token", token, false); err != nil {
		return nil, err
	}
	inv, err := s.store.GetInvite(ctx, token)
	if errors.Is(err, ErrNotFound) || err == nil && !inv.ExpiresAt.After(s.now()) {
		return nil, errorf(CodeNotFound, "no invite with this token")
	} else if err != nil {
		return nil, err
	}
	// Only the key mailed with this invite signs for it (as in Sydent): the sign URL is reachable
	// without an account, so token and key together are the proof.
	pub, err := ephemeralPublicKey(privateKey)
	if err != nil {
		return nil, err
	}
	switch {
	case inv.EphemeralKey != "" && pub != inv.EphemeralKey:
		return nil, errorf(CodeForbidden, "private_key is not the key of this invite")
	case inv.EphemeralKey == "":
		// Invites stored before their key was kept: the key must at least be one store-invite made.
		if ok, err := s.store.EphemeralKeyExists(ctx, pub); err != nil {
			return nil, err
		} else if !ok {
			return nil, errorf(CodeForbidden, "private_key is not the key of this invite")
		}
	}
	obj := map[string]any{"mxid": mxid, "sender": inv.Sender, "token": token}
	if err := signWithPrivateKey(obj, s.signer.ServerName, privateKey); err != nil {
		return nil, err
	}
	return obj, nil
}

// IsValidPublicKey reports whether key is this server's long-term key or one it used before
// and that is not retired: signatures on invites pending at a rotation stay verifiable.
func (s *Service) IsValidPublicKey(ctx context.Context, key string) (bool, error) {
	key = strings.TrimRight(key, "=")
	if key == s.signer.PublicKey() {
		return true, nil
	}
	keys, err := s.store.SigningKeys(ctx)
	if err != nil {
		return false, err
	}
	for _, k := range keys {
		if k.PublicKey == key {
			return k.Retired.IsZero(), nil
		}
	}
	return false, nil
}

// PublicKey returns the public key of keyID: the current key or an earlier one not retired,
// whichever replica made it current. ErrNotFound for any other.
func (s *Service) PublicKey(ctx context.Context, keyID string) (string, error) {
	if keyID == s.signer.KeyID() {
		return s.signer.PublicKey(), nil
	}
	keys, err := s.store.SigningKeys(ctx)
	if err != nil {
		return "", err
	}
	for _, k := range keys {
		if k.ID == keyID && k.Retired.IsZero() {
			return k.PublicKey, nil
		}
	}
	return "", ErrNotFound
}

// SigningKeys lists every long-term key used, oldest first.
func (s *Service) SigningKeys(ctx context.Context) ([]SigningKey, error) {
	return s.store.SigningKeys(ctx)
}

// RotateSigningKey makes a new long-term key current; see Signer.Rotate.
func (s *Service) RotateSigningKey(ctx context.Context) (SigningKey, error) {
	return s.signer.Rotate(ctx, s.store)
}

// RetireSigningKey makes an earlier key invalid: /pubkey no longer serves it and
// /pubkey/isvalid says false, so invites it signed can no longer be accepted. The current key
// cannot be retired (rotate first).
func (s *Service) RetireSigningKey(ctx context.Context, keyID string) error {
	if _, err := s.signer.Refresh(ctx, s.store); err != nil {
		return err
	}
	if keyID == s.signer.KeyID() {
		return errorf(CodeInvalidParam, "%s is the current signing key: rotate first", keyID)
	}
	if err := s.store.RetireSigningKey(ctx, keyID, s.now()); errors.Is(err, ErrNotFound) {
		return errorf(CodeNotFound, "no signing key %s", keyID)
	} else if err != nil {
		return err
	}
	return nil
}

// RefreshKeys takes up a signing key or pepper another process rotated since; each replica
// calls it periodically. It reports what changed.
func (s *Service) RefreshKeys(ctx context.Context) (signer, pepper bool, err error) {
	if signer, err = s.signer.Refresh(ctx, s.store); err != nil {
		return false, false, err
	}
	pepper, err = s.refreshPepper(ctx)
	return signer, pepper, err
}

func (s *Service) refreshPepper(ctx context.Context) (bool, error) {
	p, err := s.store.GetSetting(ctx, SettingPepper)
	if err != nil {
		return false, fmt.Errorf("read pepper: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if p == s.pepper {
		return false, nil
	}
	s.pepper = p
	return true, nil
}

// IsValidEphemeralKey reports whether key was handed out by store-invite.
func (s *Service) IsValidEphemeralKey(ctx context.Context, key string) (bool, error) {
	if checkText("public_key", key, false) != nil {
		return false, nil // never handed out; PostgreSQL would refuse to compare it
	}
	return s.store.EphemeralKeyExists(ctx, strings.TrimRight(key, "="))
}
