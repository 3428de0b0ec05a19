package api

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"regexp"
	"testing"
)

// Every response names its request id, and every log line written while serving it carries
// the same id; a client's own X-Request-Id is believed only from a trusted proxy.
func TestRequestID(t *testing.T) {
	var logs bytes.Buffer
	s := &Server{cfg: Config{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}},
		log: slog.New(NewLogHandler(slog.NewJSONHandler(&logs, nil)))}
	h := s.requestID(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.log.ErrorContext(r.Context(), "request failed")
		s.log.With("component", "x").WarnContext(r.Context(), "also")
	}))
	for _, tc := range []struct {
		remote, header string
		keep           bool
	}{
		{"192.0.2.1:4000", "", false},
		{"192.0.2.1:4000", "chosen-by-client", false},
		{"10.1.2.3:4000", "from-the-proxy.1", true},
		{"10.1.2.3:4000", "bad id\nwith newline", false},
	} {
		logs.Reset()
		req := httptest.NewRequest("GET", "/", nil)
		req.RemoteAddr = tc.remote
		if tc.header != "" {
			req.Header.Set("X-Request-Id", tc.header)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		id := rec.Header().Get("X-Request-Id")
		if tc.keep && id != tc.header {
			t.Errorf("%s from %s: id %q, want the proxy's", tc.header, tc.remote, id)
		}
		if !tc.keep && !regexp.MustCompile(`^[0-9a-f]{16}$`).MatchString(id) {
			t.Errorf("%q from %s: id %q, want a fresh random one", tc.header, tc.remote, id)
		}
		lines := bytes.Split(bytes.TrimSpace(logs.Bytes()), []byte("\n"))
		if len(lines) != 2 {
			t.Fatalf("%d log lines: %s", len(lines), logs.String())
		}
		for _, l := range lines {
			var rec map[string]any
			if err := json.Unmarshal(l, &rec); err != nil || rec["request_id"] != id {
				t.Errorf("log line %s: request_id %v, want %s (%v)", l, rec["request_id"], id, err)
			}
		}
	}
	// Outside a request nothing is added.
	logs.Reset()
	s.log.Info("startup")
	if bytes.Contains(logs.Bytes(), []byte("request_id")) {
		t.Errorf("request_id outside a request: %s", logs.String())
	}
}
