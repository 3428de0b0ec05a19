package audit_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/gofhir/models/r4"

	"github.com/ozo-platform/ozo-identity/audit"
)

var update = flag.Bool("update", false, "rewrite testdata/audit from the current output")

// strictAuditEvent has r4.AuditEvent's fields without its lenient UnmarshalJSON, so a decoder
// that disallows unknown fields refuses any element R4 does not define.
type strictAuditEvent r4.AuditEvent

// ParseStrict decodes ev as a FHIR R4 AuditEvent, refusing unknown elements, and checks that
// the R4 model gives the same JSON back (nothing was dropped or reshaped).
func parseStrict(t *testing.T, data []byte) r4.AuditEvent {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var s strictAuditEvent
	if err := dec.Decode(&s); err != nil {
		t.Fatalf("not a FHIR R4 AuditEvent: %v\n%s", err, data)
	}
	ev := r4.AuditEvent(s)
	back, err := json.Marshal(&ev)
	if err != nil {
		t.Fatal(err)
	}
	var want, got any
	json.Unmarshal(data, &want)
	json.Unmarshal(back, &got)
	if !reflect.DeepEqual(want, got) {
		t.Fatalf("the R4 model does not round-trip the event:\nours %s\nr4   %s", data, back)
	}
	if ev.ResourceType != "AuditEvent" || ev.Recorded == nil || ev.Outcome == nil || ev.Action == nil {
		t.Fatalf("missing required elements: %s", data)
	}
	return ev
}

// example is one record per action, as the server writes them.
func examples(t *testing.T) []audit.Record {
	chain, _ := audit.NewChain([]byte(strings.Repeat("example audit key ", 2)))
	at := time.Date(2026, 11, 29, 21, 0, 0, 0, time.UTC)
	recs := []audit.Record{
		{Action: audit.ActionBind, Outcome: audit.OutcomeSuccess, Actor: audit.Agent{Kind: audit.AgentUser, ID: "@dr.jansen:hs.example.nl"},
			Medium: "uzi", Address: "123456789", Resource: "@dr.jansen:hs.example.nl", Source: "192.0.2.10", RequestID: "4f2a9c", Detail: "source=sso"},
		{Action: audit.ActionUnbind, Outcome: audit.OutcomeSuccess, Actor: audit.Agent{Kind: audit.AgentHomeserver, ID: "hs.example.nl"},
			OnBehalfOf: "@dr.jansen:hs.example.nl", Medium: "email", Address: "jansen@zorg.example.nl", Resource: "@dr.jansen:hs.example.nl", Source: "192.0.2.20", RequestID: "77b1"},
		{Action: audit.ActionInviteStored, Outcome: audit.OutcomeSuccess, Actor: audit.Agent{Kind: audit.AgentUser, ID: "@nurse:hs.example.nl"},
			OnBehalfOf: "@nurse:hs.example.nl", Medium: "email", Address: "mantelzorger@example.org", Resource: "!care:hs.example.nl", Source: "192.0.2.11", RequestID: "a1"},
		{Action: audit.ActionInviteDelivered, Outcome: audit.OutcomeSuccess, Actor: audit.Agent{Kind: audit.AgentSystem},
			OnBehalfOf: "@nurse:hs.example.nl", Medium: "email", Address: "mantelzorger@example.org", Resource: "!care:hs.example.nl",
			Detail: "onbind accepted by hs.example.nl; bound to @mz:hs.example.nl"},
		{Action: audit.ActionLookup, Outcome: audit.OutcomeSuccess, Actor: audit.Agent{Kind: audit.AgentUser, ID: "@dr.jansen:hs.example.nl"},
			Resource: "POST /_matrix/identity/v2/lookup", Source: "192.0.2.10", Count: 1000, Found: 12, Detail: "media=sha256 interval=1m0s"},
		{Action: audit.ActionDirectorySync, Outcome: audit.OutcomeSuccess, Actor: audit.Agent{Kind: audit.AgentSystem},
			Resource: "https://lrza.example.nl/fhir", Count: 42, Detail: "fetched=50 applied=42 deleted=1 rejected=0"},
		{Action: audit.ActionAdminCall, Outcome: audit.OutcomeRefused, Actor: audit.Agent{Kind: audit.AgentAnonymous, ID: "wrong-token"},
			Resource: `GET /_ozo/admin/v1/bindings\u0000`, Source: "198.51.100.7", RequestID: "c0ffee", Count: 1, Detail: "status=403 M_FORBIDDEN"},
		{Action: audit.ActionLogin, Outcome: audit.OutcomeSuccess, Actor: audit.Agent{Kind: audit.AgentIdP, ID: "zorg-a:8f1c"},
			Medium: "idp", Address: "zorg-a:8f1c", Source: "192.0.2.30", RequestID: "d00d"},
		{Action: audit.ActionLoginFailure, Outcome: audit.OutcomeRefused, Actor: audit.Agent{Kind: audit.AgentAnonymous},
			Medium: "email", Address: "mantelzorger@example.org", Source: "203.0.113.5", RequestID: "bad1", Detail: "wrong TOTP code"},
		{Action: audit.ActionAccountCreate, Outcome: audit.OutcomeSuccess, Actor: audit.Agent{Kind: audit.AgentAdmin},
			Resource: "ozo_account/k3x9q2mfa7", Subject: "RelatedPerson/rp-17", Source: "192.0.2.40", RequestID: "e1", Detail: "kind=related_person"},
		{Action: audit.ActionAccountUpdate, Outcome: audit.OutcomeSuccess, Actor: audit.Agent{Kind: audit.AgentSystem, ID: "cli:beheer"},
			Resource: "ozo_account/p7t4wd0b2c", Subject: "Patient/p-77", Detail: "change=disable"},
		{Action: audit.ActionAccountDelete, Outcome: audit.OutcomeSuccess, Actor: audit.Agent{Kind: audit.AgentAdmin},
			Resource: "ozo_account/k3x9q2mfa7", Subject: "RelatedPerson/rp-17", Source: "192.0.2.40", RequestID: "e9", Detail: "kind=related_person"},
		{Action: audit.ActionAccountCredentials, Outcome: audit.OutcomeSuccess, Actor: audit.Agent{Kind: audit.AgentAccount, ID: "k3x9q2mfa7"},
			Resource: "ozo_account/k3x9q2mfa7", Subject: "RelatedPerson/rp-17", Source: "203.0.113.9", RequestID: "e5", Detail: "password reset with a mailed link"},
	}
	prev := ""
	for i := range recs {
		recs[i].Clean(at.Add(time.Duration(i) * time.Second))
		if err := recs[i].Validate(); err != nil {
			t.Fatal(err)
		}
		chain.Seal(&recs[i], int64(i+1), prev)
		prev = recs[i].MAC
	}
	return recs
}

