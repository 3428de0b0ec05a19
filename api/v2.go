package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/ozo-platform/ozo-identity/audit"
	"github.com/ozo-platform/ozo-identity/homeserver"
	"github.com/ozo-platform/ozo-identity/identity"
)

func (s *Server) routesV2(r chi.Router) {
	r.Get("/", s.statusCheck)
	r.With(s.limitClient("register")).Post("/account/register", s.register)
	r.Get("/terms", s.getTerms)
	r.Get("/pubkey/isvalid", s.pubkeyIsValid)
	r.Get("/pubkey/ephemeral/isvalid", s.ephemeralIsValid)
	r.Get("/pubkey/{keyId}", s.pubkey)
	r.Group(func(r chi.Router) {
		r.Use(s.authenticated(false))
		r.Get("/account", s.accountInfo)
		r.Post("/account/logout", s.logout)
		r.Post("/terms", s.acceptTerms)
	})
	r.Group(func(r chi.Router) {
		r.Use(s.authenticated(true))
		r.Get("/hash_details", s.hashDetails)
		r.With(bodyLimit(lookupBodyBytes(s.cfg.MaxLookupBatch, s.cfg.MaxBodyBytes))).Post("/lookup", s.lookup)
		r.With(s.limitClient("requestToken")).Post("/validate/email/requestToken", s.requestEmailToken)
		r.Post("/validate/email/submitToken", s.submitEmailToken)
		r.Post("/validate/msisdn/requestToken", s.msisdnUnsupported)
		r.Post("/validate/msisdn/submitToken", s.msisdnUnsupported)
		r.Get("/validate/msisdn/submitToken", s.msisdnUnsupported)
		r.Get("/3pid/getValidated3pid", s.getValidated)
		r.Post("/3pid/bind", s.bind)
		// store-invite answers M_THREEPID_IN_USE for a bound 3PID: it is a lookup of one address.
		r.With(s.limitClient("store-invite"), s.limitLookupServer).Post("/store-invite", s.storeInvite)
		r.Post("/sign-ed25519", s.signEd25519)
	})
	// The link in the validation mail opens in a browser, which has no token: the mailed token
	// is the proof (as in Sydent, where only POST submitToken needs authentication).
	r.Get("/validate/email/submitToken", s.pages.Pages(http.HandlerFunc(s.pages.SubmitTokenPage)).ServeHTTP)
	// Unbind is authenticated by a validated session or by the homeserver's signature, not a token.
	r.With(s.limitClient("unbind")).Post("/3pid/unbind", s.unbind)
}

func (s *Server) statusCheck(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{})
}

func (s *Server) register(w http.ResponseWriter, r *http.Request) {
	var req struct {
		AccessToken      string `json:"access_token"`
		TokenType        string `json:"token_type"`
		MatrixServerName string `json:"matrix_server_name"`
		ExpiresIn        int64  `json:"expires_in"`
	}
	if err := s.decodeJSON(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := required(map[string]string{"access_token": req.AccessToken, "matrix_server_name": req.MatrixServerName},
		"access_token", "matrix_server_name"); err != nil {
		s.writeError(w, r, err)
		return
	}
	if req.TokenType != "" && req.TokenType != "Bearer" {
		s.writeError(w, r, badRequest(identity.CodeInvalidParam, "token_type must be Bearer"))
		return
	}
	token, err := s.svc.Register(r.Context(), s.hs, s.cfg.AllowedHomeserver, req.MatrixServerName, req.AccessToken)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	// "access_token" is what Synapse and older clients read; "token" is the spec's name.
	writeJSON(w, http.StatusOK, map[string]string{"token": token, "access_token": token})
}

func (s *Server) accountInfo(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"user_id": account(r).UserID})
}

func (s *Server) logout(w http.ResponseWriter, r *http.Request) {
	if err := s.svc.Logout(r.Context(), bearerToken(r)); err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{})
}

func (s *Server) getTerms(w http.ResponseWriter, r *http.Request) {
	policies := map[string]any{}
	for name, p := range s.svc.Policies() {
		doc := map[string]any{"version": p.Version}
		for lang, d := range p.Languages {
			doc[lang] = map[string]string{"name": d.Name, "url": d.URL}
		}
		policies[name] = doc
	}
	writeJSON(w, http.StatusOK, map[string]any{"policies": policies})
}

