package ozoaccount

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/gofhir/models/r4"
)

// ProvisionFromFHIR is what a RelatedPerson or Patient resource of the OZO platform says about
// an account: the request, and whether the resource is active (false: disable the account).
type ProvisionFromFHIR struct {
	Request ProvisionRequest
	Active  bool
}

// ParseFHIR reads a FHIR R4 RelatedPerson (kind related_person) or Patient resource strictly
// (unknown elements are errors) and takes its id, first email telecom and name. Identifiers,
// a BSN among them, are read past and never copied: the account keeps the platform's resource
// id only. Errors never quote the resource.
func ParseFHIR(kind Kind, body []byte) (ProvisionFromFHIR, error) {
	var (
		typ      string
		id       *string
		active   *bool
		names    []r4.HumanName
		telecom  []r4.ContactPoint
		comms    []r4.CodeableConcept
		resource any
	)
	var rp r4.RelatedPerson
	var pt r4.Patient
	switch kind {
	case KindRelatedPerson:
		resource = &rp
	case KindPatient:
		resource = &pt
	default:
		return ProvisionFromFHIR{}, fmt.Errorf("%w: unknown kind", ErrInvalid)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(resource); err != nil {
		return ProvisionFromFHIR{}, fmt.Errorf("%w: not a FHIR R4 %s resource (%s)", ErrInvalid, fhirType(kind), describeJSONError(err))
	}
	if dec.More() {
		return ProvisionFromFHIR{}, fmt.Errorf("%w: data after the resource", ErrInvalid)
	}
	// The models' own UnmarshalJSON ignores unknown elements: every element of the input must
	// survive a round trip through the model, or it was not FHIR R4.
	if where := unknownElement(body, resource); where != "" {
		return ProvisionFromFHIR{}, fmt.Errorf("%w: unknown or empty element %s in the %s resource", ErrInvalid, where, fhirType(kind))
	}
	switch kind {
	case KindRelatedPerson:
		typ, id, active, names, telecom = rp.ResourceType, rp.Id, rp.Active, rp.Name, rp.Telecom
		for _, c := range rp.Communication {
			comms = append(comms, c.Language)
		}
	case KindPatient:
		typ, id, active, names, telecom = pt.ResourceType, pt.Id, pt.Active, pt.Name, pt.Telecom
		for _, c := range pt.Communication {
			comms = append(comms, c.Language)
		}
	}
	if typ != fhirType(kind) {
		return ProvisionFromFHIR{}, fmt.Errorf("%w: resourceType must be %s", ErrInvalid, fhirType(kind))
	}
	if id == nil || !validFHIRID(*id) {
		return ProvisionFromFHIR{}, fmt.Errorf("%w: the resource needs a valid id", ErrInvalid)
	}
	out := ProvisionFromFHIR{Active: active == nil || *active, Request: ProvisionRequest{Kind: kind,
		FHIRRef: fhirType(kind) + "/" + *id, DisplayName: displayName(names), Email: firstEmail(telecom), Language: language(comms)}}
	if out.Request.Email == "" {
		return ProvisionFromFHIR{}, fmt.Errorf("%w: the resource has no telecom with system email", ErrInvalid)
	}
	return out, nil
}

// unknownElement returns the path of the first element of body that the parsed model does not
// hold, or "".
func unknownElement(body []byte, model any) string {
	again, err := json.Marshal(model)
	if err != nil {
		return "(resource)"
	}
	var in, out any
	if json.Unmarshal(body, &in) != nil || json.Unmarshal(again, &out) != nil {
		return "(resource)"
	}
	return missingIn(in, out, "")
}

func missingIn(in, out any, path string) string {
	switch v := in.(type) {
	case map[string]any:
		o, _ := out.(map[string]any)
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			ov, ok := o[k]
			if !ok {
				return path + "/" + k
			}
			if p := missingIn(v[k], ov, path+"/"+k); p != "" {
				return p
			}
		}
	case []any:
		o, _ := out.([]any)
		if len(o) != len(v) {
			return path
		}
		for i := range v {
			if p := missingIn(v[i], o[i], fmt.Sprintf("%s/%d", path, i)); p != "" {
				return p
			}
		}
	}
	return ""
}

func fhirType(k Kind) string {
	if k == KindPatient {
		return "Patient"
	}
	return "RelatedPerson"
}

// describeJSONError says where decoding failed without repeating any value.
func describeJSONError(err error) string {
	switch e := err.(type) {
	case *json.UnmarshalTypeError:
		return "element " + e.Field + " has the wrong type"
	case *json.SyntaxError:
		return fmt.Sprintf("invalid JSON at offset %d", e.Offset)
	}
	if msg := err.Error(); strings.HasPrefix(msg, "json: unknown field ") {
		return "unknown element " + strings.TrimPrefix(msg, "json: unknown field ")
	}
	return "invalid JSON"
}

// firstEmail is the email telecom ranked first (rank 1 highest), skipping ended ones.
func firstEmail(cps []r4.ContactPoint) string {
	best, bestRank := "", ^uint32(0)
	for _, cp := range cps {
		if cp.System == nil || *cp.System != r4.ContactPointSystemEmail || cp.Value == nil {
			continue
		}
		if cp.Period != nil && cp.Period.End != nil && *cp.Period.End != "" {
			continue
		}
		if cp.Use != nil && *cp.Use == r4.ContactPointUseOld {
			continue
		}
		rank := ^uint32(0) - 1
		if cp.Rank != nil {
			rank = *cp.Rank
		}
		if rank < bestRank {
			best, bestRank = strings.TrimSpace(*cp.Value), rank
		}
	}
	return best
}

// displayName prefers the usual name (the one the person goes by), then the official one;
// its text, else given names and family.
func displayName(names []r4.HumanName) string {
	pick := func(use r4.NameUse) *r4.HumanName {
		for i := range names {
			if names[i].Use != nil && *names[i].Use == use {
				return &names[i]
			}
		}
		return nil
	}
	n := pick(r4.NameUseUsual)
	if n == nil {
		n = pick(r4.NameUseOfficial)
	}
	if n == nil && len(names) > 0 {
		n = &names[0]
	}
	if n == nil {
		return ""
	}
	if n.Text != nil && strings.TrimSpace(*n.Text) != "" {
		return strings.Join(strings.Fields(*n.Text), " ")
	}
	parts := append([]string{}, n.Given...)
	if n.Family != nil {
		parts = append(parts, *n.Family)
	}
	return strings.Join(strings.Fields(strings.Join(parts, " ")), " ")
}

// language is "en" when the person's first language with a code is English, else "nl".
func language(comms []r4.CodeableConcept) string {
	for _, c := range comms {
		for _, cd := range c.Coding {
			if cd.Code == nil {
				continue
			}
			if strings.HasPrefix(strings.ToLower(*cd.Code), "en") {
				return "en"
			}
			return "nl"
		}
	}
	return "nl"
}
