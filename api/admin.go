package api

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/ozo-platform/ozo-identity/audit"
	"github.com/ozo-platform/ozo-identity/identity"
	"github.com/ozo-platform/ozo-identity/threepid"
)

// routesAdmin is the operators' API. Every call, allowed or not, lands in the audit log.
func (s *Server) routesAdmin(r chi.Router) {
	r.Use(s.adminAuth)
	r.Post("/bindings", s.adminCreateBinding)
	r.With(bodyLimit(importBodyBytes(s.cfg.MaxBodyBytes))).Post("/bindings/batch", s.adminImportBindings)
	r.Get("/bindings", s.adminListBindings)
	r.Delete("/bindings/{medium}/{address}", s.adminDeleteBinding)
	r.Get("/audit", s.adminAuditList)
	r.Post("/directory/sync", s.adminDirectorySync)
	s.routesAdminAccounts(r)
}

// statusRecorder remembers the status a handler wrote, for metrics.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

// adminAuth lets only the admin token through. Every call is audited: a refused one through
// the aggregator (the first per client and interval at once, the rest counted, so guessing
// cannot fill the database), an allowed one before its answer is sent, in the transaction of
// the change it made or on its own.
func (s *Server) adminAuth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.cfg.AdminToken == "" {
			matrixError(w, http.StatusNotFound, "M_UNRECOGNIZED", "the admin API is not enabled (admin.token)")
			return
		}
		scope := audit.ScopeFrom(r.Context())
		client := s.clientAddr(r)
		refuse := func(who string, status int, code, msg string) {
			rec := scope.Record(audit.ActionAdminCall, audit.OutcomeRefused)
			rec.Actor = audit.Agent{Kind: audit.AgentAnonymous, ID: who}
			rec.Detail = fmt.Sprintf("status=%d %s", status, code)
			// A client hanging up does not take the record of its attempt with it.
			ctx, cancel := s.detached(r)
			defer cancel()
			var err error
			if s.cfg.Audit.Lookups != nil {
				err = s.cfg.Audit.Lookups.Refused(ctx, rec)
			} else if s.cfg.Audit.Store != nil {
				err = s.cfg.Audit.Store.AppendAudit(ctx, rec)
			}
			if err != nil {
				s.log.ErrorContext(r.Context(), "audit record of a refused admin call not written", "err", err)
			}
		}
		// A token in the URL ends up in proxy and access logs: refuse it even when it is right.
		if r.URL.Query().Has("access_token") {
			refuse("token-in-url", http.StatusUnauthorized, identity.CodeUnauthorized, "")
			matrixError(w, http.StatusUnauthorized, identity.CodeUnauthorized, "the admin token goes in the Authorization header, not the URL")
			return
		}
		// Once a client address has sent too many wrong tokens it is refused without comparing
		// the token at all, so guessing on cannot tell a right token from a wrong one.
		failures := "admin:failures:" + clientKey(client)
		if ok, retry := s.adminFailuresLeft(r, failures, 0); !ok {
			refuse("locked-out", http.StatusTooManyRequests, "M_LIMIT_EXCEEDED", "")
			tooMany(w, retry)
			return
		}
		token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		switch {
		case !ok || strings.TrimSpace(token) == "":
			refuse("no-token", http.StatusUnauthorized, identity.CodeUnauthorized, "")
			matrixError(w, http.StatusUnauthorized, identity.CodeUnauthorized, "the admin API needs a bearer token")
			return
		case subtle.ConstantTimeCompare([]byte(strings.TrimSpace(token)), []byte(s.cfg.AdminToken)) != 1:
			s.adminFailuresLeft(r, failures, 1)
			refuse("wrong-token", http.StatusForbidden, identity.CodeForbidden, "")
			matrixError(w, http.StatusForbidden, identity.CodeForbidden, "wrong admin token")
			return
		}
		scope.Actor = audit.Agent{Kind: audit.AgentAdmin}
		buf := &bufferedResponse{header: w.Header(), status: http.StatusOK}
		next.ServeHTTP(buf, r)
		if !scope.Recorded() {
			rec := scope.Record(audit.ActionAdminCall, outcomeOf(buf.status))
			rec.Detail = strings.TrimSpace(fmt.Sprintf("status=%d %s", buf.status, scope.Target))
			ctx, cancel := s.detached(r)
			defer cancel()
			if err := s.cfg.Audit.Store.AppendAudit(ctx, rec); err != nil {
				// Fail closed: an admin call that cannot be recorded is not answered.
				w.Header().Del("Content-Length")
				if s.unavailable(err) {
					s.log.WarnContext(r.Context(), "audit record not written: database unreachable", "err", err)
					tryAgain(w)
					return
				}
				s.log.ErrorContext(r.Context(), "audit record not written", "err", err)
				matrixError(w, http.StatusInternalServerError, identity.CodeUnknown, "the audit record could not be written")
				return
			}
		}
		w.WriteHeader(buf.status)
		w.Write(buf.body.Bytes())
	})
}

