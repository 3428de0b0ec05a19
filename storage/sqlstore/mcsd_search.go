package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"strings"

	"github.com/ozo-platform/ozo-identity/internal/sqlin"
	"github.com/ozo-platform/ozo-identity/lookup/mcsd"
)

// likeContains returns a LIKE pattern (with ESCAPE '\') that finds s anywhere, lower-cased.
func likeContains(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`)
	return "%" + r.Replace(strings.ToLower(strings.TrimSpace(s))) + "%"
}

// query builds a parameterised WHERE clause.
type query struct {
	where []string
	args  []any
}

func (q *query) arg(v any) string {
	q.args = append(q.args, v)
	return fmt.Sprintf("$%d", len(q.args))
}

func (q *query) add(cond string) { q.where = append(q.where, cond) }

func (q *query) keyset(c mcsd.SearchCursor, name, dir, id string) {
	if c.ID == "" {
		return
	}
	n, d, i := q.arg(c.Name), q.arg(c.Dir), q.arg(c.ID)
	q.add(fmt.Sprintf("(%[1]s > %[4]s OR (%[1]s = %[4]s AND %[2]s > %[5]s) OR (%[1]s = %[4]s AND %[2]s = %[5]s AND %[3]s > %[6]s))",
		name, dir, id, n, d, i))
}

// SearchPractitioners pages through practitioners by name, organisation and role, in name order.
func (db *DB) SearchPractitioners(ctx context.Context, pq mcsd.PractitionerSearch) ([]mcsd.Found[mcsd.PractitionerHit], error) {
	var q query
	now := q.arg(pq.Now)
	q.add("r.type = 'PractitionerRole' AND r.deleted = 0 AND r.reason = '' AND r.eff_active = 1")
	q.add("(r.period_start = 0 OR r.period_start <= " + now + ") AND (r.period_end = 0 OR r.period_end > " + now + ")")
	q.add("(p.id IS NULL OR p.active = 1)")
	if pq.Q != "" {
		q.add("COALESCE(p.search, '') LIKE " + q.arg(likeContains(pq.Q)) + ` ESCAPE '\'`)
	}
	if pq.OrgURA != "" {
		q.add("r.root_ura = " + q.arg(pq.OrgURA))
	}
	if pq.OrgName != "" {
		p := q.arg(likeContains(pq.OrgName))
		q.add("(o.search LIKE " + p + ` ESCAPE '\' OR LOWER(o.display_name) LIKE ` + p + ` ESCAPE '\')`)
	}
	if s := pq.Role; s != "" {
		code := q.arg("%|" + strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(s) + "|%")
		q.add("(r.codes LIKE " + code + ` ESCAPE '\' OR LOWER(r.code_text) LIKE ` + q.arg(likeContains(s)) + ` ESCAPE '\')`)
	}
	q.keyset(pq.After, "COALESCE(p.display_name, '')", "r.dir", "r.id")
	text := `SELECT r.dir, r.id, COALESCE(p.display_name, ''), r.code_text, o.display_name, r.root_ura,
			COALESCE(l.display_name, ''), COALESCE(l.city, ''),
			COALESCE((SELECT a.mxid FROM mcsd_addresses a WHERE a.dir = r.dir AND a.source_id = r.id AND a.medium = 'uzi' AND a.mxid <> ''
				AND (a.not_before = 0 OR a.not_before <= ` + now + `) AND (a.not_after = 0 OR a.not_after > ` + now + `)
				ORDER BY a.pref, a.updated DESC, a.mxid LIMIT 1), ''),
			COALESCE((SELECT MIN(u.uzi) FROM mcsd_role_uzis u WHERE u.dir = r.dir AND u.role_id = r.id), ''),
			d.base_url
		FROM mcsd_resources r
		JOIN mcsd_directories d ON d.id = r.dir AND d.active = 1
		JOIN mcsd_resources o ON o.dir = r.dir AND o.type = 'Organization' AND o.id = r.org_ref AND o.deleted = 0 AND o.eff_active = 1
		LEFT JOIN mcsd_resources p ON p.dir = r.dir AND p.type = 'Practitioner' AND p.id = r.practitioner_ref AND p.deleted = 0 AND p.reason = ''
		LEFT JOIN mcsd_resources l ON l.dir = r.dir AND l.type = 'Location' AND l.id = r.location_ref AND l.deleted = 0 AND l.reason = ''
		WHERE ` + strings.Join(q.where, " AND ") + `
		ORDER BY COALESCE(p.display_name, ''), r.dir, r.id LIMIT ` + q.arg(pq.Limit)
	var found []mcsd.Found[mcsd.PractitionerHit]
	err := sqlin.Each(ctx, db, text, q.args, func(rows *sql.Rows) error {
		var h mcsd.PractitionerHit
		var dir string
		err := rows.Scan(&dir, &h.RoleID, &h.Name, &h.Role, &h.Organization, &h.OrganizationURA, &h.Location, &h.City, &h.MXID, &h.UZI, &h.Directory)
		found = append(found, mcsd.Found[mcsd.PractitionerHit]{Hit: h, After: mcsd.SearchCursor{Name: h.Name, Dir: dir, ID: h.RoleID}})
		return err
	})
	return found, err
}

