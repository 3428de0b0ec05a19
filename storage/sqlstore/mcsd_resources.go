package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/ozo-platform/ozo-identity/internal/sqlin"
	"github.com/ozo-platform/ozo-identity/lookup/mcsd"
	"github.com/ozo-platform/ozo-identity/threepid"
)

// StoredVersion returns the version of a resource in the index.
func (db *DB) StoredVersion(ctx context.Context, dir, typ, id string) (string, int64, bool, error) {
	var vid string
	var ts int64
	err := db.QueryRowContext(ctx, `SELECT version_id, version_ts FROM mcsd_resources WHERE dir = $1 AND type = $2 AND id = $3`,
		dir, typ, id).Scan(&vid, &ts)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return "", 0, false, nil
	case err != nil:
		return "", 0, false, err
	}
	return vid, ts, true, nil
}

var resourceCols = []string{"dir", "type", "id", "version_id", "version_ts", "seen_run", "deleted", "active",
	"period_start", "period_end", "name", "search", "ura", "org_ref", "practitioner_ref", "location_ref",
	"codes", "code_text", "mxid", "homeserver", "kind", "address", "city", "issue"}

// upsertGuard decides whether an incoming version replaces the stored one. Within one run the
// first version seen wins unless a later one is strictly newer, because a history lists the newest
// version first; across runs anything not older wins, and a full fetch ($1 = 1) also re-marks
// unchanged resources as seen so that the sweep after it keeps them.
const upsertGuard = ` WHERE (mcsd_resources.seen_run = excluded.seen_run AND excluded.version_ts > mcsd_resources.version_ts)
	OR (mcsd_resources.seen_run <> excluded.seen_run AND (excluded.version_ts = 0 OR excluded.version_ts > mcsd_resources.version_ts
		OR (excluded.version_ts = mcsd_resources.version_ts AND ($1 = 1 OR excluded.version_id <> mcsd_resources.version_id
			OR excluded.deleted <> mcsd_resources.deleted))))`

// ApplyResources writes batches of versions of resources in one transaction.
func (db *DB) ApplyResources(ctx context.Context, dir string, run int64, batches []mcsd.Batch) (applied, deleted int, err error) {
	err = db.writeTx(ctx, func(tx *sql.Tx) error {
		applied, deleted, err = db.applyBatchesTx(ctx, tx, dir, run, batches)
		return err
	})
	return applied, deleted, err
}

// applyBatchesTx writes batches in tx; one directory marked dirty for all of them.
func (db *DB) applyBatchesTx(ctx context.Context, tx *sql.Tx, dir string, run int64, batches []mcsd.Batch) (applied, deleted int, err error) {
	for _, b := range batches {
		a, d, err := db.applyTx(ctx, tx, dir, b.Type, run, b.Full, b.Resources)
		if err != nil {
			return 0, 0, err
		}
		applied, deleted = applied+a, deleted+d
	}
	if applied > 0 {
		if _, err := db.execPrepared(ctx, tx, `UPDATE mcsd_directories SET dirty = 1 WHERE id = $1 AND dirty = 0`, dir); err != nil {
			return 0, 0, fmt.Errorf("mark directory: %w", err)
		}
	}
	return applied, deleted, nil
}