// adminFailuresLeft charges n wrong tokens to key and reports whether the client may still try.
// A limiter error refuses: the admin API fails closed.
func (s *Server) adminFailuresLeft(r *http.Request, key string, n int) (bool, time.Duration) {
	max := s.cfg.RateLimits.AdminFailuresPerClient
	if s.cfg.RateLimits.Limiter == nil || max <= 0 {
		return true, 0
	}
	// Asking (n = 0) whether another failure would still fit: max failures lock the client out.
	limit := max
	if n == 0 {
		limit = max - 1
	}
	ok, retry, err := s.cfg.RateLimits.Limiter.AllowN(r.Context(), key, n, limit, time.Minute)
	if err != nil {
		s.log.WarnContext(r.Context(), "rate limiter failed", "err", err)
		return false, time.Second
	}
	return ok, retry
}

// setAuditTarget names what an admin call concerned, for its audit record.
func setAuditTarget(r *http.Request, target string) {
	audit.ScopeFrom(r.Context()).Target = "target=" + target
}

type bindingJSON struct {
	Medium    string `json:"medium"`
	Address   string `json:"address"`
	MXID      string `json:"mxid"`
	CreatedAt int64  `json:"created_at"`
	Source    string `json:"source"`
}

func (s *Server) adminCreateBinding(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Medium  string `json:"medium"`
		Address string `json:"address"`
		MXID    string `json:"mxid"`
	}
	if err := s.decodeJSON(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	setAuditTarget(r, req.Medium+":"+req.Address+" -> "+req.MXID)
	if err := required(map[string]string{"medium": req.Medium, "address": req.Address, "mxid": req.MXID}, "medium", "address", "mxid"); err != nil {
		s.writeError(w, r, err)
		return
	}
	assoc, err := s.svc.AdminBind(r.Context(), req.Medium, req.Address, req.MXID, "admin")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, assoc)
}

func (s *Server) adminListBindings(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit := 100
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			s.writeError(w, r, badRequest(identity.CodeInvalidParam, "limit must be 1-1000"))
			return
		}
		limit = n
	}
	medium := q.Get("medium")
	if medium != "" {
		if medium = threepid.CanonicalMedium(medium); medium == "" {
			s.writeError(w, r, badRequest(identity.CodeInvalidParam, "unsupported medium"))
			return
		}
	}
	list, err := s.svc.Store().ListBindings(r.Context(), medium, q.Get("after"), limit)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := make([]bindingJSON, 0, len(list))
	for _, b := range list {
		out = append(out, bindingJSON{Medium: b.Medium, Address: b.Address, MXID: b.MXID, CreatedAt: b.CreatedAt.UnixMilli(), Source: b.Source})
	}
	resp := map[string]any{"bindings": out}
	if len(list) == limit {
		resp["next_after"] = list[len(list)-1].Address
	}
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) adminDeleteBinding(w http.ResponseWriter, r *http.Request) {
	medium, address, err := pathParams(r, "medium", "address")
	if err != nil {
		s.writeError(w, r, badRequest(identity.CodeInvalidParam, "medium and address must be valid percent-encoded path segments"))
		return
	}
	setAuditTarget(r, medium+":"+address)
	if err = s.svc.AdminUnbind(r.Context(), medium, address); err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{})
}

