package audit

import (
	"context"
	"sync/atomic"
)

// Scope is who is acting in a request and from where. The HTTP layer puts it in the
// request's context; the domain builds records from it for the store call that makes the change.
type Scope struct {
	Actor      Agent
	OnBehalfOf string
	Source     string
	RequestID  string
	Resource   string // the API path, for records that name no other resource
	// Target says what an admin call concerned, for its record when it changed nothing.
	Target   string
	recorded atomic.Bool
}

type scopeKey struct{}

// WithScope returns ctx carrying s.
func WithScope(ctx context.Context, s *Scope) context.Context {
	return context.WithValue(ctx, scopeKey{}, s)
}

// ScopeFrom returns the scope of ctx; outside a request the actor is the system.
func ScopeFrom(ctx context.Context) *Scope {
	if s, ok := ctx.Value(scopeKey{}).(*Scope); ok && s != nil {
		return s
	}
	return &Scope{Actor: Agent{Kind: AgentSystem}}
}

// Record starts a record of action with the scope's actor, source and request ID.
func (s *Scope) Record(action Action, outcome Outcome) Record {
	return Record{Action: action, Outcome: outcome, Actor: s.Actor, OnBehalfOf: s.OnBehalfOf,
		Source: s.Source, RequestID: s.RequestID, Resource: s.Resource}
}

// MarkRecorded notes that the request's change was recorded with it, so no separate record of
// the call is needed.
func (s *Scope) MarkRecorded() { s.recorded.Store(true) }

// Recorded reports whether MarkRecorded was called.
func (s *Scope) Recorded() bool { return s.recorded.Load() }
