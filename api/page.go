package api

import (
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"os"

	"github.com/ozo-platform/ozo-identity/identity"
)

// SubmitPage is the page a person sees after clicking the link in a validation mail.
type SubmitPage struct{ tmpl *template.Template }

const defaultSubmitPage = `<!doctype html>
<html lang="nl"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{if .Success}}E-mailadres bevestigd{{else}}Bevestigen mislukt{{end}}</title>
<style>body{font-family:system-ui,sans-serif;max-width:36em;margin:4em auto;padding:0 1em;color:#1b2733}
h1{font-size:1.4em}.ok{color:#1a7f37}.err{color:#b42318}</style></head>
<body>{{if .Success}}<h1 class="ok">E-mailadres bevestigd</h1>
<p>Uw e-mailadres is bevestigd. U kunt dit venster sluiten en teruggaan naar uw chat-app.</p>
<p lang="en">Your email address has been verified. You can close this window and return to your chat app.</p>
{{else}}<h1 class="err">Bevestigen mislukt</h1><p>{{.Message}}</p>
<p>Vraag in uw chat-app een nieuwe bevestigingsmail aan.</p>
<p lang="en">Verification failed. Request a new verification email in your chat app.</p>{{end}}
</body></html>`

// DefaultSubmitPage returns the built-in page.
func DefaultSubmitPage() *SubmitPage {
	return &SubmitPage{tmpl: template.Must(template.New("submit").Parse(defaultSubmitPage))}
}

// LoadSubmitPage parses an operator's page; it gets .Success (bool) and .Message (string).
func LoadSubmitPage(path string) (*SubmitPage, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read submit page: %w", err)
	}
	t, err := template.New("submit").Parse(string(data))
	if err != nil {
		return nil, fmt.Errorf("parse submit page %s: %w", path, err)
	}
	return &SubmitPage{tmpl: t}, nil
}

func (p *SubmitPage) render(w http.ResponseWriter, err error) {
	data := struct {
		Success bool
		Message string
	}{Success: err == nil}
	status := http.StatusOK
	if err != nil {
		status = http.StatusBadRequest
		data.Message = "De bevestiging is mislukt."
		var ie *identity.Error
		if errors.As(err, &ie) {
			switch ie.Code {
			case identity.CodeTokenIncorrect:
				data.Message = "De code in de link klopt niet."
			case identity.CodeSessionExpired:
				data.Message = "De link is verlopen."
			case identity.CodeLimitExceeded:
				data.Message = "Er zijn te veel verkeerde pogingen gedaan."
			case identity.CodeNoValidSession, identity.CodeInvalidParam:
				data.Message = "De link is ongeldig of onvolledig."
			}
		} else {
			status = http.StatusInternalServerError
		}
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
	w.WriteHeader(status)
	p.tmpl.Execute(w, data)
}
