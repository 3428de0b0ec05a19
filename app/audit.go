package app

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ozo-platform/ozo-identity/audit"
	"github.com/ozo-platform/ozo-identity/config"
	"github.com/ozo-platform/ozo-identity/lookup/mcsd"
)

// settingAuditKeyID remembers which key the chain is written with, so a replica or restart
// with another key refuses to start instead of writing records no verification accepts.
const settingAuditKeyID = "audit_key_id"

// AuditKeyFile is where the chain key is read from (and generated into when absent).
func AuditKeyFile(cfg config.Config) string {
	if cfg.Audit.KeyFile != "" {
		return cfg.Audit.KeyFile
	}
	return filepath.Join(cfg.DataDir, "audit.key")
}

// auditChain loads (or generates) the chain key and checks it is the one the chain was written with.
func auditChain(ctx context.Context, cfg config.Config, store interface {
	SetSettingIfAbsent(ctx context.Context, name, value string) (string, error)
}, log interface{ Warn(string, ...any) }) (*audit.Chain, error) {
	key, created, err := audit.LoadKey(cfg.Audit.Key, AuditKeyFile(cfg))
	if err != nil {
		return nil, err
	}
	chain, err := audit.NewChain(key)
	if err != nil {
		return nil, err
	}
	if created {
		log.Warn("generated the audit chain key; back it up apart from the database (without it the audit trail cannot be verified)",
			"file", AuditKeyFile(cfg))
	}
	stored, err := store.SetSettingIfAbsent(ctx, settingAuditKeyID, chain.KeyID())
	if err != nil {
		return nil, fmt.Errorf("audit key id: %w", err)
	}
	if stored != chain.KeyID() {
		return nil, fmt.Errorf("the audit key (%s) is not the key the audit chain was written with (id %s): give every replica the same audit.key_file or OZO_AUDIT_KEY",
			AuditKeyFile(cfg), stored)
	}
	return chain, nil
}

// Checkpoint signs the current chain head with the server's key and remembers it as exported.
func (a *App) Checkpoint(ctx context.Context) (audit.Checkpoint, error) {
	head, err := a.Store.AuditHead(ctx)
	if err != nil {
		return audit.Checkpoint{}, err
	}
	cp := audit.Checkpoint{Server: a.Config.ServerName, Seq: head.Seq, MAC: head.MAC,
		Created: time.Now().UTC().Truncate(time.Millisecond), KeyID: a.Service.Signer().KeyID()}
	if head.Seq > 0 {
		recs, err := a.Store.ListAudit(ctx, time.Time{}, head.Seq-1, 1)
		if err != nil {
			return cp, err
		}
		if len(recs) == 1 {
			cp.At = recs[0].At
		}
	}
	cp.Sign(a.Service.Signer().SignMessage, a.Service.Signer().PublicKey())
	if err := a.Store.SaveCheckpoint(ctx, cp); err != nil {
		return cp, err
	}
	return cp, nil
}

// VerifyAudit checks the whole chain, streaming, against the key and, when given, a checkpoint
// (whose signature must be the server's). It returns the first problem found.
func (a *App) VerifyAudit(ctx context.Context, cp *audit.Checkpoint) (audit.Report, error) {
	if cp != nil {
		pub, err := a.checkpointKey(ctx, cp.KeyID)
		if err != nil {
			return audit.Report{}, err
		}
		if err := cp.VerifySignature(pub); err != nil {
			return audit.Report{}, err
		}
	}
	head, err := a.Store.AuditHead(ctx)
	if err != nil {
		return audit.Report{}, err
	}
	v := audit.NewVerifier(a.Chain, head, cp)
	if err := a.Store.ScanAudit(ctx, head.PrunedSeq, head.Seq, v.Add); err != nil {
		rep, _ := v.Finish()
		return rep, err
	}
	return v.Finish()
}

// checkpointKey is the public key a checkpoint was signed with: the current signing key or an
// earlier one, retired or not (retiring stops invites, not the audit trail's proofs).
func (a *App) checkpointKey(ctx context.Context, keyID string) (string, error) {
	if keyID == "" || keyID == a.Service.Signer().KeyID() {
		return a.Service.Signer().PublicKey(), nil
	}
	keys, err := a.Service.SigningKeys(ctx)
	if err != nil {
		return "", err
	}
	for _, k := range keys {
		if k.ID == keyID {
			return k.PublicKey, nil
		}
	}
	return "", fmt.Errorf("the checkpoint is signed with %s, a key this server never recorded", keyID)
}

