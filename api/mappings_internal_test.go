package api

import (
	"encoding/json"
	"net/http/httptest"
	"reflect"
	"strconv"
	"testing"
)

// The hand-written lookup answer is the JSON encoding/json would write: every address once,
// whatever it holds (quotes, backslashes, control characters, HTML, non-ASCII), nothing else.
func TestWriteMappingsIsJSON(t *testing.T) {
	addresses := []string{"plain", `quo"te`, `back\slash`, "nl\n\x00\x1f", "<b>&amp;</b>", "héllo ✓", "plain", "missing", "\u2028"}
	mappings := map[string]string{"plain": "@a:hs", `quo"te`: "@b:hs", `back\slash`: "@c:hs", "nl\n\x00\x1f": "@d:hs",
		"<b>&amp;</b>": "@e<&>:hs", "héllo ✓": "@f:hs", "\u2028": "@g\u2029:hs"}
	want := map[string]map[string]string{"mappings": {}}
	for k, v := range mappings {
		want["mappings"][k] = v
	}
	s := &Server{}
	rec := httptest.NewRecorder()
	s.writeMappings(rec, addresses, mappings)
	size := rec.Body.Len()
	var got map[string]map[string]string
	dec := json.NewDecoder(rec.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&got); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, rec.Body.String())
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("content type %q", ct)
	}
	if cl := rec.Header().Get("Content-Length"); cl != strconv.Itoa(size) {
		t.Fatalf("Content-Length %q for %d bytes", cl, size)
	}
	empty := httptest.NewRecorder()
	s.writeMappings(empty, []string{"x"}, map[string]string{})
	if empty.Body.String() != "{\"mappings\":{}}\n" {
		t.Fatalf("empty answer %q", empty.Body.String())
	}
}
