package api

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// The single pass and encoding/json decode every lookup body alike: whatever the single pass
// accepts, encoding/json accepts with the same result; everything else is left to encoding/json.
func FuzzDecodeLookup(f *testing.F) {
	for _, seed := range []string{
		`{"addresses":["a","b"],"algorithm":"sha256","pepper":"p"}`,
		` { "addresses" : [ "a" , "b" ] , "algorithm" : "none" , "pepper" : "" } `,
		"{\n\t\"pepper\":\"p\",\r\n\"addresses\":[]}",
		`{"addresses":["a"],"addresses":["b"],"algorithm":"sha256","pepper":"p"}`,
		`{"Addresses":["a"],"algorithm":"sha256","pepper":"p"}`,
		`{"addresses":["a\"b"],"algorithm":"sha256","pepper":"p"}`,
		`{"addresses":["a\u0062"],"algorithm":"sha256","pepper":"p"}`,
		`{"addresses":["hé"],"algorithm":"sha256","pepper":"p"}`,
		`{"addresses":null,"algorithm":"sha256","pepper":null}`,
		`{"addresses":["a",],"algorithm":"sha256","pepper":"p"}`,
		`{"addresses":["a"] "algorithm":"sha256"}`,
		`{"addresses":["a"]}}`,
		`{"addresses":["a"]`,
		`{"addresses":[1],"algorithm":"sha256","pepper":"p"}`,
		`{"addresses":"a","algorithm":"sha256","pepper":"p"}`,
		`{"extra":{"x":[1,2]},"addresses":["a"]}`,
		`{}`, `[]`, `null`, ``, `"x"`, "{\"addresses\":[\"a\x00\"]}", "{\"addresses\":[\"\xff\"]}",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		fast, ok := scanLookup(body)
		var slow lookupRequest
		err := json.Unmarshal(body, &slow)
		if !ok {
			// The fallback is encoding/json itself: its answer and the handler's agree.
			got, gerr := decodeLookup(body)
			if (gerr == nil) != (err == nil) || (err == nil && !reflect.DeepEqual(got, slow)) {
				t.Fatalf("fallback of %q: %+v, %v; encoding/json: %+v, %v", body, got, gerr, slow, err)
			}
			return
		}
		if err != nil {
			t.Fatalf("single pass accepted %q, which encoding/json refuses: %v", body, err)
		}
		if !reflect.DeepEqual(fast, slow) {
			t.Fatalf("%q: single pass %#v, encoding/json %#v", body, fast, slow)
		}
	})
}

func TestDecodeLookupErrors(t *testing.T) {
	for body, code := range map[string]string{
		``:                                  "M_NOT_JSON",
		`{"addresses":["a"`:                 "M_NOT_JSON",
		`{"addresses":["a"]}x`:              "M_NOT_JSON",
		`[]`:                                "M_BAD_JSON",
		`{"addresses":"a"}`:                 "M_BAD_JSON",
		`{"addresses":[1]}`:                 "M_BAD_JSON",
		`{"pepper":1,"addresses":["a"]}`:    "M_BAD_JSON",
		`{"algorithm":["x"],"pepper":"p"}`:  "M_BAD_JSON",
		"{\"addresses\":[\"a\x01\"]}":       "M_NOT_JSON",
		`{"addresses":["a"],"algorithm":1}`: "M_BAD_JSON",
	} {
		_, err := decodeLookup([]byte(body))
		var re *requestError
		if !errors.As(err, &re) || re.code != code {
			t.Errorf("%q: got %v, want %s", body, err, code)
		}
	}
	req, err := decodeLookup([]byte(`{"addresses":["a","b"],"algorithm":"sha256","pepper":"` + strings.Repeat("p", 3) + `"}`))
	if err != nil || len(req.Addresses) != 2 || req.Algorithm != "sha256" || *req.Pepper != "ppp" {
		t.Fatalf("got %+v, %v", req, err)
	}
}
