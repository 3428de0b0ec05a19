package mcsd

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// ErrBadCursor is returned for a cursor that no earlier page handed out.
var ErrBadCursor = errors.New("mcsd: invalid search cursor")

// PractitionerQuery searches the practitioners that resolution would use: accepted, active
// PractitionerRoles of active organisations. Empty fields do not filter.
type PractitionerQuery struct {
	Q            string // part of the practitioner's name
	Organization string // a URA (8 digits) or part of the organisation's name
	Role         string // a role or specialty code (e.g. UZI role code 01.015), or part of its name
	Limit        int    // page size [20], at most 100
	Cursor       string // Next of the previous page
}

// PractitionerHit is one PractitionerRole: who, in which role, where, and their Matrix address.
type PractitionerHit struct {
	Name            string
	UZI             string
	Role            string // role and specialty names
	Organization    string
	OrganizationURA string // of the care provider the organisation belongs to
	Location        string
	City            string
	MXID            string // "" when the role has no current Matrix address
	Directory       string // base URL of the directory that published it
	RoleID          string
}

// PractitionerPage is one page of results; Next is "" on the last page.
type PractitionerPage struct {
	Results []PractitionerHit
	Next    string
}

// OrganizationQuery searches accepted, active organisations (departments included).
type OrganizationQuery struct {
	Q      string // part of the name or an alias
	URA    string // only this care provider
	Limit  int    // page size [20], at most 100
	Cursor string // Next of the previous page
}

// OrganizationHit is one organisation with its Matrix function address, if it publishes one.
type OrganizationHit struct {
	Name       string
	URA        string // of the care provider it belongs to
	Types      string
	City       string
	MXID       string
	Homeserver string
	Directory  string
	ID         string
}

// OrganizationPage is one page of results; Next is "" on the last page.
type OrganizationPage struct {
	Results []OrganizationHit
	Next    string
}

type cursor struct {
	Name, Dir, ID string
}

