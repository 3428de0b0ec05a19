package audit

import (
	"encoding/base64"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// FHIR R4 AuditEvent, following IHE Basic Audit Log Patterns (BALP). Only the elements used
// are declared; the tests parse the output strictly with a full R4 model.

// Code systems and profiles (https://profiles.ihe.net/ITI/BALP/).
const (
	sysEventType   = "http://terminology.hl7.org/CodeSystem/audit-event-type"
	sysRESTful     = "http://hl7.org/fhir/restful-interaction"
	sysDICOM       = "http://dicom.nema.org/resources/ontology/DCM"
	sysParticipant = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
	sysEntityType  = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
	sysObjectRole  = "http://terminology.hl7.org/CodeSystem/object-role"
	sysBALPEntity  = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"
	sysSourceType  = "http://terminology.hl7.org/CodeSystem/security-source-type"
	sysMatrixUser  = "urn:ietf:rfc:3986" // Matrix IDs are given as matrix: URIs
	balp           = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit."

	// FHIR identifier systems of the 3PID media (design.md §3).
	SystemUZI = "http://fhir.nl/fhir/NamingSystem/uzi-nr-pers"
	SystemURA = "http://fhir.nl/fhir/NamingSystem/ura"
)

type Coding struct {
	System  string `json:"system,omitempty"`
	Code    string `json:"code,omitempty"`
	Display string `json:"display,omitempty"`
}

type CodeableConcept struct {
	Coding []Coding `json:"coding,omitempty"`
	Text   string   `json:"text,omitempty"`
}

type Identifier struct {
	System string `json:"system,omitempty"`
	Value  string `json:"value,omitempty"`
}

type Reference struct {
	Reference  string      `json:"reference,omitempty"`
	Type       string      `json:"type,omitempty"`
	Identifier *Identifier `json:"identifier,omitempty"`
	Display    string      `json:"display,omitempty"`
}

type Meta struct {
	Profile []string `json:"profile,omitempty"`
}

type AuditEvent struct {
	ResourceType string        `json:"resourceType"`
	ID           string        `json:"id,omitempty"`
	Meta         *Meta         `json:"meta,omitempty"`
	Type         Coding        `json:"type"`
	Subtype      []Coding      `json:"subtype,omitempty"`
	Action       string        `json:"action,omitempty"`
	Recorded     string        `json:"recorded"`
	Outcome      string        `json:"outcome,omitempty"`
	OutcomeDesc  string        `json:"outcomeDesc,omitempty"`
	Agent        []EventAgent  `json:"agent"`
	Source       EventSource   `json:"source"`
	Entity       []EventEntity `json:"entity,omitempty"`
}

type EventAgent struct {
	Type      *CodeableConcept `json:"type,omitempty"`
	Who       *Reference       `json:"who,omitempty"`
	AltID     string           `json:"altId,omitempty"`
	Name      string           `json:"name,omitempty"`
	Requestor bool             `json:"requestor"`
	Network   *AgentNetwork    `json:"network,omitempty"`
}

type AgentNetwork struct {
	Address string `json:"address,omitempty"`
	Type    string `json:"type,omitempty"` // 1 machine name, 2 IP address
}

type EventSource struct {
	Site     string    `json:"site,omitempty"`
	Observer Reference `json:"observer"`
	Type     []Coding  `json:"type,omitempty"`
}

type EventEntity struct {
	What        *Reference     `json:"what,omitempty"`
	Type        *Coding        `json:"type,omitempty"`
	Role        *Coding        `json:"role,omitempty"`
	Name        string         `json:"name,omitempty"`
	Description string         `json:"description,omitempty"`
	Query       string         `json:"query,omitempty"`
	Detail      []EntityDetail `json:"detail,omitempty"`
}

type EntityDetail struct {
	Type        string `json:"type"`
	ValueString string `json:"valueString"`
}

// Observer names the server that recorded the events (AuditEvent.source and the server agent).
type Observer struct {
	ServerName string // the identity server's name
	BaseURL    string // its public base URL
}

// eventKind is the BALP pattern of an action.
type eventKind struct {
	typ     Coding
	subtype Coding
	action  string // C R U D E
	profile string
	// userType is the agent type of the requesting user.
	userType Coding
}

var (
	rest      = Coding{System: sysEventType, Code: "rest", Display: "Restful Operation"}
	author    = Coding{System: sysParticipant, Code: "AUT", Display: "author (originator)"}
	recipient = Coding{System: sysParticipant, Code: "IRCP", Display: "information recipient"}
	// An account's password, second factor or one-time links set or reset (DICOM security alert).
	credentials = eventKind{Coding{System: sysDICOM, Code: "110113", Display: "Security Alert"},
		Coding{System: sysDICOM, Code: "110137", Display: "User security Attributes Changed"}, "E", "", author}
	kinds = map[Action]eventKind{
		ActionBind:            {rest, Coding{System: sysRESTful, Code: "create", Display: "create"}, "C", "Create", author},
		ActionUnbind:          {rest, Coding{System: sysRESTful, Code: "delete", Display: "delete"}, "D", "Delete", author},
		ActionInviteStored:    {rest, Coding{System: sysRESTful, Code: "create", Display: "create"}, "C", "Create", author},
		ActionInviteDelivered: {rest, Coding{System: sysRESTful, Code: "update", Display: "update"}, "U", "Update", author},
		ActionLookup:          {rest, Coding{System: sysRESTful, Code: "search-type", Display: "search type"}, "E", "Query", recipient},
		ActionDirectorySync:   {rest, Coding{System: sysRESTful, Code: "history-type", Display: "history type"}, "E", "", recipient},
		ActionAdminCall:       {rest, Coding{System: sysRESTful, Code: "operation", Display: "operation"}, "E", "", author},
		ActionLogin:           {Coding{System: sysDICOM, Code: "110114", Display: "User Authentication"}, Coding{System: sysDICOM, Code: "110122", Display: "Login"}, "E", "", recipient},
		ActionLoginFailure:    {Coding{System: sysDICOM, Code: "110114", Display: "User Authentication"}, Coding{System: sysDICOM, Code: "110122", Display: "Login"}, "E", "", recipient},
		// An OZO account is a resource the platform creates, updates and deletes through the admin
		// API (BALP RESTful patterns); the person it is for is the subject entity.
		ActionAccountCreate:      {rest, Coding{System: sysRESTful, Code: "create", Display: "create"}, "C", "Create", author},
		ActionAccountUpdate:      {rest, Coding{System: sysRESTful, Code: "update", Display: "update"}, "U", "Update", author},
		ActionAccountDelete:      {rest, Coding{System: sysRESTful, Code: "delete", Display: "delete"}, "D", "Delete", author},
		ActionAccountCredentials: credentials,
	}
)

// AuditEvent renders r as a FHIR R4 AuditEvent of the BALP pattern for its action.
func (r Record) AuditEvent(o Observer) AuditEvent {
	k := kinds[r.Action]
	ev := AuditEvent{ResourceType: "AuditEvent", ID: fmt.Sprintf("%s-%d", idSafe(o.ServerName), r.Seq),
		Type: k.typ, Subtype: []Coding{k.subtype}, Action: k.action, Recorded: r.At.UTC().Format(time.RFC3339Nano)}
	// The BALP profiles describe successful calls from a client whose address is known.
	if k.profile != "" && r.Outcome == OutcomeSuccess && r.Source != "" {
		ev.Meta = &Meta{Profile: []string{balp + k.profile}}
	}
	switch r.Outcome {
	case OutcomeSuccess:
		ev.Outcome = "0"
	case OutcomeRefused:
		ev.Outcome = "4"
	default:
		ev.Outcome = "8"
	}
	if r.Outcome != OutcomeSuccess && r.Detail != "" {
		ev.OutcomeDesc = r.Detail
	}
	server := Reference{Identifier: &Identifier{System: "urn:ietf:rfc:3986", Value: o.BaseURL}, Display: o.ServerName}
	// The user (requestor), the client that sent the request (Source Role ID) and this server
	// (Destination Role ID), as the BALP RESTful patterns have them.
	ev.Agent = append(ev.Agent, EventAgent{Type: &CodeableConcept{Coding: []Coding{k.userType}},
		Who: agentRef(r.Actor), Name: agentName(r.Actor), Requestor: true})
	client := EventAgent{Type: &CodeableConcept{Coding: []Coding{{System: sysDICOM, Code: "110153", Display: "Source Role ID"}}},
		Who: agentRef(r.Actor)}
	if r.Source != "" {
		client.Network = &AgentNetwork{Address: r.Source, Type: networkType(r.Source)}
	}
	ev.Agent = append(ev.Agent, client)
	ev.Agent = append(ev.Agent, EventAgent{Type: &CodeableConcept{Coding: []Coding{{System: sysDICOM, Code: "110152", Display: "Destination Role ID"}}},
		Who: &server, Network: &AgentNetwork{Address: o.ServerName, Type: "1"}})
	ev.Source = EventSource{Site: o.ServerName, Observer: server,
		Type: []Coding{{System: sysSourceType, Code: "4", Display: "Application Server"}}}

	if r.RequestID != "" {
		ev.Entity = append(ev.Entity, EventEntity{Type: &Coding{System: sysBALPEntity, Code: "XrequestId"},
			What: &Reference{Identifier: &Identifier{Value: r.RequestID}}})
	}
	if r.Medium != "" {
		ev.Entity = append(ev.Entity, EventEntity{Type: &Coding{System: sysEntityType, Code: "1", Display: "Person"},
			Role: &Coding{System: sysObjectRole, Code: "4", Display: "Domain Resource"},
			What: &Reference{Identifier: threePIDIdentifier(r.Medium, r.Address)}, Name: r.Medium})
	}
	if r.Action == ActionLookup {
		q := fmt.Sprintf("%s addresses=%d found=%d %s", r.Resource, r.Count, r.Found, r.Detail)
		ev.Entity = append(ev.Entity, EventEntity{Type: &Coding{System: sysEntityType, Code: "2", Display: "System Object"},
			Role:  &Coding{System: sysObjectRole, Code: "24", Display: "Query"},
			Query: base64.StdEncoding.EncodeToString([]byte(q)),
			Detail: []EntityDetail{{Type: "addresses", ValueString: strconv.FormatInt(r.Count, 10)},
				{Type: "found", ValueString: strconv.FormatInt(r.Found, 10)}}})
	} else if r.Resource != "" || r.OnBehalfOf != "" || r.Count > 0 {
		e := EventEntity{Type: &Coding{System: sysEntityType, Code: "2", Display: "System Object"},
			Role: &Coding{System: sysObjectRole, Code: "4", Display: "Domain Resource"}, Description: r.Resource}
		if r.Resource != "" {
			e.What = &Reference{Display: r.Resource}
		}
		if r.OnBehalfOf != "" {
			e.Detail = append(e.Detail, EntityDetail{Type: "on-behalf-of", ValueString: r.OnBehalfOf})
		}
		if r.Count > 0 {
			e.Detail = append(e.Detail, EntityDetail{Type: "count", ValueString: strconv.FormatInt(r.Count, 10)})
		}
		if r.Detail != "" && r.Outcome == OutcomeSuccess {
			e.Detail = append(e.Detail, EntityDetail{Type: "detail", ValueString: r.Detail})
		}
		ev.Entity = append(ev.Entity, e)
	}
	if r.Subject != "" {
		ev.Entity = append(ev.Entity, subjectEntity(r.Subject))
	}
	ev.Entity = append(ev.Entity, EventEntity{Type: &Coding{System: sysEntityType, Code: "4", Display: "Other"},
		Role:   &Coding{System: sysObjectRole, Code: "13", Display: "Security Resource"},
		What:   &Reference{Identifier: &Identifier{System: "urn:ozo-identity:audit-chain", Value: strconv.FormatInt(r.Seq, 10)}},
		Detail: []EntityDetail{{Type: "action", ValueString: string(r.Action)}, {Type: "mac", ValueString: r.MAC}}})
	return ev
}

// subjectEntity names the person a record concerns by the platform's FHIR reference: a Patient
// in the BALP patient role, anyone else (a RelatedPerson) as the user of the account.
func subjectEntity(ref string) EventEntity {
	typ, _, _ := strings.Cut(ref, "/")
	role := Coding{System: sysObjectRole, Code: "6", Display: "User"}
	if typ == "Patient" {
		role = Coding{System: sysObjectRole, Code: "1", Display: "Patient"}
	}
	return EventEntity{Type: &Coding{System: sysEntityType, Code: "1", Display: "Person"}, Role: &role,
		What: &Reference{Reference: ref, Type: typ}}
}

// threePIDIdentifier maps a 3PID to a FHIR identifier with the Dutch naming systems.
func threePIDIdentifier(medium, address string) *Identifier {
	switch medium {
	case "uzi":
		return &Identifier{System: SystemUZI, Value: address}
	case "ura":
		return &Identifier{System: SystemURA, Value: address}
	case "email":
		return &Identifier{System: "urn:ietf:rfc:3986", Value: "mailto:" + address}
	default:
		return &Identifier{System: "urn:ozo-identity:3pid:" + idSafe(medium), Value: address}
	}
}

func agentRef(a Agent) *Reference {
	switch a.Kind {
	case AgentUser:
		return &Reference{Identifier: &Identifier{System: sysMatrixUser, Value: "matrix:u/" + trimAt(a.ID)}, Display: a.ID}
	case AgentHomeserver:
		return &Reference{Identifier: &Identifier{System: "urn:ozo-identity:homeserver", Value: a.ID}, Display: a.ID}
	case AgentIdP:
		return &Reference{Identifier: &Identifier{System: "urn:ozo-identity:idp", Value: a.ID}, Display: a.ID}
	case AgentAccount:
		return &Reference{Identifier: &Identifier{System: "urn:ozo-identity:ozo-account", Value: a.ID}, Display: "ozo_account/" + a.ID}
	}
	v := string(a.Kind)
	if a.ID != "" {
		v += ":" + a.ID
	}
	return &Reference{Identifier: &Identifier{System: "urn:ozo-identity:agent", Value: v}, Display: v}
}

func agentName(a Agent) string {
	if a.ID != "" {
		return a.ID
	}
	return string(a.Kind)
}

func trimAt(s string) string {
	if len(s) > 0 && s[0] == '@' {
		return s[1:]
	}
	return s
}

func networkType(addr string) string {
	if _, err := netip.ParseAddr(addr); err == nil {
		return "2"
	}
	return "1"
}

// idSafe keeps the characters a FHIR id allows ([A-Za-z0-9.-]).
func idSafe(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-') {
			b[i] = '-'
		}
	}
	if len(b) > 40 {
		b = b[:40]
	}
	return string(b)
}

// Bundle wraps events for a push to an audit record repository (a FHIR batch of creates).
func Bundle(events []AuditEvent, kind string) map[string]any {
	entries := make([]map[string]any, 0, len(events))
	for _, e := range events {
		entries = append(entries, map[string]any{"resource": e,
			"request": map[string]any{"method": "POST", "url": "AuditEvent"}})
	}
	return map[string]any{"resourceType": "Bundle", "type": kind, "entry": entries}
}