// SearchOrganizations pages through organisations by name or URA, in name order, leaving out an
// LRZA entry when the care provider's own directory publishes that organisation.
func (db *DB) SearchOrganizations(ctx context.Context, oq mcsd.OrganizationSearch) ([]mcsd.Found[mcsd.OrganizationHit], error) {
	var q query
	now := q.arg(oq.Now)
	q.add("o.type = 'Organization' AND o.deleted = 0 AND o.reason = '' AND o.eff_active = 1")
	q.add(`NOT (d.kind = 'lrza' AND EXISTS (SELECT 1 FROM mcsd_resources x JOIN mcsd_directories xd ON xd.id = x.dir AND xd.kind = 'provider'
		WHERE x.type = 'Organization' AND x.ura = o.ura AND x.deleted = 0 AND x.reason = ''))`)
	if s := oq.URA; s != "" {
		q.add("o.root_ura = " + q.arg(s))
	}
	if s := oq.Q; s != "" {
		p := q.arg(likeContains(s))
		q.add("(o.search LIKE " + p + ` ESCAPE '\' OR LOWER(o.display_name) LIKE ` + p + ` ESCAPE '\')`)
	}
	q.keyset(oq.After, "o.display_name", "o.dir", "o.id")
	text := `SELECT o.dir, o.id, o.display_name, o.root_ura, o.code_text, o.city,
			COALESCE((SELECT a.mxid FROM mcsd_addresses a WHERE a.dir = o.dir AND a.source_id = o.id AND a.medium = 'ura' AND a.mxid <> ''
				AND (a.not_before = 0 OR a.not_before <= ` + now + `) AND (a.not_after = 0 OR a.not_after > ` + now + `)
				ORDER BY a.pref, a.updated DESC, a.mxid LIMIT 1), ''),
			COALESCE(NULLIF(o.homeserver, ''), (SELECT MIN(e.homeserver) FROM mcsd_refs f
				JOIN mcsd_resources e ON e.dir = f.dir AND e.type = 'Endpoint' AND e.id = f.to_id AND e.deleted = 0 AND e.reason = ''
					AND e.active = 1 AND e.kind = 'matrix-server'
				WHERE f.dir = o.dir AND f.from_type = 'Organization' AND f.from_id = o.id AND f.kind = 'endpoint'), ''),
			d.base_url
		FROM mcsd_resources o
		JOIN mcsd_directories d ON d.id = o.dir AND d.active = 1
		WHERE ` + strings.Join(q.where, " AND ") + `
		ORDER BY o.display_name, o.dir, o.id LIMIT ` + q.arg(oq.Limit)
	var found []mcsd.Found[mcsd.OrganizationHit]
	err := sqlin.Each(ctx, db, text, q.args, func(rows *sql.Rows) error {
		var h mcsd.OrganizationHit
		var dir string
		err := rows.Scan(&dir, &h.ID, &h.Name, &h.URA, &h.Types, &h.City, &h.MXID, &h.Homeserver, &h.Directory)
		found = append(found, mcsd.Found[mcsd.OrganizationHit]{Hit: h, After: mcsd.SearchCursor{Name: h.Name, Dir: dir, ID: h.ID}})
		return err
	})
	return found, err
}
