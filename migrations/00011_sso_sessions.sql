-- +goose Up
-- A validation session completed by an SSO login proves several 3PIDs at once (idp, and uzi
-- and email when asserted); validation_sessions holds its idp 3PID, this table all of them.
CREATE TABLE session_threepids (
    sid     TEXT NOT NULL,
    medium  TEXT NOT NULL,
    address TEXT NOT NULL,
    PRIMARY KEY (sid, medium, address)
);

-- The Matrix user whose token started the login: only they may bind what it proved.
CREATE TABLE sso_sessions (
    sid        TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    idp        TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX sso_sessions_created_at ON sso_sessions (created_at);

-- +goose Down
DROP TABLE sso_sessions;
DROP TABLE session_threepids;