func (s *Server) acceptTerms(w http.ResponseWriter, r *http.Request) {
	var req struct {
		UserAccepts []string `json:"user_accepts"`
	}
	if err := s.decodeJSON(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if req.UserAccepts == nil {
		s.writeError(w, r, badRequest("M_MISSING_PARAMS", "missing parameters: user_accepts"))
		return
	}
	if err := s.svc.AcceptTerms(r.Context(), account(r).UserID, req.UserAccepts); err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{})
}

func (s *Server) hashDetails(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"algorithms": []string{"sha256", "none"}, "lookup_pepper": s.svc.Pepper()})
}

func (s *Server) lookup(w http.ResponseWriter, r *http.Request) {
	body, err := s.readLookupBody(w, r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	req, err := decodeLookup(*body)
	s.buffers.put(body) // the request's strings are a copy
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if req.Addresses == nil || req.Algorithm == "" || req.Pepper == nil {
		s.writeError(w, r, badRequest("M_MISSING_PARAMS", "addresses, algorithm and pepper are required"))
		return
	}
	rl := s.cfg.RateLimits
	if max := s.maxLookup(rl.LookupPerAccount, rl.LookupPerServer); len(req.Addresses) > max {
		s.writeError(w, r, &requestError{status: http.StatusRequestEntityTooLarge, code: "M_TOO_LARGE",
			msg: fmt.Sprintf("at most %d addresses per lookup", max)})
		return
	}
	// Every address counts against the budgets, so a batch is no cheaper than single lookups.
	if !s.chargeLookup(w, r, len(req.Addresses)) {
		return
	}
	mappings, err := s.svc.Lookup(r.Context(), req.Algorithm, *req.Pepper, req.Addresses)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if s.metrics != nil {
		s.metrics.lookupAddresses.Add(float64(len(req.Addresses)))
		s.metrics.lookupBatch.Observe(float64(len(req.Addresses)))
	}
	s.auditLookup(r, lookupMedia(req.Algorithm, req.Addresses), len(req.Addresses), len(mappings))
	s.writeMappings(w, req.Addresses, mappings)
}

// writeMappings answers {"mappings": {address: mxid, …}} in the order of the request, without
// encoding/json's reflection and sorting of a map, which cost more than the lookup itself. It
// empties mappings.
func (s *Server) writeMappings(w http.ResponseWriter, addresses []string, mappings map[string]string) {
	// Sized for a sha256 hash and a longish MXID per answer, without a pass over the map; a
	// longer answer grows the buffer, which goes back to the pool grown.
	p := s.buffers.get(len(`{"mappings":{}}`) + 1 + len(mappings)*(43+64+len(`"":"",`)))
	defer s.buffers.put(p)
	buf := append(*p, `{"mappings":{`...)
	first := true
	for _, a := range addresses {
		mxid, ok := mappings[a]
		if !ok {
			continue
		}
		delete(mappings, a) // each address once, however often it was asked
		if !first {
			buf = append(buf, ',')
		}
		first = false
		buf = appendJSONString(buf, a)
		buf = append(buf, ':')
		buf = appendJSONString(buf, mxid)
	}
	buf = append(buf, "}}\n"...)
	*p = buf
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(buf)))
	w.WriteHeader(http.StatusOK)
	w.Write(buf)
}

// appendJSONString appends s as a JSON string: lookup hashes and MXIDs are plain ASCII and
// are copied; anything else is escaped by encoding/json, without HTML escaping, as writeJSON.
func appendJSONString(buf []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' {
			var b bytes.Buffer
			enc := json.NewEncoder(&b)
			enc.SetEscapeHTML(false)
			enc.Encode(s)
			return append(buf, bytes.TrimSuffix(b.Bytes(), []byte("\n"))...)
		}
	}
	buf = append(buf, '"')
	buf = append(buf, s...)
	return append(buf, '"')
}

type requestTokenReq struct {
	ClientSecret string       `json:"client_secret"`
	Email        string       `json:"email"`
	SendAttempt  *sendAttempt `json:"send_attempt"`
	NextLink     string       `json:"next_link"`
}

// sendAttempt is a JSON integer or, as matrix-js-sdk sends it, a string of digits spelling one
// (Sydent accepts both). Nothing else: no sign, spaces, fraction or exponent.
type sendAttempt int64

func (a *sendAttempt) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var str string
		if err := json.Unmarshal(b, &str); err != nil {
			return badRequest("M_BAD_JSON", "send_attempt must be an integer")
		}
		n, ok := parseSendAttempt(str)
		if !ok {
			return badRequest("M_BAD_JSON", "send_attempt must be an integer or a string of digits")
		}
		*a = sendAttempt(n)
		return nil
	}
	var n int64
	if err := json.Unmarshal(b, &n); err != nil {
		return badRequest("M_BAD_JSON", "send_attempt must be of type number")
	}
	*a = sendAttempt(n)
	return nil
}

