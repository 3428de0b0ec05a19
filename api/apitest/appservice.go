package apitest

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
)

// ASToken is the application-service token the stand-in accepts on its client-server API
// (ozo_accounts.homeserver.as_token).
const ASToken = "as-token-of-the-ozo-identity-tests"

// appService is the stand-in's client-server API as an application service uses it for OZO
// accounts: register, login (m.login.application_service), display name, logout/all, and whoami
// for the access tokens it issued.
type appService struct {
	users      map[string]string // user ID → display name
	sessions   map[string]string // access token → user ID
	failLogins int
	logins     int
}

func (hs *Homeserver) mountAppService(mux *http.ServeMux) {
	hs.as = appService{users: map[string]string{}, sessions: map[string]string{}}
	mux.HandleFunc("POST /_matrix/client/v3/register", hs.asRegister)
	mux.HandleFunc("POST /_matrix/client/v3/login", hs.asLogin)
	mux.HandleFunc("PUT /_matrix/client/v3/profile/{user}/displayname", hs.asDisplayName)
	mux.HandleFunc("POST /_matrix/client/v3/logout/all", hs.asLogoutAll)
	mux.HandleFunc("GET /_matrix/client/v3/account/whoami", hs.whoami)
}

// FailLogins makes the next n application-service logins fail with 502 M_UNKNOWN, as a
// homeserver behind a restarting proxy answers.
func (hs *Homeserver) FailLogins(n int) {
	hs.mu.Lock()
	hs.as.failLogins = n
	hs.mu.Unlock()
}

// Logins counts the application-service logins answered with a session.
func (hs *Homeserver) Logins() int {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	return hs.as.logins
}

// Users returns the users the application service registered, with their display names.
func (hs *Homeserver) Users() map[string]string {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	out := map[string]string{}
	for u, n := range hs.as.users {
		out[u] = n
	}
	return out
}

// asAuthorized checks the application service's token.
func asAuthorized(w http.ResponseWriter, r *http.Request) bool {
	if r.Header.Get("Authorization") != "Bearer "+ASToken {
		writeJSON(w, http.StatusUnauthorized, map[string]string{"errcode": "M_UNKNOWN_TOKEN", "error": "not the application service"})
		return false
	}
	return true
}

func (hs *Homeserver) asRegister(w http.ResponseWriter, r *http.Request) {
	if !asAuthorized(w, r) {
		return
	}
	var req struct{ Type, Username string }
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Type != "m.login.application_service" || req.Username == "" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"errcode": "M_BAD_JSON", "error": "want an application service registration"})
		return
	}
	userID := "@" + req.Username + ":" + hs.Name
	hs.mu.Lock()
	defer hs.mu.Unlock()
	if _, ok := hs.as.users[userID]; ok {
		writeJSON(w, http.StatusBadRequest, map[string]string{"errcode": "M_USER_IN_USE", "error": "taken"})
		return
	}
	hs.as.users[userID] = ""
	writeJSON(w, http.StatusOK, map[string]string{"user_id": userID})
}

func (hs *Homeserver) asLogin(w http.ResponseWriter, r *http.Request) {
	if !asAuthorized(w, r) {
		return
	}
	var req struct {
		Type       string
		Identifier struct{ Type, User string }
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Type != "m.login.application_service" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"errcode": "M_BAD_JSON", "error": "want an application service login"})
		return
	}
	hs.mu.Lock()
	defer hs.mu.Unlock()
	if hs.as.failLogins > 0 {
		hs.as.failLogins--
		writeJSON(w, http.StatusBadGateway, map[string]string{"errcode": "M_UNKNOWN", "error": "upstream unavailable"})
		return
	}
	if _, ok := hs.as.users[req.Identifier.User]; !ok {
		writeJSON(w, http.StatusForbidden, map[string]string{"errcode": "M_FORBIDDEN", "error": "no such user"})
		return
	}
	token, device := randomString(), strings.ToUpper(randomString()[:10])
	hs.as.sessions[token] = req.Identifier.User
	hs.as.logins++
	writeJSON(w, http.StatusOK, map[string]string{"user_id": req.Identifier.User, "access_token": token, "device_id": device})
}

func (hs *Homeserver) asDisplayName(w http.ResponseWriter, r *http.Request) {
	if !asAuthorized(w, r) {
		return
	}
	var req struct{ Displayname string }
	json.NewDecoder(r.Body).Decode(&req)
	user := r.PathValue("user")
	hs.mu.Lock()
	defer hs.mu.Unlock()
	if _, ok := hs.as.users[user]; !ok || r.URL.Query().Get("user_id") != user {
		writeJSON(w, http.StatusForbidden, map[string]string{"errcode": "M_FORBIDDEN", "error": "not this user"})
		return
	}
	hs.as.users[user] = req.Displayname
	writeJSON(w, http.StatusOK, map[string]any{})
}

func (hs *Homeserver) asLogoutAll(w http.ResponseWriter, r *http.Request) {
	if !asAuthorized(w, r) {
		return
	}
	user := r.URL.Query().Get("user_id")
	hs.mu.Lock()
	defer hs.mu.Unlock()
	for tok, u := range hs.as.sessions {
		if u == user {
			delete(hs.as.sessions, tok)
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{})
}

// whoami answers for the access tokens the application-service logins issued.
func (hs *Homeserver) whoami(w http.ResponseWriter, r *http.Request) {
	hs.mu.Lock()
	user, ok := hs.as.sessions[strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")]
	hs.mu.Unlock()
	if !ok {
		writeJSON(w, http.StatusUnauthorized, map[string]string{"errcode": "M_UNKNOWN_TOKEN", "error": "unknown token"})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"user_id": user})
}

func randomString() string {
	b := make([]byte, 18)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}
