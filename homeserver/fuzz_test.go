package homeserver

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// FuzzParseAuthHeaders: any Authorization header lines either parse into complete X-Matrix
// credentials (origin, key and signature, at most maxAuthHeaders) or are refused; never a panic.
func FuzzParseAuthHeaders(f *testing.F) {
	f.Add(`X-Matrix origin="hs.example.org",destination="is.example.org",key="ed25519:a",sig="c2ln"`, "")
	f.Add(`X-Matrix origin=hs.example.org,key="ed25519:a",sig="c2ln"`, `Bearer abc`)
	f.Add(`X-Matrix origin="a\"b",key="ed25519:a",sig="c2ln"`, `X-Matrix origin="c",key="k",sig="s"`)
	f.Add(`x-matrix   origin="hs",key="ed25519:a",sig=""`, `X-Matrix`)
	f.Add(`X-Matrix origin="[::1]:8448",key="ed25519:a",sig="c2ln",origin="other"`, `X-Matrix ,,,==="`)
	f.Fuzz(func(t *testing.T, h1, h2 string) {
		auths, err := parseAuthHeaders([]string{h1, h2})
		if err != nil {
			if !errors.Is(err, ErrMalformedAuth) && !errors.Is(err, ErrNoAuth) {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		if len(auths) == 0 || len(auths) > maxAuthHeaders {
			t.Fatalf("%d credentials accepted", len(auths))
		}
		for _, a := range auths {
			if a.Origin == "" || a.KeyID == "" || a.Signature == "" {
				t.Fatalf("incomplete credentials accepted: %+v", a)
			}
		}
	})
}

// FuzzAuthenticate: whatever the headers and body, a request nobody signed is refused with an
// error the API maps (401, or 413/400 for the body), and refused origins are never contacted.
func FuzzAuthenticate(f *testing.F) {
	f.Add(`X-Matrix origin="hs.example.org",destination="is.ozo.test",key="ed25519:a",sig="c2ln"`, `{"mxid":"@a:hs"}`)
	f.Add(`X-Matrix origin="127.0.0.1:8448",key="ed25519:a",sig="c2ln"`, ``)
	f.Add(`X-Matrix origin="hs",destination="other",key="ed25519:a",sig="c2ln"`, `not json`)
	f.Add(`Bearer x`, `{}`)
	f.Fuzz(func(t *testing.T, header, body string) {
		dialled := false
		c := New(Options{ServerName: isName, AllowOrigin: func(string) bool { return false }}, nil)
		c.rewriteAddr = func(addr string) string { dialled = true; return addr }
		r := httptest.NewRequest(http.MethodPost, unbindPath, strings.NewReader(body))
		r.Header["Authorization"] = []string{header}
		origin, _, err := c.Authenticate(r)
		if err == nil {
			t.Fatalf("unsigned request accepted as %q", origin)
		}
		if !errors.Is(err, ErrUnauthorized) && !errors.Is(err, ErrRequestTooLarge) && !errors.Is(err, ErrInvalidBody) {
			t.Fatalf("error of no known kind: %v", err)
		}
		if dialled || c.keys.len() != 0 {
			t.Fatal("a refused origin was contacted")
		}
	})
}
