package api

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"github.com/ozo-platform/ozo-identity/lookup/mcsd"
	"github.com/ozo-platform/ozo-identity/threepid"
)

// DirectorySyncer starts mCSD directory syncs for the admin API.
type DirectorySyncer interface {
	// StartSync takes the sync lease and runs one sync in the background: a full re-read of
	// the directories of the given URAs (all when none) when full is set. While another sync
	// holds the lease it fails with an error wrapping mcsd.ErrSyncRunning.
	StartSync(ctx context.Context, full bool, uras []string, allowMassDelete bool) (holder string, err error)
}

// adminDirectorySync is POST /_ozo/admin/v1/directory/sync {full, uras, allow_mass_delete}:
// 202 once the sync holds the lease, 409 while another sync does.
func (s *Server) adminDirectorySync(w http.ResponseWriter, r *http.Request) {
	if s.cfg.DirectorySync == nil {
		matrixError(w, http.StatusNotFound, "M_UNRECOGNIZED", "no mCSD directory is configured")
		return
	}
	var req struct {
		Full            bool     `json:"full"`
		URAs            []string `json:"uras"`
		AllowMassDelete bool     `json:"allow_mass_delete"`
	}
	if err := s.decodeJSON(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	uras := make([]string, 0, len(req.URAs))
	for _, u := range req.URAs {
		tp, err := threepid.Normalize(threepid.MediumURA, u)
		if err != nil {
			matrixError(w, http.StatusBadRequest, "M_INVALID_PARAM", "uras: "+err.Error())
			return
		}
		uras = append(uras, tp.Address)
	}
	if len(uras) > 0 && !req.Full {
		matrixError(w, http.StatusBadRequest, "M_INVALID_PARAM", "uras selects directories to re-read: set full")
		return
	}
	target := "sync"
	if req.Full {
		target = "full sync of " + strings.Join(uras, ",")
		if len(uras) == 0 {
			target = "full sync of every directory"
		}
	}
	if req.AllowMassDelete {
		target += " allowing mass deletes"
	}
	setAuditTarget(r, target)
	holder, err := s.cfg.DirectorySync.StartSync(r.Context(), req.Full, uras, req.AllowMassDelete)
	switch {
	case errors.Is(err, mcsd.ErrSyncRunning):
		matrixError(w, http.StatusConflict, "M_UNKNOWN", err.Error()+"; try again when it is done")
		return
	case err != nil:
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]any{"started": true, "holder": holder, "full": req.Full, "uras": uras})
}
