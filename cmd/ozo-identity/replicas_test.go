package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ozo-platform/ozo-identity/api/apitest"
	"github.com/ozo-platform/ozo-identity/email/smtptest"
	"github.com/ozo-platform/ozo-identity/internal/pkitest"
	"github.com/ozo-platform/ozo-identity/lookup/mcsd"
	"github.com/ozo-platform/ozo-identity/lookup/mcsd/mcsdtest"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore/dbtest"
)

const replicaAdminToken = "replica-test-admin-token"

// replica is one `ozo-identity serve` process of a replicated deployment.
type replica struct {
	name      string
	cmd       *exec.Cmd
	url, ops  string
	log       *output
	dead      atomic.Bool
	waitErr   error
	processID int
	exited    chan struct{}
}

func (r *replica) wait() error {
	<-r.exited
	return r.waitErr
}

// cluster is the replicas on one PostgreSQL and one Redis, the homeserver stand-in that counts
// onbinds, a mail server and the test mCSD directories; requests go round-robin to the live
// replicas, as a load balancer sends them, and move to another replica when one does not answer.
type cluster struct {
	t        *testing.T
	replicas []*replica
	db       *sql.DB
	hs       *apitest.Homeserver
	client   *http.Client
	next     atomic.Uint64
	// env is the replicas' shared configuration, for CLI commands on the same deployment.
	env []string
}

func redisURL(t *testing.T) string {
	t.Helper()
	addr := os.Getenv("OZO_TEST_REDIS_ADDR")
	if addr == "" {
		addr = "127.0.0.1:6379"
	}
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	if err := c.Ping(context.Background()).Err(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("Redis is required in CI: %v", err)
		}
		t.Skipf("Redis not reachable: %v", err)
	}
	return "redis://" + addr + "/0"
}

func newCluster(t *testing.T, n int, extraEnv ...string) *cluster {
	t.Helper()
	return newClusterVia(t, n, nil, extraEnv...)
}

// newClusterVia is newCluster with the replicas reaching PostgreSQL and Redis through via
// (a proxy the test can cut), when set.
func newClusterVia(t *testing.T, n int, via func(pgURL, redisURL string) (string, string), extraEnv ...string) *cluster {
	t.Helper()
	ca := pkitest.NewCA(t)
	hs := apitest.NewHomeserver(t, ca)
	mail := smtptest.Start(t)
	dir := mcsdtest.Start(t, mcsdtest.Options{})
	// A slow hospital makes a sync last long enough to kill its holder in the middle of it.
	dir.Directory("ziekenhuis-ijsselvallei").SetFailure(mcsdtest.Failure{Delay: 300 * time.Millisecond})
	pg := dbtest.URL(t, sqlstore.Postgres)
	db, err := sql.Open("pgx", pg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	pgVia, redisVia := pg, redisURL(t)
	if via != nil {
		pgVia, redisVia = via(pg, redisVia)
	}
	auditKey := make([]byte, 32)
	rand.Read(auditKey)
	env := append(directoryEnv(t, dir, ""),
		"OZO_DATABASE_URL="+pgVia,
		"OZO_REDIS_URL="+redisVia,
		"OZO_REDIS_KEY_PREFIX="+fmt.Sprintf("ozo-replicas-%d-%d:", os.Getpid(), time.Now().UnixNano()),
		"OZO_ADMIN_TOKEN="+replicaAdminToken,
		// Replicas share the audit chain, so they share its key (kept outside the database).
		"OZO_AUDIT_KEY="+hex.EncodeToString(auditKey),
		"OZO_PUBLIC_BASE_URL=https://identity.test",
		"OZO_LOG_FORMAT=json",
		"OZO_EMAIL_SMTP_HOST="+mail.Host, "OZO_EMAIL_SMTP_PORT="+strconv.Itoa(mail.Port), "OZO_EMAIL_SMTP_SECURITY=none",
		"OZO_HOMESERVERS_ALLOWED="+hs.Name, "OZO_HOMESERVERS_ALLOWED_NETWORKS=127.0.0.0/8",
		"OZO_HOMESERVERS_CA_FILE="+ca.CertFile,
		// The load balancer's X-Forwarded-For names the client: the test plays many clients.
		"OZO_HTTP_TRUSTED_PROXIES=127.0.0.1/32",
		"OZO_RATE_LIMITS_LOOKUP_PER_ACCOUNT=1000000", "OZO_RATE_LIMITS_LOOKUP_PER_SERVER=1000000",
		"OZO_RATE_LIMITS_PER_CLIENT=20",
		"OZO_DIRECTORY_SYNC_INTERVAL=1s", "OZO_DIRECTORY_SYNC_LEASE_TTL=5s",
	)
	env = append(env, extraEnv...)
	c := &cluster{t: t, db: db, hs: hs, env: env,
		client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}}
	t.Cleanup(c.client.CloseIdleConnections)
	for i := range n {
		listen, ops := freeAddr(t), freeAddr(t)
		r := &replica{name: fmt.Sprintf("replica-%d", i+1), url: "http://" + listen, ops: "http://" + ops}
		r.cmd, _, r.log = start(t, append(env, "OZO_LISTEN="+listen, "OZO_METRICS_LISTEN="+ops, "OZO_DATA_DIR="+t.TempDir()), "serve")
		r.processID = r.cmd.Process.Pid
		r.exited = make(chan struct{})
		go func() { r.waitErr = r.cmd.Wait(); close(r.exited) }()
		c.replicas = append(c.replicas, r)
		t.Cleanup(func() {
			r.cmd.Process.Kill()
			r.wait()
			if t.Failed() {
				t.Logf("%s log, warnings and errors (tail):\n%s", r.name, tailString(problems(r.log.String()), 30))
			}
		})
	}
	for _, r := range c.replicas {
		waitReady(t, r)
	}
	return c
}

