package api

import (
	"bytes"
	"errors"
	"maps"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/ozo-platform/ozo-identity/audit"
	"github.com/ozo-platform/ozo-identity/identity"
	"github.com/ozo-platform/ozo-identity/threepid"
)

// routesV1 serves what older homeservers still call (Dendrite v0.15 uses only v1, without tokens).
// It has no authentication of its own, so it is off by default and limited to the homeservers' networks.
func (s *Server) routesV1(r chi.Router) {
	// The sign URL in the invitation mail opens from the invitee's browser, which has no account
	// here and is on no homeserver network: it is served even with v1 off, bound to the invite's
	// token and the key mailed with it, and limited per client.
	r.With(s.limitClient("sign-ed25519")).Post("/sign-ed25519", s.v1SignEd25519)
	r.With(s.limitClient("sign-ed25519")).Get("/sign-ed25519", s.v1SignEd25519)
	r.Group(func(r chi.Router) {
		r.Use(s.v1Gate)
		s.routesV1Gated(r)
	})
}

func (s *Server) routesV1Gated(r chi.Router) {
	r.Get("/", s.statusCheck)
	r.Get("/lookup", s.v1Lookup)
	r.With(bodyLimit(lookupBodyBytes(s.cfg.MaxLookupBatch, s.cfg.MaxBodyBytes))).Post("/bulk_lookup", s.v1BulkLookup)
	r.Post("/store-invite", s.v1StoreInvite)
	r.Get("/pubkey/isvalid", s.pubkeyIsValid)
	r.Get("/pubkey/ephemeral/isvalid", s.ephemeralIsValid)
	r.Get("/pubkey/{keyId}", s.pubkey)
	// v1 callers are the configured homeservers, proxying for all their users: no per-client budget.
	r.Post("/validate/email/requestToken", s.v1RequestEmailToken)
	r.Post("/validate/email/submitToken", s.v1SubmitEmailToken)
	r.Get("/validate/email/submitToken", s.pages.Pages(http.HandlerFunc(s.pages.SubmitTokenPage)).ServeHTTP)
	r.Get("/3pid/getValidated3pid", s.getValidated)
	r.Post("/3pid/bind", s.v1Bind)
	r.With(s.limitClient("unbind")).Post("/3pid/unbind", s.unbind)
}

func (s *Server) v1Gate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.cfg.V1Enabled {
			matrixError(w, http.StatusNotFound, "M_UNRECOGNIZED", "the v1 identity API is not enabled; use /_matrix/identity/v2")
			return
		}
		if !inAny(s.clientAddr(r), s.cfg.V1Networks) {
			matrixError(w, http.StatusForbidden, identity.CodeForbidden, "the v1 identity API is only for configured homeservers; use /_matrix/identity/v2")
			return
		}
		// The network gate vouches for a homeserver, not for which one.
		audit.ScopeFrom(r.Context()).Actor = audit.Agent{Kind: audit.AgentHomeserver}
		next.ServeHTTP(w, r)
	})
}

// v1Association returns the signed association for a resolved 3PID: the stored binding, or one
// made now for an MXID found in the directories.
func (s *Server) v1Association(r *http.Request, tp threepid.ThreePID, mxid string) (identity.Association, error) {
	b, err := s.svc.Store().GetBinding(r.Context(), tp)
	if errors.Is(err, identity.ErrNotFound) || err == nil && b.MXID != mxid {
		now := time.Now().UTC().Truncate(time.Millisecond)
		b = identity.Binding{ThreePID: tp, MXID: mxid, CreatedAt: now, NotBefore: now, NotAfter: now.Add(24 * time.Hour)}
	} else if err != nil {
		return nil, err
	}
	return s.svc.Association(b)
}

