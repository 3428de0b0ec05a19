package identity

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/ozo-platform/ozo-identity/audit"
	"github.com/ozo-platform/ozo-identity/internal/matrixid"
)

// OnBinder delivers /3pid/onbind calls to homeservers.
type OnBinder interface {
	OnBind(ctx context.Context, serverName string, body []byte) error
}

// Default bounds of one onbind request: Synapse and Dendrite refuse large bodies (413), and one
// refused request must not take many invites with it.
const (
	defaultOnBindMaxInvites = 50
	defaultOnBindMaxBytes   = 64 << 10
)

// onBindDeliveries builds the onbind calls for the invites pending on a new binding, in batches
// bounded by count and bytes. Each invite's "signed" holds exactly mxid and token: homeservers
// re-serialise just those two to verify it.
func (s *Service) onBindDeliveries(b Binding, assoc Association, invites []Invite) ([]OnBindDelivery, error) {
	maxInvites := cmp.Or(s.opts.OnBindMaxInvites, defaultOnBindMaxInvites)
	maxBytes := cmp.Or(s.opts.OnBindMaxBytes, defaultOnBindMaxBytes)
	base, err := json.Marshal(assoc)
	if err != nil {
		return nil, err
	}
	var out []OnBindDelivery
	var batch []json.RawMessage
	size := len(base) + len(`,"invites":[]`)
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		d, err := s.onBindDelivery(b, assoc, batch)
		if err != nil {
			return err
		}
		out = append(out, d)
		batch, size = nil, len(base)+len(`,"invites":[]`)
		return nil
	}
	for _, inv := range invites {
		signed := map[string]any{"mxid": b.MXID, "token": inv.Token}
		if err := s.signer.SignInvite(signed); err != nil {
			return nil, err
		}
		entry, err := json.Marshal(map[string]any{
			"address": b.Address, "medium": b.Medium, "mxid": b.MXID,
			"room_id": inv.RoomID, "sender": inv.Sender, "token": inv.Token, "signed": signed,
		})
		if err != nil {
			return nil, err
		}
		if len(batch) > 0 && (len(batch) >= maxInvites || size+1+len(entry) > maxBytes) {
			if err := flush(); err != nil {
				return nil, err
			}
		}
		batch = append(batch, entry)
		size += 1 + len(entry)
	}
	if err := flush(); err != nil {
		return nil, err
	}
	return out, nil
}

// onBindDelivery builds one onbind call: the signed association and a batch of invites.
func (s *Service) onBindDelivery(b Binding, assoc Association, invites []json.RawMessage) (OnBindDelivery, error) {
	body := map[string]any{}
	for k, v := range assoc {
		body[k] = v
	}
	body["invites"] = invites
	data, err := json.Marshal(body)
	if err != nil {
		return OnBindDelivery{}, err
	}
	now := s.now()
	return OnBindDelivery{ID: randomToken(12), ServerName: matrixid.ServerOf(b.MXID), Body: data,
		NextAttemptAt: now, ExpiresAt: now.Add(s.opts.OnBindRetryFor), CreatedAt: now}, nil
}

// splitDelivery cuts a batch into one delivery per invite, so that an invite the homeserver
// refuses fails on its own; ok is false for a delivery of one invite.
func (s *Service) splitDelivery(d OnBindDelivery) (parts []OnBindDelivery, ok bool) {
	var body map[string]json.RawMessage
	if err := json.Unmarshal(d.Body, &body); err != nil {
		return nil, false
	}
	var invites []json.RawMessage
	if err := json.Unmarshal(body["invites"], &invites); err != nil || len(invites) < 2 {
		return nil, false
	}
	now := s.now()
	for _, inv := range invites {
		body["invites"] = json.RawMessage("[" + string(inv) + "]")
		data, err := json.Marshal(body)
		if err != nil {
			return nil, false
		}
		parts = append(parts, OnBindDelivery{ID: randomToken(12), ServerName: d.ServerName, Body: data,
			NextAttemptAt: now, ExpiresAt: d.ExpiresAt, CreatedAt: d.CreatedAt})
	}
	return parts, true
}

// Wake makes the onbind worker look at the queue now.
func (s *Service) Wake() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// DeliverOnBinds drains the onbind queue until stop is closed or ctx ends: each delivery is
// claimed (so replicas do not send it twice at once), sent, and retried with exponential backoff
// until it expires. permanent reports errors that retrying cannot fix (a 4xx from the homeserver).
// Closing stop ends it gracefully: no new delivery is claimed, the one in flight is finished and
// its outcome recorded unless ctx (the drain deadline) ends first; then its claim is given back,
// so another replica sends it at once instead of after the claim.
func (s *Service) DeliverOnBinds(ctx context.Context, stop <-chan struct{}, hs OnBinder, permanent func(error) bool, poll time.Duration) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-stop:
			return
		case <-timer.C:
		case <-s.wake:
		}
		s.deliverDue(ctx, stop, hs, permanent)
		timer.Reset(poll)
	}
}

// DefaultOnBindClaim is how long a claimed delivery is hidden from other replicas while it is
// attempted, unless Options.OnBindClaim says otherwise.
const DefaultOnBindClaim = time.Minute

func (s *Service) onBindClaim() time.Duration { return cmp.Or(s.opts.OnBindClaim, DefaultOnBindClaim) }

