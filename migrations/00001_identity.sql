-- +goose Up
-- Generated values that must survive restarts and be shared by replicas: lookup pepper, signing key.
CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Identity-server access tokens (account/register); only a hash of the token is stored.
CREATE TABLE accounts (
    token_hash TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX accounts_user_id ON accounts (user_id);

CREATE TABLE accepted_terms (
    user_id     TEXT NOT NULL,
    url         TEXT NOT NULL,
    accepted_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, url)
);

CREATE TABLE validation_sessions (
    sid             TEXT PRIMARY KEY,
    client_secret   TEXT NOT NULL,
    medium          TEXT NOT NULL,
    address         TEXT NOT NULL,
    send_attempt    BIGINT NOT NULL,
    next_link       TEXT NOT NULL DEFAULT '',
    created_at      BIGINT NOT NULL,
    validated_at    BIGINT NOT NULL DEFAULT 0,
    failed_attempts INTEGER NOT NULL DEFAULT 0,
    UNIQUE (client_secret, medium, address)
);
CREATE INDEX validation_sessions_created_at ON validation_sessions (created_at);

-- Every token mailed for a session stays valid until it expires, so a user may click any of them.
CREATE TABLE session_tokens (
    sid        TEXT NOT NULL,
    token_hash TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (sid, token_hash)
);

CREATE TABLE bindings (
    medium     TEXT NOT NULL,
    address    TEXT NOT NULL,
    mxid       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    not_before BIGINT NOT NULL,
    not_after  BIGINT NOT NULL,
    source     TEXT NOT NULL DEFAULT 'bind',
    PRIMARY KEY (medium, address)
);
CREATE INDEX bindings_mxid ON bindings (mxid);

-- Lookup hashes of bound 3PIDs for the current pepper, one per accepted medium name (uzi and uzi_nr).
CREATE TABLE binding_hashes (
    hash    TEXT PRIMARY KEY,
    medium  TEXT NOT NULL,
    address TEXT NOT NULL
);
CREATE INDEX binding_hashes_threepid ON binding_hashes (medium, address);

CREATE TABLE invites (
    token        TEXT PRIMARY KEY,
    medium       TEXT NOT NULL,
    address      TEXT NOT NULL,
    room_id      TEXT NOT NULL,
    sender       TEXT NOT NULL,
    extra        TEXT NOT NULL DEFAULT '{}',
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    delivered_at BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX invites_threepid ON invites (medium, address);

CREATE TABLE ephemeral_keys (
    public_key TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL
);

-- The onbind outbox: written in the same transaction as the binding, drained by a worker.
CREATE TABLE onbind_queue (
    id              TEXT PRIMARY KEY,
    server_name     TEXT NOT NULL,
    body            TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    last_error      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX onbind_queue_next ON onbind_queue (next_attempt_at);

-- Append-only, hash-chained: each record's hash covers the previous record's hash.
CREATE TABLE audit_log (
    seq       BIGINT PRIMARY KEY,
    at        BIGINT NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT NOT NULL,
    detail    TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);

-- +goose Down
DROP TABLE audit_log;
DROP TABLE onbind_queue;
DROP TABLE ephemeral_keys;
DROP TABLE invites;
DROP TABLE binding_hashes;
DROP TABLE bindings;
DROP TABLE session_tokens;
DROP TABLE validation_sessions;
DROP TABLE accepted_terms;
DROP TABLE accounts;
DROP TABLE settings;
