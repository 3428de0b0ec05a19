package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/ozo-platform/ozo-identity/app"
	"github.com/ozo-platform/ozo-identity/audit"
	"github.com/ozo-platform/ozo-identity/config"
	"github.com/ozo-platform/ozo-identity/identity"
)

// importOptions are the flags of "admin bindings import".
type importOptions struct {
	file    string
	format  string // "ndjson", "csv" or "" to decide by extension and content
	strict  bool
	batch   int
	restart bool
}

// maxImportLine bounds one input line; a binding is well under 1 KiB.
const maxImportLine = 64 << 10

// maxReported bounds how many invalid lines are listed one by one.
const maxReported = 1000

// importRecord is one input line: an entry, or why the line is not one.
type importRecord struct {
	line       int
	start, end int64 // byte offsets of the line in the file
	entry      identity.ImportEntry
	bad        string
}

type recordReader interface {
	// next returns the next record, or io.EOF.
	next() (importRecord, error)
}

// importMemoryLimit is the import's soft memory limit unless GOMEMLIMIT sets one.
const importMemoryLimit = 200 << 20

// importState is what a resumed import needs: where the last committed batch ended, and enough
// of the file to tell that it is still the same file.
type importState struct {
	File string `json:"file"`
	// Done is the SHA-256 of the (up to) 64 KiB before Offset: a fixed later line keeps it, a
	// different file does not.
	Done   string `json:"done_sha256"`
	Offset int64  `json:"offset"`
	Line   int    `json:"line"`
	Totals struct {
		Created, Updated, Unchanged, Superseded, Invalid int
	} `json:"totals"`
}

func statePath(file string) string { return file + ".import-state" }