// RecordDirectorySync appends an audit record per directory a sync worked on.
func (a *App) RecordDirectorySync(ctx context.Context, reports []mcsd.DirectoryReport) {
	var recs []audit.Record
	for _, r := range reports {
		if r.Skipped != "" {
			continue
		}
		rec := audit.Record{Action: audit.ActionDirectorySync, Outcome: audit.OutcomeSuccess,
			Actor: audit.Agent{Kind: audit.AgentSystem}, Resource: r.Directory, Count: int64(r.Applied),
			Detail: fmt.Sprintf("fetched=%d applied=%d deleted=%d rejected=%d", r.Fetched, r.Applied, r.Deleted, r.Rejected)}
		if r.Err != nil {
			rec.Outcome = audit.OutcomeError
			rec.Detail += " error=" + r.Err.Error()
		}
		recs = append(recs, rec)
	}
	if len(recs) == 0 {
		return
	}
	if err := a.Store.AppendAudit(context.WithoutCancel(ctx), recs...); err != nil {
		a.log.Error("audit records of a directory sync not written", "err", err)
	}
}

// auditWorkers runs the lookup aggregator, scheduled checkpoints, retention and the push.
func (a *App) auditWorkers(l lifetimes) {
	ctx := l.jobs
	a.workers.Go(func() { a.Lookups.Run(l.lookups) })
	if iv := a.Config.Audit.CheckpointInterval; iv > 0 {
		a.workers.Go(func() {
			for {
				select {
				case <-ctx.Done():
					return
				case <-time.After(iv):
				}
				if path, err := a.ExportCheckpoint(ctx, ""); err != nil && ctx.Err() == nil {
					a.log.Error("audit checkpoint", "err", err)
				} else if err == nil {
					a.log.Info("audit checkpoint exported", "file", path)
				}
			}
		})
	}
	if a.Config.Audit.Push.URL != "" {
		a.workers.Go(func() { a.pushAudit(l.queues, l.stop) })
	}
}

// ExportCheckpoint writes a new checkpoint to file, or into audit.checkpoint_dir when file is empty.
func (a *App) ExportCheckpoint(ctx context.Context, file string) (string, error) {
	cp, err := a.Checkpoint(ctx)
	if err != nil {
		return "", err
	}
	if file == "" {
		dir := a.Config.Audit.CheckpointDir
		if dir == "" {
			dir = filepath.Join(a.Config.DataDir, "audit-checkpoints")
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return "", fmt.Errorf("checkpoint directory: %w", err)
		}
		file = filepath.Join(dir, fmt.Sprintf("checkpoint-%d-%s.json", cp.Seq, cp.Created.Format("20060102T150405Z")))
	}
	data, _ := json.MarshalIndent(cp, "", "  ")
	if err := os.WriteFile(file, append(data, '\n'), 0o600); err != nil {
		return "", fmt.Errorf("write checkpoint: %w", err)
	}
	return file, nil
}

// PruneAudit removes records older than audit.retention that the latest exported checkpoint
// covers (and that wait in no push batch).
func (a *App) PruneAudit(ctx context.Context) {
	if a.Config.Audit.Retention <= 0 {
		return
	}
	cp, err := a.Store.LatestCheckpoint(ctx)
	if errors.Is(err, audit.ErrNoCheckpoint) {
		a.log.Warn("audit retention waits for a checkpoint: nothing is removed before one is exported")
		return
	}
	if err != nil {
		a.log.Warn("audit retention", "err", err)
		return
	}
	upTo := cp.Seq
	n, err := a.Store.PruneAudit(ctx, time.Now().Add(-a.Config.Audit.Retention), upTo)
	if err != nil {
		a.log.Warn("audit retention", "err", err)
	} else if n > 0 {
		a.log.Info("removed audit records past retention", "records", n, "checkpoint", cp.Seq)
	}
}

// pushAudit sends queued batches to the audit record repository, retrying failed ones with
// backoff, until stop is closed (a batch in flight is finished) or ctx ends (the drain deadline).
func (a *App) pushAudit(ctx context.Context, stop <-chan struct{}) {
	client := &http.Client{Timeout: 30 * time.Second}
	if tlsCfg, err := tlsWithCA(a.Config.Audit.Push.CAFile); err != nil {
		a.log.Error("audit.push.ca_file", "err", err)
		return
	} else if tlsCfg != nil {
		client.Transport = &http.Transport{TLSClientConfig: tlsCfg}
	}
	t := time.NewTicker(a.Config.Audit.Push.Interval)
	defer t.Stop()
	for {
		a.pushAuditOnce(ctx, stop, client)
		select {
		case <-ctx.Done():
			return
		case <-stop:
			return
		case <-t.C:
		}
	}
}

