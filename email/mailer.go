// Package email renders and sends ozo-identity's two mails: the email
// validation mail (POST /_matrix/identity/v2/validate/email/requestToken)
// and the room invite mail (POST /_matrix/identity/v2/store-invite).
//
// A template is either a directory with subject.txt and body.txt
// (text/template) and body.html (html/template, which escapes each value
// for its context), from which the package builds a multipart/alternative
// message with quoted-printable UTF-8 parts; the function urlquote is
// available for links in the text parts. Or it is a Sydent .eml file: a whole
// message with Python %(name)s placeholders, where every variable x also
// exists as x_forhtml (HTML-escaped) and x_forurl (URL-quoted), so an
// operator moving from Sydent keeps their templates.
//
// Variables, by Sydent's names. Every mail has: to, from, messageid, date,
// multipart_boundary.
//
// Validation mail, given by the caller: token and link (required),
// ipaddress (default "an unknown location"), client_secret, sid.
//
// Invite mail, given by the caller: token, room_id, sender (required),
// medium, address, ephemeral_private_key, sender_display_name (default:
// sender), sender_avatar_url, verified_sender (the authenticated sender, if
// any), room_name, room_alias, room_avatar_url, room_join_rules, room_type,
// guest_user_id, guest_access_token, web_client_location and
// org.matrix.web_client_location (either overrides Config.WebClientLocation).
// Computed: bracketed_room_name ("(name) "), bracketed_verified_sender,
// signurl, invite_link (the web client's join link) and
// subject_header_value (Config.InviteSubject, encoded). As in Sydent,
// sender_display_name is cut to 20 characters and room_name to 30.
//
// Every value has control characters (CR and LF above all) removed before
// it reaches a template, and each rendered message is checked to hold
// exactly the header fields of its template and a To naming only the
// recipient, so no value can add a header or a recipient.
package email