// importBindings imports a file of bindings in transactions of opts.batch lines. After each
// committed batch it records the offset reached in FILE.import-state, so an interrupted import
// resumes there; re-importing what is already bound reports it unchanged.
func importBindings(ctx context.Context, cfg config.Config, opts importOptions, stdout, stderr io.Writer) error {
	if os.Getenv("GOMEMLIMIT") == "" {
		// A batch's garbage let the heap reach twice its live size: 410 MB at a million
		// bindings on PostgreSQL. A soft limit makes the collector run sooner near it
		// (235 MB, within the run-to-run noise in time); GOMEMLIMIT overrides it.
		debug.SetMemoryLimit(importMemoryLimit)
	}
	f, err := os.Open(opts.file)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	format, err := importFormat(opts.format, opts.file, f)
	if err != nil {
		return err
	}
	state := importState{File: filepath.Base(opts.file)}
	if !opts.restart {
		if prev, err := loadState(opts.file); err == nil {
			if done, err := doneHash(f, prev.Offset); err != nil || prev.Offset > fi.Size() || done != prev.Done {
				return fmt.Errorf("%s was recorded for a different file; remove it or use --restart", statePath(opts.file))
			}
			state = prev
		} else if !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	resumedAt := state.Line

	var reader recordReader
	if format == "csv" {
		reader, err = newCSVReader(f, state.Offset, state.Line)
	} else {
		reader, err = newNDJSONReader(f, state.Offset, state.Line)
	}
	if err != nil {
		return err
	}

	// Reading and parsing the next batch runs beside the transaction of the current one.
	prefetch := newPrefetchReader(ctx, reader, opts.batch)
	defer prefetch.stop()
	reader = prefetch

	log := newLogger(cfg, stderr)
	a, err := app.New(ctx, cfg, quieter(cfg, log))
	if err != nil {
		return err
	}
	defer a.Close()

	progress := newImportProgress(stderr, fi.Size(), state.Offset)
	defer progress.finish()
	if resumedAt > 0 {
		progress.printf("resuming %s after line %d (%s)\n", opts.file, resumedAt, statePath(opts.file))
	}
	reported := 0
	report := func(line int, msg string) {
		if !opts.strict { // in strict mode the line stops the run and is read again on resume
			state.Totals.Invalid++
		}
		if reported++; reported <= maxReported {
			progress.printf("line %d: %s\n", line, msg)
		} else if reported == maxReported+1 {
			progress.printf("more invalid lines; only the first %d are listed\n", maxReported)
		}
	}

	// A batch in flight when the import is interrupted still commits, so that the state file
	// and the database agree; the loop stops after it.
	dbctx := context.WithoutCancel(ctx)
	var batch []importRecord
	// commit imports batch and advances the state past it. In strict mode it stops at the first
	// invalid entry: the lines before it are imported, the state points at it.
	commit := func() error {
		if len(batch) == 0 {
			return nil
		}
		entries := make([]identity.ImportEntry, len(batch))
		for i, r := range batch {
			entries[i] = r.entry
		}
		rep, err := a.Service.ImportBindings(dbctx, entries, "import", opts.strict)
		if err != nil {
			return fmt.Errorf("import lines %d-%d: %w", batch[0].line, batch[len(batch)-1].line, err)
		}
		var stop *importRecord
		if opts.strict && len(rep.Invalid) > 0 {
			first := rep.Invalid[0]
			stop = &batch[first.Index]
			if rep, err = a.Service.ImportBindings(dbctx, entries[:first.Index], "import", true); err != nil {
				return fmt.Errorf("import lines before line %d: %w", stop.line, err)
			}
			batch = batch[:first.Index]
			report(stop.line, first.Code+": "+first.Message)
		} else {
			for _, inv := range rep.Invalid {
				report(batch[inv.Index].line, inv.Code+": "+inv.Message)
			}
		}
		if len(batch) > 0 {
			// Each changed binding has its record from the import's transaction; this one
			// says which lines of which file the CLI imported.
			if err := a.Store.AppendAudit(dbctx, audit.Record{Action: audit.ActionAdminCall, Outcome: audit.OutcomeSuccess,
				Actor:    audit.Agent{Kind: audit.AgentSystem, ID: "admin-cli"},
				Resource: fmt.Sprintf("admin bindings import %s lines %d-%d", state.File, batch[0].line, batch[len(batch)-1].line),
				Detail: fmt.Sprintf("created=%d updated=%d unchanged=%d superseded=%d invalid=%d",
					rep.Created, rep.Updated, rep.Unchanged, rep.Superseded, len(rep.Invalid))}); err != nil {
				return err
			}
			state.Offset, state.Line = batch[len(batch)-1].end, batch[len(batch)-1].line
		}
		state.Totals.Created += rep.Created
		state.Totals.Updated += rep.Updated
		state.Totals.Unchanged += rep.Unchanged
		state.Totals.Superseded += rep.Superseded
		if stop != nil {
			state.Offset, state.Line = stop.start, stop.line-1
		}
		if err := saveState(f, opts.file, &state); err != nil {
			return err
		}
		progress.set(state.Offset)
		batch = batch[:0]
		if stop != nil {
			return fmt.Errorf("line %d is invalid (--strict): lines before it are imported; fix it and run again to resume there", stop.line)
		}
		return nil
	}

	for {
		rec, err := reader.next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil && ctx.Err() != nil {
			return fmt.Errorf("interrupted after line %d; run again to resume: %w", state.Line, ctx.Err())
		}
		if err != nil {
			return err
		}
		if rec.bad != "" {
			if opts.strict {
				// Import what precedes the line, then stop with the state pointing at it.
				if err := commit(); err != nil {
					return err
				}
				report(rec.line, rec.bad)
				state.Offset, state.Line = rec.start, rec.line-1
				if err := saveState(f, opts.file, &state); err != nil {
					return err
				}
				return fmt.Errorf("line %d is invalid (--strict): lines before it are imported; fix it and run again to resume there", rec.line)
			}
			report(rec.line, rec.bad)
			continue
		}
		batch = append(batch, rec)
		if len(batch) >= opts.batch {
			if err := commit(); err != nil {
				return err
			}
			if ctx.Err() != nil {
				return fmt.Errorf("interrupted after line %d; run again to resume: %w", state.Line, ctx.Err())
			}
		}
	}
	if err := commit(); err != nil {
		return err
	}
	progress.finish()
	if err := os.Remove(statePath(opts.file)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	t := state.Totals
	resumed := ""
	if resumedAt > 0 {
		resumed = fmt.Sprintf(" (resumed after line %d)", resumedAt)
	}
	fmt.Fprintf(stdout, "imported %s%s: %d created, %d updated (rebound to another MXID), %d unchanged, %d superseded by a later line, %d invalid\n",
		opts.file, resumed, t.Created, t.Updated, t.Unchanged, t.Superseded, t.Invalid)
	if t.Invalid > 0 {
		return fmt.Errorf("%d invalid lines were skipped (listed above); everything else is imported", t.Invalid)
	}
	return nil
}

func doneHash(f *os.File, offset int64) (string, error) {
	from := max(0, offset-64<<10)
	buf := make([]byte, offset-from)
	if _, err := f.ReadAt(buf, from); err != nil && !(errors.Is(err, io.EOF) && len(buf) == 0) {
		return "", err
	}
	sum := sha256.Sum256(buf)
	return hex.EncodeToString(sum[:]), nil
}

// importFormat decides by the flag, then the extension, then the first non-blank byte.
func importFormat(flagValue, file string, f *os.File) (string, error) {
	switch flagValue {
	case "ndjson", "csv":
		return flagValue, nil
	case "":
	default:
		return "", fmt.Errorf("--format %q: want ndjson or csv", flagValue)
	}
	switch strings.ToLower(filepath.Ext(file)) {
	case ".csv":
		return "csv", nil
	case ".ndjson", ".jsonl", ".json":
		return "ndjson", nil
	}
	buf := make([]byte, 512)
	n, _ := f.ReadAt(buf, 0)
	if t := bytes.TrimLeft(bytes.TrimPrefix(buf[:n], utf8BOM), " \t\r\n"); len(t) > 0 && t[0] == '{' {
		return "ndjson", nil
	}
	return "csv", nil
}

var utf8BOM = []byte{0xEF, 0xBB, 0xBF}

func loadState(file string) (importState, error) {
	var st importState
	data, err := os.ReadFile(statePath(file))
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(data, &st); err != nil {
		return st, fmt.Errorf("%s: %w", statePath(file), err)
	}
	return st, nil
}

// saveState replaces the state file atomically, so a crash leaves the old or the new state.
func saveState(f *os.File, file string, st *importState) error {
	done, err := doneHash(f, st.Offset)
	if err != nil {
		return fmt.Errorf("record progress: %w", err)
	}
	st.Done = done
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp := statePath(file) + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("record progress: %w", err)
	}
	if err := os.Rename(tmp, statePath(file)); err != nil {
		return fmt.Errorf("record progress: %w", err)
	}
	return nil
}

// ndjsonReader reads one JSON object {"medium","address","mxid"} per line.
type ndjsonReader struct {
	r      *bufio.Reader
	offset int64
	line   int
}

func newNDJSONReader(f *os.File, offset int64, line int) (*ndjsonReader, error) {
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return nil, err
	}
	return &ndjsonReader{r: bufio.NewReaderSize(f, 256<<10), offset: offset, line: line}, nil
}

