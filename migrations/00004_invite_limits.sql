-- +goose Up
-- Ephemeral keys expire with their invite, so a periodic job can prune both; keys stored before
-- this migration get the default invite lifetime (30 days) from their creation.
ALTER TABLE ephemeral_keys ADD COLUMN expires_at BIGINT NOT NULL DEFAULT 0;
UPDATE ephemeral_keys SET expires_at = created_at + 2592000000;
CREATE INDEX ephemeral_keys_expires_at ON ephemeral_keys (expires_at);
-- Pending invites are capped per 3PID (invites_threepid) and per sender.
CREATE INDEX invites_sender ON invites (sender);
CREATE INDEX invites_expires_at ON invites (expires_at);
-- Validation mails are capped per session and per address; only a session's newest token is kept.
ALTER TABLE validation_sessions ADD COLUMN mails_sent INTEGER NOT NULL DEFAULT 1;
CREATE INDEX validation_sessions_threepid ON validation_sessions (medium, address, created_at);

-- +goose Down
DROP INDEX validation_sessions_threepid;
ALTER TABLE validation_sessions DROP COLUMN mails_sent;
DROP INDEX invites_expires_at;
DROP INDEX invites_sender;
DROP INDEX ephemeral_keys_expires_at;
ALTER TABLE ephemeral_keys DROP COLUMN expires_at;
