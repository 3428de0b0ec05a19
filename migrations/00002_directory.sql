-- +goose Up
-- The mCSD index (lookup/mcsd): what the directories of Generieke Functie Adressering publish,
-- reduced to what resolution and search need. Times are Unix milliseconds, 0 meaning "none".

-- One row per directory: the LRZA and every provider directory it lists or the operator configures.
CREATE TABLE mcsd_directories (
    id              TEXT PRIMARY KEY,
    base_url        TEXT NOT NULL UNIQUE,
    kind            TEXT NOT NULL,
    origin          TEXT NOT NULL DEFAULT '',
    active          INTEGER NOT NULL DEFAULT 1,
    dirty           INTEGER NOT NULL DEFAULT 0,
    created_at      BIGINT NOT NULL,
    last_attempt_at BIGINT NOT NULL DEFAULT 0,
    last_success_at BIGINT NOT NULL DEFAULT 0,
    last_error      TEXT NOT NULL DEFAULT '',
    failures        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL DEFAULT 0
);

-- The care providers (URAs) a provider directory is authoritative for, as registered at the LRZA.
CREATE TABLE mcsd_directory_uras (
    dir TEXT NOT NULL,
    ura TEXT NOT NULL,
    PRIMARY KEY (dir, ura)
);
CREATE INDEX mcsd_directory_uras_ura ON mcsd_directory_uras (ura);

-- The _since of the next ITI-91 request per directory and resource type, verbatim from the server.
CREATE TABLE mcsd_watermarks (
    dir        TEXT NOT NULL,
    type       TEXT NOT NULL,
    since      TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (dir, type)
);

-- Every resource a directory published, deleted ones kept as tombstones so that an older version
-- seen later in a history never resurrects them. reason is '' when the resource counts.
CREATE TABLE mcsd_resources (
    dir              TEXT NOT NULL,
    type             TEXT NOT NULL,
    id               TEXT NOT NULL,
    version_id       TEXT NOT NULL DEFAULT '',
    version_ts       BIGINT NOT NULL DEFAULT 0,
    seen_run         BIGINT NOT NULL DEFAULT 0,
    deleted          INTEGER NOT NULL DEFAULT 0,
    active           INTEGER NOT NULL DEFAULT 1,
    period_start     BIGINT NOT NULL DEFAULT 0,
    period_end       BIGINT NOT NULL DEFAULT 0,
    name             TEXT NOT NULL DEFAULT '',
    search           TEXT NOT NULL DEFAULT '',
    ura              TEXT NOT NULL DEFAULT '',
    org_ref          TEXT NOT NULL DEFAULT '',
    practitioner_ref TEXT NOT NULL DEFAULT '',
    location_ref     TEXT NOT NULL DEFAULT '',
    codes            TEXT NOT NULL DEFAULT '',
    code_text        TEXT NOT NULL DEFAULT '',
    mxid             TEXT NOT NULL DEFAULT '',
    homeserver       TEXT NOT NULL DEFAULT '',
    kind             TEXT NOT NULL DEFAULT '',
    address          TEXT NOT NULL DEFAULT '',
    city             TEXT NOT NULL DEFAULT '',
    issue            TEXT NOT NULL DEFAULT '',
    root_id          TEXT NOT NULL DEFAULT '',
    root_ura         TEXT NOT NULL DEFAULT '',
    eff_active       INTEGER NOT NULL DEFAULT 1,
    display_name     TEXT NOT NULL DEFAULT '',
    reason           TEXT NOT NULL DEFAULT '',
    new_reason       TEXT NOT NULL DEFAULT '',
    changed_run      BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (dir, type, id)
);
CREATE INDEX mcsd_resources_org_ref ON mcsd_resources (dir, type, org_ref);
CREATE INDEX mcsd_resources_practitioner_ref ON mcsd_resources (dir, type, practitioner_ref);
CREATE INDEX mcsd_resources_ura ON mcsd_resources (type, ura, dir);
CREATE INDEX mcsd_resources_root_ura ON mcsd_resources (type, root_ura);

-- Multi-valued references inside one directory (endpoint, location, service); to_id is a resource id.
CREATE TABLE mcsd_refs (
    dir       TEXT NOT NULL,
    from_type TEXT NOT NULL,
    from_id   TEXT NOT NULL,
    kind      TEXT NOT NULL,
    to_id     TEXT NOT NULL,
    PRIMARY KEY (dir, from_type, from_id, kind, to_id)
);
CREATE INDEX mcsd_refs_to ON mcsd_refs (dir, kind, to_id);

