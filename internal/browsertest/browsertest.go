// Package browsertest drives headless Chromium from Go tests (through chromedp) to check pages
// as a person sees them, including an axe-core accessibility scan run inside the page.
//
// Without Chromium or axe-core (npm ci --prefix e2e/js) a test skips, and fails when CI=true.
package browsertest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
)

// Options tune the browser.
type Options struct {
	// AcceptLanguage is sent with every request ("nl", "en-GB,en;q=0.8"); "" keeps Chromium's.
	AcceptLanguage string
	// IgnoreCertErrors trusts any certificate, for servers with a test CA.
	IgnoreCertErrors bool
	// Timeout bounds each action; zero means 20 seconds.
	Timeout time.Duration
}

// Browser is one headless Chromium with its own profile (cookies), closed when the test ends.
type Browser struct {
	t       testing.TB
	ctx     context.Context
	timeout time.Duration
	shots   int
}

// New starts Chromium for t.
func New(t testing.TB, opts Options) *Browser {
	t.Helper()
	path := chromiumPath()
	if path == "" {
		missing(t, "Chromium not found (set CHROMIUM or install chromium)")
	}
	flags := append(chromedp.DefaultExecAllocatorOptions[:0:0], chromedp.DefaultExecAllocatorOptions[:]...)
	flags = append(flags, chromedp.ExecPath(path), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true), chromedp.UserDataDir(t.TempDir()))
	if opts.IgnoreCertErrors {
		flags = append(flags, chromedp.IgnoreCertErrors)
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), flags...)
	ctx, cancel := chromedp.NewContext(actx)
	b := &Browser{t: t, ctx: ctx, timeout: opts.Timeout}
	if b.timeout == 0 {
		b.timeout = 20 * time.Second
	}
	t.Cleanup(func() {
		if t.Failed() {
			b.Screenshot("failure")
		}
		cancel()
		cancelAlloc()
	})
	// The first Do starts the browser and binds it to ctx, which has no timeout.
	if err := chromedp.Do(ctx, chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		if opts.AcceptLanguage == "" {
			return nil
		}
		if _, err := cdp.Call(ctx, tg, network.Enable, network.EnableParams{}); err != nil {
			return err
		}
		_, err := cdp.Call(ctx, tg, network.SetExtraHTTPHeaders,
			network.SetExtraHTTPHeadersParams{Headers: network.Headers{"Accept-Language": opts.AcceptLanguage}})
		return err
	})); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return b
}

func chromiumPath() string {
	if p := os.Getenv("CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

func missing(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s; CI=true needs it", why)
	}
	t.Skip(why)
}

func (b *Browser) limit() (context.Context, context.CancelFunc) {
	return context.WithTimeout(b.ctx, b.timeout)
}

func (b *Browser) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := b.limit()
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		b.t.Fatalf("browser: %s: %v", what, err)
	}
}

func get[T any](b *Browser, what string, a chromedp.Action[T]) T {
	b.t.Helper()
	ctx, cancel := b.limit()
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		b.t.Fatalf("browser: %s: %v", what, err)
	}
	return v
}

// Open navigates to url, waits for the page and returns its HTTP status.
func (b *Browser) Open(url string) int {
	b.t.Helper()
	resp := get(b, "open "+url, chromedp.NavigateResponse(url))
	return int(resp.Status)
}

// Fill types value into the field matched by the CSS selector, replacing what was there.
// Not chromedp's Clear and SendKeys: Clear sets the value attribute, and SendKeys reads the
// node's attributes without its lock while that change arrives (a data race in chromedp
// v0.23.0 that -race reports); emptying the focused field's value and typing into it does the
// same without either.
func (b *Browser) Fill(selector, value string) {
	b.t.Helper()
	b.do("focus "+selector, chromedp.Focus(chromedp.CSS(selector), chromedp.NodeVisible))
	quoted, _ := json.Marshal(selector)
	clear := fmt.Sprintf(`(() => { const e = document.activeElement;
		if (!e || !e.matches(%s) || !("value" in e)) return false; e.value = ""; return true })()`, quoted)
	if !get(b, "clear "+selector, chromedp.Evaluate[bool](clear)) {
		b.t.Fatalf("browser: clear %s: focus did not land on it, or it holds no value", selector)
	}
	b.do("type into "+selector, chromedp.KeyEvent(value))
}

// SetValue sets a field's value directly, hidden fields included (to tamper with a form).
func (b *Browser) SetValue(selector, value string) {
	b.t.Helper()
	b.do("set "+selector, chromedp.SetValue(chromedp.CSS(selector), value))
}

