-- +goose Up
-- A directory's validation derives its resolution candidates here first and compares them with
-- the stored ones, so that only the 3PIDs whose candidates changed go to the placement pass and
-- get their lookup hashes computed again (lookup/mcsd, issue 18). Empty between validations.
CREATE TABLE mcsd_addresses_next (
    dir        TEXT NOT NULL,
    medium     TEXT NOT NULL,
    address    TEXT NOT NULL,
    mxid       TEXT NOT NULL,
    homeserver TEXT NOT NULL,
    pref       INTEGER NOT NULL,
    updated    BIGINT NOT NULL,
    source_id  TEXT NOT NULL,
    not_before BIGINT NOT NULL,
    not_after  BIGINT NOT NULL,
    ura        TEXT NOT NULL DEFAULT ''
);
CREATE INDEX mcsd_addresses_next_dir ON mcsd_addresses_next (dir, medium, address);

-- The placement pass pages through the marked UZI numbers by address and unmarks them by address.
CREATE INDEX mcsd_dirty_address ON mcsd_dirty (medium, address);

-- +goose Down
DROP INDEX mcsd_dirty_address;
DROP TABLE mcsd_addresses_next;
