package mcsd

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
)

// step is one named SQL statement of a directory's validation.
type step struct{ name, sql string }

// Rejection says why a resource of a directory does not count.
type Rejection struct {
	Type, ID string
	Reason   string
}

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

const insertAddress = `INSERT INTO mcsd_addresses (dir, medium, address, mxid, homeserver, pref, updated, source_id, not_before, not_after) SELECT DISTINCT `

var roleUpdated = greatest("r.version_ts", "COALESCE(p.version_ts, 0)")

// orgJoin joins the role's own organisation (column org_ref) or its care provider (root_id).
func orgJoin(col string) string {
	return ` JOIN mcsd_resources o ON o.dir = r.dir AND o.type = 'Organization' AND o.id = r.` + col + ` AND o.deleted = 0 AND o.reason = '' `
}

// derivationSteps rebuild the resolution candidates of directory $1 from its accepted resources.
// pref orders them; see the package documentation for the rule.
var derivationSteps = buildDerivationSteps()

func buildDerivationSteps() []step {
	steps := []step{
		{"role uzis: clear", `DELETE FROM mcsd_role_uzis WHERE dir = $1`},
		{"role uzis: practitioner", `INSERT INTO mcsd_role_uzis (dir, role_id, uzi) SELECT DISTINCT r.dir, r.id, i.value FROM mcsd_resources r
		JOIN mcsd_identifiers i ON i.dir = r.dir AND i.type = 'Practitioner' AND i.id = r.practitioner_ref AND i.kind = 'uzi'
		WHERE r.dir = $1 AND r.type = 'PractitionerRole' AND r.deleted = 0 ON CONFLICT DO NOTHING`},
		{"role uzis: role", `INSERT INTO mcsd_role_uzis (dir, role_id, uzi) SELECT DISTINCT i.dir, i.id, i.value FROM mcsd_identifiers i
		WHERE i.dir = $1 AND i.type = 'PractitionerRole' AND i.kind = 'uzi' ON CONFLICT DO NOTHING`},
		{"uzi: role endpoint", insertAddress + `r.dir, 'uzi', i.uzi, e.mxid, '', 1, ` + greatest(roleUpdated, "e.version_ts") + `, r.id, ` +
			greatest("r.period_start", "e.period_start") + `, ` + earliestEnd("r.period_end", "e.period_end") +
			roleFrom + fmt.Sprintf(endpointJoin, "r") + roleWhere + ` AND e.kind = 'matrix-user'`},
		{"uzi: role telecom", insertAddress + `r.dir, 'uzi', i.uzi, r.mxid, '', 2, ` + roleUpdated + `, r.id, r.period_start, r.period_end` +
			roleFrom + roleWhere + ` AND r.mxid <> ''`},
		{"uzi: practitioner telecom", insertAddress + `r.dir, 'uzi', i.uzi, p.mxid, '', 3, ` + roleUpdated + `, r.id, r.period_start, r.period_end` +
			roleFrom + roleWhere + ` AND p.mxid <> ''`},
		{"uzi: role homeserver", insertAddress + `r.dir, 'uzi', i.uzi, '', r.homeserver, 4, ` + roleUpdated + `, r.id, r.period_start, r.period_end` +
			roleFrom + roleWhere + ` AND r.homeserver <> ''`},
		{"uzi: practitioner homeserver", insertAddress + `r.dir, 'uzi', i.uzi, '', p.homeserver, 4, ` + roleUpdated + `, r.id, r.period_start, r.period_end` +
			roleFrom + roleWhere + ` AND p.homeserver <> ''`},
	}

	// The homeserver of the role's own organisation, then of its care provider when that differs.
	for _, col := range []string{"org_ref", "root_id"} {
		cond := ""
		if col == "root_id" {
			cond = " AND r.root_id <> r.org_ref"
		}
		steps = append(steps,
			step{"uzi: organization homeserver (" + col + ")", insertAddress + `r.dir, 'uzi', i.uzi, '', o.homeserver, 5, ` +
				greatest(roleUpdated, "o.version_ts") + `, r.id, r.period_start, r.period_end` + roleFrom + orgJoin(col) + roleWhere +
				` AND o.homeserver <> ''` + cond},
			step{"uzi: organization homeserver endpoint (" + col + ")", insertAddress + `r.dir, 'uzi', i.uzi, '', e.homeserver, 5, ` +
				greatest(roleUpdated, "e.version_ts") + `, r.id, ` + greatest("r.period_start", "e.period_start") + `, ` +
				earliestEnd("r.period_end", "e.period_end") + roleFrom + orgJoin(col) + fmt.Sprintf(endpointJoin, "o") + roleWhere +
				` AND e.kind = 'matrix-server'` + cond},
		)
	}
	steps = append(steps,
		step{"ura: organization endpoint", insertAddress + `o.dir, 'ura', o.ura, e.mxid, '', 1, ` + greatest("o.version_ts", "e.version_ts") +
			`, o.id, e.period_start, e.period_end FROM mcsd_resources o` + fmt.Sprintf(endpointJoin, "o") +
			` WHERE o.dir = $1 AND o.type = 'Organization' AND o.deleted = 0 AND o.reason = '' AND o.eff_active = 1 AND o.ura <> '' AND e.kind = 'matrix-user'`},
		step{"ura: organization telecom", insertAddress + `o.dir, 'ura', o.ura, o.mxid, '', 2, o.version_ts, o.id, 0, 0 FROM mcsd_resources o
		WHERE o.dir = $1 AND o.type = 'Organization' AND o.deleted = 0 AND o.reason = '' AND o.eff_active = 1 AND o.ura <> '' AND o.mxid <> ''`},
	)
	return steps
}

