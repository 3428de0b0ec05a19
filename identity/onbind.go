package identity

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/ozo-platform/ozo-identity/storage"
)

// OnBinder delivers /3pid/onbind calls to homeservers.
type OnBinder interface {
	OnBind(ctx context.Context, serverName string, body []byte) error
}

// onBindDelivery builds the onbind call for the invites pending on a new binding. Each invite's
// "signed" holds exactly mxid and token: homeservers re-serialise just those two to verify it.
func (s *Service) onBindDelivery(b storage.Binding, assoc Association, invites []storage.Invite) (storage.OnBindDelivery, error) {
	var list []map[string]any
	for _, inv := range invites {
		signed := map[string]any{"mxid": b.MXID, "token": inv.Token}
		if err := s.signer.Sign(signed); err != nil {
			return storage.OnBindDelivery{}, err
		}
		list = append(list, map[string]any{
			"address": b.Address, "medium": b.Medium, "mxid": b.MXID,
			"room_id": inv.RoomID, "sender": inv.Sender, "token": inv.Token, "signed": signed,
		})
	}
	body := map[string]any{}
	for k, v := range assoc {
		body[k] = v
	}
	body["invites"] = list
	data, err := json.Marshal(body)
	if err != nil {
		return storage.OnBindDelivery{}, err
	}
	now := s.now()
	return storage.OnBindDelivery{ID: randomToken(12), ServerName: ServerOf(b.MXID), Body: data,
		NextAttemptAt: now, ExpiresAt: now.Add(s.opts.OnBindRetryFor), CreatedAt: now}, nil
}

// Wake makes the onbind worker look at the queue now.
func (s *Service) Wake() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// DeliverOnBinds drains the onbind queue until ctx ends: each delivery is claimed (so replicas do
// not send it twice at once), sent, and retried with exponential backoff until it expires.
// permanent reports errors that retrying cannot fix (a 4xx from the homeserver).
func (s *Service) DeliverOnBinds(ctx context.Context, hs OnBinder, permanent func(error) bool, poll time.Duration) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-s.wake:
		}
		s.deliverDue(ctx, hs, permanent)
		timer.Reset(poll)
	}
}

// claimFor is how long a claimed delivery is hidden from other replicas while it is attempted.
const claimFor = time.Minute

func (s *Service) deliverDue(ctx context.Context, hs OnBinder, permanent func(error) bool) {
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
			won, err := s.store.ClaimDelivery(ctx, d.ID, d.NextAttemptAt, now.Add(claimFor))
			if err != nil || !won {
				continue
			}
			s.attempt(ctx, hs, permanent, d)
		}
	}
}

func (s *Service) attempt(ctx context.Context, hs OnBinder, permanent func(error) bool, d storage.OnBindDelivery) {
	actx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err := hs.OnBind(actx, d.ServerName, d.Body)
	cancel()
	now := s.now()
	switch {
	case err == nil:
		s.log.Info("onbind delivered", "server", d.ServerName, "attempts", d.Attempts+1)
		if err := s.store.DeliveryDone(ctx, d.ID); err != nil {
			s.log.Error("onbind done", "err", err)
		}
		return
	case permanent(err) || now.After(d.ExpiresAt):
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
		if err := s.store.DeliveryDone(ctx, d.ID); err != nil {
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
