package mcsd

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/ozo-platform/ozo-identity/threepid"
)

// Claim is what one care provider's directories say a UZI number resolves to.
type Claim struct {
	URA          string `json:"ura"`
	Organization string `json:"organization"` // the care provider's name, the LRZA's when it has one
	MXID         string `json:"mxid,omitempty"`
	Homeserver   string `json:"homeserver"`
}

// Conflict is a UZI number that care providers resolve to different Matrix users (or, when none
// names a user, to different homeservers). The index answers nothing for it until they agree.
type Conflict struct {
	Medium, Address string
	Claims          []Claim
	FirstSeen       time.Time
}

// orgNames returns the names of the care providers behind the claims of conflicting resolutions,
// by URA: the LRZA's name first, else that of an accepted Organization in a provider directory.
func (x *Index) orgNames(ctx context.Context, res map[threepid.ThreePID]resolution) (map[string]string, error) {
	var uras []string
	for _, r := range res {
		if !r.conflict {
			continue
		}
		for _, c := range r.claims {
			if c.ura != "" && !slices.Contains(uras, c.ura) {
				uras = append(uras, c.ura)
			}
		}
	}
	names := make(map[string]string, len(uras))
	for _, u := range uras {
		var name string
		err := x.db.QueryRowContext(ctx, `SELECT o.display_name FROM mcsd_resources o JOIN mcsd_directories d ON d.id = o.dir
			WHERE o.type = 'Organization' AND o.ura = $1 AND o.deleted = 0 AND o.reason = '' AND d.active = 1
			ORDER BY CASE WHEN d.kind = 'lrza' THEN 0 ELSE 1 END, o.dir, o.id LIMIT 1`, u).Scan(&name)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return nil, fmt.Errorf("name of care provider %s: %w", u, err)
		}
		names[u] = name
	}
	return names, nil
}

func toClaims(r resolution, names map[string]string) []Claim {
	out := make([]Claim, 0, len(r.claims))
	for _, c := range r.claims {
		out = append(out, Claim{URA: c.ura, Organization: names[c.ura], MXID: c.mxid, Homeserver: c.homeserver})
	}
	return out
}

// recordConflict keeps mcsd_conflicts in step with the resolution of one UZI number (ok is false
// when nothing resolves it any more). It returns the conflict when it is new, or the recorded one
// when it no longer exists.
func recordConflict(ctx context.Context, tx *sql.Tx, uzi string, r resolution, ok bool, names map[string]string, now int64) (isNew, resolved *Conflict, err error) {
	if !ok || !r.conflict {
		var raw string
		var first int64
		err := tx.QueryRowContext(ctx, `DELETE FROM mcsd_conflicts WHERE medium = 'uzi' AND address = $1 RETURNING claims, first_seen`, uzi).Scan(&raw, &first)
		if errors.Is(err, sql.ErrNoRows) {
			return nil, nil, nil
		}
		if err != nil {
			return nil, nil, fmt.Errorf("clear conflict: %w", err)
		}
		c := Conflict{Medium: threepid.MediumUZI, Address: uzi, FirstSeen: time.UnixMilli(first).UTC()}
		_ = json.Unmarshal([]byte(raw), &c.Claims)
		return nil, &c, nil
	}
	c := Conflict{Medium: threepid.MediumUZI, Address: uzi, Claims: toClaims(r, names), FirstSeen: time.UnixMilli(now).UTC()}
	raw, err := json.Marshal(c.Claims)
	if err != nil {
		return nil, nil, fmt.Errorf("record conflict: %w", err)
	}
	res, err := tx.ExecContext(ctx, `INSERT INTO mcsd_conflicts (medium, address, claims, first_seen, updated_at)
		VALUES ('uzi', $1, $2, $3, $3) ON CONFLICT (medium, address) DO NOTHING`, uzi, string(raw), now)
	if err != nil {
		return nil, nil, fmt.Errorf("record conflict: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 1 {
		return &c, nil, nil
	}
	if _, err := tx.ExecContext(ctx, `UPDATE mcsd_conflicts SET claims = $2, updated_at = $3
		WHERE medium = 'uzi' AND address = $1 AND claims <> $2`, uzi, string(raw), now); err != nil {
		return nil, nil, fmt.Errorf("record conflict: %w", err)
	}
	return nil, nil, nil
}

// Conflicts lists the conflicts found by the last placement pass, in UZI number order.
func (x *Index) Conflicts(ctx context.Context) ([]Conflict, error) {
	var out []Conflict
	err := x.scanEach(ctx, `SELECT medium, address, claims, first_seen FROM mcsd_conflicts ORDER BY medium, address`, nil,
		func(r *sql.Rows) error {
			var c Conflict
			var raw string
			var first int64
			if err := r.Scan(&c.Medium, &c.Address, &raw, &first); err != nil {
				return err
			}
			if err := json.Unmarshal([]byte(raw), &c.Claims); err != nil {
				return fmt.Errorf("claims of %s: %w", c.Address, err)
			}
			c.FirstSeen = time.UnixMilli(first).UTC()
			out = append(out, c)
			return nil
		})
	if err != nil {
		return nil, fmt.Errorf("mcsd conflicts: %w", err)
	}
	return out, nil
}

// Claims says, from the index as it is now, whether care providers disagree about the UZI number
// and, if so, what each of them claims, so that a person can choose. It returns nil without a
// conflict.
func (x *Index) Claims(ctx context.Context, uzi string) ([]Claim, error) {
	tp, err := threepid.Normalize(threepid.MediumUZI, uzi)
	if err != nil {
		return nil, err
	}
	res, err := x.candidates(ctx, x.db, []threepid.ThreePID{tp}, true)
	if err != nil {
		return nil, err
	}
	r, ok := res[tp]
	if !ok || !r.conflict {
		return nil, nil
	}
	names, err := x.orgNames(ctx, res)
	if err != nil {
		return nil, err
	}
	return toClaims(r, names), nil
}

// claimsAttr writes claims for a log line: "URA name → @user:server" each.
func claimsAttr(claims []Claim) []string {
	out := make([]string, 0, len(claims))
	for _, c := range claims {
		target := c.MXID
		if target == "" {
			target = "homeserver " + c.Homeserver
		}
		out = append(out, fmt.Sprintf("%s %q → %s", c.URA, c.Organization, target))
	}
	return out
}