func (n *ndjsonReader) next() (importRecord, error) {
	for {
		raw, size, err := readLine(n.r)
		if size == 0 && errors.Is(err, io.EOF) {
			return importRecord{}, io.EOF
		}
		if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, errLineTooLong) {
			return importRecord{}, err
		}
		n.line++
		rec := importRecord{line: n.line, start: n.offset, end: n.offset + size}
		n.offset += size
		if errors.Is(err, errLineTooLong) {
			rec.bad = fmt.Sprintf("line longer than %d bytes", maxImportLine)
			return rec, nil
		}
		if n.line == 1 {
			raw = bytes.TrimPrefix(raw, utf8BOM)
		}
		raw = bytes.TrimSpace(raw)
		if len(raw) == 0 {
			continue
		}
		var e struct {
			Medium, Address, MXID *string
		}
		if err := json.Unmarshal(raw, &e); err != nil {
			rec.bad = "not a JSON object with string medium, address and mxid"
			return rec, nil
		}
		var missing []string
		for _, f := range []struct {
			name string
			v    *string
		}{{"medium", e.Medium}, {"address", e.Address}, {"mxid", e.MXID}} {
			if f.v == nil || *f.v == "" {
				missing = append(missing, f.name)
			}
		}
		if len(missing) > 0 {
			rec.bad = "missing " + strings.Join(missing, ", ")
			return rec, nil
		}
		rec.entry = identity.ImportEntry{Medium: *e.Medium, Address: *e.Address, MXID: *e.MXID}
		return rec, nil
	}
}

