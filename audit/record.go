// Package audit is the domain of NEN 7513 audit records: who did what to which 3PID or resource,
// on whose behalf, from where, with what outcome. Records are chained with a keyed MAC kept
// outside the database, checkpointed with the server's signing key, and exported as FHIR R4
// AuditEvents following IHE BALP. It depends on no other package of the project.
package audit

import (
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// Action is what happened; the set is closed so that an auditor can rely on it.
type Action string

const (
	ActionBind            Action = "bind"
	ActionUnbind          Action = "unbind"
	ActionInviteStored    Action = "invite.stored"
	ActionInviteDelivered Action = "invite.delivered"
	ActionLookup          Action = "lookup"
	ActionDirectorySync   Action = "directory.sync"
	ActionAdminCall       Action = "admin.call"
	ActionLogin           Action = "login"
	ActionLoginFailure    Action = "login.failure"
	// The life of an OZO account (ozoaccount): made, changed (email, name, status, Matrix
	// user), removed, and its credentials set or reset (password, second factor, links).
	ActionAccountCreate      Action = "account.create"
	ActionAccountUpdate      Action = "account.update"
	ActionAccountDelete      Action = "account.delete"
	ActionAccountCredentials Action = "account.credentials"
)

// Actions lists every action, in a stable order.
var Actions = []Action{ActionBind, ActionUnbind, ActionInviteStored, ActionInviteDelivered, ActionLookup,
	ActionDirectorySync, ActionAdminCall, ActionLogin, ActionLoginFailure,
	ActionAccountCreate, ActionAccountUpdate, ActionAccountDelete, ActionAccountCredentials}

// Valid reports whether a is one of Actions.
func (a Action) Valid() bool {
	for _, v := range Actions {
		if a == v {
			return true
		}
	}
	return false
}

// AgentKind says what kind of party acted.
type AgentKind string

const (
	AgentUser       AgentKind = "user"       // a Matrix user (the ID is the MXID)
	AgentAdmin      AgentKind = "admin"      // the holder of the admin token
	AgentHomeserver AgentKind = "homeserver" // a homeserver (the ID is its server name)
	AgentIdP        AgentKind = "idp"        // a subject proven by an IdP (the ID is idp:subject)
	AgentSystem     AgentKind = "system"     // the identity server itself (workers, CLI)
	AgentAnonymous  AgentKind = "anonymous"  // an unauthenticated or refused caller
	AgentAccount    AgentKind = "account"    // the holder of an OZO account (the ID is the account ID)
)

func (k AgentKind) valid() bool {
	switch k {
	case AgentUser, AgentAdmin, AgentHomeserver, AgentIdP, AgentSystem, AgentAnonymous, AgentAccount:
		return true
	}
	return false
}

// Agent is who acted.
type Agent struct {
	Kind AgentKind `json:"kind"`
	ID   string    `json:"id,omitempty"`
}

// Outcome is how it ended.
type Outcome string

const (
	OutcomeSuccess Outcome = "success"
	OutcomeRefused Outcome = "refused" // the caller was not allowed or the input was wrong
	OutcomeError   Outcome = "error"   // the server failed
)

func (o Outcome) valid() bool { return o == OutcomeSuccess || o == OutcomeRefused || o == OutcomeError }

// Record is one audit record. Seq, PrevMAC and MAC are set when it is appended to the chain.
type Record struct {
	Seq     int64     `json:"seq"`
	At      time.Time `json:"at"`
	Action  Action    `json:"action"`
	Outcome Outcome   `json:"outcome"`
	Actor   Agent     `json:"actor"`
	// OnBehalfOf is the Matrix user the actor acted for (a homeserver unbinding its user).
	OnBehalfOf string `json:"on_behalf_of,omitempty"`
	// Medium and Address name the 3PID concerned.
	Medium  string `json:"medium,omitempty"`
	Address string `json:"address,omitempty"`
	// Resource names anything else concerned: a Matrix ID, a room, an API path, a directory,
	// an OZO account (ozo_account/<id>).
	Resource string `json:"resource,omitempty"`
	// Subject is the person the record concerns as the OZO platform's FHIR reference
	// (RelatedPerson/<id>, Patient/<id>): never a BSN, never free text.
	Subject   string `json:"subject,omitempty"`
	Source    string `json:"source,omitempty"` // network address of the caller
	RequestID string `json:"request_id,omitempty"`
	Detail    string `json:"detail,omitempty"`
	// Count and Found aggregate: addresses looked up and found, or repeated refused attempts.
	Count   int64  `json:"count,omitempty"`
	Found   int64  `json:"found,omitempty"`
	PrevMAC string `json:"prev_mac"`
	MAC     string `json:"mac"`
}

// Field limits in bytes, after escaping. Long values are cut, never refused: a record is never
// dropped for what a caller sent.
const (
	maxShort  = 256  // IDs, media, addresses, request IDs
	maxMedium = 1024 // resources (paths)
	maxDetail = 2048
)

// Clean escapes and bounds every free-text field, and fills At. The store calls it once, when
// the record is appended.
func (r *Record) Clean(now time.Time) {
	if r.At.IsZero() {
		r.At = now
	}
	r.At = r.At.UTC().Truncate(time.Millisecond)
	r.Actor.ID = Escape(r.Actor.ID, maxShort)
	r.OnBehalfOf = Escape(r.OnBehalfOf, maxShort)
	r.Medium = Escape(r.Medium, 32)
	r.Address = Escape(r.Address, maxShort)
	r.Resource = Escape(r.Resource, maxMedium)
	r.Subject = Escape(r.Subject, maxShort)
	r.Source = Escape(r.Source, 64)
	r.RequestID = Escape(r.RequestID, 128)
	r.Detail = Escape(r.Detail, maxDetail)
}

// Validate reports a record that names no known action, outcome or agent kind.
func (r *Record) Validate() error {
	if !r.Action.Valid() {
		return fmt.Errorf("audit: unknown action %q", r.Action)
	}
	if !r.Outcome.valid() {
		return fmt.Errorf("audit: unknown outcome %q", r.Outcome)
	}
	if !r.Actor.Kind.valid() {
		return fmt.Errorf("audit: unknown agent kind %q", r.Actor.Kind)
	}
	if r.Subject != "" && !validReference(r.Subject) {
		// Not echoed: it may hold whatever a caller put there.
		return fmt.Errorf("audit: the subject is not a FHIR reference Type/id")
	}
	return nil
}

// validReference reports whether s is a relative FHIR reference: a resource type and an id
// ([A-Za-z0-9\-\.]{1,64}). It keeps the subject from carrying anything else.
func validReference(s string) bool {
	typ, id, ok := strings.Cut(s, "/")
	if !ok || typ == "" || len(typ) > 64 || id == "" || len(id) > 64 || typ[0] < 'A' || typ[0] > 'Z' {
		return false
	}
	for _, c := range typ {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// Escape makes s printable valid UTF-8 that any database accepts: a backslash becomes \\,
// control characters (NUL included) \u00XX, bytes that are not UTF-8 \xXX, so a record
// never fails to store and an escape can be told from the characters it stands for. The
// result is at most max bytes; a cut value ends in "…".
func Escape(s string, max int) string {
	clean := true
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f || c >= 0x80 || c == '\\' {
			clean = false
			break
		}
	}
	if clean && len(s) <= max {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		var piece string
		switch {
		case r == '\\':
			piece = `\\`
		case r == utf8.RuneError && size <= 1:
			piece = fmt.Sprintf(`\x%02x`, s[i])
		case r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == 0x2028 || r == 0x2029:
			piece = fmt.Sprintf(`\u%04x`, r)
		default:
			piece = s[i : i+size]
		}
		if b.Len()+len(piece) > max-len("…") && (b.Len()+len(piece) > max || i+size < len(s)) {
			b.WriteString("…")
			return b.String()
		}
		b.WriteString(piece)
		i += size
	}
	return b.String()
}
