-- +goose Up
-- The person an audit record concerns, as the OZO platform's FHIR reference (RelatedPerson/<id>,
-- Patient/<id>): OZO account records name it, and the FHIR export gives it as the Person entity.
-- Records from before have none, and their MACs do not cover one.
ALTER TABLE audit_records ADD COLUMN subject TEXT NOT NULL DEFAULT '';

-- +goose Down
ALTER TABLE audit_records DROP COLUMN subject;
