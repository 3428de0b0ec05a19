-- +goose Up
-- sign-ed25519 signs only with the ephemeral key store-invite made for that invite (as Sydent);
-- empty for invites stored before this column, which fall back to "a key store-invite handed out".
ALTER TABLE invites ADD COLUMN ephemeral_key TEXT NOT NULL DEFAULT '';

-- Lower-cased lookup hashes of bindings whose address differs from its lower-case form (idp
-- subjects): matrix-js-sdk lower-cases every address before hashing. Several bindings may share
-- one, so a lookup answers it only when exactly one binding has it.
CREATE TABLE binding_folded_hashes (
    hash    TEXT NOT NULL,
    medium  TEXT NOT NULL,
    address TEXT NOT NULL,
    PRIMARY KEY (hash, medium, address)
);
CREATE INDEX binding_folded_hashes_threepid ON binding_folded_hashes (medium, address);

-- +goose Down
DROP TABLE binding_folded_hashes;
ALTER TABLE invites DROP COLUMN ephemeral_key;