import (
	"cmp"
	"context"
	"crypto/tls"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/mail"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Kind names a kind of mail.
type Kind string

const (
	KindValidation Kind = "validation"
	KindInvite     Kind = "invite"
	// KindAccountInvite invites a family caregiver or patient to activate their OZO account
	// (also sent to enrol a new second factor); KindAccountReset carries a password reset link.
	// Both are in Dutch or English by the variable lang.
	KindAccountInvite Kind = "account_invite"
	KindAccountReset  Kind = "account_reset"
)

// Config configures SMTP delivery and the templates.
type Config struct {
	Host     string // default "localhost"
	Port     int    // default 25, 587 (starttls) or 465 (tls)
	Security string // "none", "starttls" or "tls"; default "none" for a loopback host, else "starttls"
	// Username and Password enable AUTH PLAIN, which is refused without TLS
	// unless Host is loopback.
	Username, Password string
	From               string        // e.g. "OZO <noreply@ozo.example.nl>"; default noreply@HeloName
	HeloName           string        // EHLO name; default the host name
	Timeout            time.Duration // bound on one delivery; default 30s

	// Templates maps a kind to a .eml file (Sydent form) or a directory
	// holding subject.txt, body.txt and body.html; absent = built-in.
	Templates map[Kind]string

	// WebClientLocation is the web client that invite links open unless
	// the request names another. Default "https://app.element.io".
	WebClientLocation string
	// PublicBaseURL is this identity server's public URL, used for signurl
	// in invite links; without it invite links carry no signurl.
	PublicBaseURL string
	// InviteSubject and InviteSubjectSpace are Sydent's email.invite.subject
	// and email.invite.subject_space: %(name)s formats for
	// subject_header_value. Defaults as in Sydent.
	InviteSubject, InviteSubjectSpace string

	TLSConfig *tls.Config // optional: RootCAs for tests or a private CA
}

// Mailer renders and sends mail. It is safe for concurrent use.
type Mailer struct {
	cfg          Config
	log          *slog.Logger
	host, addr   string
	security     string
	helo         string
	timeout      time.Duration
	auth         *plainAuth
	envelopeFrom string // bare address for MAIL FROM
	fromRaw      string // Config.From as written: Sydent's %(from)s
	fromHeader   string // RFC 5322 encoded From for the native form
	msgIDDomain  string
	webClient    string
	publicBase   string
	inviteSubj   *pyFormat
	spaceSubj    *pyFormat
	templates    map[Kind]messageTemplate
}

//go:embed templates
var builtin embed.FS

// New checks cfg and loads every template, so that a broken template or
// an unknown placeholder fails at start-up rather than at the first send.
func New(cfg Config, log *slog.Logger) (*Mailer, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Mailer{cfg: cfg, log: log, host: cfg.Host, timeout: cfg.Timeout}
	if m.host == "" {
		m.host = "localhost"
	}
	if strings.ContainsAny(m.host, " /") || strings.ContainsFunc(m.host, unsafeRune) {
		return nil, fmt.Errorf("email: invalid SMTP host %q", m.host)
	}
	m.security = strings.ToLower(cfg.Security)
	if m.security == "" {
		m.security = SecurityStartTLS
		if isLoopback(m.host) {
			m.security = SecurityNone
		}
	}
	port := cfg.Port
	switch m.security {
	case SecurityNone:
		port = cmp.Or(port, 25)
	case SecurityStartTLS:
		port = cmp.Or(port, 587)
	case SecurityTLS:
		port = cmp.Or(port, 465)
	default:
		return nil, fmt.Errorf("email: security %q: want none, starttls or tls", cfg.Security)
	}
	if port < 1 || port > 65535 {
		return nil, fmt.Errorf("email: invalid SMTP port %d", port)
	}
	m.addr = net.JoinHostPort(m.host, strconv.Itoa(port))
	if m.timeout <= 0 {
		m.timeout = 30 * time.Second
	}

	m.helo = cfg.HeloName
	if m.helo == "" {
		if h, err := os.Hostname(); err == nil && h != "" {
			m.helo = h
		} else {
			m.helo = "localhost"
		}
	}
	if strings.ContainsAny(m.helo, " <>@") || strings.ContainsFunc(m.helo, unsafeRune) {
		return nil, fmt.Errorf("email: invalid HELO name %q", m.helo)
	}

	m.fromRaw = cfg.From
	if m.fromRaw == "" {
		m.fromRaw = "noreply@" + m.helo
	}
	if strings.ContainsFunc(m.fromRaw, unsafeRune) {
		return nil, fmt.Errorf("email: From %q holds control characters", m.fromRaw)
	}
	from, err := mail.ParseAddress(m.fromRaw)
	if err != nil {
		return nil, fmt.Errorf("email: From %q: %w", m.fromRaw, err)
	}
	m.envelopeFrom = from.Address
	m.fromHeader = from.String()
	m.msgIDDomain = m.envelopeFrom[strings.LastIndexByte(m.envelopeFrom, '@')+1:]

	if cfg.Username != "" {
		if m.security == SecurityNone && !isLoopback(m.host) {
			return nil, fmt.Errorf("email: refusing SMTP AUTH without TLS to %s: use security starttls or tls", m.host)
		}
		m.auth = &plainAuth{username: cfg.Username, password: cfg.Password, host: m.host, loopback: isLoopback(m.host)}
	} else if cfg.Password != "" {
		return nil, errors.New("email: SMTP password given without a username")
	}

	m.webClient = cmp.Or(cfg.WebClientLocation, "https://app.element.io")
	if err := checkURL(m.webClient); err != nil {
		return nil, fmt.Errorf("email: web client location: %w", err)
	}
	m.webClient = strings.TrimSuffix(m.webClient, "/")
	if cfg.PublicBaseURL != "" {
		if err := checkURL(cfg.PublicBaseURL); err != nil {
			return nil, fmt.Errorf("email: public base URL: %w", err)
		}
		m.publicBase = strings.TrimSuffix(cfg.PublicBaseURL, "/")
	}
	if m.inviteSubj, err = subjectFormat(cmp.Or(cfg.InviteSubject, "%(sender_display_name)s has invited you to chat")); err != nil {
		return nil, fmt.Errorf("email: invite subject: %w", err)
	}
	if m.spaceSubj, err = subjectFormat(cmp.Or(cfg.InviteSubjectSpace, "%(sender_display_name)s has invited you to a space")); err != nil {
		return nil, fmt.Errorf("email: invite subject for spaces: %w", err)
	}

	m.templates = make(map[Kind]messageTemplate)
	for kind := range cfg.Templates {
		if _, ok := specs[kind]; !ok {
			return nil, fmt.Errorf("email: template for unknown kind %q", kind)
		}
	}
	for _, kind := range []Kind{KindValidation, KindInvite, KindAccountInvite, KindAccountReset} {
		t, err := loadTemplate(kind, cfg.Templates[kind])
		if err != nil {
			return nil, err
		}
		m.templates[kind] = t
		if err := m.selfTest(kind); err != nil {
			return nil, fmt.Errorf("email: %s template %s: sample render: %w", kind, describe(cfg.Templates[kind]), err)
		}
	}
	return m, nil
}

func loadTemplate(kind Kind, path string) (messageTemplate, error) {
	spec := specs[kind]
	if path == "" {
		sub, err := fs.Sub(builtin, "templates/"+string(kind))
		if err != nil {
			return nil, err
		}
		t, err := loadNative(sub, spec.baseVars())
		if err != nil {
			return nil, fmt.Errorf("email: built-in %s template: %w", kind, err)
		}
		return t, nil
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("email: %s template: %w", kind, err)
	}
	var t messageTemplate
	switch {
	case fi.IsDir():
		t, err = loadNative(os.DirFS(path), spec.baseVars())
	case strings.HasSuffix(path, ".j2"):
		err = errors.New("Jinja2 templates are not supported: use a .eml file with %(name)s placeholders or a template directory")
	case filepath.Ext(path) == ".eml":
		var data []byte
		if data, err = os.ReadFile(path); err == nil {
			t, err = loadEML(data, spec.sydentVars())
		}
	default:
		err = errors.New("want a .eml file or a directory with subject.txt, body.txt and body.html")
	}
	if err != nil {
		return nil, fmt.Errorf("email: %s template %s: %w", kind, path, err)
	}
	return t, nil
}

func describe(path string) string {
	if path == "" {
		return "(built-in)"
	}
	return path
}

// subjectFormat parses an invite subject; it may use the invite's inputs
// and the names derived before it, as in Sydent.
func subjectFormat(s string) (*pyFormat, error) {
	f, err := parsePyFormat(s)
	if err != nil {
		return nil, err
	}
	known := make(map[string]bool)
	spec := specs[KindInvite]
	for _, k := range slices.Concat(spec.inputs, []string{"bracketed_room_name", "bracketed_verified_sender"}) {
		known[k] = true
	}
	return f, f.check(s, known)
}

// selfTest renders sample mails, so a template that cannot render (or
// would fail the header checks) stops the service at start.
func (m *Mailer) selfTest(kind Kind) error {
	vars := map[string]string{"token": "sampletoken"}
	switch kind {
	case KindValidation:
		vars["link"] = "https://id.example.org/_matrix/identity/v2/validate/email/submitToken?token=sampletoken"
		vars["client_secret"], vars["sid"] = "secret", "1"
		vars["ipaddress"] = "192.0.2.1"
	case KindInvite:
		vars["room_id"], vars["sender"] = "!room:example.org", "@alice:example.org"
		vars["room_name"], vars["sender_display_name"] = "Sample room", "Alice"
		vars["verified_sender"] = "@alice:example.org"
		vars["ephemeral_private_key"] = "samplekey"
	case KindAccountInvite, KindAccountReset:
		delete(vars, "token")
		vars["link"] = "https://id.example.org/_ozo/v1/accounts/activate?token=sampletoken"
		vars["display_name"], vars["expires"] = "Alice", "2026-01-02 15:04 UTC"
	}
	for _, variant := range []string{"", "m.space", "en", "nl"} {
		switch kind {
		case KindInvite:
			if variant != "" && variant != "m.space" {
				continue
			}
			vars["room_type"] = variant
		case KindAccountInvite, KindAccountReset:
			if variant == "" || variant == "m.space" {
				continue
			}
			vars["lang"] = variant
		default:
			if variant != "" {
				continue
			}
		}
		if _, err := m.Render(kind, "recipient@example.org", vars); err != nil {
			return err
		}
	}
	return nil
}

// Render builds the complete message for kind, as Send would send it: for
// previews and tests. Variables not listed for kind are an error, so a
// misspelt name fails loudly instead of rendering empty.
func (m *Mailer) Render(kind Kind, to string, vars map[string]string) ([]byte, error) {
	t, ok := m.templates[kind]
	if !ok {
		return nil, fmt.Errorf("email: unknown kind %q", kind)
	}
	if err := checkRecipient(to); err != nil {
		return nil, fmt.Errorf("email: recipient: %w", err)
	}
	subs, err := m.substitutions(kind, to, vars)
	if err != nil {
		return nil, fmt.Errorf("email: %s mail: %w", kind, err)
	}
	msg, err := t.render(renderInput{subs: subs, to: to, fromHeader: m.fromHeader})
	if err != nil {
		return nil, fmt.Errorf("email: %s mail: render: %w", kind, err)
	}
	if err := checkMessage(msg, t.headerNames(), to); err != nil {
		return nil, fmt.Errorf("email: %s mail: rendered message rejected: %w", kind, err)
	}
	return msg, nil
}

// Send renders the mail of kind for to and delivers it over SMTP to the one
// recipient to. Errors name the SMTP step that failed; when ctx or
// Config.Timeout ran out they wrap context.DeadlineExceeded or Canceled.
func (m *Mailer) Send(ctx context.Context, kind Kind, to string, vars map[string]string) error {
	msg, err := m.Render(kind, to, vars)
	if err != nil {
		return err
	}
	start := time.Now()
	if err := m.deliver(ctx, to, msg); err != nil {
		return fmt.Errorf("email: send %s mail via %s: %w", kind, m.addr, err)
	}
	// The address is personal data: log its domain only.
	m.log.InfoContext(ctx, "email sent", "kind", string(kind),
		"domain", to[strings.LastIndexByte(to, '@')+1:], "smtp", m.addr,
		"duration", time.Since(start))
	return nil
}

// checkRecipient accepts one plain address, as Sydent's
// check_valid_email_address(allow_description=False): no display name, no
// list, nothing that parsing would change.
func checkRecipient(to string) error {
	if to == "" {
		return errors.New("empty address")
	}
	if len(to) > 254 {
		return errors.New("address longer than 254 octets")
	}
	if strings.ContainsFunc(to, unsafeRune) {
		return fmt.Errorf("address %q holds control characters", to)
	}
	a, err := mail.ParseAddress(to)
	if err != nil {
		return fmt.Errorf("%q is not one email address: %w", to, err)
	}
	if a.Name != "" || a.Address != to {
		return fmt.Errorf("%q is not a plain address (parsed as %q)", to, a.Address)
	}
	return nil
}

// substitutions returns every variable of kind: the caller's values,
// cleaned, Sydent's defaults and the derived ones.
func (m *Mailer) substitutions(kind Kind, to string, vars map[string]string) (map[string]string, error) {
	spec := specs[kind]
	subs := make(map[string]string)
	for _, k := range spec.baseVars() {
		subs[k] = ""
	}
	for k, v := range vars {
		if !slices.Contains(spec.inputs, k) {
			return nil, fmt.Errorf("unknown variable %q (allowed: %s)", k, strings.Join(spec.inputs, ", "))
		}
		subs[k] = cleanValue(v)
	}
	for _, k := range spec.required {
		if subs[k] == "" {
			return nil, fmt.Errorf("variable %q is required", k)
		}
	}
	for _, k := range []string{"token", "client_secret", "sid", "ephemeral_private_key"} {
		if !opaqueOK(subs[k]) {
			return nil, fmt.Errorf("variable %q holds characters not allowed in a token", k)
		}
	}
	now := time.Now()
	subs["to"] = to
	subs["from"] = m.fromRaw
	subs["date"] = now.UTC().Format(time.RFC1123Z)
	subs["messageid"] = fmt.Sprintf("<%d%s@%s>", now.UnixMilli(), randomAlnum(16), m.msgIDDomain)
	subs["multipart_boundary"] = randomAlnum(32)

	switch kind {
	case KindValidation:
		if subs["ipaddress"] == "" {
			subs["ipaddress"] = "an unknown location"
		}
		if err := checkURL(subs["link"]); err != nil {
			return nil, fmt.Errorf("link: %w", err)
		}
	case KindInvite:
		m.deriveInvite(subs)
	case KindAccountInvite, KindAccountReset:
		if err := checkURL(subs["link"]); err != nil {
			return nil, fmt.Errorf("link: %w", err)
		}
		if subs["lang"] != "en" {
			subs["lang"] = "nl"
		}
	}
	return subs, nil
}

// deriveInvite fills the invite's computed variables the way Sydent's
// store-invite servlet does.
func (m *Mailer) deriveInvite(subs map[string]string) {
	if subs["sender_display_name"] == "" {
		subs["sender_display_name"] = subs["sender"]
	}
	subs["sender_display_name"] = truncate(subs["sender_display_name"], 20, 19)
	subs["room_name"] = truncate(subs["room_name"], 30, 25)
	if rn := subs["room_name"]; rn != "" {
		subs["bracketed_room_name"] = "(" + rn + ") "
	}
	if vs := subs["verified_sender"]; vs != "" {
		subs["bracketed_verified_sender"] = "(" + vs + ") "
	}

	// The request's location wins if it is a plain http(s) URL: templates
	// paste it raw into links, so anything else falls back to the default.
	loc := m.webClient
	for _, k := range []string{"org.matrix.web_client_location", "web_client_location"} {
		v := subs[k]
		if v == "" {
			continue
		}
		if err := checkURL(v); err != nil {
			m.log.Warn("email: ignoring invalid web client location", "variable", k, "err", err)
			continue
		}
		loc = strings.TrimSuffix(v, "/")
		break
	}
	subs["web_client_location"] = loc

	if m.publicBase != "" && subs["ephemeral_private_key"] != "" {
		subs["signurl"] = m.publicBase + "/_matrix/identity/api/v1/sign-ed25519?token=" +
			pyQuote(subs["token"]) + "&private_key=" + pyQuote(subs["ephemeral_private_key"])
	}
	subs["invite_link"] = loc + "/#/room/" + pyQuote(subs["room_id"]) +
		"?email=" + pyQuote(subs["to"]) +
		"&signurl=" + pyQuote(subs["signurl"]) +
		"&room_name=" + pyQuote(subs["room_name"]) +
		"&room_avatar_url=" + pyQuote(subs["room_avatar_url"]) +
		"&inviter_name=" + pyQuote(subs["sender_display_name"]) +
		"&guest_access_token=" + pyQuote(subs["guest_access_token"]) +
		"&guest_user_id=" + pyQuote(subs["guest_user_id"]) +
		"&room_type=" + pyQuote(subs["room_type"])

	format := m.inviteSubj
	if subs["room_type"] == "m.space" {
		format = m.spaceSubj
	}
	// Names were checked in New and every input has a value, so no error.
	subject, _ := format.expand(func(k string) (string, bool) { v, ok := subs[k]; return v, ok })
	subject = truncate(cleanValue(subject), maxSubjectRunes, maxSubjectRunes-1)
	subs["subject_header_value"] = encodeHeader(subject)
}
