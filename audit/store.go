package audit

import (
	"context"
	"errors"
	"time"
)

// ErrNoCheckpoint: no checkpoint has been exported yet.
var ErrNoCheckpoint = errors.New("audit: no checkpoint exported yet")

// Store keeps the chain. Changes to other state append their records inside their own
// transaction (the store methods that make them take the records); Append is for records
// that describe no stored change (lookups, admin reads, refused attempts).
type Store interface {
	// AppendAudit cleans, chains and stores recs in one transaction, all or nothing.
	AppendAudit(ctx context.Context, recs ...Record) error
	// AuditHead returns the chain head.
	AuditHead(ctx context.Context) (Head, error)
	// ScanAudit calls fn for every record with after < seq <= upTo in order, reading in
	// pages so that the whole chain is never in memory.
	ScanAudit(ctx context.Context, after, upTo int64, fn func(Record) error) error
	// ListAudit returns up to limit records with seq > after recorded at or after since.
	ListAudit(ctx context.Context, since time.Time, after int64, limit int) ([]Record, error)

	// SaveCheckpoint remembers an exported checkpoint (retention may remove what it covers).
	SaveCheckpoint(ctx context.Context, cp Checkpoint) error
	// LatestCheckpoint returns the newest exported checkpoint, or ErrNoCheckpoint.
	LatestCheckpoint(ctx context.Context) (Checkpoint, error)
	// PruneAudit removes the oldest records recorded before before, but none after upTo,
	// keeping the chain verifiable from the newest removed record; it returns how many.
	PruneAudit(ctx context.Context, before time.Time, upTo int64) (int64, error)

	// EnqueueAuditPush queues the records not yet queued for the audit record repository, in
	// batches of at most batch records; it returns how many batches it queued.
	EnqueueAuditPush(ctx context.Context, batch int, now time.Time) (int, error)
	// ClaimAuditPush takes one due batch for this replica until until; ok is false when none is due.
	ClaimAuditPush(ctx context.Context, now, until time.Time) (b PushBatch, ok bool, err error)
	AuditPushDone(ctx context.Context, id int64) error
	AuditPushFailed(ctx context.Context, id int64, next time.Time, lastError string) error
	// ReleaseAuditPush gives a claim up (a replica stopping mid-push): the batch is due at once,
	// unless its claim (claimed, as given to ClaimAuditPush) was already taken over.
	ReleaseAuditPush(ctx context.Context, id int64, claimed time.Time) error
}

// PushBatch is a queued range of records for the audit record repository.
type PushBatch struct {
	ID        int64 // the first sequence number
	LastSeq   int64
	Attempts  int
	LastError string
}
