package mcsd

import (
	"context"
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
		name, err := x.db.OrganizationName(ctx, u)
		if err != nil {
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

// Conflicts lists the conflicts found by the last placement pass, in UZI number order.
func (x *Index) Conflicts(ctx context.Context) ([]Conflict, error) {
	out, err := x.db.Conflicts(ctx)
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
	res, err := x.candidates(ctx, []threepid.ThreePID{tp}, true)
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
