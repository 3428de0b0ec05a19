// Command ozo-loadgen measures ozo-identity's v2 lookups on loopback: it starts the server (or
// uses a running one), seeds N bindings through the admin batch endpoint, obtains an access
// token through account/register with an OpenID token its own homeserver stand-in vouches for,
// then runs sha256 lookups of bound addresses for batches 1/100/1000 and 1/16 clients, a
// bounded time each, and prints a markdown table with the server's memory.
//
//	ozo-loadgen --server-bin ./ozo-identity [--database-url postgres://…] [--bindings 10000] [--duration 10s]
//	ozo-loadgen --url http://127.0.0.1:8090 --admin-token T --token T [--pid PID] …
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ozo-platform/ozo-identity/threepid"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "ozo-loadgen:", err)
		os.Exit(1)
	}
}

type options struct {
	serverBin   string
	serverCPUs  string
	databaseURL string
	url         string
	adminToken  string
	token       string
	pid         int
	bindings    int
	duration    time.Duration
	batches     []int
	clients     []int
	label       string
	header      bool
	maxRuntime  time.Duration
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("ozo-loadgen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.serverBin, "server-bin", "", "start this ozo-identity binary on loopback (and stop it at the end)")
	fs.StringVar(&o.serverCPUs, "server-cpus", "", "with --server-bin: pin the server to these CPUs (taskset -c LIST), as issue 18 measured")
	fs.StringVar(&o.databaseURL, "database-url", "", "with --server-bin: PostgreSQL URL (a fresh schema is created and dropped); empty: SQLite")
	fs.StringVar(&o.url, "url", "", "a running server (loopback only) instead of --server-bin")
	fs.StringVar(&o.adminToken, "admin-token", "", "with --url: the server's admin.token, for seeding")
	fs.StringVar(&o.token, "token", "", "with --url: an identity-server access token (otherwise none can be obtained)")
	fs.IntVar(&o.pid, "pid", 0, "with --url: the server's process id, for its memory")
	fs.IntVar(&o.bindings, "bindings", 10000, "bindings to seed")
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "how long each cell runs")
	batches := fs.String("batches", "1,100,1000", "addresses per lookup, comma-separated")
	clients := fs.String("clients", "1,16", "concurrent clients, comma-separated")
	fs.StringVar(&o.label, "label", "", "engine column of the table (default: sqlite or postgres)")
	fs.BoolVar(&o.header, "header", true, "print the table header")
	fs.DurationVar(&o.maxRuntime, "max-runtime", 30*time.Minute, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	var err error
	if o.batches, err = ints(*batches); err != nil {
		return o, fmt.Errorf("--batches: %w", err)
	}
	if o.clients, err = ints(*clients); err != nil {
		return o, fmt.Errorf("--clients: %w", err)
	}
	switch {
	case (o.serverBin == "") == (o.url == ""):
		return o, errors.New("give either --server-bin or --url")
	case o.url != "" && o.token == "":
		return o, errors.New("--url needs --token (with --server-bin the token is obtained through account/register)")
	case o.url != "" && o.adminToken == "" && o.bindings > 0:
		return o, errors.New("--url needs --admin-token to seed bindings")
	case o.bindings < 1:
		return o, errors.New("--bindings must be positive")
	case o.duration <= 0 || o.duration > 10*time.Minute:
		return o, errors.New("--duration must be between 0 and 10m")
	}
	if o.url != "" {
		if err := loopbackOnly(o.url); err != nil {
			return o, err
		}
	}
	return o, nil
}

func ints(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 10000 {
			return nil, fmt.Errorf("%q is not a number from 1 to 10000", f)
		}
		out = append(out, n)
	}
	return out, nil
}

