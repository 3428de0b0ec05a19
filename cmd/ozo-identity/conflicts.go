package main

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/ozo-platform/ozo-identity/lookup/mcsd"
)

// conflictJSON is a UZI number that care providers resolve to different Matrix users.
type conflictJSON struct {
	Medium    string       `json:"medium"`
	Address   string       `json:"address"`
	FirstSeen time.Time    `json:"first_seen"`
	Claims    []mcsd.Claim `json:"claims"`
}

func conflictsJSON(conflicts []mcsd.Conflict) []conflictJSON {
	out := make([]conflictJSON, 0, len(conflicts))
	for _, c := range conflicts {
		out = append(out, conflictJSON{Medium: c.Medium, Address: c.Address, FirstSeen: c.FirstSeen, Claims: c.Claims})
	}
	return out
}

// writeConflictsTable lists every conflict with each care provider's claim, so that an operator
// can see which directory to question; while it lasts, lookups answer nothing for the number.
func writeConflictsTable(w io.Writer, conflicts []mcsd.Conflict) {
	fmt.Fprintln(w)
	if len(conflicts) == 0 {
		fmt.Fprintln(w, "no conflicts: no two care providers publish one UZI number with different Matrix users or homeservers")
		return
	}
	fmt.Fprintf(w, "%d CONFLICTS: these UZI numbers resolve to nobody until the care providers agree (a binding proven here still wins)\n", len(conflicts))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "MEDIUM\tADDRESS\tSINCE\tURA\tORGANIZATION\tCLAIMS")
	for _, c := range conflicts {
		for i, cl := range c.Claims {
			medium, addr, since := "", "", ""
			if i == 0 {
				medium, addr, since = c.Medium, c.Address, c.FirstSeen.Local().Format("2006-01-02 15:04:05")
			}
			target := cl.MXID
			if target == "" {
				target = "homeserver " + cl.Homeserver
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", medium, addr, since, clean(cl.URA, 20), clean(cl.Organization, 80), clean(target, 260))
		}
	}
	tw.Flush()
}
