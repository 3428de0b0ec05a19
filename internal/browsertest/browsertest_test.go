package browsertest_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"testing"

	"github.com/ozo-platform/ozo-identity/internal/browsertest"
)

// The helper sees what a person sees: the form round trip, the Accept-Language it was given,
// and axe-core reports a page that a screen reader cannot use (so a clean report means something).
func TestBrowser(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /form", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `<!doctype html><html lang="en"><title>form</title><main><h1>Form</h1><p id="lang">`+
			r.Header.Get("Accept-Language")+`</p><form method="post" action="/done"><label for="n">Name</label>`+
			`<input id="n" name="n"><button type="submit">Send</button></form></main></html>`)
	})
	mux.HandleFunc("POST /done", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusAccepted)
		io.WriteString(w, `<!doctype html><html lang="en"><title>done</title><main><h1>`+
			r.PostFormValue("n")+`</h1></main></html>`)
	})
	mux.HandleFunc("GET /bad", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `<!doctype html><html><title>bad</title><input name="nolabel"><img src="/x.png"></html>`)
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()

	b := browsertest.New(t, browsertest.Options{AcceptLanguage: "nl"})
	if st := b.Open(srv.URL + "/form"); st != http.StatusOK {
		t.Fatalf("open: %d", st)
	}
	if got := b.Text("#lang"); got != "nl" {
		t.Fatalf("Accept-Language %q", got)
	}
	if v := b.Axe(); len(v) != 0 {
		t.Fatalf("a labelled form has violations: %+v", v)
	}
	b.Fill("#n", "Zorg & Welzijn")
	if st := b.Submit(`button[type="submit"]`); st != http.StatusAccepted {
		t.Fatalf("submit: %d", st)
	}
	if got := b.Text("h1"); got != "Zorg & Welzijn" {
		t.Fatalf("posted %q", got)
	}

	b.Open(srv.URL + "/bad")
	var ids []string
	for _, v := range b.Axe() {
		if v.Impact == "serious" || v.Impact == "critical" {
			ids = append(ids, v.ID)
		}
	}
	for _, want := range []string{"html-has-lang", "image-alt", "label"} {
		if !slices.Contains(ids, want) {
			t.Errorf("axe-core missed %s; found %v", want, ids)
		}
	}
	shot := b.Screenshot("bad")
	if data, err := os.ReadFile(shot); err != nil || len(data) < 8 || string(data[1:4]) != "PNG" {
		t.Fatalf("screenshot %s: %v", shot, err)
	}
}
