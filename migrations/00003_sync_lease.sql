-- +goose Up
-- Leases: one holder at a time of a named job (the directory sync) across processes and replicas.
-- A holder renews expires_at while it works; a holder that dies loses the lease when it expires.
CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    acquired_at BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);

-- What the last complete sync left countable per directory, and the value before that, so that
-- `directory status` can flag a directory whose resources collapsed.
ALTER TABLE mcsd_directories ADD COLUMN resource_count BIGINT NOT NULL DEFAULT -1;
ALTER TABLE mcsd_directories ADD COLUMN prev_resource_count BIGINT NOT NULL DEFAULT -1;

-- +goose Down
ALTER TABLE mcsd_directories DROP COLUMN prev_resource_count;
ALTER TABLE mcsd_directories DROP COLUMN resource_count;
DROP TABLE leases;