func (s *Service) deliverDue(ctx context.Context, stop <-chan struct{}, hs OnBinder, permanent func(error) bool) {
	for ctx.Err() == nil {
		now := s.now()
		due, err := s.store.DueDeliveries(ctx, now, 20)
		if err != nil {
			s.log.Error("read onbind queue", "err", err)
			return
		}
		if len(due) == 0 {
			return
		}
		for _, d := range due {
			select {
			case <-stop:
				return
			default:
			}
			claimed := now.Add(s.onBindClaim())
			won, err := s.store.ClaimDelivery(ctx, d.ID, d.NextAttemptAt, claimed)
			if err != nil || !won {
				continue
			}
			s.attempt(ctx, hs, permanent, d, claimed)
		}
	}
}

// maxAttempt bounds one onbind request; the claim bounds it further.
const maxAttempt = 30 * time.Second

func (s *Service) attempt(ctx context.Context, hs OnBinder, permanent func(error) bool, d OnBindDelivery, claimed time.Time) {
	// Half the claim at most: the outcome is recorded long before another replica may take it.
	actx, cancel := context.WithTimeout(ctx, min(maxAttempt, s.onBindClaim()/2))
	err := hs.OnBind(actx, d.ServerName, d.Body)
	cut := ctx.Err() != nil
	cancel()
	// The outcome is recorded even when the drain deadline passed meanwhile: an onbind the
	// homeserver took must not be sent again for want of a DELETE.
	ctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err != nil && cut {
		// Cut off by the drain deadline: whether the homeserver took it is unknown, so it is sent
		// again (at-least-once) — by the next replica to look, now rather than after the claim.
		if won, rerr := s.store.ClaimDelivery(ctx, d.ID, claimed, s.now()); rerr != nil || !won {
			s.log.Warn("onbind cut off by the shutdown; its claim runs out by itself", "server", d.ServerName, "err", rerr)
		} else {
			s.log.Info("onbind cut off by the shutdown, given back to the queue", "server", d.ServerName)
		}
		return
	}
	now := s.now()
	switch {
	case err == nil:
		s.log.Info("onbind delivered", "server", d.ServerName, "attempts", d.Attempts+1)
		if err := s.store.DeliveryDone(ctx, d.ID, deliveryRecords(d, audit.OutcomeSuccess, "onbind accepted by "+d.ServerName)...); err != nil {
			s.log.Error("onbind done", "err", err)
		}
		return
	case permanent(err) || now.After(d.ExpiresAt):
		// A refused batch is re-sent one invite per request, so one bad invite drops only itself.
		if permanent(err) && !now.After(d.ExpiresAt) {
			if parts, ok := s.splitDelivery(d); ok {
				s.log.Warn("onbind batch refused, sending its invites one by one", "server", d.ServerName, "invites", len(parts), "err", err)
				if err := s.store.ReplaceDelivery(ctx, d.ID, parts); err != nil {
					s.log.Error("onbind split", "err", err)
				}
				return
			}
		}
		errcode, message := "", ""
		var me interface{ MatrixError() (string, string) }
		if errors.As(err, &me) {
			errcode, message = me.MatrixError()
		}
		s.log.Warn("onbind given up", "server", d.ServerName, "attempts", d.Attempts+1,
			"errcode", errcode, "error", message, "expired", !permanent(err), "err", err)
		if s.opts.OnBindGivenUp != nil {
			s.opts.OnBindGivenUp(errcode, !permanent(err))
		}
		detail := fmt.Sprintf("onbind to %s given up after %d attempts: %s %s", d.ServerName, d.Attempts+1, errcode, message)
		if err := s.store.DeliveryDone(ctx, d.ID, deliveryRecords(d, audit.OutcomeError, detail)...); err != nil {
			s.log.Error("onbind give up", "err", err)
		}
		return
	}
	backoff := time.Second << min(d.Attempts, 12) // 1 s doubling up to about an hour
	s.log.Info("onbind failed, will retry", "server", d.ServerName, "attempts", d.Attempts+1, "in", backoff, "err", err)
	if err := s.store.DeliveryFailed(ctx, d.ID, now.Add(backoff), truncate(err.Error(), 500)); err != nil && !errors.Is(err, context.Canceled) {
		s.log.Error("onbind reschedule", "err", err)
	}
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// deliveryRecords are the audit records of the invites an onbind delivery carried.
func deliveryRecords(d OnBindDelivery, outcome audit.Outcome, detail string) []audit.Record {
	var body struct {
		Medium  string `json:"medium"`
		Address string `json:"address"`
		MXID    string `json:"mxid"`
		Invites []struct {
			RoomID string `json:"room_id"`
			Sender string `json:"sender"`
		} `json:"invites"`
	}
	json.Unmarshal(d.Body, &body) // the body is ours; a record is written even if it is not
	var recs []audit.Record
	for _, inv := range body.Invites {
		recs = append(recs, audit.Record{Action: audit.ActionInviteDelivered, Outcome: outcome,
			Actor: audit.Agent{Kind: audit.AgentSystem}, Medium: body.Medium, Address: body.Address,
			Resource: inv.RoomID, OnBehalfOf: inv.Sender, Detail: detail + "; bound to " + body.MXID})
	}
	if len(recs) == 0 {
		recs = append(recs, audit.Record{Action: audit.ActionInviteDelivered, Outcome: outcome,
			Actor: audit.Agent{Kind: audit.AgentSystem}, Medium: body.Medium, Address: body.Address,
			Resource: d.ServerName, Detail: detail})
	}
	return recs
}