// finishResult is what finish did besides storing watermarks.
type finishResult struct {
	applied, deleted int // the history's tombstones that changed the index
	swept            int
	rejected         int
	rejections       []Rejection
}

// deleteGuard bounds what one sync may delete of a directory's live resources of one type.
type deleteGuard struct {
	share float64
	min   int
	off   bool
}

// MassDeleteError says a sync stopped before deleting most of a directory's resources of a
// type in one go; nothing of that sync's deletions, watermarks or derivation was stored.
type MassDeleteError struct {
	Type       string
	Delete, Of int
	Share      float64
}

func (e *MassDeleteError) Error() string {
	return fmt.Sprintf("would delete %d of %d %s resources in one sync (more than %.0f%%); kept them all",
		e.Delete, e.Of, e.Type, e.Share*100)
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

// finish ends a directory's sync in one transaction: it applies the tombstones and stores the
// watermarks of the types read completely, sweeps what full reads proved gone, checks the
// deletions against the guard (rolling all of it back when they are too many) and, if judge is
// set and anything changed, validates the directory and derives its candidates again.
func (x *Index) finish(ctx context.Context, d directory, run int64, done []typeResult, judge, changed bool, g deleteGuard, max int) (finishResult, error) {
	if judge && changed {
		if err := x.analyzeIfStale(ctx); err != nil {
			return finishResult{}, err
		}
	}
	var res finishResult
	err := x.tx(ctx, func(tx *sql.Tx) error {
		res = finishResult{}
		before, err := liveCounts(ctx, tx, d.id)
		if err != nil {
			return err
		}
		for _, tr := range done {
			if len(tr.deletes) > 0 {
				a, del, err := x.applyTx(ctx, tx, d.id, tr.typ, run, tr.full, tr.deletes)
				if err != nil {
					return err
				}
				res.applied += a
				res.deleted += del
			}
			if tr.full {
				n, err := sweepTx(ctx, tx, d.id, tr, run)
				if err != nil {
					return err
				}
				res.swept += n
			}
			if tr.since == "" {
				continue
			}
			if _, err := x.execPrepared(ctx, tx, `INSERT INTO mcsd_watermarks (dir, type, since, updated_at) VALUES ($1, $2, $3, $4)
				ON CONFLICT (dir, type) DO UPDATE SET since = excluded.since, updated_at = excluded.updated_at`,
				d.id, tr.typ, tr.since, x.now().UnixMilli()); err != nil {
				return fmt.Errorf("store watermark: %w", err)
			}
		}
		if res.deleted+res.swept > 0 && !g.off {
			after, err := liveCounts(ctx, tx, d.id)
			if err != nil {
				return err
			}
			for _, typ := range d.types() {
				gone := before[typ] - after[typ]
				if gone > g.min && float64(gone) > g.share*float64(before[typ]) {
					return &MassDeleteError{Type: typ, Delete: gone, Of: before[typ], Share: g.share}
				}
			}
		}
		if !judge || !changed && res.deleted+res.swept+res.applied == 0 {
			return nil
		}
		res.rejected, res.rejections, err = x.validateTx(ctx, tx, d.id, d.kind == "lrza", run, max)
		if err != nil {
			return err
		}
		// What counts now, and what counted before, for the status's collapse check.
		const counted = `(SELECT COUNT(*) FROM mcsd_resources WHERE dir = $1 AND deleted = 0 AND reason = '')`
		_, err = tx.ExecContext(ctx, `UPDATE mcsd_directories SET prev_resource_count = resource_count,
			resource_count = `+counted+` WHERE id = $1 AND resource_count <> `+counted, d.id)
		if err != nil {
			return fmt.Errorf("count resources: %w", err)
		}
		return nil
	})
	if err != nil {
		return finishResult{}, err
	}
	return res, nil
}

// validateTx applies the anti-spoofing rules to a directory and rebuilds its resolution
// candidates and their hashes. It returns how many resources that this run fetched or whose
// acceptance changed are rejected, and up to max of them with the reason.
func (x *Index) validateTx(ctx context.Context, tx *sql.Tx, dir string, trustAll bool, run int64, max int) (int, []Rejection, error) {
	pepper, err := x.lockPepper(ctx, tx, false)
	if err != nil {
		return 0, nil, err
	}
	for _, st := range validationSteps {
		if _, err := x.execPrepared(ctx, tx, st.sql, dir, b2i(trustAll)); err != nil {
			return 0, nil, fmt.Errorf("validate (%s): %w", st.name, err)
		}
	}
	if _, err := x.execPrepared(ctx, tx, `UPDATE mcsd_resources SET reason = new_reason, changed_run = $2
		WHERE dir = $1 AND deleted = 0 AND reason <> new_reason`, dir, run); err != nil {
		return 0, nil, fmt.Errorf("validate (record): %w", err)
	}
	if err := markDirty(ctx, tx, dir); err != nil {
		return 0, nil, err
	}
	for _, q := range []string{`DELETE FROM mcsd_addresses WHERE dir = $1`, `DELETE FROM mcsd_hashes WHERE dir = $1`} {
		if _, err := x.execPrepared(ctx, tx, q, dir); err != nil {
			return 0, nil, fmt.Errorf("derive candidates: %w", err)
		}
	}
	for _, st := range derivationSteps {
		if _, err := x.execPrepared(ctx, tx, st.sql, dir); err != nil {
			return 0, nil, fmt.Errorf("derive candidates (%s): %w", st.name, err)
		}
	}
	if err := markDirty(ctx, tx, dir); err != nil {
		return 0, nil, err
	}
	if err := fillHashes(ctx, tx, dir, pepper); err != nil {
		return 0, nil, err
	}
	if _, err := tx.ExecContext(ctx, `UPDATE mcsd_directories SET dirty = 0 WHERE id = $1`, dir); err != nil {
		return 0, nil, fmt.Errorf("validate: %w", err)
	}
	const touched = ` FROM mcsd_resources WHERE dir = $1 AND deleted = 0 AND reason <> '' AND (seen_run = $2 OR changed_run = $2)`
	var rejected int
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*)`+touched, dir, run).Scan(&rejected); err != nil {
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
	var rejections []Rejection
	for rows.Next() {
		var r Rejection
		if err := rows.Scan(&r.Type, &r.ID, &r.Reason); err != nil {
			return 0, nil, fmt.Errorf("list rejections: %w", err)
		}
		rejections = append(rejections, r)
	}
	return rejected, rejections, rows.Err()
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
