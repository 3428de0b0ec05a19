package api

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/go-chi/chi/v5"

	"github.com/ozo-platform/ozo-identity/identity"
	"github.com/ozo-platform/ozo-identity/lookup/mcsd"
	"github.com/ozo-platform/ozo-identity/threepid"
)

// Directory is what the /_ozo/v1/directory endpoints need from the mCSD index.
type Directory interface {
	// Homeserver places a practitioner; an unknown UZI number gives mcsd.ErrNotFound.
	Homeserver(ctx context.Context, uzi string) (current, previous string, since time.Time, err error)
	// Claims lists what each care provider claims when they disagree about a UZI number; nil otherwise.
	Claims(ctx context.Context, uzi string) ([]mcsd.Claim, error)
	Resolve(ctx context.Context, tps []threepid.ThreePID) (map[threepid.ThreePID]string, error)
	SearchPractitioners(ctx context.Context, q mcsd.PractitionerQuery) (mcsd.PractitionerPage, error)
	SearchOrganizations(ctx context.Context, q mcsd.OrganizationQuery) (mcsd.OrganizationPage, error)
}

// Paging of the search endpoints follows the Matrix convention of /hierarchy: the request's
// "from" is the "next_batch" of the previous page, and the last page has no next_batch.
const (
	defaultSearchLimit = 20
	maxSearchLimit     = 100
	// maxSearchTerm bounds a search term: names and codes are short, and a long LIKE pattern
	// only costs the database.
	maxSearchTerm = 200
)

// routesDirectory serves homeserver localisation and directory search. UZI numbers are
// enumerable (design.md §7), so every call needs a token with accepted terms and is rate-limited.
func (s *Server) routesDirectory(r chi.Router) {
	r.Use(s.authenticated(true), s.limitDirectory)
	r.With(s.limitLookupServer).Get("/homeserver", s.directoryHomeserver)
	r.Get("/practitioners", s.directoryPractitioners)
	r.Get("/organizations", s.directoryOrganizations)
}

// limitDirectory bounds directory calls per account.
func (s *Server) limitDirectory(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.limit(w, r, "directory:account:"+account(r).UserID, s.cfg.RateLimits.DirectoryPerAccount) {
			next.ServeHTTP(w, r)
		}
	})
}

// limitLookupServer counts a call against the account's and the homeserver's lookup budgets
// as one address: localisation and store-invite answer for one 3PID, as a lookup does.
func (s *Server) limitLookupServer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.chargeLookup(w, r, 1) {
			next.ServeHTTP(w, r)
		}
	})
}

type homeserverResponse struct {
	Medium     string `json:"medium"`
	Address    string `json:"address"`
	Homeserver string `json:"homeserver,omitempty"`
	MXID       string `json:"mxid,omitempty"`
	Previous   string `json:"previous_homeserver,omitempty"`
	MovedAt    int64  `json:"moved_at,omitempty"`
	// Conflict: care providers publish different Matrix users for this UZI number, so none is
	// chosen; Candidates lists them with their organisation for the user to choose from.
	Conflict   bool        `json:"conflict,omitempty"`
	Candidates []candidate `json:"candidates,omitempty"`
}

type candidate struct {
	MXID         string          `json:"mxid,omitempty"`
	Homeserver   string          `json:"homeserver"`
	Organization organizationRef `json:"organization"`
}

