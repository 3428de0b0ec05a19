package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

// inviteAndBind stores an invite for a new address and binds it at r (not through the balancer),
// so that r queues the onbind and wakes its own worker to send it; it returns the invite token.
func (c *cluster) inviteAndBind(t *testing.T, r *replica, token, sender, addr string) string {
	t.Helper()
	post := func(path, bearer string, body any) []byte {
		data, _ := json.Marshal(body)
		req, _ := http.NewRequest(http.MethodPost, r.url+path, bytes.NewReader(data))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+bearer)
		resp, err := c.client.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %d %s", path, resp.StatusCode, b)
		}
		return b
	}
	var inv struct{ Token string }
	json.Unmarshal(post("/_matrix/identity/v2/store-invite", token, map[string]any{
		"medium": "email", "address": addr, "room_id": "!room:" + c.hs.Name, "sender": sender}), &inv)
	post("/_ozo/admin/v1/bindings", replicaAdminToken, map[string]any{"medium": "email", "address": addr,
		"mxid": "@" + strings.Split(addr, "@")[0] + ":" + c.hs.Name})
	return inv.Token
}

// deliveries counts how often the homeserver received each invite token in an onbind.
func (c *cluster) deliveries() map[string]int {
	n := map[string]int{}
	for _, ob := range c.hs.OnBinds() {
		var body struct {
			Invites []struct{ Token string } `json:"invites"`
		}
		json.Unmarshal(ob.Body, &body)
		for _, inv := range body.Invites {
			n[inv.Token]++
		}
	}
	return n
}

