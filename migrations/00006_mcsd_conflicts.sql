-- +goose Up
-- Conflicting claims on a UZI number (lookup/mcsd, doc.go "Which MXID a UZI number resolves to"):
-- the care provider (URA) of each resolution candidate, the conflicts the placement pass found,
-- and provider directories the LRZA lists that were refused (plain http).
ALTER TABLE mcsd_addresses ADD COLUMN ura TEXT NOT NULL DEFAULT '';

-- One row per 3PID that care providers resolve to different Matrix users (or, without any user,
-- different homeservers). claims is a JSON array of {ura, organization, mxid, homeserver}.
CREATE TABLE mcsd_conflicts (
    medium     TEXT NOT NULL,
    address    TEXT NOT NULL,
    claims     TEXT NOT NULL,
    first_seen BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (medium, address)
);

-- Why a directory the LRZA lists is not synced ('' when it is).
ALTER TABLE mcsd_directories ADD COLUMN refused TEXT NOT NULL DEFAULT '';

-- A meta.lastUpdated after the time of fetching now counts as the time of fetching; versions
-- stored before that rule are clamped to the last sync, so a future timestamp neither wins nor
-- blocks the resource's own later versions.
UPDATE mcsd_resources SET version_ts = (SELECT COALESCE(MAX(CASE WHEN last_success_at > last_attempt_at
        THEN last_success_at ELSE last_attempt_at END), 0) FROM mcsd_directories)
    WHERE version_ts > (SELECT COALESCE(MAX(CASE WHEN last_success_at > last_attempt_at
        THEN last_success_at ELSE last_attempt_at END), 0) FROM mcsd_directories);

-- The derived candidates lack their care provider until each directory is validated again.
UPDATE mcsd_directories SET dirty = 1 WHERE kind = 'provider';

-- +goose Down
ALTER TABLE mcsd_directories DROP COLUMN refused;
DROP TABLE mcsd_conflicts;
ALTER TABLE mcsd_addresses DROP COLUMN ura;
