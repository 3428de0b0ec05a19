package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/ozo-platform/ozo-identity/lookup/mcsd"
)

// syncProgress shows a running sync on a terminal or in a log. Directories sync concurrently,
// so a terminal gets one line per finished directory above one live bar for the phase (the
// LRZA, then the providers) naming the directories still busy; a log gets plain lines.
// Progress events arrive from several goroutines; mu serialises them and every write.
type syncProgress struct {
	mu     sync.Mutex
	w      io.Writer
	tty    bool
	width  int // terminal columns
	bar    *progressbar.ProgressBar
	phase  string // Kind of the directories the bar counts
	active map[string]*activeDir
	order  []string // active directories, most recently heard from last
	shown  time.Time
	stop   chan struct{}
	// waitNote: a directory silent this long is named as the one waited on, on a terminal in
	// the bar and in a log once per waitNote.
	waitNote time.Duration
	now      func() time.Time
}

type activeDir struct {
	typ            string
	fetched        int
	started, heard time.Time
	noted          time.Time // last "waiting on" line in a log
}

// newSyncProgress draws bars when w is a terminal and plain lines otherwise.
func newSyncProgress(w io.Writer) *syncProgress {
	p := &syncProgress{w: w, active: map[string]*activeDir{}, stop: make(chan struct{}), waitNote: 10 * time.Second, now: time.Now}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.tty, p.width = true, 80
		if cols, _, err := term.GetSize(int(f.Fd())); err == nil && cols > 0 {
			p.width = cols
		}
		p.waitNote = 2 * time.Second
	}
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-p.stop:
				return
			case now := <-t.C:
				p.tick(now)
			}
		}
	}()
	return p
}

// waitedOn is the active directory silent the longest, if it has been silent for waitNote.
func (p *syncProgress) waitedOn(now time.Time) (string, *activeDir) {
	var name string
	var d *activeDir
	for n, a := range p.active {
		if d == nil || a.heard.Before(d.heard) || a.heard.Equal(d.heard) && n < name {
			name, d = n, a
		}
	}
	if d == nil || now.Sub(d.heard) < p.waitNote {
		return "", nil
	}
	return name, d
}

// waitingLine names a directory the sync waits on, what for and since when.
func waitingLine(name string, d *activeDir, now time.Time) string {
	what := "its first page"
	if d.typ != "" {
		what = fmt.Sprintf("%s after %d entries", d.typ, d.fetched)
	}
	return fmt.Sprintf("waiting on %s (%s): no answer for %s, %s since it started", clean(name, 300), what,
		now.Sub(d.heard).Round(time.Second), now.Sub(d.started).Round(time.Second))
}

// tick keeps a silent directory visible: the bar is redrawn with it, a log gets a line.
func (p *syncProgress) tick(now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tty {
		if p.bar != nil && !p.bar.IsFinished() {
			p.bar.Describe(p.descriptionAt(now))
		}
		return
	}
	name, d := p.waitedOn(now)
	if d == nil || now.Sub(d.noted) < p.waitNote {
		return
	}
	d.noted = now
	fmt.Fprintln(p.w, "  "+waitingLine(name, d, now))
}

// redrawEvery bounds how often page events redraw the bar; starts and ends always do.
const redrawEvery = 100 * time.Millisecond

// Event is the mcsd.Options.Progress callback.
func (p *syncProgress) Event(ev mcsd.Progress) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	if p.now != nil {
		now = p.now()
	}
	if !p.tty {
		switch {
		case ev.Done:
			delete(p.active, ev.Directory)
			if ev.Report != nil {
				fmt.Fprintln(p.w, doneLine(*ev.Report, now))
			}
		case ev.Type == "" && ev.Fetched == 0:
			p.active[ev.Directory] = &activeDir{started: now, heard: now}
			fmt.Fprintf(p.w, "  syncing %s (%s)\n", clean(ev.Directory, 300), ev.Kind)
		default:
			if d := p.active[ev.Directory]; d != nil {
				d.typ, d.fetched, d.heard = ev.Type, ev.Fetched, now
			}
		}
		return
	}
	if ev.Kind != p.phase || p.bar == nil {
		p.newBar(ev.Kind, ev.Total)
	}
	if ev.Done {
		delete(p.active, ev.Directory)
		p.order = deleteString(p.order, ev.Directory)
		p.bar.Clear()
		if ev.Report != nil {
			fmt.Fprintln(p.w, doneLine(*ev.Report, now))
		}
		p.bar.Describe(p.description())
		p.bar.Add(1)
		p.shown = time.Now()
		return
	}
	d := p.active[ev.Directory]
	started := d == nil
	if started {
		d = &activeDir{started: now}
		p.active[ev.Directory] = d
	}
	d.typ, d.fetched, d.heard = ev.Type, ev.Fetched, now
	p.order = append(deleteString(p.order, ev.Directory), ev.Directory)
	if started || time.Since(p.shown) >= redrawEvery {
		p.bar.Describe(p.description())
		p.shown = time.Now()
	}
}

