-- +goose Up
-- OZO accounts of family caregivers (FHIR RelatedPerson) and patients: email + password + TOTP.
-- fhir_ref is the OZO platform's own resource id (RelatedPerson/<id>, Patient/<id>), never a BSN.
CREATE TABLE ozo_accounts (
    id             TEXT PRIMARY KEY,
    email          TEXT NOT NULL UNIQUE,
    display_name   TEXT NOT NULL DEFAULT '',
    kind           TEXT NOT NULL,
    fhir_ref       TEXT NOT NULL DEFAULT '',
    status         TEXT NOT NULL,
    language       TEXT NOT NULL DEFAULT 'nl',
    mxid           TEXT NOT NULL DEFAULT '',
    password_hash  TEXT NOT NULL DEFAULT '',
    -- totp_pending is the secret shown during enrolment until a first code confirms it.
    totp_secret    TEXT NOT NULL DEFAULT '',
    totp_pending   TEXT NOT NULL DEFAULT '',
    -- totp_last_step is the last 30-second step accepted: a code is never accepted twice.
    totp_last_step BIGINT NOT NULL DEFAULT 0,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    activated_at   BIGINT NOT NULL DEFAULT 0
);
-- One account per platform resource, even when two provisioning calls race.
CREATE UNIQUE INDEX ozo_accounts_fhir_ref ON ozo_accounts (fhir_ref) WHERE fhir_ref <> '';

-- Single-use recovery codes, SHA-256 hashed (they are random, so no slow hash is needed).
CREATE TABLE ozo_account_recovery_codes (
    account_id TEXT NOT NULL REFERENCES ozo_accounts (id) ON DELETE CASCADE,
    code_hash  TEXT NOT NULL,
    used_at    BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, code_hash)
);

-- One-time links (activation, reset) and second-factor tickets; only hashes are kept.
CREATE TABLE ozo_account_tokens (
    token_hash TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES ozo_accounts (id) ON DELETE CASCADE,
    purpose    TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX ozo_account_tokens_account ON ozo_account_tokens (account_id, purpose);

-- Failed logins per login name (a hash of the email), kept for unknown emails too so that a
-- lockout tells nothing about whether an account exists.
CREATE TABLE ozo_login_failures (
    login_key      TEXT PRIMARY KEY,
    failures       INTEGER NOT NULL,
    last_failure   BIGINT NOT NULL,
    locked_until   BIGINT NOT NULL DEFAULT 0
);

-- +goose Down
DROP TABLE ozo_login_failures;
DROP TABLE ozo_account_tokens;
DROP TABLE ozo_account_recovery_codes;
DROP TABLE ozo_accounts;
