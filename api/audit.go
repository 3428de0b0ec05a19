package api

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/ozo-platform/ozo-identity/audit"
	"github.com/ozo-platform/ozo-identity/identity"
)

// Audit is what the API needs to keep the audit trail.
type Audit struct {
	// Store appends the records of calls that change nothing and serves the admin audit API.
	Store audit.Store
	// Lookups counts lookups and refused admin attempts per caller and interval; nil records no lookups.
	Lookups *audit.Aggregator
	// Observer names this server in exported AuditEvents.
	Observer audit.Observer
}

// auditScope starts every request's audit scope: an anonymous actor at the client's address,
// with the request ID the client (or a proxy) sent, or a new one. Authentication fills in the actor.
func (s *Server) auditScope(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("X-Request-Id")
		if id == "" || len(id) > 128 {
			var b [12]byte
			rand.Read(b[:])
			id = hex.EncodeToString(b[:])
		}
		w.Header().Set("X-Request-Id", audit.Escape(id, 128))
		source := ""
		if a := s.clientAddr(r); a.IsValid() {
			source = a.String()
		}
		scope := &audit.Scope{Actor: audit.Agent{Kind: audit.AgentAnonymous}, Source: source, RequestID: id,
			Resource: r.Method + " " + r.URL.Path}
		next.ServeHTTP(w, r.WithContext(audit.WithScope(r.Context(), scope)))
	})
}

// auditLookup counts a lookup of addresses (found of them answered) in media for the caller.
func (s *Server) auditLookup(r *http.Request, media []string, addresses, found int) {
	if s.cfg.Audit.Lookups != nil {
		s.cfg.Audit.Lookups.Lookup(audit.ScopeFrom(r.Context()), media, addresses, found)
	}
}

// lookupMedia names the media of plain ("address medium") lookups, or the algorithm.
func lookupMedia(algorithm string, addresses []string) []string {
	if algorithm != "none" {
		return []string{algorithm}
	}
	seen := map[string]bool{}
	var out []string
	for _, a := range addresses {
		if i := strings.LastIndexByte(a, ' '); i >= 0 && len(out) < 8 {
			m := a[i+1:]
			if len(m) <= 16 && !seen[m] {
				seen[m] = true
				out = append(out, m)
			}
		}
	}
	return out
}

// bufferedResponse holds an admin answer until the call's audit record is written, so no call
// is acknowledged without its record.
type bufferedResponse struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (b *bufferedResponse) Header() http.Header         { return b.header }
func (b *bufferedResponse) WriteHeader(code int)        { b.status = code }
func (b *bufferedResponse) Write(p []byte) (int, error) { return b.body.Write(p) }

func outcomeOf(status int) audit.Outcome {
	switch {
	case status < 400:
		return audit.OutcomeSuccess
	case status < 500:
		return audit.OutcomeRefused
	}
	return audit.OutcomeError
}

// adminAuditList serves GET /_ozo/admin/v1/audit: records in order, as JSON lines of the
// chain or, with _format=fhir, a FHIR searchset Bundle of AuditEvents.
func (s *Server) adminAuditList(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	after, err := strconv.ParseInt(q.Get("after"), 10, 64)
	if q.Get("after") != "" && (err != nil || after < 0) {
		s.writeError(w, r, badRequest(identity.CodeInvalidParam, "after must be a sequence number"))
		return
	}
	limit := 100
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			s.writeError(w, r, badRequest(identity.CodeInvalidParam, "limit must be 1-1000"))
			return
		}
		limit = n
	}
	var since time.Time
	if v := q.Get("since"); v != "" {
		if since, err = time.Parse(time.RFC3339, v); err != nil {
			s.writeError(w, r, badRequest(identity.CodeInvalidParam, "since must be an RFC 3339 time"))
			return
		}
	}
	format := q.Get("_format")
	if format != "" && format != "fhir" && format != "json" {
		s.writeError(w, r, badRequest(identity.CodeInvalidParam, "_format must be json or fhir"))
		return
	}
	recs, err := s.cfg.Audit.Store.ListAudit(r.Context(), since, after, limit)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	next := ""
	if len(recs) == limit {
		next = strconv.FormatInt(recs[len(recs)-1].Seq, 10)
	}
	if format == "fhir" {
		entries := make([]map[string]any, 0, len(recs))
		for _, rec := range recs {
			ev := rec.AuditEvent(s.cfg.Audit.Observer)
			entries = append(entries, map[string]any{"fullUrl": strings.TrimRight(s.cfg.PublicBaseURL, "/") + "/AuditEvent/" + ev.ID, "resource": ev})
		}
		bundle := map[string]any{"resourceType": "Bundle", "type": "searchset", "total": len(recs), "entry": entries}
		if next != "" {
			bundle["link"] = []map[string]string{{"relation": "next", "url": fmt.Sprintf("%s/_ozo/admin/v1/audit?_format=fhir&after=%s&limit=%d",
				strings.TrimRight(s.cfg.PublicBaseURL, "/"), next, limit)}}
		}
		w.Header().Set("Content-Type", "application/fhir+json")
		w.WriteHeader(http.StatusOK)
		enc := json.NewEncoder(w)
		enc.SetEscapeHTML(false)
		enc.Encode(bundle)
		return
	}
	resp := map[string]any{"records": recs}
	if next != "" {
		resp["next_after"] = next
	}
	writeJSON(w, http.StatusOK, resp)
}