// directoryHomeserver answers where mCSD places a practitioner and, after a move, where they came
// from; when care providers disagree about the practitioner, it lists their claims instead.
func (s *Server) directoryHomeserver(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if err := required(map[string]string{"medium": q.Get("medium"), "address": q.Get("address")}, "medium", "address"); err != nil {
		s.writeError(w, r, err)
		return
	}
	if threepid.CanonicalMedium(q.Get("medium")) != threepid.MediumUZI {
		s.writeError(w, r, badRequest(identity.CodeInvalidParam, "medium must be uzi (or uzi_nr)"))
		return
	}
	tp, err := threepid.Normalize(threepid.MediumUZI, q.Get("address"))
	if err != nil {
		s.writeError(w, r, badRequest(identity.CodeInvalidParam, "address must be a UZI number of 9 digits"))
		return
	}
	// Localising a UZI number tells where a practitioner works: it is audited as a lookup.
	located := 0
	defer func() { s.auditLookup(r, []string{tp.Medium}, 1, located) }()
	claims, err := s.cfg.Directory.Claims(r.Context(), tp.Address)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if len(claims) > 0 {
		located = 1
		resp := homeserverResponse{Medium: tp.Medium, Address: tp.Address, Conflict: true}
		for _, c := range claims {
			resp.Candidates = append(resp.Candidates, candidate{MXID: c.MXID, Homeserver: c.Homeserver,
				Organization: organizationRef{Name: c.Organization, URA: c.URA}})
		}
		writeJSON(w, http.StatusOK, resp)
		return
	}
	current, previous, since, err := s.cfg.Directory.Homeserver(r.Context(), tp.Address)
	if errors.Is(err, mcsd.ErrNotFound) {
		matrixError(w, http.StatusNotFound, identity.CodeNotFound, "the directory does not place this practitioner")
		return
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	found, err := s.cfg.Directory.Resolve(r.Context(), []threepid.ThreePID{tp})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	located = 1
	resp := homeserverResponse{Medium: tp.Medium, Address: tp.Address, Homeserver: current, MXID: found[tp]}
	if previous != "" {
		resp.Previous, resp.MovedAt = previous, since.UnixMilli()
	}
	writeJSON(w, http.StatusOK, resp)
}

// practitionerResult is what a person needs to pick the right colleague. The UZI number is left
// out on purpose: it is the key of the enumerable uzi lookups (design.md §7), and a search must
// not hand out lists of them.
type practitionerResult struct {
	ID           string          `json:"id"`
	Name         string          `json:"name"`
	Role         string          `json:"role,omitempty"`
	Organization organizationRef `json:"organization"`
	Location     *locationRef    `json:"location,omitempty"`
	MXID         string          `json:"mxid,omitempty"`
}

type organizationRef struct {
	Name string `json:"name"`
	URA  string `json:"ura"`
}

type locationRef struct {
	Name string `json:"name,omitempty"`
	City string `json:"city,omitempty"`
}

type organizationResult struct {
	ID         string `json:"id"`
	Name       string `json:"name"`
	URA        string `json:"ura"`
	Type       string `json:"type,omitempty"`
	City       string `json:"city,omitempty"`
	MXID       string `json:"mxid,omitempty"`
	Homeserver string `json:"homeserver,omitempty"`
}

type page[T any] struct {
	Results   []T    `json:"results"`
	NextBatch string `json:"next_batch,omitempty"`
}

func (s *Server) directoryPractitioners(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit, err := searchParams(q, "q", "organization", "role")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if q.Get("q") == "" && q.Get("organization") == "" && q.Get("role") == "" {
		s.writeError(w, r, badRequest(identity.CodeMissingParams, "give at least one of q, organization and role"))
		return
	}
	res, err := s.cfg.Directory.SearchPractitioners(r.Context(), mcsd.PractitionerQuery{Q: q.Get("q"),
		Organization: q.Get("organization"), Role: q.Get("role"), Limit: limit, Cursor: q.Get("from")})
	if err != nil {
		s.writeSearchError(w, r, err)
		return
	}
	out := page[practitionerResult]{Results: make([]practitionerResult, 0, len(res.Results)), NextBatch: res.Next}
	for _, h := range res.Results {
		p := practitionerResult{ID: opaqueID(h.Directory, "PractitionerRole", h.RoleID), Name: h.Name, Role: h.Role,
			Organization: organizationRef{Name: h.Organization, URA: h.OrganizationURA}, MXID: h.MXID}
		if h.Location != "" || h.City != "" {
			p.Location = &locationRef{Name: h.Location, City: h.City}
		}
		out.Results = append(out.Results, p)
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) directoryOrganizations(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit, err := searchParams(q, "q", "ura")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ura := q.Get("ura")
	if q.Get("q") == "" && ura == "" {
		s.writeError(w, r, badRequest(identity.CodeMissingParams, "give q or ura"))
		return
	}
	if ura != "" {
		tp, err := threepid.Normalize(threepid.MediumURA, ura)
		if err != nil {
			s.writeError(w, r, badRequest(identity.CodeInvalidParam, "ura must be a URA number of 8 digits"))
			return
		}
		ura = tp.Address
	}
	res, err := s.cfg.Directory.SearchOrganizations(r.Context(), mcsd.OrganizationQuery{Q: q.Get("q"), URA: ura,
		Limit: limit, Cursor: q.Get("from")})
	if err != nil {
		s.writeSearchError(w, r, err)
		return
	}
	out := page[organizationResult]{Results: make([]organizationResult, 0, len(res.Results)), NextBatch: res.Next}
	for _, h := range res.Results {
		out.Results = append(out.Results, organizationResult{ID: opaqueID(h.Directory, "Organization", h.ID), Name: h.Name,
			URA: h.URA, Type: h.Types, City: h.City, MXID: h.MXID, Homeserver: h.Homeserver})
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) writeSearchError(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, mcsd.ErrBadCursor) {
		err = badRequest(identity.CodeInvalidParam, "from is not a next_batch this server handed out")
	}
	s.writeError(w, r, err)
}

// searchParams checks the search terms and the cursor and returns the page size.
func searchParams(q url.Values, terms ...string) (int, error) {
	for _, name := range append(terms, "from", "limit") {
		if len(q[name]) > 1 {
			return 0, badRequest(identity.CodeInvalidParam, name+" must be given at most once")
		}
	}
	for _, name := range terms {
		if err := searchTerm(name, q.Get(name)); err != nil {
			return 0, err
		}
	}
	if len(q.Get("from")) > 4096 {
		return 0, badRequest(identity.CodeInvalidParam, "from is not a next_batch this server handed out")
	}
	v := q.Get("limit")
	if v == "" {
		return defaultSearchLimit, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > maxSearchLimit {
		return 0, badRequest(identity.CodeInvalidParam, "limit must be a number from 1 to "+strconv.Itoa(maxSearchLimit))
	}
	return n, nil
}

// searchTerm refuses what no name or code contains: control characters (PostgreSQL refuses NUL)
// and invalid UTF-8.
func searchTerm(name, v string) error {
	if len(v) > maxSearchTerm {
		return badRequest(identity.CodeInvalidParam, name+" is longer than "+strconv.Itoa(maxSearchTerm)+" bytes")
	}
	if !utf8.ValidString(v) || strings.ContainsFunc(v, unicode.IsControl) {
		return badRequest(identity.CodeInvalidParam, name+" contains characters that are not allowed")
	}
	return nil
}

// opaqueID is a stable key for a result, for lists and de-duplication in clients. It is hashed
// because directories may use any identifier, a UZI number included, as a resource id.
func opaqueID(dir, typ, id string) string {
	sum := sha256.Sum256([]byte(dir + "\x00" + typ + "\x00" + id))
	return base64.RawURLEncoding.EncodeToString(sum[:16])
}