// problems keeps the log lines above INFO (and any that are not JSON, such as a panic).
func problems(log string) string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		if l != "" && (!strings.HasPrefix(l, "{") || !strings.Contains(l, `"level":"INFO"`) && !strings.Contains(l, `"level":"DEBUG"`)) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func tailString(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func waitReady(t *testing.T, r *replica) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-r.exited:
			t.Fatalf("%s exited: %v\n%s", r.name, r.waitErr, r.log.String())
		default:
		}
		resp, err := http.Get(r.ops + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s never became ready:\n%s", r.name, r.log.String())
}

type reply struct {
	status int
	body   []byte
	from   string
	// lost counts the replicas the request was sent to before, which gave no answer: each may
	// have carried it out (a replica killed after its commit, before its answer).
	lost int
}

func (r reply) json() map[string]any {
	var m map[string]any
	json.Unmarshal(r.body, &m)
	return m
}

// errNoReplica says every replica failed to answer: nothing was acknowledged.
var errNoReplica = errors.New("no replica answered")

// do sends one request to the next live replica, and to the others when it gets no answer
// (the load balancer's retry); only an HTTP answer counts.
func (c *cluster) do(method, path, token, client string, body any) (reply, error) {
	var data []byte
	if body != nil {
		data, _ = json.Marshal(body)
	}
	start := c.next.Add(1)
	var lastErr error
	lost := 0
	for i := range len(c.replicas) {
		r := c.replicas[(int(start)+i)%len(c.replicas)]
		if r.dead.Load() {
			continue
		}
		req, _ := http.NewRequest(method, r.url+path, bytes.NewReader(data))
		req.Header.Set("Content-Type", "application/json")
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		if client != "" {
			req.Header.Set("X-Forwarded-For", client)
		}
		resp, err := c.client.Do(req)
		if err != nil {
			lastErr = err
			var opErr *net.OpError
			if !errors.As(err, &opErr) || opErr.Op != "dial" {
				lost++ // sent, maybe carried out; a refused connection carried nothing
			}
			continue
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			lastErr = err
			lost++
			continue
		}
		return reply{status: resp.StatusCode, body: b, from: r.name, lost: lost}, nil
	}
	return reply{lost: lost}, fmt.Errorf("%w: %v", errNoReplica, lastErr)
}

