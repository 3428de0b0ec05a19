package api

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
)

// wantRequestError fails unless err is nil or a 400 with one of codes.
func wantRequestError(t *testing.T, err error, codes ...string) {
	t.Helper()
	if err == nil {
		return
	}
	var re *requestError
	if !errors.As(err, &re) || re.status != http.StatusBadRequest {
		t.Fatalf("not a 400 Matrix error: %v", err)
	}
	for _, c := range codes {
		if re.code == c {
			return
		}
	}
	t.Fatalf("errcode %s, want one of %v", re.code, codes)
}

// FuzzDecodeJSON: any body decodes into the request shapes the handlers use, or is refused
// with M_NOT_JSON (not JSON) or M_BAD_JSON (wrong shape); never a panic or a 500.
func FuzzDecodeJSON(f *testing.F) {
	f.Add([]byte(`{"addresses":["a@example.org email"],"algorithm":"none","pepper":"p"}`))
	f.Add([]byte(`{"addresses":"x"}`))
	f.Add([]byte(`[1,2,3]`))
	f.Add([]byte(`{"threepids":[["email","a@example.org"],["uzi"]]}`))
	f.Add([]byte(`{"a":` + strings.Repeat("[", 100) + `}`))
	f.Add([]byte("\xff\xfe{}"))
	f.Add([]byte(`{"send_attempt":1e400}`))
	f.Add([]byte(``))
	f.Fuzz(func(t *testing.T, body []byte) {
		var lookup struct {
			Addresses []string `json:"addresses"`
			Algorithm string   `json:"algorithm"`
			Pepper    *string  `json:"pepper"`
		}
		var bulk struct {
			ThreePIDs [][]string `json:"threepids"`
		}
		var token requestTokenReq
		var raw map[string]json.RawMessage
		for _, v := range []any{&lookup, &bulk, &token, &raw} {
			err := decodeJSONBytes(body, v)
			wantRequestError(t, err, "M_NOT_JSON", "M_BAD_JSON")
			if !json.Valid(body) && err == nil {
				t.Fatalf("invalid JSON accepted: %q", body)
			}
		}
	})
}

// FuzzParseForm: v1 bodies, form-encoded or JSON, parse into string fields or are refused with
// a 400 Matrix error.
func FuzzParseForm(f *testing.F) {
	f.Add([]byte(`medium=email&address=a%40example.org&room_id=%21r%3Ahs`), "application/x-www-form-urlencoded")
	f.Add([]byte(`medium=%zz`), "application/x-www-form-urlencoded; charset=utf-8")
	f.Add([]byte(`{"medium":"email","send_attempt":2,"x":null}`), "application/json")
	f.Add([]byte(`{"medium":{"a":1}}`), "")
	f.Add([]byte(`{"n":1e308}`), "text/plain; ;;=")
	f.Fuzz(func(t *testing.T, body []byte, contentType string) {
		fields, err := parseForm(body, contentType)
		wantRequestError(t, err, "M_NOT_JSON", "M_BAD_JSON")
		if err == nil && fields == nil {
			t.Fatal("no fields and no error")
		}
	})
}

// FuzzClientAddr: whatever X-Forwarded-For lines say, the client is the peer unless the peer is
// a trusted proxy, and otherwise an address named in the request (or unknown).
func FuzzClientAddr(f *testing.F) {
	f.Add("10.0.0.1:443", "192.0.2.1", "203.0.113.9")
	f.Add("10.0.0.1:443", "10.1.2.3, 203.0.113.9", "")
	f.Add("198.51.100.7:1", "10.0.0.2", "")
	f.Add("[::ffff:10.0.0.1]:80", "[2001:db8::1]:4711,unknown", " ")
	f.Add("10.0.0.1:443", "", "fe80::1%eth0")
	s := &Server{cfg: Config{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}}
	f.Fuzz(func(t *testing.T, remote, xff1, xff2 string) {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.RemoteAddr = remote
		r.Header["X-Forwarded-For"] = []string{xff1, xff2}
		got := s.clientAddr(r)
		peer, ok := parseHop(remote)
		switch {
		case !ok:
			if got.IsValid() {
				t.Fatalf("unparseable peer %q gave client %s", remote, got)
			}
		case !inAny(peer, s.cfg.TrustedProxies):
			if got != peer {
				t.Fatalf("untrusted peer %s, client %s", peer, got)
			}
		case got.IsValid() && got != peer:
			if !mentions(xff1+","+xff2, got) {
				t.Fatalf("client %s named nowhere in %q %q", got, xff1, xff2)
			}
		}
	})
}

// mentions reports whether some hop in list parses to a.
func mentions(list string, a netip.Addr) bool {
	for _, h := range strings.Split(list, ",") {
		if b, ok := parseHop(strings.TrimSpace(h)); ok && b == a {
			return true
		}
	}
	return false
}