// pathParams returns chi URL parameters unescaped. chi routes on the escaped path when the
// request has one (so "%2F" stays inside a segment) and then hands back escaped segments.
func pathParams(r *http.Request, a, b string) (string, string, error) {
	pa, pb := chi.URLParam(r, a), chi.URLParam(r, b)
	if r.URL.RawPath == "" {
		return pa, pb, nil
	}
	ua, err := url.PathUnescape(pa)
	if err != nil {
		return "", "", err
	}
	ub, err := url.PathUnescape(pb)
	return ua, ub, err
}

// MaxImportBatch bounds the bindings of one POST /bindings/batch, one transaction.
const MaxImportBatch = 10000

// importSlots is how many batches are imported at once: one is written while the next is
// parsed and hashed.
const importSlots = 2

// importBodyBytes fits MaxImportBatch entries of the longest address and MXID (255 bytes, the
// spec's bound) with their JSON keys.
func importBodyBytes(small int64) int64 {
	const perEntry = threepid.MaxAddressLength + 255 + len(`{"medium":"","address":"","mxid":""},`) + 16
	return int64(MaxImportBatch*perEntry) + small
}

// adminImportBindings binds a JSON array of {medium, address, mxid} in one transaction: invalid
// entries are reported by index and skipped (or, with ?strict=true, nothing is imported); the
// audit log gets one record for the batch.
//
// At most importSlots batches are read and imported at once: each holds its entries, hashes and
// audit record in memory while it waits for the database (SQLite writes one transaction at a
// time), and sixteen at once took the server past 300 MB. The others wait with their bodies
// unread, until their deadline (then 503, Retry-After).
func (s *Server) adminImportBindings(w http.ResponseWriter, r *http.Request) {
	select {
	case s.imports <- struct{}{}:
		defer func() { <-s.imports }()
	case <-r.Context().Done():
		if errors.Is(r.Context().Err(), context.DeadlineExceeded) {
			w.Header().Set("Retry-After", "5")
			matrixError(w, http.StatusServiceUnavailable, identity.CodeUnknown,
				fmt.Sprintf("other imports held all %d import slots for this request's whole time; try again shortly", importSlots))
			return
		}
		s.writeError(w, r, r.Context().Err())
		return
	}
	var entries []identity.ImportEntry
	if err := s.decodeJSON(w, r, &entries); err != nil {
		s.writeError(w, r, err)
		return
	}
	if len(entries) > MaxImportBatch {
		s.writeError(w, r, &requestError{status: http.StatusRequestEntityTooLarge, code: "M_TOO_LARGE",
			msg: fmt.Sprintf("at most %d bindings per batch", MaxImportBatch)})
		return
	}
	strict := r.URL.Query().Get("strict") == "true"
	rep, err := s.svc.ImportBindings(r.Context(), entries, "admin", strict)
	if err != nil {
		setAuditTarget(r, fmt.Sprintf("batch of %d bindings: failed", len(entries)))
		s.writeError(w, r, err)
		return
	}
	setAuditTarget(r, fmt.Sprintf("batch of %d bindings: created=%d updated=%d unchanged=%d superseded=%d invalid=%d",
		len(entries), rep.Created, rep.Updated, rep.Unchanged, rep.Superseded, len(rep.Invalid)))
	invalid := rep.Invalid
	if invalid == nil {
		invalid = []identity.ImportError{}
	}
	status := http.StatusOK
	if strict && len(invalid) > 0 {
		// Nothing was imported: the caller fixes the entries and sends the batch again.
		status = http.StatusBadRequest
		writeJSON(w, status, map[string]any{"errcode": identity.CodeInvalidParam,
			"error": fmt.Sprintf("%d invalid entries; nothing imported", len(invalid)), "invalid": invalid})
		return
	}
	writeJSON(w, status, map[string]any{"created": rep.Created, "updated": rep.Updated, "unchanged": rep.Unchanged,
		"superseded": rep.Superseded, "invalid": invalid})
}