// Submit clicks the element matched by selector (a submit button), waits for the page it leads
// to and returns that page's HTTP status.
func (b *Browser) Submit(selector string) int {
	b.t.Helper()
	ctx, cancel := b.limit()
	defer cancel()
	resp, err := chromedp.RunResponse(ctx, chromedp.Click(chromedp.CSS(selector)))
	if err != nil {
		b.t.Fatalf("browser: submit %s: %v", selector, err)
	}
	return int(resp.Status)
}

// Text returns the visible text of the first element matched by the CSS selector.
func (b *Browser) Text(selector string) string {
	b.t.Helper()
	return strings.TrimSpace(get(b, "text of "+selector, chromedp.Text(chromedp.CSS(selector))))
}

// HTML returns the document as the browser holds it.
func (b *Browser) HTML() string {
	b.t.Helper()
	return get(b, "read DOM", chromedp.OuterHTML(chromedp.CSS("html")))
}

// Eval runs a JavaScript expression in the page through DevTools (so the page's CSP does not
// apply) and decodes its result into T.
func Eval[T any](b *Browser, expr string) T {
	b.t.Helper()
	return get(b, "evaluate", chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
}

// Location returns the page's URL.
func (b *Browser) Location() string {
	b.t.Helper()
	return get(b, "location", chromedp.Location())
}

// Screenshot saves a full-page PNG under ArtifactDir and returns its path ("" if it failed).
func (b *Browser) Screenshot(name string) string {
	ctx, cancel := b.limit()
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Logf("screenshot %s: %v", name, err)
		return ""
	}
	b.shots++
	path := filepath.Join(ArtifactDir(b.t), fmt.Sprintf("%02d-%s.png", b.shots, safeName(name)))
	if err := os.WriteFile(path, png, 0o644); err != nil {
		b.t.Logf("screenshot %s: %v", name, err)
		return ""
	}
	b.t.Logf("screenshot: %s", path)
	return path
}

var unsafeChars = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

func safeName(s string) string { return unsafeChars.ReplaceAllString(s, "_") }

// ArtifactDir is where a test's screenshots go: $OZO_TEST_ARTIFACTS/<test name>, or a directory
// under the system temp dir that outlives the test, so that CI can keep it.
func ArtifactDir(t testing.TB) string {
	root := os.Getenv("OZO_TEST_ARTIFACTS")
	if root == "" {
		root = filepath.Join(os.TempDir(), "ozo-test-artifacts")
	}
	dir := filepath.Join(root, safeName(t.Name()))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("artifact dir: %v", err)
	}
	return dir
}

// Violation is one axe-core rule that failed.
type Violation struct {
	ID          string `json:"id"`
	Impact      string `json:"impact"`
	Description string `json:"description"`
	HelpURL     string `json:"helpUrl"`
	Nodes       []struct {
		Target []any  `json:"target"`
		HTML   string `json:"html"`
	} `json:"nodes"`
}

// Axe runs axe-core (WCAG 2.x A and AA rules) on the current page and returns its violations.
// The script goes in through DevTools, so the page's CSP need not allow it.
func (b *Browser) Axe() []Violation {
	b.t.Helper()
	src := axeSource(b.t)
	if !Eval[bool](b, src+"\n;typeof axe === 'object'") {
		b.t.Fatal("axe-core did not load")
	}
	raw := Eval[string](b, `axe.run(document, {runOnly: {type: "tag",
		values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]}}).then(r => JSON.stringify(r.violations))`)
	var v []Violation
	if err := json.Unmarshal([]byte(raw), &v); err != nil {
		b.t.Fatalf("axe-core result: %v", err)
	}
	return v
}

// RequireAccessible fails the test on any serious or critical axe-core violation and logs the rest.
func (b *Browser) RequireAccessible(page string) {
	b.t.Helper()
	for _, v := range b.Axe() {
		msg := fmt.Sprintf("%s: axe %s (%s): %s %s", page, v.ID, v.Impact, v.Description, v.HelpURL)
		for _, n := range v.Nodes {
			msg += "\n\t" + n.HTML
		}
		if v.Impact == "serious" || v.Impact == "critical" {
			b.t.Error(msg)
		} else {
			b.t.Log(msg)
		}
	}
}

// axeSource reads axe.min.js from e2e/js/node_modules, found from the module root.
func axeSource(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("browsertest: no go.mod above the test's directory")
		}
		dir = parent
	}
	src, err := os.ReadFile(filepath.Join(dir, "e2e", "js", "node_modules", "axe-core", "axe.min.js"))
	if err != nil {
		missing(t, "axe-core not installed (npm ci --prefix e2e/js)")
	}
	return string(src)
}