// parseSendAttempt reads a non-empty string of ASCII digits that fits in an int64.
func parseSendAttempt(s string) (int64, bool) {
	if s == "" || strings.Trim(s, "0123456789") != "" {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}

func (s *Server) requestEmailToken(w http.ResponseWriter, r *http.Request) {
	var req requestTokenReq
	if err := s.decodeJSON(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	s.doRequestEmailToken(w, r, req)
}

func (s *Server) doRequestEmailToken(w http.ResponseWriter, r *http.Request, req requestTokenReq) {
	if req.ClientSecret == "" || req.Email == "" || req.SendAttempt == nil {
		s.writeError(w, r, badRequest("M_MISSING_PARAMS", "client_secret, email and send_attempt are required"))
		return
	}
	sid, err := s.svc.RequestEmailToken(r.Context(), req.ClientSecret, req.Email, int64(*req.SendAttempt), req.NextLink, s.clientAddr(r).String())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"sid": sid})
}

func (s *Server) submitEmailToken(w http.ResponseWriter, r *http.Request) {
	var req struct {
		SID          string `json:"sid"`
		ClientSecret string `json:"client_secret"`
		Token        string `json:"token"`
	}
	if err := s.decodeJSON(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := required(map[string]string{"sid": req.SID, "client_secret": req.ClientSecret, "token": req.Token},
		"sid", "client_secret", "token"); err != nil {
		s.writeError(w, r, err)
		return
	}
	if _, err := s.svc.SubmitToken(r.Context(), req.SID, req.ClientSecret, req.Token); err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]bool{"success": true})
}

func (s *Server) msisdnUnsupported(w http.ResponseWriter, r *http.Request) {
	matrixError(w, http.StatusBadRequest, "M_UNRECOGNIZED", "phone number validation is not offered by this identity server")
}

func (s *Server) getValidated(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if err := required(map[string]string{"sid": q.Get("sid"), "client_secret": q.Get("client_secret")}, "sid", "client_secret"); err != nil {
		s.writeError(w, r, err)
		return
	}
	sess, err := s.svc.Validated(r.Context(), q.Get("sid"), q.Get("client_secret"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"medium": sess.ThreePID.Medium, "address": sess.ThreePID.Address,
		"validated_at": sess.ValidatedAt.UnixMilli()})
}

func (s *Server) bind(w http.ResponseWriter, r *http.Request) {
	var req struct {
		SID          string `json:"sid"`
		ClientSecret string `json:"client_secret"`
		MXID         string `json:"mxid"`
	}
	if err := s.decodeJSON(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := required(map[string]string{"sid": req.SID, "client_secret": req.ClientSecret, "mxid": req.MXID},
		"sid", "client_secret", "mxid"); err != nil {
		s.writeError(w, r, err)
		return
	}
	assoc, err := s.svc.Bind(r.Context(), req.SID, req.ClientSecret, req.MXID, account(r).UserID)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, assoc)
}

const xMatrixRefused = "the request's X-Matrix signature could not be verified"