// sweepTx turns into tombstones the resources of type typ that a full read of its history (tr)
// proves gone, as after a backup restore of the directory: those it did not list, unless they
// are newer than its snapshot, which another run may have just written. It reports how many
// it removed.
func sweepTx(ctx context.Context, tx *sql.Tx, dir string, tr mcsd.TypeResult, run int64) (int, error) {
	rows, err := tx.QueryContext(ctx, `SELECT id, version_ts FROM mcsd_resources WHERE dir = $1 AND type = $2 AND deleted = 0`, dir, tr.Type)
	if err != nil {
		return 0, fmt.Errorf("sweep %s: %w", tr.Type, err)
	}
	var gone []any
	for rows.Next() {
		var id string
		var ts int64
		if err := rows.Scan(&id, &ts); err != nil {
			rows.Close()
			return 0, fmt.Errorf("sweep %s: %w", tr.Type, err)
		}
		if !tr.Seen[id] && ts <= tr.Snapshot {
			gone = append(gone, id)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("sweep %s: %w", tr.Type, err)
	}
	n := 0
	for start := 0; start < len(gone); start += mcsdChunk {
		part := gone[start:min(len(gone), start+mcsdChunk)]
		args := append([]any{dir, tr.Type, run}, part...)
		in := sqlin.Placeholders(4, len(part))
		res, err := tx.ExecContext(ctx, `UPDATE mcsd_resources SET deleted = 1, active = 0, seen_run = $3
			WHERE dir = $1 AND type = $2 AND deleted = 0 AND id IN (`+in+`)`, args...)
		if err != nil {
			return 0, fmt.Errorf("sweep %s: %w", tr.Type, err)
		}
		k, _ := res.RowsAffected()
		n += int(k)
		in = sqlin.Placeholders(3, len(part))
		for _, q := range []string{
			`DELETE FROM mcsd_refs WHERE dir = $1 AND from_type = $2 AND from_id IN (` + in + `)`,
			`DELETE FROM mcsd_identifiers WHERE dir = $1 AND type = $2 AND id IN (` + in + `)`,
		} {
			if _, err := tx.ExecContext(ctx, q, append([]any{dir, tr.Type}, part...)...); err != nil {
				return 0, fmt.Errorf("sweep %s: %w", tr.Type, err)
			}
		}
	}
	if n == 0 {
		return 0, nil
	}
	if _, err := tx.ExecContext(ctx, `UPDATE mcsd_directories SET dirty = 1 WHERE id = $1`, dir); err != nil {
		return 0, fmt.Errorf("sweep %s: %w", tr.Type, err)
	}
	return n, nil
}

// step is one named SQL statement of a directory's validation.
type step struct{ name, sql string }

func greatest(a, b string) string {
	return "(CASE WHEN " + a + " > " + b + " THEN " + a + " ELSE " + b + " END)"
}

// earliestEnd combines two period ends where 0 means open.
func earliestEnd(a, b string) string {
	return "(CASE WHEN " + a + " = 0 THEN " + b + " WHEN " + b + " = 0 THEN " + a + " WHEN " + a + " < " + b + " THEN " + a + " ELSE " + b + " END)"
}

// update builds an UPDATE of directory $1 that writes a row only when a value changes, so that
// validating an unchanged directory writes nothing.
func update(where string, set ...[2]string) string {
	var assign, changed []string
	for _, kv := range set {
		assign = append(assign, kv[0]+" = "+kv[1])
		changed = append(changed, kv[0]+" <> "+kv[1])
	}
	return "UPDATE mcsd_resources SET " + strings.Join(assign, ", ") + " WHERE dir = $1 AND deleted = 0 AND $2 >= 0 AND " + where +
		" AND (" + strings.Join(changed, " OR ") + ")"
}

// orgCol reads a column of the Organization that column ref of the row being updated points at.
func orgCol(col, ref string) string {
	return "(SELECT o." + col + " FROM mcsd_resources o WHERE o.dir = $1 AND o.type = 'Organization' AND o.id = mcsd_resources." + ref + " AND o.deleted = 0)"
}

// lrzaCol reads a column of the LRZA's accepted Organization with the URA of the row being updated.
func lrzaCol(col string) string {
	return "(SELECT l." + col + " FROM mcsd_resources l JOIN mcsd_directories d ON d.id = l.dir AND d.kind = 'lrza'" +
		" WHERE l.type = 'Organization' AND l.ura = mcsd_resources.ura AND l.deleted = 0 AND l.reason = '' ORDER BY l.dir, l.id LIMIT 1)"
}

// The validation of one directory, set-based so that memory does not depend on its size.
// $1 is the directory, $2 is 1 for the LRZA (authoritative for every URA) and 0 otherwise.
var validationSteps = []step{
	// The LRZA is authoritative for the name and status of an Organization with a URA (Dutch IG).
	{"name and status", update("(type <> 'Organization' OR ura = '' OR $2 = 1)", [2]string{"display_name", "name"}, [2]string{"eff_active", "active"})},
	{"lrza name and status", update("type = 'Organization' AND ura <> '' AND $2 = 0",
		[2]string{"display_name", "COALESCE(" + lrzaCol("name") + ", name)"},
		[2]string{"eff_active", "COALESCE(" + lrzaCol("active") + ", active)"})},
	{"clear partOf walk", `DELETE FROM mcsd_org_roots WHERE dir = $1 AND $2 >= 0`},
	// Walk partOf up to the first Organization with a URA; cycles end at the depth bound.
	{"walk partOf", `WITH RECURSIVE up(id, cur, depth) AS (
			SELECT id, id, 0 FROM mcsd_resources WHERE dir = $1 AND type = 'Organization' AND deleted = 0
			UNION ALL
			SELECT up.id, o.org_ref, up.depth + 1 FROM up
			JOIN mcsd_resources o ON o.dir = $1 AND o.type = 'Organization' AND o.id = up.cur AND o.deleted = 0
			WHERE o.ura = '' AND o.org_ref <> '' AND up.depth < 16
		)
		INSERT INTO mcsd_org_roots (dir, id, root_id)
		SELECT $1, up.id, MIN(up.cur) FROM up
		JOIN mcsd_resources r ON r.dir = $1 AND r.type = 'Organization' AND r.id = up.cur AND r.deleted = 0 AND r.ura <> ''
		WHERE $2 >= 0
		GROUP BY up.id`},
	{"organization roots", update("type = 'Organization'",
		[2]string{"root_id", "COALESCE((SELECT x.root_id FROM mcsd_org_roots x WHERE x.dir = $1 AND x.id = mcsd_resources.id), '')"},
		[2]string{"root_ura", "COALESCE((SELECT r.ura FROM mcsd_org_roots x JOIN mcsd_resources r ON r.dir = x.dir AND r.type = 'Organization' AND r.id = x.root_id" +
			" WHERE x.dir = $1 AND x.id = mcsd_resources.id), '')"})},
	// Anti-spoofing: an Organization counts only under a URA the LRZA registers for this directory.
	{"organizations", update("type = 'Organization'", [2]string{"new_reason", `CASE
		WHEN issue <> '' THEN issue
		WHEN root_id = '' AND org_ref = '' THEN 'Organization has no URA identifier and is not partOf another Organization'
		WHEN root_id = '' THEN 'partOf ' || org_ref || ' does not lead to an Organization with a URA in this directory'
		WHEN $2 = 0 AND NOT EXISTS (SELECT 1 FROM mcsd_directory_uras u WHERE u.dir = $1 AND u.ura = mcsd_resources.root_ura) THEN
			CASE WHEN ura <> '' THEN 'Organization carries URA ' || ura || ', which the LRZA does not register for this directory'
			ELSE 'partOf leads to URA ' || root_ura || ', which the LRZA does not register for this directory' END
		ELSE '' END`})},
	{"department status", update("type = 'Organization' AND ura = ''",
		[2]string{"eff_active", "CASE WHEN active = 1 AND COALESCE(" + orgCol("eff_active", "root_id") + ", 0) = 1 THEN 1 ELSE 0 END"})},
	// PractitionerRole, HealthcareService and Location must point at an accepted Organization here.
	{"roles, services, locations", update("type IN ('PractitionerRole', 'HealthcareService', 'Location')",
		[2]string{"new_reason", `CASE
			WHEN issue <> '' THEN issue
			WHEN org_ref = '' THEN type || ' has no Organization reference'
			WHEN ` + orgCol("new_reason", "org_ref") + ` IS NULL THEN 'refers to Organization ' || org_ref || ', which is not in this directory'
			WHEN ` + orgCol("new_reason", "org_ref") + ` <> '' THEN 'refers to Organization ' || org_ref || ', which is rejected: ' || ` + orgCol("new_reason", "org_ref") + `
			ELSE '' END`},
		[2]string{"root_ura", "COALESCE(" + orgCol("root_ura", "org_ref") + ", '')"},
		[2]string{"root_id", "COALESCE(" + orgCol("root_id", "org_ref") + ", '')"},
		[2]string{"eff_active", "CASE WHEN active = 1 AND COALESCE(" + orgCol("eff_active", "org_ref") + ", 0) = 1 THEN 1 ELSE 0 END"})},
	{"practitioners", update("type = 'Practitioner'", [2]string{"new_reason", `CASE
		WHEN issue <> '' THEN issue
		WHEN EXISTS (SELECT 1 FROM mcsd_resources r WHERE r.dir = $1 AND r.type = 'PractitionerRole' AND r.practitioner_ref = mcsd_resources.id
			AND r.deleted = 0 AND r.new_reason = '') THEN ''
		ELSE 'Practitioner is not referenced by an accepted PractitionerRole of this directory' END`})},
	{"endpoints", update("type = 'Endpoint'", [2]string{"new_reason", `CASE
		WHEN issue <> '' THEN issue
		WHEN EXISTS (SELECT 1 FROM mcsd_refs f WHERE f.dir = $1 AND f.kind = 'endpoint' AND f.to_id = mcsd_resources.id
			AND EXISTS (SELECT 1 FROM mcsd_resources s WHERE s.dir = f.dir AND s.type = f.from_type AND s.id = f.from_id
				AND s.deleted = 0 AND s.new_reason = '')) THEN ''
		ELSE 'Endpoint is not referenced by an accepted Organization, HealthcareService or PractitionerRole of this directory' END`})},
}

// roleFrom selects the accepted, active PractitionerRoles of directory $1 with each UZI number
// they carry or their Practitioner carries (i.uzi); p is the Practitioner when there is one.
const roleFrom = ` FROM mcsd_resources r
	JOIN mcsd_role_uzis i ON i.dir = r.dir AND i.role_id = r.id
	LEFT JOIN mcsd_resources p ON p.dir = r.dir AND p.type = 'Practitioner' AND p.id = r.practitioner_ref AND p.deleted = 0 `

const roleWhere = ` WHERE r.dir = $1 AND r.type = 'PractitionerRole' AND r.deleted = 0 AND r.reason = '' AND r.eff_active = 1
	AND (p.id IS NULL OR (p.reason = '' AND p.active = 1)) `

const endpointJoin = ` JOIN mcsd_refs f ON f.dir = %[1]s.dir AND f.from_type = %[1]s.type AND f.from_id = %[1]s.id AND f.kind = 'endpoint'
	JOIN mcsd_resources e ON e.dir = f.dir AND e.type = 'Endpoint' AND e.id = f.to_id AND e.deleted = 0 AND e.reason = '' AND e.active = 1 `

const insertAddress = `INSERT INTO mcsd_addresses_next (dir, ura, medium, address, mxid, homeserver, pref, updated, source_id, not_before, not_after) SELECT DISTINCT `

var roleUpdated = greatest("r.version_ts", "COALESCE(p.version_ts, 0)")

// orgJoin joins the role's own organisation (column org_ref) or its care provider (root_id).
func orgJoin(col string) string {
	return ` JOIN mcsd_resources o ON o.dir = r.dir AND o.type = 'Organization' AND o.id = r.` + col + ` AND o.deleted = 0 AND o.reason = '' `
}

// derivationSteps derive the resolution candidates of directory $1 from its accepted resources
// into mcsd_addresses_next. pref orders them; see the package documentation for the rule. The
// candidates' INSERTs run as one statement (UNION ALL): a statement's fixed cost, not its rows,
// was most of a small directory's validation.
var derivationSteps = mergeInserts(buildDerivationSteps())

// mergeInserts joins the consecutive steps that insert candidates into one statement.
func mergeInserts(steps []step) []step {
	var out []step
	var selects, names []string
	for _, st := range steps {
		if rest, ok := strings.CutPrefix(st.sql, insertAddress); ok {
			selects, names = append(selects, "SELECT DISTINCT "+rest), append(names, st.name)
			continue
		}
		out = append(out, st)
	}
	into, _ := strings.CutSuffix(insertAddress, "SELECT DISTINCT ")
	return append(out, step{strings.Join(names, "; "), into + strings.Join(selects, "\nUNION ALL ")})
}

func buildDerivationSteps() []step {
	steps := []step{
		{"role uzis: clear", `DELETE FROM mcsd_role_uzis WHERE dir = $1`},
		{"role uzis: practitioner", `INSERT INTO mcsd_role_uzis (dir, role_id, uzi) SELECT DISTINCT r.dir, r.id, i.value FROM mcsd_resources r
		JOIN mcsd_identifiers i ON i.dir = r.dir AND i.type = 'Practitioner' AND i.id = r.practitioner_ref AND i.kind = 'uzi'
		WHERE r.dir = $1 AND r.type = 'PractitionerRole' AND r.deleted = 0 ON CONFLICT DO NOTHING`},
		{"role uzis: role", `INSERT INTO mcsd_role_uzis (dir, role_id, uzi) SELECT DISTINCT i.dir, i.id, i.value FROM mcsd_identifiers i
		WHERE i.dir = $1 AND i.type = 'PractitionerRole' AND i.kind = 'uzi' ON CONFLICT DO NOTHING`},
		{"uzi: role endpoint", insertAddress + `r.dir, r.root_ura, 'uzi', i.uzi, e.mxid, '', 1, ` + greatest(roleUpdated, "e.version_ts") + `, r.id, ` +
			greatest("r.period_start", "e.period_start") + `, ` + earliestEnd("r.period_end", "e.period_end") +
			roleFrom + fmt.Sprintf(endpointJoin, "r") + roleWhere + ` AND e.kind = 'matrix-user'`},
		{"uzi: role telecom", insertAddress + `r.dir, r.root_ura, 'uzi', i.uzi, r.mxid, '', 2, ` + roleUpdated + `, r.id, r.period_start, r.period_end` +
			roleFrom + roleWhere + ` AND r.mxid <> ''`},
		{"uzi: practitioner telecom", insertAddress + `r.dir, r.root_ura, 'uzi', i.uzi, p.mxid, '', 3, ` + roleUpdated + `, r.id, r.period_start, r.period_end` +
			roleFrom + roleWhere + ` AND p.mxid <> ''`},
		{"uzi: role homeserver", insertAddress + `r.dir, r.root_ura, 'uzi', i.uzi, '', r.homeserver, 4, ` + roleUpdated + `, r.id, r.period_start, r.period_end` +
			roleFrom + roleWhere + ` AND r.homeserver <> ''`},
		{"uzi: practitioner homeserver", insertAddress + `r.dir, r.root_ura, 'uzi', i.uzi, '', p.homeserver, 4, ` + roleUpdated + `, r.id, r.period_start, r.period_end` +
			roleFrom + roleWhere + ` AND p.homeserver <> ''`},
	}

	// The homeserver of the role's own organisation, then of its care provider when that differs.
	for _, col := range []string{"org_ref", "root_id"} {
		cond := ""
		if col == "root_id" {
			cond = " AND r.root_id <> r.org_ref"
		}
		steps = append(steps,
			step{"uzi: organization homeserver (" + col + ")", insertAddress + `r.dir, r.root_ura, 'uzi', i.uzi, '', o.homeserver, 5, ` +
				greatest(roleUpdated, "o.version_ts") + `, r.id, r.period_start, r.period_end` + roleFrom + orgJoin(col) + roleWhere +
				` AND o.homeserver <> ''` + cond},
			step{"uzi: organization homeserver endpoint (" + col + ")", insertAddress + `r.dir, r.root_ura, 'uzi', i.uzi, '', e.homeserver, 5, ` +
				greatest(roleUpdated, "e.version_ts") + `, r.id, ` + greatest("r.period_start", "e.period_start") + `, ` +
				earliestEnd("r.period_end", "e.period_end") + roleFrom + orgJoin(col) + fmt.Sprintf(endpointJoin, "o") + roleWhere +
				` AND e.kind = 'matrix-server'` + cond},
		)
	}
	steps = append(steps,
		step{"ura: organization endpoint", insertAddress + `o.dir, o.ura, 'ura', o.ura, e.mxid, '', 1, ` + greatest("o.version_ts", "e.version_ts") +
			`, o.id, e.period_start, e.period_end FROM mcsd_resources o` + fmt.Sprintf(endpointJoin, "o") +
			` WHERE o.dir = $1 AND o.type = 'Organization' AND o.deleted = 0 AND o.reason = '' AND o.eff_active = 1 AND o.ura <> '' AND e.kind = 'matrix-user'`},
		step{"ura: organization telecom", insertAddress + `o.dir, o.ura, 'ura', o.ura, o.mxid, '', 2, o.version_ts, o.id, 0, 0 FROM mcsd_resources o
		WHERE o.dir = $1 AND o.type = 'Organization' AND o.deleted = 0 AND o.reason = '' AND o.eff_active = 1 AND o.ura <> '' AND o.mxid <> ''`},
	)
	return steps
}

// liveCounts counts the resources of dir that are not deleted, per type.
func liveCounts(ctx context.Context, tx *sql.Tx, dir string) (map[string]int, error) {
	out := map[string]int{}
	rows, err := tx.QueryContext(ctx, `SELECT type, COUNT(*) FROM mcsd_resources WHERE dir = $1 AND deleted = 0 GROUP BY type`, dir)
	if err != nil {
		return nil, fmt.Errorf("count resources: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var t string
		var n int
		if err := rows.Scan(&t, &n); err != nil {
			return nil, fmt.Errorf("count resources: %w", err)
		}
		out[t] = n
	}
	return out, rows.Err()
}

// validateTx applies the anti-spoofing rules to a directory and rebuilds its resolution
// candidates and their hashes. It returns how many resources that this run fetched or whose
// acceptance changed are rejected, and up to max of them with the reason.
func (db *DB) validateTx(ctx context.Context, tx *sql.Tx, dir string, trustAll bool, run int64, max int) (int, []mcsd.Rejection, error) {
	pepper, err := db.lockPepper(ctx, tx, false)
	if err != nil {
		return 0, nil, err
	}
	for _, st := range validationSteps {
		if _, err := db.execPrepared(ctx, tx, st.sql, dir, b2i(trustAll)); err != nil {
			return 0, nil, fmt.Errorf("validate (%s): %w", st.name, err)
		}
	}
	if _, err := db.execPrepared(ctx, tx, `UPDATE mcsd_resources SET reason = new_reason, changed_run = $2
		WHERE dir = $1 AND deleted = 0 AND reason <> new_reason`, dir, run); err != nil {
		return 0, nil, fmt.Errorf("validate (record): %w", err)
	}
	if err := db.deriveTx(ctx, tx, dir, pepper); err != nil {
		return 0, nil, err
	}
	const touched = ` FROM mcsd_resources WHERE dir = $1 AND deleted = 0 AND reason <> '' AND (seen_run = $2 OR changed_run = $2)`
	var rejected int
	count, err := db.prepared(ctx, tx, `SELECT COUNT(*)`+touched)
	if err != nil {
		return 0, nil, fmt.Errorf("count rejections: %w", err)
	}
	if err := count.QueryRowContext(ctx, dir, run).Scan(&rejected); err != nil {
		return 0, nil, fmt.Errorf("count rejections: %w", err)
	}
	if rejected == 0 {
		return 0, nil, nil
	}
	rows, err := tx.QueryContext(ctx, `SELECT type, id, reason`+touched+` ORDER BY type, id LIMIT $3`, dir, run, max)
	if err != nil {
		return 0, nil, fmt.Errorf("list rejections: %w", err)
	}
	defer rows.Close()
	var rejections []mcsd.Rejection
	for rows.Next() {
		var r mcsd.Rejection
		if err := rows.Scan(&r.Type, &r.ID, &r.Reason); err != nil {
			return 0, nil, fmt.Errorf("list rejections: %w", err)
		}
		rejections = append(rejections, r)
	}
	return rejected, rejections, rows.Err()
}

// candidateCols are the columns of a resolution candidate, for comparing derivations.
const candidateCols = `dir, medium, address, mxid, homeserver, pref, updated, source_id, not_before, not_after, ura`

// deriveSteps replace the candidates of directory $1 with those just derived into
// mcsd_addresses_next, marking for the placement pass only the UZI numbers whose candidates
// changed, and those in a recorded conflict (its claims name the care providers).
var deriveSteps = []step{
	{"mark changed", `INSERT INTO mcsd_dirty (dir, medium, address) SELECT DISTINCT dir, medium, address FROM (
		SELECT ` + candidateCols + ` FROM mcsd_addresses WHERE dir = $1 AND medium = 'uzi'
		EXCEPT SELECT ` + candidateCols + ` FROM mcsd_addresses_next WHERE dir = $1 AND medium = 'uzi') removed
		UNION SELECT dir, medium, address FROM (
		SELECT ` + candidateCols + ` FROM mcsd_addresses_next WHERE dir = $1 AND medium = 'uzi'
		EXCEPT SELECT ` + candidateCols + ` FROM mcsd_addresses WHERE dir = $1 AND medium = 'uzi') added WHERE true
		ON CONFLICT DO NOTHING`},
	{"mark conflicts", `INSERT INTO mcsd_dirty (dir, medium, address) SELECT DISTINCT a.dir, a.medium, a.address FROM mcsd_addresses a
		JOIN mcsd_conflicts c ON c.medium = a.medium AND c.address = a.address WHERE a.dir = $1 ON CONFLICT DO NOTHING`},
	{"replace", `DELETE FROM mcsd_addresses WHERE dir = $1`},
	{"replace", `INSERT INTO mcsd_addresses (` + candidateCols + `) SELECT ` + candidateCols + ` FROM mcsd_addresses_next WHERE dir = $1`},
	{"clear", `DELETE FROM mcsd_addresses_next WHERE dir = $1`},
	// Hashes of 3PIDs that lost every candidate go; fillHashes adds those of new ones.
	{"hashes", `DELETE FROM mcsd_hashes WHERE dir = $1 AND NOT EXISTS (SELECT 1 FROM mcsd_addresses a
		WHERE a.dir = mcsd_hashes.dir AND a.medium = mcsd_hashes.medium AND a.address = mcsd_hashes.address)`},
}

// deriveTx derives the candidates of directory dir again and keeps what changed (deriveSteps),
// then adds the missing lookup hashes.
func (db *DB) deriveTx(ctx context.Context, tx *sql.Tx, dir, pepper string) error {
	for _, st := range append(derivationSteps[:len(derivationSteps):len(derivationSteps)], deriveSteps...) {
		if _, err := db.execPrepared(ctx, tx, st.sql, dir); err != nil {
			return fmt.Errorf("derive candidates (%s): %w", st.name, err)
		}
	}
	if err := fillHashes(ctx, tx, dir, pepper); err != nil {
		return err
	}
	return nil
}

// markDirty records the UZI numbers with candidates in dir so that the placement pass revisits them.
func markDirty(ctx context.Context, tx *sql.Tx, dir string) error {
	if _, err := tx.ExecContext(ctx, `INSERT INTO mcsd_dirty (dir, medium, address)
		SELECT DISTINCT dir, medium, address FROM mcsd_addresses WHERE dir = $1 AND medium = 'uzi'
		ON CONFLICT DO NOTHING`, dir); err != nil {
		return fmt.Errorf("mark changed 3pids: %w", err)
	}
	return nil
}

// lockPepper reads the pepper and holds it for the transaction: Rehash takes it exclusively, so
// hashes written by a directory's derivation are always made with the pepper that is current.
func (db *DB) lockPepper(ctx context.Context, tx *sql.Tx, exclusive bool) (string, error) {
	q := `SELECT value FROM mcsd_state WHERE name = 'pepper'` + db.rowLock(exclusive)
	var pepper string
	if err := tx.QueryRowContext(ctx, q).Scan(&pepper); err != nil {
		return "", fmt.Errorf("read pepper: %w", err)
	}
	return pepper, nil
}

// fillHashes adds the missing hashes of the candidates of directory dir (all when dir is ""),
// a page at a time so that memory stays bounded.
func fillHashes(ctx context.Context, tx *sql.Tx, dir, pepper string) error {
	if pepper == "" {
		return nil
	}
	type key struct{ dir, medium, address string }
	var last key
	for {
		args := []any{last.dir, last.medium, last.address}
		dirCond := ""
		if dir != "" {
			dirCond = "a.dir = $4 AND "
			args = append(args, dir)
		}
		var page []key
		err := sqlin.Each(ctx, tx, `SELECT DISTINCT a.dir, a.medium, a.address FROM mcsd_addresses a
			WHERE `+dirCond+`(a.dir > $1 OR (a.dir = $1 AND (a.medium > $2 OR (a.medium = $2 AND a.address > $3))))
			AND NOT EXISTS (SELECT 1 FROM mcsd_hashes h WHERE h.dir = a.dir AND h.medium = a.medium AND h.address = a.address)
			ORDER BY a.dir, a.medium, a.address LIMIT 500`, args, func(rows *sql.Rows) error {
			var k key
			err := rows.Scan(&k.dir, &k.medium, &k.address)
			page = append(page, k)
			return err
		})
		if err != nil {
			return fmt.Errorf("list mcsd addresses: %w", err)
		}
		if len(page) == 0 {
			return nil
		}
		last = page[len(page)-1]
		var vals []any
		var q strings.Builder
		q.WriteString(`INSERT INTO mcsd_hashes (dir, hash, medium, address) VALUES `)
		n := 0
		for _, k := range page {
			for _, h := range threepid.LookupHashes(threepid.ThreePID{Medium: k.medium, Address: k.address}, pepper) {
				if n > 0 {
					q.WriteByte(',')
				}
				fmt.Fprintf(&q, "(%s)", sqlin.Placeholders(len(vals)+1, 4))
				vals = append(vals, k.dir, h, k.medium, k.address)
				n++
			}
		}
		q.WriteString(` ON CONFLICT DO NOTHING`)
		if _, err := tx.ExecContext(ctx, q.String(), vals...); err != nil {
			return fmt.Errorf("store mcsd hashes: %w", err)
		}
	}
}

// FinishDirectory ends a directory's sync in one transaction (mcsd.FinishInput).
func (db *DB) FinishDirectory(ctx context.Context, f mcsd.FinishInput) (mcsd.FinishResult, error) {
	var res mcsd.FinishResult
	err := db.writeTx(ctx, func(tx *sql.Tx) error {
		res = mcsd.FinishResult{}
		if err := db.finishTx(ctx, tx, f, &res); err != nil {
			return err
		}
		if f.Attempt != nil {
			return db.recordAttemptTx(ctx, tx, f.Dir, *f.Attempt)
		}
		return nil
	})
	if err != nil {
		return mcsd.FinishResult{}, err
	}
	return res, nil
}

// finishTx is FinishDirectory but the attempt, in tx.
func (db *DB) finishTx(ctx context.Context, tx *sql.Tx, f mcsd.FinishInput, res *mcsd.FinishResult) error {
	a, _, err := db.applyBatchesTx(ctx, tx, f.Dir, f.Run, f.Apply)
	if err != nil {
		return err
	}
	res.Applied += a
	// The guard compares live counts before and after, when anything may be deleted.
	var before map[string]int
	if f.Guard != nil && slices.ContainsFunc(f.Done, func(tr mcsd.TypeResult) bool { return tr.Full || len(tr.Deletes) > 0 }) {
		if before, err = liveCounts(ctx, tx, f.Dir); err != nil {
			return err
		}
	}
	var marks []any // dir, type, since, now per type read completely
	for _, tr := range f.Done {
		if len(tr.Deletes) > 0 {
			a, del, err := db.applyBatchesTx(ctx, tx, f.Dir, f.Run, []mcsd.Batch{{Type: tr.Type, Full: tr.Full, Resources: tr.Deletes}})
			if err != nil {
				return err
			}
			res.Applied += a
			res.Deleted += del
		}
		if tr.Full {
			n, err := sweepTx(ctx, tx, f.Dir, tr, f.Run)
			if err != nil {
				return err
			}
			res.Swept += n
		}
		if tr.Since != "" {
			marks = append(marks, f.Dir, tr.Type, tr.Since, f.Now)
		}
	}
	if len(marks) > 0 {
		var rows []string
		for i := 0; i < len(marks); i += 4 {
			rows = append(rows, "("+sqlin.Placeholders(i+1, 4)+")")
		}
		if _, err := db.execPrepared(ctx, tx, `INSERT INTO mcsd_watermarks (dir, type, since, updated_at) VALUES `+strings.Join(rows, ", ")+`
			ON CONFLICT (dir, type) DO UPDATE SET since = excluded.since, updated_at = excluded.updated_at`, marks...); err != nil {
			return fmt.Errorf("store watermarks: %w", err)
		}
	}
	if res.Deleted+res.Swept > 0 && before != nil {
		after, err := liveCounts(ctx, tx, f.Dir)
		if err != nil {
			return err
		}
		if err := f.Guard(before, after); err != nil {
			return err
		}
	}
	if !f.Judge || !f.Changed && res.Deleted+res.Swept+res.Applied == 0 {
		return nil
	}
	res.Rejected, res.Rejections, err = db.validateTx(ctx, tx, f.Dir, f.TrustAll, f.Run, f.MaxRejections)
	if err != nil {
		return err
	}
	// Judged; and what counts now, and what counted before, for the status's collapse check.
	const counted = `(SELECT COUNT(*) FROM mcsd_resources WHERE dir = $1 AND deleted = 0 AND reason = '')`
	_, err = db.execPrepared(ctx, tx, `UPDATE mcsd_directories SET dirty = 0,
		prev_resource_count = CASE WHEN resource_count <> `+counted+` THEN resource_count ELSE prev_resource_count END,
		resource_count = `+counted+` WHERE id = $1`, f.Dir)
	if err != nil {
		return fmt.Errorf("count resources: %w", err)
	}
	return nil
}