// prefetchReader reads records ahead in a goroutine, up to about one batch, so that the next
// batch is read and parsed while the current one is stored.
type prefetchReader struct {
	chunks  chan prefetched
	current []importRecord
	err     error
	cancel  context.CancelFunc
	done    chan struct{}
	stopped error // why the goroutine stopped early; read after chunks is closed
}

type prefetched struct {
	recs []importRecord
	err  error // after recs: io.EOF at the end
}

const prefetchChunk = 512

func newPrefetchReader(ctx context.Context, r recordReader, ahead int) *prefetchReader {
	ctx, cancel := context.WithCancel(ctx)
	p := &prefetchReader{chunks: make(chan prefetched, ahead/prefetchChunk+1), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		defer close(p.chunks)
		for {
			var c prefetched
			for len(c.recs) < prefetchChunk {
				rec, err := r.next()
				if err != nil {
					c.err = err
					break
				}
				c.recs = append(c.recs, rec)
			}
			select {
			case p.chunks <- c:
			case <-ctx.Done():
				p.stopped = ctx.Err()
				return
			}
			if c.err != nil {
				return
			}
		}
	}()
	return p
}

func (p *prefetchReader) next() (importRecord, error) {
	for len(p.current) == 0 {
		if p.err != nil {
			return importRecord{}, p.err
		}
		c, ok := <-p.chunks
		if !ok {
			p.err = cmp.Or(p.stopped, io.EOF)
			continue
		}
		p.current, p.err = c.recs, c.err
	}
	rec := p.current[0]
	p.current = p.current[1:]
	return rec, nil
}

// stop ends the reading goroutine and waits for it, so the file can be closed.
func (p *prefetchReader) stop() {
	p.cancel()
	<-p.done
}

var errLineTooLong = errors.New("line too long")

