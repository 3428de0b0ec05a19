package app_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/gofhir/models/r4"

	"github.com/ozo-platform/ozo-identity/api/apitest"
	"github.com/ozo-platform/ozo-identity/audit"
	"github.com/ozo-platform/ozo-identity/config"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
)

type strictAuditEvent r4.AuditEvent

// TestAuditPushToRepository: AuditEvents reach an audit record repository as FHIR batch
// Bundles; a refused push stays queued and is retried; nothing is sent twice once accepted.
func TestAuditPushToRepository(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		var mu sync.Mutex
		accepted := map[string]int{}
		requests := 0
		arr := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			defer mu.Unlock()
			requests++
			if requests == 1 {
				http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
				return
			}
			var bundle struct {
				ResourceType, Type string
				Entry              []struct {
					Resource json.RawMessage
					Request  struct{ Method, URL string }
				}
			}
			body, _ := io.ReadAll(r.Body)
			if err := json.Unmarshal(body, &bundle); err != nil || bundle.ResourceType != "Bundle" || bundle.Type != "batch" ||
				r.Header.Get("Content-Type") != "application/fhir+json" {
				t.Errorf("push: %v %s %s", err, r.Header.Get("Content-Type"), body)
			}
			var resp []map[string]any
			for _, entry := range bundle.Entry {
				dec := json.NewDecoder(bytes.NewReader(entry.Resource))
				dec.DisallowUnknownFields()
				var ev strictAuditEvent
				if err := dec.Decode(&ev); err != nil || entry.Request.Method != "POST" || entry.Request.URL != "AuditEvent" {
					t.Errorf("pushed entry: %v %s", err, entry.Resource)
					continue
				}
				accepted[*ev.Id]++
				resp = append(resp, map[string]any{"response": map[string]string{"status": "201 Created"}})
			}
			w.Header().Set("Content-Type", "application/fhir+json")
			json.NewEncoder(w).Encode(map[string]any{"resourceType": "Bundle", "type": "batch-response", "entry": resp})
		}))
		t.Cleanup(arr.Close)
		h := apitest.New(t, e, func(c *config.Config) {
			c.Audit.Push = config.AuditPush{URL: arr.URL, BundleType: "batch", BatchSize: 5, Interval: time.Hour}
		})
		for i := range 12 {
			if err := h.App.Store.AppendAudit(t.Context(), audit.Record{Action: audit.ActionAdminCall, Outcome: audit.OutcomeSuccess,
				Actor: audit.Agent{Kind: audit.AgentAdmin}, Resource: fmt.Sprint("GET /n/", i)}); err != nil {
				t.Fatal(err)
			}
		}
		head, _ := h.App.Store.AuditHead(t.Context())
		client := &http.Client{Timeout: 5 * time.Second}
		deadline := time.Now().Add(20 * time.Second)
		for {
			h.App.PushAuditOnce(t.Context(), client)
			mu.Lock()
			n := len(accepted)
			mu.Unlock()
			if n == int(head.Seq) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d of %d events accepted after %d requests", n, head.Seq, requests)
			}
			time.Sleep(200 * time.Millisecond)
		}
		mu.Lock()
		defer mu.Unlock()
		for id, n := range accepted {
			if n != 1 {
				t.Errorf("event %s accepted %d times", id, n)
			}
		}
		if requests < 2 {
			t.Fatalf("the refused push was not retried: %d requests", requests)
		}
	})
}

// TestAuditRetentionWaitsForCheckpoint: old records are removed only once an exported
// checkpoint covers them, and the chain still verifies against that checkpoint.
func TestAuditRetentionWaitsForCheckpoint(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		h := apitest.New(t, e, func(c *config.Config) { c.Audit.Retention = 24 * time.Hour })
		ctx := t.Context()
		old := time.Now().Add(-72 * time.Hour)
		for i := range 10 {
			if err := h.App.Store.AppendAudit(ctx, audit.Record{At: old, Action: audit.ActionAdminCall, Outcome: audit.OutcomeSuccess,
				Actor: audit.Agent{Kind: audit.AgentAdmin}, Resource: fmt.Sprint("GET /old/", i)}); err != nil {
				t.Fatal(err)
			}
		}
		h.App.PruneAudit(ctx)
		if head, _ := h.App.Store.AuditHead(ctx); head.PrunedSeq != 0 {
			t.Fatalf("pruned %d records without a checkpoint", head.PrunedSeq)
		}
		cp, err := h.App.Checkpoint(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.App.Store.AppendAudit(ctx, audit.Record{Action: audit.ActionAdminCall, Outcome: audit.OutcomeSuccess,
			Actor: audit.Agent{Kind: audit.AgentAdmin}, Resource: "GET /new"}); err != nil {
			t.Fatal(err)
		}
		h.App.PruneAudit(ctx)
		head, _ := h.App.Store.AuditHead(ctx)
		if head.PrunedSeq != cp.Seq || head.Seq != cp.Seq+1 {
			t.Fatalf("head after retention %+v, checkpoint %d", head, cp.Seq)
		}
		if rep, err := h.App.VerifyAudit(ctx, &cp); err != nil || rep.Records != 1 {
			t.Fatalf("verify after retention: %+v %v", rep, err)
		}
	})
}