func encodeCursor(c cursor) string {
	b, _ := json.Marshal([]string{c.Name, c.Dir, c.ID})
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodeCursor(s string) (cursor, error) {
	if s == "" {
		return cursor{}, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	var parts []string
	if err != nil || len(b) > 4096 || json.Unmarshal(b, &parts) != nil || len(parts) != 3 || parts[1] == "" || parts[2] == "" {
		return cursor{}, ErrBadCursor
	}
	return cursor{parts[0], parts[1], parts[2]}, nil
}

// likeContains returns a LIKE pattern (with ESCAPE '\') that finds s anywhere, lower-cased.
func likeContains(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`)
	return "%" + r.Replace(strings.ToLower(strings.TrimSpace(s))) + "%"
}

func pageLimit(n int) int {
	if n <= 0 {
		return 20
	}
	return min(n, 100)
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

func (q *query) keyset(c cursor, name, dir, id string) {
	if c.ID == "" {
		return
	}
	n, d, i := q.arg(c.Name), q.arg(c.Dir), q.arg(c.ID)
	q.add(fmt.Sprintf("(%[1]s > %[4]s OR (%[1]s = %[4]s AND %[2]s > %[5]s) OR (%[1]s = %[4]s AND %[2]s = %[5]s AND %[3]s > %[6]s))",
		name, dir, id, n, d, i))
}

// SearchPractitioners pages through practitioners by name, organisation and role, in name order.
func (x *Index) SearchPractitioners(ctx context.Context, pq PractitionerQuery) (PractitionerPage, error) {
	c, err := decodeCursor(pq.Cursor)
	if err != nil {
		return PractitionerPage{}, err
	}
	limit := pageLimit(pq.Limit)
	var q query
	now := q.arg(x.now().UnixMilli())
	q.add("r.type = 'PractitionerRole' AND r.deleted = 0 AND r.reason = '' AND r.eff_active = 1")
	q.add("(r.period_start = 0 OR r.period_start <= " + now + ") AND (r.period_end = 0 OR r.period_end > " + now + ")")
	q.add("(p.id IS NULL OR p.active = 1)")
	if s := strings.TrimSpace(pq.Q); s != "" {
		q.add("COALESCE(p.search, '') LIKE " + q.arg(likeContains(s)) + ` ESCAPE '\'`)
	}
	if s := strings.TrimSpace(pq.Organization); s != "" {
		if allDigits(s, 8) {
			q.add("r.root_ura = " + q.arg(s))
		} else {
			p := q.arg(likeContains(s))
			q.add("(o.search LIKE " + p + ` ESCAPE '\' OR LOWER(o.display_name) LIKE ` + p + ` ESCAPE '\')`)
		}
	}
	if s := strings.TrimSpace(pq.Role); s != "" {
		code := q.arg("%|" + strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(s) + "|%")
		q.add("(r.codes LIKE " + code + ` ESCAPE '\' OR LOWER(r.code_text) LIKE ` + q.arg(likeContains(s)) + ` ESCAPE '\')`)
	}
	q.keyset(c, "COALESCE(p.display_name, '')", "r.dir", "r.id")
	sql := `SELECT r.dir, r.id, COALESCE(p.display_name, ''), r.code_text, o.display_name, r.root_ura,
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
		ORDER BY COALESCE(p.display_name, ''), r.dir, r.id LIMIT ` + q.arg(limit+1)
	rows, err := x.db.QueryContext(ctx, sql, q.args...)
	if err != nil {
		return PractitionerPage{}, fmt.Errorf("search practitioners: %w", err)
	}
	defer rows.Close()
	var page PractitionerPage
	var last cursor
	for rows.Next() {
		var h PractitionerHit
		var dir string
		if err := rows.Scan(&dir, &h.RoleID, &h.Name, &h.Role, &h.Organization, &h.OrganizationURA, &h.Location, &h.City,
			&h.MXID, &h.UZI, &h.Directory); err != nil {
			return PractitionerPage{}, fmt.Errorf("search practitioners: %w", err)
		}
		if len(page.Results) == limit {
			page.Next = encodeCursor(last)
			break
		}
		page.Results = append(page.Results, h)
		last = cursor{h.Name, dir, h.RoleID}
	}
	if err := rows.Err(); err != nil {
		return PractitionerPage{}, fmt.Errorf("search practitioners: %w", err)
	}
	return page, nil
}

// SearchOrganizations pages through organisations by name or URA, in name order. An LRZA entry is
// left out when the care provider's own directory publishes that organisation.
func (x *Index) SearchOrganizations(ctx context.Context, oq OrganizationQuery) (OrganizationPage, error) {
	c, err := decodeCursor(oq.Cursor)
	if err != nil {
		return OrganizationPage{}, err
	}
	limit := pageLimit(oq.Limit)
	var q query
	now := q.arg(x.now().UnixMilli())
	q.add("o.type = 'Organization' AND o.deleted = 0 AND o.reason = '' AND o.eff_active = 1")
	q.add(`NOT (d.kind = 'lrza' AND EXISTS (SELECT 1 FROM mcsd_resources x JOIN mcsd_directories xd ON xd.id = x.dir AND xd.kind = 'provider'
		WHERE x.type = 'Organization' AND x.ura = o.ura AND x.deleted = 0 AND x.reason = ''))`)
	if s := strings.TrimSpace(oq.URA); s != "" {
		q.add("o.root_ura = " + q.arg(s))
	}
	if s := strings.TrimSpace(oq.Q); s != "" {
		p := q.arg(likeContains(s))
		q.add("(o.search LIKE " + p + ` ESCAPE '\' OR LOWER(o.display_name) LIKE ` + p + ` ESCAPE '\')`)
	}
	q.keyset(c, "o.display_name", "o.dir", "o.id")
	sql := `SELECT o.dir, o.id, o.display_name, o.root_ura, o.code_text, o.city,
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
		ORDER BY o.display_name, o.dir, o.id LIMIT ` + q.arg(limit+1)
	rows, err := x.db.QueryContext(ctx, sql, q.args...)
	if err != nil {
		return OrganizationPage{}, fmt.Errorf("search organizations: %w", err)
	}
	defer rows.Close()
	var page OrganizationPage
	var last cursor
	for rows.Next() {
		var h OrganizationHit
		var dir string
		if err := rows.Scan(&dir, &h.ID, &h.Name, &h.URA, &h.Types, &h.City, &h.MXID, &h.Homeserver, &h.Directory); err != nil {
			return OrganizationPage{}, fmt.Errorf("search organizations: %w", err)
		}
		if len(page.Results) == limit {
			page.Next = encodeCursor(last)
			break
		}
		page.Results = append(page.Results, h)
		last = cursor{h.Name, dir, h.ID}
	}
	if err := rows.Err(); err != nil {
		return OrganizationPage{}, fmt.Errorf("search organizations: %w", err)
	}
	return page, nil
}