func (s *Server) unbind(w http.ResponseWriter, r *http.Request) {
	var body []byte
	var origin string
	var err error
	if strings.HasPrefix(r.Header.Get("Authorization"), "X-Matrix") {
		origin, body, err = s.hs.Authenticate(r)
		if err == nil {
			audit.ScopeFrom(r.Context()).Actor = audit.Agent{Kind: audit.AgentHomeserver, ID: origin}
		}
		if err != nil && !errors.Is(err, homeserver.ErrRequestTooLarge) && !errors.Is(err, homeserver.ErrInvalidBody) {
			// One answer for every origin we cannot verify, whatever the reason (not allowed,
			// unreachable, timed out, bad keys, bad signature): the status must not tell an
			// unauthenticated caller what listens at the address it named.
			s.log.DebugContext(r.Context(), "X-Matrix unbind refused", "err", err)
			matrixError(w, http.StatusUnauthorized, identity.CodeUnauthorized, xMatrixRefused)
			return
		}
	} else {
		body, err = s.readBody(w, r)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var req struct {
		SID          string `json:"sid"`
		ClientSecret string `json:"client_secret"`
		MXID         string `json:"mxid"`
		ThreePID     struct {
			Medium  string `json:"medium"`
			Address string `json:"address"`
		} `json:"threepid"`
	}
	if err := decodeJSONBytes(body, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if req.MXID == "" || req.ThreePID.Medium == "" || req.ThreePID.Address == "" {
		s.writeError(w, r, badRequest("M_MISSING_PARAMS", "mxid and threepid {medium, address} are required"))
		return
	}
	if origin == "" && req.SID == "" && req.ClientSecret == "" {
		matrixError(w, http.StatusUnauthorized, identity.CodeUnauthorized, "unbind needs sid and client_secret, or an X-Matrix signature from the user's homeserver")
		return
	}
	if err := s.svc.Unbind(r.Context(), req.SID, req.ClientSecret, req.ThreePID.Medium, req.ThreePID.Address, req.MXID, origin); err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{})
}

func (s *Server) storeInvite(w http.ResponseWriter, r *http.Request) {
	var raw map[string]json.RawMessage
	if err := s.decodeJSON(w, r, &raw); err != nil {
		s.writeError(w, r, err)
		return
	}
	fields := map[string]string{}
	for k, v := range raw {
		var str string
		if err := json.Unmarshal(v, &str); err != nil {
			if string(v) == "null" {
				continue
			}
			s.writeError(w, r, badRequest("M_BAD_JSON", k+" must be a string"))
			return
		}
		fields[k] = str
	}
	s.doStoreInvite(w, r, fields, "v2", account(r).UserID)
}

// doStoreInvite stores an invite; caller is the authenticated user who must be its sender, or
// "" for v1, whose callers are the configured homeservers.
func (s *Server) doStoreInvite(w http.ResponseWriter, r *http.Request, fields map[string]string, version, caller string) {
	if err := required(fields, "medium", "address", "room_id", "sender"); err != nil {
		s.writeError(w, r, err)
		return
	}
	extra := map[string]string{}
	for _, k := range identity.InviteFields {
		extra[k] = fields[k]
	}
	inv, err := s.svc.StoreInvite(r.Context(), identity.InviteRequest{Medium: fields["medium"], Address: fields["address"],
		RoomID: fields["room_id"], Sender: fields["sender"], Caller: caller, Extra: extra})
	// M_THREEPID_IN_USE tells the caller the address is bound: it is a lookup of one address.
	if ie := (*identity.Error)(nil); errors.As(err, &ie) && ie.Code == identity.CodeThreePIDInUse {
		s.auditLookup(r, []string{fields["medium"]}, 1, 1)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	base := strings.TrimRight(s.cfg.PublicBaseURL, "/") + "/_matrix/identity/" + version
	if version == "v1" {
		base = strings.TrimRight(s.cfg.PublicBaseURL, "/") + "/_matrix/identity/api/v1"
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"token":        inv.Token,
		"display_name": inv.DisplayName,
		"public_key":   inv.PublicKey,
		"public_keys": []map[string]string{
			{"public_key": inv.PublicKey, "key_validity_url": base + "/pubkey/isvalid"},
			{"public_key": inv.Ephemeral, "key_validity_url": base + "/pubkey/ephemeral/isvalid"},
		},
	})
}

func (s *Server) signEd25519(w http.ResponseWriter, r *http.Request) {
	var req struct {
		MXID       string `json:"mxid"`
		Token      string `json:"token"`
		PrivateKey string `json:"private_key"`
	}
	if err := s.decodeJSON(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	signed, err := s.svc.SignEd25519(r.Context(), req.MXID, req.Token, req.PrivateKey)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, signed)
}

func (s *Server) pubkey(w http.ResponseWriter, r *http.Request) {
	key, err := s.svc.PublicKey(r.Context(), chi.URLParam(r, "keyId"))
	if errors.Is(err, identity.ErrNotFound) {
		matrixError(w, http.StatusNotFound, identity.CodeNotFound, "the public key was not found")
		return
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"public_key": key})
}

func (s *Server) pubkeyIsValid(w http.ResponseWriter, r *http.Request) {
	key := r.URL.Query().Get("public_key")
	if key == "" {
		s.writeError(w, r, badRequest("M_MISSING_PARAMS", "missing parameters: public_key"))
		return
	}
	ok, err := s.svc.IsValidPublicKey(r.Context(), key)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]bool{"valid": ok})
}

func (s *Server) ephemeralIsValid(w http.ResponseWriter, r *http.Request) {
	key := r.URL.Query().Get("public_key")
	if key == "" {
		s.writeError(w, r, badRequest("M_MISSING_PARAMS", "missing parameters: public_key"))
		return
	}
	ok, err := s.svc.IsValidEphemeralKey(r.Context(), key)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]bool{"valid": ok})
}