func (c *cluster) queued(t *testing.T) int {
	t.Helper()
	var n int
	if err := c.db.QueryRow(`SELECT count(*) FROM onbind_queue`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func waitUntil(t *testing.T, within time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > within {
			t.Fatalf("not within %s: %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start)
}

// SIGTERM while the replica holds the mCSD sync lease, answers registrations that wait on a slow
// homeserver, and sends an onbind the homeserver takes seconds to answer: the requests in flight
// are answered, new connections are refused, the onbind is finished and recorded (delivered
// once, the queue empty — the other replica never had to wait out the claim), the lease is
// released so the other replica syncs at once rather than after the lease's ttl, and the process
// exits 0.
func TestReplicaDrainsOnSIGTERM(t *testing.T) {
	if testing.Short() {
		t.Skip("runs two servers")
	}
	const leaseTTL = 30 * time.Second
	c := newCluster(t, 2, fmt.Sprintf("OZO_DIRECTORY_SYNC_LEASE_TTL=%s", leaseTTL), "OZO_SHUTDOWN_DRAIN_TIMEOUT=15s")
	victim, survivor := c.replicas[0], c.replicas[1]
	token, sender := c.register(t, "sender", "10.9.0.1")
	const slow = 4 * time.Second
	c.hs.SetDelay(slow)

	// Wait for a moment when the victim holds the lease, then start an onbind and registrations
	// there; SIGTERM while both are in flight. Its schedule alternates with the survivor's.
	var invite string
	var heldAtTerm bool
	for try := 0; ; try++ {
		if try == 20 {
			t.Fatal("the victim never held the sync lease")
		}
		waitUntil(t, 30*time.Second, "a sync lease holder", func() bool { return c.leaseHolderPID() != 0 })
		if c.leaseHolderPID() != victim.processID {
			time.Sleep(200 * time.Millisecond)
			continue
		}
		before := len(c.hs.OnBinds())
		invite = c.inviteAndBind(t, victim, token, sender, fmt.Sprintf("drain%d@patient.example", try))
		waitUntil(t, 2*time.Second, "the onbind reaching the homeserver", func() bool { return len(c.hs.OnBinds()) > before })
		heldAtTerm = c.leaseHolderPID() == victim.processID
		break
	}
	type answer struct {
		status int
		err    error
	}
	answers := make(chan answer, 4)
	fresh := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for i := range 4 {
		go func() {
			openID, _ := c.hs.IssueOpenIDToken(fmt.Sprintf("late%d", i))
			body, _ := json.Marshal(map[string]any{"access_token": openID, "token_type": "Bearer",
				"matrix_server_name": c.hs.Name, "expires_in": 3600})
			resp, err := fresh.Post(victim.url+"/_matrix/identity/v2/account/register", "application/json", bytes.NewReader(body))
			if err != nil {
				answers <- answer{err: err}
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			answers <- answer{status: resp.StatusCode}
		}()
	}
	time.Sleep(300 * time.Millisecond) // the registrations wait on the homeserver now
	victim.cmd.Process.Signal(syscall.SIGTERM)
	termed := time.Now()
	t.Logf("SIGTERM with an onbind and 4 registrations in flight; sync lease held: %v", heldAtTerm)

	// New connections are refused once the listener is closed (shutdown.delay is 0).
	refused := false
	for time.Since(termed) < 2*time.Second && !refused {
		conn, err := net.DialTimeout("tcp", strings.TrimPrefix(victim.url, "http://"), time.Second)
		var opErr *net.OpError
		if errors.As(err, &opErr) && errors.Is(err, syscall.ECONNREFUSED) {
			refused = true
			break
		}
		if conn != nil {
			conn.Close()
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !refused {
		t.Error("the stopping replica still accepted connections 2s after SIGTERM")
	}
	if heldAtTerm {
		took := waitUntil(t, 10*time.Second, "the survivor taking the sync lease", func() bool { return c.leaseHolderPID() == survivor.processID })
		t.Logf("the survivor held the sync lease %s after SIGTERM (ttl %s)", took.Round(time.Millisecond), leaseTTL)
	}
	for range 4 {
		a := <-answers
		if a.err != nil || a.status != http.StatusOK {
			t.Errorf("registration in flight at SIGTERM: %d %v", a.status, a.err)
		}
	}
	select {
	case <-victim.exited:
	case <-time.After(20 * time.Second):
		t.Fatalf("%s still running 20s after SIGTERM", victim.name)
	}
	victim.dead.Store(true)
	if victim.waitErr != nil {
		t.Errorf("%s exited with %v after SIGTERM, want 0", victim.name, victim.waitErr)
	}
	exited := time.Since(termed)
	if exited < slow-time.Second {
		t.Errorf("%s exited %s after SIGTERM, before its onbind (%s at the homeserver) was answered", victim.name, exited, slow)
	}
	t.Logf("%s exited 0 %s after SIGTERM", victim.name, exited.Round(time.Millisecond))
	// The onbind was finished by the victim: recorded done, not left for the claim to run out.
	if n := c.queued(t); n != 0 {
		t.Errorf("%d onbinds still queued after the victim finished its delivery", n)
	}
	if n := c.deliveries()[invite]; n != 1 {
		t.Errorf("the onbind in flight at SIGTERM reached the homeserver %d times, want 1", n)
	}
	log := victim.log.String()
	if !strings.Contains(log, `"msg":"stopped"`) || strings.Contains(log, "cut off") {
		t.Errorf("%s did not stop cleanly:\n%s", victim.name, tailString(log, 20))
	}
	if heldAtTerm && c.leaseHolderPID() == victim.processID {
		t.Error("the victim still holds the sync lease after exiting")
	}
}

// A drain deadline shorter than the homeserver's answer: the replica cuts the onbind off at the
// deadline, gives its claim back and exits 0; the other replica sends it at its next look at
// the queue (seconds), not after the claim (a minute). The homeserver sees it twice: whether the
// first arrived is unknown to the sender, so delivery is at-least-once.
func TestReplicaGivesBackWhatItCannotFinish(t *testing.T) {
	if testing.Short() {
		t.Skip("runs two servers")
	}
	c := newCluster(t, 2, "OZO_DIRECTORY_SYNC_INTERVAL=0s", "OZO_SHUTDOWN_DRAIN_TIMEOUT=1s", "OZO_INVITES_ONBIND_CLAIM_TTL=1m")
	victim := c.replicas[0]
	token, sender := c.register(t, "sender", "10.9.0.1")
	c.hs.SetDelay(30 * time.Second)
	before := len(c.hs.OnBinds())
	invite := c.inviteAndBind(t, victim, token, sender, "cut@patient.example")
	waitUntil(t, 5*time.Second, "the onbind reaching the homeserver", func() bool { return len(c.hs.OnBinds()) > before })
	victim.cmd.Process.Signal(syscall.SIGTERM)
	termed := time.Now()
	c.hs.SetDelay(0)
	if err := victim.wait(); err != nil {
		t.Errorf("%s exited with %v, want 0", victim.name, err)
	}
	victim.dead.Store(true)
	if d := time.Since(termed); d > 5*time.Second {
		t.Errorf("%s took %s to exit with a 1s drain deadline", victim.name, d)
	}
	if log := victim.log.String(); !strings.Contains(log, "given back to the queue") {
		t.Errorf("%s did not give the onbind back:\n%s", victim.name, tailString(log, 20))
	}
	waitUntil(t, 20*time.Second, "the survivor sending the given-back onbind", func() bool {
		return c.deliveries()[invite] == 2 && c.queued(t) == 0
	})
	t.Logf("the survivor delivered it again %s after SIGTERM (the claim would have held it 1m)", time.Since(termed).Round(time.Millisecond))
}
