package web

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"time"
)

// Cookie names carry the __Host- prefix: the browser then accepts them only with Secure, Path=/
// and no Domain, so a sibling subdomain cannot plant or overwrite them.
const (
	sessionCookie = "__Host-ozo_session"
	csrfCookie    = "__Host-ozo_csrf"
	langCookie    = "__Host-ozo_lang"
	// CSRFField is the form field that carries the CSRF token.
	CSRFField = "csrf_token"
)

// Session is per-browser state kept in a sealed cookie: the server stores nothing, and the
// browser can neither read nor change it.
type Session struct {
	Values  map[string]string `json:"v"`
	Expires time.Time         `json:"e"`
}

// SessionLifetime bounds a session that a page does not renew.
const SessionLifetime = 30 * time.Minute

// LoadSession returns the browser's session, or an empty one when it has none, it was tampered
// with or it has expired.
func (h *Handler) LoadSession(r *http.Request) *Session {
	empty := &Session{Values: map[string]string{}}
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return empty
	}
	plain, ok := h.open(c.Value)
	if !ok {
		return empty
	}
	var s Session
	if json.Unmarshal(plain, &s) != nil || time.Now().After(s.Expires) || s.Values == nil {
		return empty
	}
	return &s
}

// SaveSession seals s into the session cookie, valid for SessionLifetime from now.
func (h *Handler) SaveSession(w http.ResponseWriter, s *Session) {
	s.Expires = time.Now().Add(SessionLifetime).Truncate(time.Second)
	plain, _ := json.Marshal(s)
	http.SetCookie(w, h.cookie(sessionCookie, h.seal(plain), SessionLifetime, http.SameSiteLaxMode))
}

// ClearSession removes the session cookie, as at logout.
func (h *Handler) ClearSession(w http.ResponseWriter) {
	http.SetCookie(w, h.cookie(sessionCookie, "", -1, http.SameSiteLaxMode))
}

// cookie is Secure and HttpOnly always. Lax lets a session survive the redirect back from an
// identity provider; the CSRF token, not SameSite, is what protects the forms.
func (h *Handler) cookie(name, value string, maxAge time.Duration, same http.SameSite) *http.Cookie {
	c := &http.Cookie{Name: name, Value: value, Path: "/", Secure: true, HttpOnly: true, SameSite: same}
	if maxAge < 0 {
		c.MaxAge = -1
	} else if maxAge > 0 {
		c.MaxAge = int(maxAge / time.Second)
	}
	return c
}

func (h *Handler) seal(plain []byte) string {
	aead := h.aead()
	nonce := make([]byte, aead.NonceSize())
	rand.Read(nonce)
	return base64.RawURLEncoding.EncodeToString(aead.Seal(nonce, nonce, plain, []byte(sessionCookie)))
}

func (h *Handler) open(value string) ([]byte, bool) {
	raw, err := base64.RawURLEncoding.DecodeString(value)
	aead := h.aead()
	if err != nil || len(raw) < aead.NonceSize() {
		return nil, false
	}
	plain, err := aead.Open(nil, raw[:aead.NonceSize()], raw[aead.NonceSize():], []byte(sessionCookie))
	return plain, err == nil
}

func (h *Handler) aead() cipher.AEAD {
	block, err := aes.NewCipher(h.sessionKey)
	if err != nil {
		panic(err) // the key is 32 bytes by construction
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		panic(err)
	}
	return aead
}

// csrfToken returns the form token for this browser, first giving it a CSRF cookie if it has
// none. The cookie holds a random value and the form carries its HMAC under the server's key
// (a signed double-submit): a cross-site page can send the cookie but can neither read it nor
// compute the token.
func (h *Handler) csrfToken(w http.ResponseWriter, r *http.Request) string {
	c, err := r.Cookie(csrfCookie)
	var seed []byte
	if err == nil {
		seed, err = base64.RawURLEncoding.DecodeString(c.Value)
	}
	if err != nil || len(seed) != 32 {
		seed = make([]byte, 32)
		rand.Read(seed)
		// Strict: the token is needed only by forms this server served, never after a cross-site hop.
		http.SetCookie(w, h.cookie(csrfCookie, base64.RawURLEncoding.EncodeToString(seed), 0, http.SameSiteStrictMode))
		// A POST without the cookie fails the check below, whatever this new seed is.
		if !safeMethod(r.Method) {
			return ""
		}
	}
	mac := hmac.New(sha256.New, h.csrfKey)
	mac.Write(seed)
	return base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

// validCSRF checks the form's token against the cookie the request carries.
func (h *Handler) validCSRF(r *http.Request) bool {
	want := fromContext(r.Context()).csrf
	got := r.PostFormValue(CSRFField)
	return want != "" && hmac.Equal([]byte(got), []byte(want))
}
