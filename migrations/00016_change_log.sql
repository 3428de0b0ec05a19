-- +goose Up
-- The change log: replicas keep in-memory views of the database (the index of lookup hashes,
-- the cache of access tokens) current by reading what changed after the last number they saw.
-- Every transaction that logs changes first takes the next number from the one counter row and
-- holds its lock until it ends, so numbers become visible in order: a reader that sees number n
-- has seen every number before it. pruned is the highest number whose changes were deleted; a
-- reader behind it reads everything again.
CREATE TABLE change_log_seq (
    id     INTEGER PRIMARY KEY,
    seq    BIGINT NOT NULL,
    pruned BIGINT NOT NULL
);
INSERT INTO change_log_seq (id, seq, pruned) VALUES (1, 0, 0);

-- kind 'hash': a lookup hash whose answer may have changed (key: the hash); 'rehash': every
-- lookup hash changed with a new pepper; 'token': an access token was revoked (key: its hash).
CREATE TABLE change_log (
    seq        BIGINT NOT NULL,
    kind       TEXT NOT NULL,
    key        TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX change_log_seq_idx ON change_log (seq);

-- +goose Down
DROP TABLE change_log;
DROP TABLE change_log_seq;
