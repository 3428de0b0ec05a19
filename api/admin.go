package api

import (
	"context"
	"crypto/subtle"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

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
	r.Get("/audit", s.adminAudit)
	r.Post("/directory/sync", s.adminDirectorySync)
	s.routesAdminAccounts(r)
}

// statusRecorder remembers the status a handler wrote, for metrics and the audit log.
type statusRecorder struct {
	http.ResponseWriter
	status int
	target string
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

func (s *Server) adminAuth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.cfg.AdminToken == "" {
			matrixError(w, http.StatusNotFound, "M_UNRECOGNIZED", "the admin API is not enabled (admin.token)")
			return
		}
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		actor := "admin"
		client := s.clientAddr(r)
		defer func() {
			_, err := s.svc.Store().AppendAudit(r.Context(), identity.AuditRecord{
				Actor: actor, Action: r.Method + " " + r.URL.Path, Target: rec.target,
				Detail: fmt.Sprintf("status=%d client=%s", rec.status, client)})
			if err != nil {
				s.log.Error("audit record not written", "err", err)
			}
		}()
		// A token in the URL ends up in proxy and access logs: refuse it even when it is right.
		if r.URL.Query().Has("access_token") {
			actor = "anonymous"
			matrixError(rec, http.StatusUnauthorized, identity.CodeUnauthorized, "the admin token goes in the Authorization header, not the URL")
			return
		}
		// Once a client address has sent too many wrong tokens it is refused without comparing
		// the token at all, so guessing on cannot tell a right token from a wrong one.
		failures := "admin:failures:" + clientKey(client)
		if ok, retry := s.adminFailuresLeft(r, failures, 0); !ok {
			actor = "locked-out"
			tooMany(rec, retry)
			return
		}
		token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		switch {
		case !ok || strings.TrimSpace(token) == "":
			actor = "anonymous"
			matrixError(rec, http.StatusUnauthorized, identity.CodeUnauthorized, "the admin API needs a bearer token")
			return
		case subtle.ConstantTimeCompare([]byte(strings.TrimSpace(token)), []byte(s.cfg.AdminToken)) != 1:
			actor = "wrong-token"
			s.adminFailuresLeft(r, failures, 1)
			matrixError(rec, http.StatusForbidden, identity.CodeForbidden, "wrong admin token")
			return
		}
		next.ServeHTTP(rec, r.WithContext(context.WithValue(r.Context(), recorderKey, rec)))
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

func setAuditTarget(r *http.Request, target string) {
	if rec, ok := r.Context().Value(recorderKey).(*statusRecorder); ok {
		rec.target = target
	}
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

func (s *Server) adminAudit(w http.ResponseWriter, r *http.Request) {
	after, _ := strconv.ParseInt(r.URL.Query().Get("after"), 10, 64)
	recs, err := s.svc.Store().ListAudit(r.Context(), after, 1000)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	prev := ""
	if after > 0 {
		if p, err := s.svc.Store().ListAudit(r.Context(), after-1, 1); err == nil && len(p) == 1 {
			prev = p[0].Hash
		}
	}
	chainErr := identity.VerifyAuditChain(recs, prev)
	out := make([]map[string]any, 0, len(recs))
	for _, rec := range recs {
		out = append(out, map[string]any{"seq": rec.Seq, "at": rec.At.UnixMilli(), "actor": rec.Actor, "action": rec.Action,
			"target": rec.Target, "detail": rec.Detail, "hash": rec.Hash})
	}
	resp := map[string]any{"records": out, "chain_intact": chainErr == nil}
	if chainErr != nil {
		resp["chain_error"] = chainErr.Error()
	}
	writeJSON(w, http.StatusOK, resp)
}

// MaxImportBatch bounds the bindings of one POST /bindings/batch, one transaction.
const MaxImportBatch = 10000

// importBodyBytes fits MaxImportBatch entries of the longest address and MXID (255 bytes, the
// spec's bound) with their JSON keys.
func importBodyBytes(small int64) int64 {
	const perEntry = threepid.MaxAddressLength + 255 + len(`{"medium":"","address":"","mxid":""},`) + 16
	return int64(MaxImportBatch*perEntry) + small
}

// adminImportBindings binds a JSON array of {medium, address, mxid} in one transaction: invalid
// entries are reported by index and skipped (or, with ?strict=true, nothing is imported); the
// audit log gets one record for the batch.
func (s *Server) adminImportBindings(w http.ResponseWriter, r *http.Request) {
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
