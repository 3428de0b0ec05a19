package mcsd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"time"

	"github.com/ozo-platform/ozo-identity/threepid"
)

// Store is the database the index lives in, as storage/sqlstore provides it. The index decides
// what to write (the rules of anti-spoofing, conflicts, placements and the mass-delete guard);
// the store keeps it, each method in one transaction where it writes more than one thing.
type Store interface {
	ResourceStore
	DirectoryStore
	ResolutionStore
	SearchStore
	Leaser
}

// ResourceStore keeps the resources the directories publish.
type ResourceStore interface {
	// StoredVersion returns the version of a resource in the index; ok is false without one.
	StoredVersion(ctx context.Context, dir, typ, id string) (versionID string, ts int64, ok bool, err error)
	// ApplyResources writes batches of versions of resources in one transaction, where they
	// win over the stored ones (see FinishInput.Run), and reports how many changed the index
	// and how many of those were deletes.
	ApplyResources(ctx context.Context, dir string, run int64, batches []Batch) (applied, deleted int, err error)
	// FinishDirectory ends a directory's sync in one transaction; see FinishInput.
	FinishDirectory(ctx context.Context, f FinishInput) (FinishResult, error)
	// Analyze refreshes the planner statistics of the index.
	Analyze(ctx context.Context) error
}

// DirectoryStore keeps the directories and their sync state.
type DirectoryStore interface {
	// EnsureDirectory registers (or reactivates) a directory.
	EnsureDirectory(ctx context.Context, d Directory, now int64) error
	// RefuseDirectory records that an inactive directory is not synced and why; it reports
	// whether the reason is new.
	RefuseDirectory(ctx context.Context, d Directory, reason string, now int64) (bool, error)
	// SetDirectoryURAs replaces the URAs (sorted, unique) a directory is authoritative for and
	// marks it to validate again when they changed.
	SetDirectoryURAs(ctx context.Context, dir string, uras []string) error
	// Directories lists the active directories of a kind with their URAs, by base URL.
	Directories(ctx context.Context, kind string) ([]Directory, error)
	// MarkProvidersOf marks to validate again the provider directories of the care providers
	// whose Organization in the LRZA directory lrza changed in run.
	MarkProvidersOf(ctx context.Context, lrza string, run int64) error
	// Endpoints lists the addresses of the active mCSD directory Endpoints, current at now, of
	// the accepted, active Organizations with a URA in directory dir.
	Endpoints(ctx context.Context, dir string, now int64) ([]DirectoryEndpoint, error)
	// Watermarks returns the _since of the next request per resource type of a directory.
	Watermarks(ctx context.Context, dir string) (map[string]string, error)
	// ResetWatermarks forgets the watermarks of a directory.
	ResetWatermarks(ctx context.Context, dir string) error
	// RecordAttempt stores the outcome of a directory's sync.
	RecordAttempt(ctx context.Context, dir string, a Attempt) error
	// RemoveDirectory deletes everything of a directory and makes it inactive.
	RemoveDirectory(ctx context.Context, dir string) error
	// DirectoryStatuses reports every directory, by base URL, without Collapsed.
	DirectoryStatuses(ctx context.Context) ([]DirectoryStatus, error)
}

// ResolutionStore keeps the resolution candidates, their hashes, placements and conflicts.
type ResolutionStore interface {
	// Candidates returns the candidates current at now for addresses of a medium; without
	// withHomeserverOnly only those that name a user.
	Candidates(ctx context.Context, medium string, addrs []string, now int64, withHomeserverOnly bool) ([]Candidate, error)
	// HashedThreePIDs returns the 3PIDs of the index behind lookup hashes.
	HashedThreePIDs(ctx context.Context, hashes []string) ([]HashedThreePID, error)
	// Rehash makes the stored hashes those of pepper, filling in what is missing.
	Rehash(ctx context.Context, pepper string) error
	// Placements returns the stored placements of UZI numbers.
	Placements(ctx context.Context, uzis []string) (map[string]Placement, error)
	// OrganizationName returns the name of the care provider with a URA: the LRZA's first,
	// "" when no active directory names it.
	OrganizationName(ctx context.Context, ura string) (string, error)
	// Conflicts lists the recorded conflicts by medium and address.
	Conflicts(ctx context.Context) ([]Conflict, error)
	// MarkPeriodChanges marks for the placement pass the UZI numbers whose candidates' periods
	// began or ended since the last pass, up to now.
	MarkPeriodChanges(ctx context.Context, now int64) error
	// ChangedUZIs returns up to limit UZI numbers marked for the placement pass after after.
	ChangedUZIs(ctx context.Context, after string, limit int) ([]string, error)
	// StorePlacements stores one page of the placement pass in one transaction and unmarks its
	// UZI numbers; it returns the conflicts that are new and those that were recorded and are gone.
	StorePlacements(ctx context.Context, p PlacementPage) (added, resolved []Conflict, err error)
	// EndPlacementPass records now as the time of the last placement pass.
	EndPlacementPass(ctx context.Context, now int64) error
}

// SearchStore pages through what the index accepted.
type SearchStore interface {
	SearchPractitioners(ctx context.Context, q PractitionerSearch) ([]Found[PractitionerHit], error)
	SearchOrganizations(ctx context.Context, q OrganizationSearch) ([]Found[OrganizationHit], error)
}

// Batch is versions of resources of one type, one per id, as ApplyResources writes them.
type Batch struct {
	Type string
	// Full: from a read of the whole history, which marks unchanged resources as seen again.
	Full      bool
	Resources []Resource
}