// Write lets log lines through without breaking the bar.
func (p *syncProgress) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bar != nil && !p.bar.IsFinished() {
		p.bar.Clear()
		defer p.bar.Describe(p.description())
	}
	return p.w.Write(b)
}

// Close removes an unfinished bar, as after an interrupted run, and stops the clock.
func (p *syncProgress) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stop != nil {
		select {
		case <-p.stop:
		default:
			close(p.stop)
		}
	}
	if p.bar != nil && !p.bar.IsFinished() {
		p.bar.Clear()
	}
	p.bar = nil
}

func (p *syncProgress) newBar(kind string, total int) {
	if p.bar != nil && !p.bar.IsFinished() {
		p.bar.Clear()
	}
	p.phase = kind
	p.active, p.order = map[string]*activeDir{}, nil
	p.bar = progressbar.NewOptions(max(total, 1),
		progressbar.OptionSetWriter(p.w),
		progressbar.OptionSetWidth(20),
		progressbar.OptionShowCount(),
		progressbar.OptionSetPredictTime(false),
		progressbar.OptionSetElapsedTime(true),
		progressbar.OptionClearOnFinish(),
		progressbar.OptionSetDescription(phaseName(kind)))
}

// description names the phase and the directory heard from last, fitted to the terminal so
// that the bar never wraps (a wrapped bar cannot be redrawn in place).
func (p *syncProgress) description() string { return p.descriptionAt(time.Now()) }

func (p *syncProgress) descriptionAt(now time.Time) string {
	desc := phaseName(p.phase)
	if name, d := p.waitedOn(now); d != nil {
		// A directory that has not answered for a while is what the sync waits on: name it.
		return truncate(desc+" "+fmt.Sprintf("waiting on %s %s (%s)", shortName(name), now.Sub(d.heard).Round(time.Second),
			d.typ), max(p.width-45, 10))
	}
	if n := len(p.order); n > 0 {
		last := p.order[n-1]
		d := p.active[last]
		desc += " " + shortName(last)
		if d.typ != "" {
			desc += fmt.Sprintf(" %s %d", d.typ, d.fetched)
		}
		if n > 1 {
			desc += fmt.Sprintf(" (+%d)", n-1)
		}
	}
	// The bar, the count and the elapsed time take about 45 columns.
	return truncate(desc, max(p.width-45, 10))
}

func phaseName(kind string) string {
	if kind == "lrza" {
		return "LRZA"
	}
	return "providers"
}

// doneLine is the one-line outcome of a directory, for the terminal and for logs.
func doneLine(r mcsd.DirectoryReport, now time.Time) string {
	dir := clean(r.Directory, 300)
	switch {
	case r.Skipped != "":
		return fmt.Sprintf("- %s (%s): skipped: %s", dir, r.Kind, skipReason(r, now))
	case r.Err != nil:
		return fmt.Sprintf("✗ %s (%s): fetched %d, applied %d, then failed after %s: %s", dir, r.Kind,
			r.Fetched, r.Applied, r.Duration.Round(time.Millisecond), reason(r.Err))
	default:
		return fmt.Sprintf("✓ %s (%s): fetched %d, applied %d, deleted %d, rejected %d in %s", dir, r.Kind,
			r.Fetched, r.Applied, r.Deleted, r.Rejected, r.Duration.Round(time.Millisecond))
	}
}

// shortName is the part of a base URL that tells directories apart: the path, or the host.
func shortName(base string) string {
	s := strings.TrimPrefix(strings.TrimPrefix(base, "https://"), "http://")
	s = strings.TrimSuffix(strings.TrimSuffix(s, "/"), "/fhir")
	if i := strings.IndexByte(s, '/'); i >= 0 && i < len(s)-1 {
		s = s[i+1:]
	}
	return clean(s, 60)
}

// clean makes text from directories safe for a terminal: control characters (escape sequences,
// line breaks, tabs that would break a table) become spaces, and it is cut to n runes.
func clean(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || r == unicode.ReplacementChar || unicode.In(r, unicode.Bidi_Control) {
			return ' '
		}
		return r
	}, s)
	return truncate(s, n)
}

func truncate(s string, n int) string {
	if n <= 0 {
		return ""
	}
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

func deleteString(list []string, s string) []string {
	for i, v := range list {
		if v == s {
			return append(list[:i], list[i+1:]...)
		}
	}
	return list
}
