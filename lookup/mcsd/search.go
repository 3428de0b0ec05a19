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

func encodeCursor(c SearchCursor) string {
	b, _ := json.Marshal([]string{c.Name, c.Dir, c.ID})
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodeCursor(s string) (SearchCursor, error) {
	if s == "" {
		return SearchCursor{}, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	var parts []string
	if err != nil || len(b) > 4096 || json.Unmarshal(b, &parts) != nil || len(parts) != 3 || parts[1] == "" || parts[2] == "" {
		return SearchCursor{}, ErrBadCursor
	}
	return SearchCursor{parts[0], parts[1], parts[2]}, nil
}

func pageLimit(n int) int {
	if n <= 0 {
		return 20
	}
	return min(n, 100)
}

// SearchPractitioners pages through practitioners by name, organisation and role, in name order.
func (x *Index) SearchPractitioners(ctx context.Context, pq PractitionerQuery) (PractitionerPage, error) {
	c, err := decodeCursor(pq.Cursor)
	if err != nil {
		return PractitionerPage{}, err
	}
	limit := pageLimit(pq.Limit)
	q := PractitionerSearch{Q: strings.TrimSpace(pq.Q), Role: strings.TrimSpace(pq.Role), Now: x.now().UnixMilli(), After: c, Limit: limit + 1}
	if s := strings.TrimSpace(pq.Organization); allDigits(s, 8) {
		q.OrgURA = s
	} else {
		q.OrgName = s
	}
	found, err := x.db.SearchPractitioners(ctx, q)
	if err != nil {
		return PractitionerPage{}, fmt.Errorf("search practitioners: %w", err)
	}
	var page PractitionerPage
	page.Results, page.Next = pageOf(found, limit)
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
	found, err := x.db.SearchOrganizations(ctx, OrganizationSearch{Q: strings.TrimSpace(oq.Q), URA: strings.TrimSpace(oq.URA),
		Now: x.now().UnixMilli(), After: c, Limit: limit + 1})
	if err != nil {
		return OrganizationPage{}, fmt.Errorf("search organizations: %w", err)
	}
	var page OrganizationPage
	page.Results, page.Next = pageOf(found, limit)
	return page, nil
}

// pageOf cuts the results asked for one beyond the page: that one only says a next page exists.
func pageOf[T any](found []Found[T], limit int) ([]T, string) {
	var out []T
	for i, f := range found {
		if i == limit {
			return out, encodeCursor(found[i-1].After)
		}
		out = append(out, f.Hit)
	}
	return out, ""
}