-- Identifiers resolution and search use: kind is uzi, ura, agb or big. Never a BSN.
CREATE TABLE mcsd_identifiers (
    dir   TEXT NOT NULL,
    type  TEXT NOT NULL,
    id    TEXT NOT NULL,
    kind  TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (dir, type, id, kind, value)
);
CREATE INDEX mcsd_identifiers_value ON mcsd_identifiers (kind, value);

-- Scratch space for the partOf walk of one directory's validation.
CREATE TABLE mcsd_org_roots (
    dir     TEXT NOT NULL,
    id      TEXT NOT NULL,
    root_id TEXT NOT NULL,
    PRIMARY KEY (dir, id)
);

-- The UZI numbers of each PractitionerRole, its own or its Practitioner's (derivation scratch space).
CREATE TABLE mcsd_role_uzis (
    dir     TEXT NOT NULL,
    role_id TEXT NOT NULL,
    uzi     TEXT NOT NULL,
    PRIMARY KEY (dir, role_id, uzi)
);

-- Resolution candidates derived from accepted resources: a 3PID, the MXID (or only a homeserver)
-- it leads to, and what the deterministic choice between candidates needs.
CREATE TABLE mcsd_addresses (
    dir        TEXT NOT NULL,
    medium     TEXT NOT NULL,
    address    TEXT NOT NULL,
    mxid       TEXT NOT NULL,
    homeserver TEXT NOT NULL,
    pref       INTEGER NOT NULL,
    updated    BIGINT NOT NULL,
    source_id  TEXT NOT NULL,
    not_before BIGINT NOT NULL,
    not_after  BIGINT NOT NULL
);
CREATE INDEX mcsd_addresses_threepid ON mcsd_addresses (medium, address);
CREATE INDEX mcsd_addresses_dir ON mcsd_addresses (dir, medium, address);
CREATE INDEX mcsd_addresses_source ON mcsd_addresses (dir, source_id);

-- Lookup hashes of the candidates' 3PIDs for the current pepper (one per medium alias).
CREATE TABLE mcsd_hashes (
    dir     TEXT NOT NULL,
    hash    TEXT NOT NULL,
    medium  TEXT NOT NULL,
    address TEXT NOT NULL,
    PRIMARY KEY (dir, hash)
);
CREATE INDEX mcsd_hashes_hash ON mcsd_hashes (hash);
CREATE INDEX mcsd_hashes_threepid ON mcsd_hashes (dir, medium, address);

-- 3PIDs whose candidates changed since the placements were last brought up to date.
CREATE TABLE mcsd_dirty (
    dir     TEXT NOT NULL,
    medium  TEXT NOT NULL,
    address TEXT NOT NULL,
    PRIMARY KEY (dir, medium, address)
);

-- Homeserver localisation: where mCSD places a practitioner now, and where they were before.
CREATE TABLE mcsd_placements (
    uzi             TEXT PRIMARY KEY,
    homeserver      TEXT NOT NULL,
    mxid            TEXT NOT NULL,
    since           BIGINT NOT NULL,
    prev_homeserver TEXT NOT NULL DEFAULT '',
    prev_mxid       TEXT NOT NULL DEFAULT '',
    updated_at      BIGINT NOT NULL
);

-- Index-wide values: the pepper the hashes were made with, the last placement pass.
CREATE TABLE mcsd_state (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO mcsd_state (name, value) VALUES ('pepper', '');
INSERT INTO mcsd_state (name, value) VALUES ('placements_at', '0');

-- +goose Down
DROP TABLE mcsd_state;
DROP TABLE mcsd_placements;
DROP TABLE mcsd_dirty;
DROP TABLE mcsd_hashes;
DROP TABLE mcsd_addresses;
DROP TABLE mcsd_role_uzis;
DROP TABLE mcsd_org_roots;
DROP TABLE mcsd_identifiers;
DROP TABLE mcsd_refs;
DROP TABLE mcsd_resources;
DROP TABLE mcsd_watermarks;
DROP TABLE mcsd_directory_uras;
DROP TABLE mcsd_directories;
