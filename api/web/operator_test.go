package web_test

import (
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ozo-platform/ozo-identity/api/apitest"
	"github.com/ozo-platform/ozo-identity/config"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
)

// An operator's validation.submit_page keeps working from api/web: it gets .Success and
// .Message (in the page's language), and its static <style> block is allowed by hash while the
// CSP still refuses any other inline style and all script.
func TestOperatorSubmitPage(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		const style = "h1{color:#005ca9}"
		path := filepath.Join(t.TempDir(), "submit.html")
		page := `<!doctype html><html><head><style>` + style + `</style></head><body>` +
			`{{if .Success}}<h1>Gelukt bij Zorggroep</h1>{{else}}<h1>Helaas</h1><p>{{.Message}}</p>{{end}}</body></html>`
		if err := os.WriteFile(path, []byte(page), 0o600); err != nil {
			t.Fatal(err)
		}
		h := apitest.New(t, e, func(c *config.Config) { c.Validation.SubmitPage = path })
		u := h.NewUser(t, "op")
		s, token := h.RequestToken(t, u, "op@example.org")
		link := func(tok, lang string) string {
			return apitest.V2 + "/validate/email/submitToken?sid=" + s.SID + "&client_secret=" + s.ClientSecret + "&token=" + tok + lang
		}
		sum := sha256.Sum256([]byte(style))
		hash := "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"

		bad := h.Get(t, link("nope", ""), "")
		csp := bad.Header.Get("Content-Security-Policy")
		if bad.Status != http.StatusBadRequest || !strings.Contains(string(bad.Body), "<p>De code in de link klopt niet.</p>") ||
			!strings.Contains(csp, "style-src 'self' "+hash) || strings.Contains(csp, "unsafe-inline") {
			t.Fatalf("wrong token: HTTP %d CSP %q\n%s", bad.Status, csp, bad.Body)
		}
		if en := h.Get(t, link("nope", "&lang=en"), ""); !strings.Contains(string(en.Body), "<p>The code in the link is not correct.</p>") {
			t.Fatalf("?lang=en:\n%s", en.Body)
		}
		ok := h.Get(t, link(token, ""), "")
		if ok.Status != http.StatusOK || !strings.Contains(string(ok.Body), "Gelukt bij Zorggroep") {
			t.Fatalf("right token: HTTP %d\n%s", ok.Status, ok.Body)
		}
	})
}