// TypeResult is what a complete read of one type's history leaves to store.
type TypeResult struct {
	Type  string
	Since string // the _since of the next request; "" keeps the stored one
	Full  bool   // the whole history was read, so what it lacks is gone
	// Seen holds every id the history listed and Snapshot the server's time of the first page:
	// a full read proves gone only what it lacks and what is not newer than its snapshot, so
	// that rows another run wrote meanwhile survive.
	Seen     map[string]bool
	Snapshot int64
	// Deletes are the tombstones the history listed, applied when the type is stored, after
	// the mass-delete guard.
	Deletes []Resource
}

// FinishInput is the end of one directory's sync: the store applies the batches not written yet
// (Apply) and the tombstones, stores
// the watermarks of the types read completely, sweeps what full reads proved gone, asks Guard
// about the deletions (its error rolls all of it back) and, if Judge is set and anything
// changed, validates the directory and derives its candidates again.
type FinishInput struct {
	Dir string
	// TrustAll: the directory is the LRZA, authoritative for every URA.
	TrustAll bool
	// Run identifies the sync: within one run the first version seen of a resource wins unless
	// a later one is strictly newer; across runs anything not older wins.
	Run int64
	// Apply holds the last versions fetched, written first: a small directory's sync is this
	// one transaction.
	Apply          []Batch
	Done           []TypeResult
	Judge, Changed bool
	// Attempt, if set, is recorded (RecordAttempt) in the same transaction.
	Attempt       *Attempt
	MaxRejections int
	Now           int64
	// Guard, if set, judges the live resources per type before and after the deletions.
	Guard func(before, after map[string]int) error
}

// FinishResult is what FinishDirectory did besides storing watermarks.
type FinishResult struct {
	Applied, Deleted int // the versions of Apply and the history's tombstones that changed the index
	Swept            int
	Rejected         int // of the resources this run touched
	Rejections       []Rejection
}

// Directory is one directory as the store keeps it.
type Directory struct {
	ID, BaseURL, Kind, Origin string
	URAs                      []string
	Failures                  int
	NextAttempt               int64
	LastError                 string
	Dirty                     bool // to validate at the next sync
}

// DirectoryEndpoint is an mCSD directory Endpoint of a care provider.
type DirectoryEndpoint struct{ Address, URA string }

// Attempt is the outcome of one directory's sync.
type Attempt struct {
	OK          bool
	Start, Now  int64
	Error       string // when not OK
	Failures    int    // in a row, this one included
	NextAttempt int64
}

// Candidate is one way a directory says a 3PID reaches a Matrix user or homeserver.
type Candidate struct {
	Address, MXID, Homeserver string
	Pref                      int
	Updated                   int64
	SourceID, Dir, URA        string
}

// HashedThreePID is a 3PID of the index with one of its lookup hashes.
type HashedThreePID struct {
	Hash string
	threepid.ThreePID
}

// Placement is the homeserver a UZI number is placed on, and the one before.
type Placement struct {
	Homeserver, MXID, PrevHomeserver, PrevMXID string
	Since                                      int64
}

// PlacementPage is one page of the placement pass.
type PlacementPage struct {
	UZIs []string
	// Conflicts holds every UZI number of the page: its conflict, or nil when it has none.
	Conflicts map[string]*Conflict
	// Placements holds the placements that changed.
	Placements map[string]Placement
	Now        int64
}

// SearchCursor is the position after the last result of a page.
type SearchCursor struct{ Name, Dir, ID string }

// Found is one search result with the position after it.
type Found[T any] struct {
	Hit   T
	After SearchCursor
}

// PractitionerSearch is a PractitionerQuery as the store runs it; empty fields do not filter.
type PractitionerSearch struct {
	Q       string
	OrgURA  string // an exact URA
	OrgName string // part of the organisation's name
	Role    string
	Now     int64
	After   SearchCursor
	Limit   int
}

// OrganizationSearch is an OrganizationQuery as the store runs it.
type OrganizationSearch struct {
	Q, URA string
	Now    int64
	After  SearchCursor
	Limit  int
}

// Leaser hands out leases on named jobs; a lease held by another holder is a *LeaseHeldError.
type Leaser interface {
	AcquireLease(ctx context.Context, name, holder string, ttl time.Duration) (Lease, error)
	// WaitLease takes the lease, trying again every poll while another holder has it, until ctx ends.
	WaitLease(ctx context.Context, name, holder string, ttl, poll time.Duration) (Lease, error)
}

// Lease is one holder's claim on a named job, valid across the processes sharing the database.
type Lease interface {
	Name() string
	Holder() string
	// Hold runs fn while renewing the lease, then releases it; fn's context ends when the
	// lease is lost.
	Hold(ctx context.Context, fn func(context.Context) error) error
	// Release gives the lease up, if this holder still has it.
	Release(ctx context.Context) error
}

// LeaseHeldError says another holder has the lease.
type LeaseHeldError struct {
	Name, Holder      string
	Acquired, Expires time.Time
}

func (e *LeaseHeldError) Error() string {
	return fmt.Sprintf("lease %q is held by %s since %s (expires %s unless renewed)", e.Name, e.Holder,
		e.Acquired.UTC().Format(time.RFC3339), e.Expires.UTC().Format(time.RFC3339))
}

// NewHolder names a holder uniquely: host and process for the operator, random so that two
// claims from one process are two holders.
func NewHolder() string {
	host, _ := os.Hostname()
	b := make([]byte, 4)
	rand.Read(b)
	return fmt.Sprintf("%s/pid-%d/%s", host, os.Getpid(), hex.EncodeToString(b))
}