var observer = audit.Observer{ServerName: "id.example.nl", BaseURL: "https://id.example.nl"}

// TestAuditEventExamples renders one record per action, checks it against R4 and BALP, and
// keeps it under testdata/audit (go test ./audit -update rewrites them).
func TestAuditEventExamples(t *testing.T) {
	recs := examples(t)
	if len(recs) != len(audit.Actions) {
		t.Fatalf("%d examples for %d actions", len(recs), len(audit.Actions))
	}
	for _, rec := range recs {
		t.Run(string(rec.Action), func(t *testing.T) {
			data, err := json.MarshalIndent(rec.AuditEvent(observer), "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			data = append(data, '\n')
			ev := parseStrict(t, data)
			checkBALP(t, rec, ev)
			file := filepath.Join("..", "testdata", "audit", string(rec.Action)+".json")
			if *update {
				if err := os.WriteFile(file, data, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(file)
			if err != nil {
				t.Fatalf("%v (run go test ./audit -update)", err)
			}
			if !bytes.Equal(want, data) {
				t.Fatalf("%s differs from the output:\n%s", file, data)
			}
		})
	}
}

// checkBALP checks the codes the BALP patterns require.
func checkBALP(t *testing.T, rec audit.Record, ev r4.AuditEvent) {
	t.Helper()
	wantSub := map[audit.Action]string{audit.ActionBind: "create", audit.ActionUnbind: "delete", audit.ActionInviteStored: "create",
		audit.ActionInviteDelivered: "update", audit.ActionLookup: "search-type", audit.ActionDirectorySync: "history-type",
		audit.ActionAdminCall: "operation", audit.ActionLogin: "110122", audit.ActionLoginFailure: "110122",
		audit.ActionAccountCreate: "create", audit.ActionAccountUpdate: "update", audit.ActionAccountDelete: "delete",
		audit.ActionAccountCredentials: "110137"}[rec.Action]
	wantAction := map[audit.Action]string{audit.ActionBind: "C", audit.ActionUnbind: "D", audit.ActionInviteStored: "C",
		audit.ActionInviteDelivered: "U", audit.ActionAccountCreate: "C", audit.ActionAccountUpdate: "U", audit.ActionAccountDelete: "D"}[rec.Action]
	if wantAction == "" {
		wantAction = "E"
	}
	switch rec.Action {
	case audit.ActionLogin, audit.ActionLoginFailure:
		if *ev.Type.System != "http://dicom.nema.org/resources/ontology/DCM" || *ev.Type.Code != "110114" {
			t.Errorf("type %v", ev.Type)
		}
	case audit.ActionAccountCredentials:
		if *ev.Type.System != "http://dicom.nema.org/resources/ontology/DCM" || *ev.Type.Code != "110113" {
			t.Errorf("type %v", ev.Type)
		}
	default:
		if *ev.Type.System != "http://terminology.hl7.org/CodeSystem/audit-event-type" || *ev.Type.Code != "rest" {
			t.Errorf("type %v", ev.Type)
		}
	}
	if len(ev.Subtype) != 1 || *ev.Subtype[0].Code != wantSub || string(*ev.Action) != wantAction {
		t.Errorf("subtype %v action %v", ev.Subtype, *ev.Action)
	}
	wantOutcome := map[audit.Outcome]string{audit.OutcomeSuccess: "0", audit.OutcomeRefused: "4", audit.OutcomeError: "8"}[rec.Outcome]
	if string(*ev.Outcome) != wantOutcome {
		t.Errorf("outcome %v", *ev.Outcome)
	}
	var requestor, client, server bool
	for _, a := range ev.Agent {
		code := *a.Type.Coding[0].Code
		switch {
		case a.Requestor != nil && *a.Requestor:
			requestor = a.Who != nil && (code == "IRCP" || code == "AUT")
		case code == "110153":
			client = a.Who != nil && (rec.Source == "" || a.Network != nil && *a.Network.Address == rec.Source)
		case code == "110152":
			server = a.Who != nil && a.Network != nil
		}
	}
	if !requestor || !client || !server {
		t.Errorf("agents: requestor %v, client %v, server %v", requestor, client, server)
	}
	if ev.Source.Observer.Identifier == nil || *ev.Source.Observer.Identifier.Value != observer.BaseURL {
		t.Errorf("source observer %+v", ev.Source)
	}
	if rec.Medium != "" {
		want := map[string]string{"uzi": audit.SystemUZI, "email": "urn:ietf:rfc:3986", "idp": "urn:ozo-identity:3pid:idp"}[rec.Medium]
		found := false
		for _, e := range ev.Entity {
			if e.What != nil && e.What.Identifier != nil && e.What.Identifier.System != nil && *e.What.Identifier.System == want {
				found = true
			}
		}
		if !found {
			t.Errorf("no entity with identifier system %s", want)
		}
	}
	if rec.Subject != "" {
		// BALP: the person as an entity of type Person; a patient in the patient role.
		wantRole := map[bool]string{true: "1", false: "6"}[strings.HasPrefix(rec.Subject, "Patient/")]
		found := false
		for _, e := range ev.Entity {
			found = found || e.What != nil && e.What.Reference != nil && *e.What.Reference == rec.Subject &&
				*e.Type.Code == "1" && e.Role != nil && *e.Role.Code == wantRole
		}
		if !found {
			t.Errorf("no person entity for subject %s", rec.Subject)
		}
	}
	if rec.Action == audit.ActionLookup {
		found := false
		for _, e := range ev.Entity {
			found = found || e.Role != nil && e.Role.Code != nil && *e.Role.Code == "24" && e.Query != nil
		}
		if !found {
			t.Error("lookup without a query entity")
		}
	}
	if rec.RequestID != "" {
		found := false
		for _, e := range ev.Entity {
			found = found || e.Type != nil && e.Type.Code != nil && *e.Type.Code == "XrequestId" &&
				e.What != nil && e.What.Identifier != nil && *e.What.Identifier.Value == rec.RequestID
		}
		if !found {
			t.Error("no X-Request-Id entity")
		}
	}
}
