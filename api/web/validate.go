package web

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"os"
	"regexp"

	"github.com/ozo-platform/ozo-identity/identity"
)

// TokenSubmitter checks a mailed validation token; *identity.Service is one.
type TokenSubmitter interface {
	// SubmitToken validates the session and returns its next_link, if any.
	SubmitToken(ctx context.Context, sid, clientSecret, token string) (string, error)
	AllowedNextLink(link string) bool
}

// validateData is what the validation page (ours or the operator's) gets. An operator's
// template has always had .Success and .Message; the rest is new.
type validateData struct {
	Success      bool
	Message      string // in the page's language
	SID          string
	ClientSecret string
	Lang         string
	CSRFField    string
	CSRF         string
	FormAction   string
}

// submitPage is an operator's validation page (validation.submit_page).
type submitPage struct {
	tmpl   *template.Template
	styles []string // CSP hashes of the template's <style> blocks
}

var styleBlock = regexp.MustCompile(`(?is)<style[^>]*>(.*?)</style>`)

func loadSubmitPage(path string) (*submitPage, error) {
	if path == "" {
		return nil, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read submit page: %w", err)
	}
	t, err := template.New("submit").Parse(string(data))
	if err != nil {
		return nil, fmt.Errorf("parse submit page %s: %w", path, err)
	}
	// Static <style> blocks keep working under the CSP through their hashes; inline script does not.
	p := &submitPage{tmpl: t}
	for _, m := range styleBlock.FindAllStringSubmatch(string(data), -1) {
		sum := sha256.Sum256([]byte(m[1]))
		p.styles = append(p.styles, "sha256-"+base64.StdEncoding.EncodeToString(sum[:]))
	}
	return p, nil
}

// SubmitTokenPage is where the link in the validation mail lands (GET submitToken): it checks the
// token, as the spec requires, and redirects to next_link or shows the result. A failed check
// offers a form to enter the mailed code by hand.
func (h *Handler) SubmitTokenPage(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	h.submitToken(w, r, q.Get("sid"), q.Get("client_secret"), q.Get("token"))
}

// confirmEmail is that form's target; Pages has checked its CSRF token.
func (h *Handler) confirmEmail(w http.ResponseWriter, r *http.Request) {
	h.submitToken(w, r, r.PostFormValue("sid"), r.PostFormValue("client_secret"), r.PostFormValue("token"))
}

func (h *Handler) submitToken(w http.ResponseWriter, r *http.Request, sid, secret, token string) {
	nextLink, err := h.tokens.SubmitToken(r.Context(), sid, secret, token)
	// Checked again here: a session stored before the allow-list was narrowed keeps its next_link.
	if err == nil && nextLink != "" && h.tokens.AllowedNextLink(nextLink) {
		http.Redirect(w, r, nextLink, http.StatusFound)
		return
	}
	pr := fromContext(r.Context())
	data := validateData{Success: err == nil, SID: sid, ClientSecret: secret, Lang: pr.lang,
		CSRFField: CSRFField, CSRF: pr.csrf, FormAction: PagePrefix + "validate/email"}
	status := http.StatusOK
	if err != nil {
		status = http.StatusBadRequest
		key := "validate.err.failed"
		var ie *identity.Error
		if errors.As(err, &ie) {
			switch ie.Code {
			case identity.CodeTokenIncorrect:
				key = "validate.err.token"
			case identity.CodeSessionExpired:
				key = "validate.err.expired"
			case identity.CodeLimitExceeded:
				key = "validate.err.attempts"
			case identity.CodeNoValidSession, identity.CodeInvalidParam:
				key = "validate.err.invalid"
			}
		} else {
			h.Error(w, r, http.StatusInternalServerError, "error.internal", err)
			return
		}
		data.Message = translator(pr.lang)(key)
	}
	if h.submit == nil {
		h.Render(w, r, status, "validate", data)
		return
	}
	h.renderOperator(w, r, status, data)
}

func (h *Handler) renderOperator(w http.ResponseWriter, r *http.Request, status int, data validateData) {
	pr := fromContext(r.Context())
	pr.style = h.submit.styles
	var buf bytes.Buffer
	if err := h.submit.tmpl.Execute(&buf, data); err != nil {
		h.Error(w, r, http.StatusInternalServerError, "error.internal", fmt.Errorf("operator submit page: %w", err))
		return
	}
	setSecurityHeaders(w.Header(), pr.style)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}
