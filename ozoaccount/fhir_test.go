package ozoaccount

import (
	"errors"
	"strings"
	"testing"
)

func TestParseFHIR(t *testing.T) {
	for _, tc := range []struct {
		name     string
		kind     Kind
		body     string
		want     ProvisionRequest
		inactive bool
		err      string // substring of the error; "" for success
	}{
		{name: "ranked emails, ended and old ones skipped, usual name", kind: KindRelatedPerson,
			body: `{"resourceType": "RelatedPerson", "id": "rp.1", "patient": {"reference": "Patient/x"},
				"name": [{"use": "official", "family": "Jansen-de Vries", "given": ["Elisabeth"]}, {"use": "usual", "given": ["Els"], "family": "Jansen"}],
				"telecom": [{"system": "email", "value": "old@example.nl", "use": "old", "rank": 1},
					{"system": "email", "value": "ended@example.nl", "rank": 1, "period": {"end": "2020-01-01"}},
					{"system": "email", "value": "second@example.nl", "rank": 3},
					{"system": "email", "value": "first@example.nl", "rank": 2}]}`,
			want: ProvisionRequest{Kind: KindRelatedPerson, FHIRRef: "RelatedPerson/rp.1", Email: "first@example.nl", DisplayName: "Els Jansen", Language: "nl"}},
		{name: "inactive patient in English", kind: KindPatient,
			body: `{"resourceType": "Patient", "id": "p1", "active": false, "name": [{"text": " Piet  Pieters "}],
				"telecom": [{"system": "email", "value": "piet@example.nl"}],
				"communication": [{"language": {"coding": [{"code": "en-GB"}]}}]}`,
			want:     ProvisionRequest{Kind: KindPatient, FHIRRef: "Patient/p1", Email: "piet@example.nl", DisplayName: "Piet Pieters", Language: "en"},
			inactive: true},
		{name: "wrong resource type", kind: KindPatient, body: `{"resourceType": "RelatedPerson", "id": "x", "telecom": [{"system": "email", "value": "a@b.nl"}]}`, err: "resourceType must be Patient"},
		{name: "no id", kind: KindPatient, body: `{"resourceType": "Patient", "telecom": [{"system": "email", "value": "a@b.nl"}]}`, err: "valid id"},
		{name: "id with a slash", kind: KindPatient, body: `{"resourceType": "Patient", "id": "a/b", "telecom": [{"system": "email", "value": "a@b.nl"}]}`, err: "valid id"},
		{name: "no email", kind: KindPatient, body: `{"resourceType": "Patient", "id": "a", "telecom": [{"system": "phone", "value": "0612345678"}]}`, err: "no telecom with system email"},
		{name: "unknown nested element", kind: KindPatient, body: `{"resourceType": "Patient", "id": "a", "name": [{"text": "A", "bsn": "999911120"}], "telecom": [{"system": "email", "value": "a@b.nl"}]}`, err: "/name/0/bsn"},
		{name: "two resources", kind: KindPatient, body: `{"resourceType": "Patient", "id": "a", "telecom": [{"system": "email", "value": "a@b.nl"}]} {}`, err: "data after"},
		{name: "not JSON", kind: KindPatient, body: `999911120`, err: "not a FHIR R4 Patient"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseFHIR(tc.kind, []byte(tc.body))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || !errors.Is(err, ErrInvalid) {
					t.Fatalf("error %v, want one with %q", err, tc.err)
				}
				if strings.Contains(err.Error(), "999911120") {
					t.Fatalf("the error repeats a value from the resource: %v", err)
				}
				return
			}
			if err != nil || got.Request != tc.want || got.Active == tc.inactive {
				t.Fatalf("got %+v (active %v), %v; want %+v", got.Request, got.Active, err, tc.want)
			}
		})
	}
}