func (s *Server) v1Lookup(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if err := required(map[string]string{"medium": q.Get("medium"), "address": q.Get("address")}, "medium", "address"); err != nil {
		s.writeError(w, r, err)
		return
	}
	if !s.chargeClientLookup(w, r, 1) {
		return
	}
	tp, mxid, err := s.svc.LookupOne(r.Context(), q.Get("medium"), q.Get("address"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.auditLookup(r, []string{tp.Medium}, 1, countFound(mxid))
	if mxid == "" {
		writeJSON(w, http.StatusOK, map[string]any{})
		return
	}
	assoc, err := s.v1Association(r, tp, mxid)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, assoc)
}

func (s *Server) v1BulkLookup(w http.ResponseWriter, r *http.Request) {
	var req struct {
		ThreePIDs [][]string `json:"threepids"`
	}
	if err := s.decodeJSON(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if max := s.maxLookup(s.cfg.RateLimits.LookupPerServer); len(req.ThreePIDs) > max {
		s.writeError(w, r, &requestError{status: http.StatusRequestEntityTooLarge, code: "M_TOO_LARGE",
			msg: "at most " + strconv.Itoa(max) + " threepids per bulk_lookup"})
		return
	}
	if !s.chargeClientLookup(w, r, len(req.ThreePIDs)) {
		return
	}
	out := [][]string{}
	media := map[string]bool{}
	defer func() {
		var ms []string
		for m := range media {
			ms = append(ms, m)
		}
		s.auditLookup(r, ms, len(req.ThreePIDs), len(out))
	}()
	for _, pair := range req.ThreePIDs {
		if len(pair) != 2 {
			s.writeError(w, r, badRequest(identity.CodeInvalidParam, "each threepid is [medium, address]"))
			return
		}
		if len(media) < 8 && len(pair[0]) <= 16 {
			media[pair[0]] = true
		}
		_, mxid, err := s.svc.LookupOne(r.Context(), pair[0], pair[1])
		var ie *identity.Error
		if errors.As(err, &ie) {
			continue // an invalid address is simply not bound
		}
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		if mxid != "" {
			out = append(out, []string{pair[0], pair[1], mxid})
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"threepids": out})
}

func (s *Server) v1StoreInvite(w http.ResponseWriter, r *http.Request) {
	fields, err := s.decodeForm(w, r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if !s.chargeClientLookup(w, r, 1) { // it tells whether the 3PID is bound, as a lookup does
		return
	}
	s.doStoreInvite(w, r, fields, "v1", "")
}

func (s *Server) v1RequestEmailToken(w http.ResponseWriter, r *http.Request) {
	fields, err := s.decodeForm(w, r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	req := requestTokenReq{ClientSecret: fields["client_secret"], Email: fields["email"], NextLink: fields["next_link"]}
	if v, ok := fields["send_attempt"]; ok {
		n, ok := parseSendAttempt(v)
		if !ok {
			s.writeError(w, r, badRequest(identity.CodeInvalidParam, "send_attempt must be an integer"))
			return
		}
		a := sendAttempt(n)
		req.SendAttempt = &a
	}
	s.doRequestEmailToken(w, r, req)
}

func (s *Server) v1SubmitEmailToken(w http.ResponseWriter, r *http.Request) {
	fields, err := s.decodeForm(w, r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := required(fields, "sid", "client_secret", "token"); err != nil {
		s.writeError(w, r, err)
		return
	}
	if _, err := s.svc.SubmitToken(r.Context(), fields["sid"], fields["client_secret"], fields["token"]); err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]bool{"success": true})
}

func (s *Server) v1Bind(w http.ResponseWriter, r *http.Request) {
	fields, err := s.decodeForm(w, r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := required(fields, "sid", "client_secret", "mxid"); err != nil {
		s.writeError(w, r, err)
		return
	}
	assoc, err := s.svc.Bind(r.Context(), fields["sid"], fields["client_secret"], fields["mxid"], "")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, assoc)
}

func (s *Server) v1SignEd25519(w http.ResponseWriter, r *http.Request) {
	// Element (matrix-js-sdk) POSTs to the mailed signurl with token, private_key and mxid in the
	// query and no body, as Sydent accepts; fields in a body, if any, take precedence.
	fields := map[string]string{}
	for k, v := range r.URL.Query() {
		fields[k] = v[0]
	}
	body, err := s.readBody(w, r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if len(bytes.TrimSpace(body)) > 0 {
		fromBody, err := parseForm(body, r.Header.Get("Content-Type"))
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		maps.Copy(fields, fromBody)
	}
	signed, err := s.svc.SignEd25519(r.Context(), fields["mxid"], fields["token"], fields["private_key"])
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, signed)
}

func countFound(mxid string) int {
	if mxid == "" {
		return 0
	}
	return 1
}
