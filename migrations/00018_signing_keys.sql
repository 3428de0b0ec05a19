-- +goose Up
-- Every long-term signing key the server has used, by key id. A key replaced by a rotation keeps
-- being served by /pubkey/{keyId} and reported valid by /pubkey/isvalid until it is retired, and
-- keeps co-signing the invites of onbind calls (private_key, Synapse's format, as
-- settings.signing_key holds the current one; '' once retired or for a signing_key_file key), so
-- the invites pending at the rotation, which list it, stay verifiable at the homeserver.
CREATE TABLE signing_keys (
    key_id      TEXT PRIMARY KEY,
    public_key  TEXT NOT NULL,
    private_key TEXT NOT NULL DEFAULT '',
    created_at  BIGINT NOT NULL,
    retired_at  BIGINT NOT NULL DEFAULT 0
);

-- +goose Down
DROP TABLE signing_keys;