// loopbackOnly keeps the tool from load-testing anything but this machine.
func loopbackOnly(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return fmt.Errorf("--url %q is not a URL", raw)
	}
	host := u.Hostname()
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("--url %q: ozo-loadgen only runs against loopback", raw)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, o.maxRuntime)
	defer cancel()
	engine := "sqlite"
	if strings.HasPrefix(o.databaseURL, "postgres") {
		engine = "postgres"
	}
	if o.label == "" {
		o.label = engine
	}
	t := &target{url: strings.TrimSuffix(o.url, "/"), adminToken: o.adminToken, token: o.token, pid: o.pid,
		client: &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{
			MaxIdleConns: 64, MaxIdleConnsPerHost: 64, IdleConnTimeout: 30 * time.Second}}}
	defer t.client.CloseIdleConnections()
	if o.serverBin != "" {
		srv, err := startServer(ctx, o.serverBin, o.serverCPUs, o.databaseURL, stderr)
		if err != nil {
			return err
		}
		defer srv.stop()
		t.url, t.adminToken, t.pid = srv.url, srv.adminToken, srv.pid
		if t.token, err = register(ctx, t.client, t.url, srv.hs); err != nil {
			return err
		}
	}

	addresses, took, err := seed(ctx, t, o.bindings)
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "seeded %d bindings in %.2f s (%.0f bindings/s) through POST /_ozo/admin/v1/bindings/batch\n",
		o.bindings, took.Seconds(), float64(o.bindings)/took.Seconds())
	pepper, err := t.pepper(ctx)
	if err != nil {
		return err
	}
	hashes := make([]string, len(addresses))
	mxids := make([]string, len(addresses))
	index := make(map[string]int, len(addresses))
	for i, a := range addresses {
		hashes[i] = threepid.LookupHash(a, "email", pepper)
		mxids[i] = mxid(i)
		index[hashes[i]] = i
	}
	pepperJSON, _ := json.Marshal(pepper)
	w := &workload{t: t, hashes: hashes, mxids: mxids, index: index, pepperJSON: pepperJSON, stderr: stderr}

	if o.header {
		fmt.Fprintln(stdout, "| engine | bindings | batch | clients | req/s | addresses/s | p50 ms | p99 ms | errors | server RSS MiB (peak) | server CPU % | loadgen CPU % |")
		fmt.Fprintln(stdout, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	}
	failed := 0
	for _, batch := range o.batches {
		for _, clients := range o.clients {
			c := w.run(ctx, batch, clients, o.duration)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			rss, peak := memory(t.pid)
			fmt.Fprintf(stdout, "| %s | %d | %d | %d | %.0f | %.0f | %.2f | %.2f | %d | %s (%s) | %s | %s |\n", o.label, o.bindings, batch, clients,
				c.reqPerSec(), c.reqPerSec()*float64(batch), ms(c.percentile(0.50)), ms(c.percentile(0.99)), c.errors, rss, peak,
				c.serverCPU, c.selfCPU)
			failed += c.errors
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d lookups failed or answered wrongly", failed)
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// target is the server under test.
type target struct {
	url, adminToken, token string
	pid                    int
	client                 *http.Client
}

func (t *target) post(ctx context.Context, path, token string, body []byte, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.url+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := t.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST %s: HTTP %d: %.300s", path, resp.StatusCode, data)
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(data, out)
}

// postRaw posts body and returns the answer of a 200, read into buf's memory.
func (t *target) postRaw(ctx context.Context, path, token string, body, buf []byte) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.url+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := t.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b := bytes.NewBuffer(buf[:0])
	if resp.ContentLength > 0 {
		b.Grow(int(min(resp.ContentLength, 64<<20)) + 1)
	}
	if _, err := b.ReadFrom(io.LimitReader(resp.Body, 64<<20)); err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("POST %s: HTTP %d: %.300s", path, resp.StatusCode, b.Bytes())
	}
	return b.Bytes(), nil
}

func (t *target) pepper(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, t.url+"/_matrix/identity/v2/hash_details", nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("Authorization", "Bearer "+t.token)
	resp, err := t.client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var out struct {
		Pepper string `json:"lookup_pepper"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("hash_details: HTTP %d %v", resp.StatusCode, err)
	}
	return out.Pepper, nil
}

// address and mxid of the i-th seeded binding: the lookups check every answer against them.
func address(i int) string { return fmt.Sprintf("user%08d@loadgen.example", i) }
func mxid(i int) string    { return fmt.Sprintf("@u%d:loadgen.example", i) }

// seed binds n addresses in batches of 10,000 (the endpoint's bound) and returns them.
func seed(ctx context.Context, t *target, n int) ([]string, time.Duration, error) {
	const batch = 10000
	start := time.Now()
	addresses := make([]string, n)
	for from := 0; from < n; from += batch {
		var entries []map[string]string
		for i := from; i < min(from+batch, n); i++ {
			addresses[i] = address(i)
			entries = append(entries, map[string]string{"medium": "email", "address": addresses[i], "mxid": mxid(i)})
		}
		body, _ := json.Marshal(entries)
		var rep struct {
			Created, Updated, Unchanged int
			Invalid                     []json.RawMessage
		}
		if err := t.post(ctx, "/_ozo/admin/v1/bindings/batch", t.adminToken, body, &rep); err != nil {
			return nil, 0, fmt.Errorf("seed: %w", err)
		}
		if rep.Created+rep.Updated+rep.Unchanged != len(entries) || len(rep.Invalid) > 0 {
			return nil, 0, fmt.Errorf("seed: batch at %d answered %+v", from, rep)
		}
	}
	return addresses, time.Since(start), nil
}

// cell is one measurement: batch size × clients for a duration.
type cell struct {
	latencies []time.Duration
	errors    int
	elapsed   time.Duration
	// serverCPU and selfCPU are the server's and the tool's busy share of one core, in percent.
	serverCPU, selfCPU string
}

func (c *cell) reqPerSec() float64 { return float64(len(c.latencies)) / c.elapsed.Seconds() }

func (c *cell) percentile(p float64) time.Duration {
	if len(c.latencies) == 0 {
		return 0
	}
	return c.latencies[min(len(c.latencies)-1, int(p*float64(len(c.latencies))))]
}

// workload is what the lookups ask: the seeded bindings' hashes and the MXID each must answer.
// Requests are built and answers checked without reflection, so that the tool's own work stays
// small beside the server's (its CPU share is in the table).
type workload struct {
	t          *target
	hashes     []string
	mxids      []string       // the answer for each hash
	index      map[string]int // hash → binding number
	pepperJSON []byte
	stderr     io.Writer
}

// run runs clients loops of lookups of batch random bound hashes until duration passes, and
// checks that every answer maps every hash to its MXID.
func (w *workload) run(ctx context.Context, batch, clients int, duration time.Duration) *cell {
	t := w.t
	start := time.Now()
	// Requests are prepared before the clock starts, enough to ask about every binding once: at
	// a million bindings, drawing them as it went (a cache miss per hash, in a cache the tool
	// shares with the server) cost the tool as much as the server's lookups and slowed the
	// server's own memory accesses. The tool then reads its requests in sequence.
	pools := make([][]*request, clients)
	per := max(1, (len(w.hashes)+clients*batch-1)/(clients*batch))
	for n := range pools {
		rng := rand.New(rand.NewPCG(uint64(n), uint64(start.UnixNano())))
		pools[n] = make([]*request, per)
		for k := range pools[n] {
			pools[n][k] = w.draw(rng, batch)
		}
	}
	runtime.GC() // the last cell's requests, before the clock starts
	ctx, cancel := context.WithTimeout(ctx, duration)
	defer cancel()
	serverCPU, selfCPU := cpuTime(t.pid), cpuTime(os.Getpid())
	var mu sync.Mutex
	c := &cell{}
	var firstErr error
	var wg sync.WaitGroup
	start = time.Now()
	for n := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var lat []time.Duration
			errs := 0
			var werr error
			seen := make(map[int]bool, batch)
			var buf []byte
			for k := 0; ctx.Err() == nil; k++ {
				r := pools[n][k%len(pools[n])]
				t0 := time.Now()
				answer, err := t.postRaw(ctx, "/_matrix/identity/v2/lookup", t.token, r.body, buf)
				d := time.Since(t0)
				if ctx.Err() != nil {
					break // the cell ended during this request; it does not count
				}
				buf = answer
				if err == nil && !bytes.Equal(answer, r.want) {
					err = w.check(r.q, answer, seen)
				}
				if err != nil {
					errs++
					if werr == nil {
						werr = err
					}
					continue
				}
				lat = append(lat, d)
			}
			mu.Lock()
			c.latencies = append(c.latencies, lat...)
			c.errors += errs
			if firstErr == nil {
				firstErr = werr
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	c.elapsed = time.Since(start)
	c.serverCPU, c.selfCPU = busy(serverCPU, cpuTime(t.pid), c.elapsed), busy(selfCPU, cpuTime(os.Getpid()), c.elapsed)
	slices.Sort(c.latencies)
	if firstErr != nil {
		fmt.Fprintf(w.stderr, "batch %d, %d clients: first error: %v\n", batch, clients, firstErr)
	}
	return c
}

// request is one lookup: the bindings asked, the body, and the exact answer ozo-identity
// writes, compared byte for byte before the full check.
type request struct {
	q          []int
	body, want []byte
}

// draw makes a lookup of batch random bound hashes.
func (w *workload) draw(rng *rand.Rand, batch int) *request {
	r := &request{q: make([]int, batch)}
	body := append(make([]byte, 0, 64+batch*46), `{"algorithm":"sha256","pepper":`...)
	body = append(body, w.pepperJSON...)
	body = append(body, `,"addresses":[`...)
	for i := range r.q {
		r.q[i] = rng.IntN(len(w.hashes))
		if i > 0 {
			body = append(body, ',')
		}
		// Lookup hashes are unpadded base64url: nothing to escape.
		body = append(body, '"')
		body = append(body, w.hashes[r.q[i]]...)
		body = append(body, '"')
	}
	r.body = append(body, "]}"...)
	// The answer in the order of the request, each hash once.
	want := []byte(`{"mappings":{`)
	seen := make(map[int]bool, batch)
	for _, i := range r.q {
		if seen[i] {
			continue
		}
		if len(seen) > 0 {
			want = append(want, ',')
		}
		seen[i] = true
		want = append(want, '"')
		want = append(want, w.hashes[i]...)
		want = append(want, `":"`...)
		want = append(want, w.mxids[i]...)
		want = append(want, '"')
	}
	r.want = append(want, "}}\n"...)
	return r
}

// check verifies that answer maps every asked hash (bindings q) to its MXID and nothing else.
func (w *workload) check(q []int, answer []byte, seen map[int]bool) error {
	if w.inOrder(q, answer, seen) {
		return nil
	}
	got, ok := scanMappings(answer)
	if !ok {
		// Not the plain form the scanner reads: encoding/json decides.
		var out struct {
			Mappings map[string]string `json:"mappings"`
		}
		if err := json.Unmarshal(answer, &out); err != nil {
			return fmt.Errorf("answer is not JSON: %v: %.200s", err, answer)
		}
		got = out.Mappings
	}
	for _, i := range q {
		if got[w.hashes[i]] != w.mxids[i] {
			return fmt.Errorf("hash of %s answered %q, want %q", address(i), got[w.hashes[i]], w.mxids[i])
		}
	}
	for h := range got {
		if _, ok := w.index[h]; !ok {
			return fmt.Errorf("answer holds %q, which was not asked", h)
		}
	}
	return nil
}

// inOrder reports whether answer is exactly the right answer written in the order of the
// request, each hash once: the common case, checked without building a map. Any other answer
// (another order, another spelling, a wrong one) is left to the full check.
func (w *workload) inOrder(q []int, answer []byte, seen map[int]bool) bool {
	s := string(answer)
	const head = `{"mappings":{`
	if !strings.HasPrefix(s, head) {
		return false
	}
	s = s[len(head):]
	clear(seen)
	for _, i := range q {
		if seen[i] {
			continue // asked twice, answered once
		}
		if len(seen) > 0 {
			if s == "" || s[0] != ',' {
				return false
			}
			s = s[1:]
		}
		h, m := w.hashes[i], w.mxids[i]
		if len(s) < len(h)+len(m)+5 || s[0] != '"' || s[1:1+len(h)] != h || s[1+len(h):4+len(h)] != `":"` ||
			s[4+len(h):4+len(h)+len(m)] != m || s[4+len(h)+len(m)] != '"' {
			return false
		}
		s = s[5+len(h)+len(m):]
		seen[i] = true
	}
	return s == "}}\n" || s == "}}"
}

// scanMappings reads {"mappings":{"k":"v",…}} of plain ASCII strings without escapes and
// whitespace, as ozo-identity writes it; false for anything else.
func scanMappings(b []byte) (map[string]string, bool) {
	s := strings.TrimSuffix(string(b), "\n")
	const head, tail = `{"mappings":{`, `}}`
	if !strings.HasPrefix(s, head) || !strings.HasSuffix(s, tail) {
		return nil, false
	}
	s = s[len(head) : len(s)-len(tail)]
	out := make(map[string]string, strings.Count(s, ":"))
	for len(s) > 0 {
		k, rest, ok := plainString(s)
		if !ok || len(rest) == 0 || rest[0] != ':' {
			return nil, false
		}
		v, rest, ok := plainString(rest[1:])
		if !ok {
			return nil, false
		}
		if _, dup := out[k]; dup {
			return nil, false
		}
		out[k] = v
		if s = rest; len(s) > 0 {
			if s[0] != ',' || len(s) == 1 {
				return nil, false
			}
			s = s[1:]
		}
	}
	return out, true
}

func plainString(s string) (string, string, bool) {
	if len(s) < 2 || s[0] != '"' {
		return "", s, false
	}
	for j := 1; j < len(s); j++ {
		switch c := s[j]; {
		case c == '"':
			return s[1:j], s[j+1:], true
		case c < 0x20 || c >= 0x7f || c == '\\':
			return "", s, false
		}
	}
	return "", s, false
}

// cpuTime is the CPU time a process has used (user and system), from /proc; 0 if unknown.
func cpuTime(pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 13 {
		return 0
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0
	}
	const ticks = 100 // USER_HZ, 100 on every Linux the tool runs on
	return time.Duration(utime+stime) * time.Second / ticks
}

// busy is the share of one core used between two CPU times over elapsed, in percent.
func busy(from, to time.Duration, elapsed time.Duration) string {
	if to == 0 || elapsed <= 0 {
		return "?"
	}
	return strconv.Itoa(int(100 * (to - from).Seconds() / elapsed.Seconds()))
}

// memory reads the server's resident and peak resident memory (VmRSS, VmHWM) in MiB.
func memory(pid int) (rss, peak string) {
	if pid == 0 {
		return "?", "?"
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "?", "?"
	}
	rss, peak = "?", "?"
	for _, line := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		kb, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
		if err != nil {
			continue
		}
		switch k {
		case "VmRSS":
			rss = strconv.Itoa(kb / 1024)
		case "VmHWM":
			peak = strconv.Itoa(kb / 1024)
		}
	}
	return rss, peak
}
