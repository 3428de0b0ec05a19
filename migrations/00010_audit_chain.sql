-- +goose Up
-- The keyed audit chain (issue 13). The old unkeyed log is kept, renamed, for reading: its
-- records cannot be re-chained without rewriting them.
ALTER TABLE audit_log RENAME TO audit_log_legacy;

CREATE TABLE audit_records (
    seq          BIGINT PRIMARY KEY,
    at           BIGINT NOT NULL,
    action       TEXT NOT NULL,
    outcome      TEXT NOT NULL,
    actor_kind   TEXT NOT NULL,
    actor        TEXT NOT NULL,
    on_behalf_of TEXT NOT NULL,
    medium       TEXT NOT NULL,
    address      TEXT NOT NULL,
    resource     TEXT NOT NULL,
    source       TEXT NOT NULL,
    request_id   TEXT NOT NULL,
    detail       TEXT NOT NULL,
    count        BIGINT NOT NULL,
    found        BIGINT NOT NULL,
    prev_mac     TEXT NOT NULL,
    mac          TEXT NOT NULL
);
CREATE INDEX audit_records_at ON audit_records (at);

-- One row: appends lock it (SELECT … FOR UPDATE on PostgreSQL) in the transaction of the change
-- they record, so concurrent appends queue instead of racing for the next sequence number.
CREATE TABLE audit_head (
    id         INTEGER PRIMARY KEY,
    seq        BIGINT NOT NULL,
    mac        TEXT NOT NULL,
    pruned_seq BIGINT NOT NULL,
    pruned_mac TEXT NOT NULL,
    queued_seq BIGINT NOT NULL
);
INSERT INTO audit_head (id, seq, mac, pruned_seq, pruned_mac, queued_seq) VALUES (1, 0, '', 0, '', 0);

CREATE TABLE audit_checkpoints (
    seq        BIGINT PRIMARY KEY,
    mac        TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    body       TEXT NOT NULL
);

-- Batches of records waiting to be pushed to the audit record repository.
CREATE TABLE audit_push_queue (
    first_seq       BIGINT PRIMARY KEY,
    last_seq        BIGINT NOT NULL,
    attempts        INTEGER NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    last_error      TEXT NOT NULL
);
CREATE INDEX audit_push_queue_due ON audit_push_queue (next_attempt_at);

-- +goose Down
DROP TABLE audit_push_queue;
DROP TABLE audit_checkpoints;
DROP TABLE audit_head;
DROP TABLE audit_records;
ALTER TABLE audit_log_legacy RENAME TO audit_log;