// register makes an identity-server account for a user of the stand-in homeserver.
func (c *cluster) register(t *testing.T, localpart, client string) (token, mxid string) {
	t.Helper()
	openID, mxid := c.hs.IssueOpenIDToken(localpart)
	r, err := c.do("POST", "/_matrix/identity/v2/account/register", "", client, map[string]any{
		"access_token": openID, "token_type": "Bearer", "matrix_server_name": c.hs.Name, "expires_in": 3600})
	if err != nil || r.status != http.StatusOK {
		t.Fatalf("register %s: %v %d %s", localpart, err, r.status, r.body)
	}
	return r.json()["token"].(string), mxid
}

func lookupHash(address, medium, pepper string) string {
	sum := sha256.Sum256([]byte(address + " " + medium + " " + pepper))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// leaseHolderPID is the process holding the mCSD sync lease now, or 0.
func (c *cluster) leaseHolderPID() int {
	var holder string
	err := c.db.QueryRow(`SELECT holder FROM leases WHERE name = $1 AND expires_at > $2`, mcsd.LeaseName, time.Now().UnixMilli()).Scan(&holder)
	if err != nil {
		return 0
	}
	m := regexp.MustCompile(`/pid-(\d+)/`).FindStringSubmatch(holder)
	if m == nil {
		return 0
	}
	pid, _ := strconv.Atoi(m[1])
	return pid
}

// cliEnv is the deployment's configuration for a CLI command run beside the replicas.
func (c *cluster) cliEnv(t *testing.T) []string {
	return append(append([]string{}, c.env...), "OZO_DATA_DIR="+t.TempDir())
}

// Two replicas on PostgreSQL and Redis under a bounded load of lookups, admin binds and unbinds
// and store-invites; the one syncing the mCSD directories is killed with SIGKILL in the middle,
// most likely while it sends an onbind (the homeserver is slow just then). Afterwards: every
// acknowledged invite and binding is there (and every acknowledged unbind gone), every invite
// went to the homeserver once (the one in flight at the kill at most twice), the onbind the dead
// replica had claimed was taken over within invites.onbind_claim_ttl, the survivor took the sync
// lease over, one client's rate-limit budget held across both replicas, `ozo-identity audit
// verify` passes against a checkpoint taken before the load, and the audit trail has exactly one
// record per acknowledged bind, unbind and store-invite (and one more at most for each attempt
// whose answer the kill swallowed).
func TestReplicasSurviveKill(t *testing.T) {
	if testing.Short() {
		t.Skip("runs two servers for about half a minute")
	}
	const claimTTL = 10 * time.Second
	c := newCluster(t, 2, fmt.Sprintf("OZO_INVITES_ONBIND_CLAIM_TTL=%s", claimTTL))

	// Rate limits: 20 registrations a minute per client address, counted in Redis for both.
	window := time.Now().Truncate(time.Minute)
	allowed := 0
	for i := range 40 {
		r, err := c.do("POST", "/_matrix/identity/v2/account/register", "", "198.51.100.7",
			map[string]any{"access_token": "bogus-" + strconv.Itoa(i), "token_type": "Bearer", "matrix_server_name": c.hs.Name, "expires_in": 3600})
		if err != nil {
			t.Fatal(err)
		}
		if r.status != http.StatusTooManyRequests {
			allowed++
		}
	}
	switch sameWindow := time.Now().Truncate(time.Minute).Equal(window); {
	case sameWindow && allowed != 20:
		t.Errorf("one client got %d of 40 registrations through two replicas, want its budget of 20", allowed)
	case !sameWindow && allowed > 40-1:
		t.Errorf("one client got %d of 40 registrations across a minute boundary", allowed)
	}

	const workers = 4
	type worker struct{ token, mxid, pepper string }
	ws := make([]worker, workers)
	for w := range ws {
		ws[w].token, ws[w].mxid = c.register(t, fmt.Sprintf("sender%d", w), fmt.Sprintf("10.9.0.%d", w+1))
		r, err := c.do("GET", "/_matrix/identity/v2/hash_details", ws[w].token, "", nil)
		if err != nil || r.status != http.StatusOK {
			t.Fatalf("hash_details: %v %d %s", err, r.status, r.body)
		}
		ws[w].pepper = r.json()["lookup_pepper"].(string)
	}
	// The mCSD schedule runs on one replica at a time.
	var holder int
	deadline := time.Now().Add(30 * time.Second)
	for holder == 0 && time.Now().Before(deadline) {
		holder = c.leaseHolderPID()
		time.Sleep(20 * time.Millisecond)
	}
	if holder == 0 {
		t.Fatal("no replica ever held the sync lease")
	}
	// A checkpoint before the load: verification afterwards proves nothing was truncated.
	checkpoint := filepath.Join(t.TempDir(), "checkpoint.json")
	if res := runProc(t, c.cliEnv(t), "audit", "checkpoint", "--out", checkpoint); res.err != nil {
		t.Fatalf("audit checkpoint: %v\n%s", res.err, res.stderr)
	}

	var (
		mu       sync.Mutex
		invites  = map[string]string{} // acknowledged invite token → address
		bindings = map[string]string{} // acknowledged binding address → mxid, while bound
		bound    = map[string]bool{}   // every acknowledged bind
		unbound  = map[string]bool{}   // acknowledged unbinds
		// Attempts whose answer was lost, by address: each may have been carried out.
		lostBinds, lostInvites = map[string]int{}, map[string]int{}
		failures               = map[string]int{}
		ops                    atomic.Int64
	)
	fail := func(what string) {
		mu.Lock()
		failures[what]++
		mu.Unlock()
	}
	load, stopLoad := context.WithTimeout(context.Background(), 8*time.Second)
	defer stopLoad()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := 0; load.Err() == nil; i++ {
				addr := fmt.Sprintf("w%d-%d@patient.example", w, i)
				client := fmt.Sprintf("10.%d.%d.%d", 10+w, i/250, i%250+1)
				r, err := c.do("POST", "/_matrix/identity/v2/store-invite", ws[w].token, client, map[string]any{
					"medium": "email", "address": addr, "room_id": "!room:" + c.hs.Name, "sender": ws[w].mxid})
				mu.Lock()
				lostInvites[addr] += r.lost
				mu.Unlock()
				if err != nil || r.status != http.StatusOK {
					fail(fmt.Sprintf("store-invite %d", r.status))
					continue
				}
				mu.Lock()
				invites[r.json()["token"].(string)] = addr
				mu.Unlock()
				mxid := fmt.Sprintf("@w%d-%d:%s", w, i, c.hs.Name)
				// A client whose bind got no answer sends it again: binding is idempotent.
				for try := 0; ; try++ {
					r, err = c.do("POST", "/_ozo/admin/v1/bindings", replicaAdminToken, client,
						map[string]any{"medium": "email", "address": addr, "mxid": mxid})
					mu.Lock()
					lostBinds[addr] += r.lost
					mu.Unlock()
					if err == nil && r.status == http.StatusOK {
						mu.Lock()
						bindings[addr] = mxid
						bound[addr] = true
						mu.Unlock()
						break
					}
					fail(fmt.Sprintf("bind %d", r.status))
					if try == 20 {
						t.Errorf("bind %s never acknowledged: %v %d %s", addr, err, r.status, r.body)
						break
					}
					time.Sleep(100 * time.Millisecond)
				}
				h := lookupHash(addr, "email", ws[w].pepper)
				r, err = c.do("POST", "/_matrix/identity/v2/lookup", ws[w].token, client,
					map[string]any{"addresses": []string{h}, "algorithm": "sha256", "pepper": ws[w].pepper})
				if err != nil || r.status != http.StatusOK {
					fail(fmt.Sprintf("lookup %d", r.status))
					continue
				}
				if got, _ := r.json()["mappings"].(map[string]any)[h].(string); got != mxid {
					t.Errorf("lookup of %s just bound answered %q from %s, want %s", addr, got, r.from, mxid)
				}
				ops.Add(3)
				if i%4 != 3 {
					continue
				}
				// Every fourth binding is removed again. A retry that finds it gone after an
				// attempt whose answer was lost: that attempt removed it.
				lost := 0
				for try := 0; ; try++ {
					r, err = c.do("DELETE", "/_ozo/admin/v1/bindings/email/"+url.PathEscape(addr), replicaAdminToken, client, nil)
					lost += r.lost
					if err == nil && (r.status == http.StatusOK || r.status == http.StatusNotFound && lost > 0) {
						mu.Lock()
						unbound[addr] = true
						delete(bindings, addr)
						mu.Unlock()
						ops.Add(1)
						break
					}
					fail(fmt.Sprintf("unbind %d", r.status))
					if try == 20 {
						t.Errorf("unbind %s never acknowledged: %v %d %s", addr, err, r.status, r.body)
						break
					}
					time.Sleep(100 * time.Millisecond)
				}
			}
		})
	}

	// In the middle: kill -9 whichever replica holds the lease (it is syncing now).
	time.Sleep(3 * time.Second)
	var victim, survivor *replica
	for victim == nil && load.Err() == nil {
		pid := c.leaseHolderPID()
		for i, r := range c.replicas {
			if r.processID == pid {
				victim, survivor = r, c.replicas[1-i]
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	if victim == nil {
		t.Fatal("no replica held the sync lease during the load")
	}
	// A homeserver slow for a moment: the victim is most likely sending an onbind when killed.
	c.hs.SetDelay(300 * time.Millisecond)
	time.Sleep(150 * time.Millisecond)
	victim.cmd.Process.Signal(syscall.SIGKILL)
	c.hs.SetDelay(0)
	killed := time.Now()
	victim.dead.Store(true)
	victim.wait()
	// Deliveries claimed now: the dead replica's (if it was sending one) and the survivor's.
	var claimed []string
	rows, err := c.db.Query(`SELECT id FROM onbind_queue WHERE next_attempt_at > $1`, time.Now().UnixMilli())
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id string
		rows.Scan(&id)
		claimed = append(claimed, id)
	}
	rows.Close()
	t.Logf("killed %s (pid %d) holding the sync lease; %d onbinds claimed at the kill", victim.name, victim.processID, len(claimed))
	// The lease outlives its dead holder by its ttl (5s), then the survivor syncs.
	survivorSynced := strings.Count(survivor.log.String(), `"msg":"directory synced"`)
	for {
		if pid := c.leaseHolderPID(); pid == survivor.processID &&
			strings.Count(survivor.log.String(), `"msg":"directory synced"`) > survivorSynced {
			break
		}
		if time.Since(killed) > 20*time.Second {
			t.Fatalf("%s did not take the sync lease over within 20s of the kill", survivor.name)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("%s took the sync lease over %s after the kill", survivor.name, time.Since(killed).Round(time.Millisecond))
	wg.Wait()
	t.Logf("%d operations acknowledged: %d invites, %d bindings; refused or unanswered: %v", ops.Load(), len(invites), len(bindings), failures)
	if len(invites) < 20 {
		t.Fatalf("only %d invites acknowledged: the load hardly ran", len(invites))
	}

	// Every acknowledged binding is there, asked of the survivor; every acknowledged unbind gone.
	for addr := range unbound {
		w, _ := strconv.Atoi(strings.TrimPrefix(strings.SplitN(addr, "-", 2)[0], "w"))
		h := lookupHash(addr, "email", ws[w].pepper)
		r, err := c.do("POST", "/_matrix/identity/v2/lookup", ws[w].token, "", map[string]any{
			"addresses": []string{h}, "algorithm": "sha256", "pepper": ws[w].pepper})
		if err != nil || r.status != http.StatusOK {
			t.Fatalf("lookup after the load: %v %d %s", err, r.status, r.body)
		}
		if got, _ := r.json()["mappings"].(map[string]any)[h].(string); got != "" {
			t.Errorf("acknowledged unbind of %s undone (lookup says %q)", addr, got)
		}
	}
	for addr, mxid := range bindings {
		w, _ := strconv.Atoi(strings.TrimPrefix(strings.SplitN(addr, "-", 2)[0], "w"))
		h := lookupHash(addr, "email", ws[w].pepper)
		r, err := c.do("POST", "/_matrix/identity/v2/lookup", ws[w].token, "", map[string]any{
			"addresses": []string{h}, "algorithm": "sha256", "pepper": ws[w].pepper})
		if err != nil || r.status != http.StatusOK {
			t.Fatalf("lookup after the load: %v %d %s", err, r.status, r.body)
		}
		if got, _ := r.json()["mappings"].(map[string]any)[h].(string); got != mxid {
			t.Errorf("acknowledged binding %s → %s lost (lookup says %q)", addr, mxid, got)
		}
	}
	// The deliveries claimed at the kill are sent (or given up) within the claim's ttl, plus the
	// survivor's next look at the queue (5s) and a margin for its backlog.
	for {
		var left int
		for _, id := range claimed {
			var n int
			c.db.QueryRow(`SELECT count(*) FROM onbind_queue WHERE id = $1`, id).Scan(&n)
			left += n
		}
		if left == 0 {
			t.Logf("the onbinds claimed at the kill were done %s after it (claim ttl %s)", time.Since(killed).Round(time.Millisecond), claimTTL)
			break
		}
		if time.Since(killed) > claimTTL+10*time.Second {
			t.Fatalf("%d onbinds claimed at the kill still queued %s after it (claim ttl %s)", left, time.Since(killed).Round(time.Second), claimTTL)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Every acknowledged invite reaches the homeserver exactly once.
	delivered := map[string]int{}
	deadline = time.Now().Add(60 * time.Second)
	for {
		delivered = map[string]int{}
		for _, ob := range c.hs.Delivered() {
			var body struct {
				Invites []struct{ Token string } `json:"invites"`
			}
			if err := json.Unmarshal(ob.Body, &body); err != nil {
				t.Fatal(err)
			}
			for _, inv := range body.Invites {
				delivered[inv.Token]++
			}
		}
		var queued int
		if err := c.db.QueryRow(`SELECT count(*) FROM onbind_queue`).Scan(&queued); err != nil {
			t.Fatal(err)
		}
		missing := 0
		for tok := range invites {
			if delivered[tok] == 0 {
				missing++
			}
		}
		if missing == 0 && queued == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d acknowledged invites never delivered, %d deliveries still queued", missing, queued)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// A replica sends its claimed deliveries one at a time, so when it is killed at most one
	// onbind can have reached the homeserver without being marked done: the survivor sends that
	// one again once its claim expires (at-least-once; a repeated onbind is a no-op for the
	// homeserver). Everything else is delivered exactly once.
	again := 0
	for tok, n := range delivered {
		switch {
		case n == 2:
			again++
			t.Logf("invite %s (%s) delivered twice: in flight when its replica was killed", tok, invites[tok])
		case n != 1:
			t.Errorf("invite %s (%s) delivered %d times", tok, invites[tok], n)
		}
	}
	if again > 1 {
		t.Errorf("%d invites delivered twice; at most the one in flight at the kill may be", again)
	}
	t.Logf("%d invites delivered (%d acknowledged to the client)", len(delivered), len(invites))

	// The audit trail: intact since the checkpoint, and one record per acknowledged change.
	env := c.cliEnv(t)
	if res := runProc(t, env, "audit", "verify", "--checkpoint", checkpoint); res.err != nil || !strings.Contains(res.stdout, `"intact": true`) {
		t.Errorf("audit verify after the kill: %v\n%s\n%s", res.err, res.stdout, tailString(res.stderr, 10))
	}
	res := runProc(t, env, "audit", "export", "--format", "jsonl")
	if res.err != nil {
		t.Fatalf("audit export: %v\n%s", res.err, res.stderr)
	}
	records := map[string]int{} // action + " " + address
	for _, line := range strings.Split(strings.TrimSpace(res.stdout), "\n") {
		var rec struct{ Action, Address string }
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("audit export line %q: %v", line, err)
		}
		records[rec.Action+" "+rec.Address]++
	}
	check := func(action, addr string, lost int) {
		if n := records[action+" "+addr]; n < 1 || n > 1+lost {
			t.Errorf("%d %s records of %s, want 1 (+ at most %d for attempts whose answer was lost)", n, action, addr, lost)
		}
	}
	for addr := range bound {
		check("bind", addr, lostBinds[addr])
	}
	for addr := range unbound {
		check("unbind", addr, 0)
	}
	for _, addr := range invites {
		check("invite.stored", addr, lostInvites[addr])
	}
	t.Logf("audit trail intact; records of %d binds, %d unbinds, %d store-invites checked", len(bound), len(unbound), len(invites))

	// The survivor ends gracefully on SIGTERM and releases what it holds.
	survivor.cmd.Process.Signal(syscall.SIGTERM)
	if err := survivor.wait(); err != nil {
		t.Errorf("%s after SIGTERM: %v", survivor.name, err)
	}
	survivor.dead.Store(true)
	if pid := c.leaseHolderPID(); pid != 0 {
		t.Errorf("sync lease still held by pid %d after the survivor ended", pid)
	}
}

// A replica sent SIGTERM under load stops accepting, answers what it accepted, and exits 0 in
// time: the load balancer's clients see refused connections (tried elsewhere), and every
// binding it acknowledged is there.
func TestReplicaStopsGracefully(t *testing.T) {
	if testing.Short() {
		t.Skip("runs two servers")
	}
	c := newCluster(t, 2, "OZO_DIRECTORY_SYNC_INTERVAL=0s")
	var (
		mu       sync.Mutex
		bindings = map[string]string{}
		cutOff   []string
	)
	stopping := c.replicas[0]
	load, stop := context.WithCancel(context.Background())
	defer stop()
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := 0; load.Err() == nil; i++ {
				addr := fmt.Sprintf("g%d-%d@patient.example", w, i)
				mxid := fmt.Sprintf("@g%d-%d:%s", w, i, c.hs.Name)
				body, _ := json.Marshal(map[string]any{"medium": "email", "address": addr, "mxid": mxid})
				// Straight at the replica being stopped while it runs, as a balancer would until
				// its health check notices, then at the other.
				target := stopping
				if stopping.dead.Load() {
					target = c.replicas[1]
				}
				req, _ := http.NewRequest("POST", target.url+"/_ozo/admin/v1/bindings", bytes.NewReader(body))
				req.Header.Set("Authorization", "Bearer "+replicaAdminToken)
				resp, err := c.client.Do(req)
				if err != nil {
					var opErr *net.OpError
					if errors.As(err, &opErr) && opErr.Op == "dial" {
						stopping.dead.Store(true) // refused: not accepted, try the other
						continue
					}
					mu.Lock()
					cutOff = append(cutOff, err.Error())
					mu.Unlock()
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					mu.Lock()
					bindings[addr] = mxid
					mu.Unlock()
				}
			}
		})
	}
	time.Sleep(2 * time.Second)
	stopping.cmd.Process.Signal(syscall.SIGTERM)
	sent := time.Now()
	select {
	case <-stopping.exited:
	case <-time.After(20 * time.Second):
		t.Fatalf("%s still running 20s after SIGTERM", stopping.name)
	}
	if stopping.waitErr != nil {
		t.Errorf("%s exited with %v after SIGTERM", stopping.name, stopping.waitErr)
	}
	t.Logf("%s exited %s after SIGTERM", stopping.name, time.Since(sent).Round(time.Millisecond))
	stopping.dead.Store(true)
	time.Sleep(time.Second)
	stop()
	wg.Wait()
	// HTTP/1.1's keep-alive race: a request written onto a connection at the instant the server
	// closes it as idle gets EOF, unprocessed. At most one per client connection, at the stop.
	if len(cutOff) > 4 {
		t.Errorf("%d requests cut off by the shutdown, e.g. %s", len(cutOff), cutOff[0])
	} else if len(cutOff) > 0 {
		t.Logf("%d requests met the keep-alive race at the stop: %v", len(cutOff), cutOff)
	}
	if len(bindings) < 20 {
		t.Fatalf("only %d bindings acknowledged", len(bindings))
	}
	rows, err := c.db.Query(`SELECT address, mxid FROM bindings WHERE medium = 'email'`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	stored := map[string]string{}
	for rows.Next() {
		var a, m string
		if err := rows.Scan(&a, &m); err != nil {
			t.Fatal(err)
		}
		stored[a] = m
	}
	for addr, mxid := range bindings {
		if stored[addr] != mxid {
			t.Errorf("acknowledged binding %s → %s not stored (%q)", addr, mxid, stored[addr])
		}
	}
	t.Logf("%d bindings acknowledged across the stop, all stored", len(bindings))
}
