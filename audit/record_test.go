package audit_test

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"github.com/ozo-platform/ozo-identity/audit"
)

func TestEscape(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"plain /path", "plain /path"},
		{"nul\x00here", `nul\u0000here`},
		{"bad\xff\xfeutf8", `bad\xff\xfeutf8`},
		{`back\slash`, `back\\slash`},
		{"line\nbreak\u2028", `line\u000abreak\u2028`},
		{"zorg é ✓", "zorg é ✓"},
	} {
		if got := audit.Escape(tc.in, 100); got != tc.want {
			t.Errorf("Escape(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	long := audit.Escape(strings.Repeat("é", 1000)+"\x00", 64)
	if len(long) > 64 || !utf8.ValidString(long) || !strings.HasSuffix(long, "…") {
		t.Fatalf("cut %q (%d bytes)", long, len(long))
	}
}

// TestStrictParseRefusesUnknownElements shows the R4 check of the examples can fail.
func TestStrictParseRefusesUnknownElements(t *testing.T) {
	data, _ := json.Marshal(examples(t)[0].AuditEvent(observer))
	bad := bytes.Replace(data, []byte(`"action":"C"`), []byte(`"action":"C","bogus":1`), 1)
	dec := json.NewDecoder(bytes.NewReader(bad))
	dec.DisallowUnknownFields()
	var s strictAuditEvent
	if err := dec.Decode(&s); err == nil {
		t.Fatal("an unknown element was accepted")
	}
}

func TestValidateRefusesUnknownAction(t *testing.T) {
	r := audit.Record{Action: "read-everything", Outcome: audit.OutcomeSuccess, Actor: audit.Agent{Kind: audit.AgentAdmin}}
	if r.Validate() == nil {
		t.Fatal("an action outside the closed set was accepted")
	}
}

// TestLoadKeyConcurrently: processes starting together on one data directory all get the one
// key that ends up in the file (a half-written file was once read as a short key).
func TestLoadKeyConcurrently(t *testing.T) {
	file := t.TempDir() + "/sub/audit.key"
	keys := make([][]byte, 16)
	errs := make([]error, 16)
	var wg sync.WaitGroup
	for i := range keys {
		wg.Go(func() { keys[i], _, errs[i] = audit.LoadKey("", file) })
	}
	wg.Wait()
	for i := range keys {
		if errs[i] != nil || !bytes.Equal(keys[i], keys[0]) || len(keys[i]) != 32 {
			t.Fatalf("process %d: %x %v (first %x)", i, keys[i], errs[i], keys[0])
		}
	}
	info, err := os.Stat(file)
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", info, err)
	}
}

// TestSubjectIsOnlyAFHIRReference: the subject carries a reference Type/id and nothing else,
// so no free text (a BSN in a sentence, a name) can reach the trail through it.
func TestSubjectIsOnlyAFHIRReference(t *testing.T) {
	for subject, ok := range map[string]bool{
		"RelatedPerson/rp-1": true, "Patient/p.77": true,
		"Patient/999911120 Jan":              false,
		"bsn 999911120":                      false,
		"Patient/":                           false,
		"/p-1":                               false,
		"patient/p-1":                        false,
		"Patient/p-1/_history/2":             false,
		"Patient/" + strings.Repeat("x", 65): false,
	} {
		r := audit.Record{Action: audit.ActionAccountCreate, Outcome: audit.OutcomeSuccess, Actor: audit.Agent{Kind: audit.AgentAdmin}, Subject: subject}
		if err := r.Validate(); (err == nil) != ok {
			t.Errorf("subject %q: %v", subject, err)
		} else if err != nil && strings.Contains(err.Error(), subject) {
			t.Errorf("the error echoes the subject: %v", err)
		}
	}
}

// TestSubjectIsChained: the subject is covered by the MAC, and a record without one keeps
// the MAC it had before subjects existed (the examples under testdata/audit hold those).
func TestSubjectIsChained(t *testing.T) {
	chain, _ := audit.NewChain([]byte(strings.Repeat("k", 32)))
	r := audit.Record{Action: audit.ActionAccountDelete, Outcome: audit.OutcomeSuccess, Actor: audit.Agent{Kind: audit.AgentAdmin},
		Resource: "ozo_account/a1", Subject: "RelatedPerson/rp-1"}
	chain.Seal(&r, 7, "prev")
	if !chain.Valid(r) {
		t.Fatal("a sealed record does not verify")
	}
	moved := r
	moved.Subject = "RelatedPerson/rp-2"
	if chain.Valid(moved) {
		t.Fatal("a changed subject still verifies")
	}
	dropped := r
	dropped.Subject = ""
	if chain.Valid(dropped) {
		t.Fatal("a removed subject still verifies")
	}
}