// readLine returns the next line without its newline and the bytes it took, discarding the
// rest of a line longer than maxImportLine.
func readLine(r *bufio.Reader) ([]byte, int64, error) {
	var line []byte
	var size int64
	tooLong := false
	for {
		chunk, err := r.ReadSlice('\n')
		size += int64(len(chunk))
		if tooLong = tooLong || len(line)+len(chunk) > maxImportLine; !tooLong {
			line = append(line, chunk...)
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if tooLong {
			return nil, size, errLineTooLong
		}
		return bytes.TrimSuffix(line, []byte("\n")), size, err
	}
}

// csvReader reads "medium,address,mxid" rows under a header naming those columns (any order,
// other columns ignored).
type csvReader struct {
	r        *csv.Reader
	base     int64 // file offset where r started
	baseLine int   // lines before r started
	lastEnd  int64
	col      map[string]int
}

func newCSVReader(f *os.File, offset int64, line int) (*csvReader, error) {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	br := bufio.NewReaderSize(f, 256<<10)
	var bom int64
	if b, _ := br.Peek(3); bytes.Equal(b, utf8BOM) {
		br.Discard(3)
		bom = 3
	}
	hr := csv.NewReader(br)
	hr.FieldsPerRecord, hr.ReuseRecord = -1, true
	header, err := hr.Read()
	if err != nil {
		return nil, fmt.Errorf("read the CSV header: %w", err)
	}
	col := map[string]int{}
	for i, h := range header {
		col[strings.ToLower(strings.TrimSpace(h))] = i
	}
	for _, want := range []string{"medium", "address", "mxid"} {
		if _, ok := col[want]; !ok {
			return nil, fmt.Errorf("the CSV header %q lacks the column %q (want medium,address,mxid)", strings.Join(header, ","), want)
		}
	}
	c := &csvReader{col: col}
	if offset == 0 {
		// Continue after the header with the same reader.
		c.r, c.base, c.baseLine = hr, bom, 0
		c.lastEnd = c.base + hr.InputOffset()
		return c, nil
	}
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return nil, err
	}
	c.r, c.base, c.baseLine, c.lastEnd = csv.NewReader(bufio.NewReaderSize(f, 256<<10)), offset, line, offset
	c.r.FieldsPerRecord, c.r.ReuseRecord = -1, true
	return c, nil
}

func (c *csvReader) next() (importRecord, error) {
	row, err := c.r.Read()
	if errors.Is(err, io.EOF) {
		return importRecord{}, io.EOF
	}
	end := c.base + c.r.InputOffset()
	rec := importRecord{start: c.lastEnd, end: end}
	c.lastEnd = end
	var pe *csv.ParseError
	if errors.As(err, &pe) {
		rec.line = c.baseLine + pe.StartLine
		rec.bad = "malformed CSV: " + pe.Err.Error()
		return rec, nil
	}
	if err != nil {
		return importRecord{}, err
	}
	l, _ := c.r.FieldPos(0)
	rec.line = c.baseLine + l
	field := func(name string) string {
		if i := c.col[name]; i < len(row) {
			return strings.TrimSpace(row[i])
		}
		return ""
	}
	rec.entry = identity.ImportEntry{Medium: field("medium"), Address: field("address"), MXID: field("mxid")}
	var missing []string
	for _, name := range []string{"medium", "address", "mxid"} {
		if field(name) == "" {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		rec.bad = "missing " + strings.Join(missing, ", ")
	}
	return rec, nil
}

// importProgress is a byte-based bar on a terminal and a line every few seconds in a log.
type importProgress struct {
	w     io.Writer
	bar   *progressbar.ProgressBar
	total int64
	last  time.Time
	done  bool
}

func newImportProgress(w io.Writer, total, at int64) *importProgress {
	p := &importProgress{w: w, total: total, last: time.Now()}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.bar = progressbar.NewOptions64(total, progressbar.OptionSetWriter(w), progressbar.OptionSetDescription("importing"),
			progressbar.OptionShowBytes(true), progressbar.OptionSetPredictTime(true), progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionFullWidth(), progressbar.OptionOnCompletion(func() { fmt.Fprintln(w) }))
		p.bar.Set64(at)
	}
	return p
}

func (p *importProgress) set(at int64) {
	if p.bar != nil {
		p.bar.Set64(at)
		return
	}
	if time.Since(p.last) >= 5*time.Second {
		p.last = time.Now()
		fmt.Fprintf(p.w, "imported %d of %d bytes (%.0f %%)\n", at, p.total, 100*float64(at)/float64(max(p.total, 1)))
	}
}

// printf writes a line above the bar.
func (p *importProgress) printf(format string, args ...any) {
	if p.bar != nil && !p.done {
		p.bar.Clear()
	}
	fmt.Fprintf(p.w, format, args...)
}

func (p *importProgress) finish() {
	if p.done {
		return
	}
	p.done = true
	if p.bar != nil {
		p.bar.Finish()
	}
}