// PushAuditOnce queues the new records and sends every due batch; it returns how many were sent.
func (a *App) PushAuditOnce(ctx context.Context, client *http.Client) int {
	return a.pushAuditOnce(ctx, nil, client)
}

// auditPushClaim hides a batch being sent from the other replicas.
const auditPushClaim = 2 * time.Minute

func (a *App) pushAuditOnce(ctx context.Context, stop <-chan struct{}, client *http.Client) int {
	cfg := a.Config.Audit.Push
	if _, err := a.Store.EnqueueAuditPush(ctx, cfg.BatchSize, time.Now()); err != nil {
		a.log.Warn("audit push: queue", "err", err)
		return 0
	}
	sent := 0
	for ctx.Err() == nil {
		select {
		case <-stop:
			return sent
		default:
		}
		now := time.Now()
		claimed := now.Add(auditPushClaim)
		b, ok, err := a.Store.ClaimAuditPush(ctx, now, claimed)
		if err != nil {
			a.log.Warn("audit push: claim", "err", err)
			return sent
		}
		if !ok {
			return sent
		}
		err = a.pushBatch(ctx, client, b)
		if err != nil && ctx.Err() != nil {
			// Cut off by the drain deadline: the next replica to look sends it again, now.
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			if err := a.Store.ReleaseAuditPush(rctx, b.ID, claimed); err != nil {
				a.log.Warn("audit push cut off by the shutdown; its claim runs out by itself", "first_seq", b.ID, "err", err)
			}
			cancel()
			return sent
		}
		if err != nil {
			backoff := time.Second << min(b.Attempts, 12)
			a.log.Warn("audit push failed, will retry", "first_seq", b.ID, "attempts", b.Attempts+1, "in", backoff, "err", err)
			if err := a.Store.AuditPushFailed(ctx, b.ID, now.Add(backoff), err.Error()); err != nil {
				a.log.Warn("audit push: reschedule", "err", err)
			}
			return sent
		}
		// Recorded even past the drain deadline: a batch the repository took is not sent again.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		err = a.Store.AuditPushDone(dctx, b.ID)
		cancel()
		if err != nil {
			a.log.Warn("audit push: done", "err", err)
			return sent
		}
		sent++
	}
	return sent
}

func (a *App) pushBatch(ctx context.Context, client *http.Client, b audit.PushBatch) error {
	obs := a.observer()
	var events []audit.AuditEvent
	if err := a.Store.ScanAudit(ctx, b.ID-1, b.LastSeq, func(r audit.Record) error {
		events = append(events, r.AuditEvent(obs))
		return nil
	}); err != nil {
		return err
	}
	body, err := json.Marshal(audit.Bundle(events, a.Config.Audit.Push.BundleType))
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(a.Config.Audit.Push.URL, "/"), bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/fhir+json")
	req.Header.Set("Accept", "application/fhir+json")
	if a.Config.Audit.Push.Token != "" {
		req.Header.Set("Authorization", "Bearer "+a.Config.Audit.Push.Token)
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("audit record repository answered %s", resp.Status)
	}
	// A batch answers 200 even when entries failed: each entry has its own status.
	var out struct {
		Entry []struct {
			Response struct {
				Status string `json:"status"`
			} `json:"response"`
		} `json:"entry"`
	}
	if err := json.Unmarshal(data, &out); err != nil {
		return fmt.Errorf("audit record repository answer: %w", err)
	}
	if len(out.Entry) != len(events) {
		return fmt.Errorf("audit record repository answered %d entries for %d events", len(out.Entry), len(events))
	}
	for i, e := range out.Entry {
		if !strings.HasPrefix(e.Response.Status, "2") {
			return fmt.Errorf("audit record repository refused event %d: %s", b.ID+int64(i), e.Response.Status)
		}
	}
	return nil
}

func (a *App) observer() audit.Observer {
	return audit.Observer{ServerName: a.Config.ServerName, BaseURL: a.Config.PublicBaseURL}
}
