// Package mcsd keeps a database index of the care-provider directories of Generieke Functie
// Adressering and resolves UZI and URA numbers to Matrix user IDs with it.
//
// # Sync
//
// A Syncer is an IHE mCSD Update Client (ITI-91). It reads the LRZA's directory (Organization
// and Endpoint), discovers from it each provider directory (an Endpoint referenced by an
// Organization with a URA whose payloadType is the Administration Directory code of the Nuts guide
// or of its VWS successor, see DirectoryPayloadTypes), and fetches {base}/{Type}/_history?_since=…
// for Organization, Location, HealthcareService, Endpoint, Practitioner and PractitionerRole,
// paged through Bundle.link next. A provider directory the LRZA lists must be an https URL:
// plain http is refused and reported unless Options.AllowHTTP lists it (the LRZA itself and the
// directories the operator configures are taken as given). The watermark per directory and type
// is the first page's Bundle.meta.lastUpdated, stored once the whole history was read, so a
// restart resumes where the last complete read ended. Pages are decoded token by token; a
// directory's versions wait in memory up to a bound (flushAt) and are written with the rest of
// its sync in one transaction, a large directory's in batches before it, so memory does not grow
// with the size of a directory. The placement pass revisits only the UZI numbers whose candidates
// a validation changed.
//
// One sync of a database runs at a time, across processes and replicas: SyncAll holds the lease
// LeaseName (a Lease from the Store) and renews it while it works. Even so, a run only deletes what its
// own reading proves gone: the tombstones its history listed, and, after a full read, the
// resources it did not list that are not newer than its snapshot. Those deletions, the last
// versions, the watermarks, the derived candidates and the attempt's outcome of a directory are
// stored in one transaction, which a
// mass-delete guard (Options.MaxDeleteShare, MaxDeleteMin) rolls back when it would remove most
// of a type at once. Options.Full re-reads directories whole; until that transaction commits the
// old candidates keep resolving.
//
// # Anti-spoofing (Dutch IG, Care Services, Update Client)
//
// A provider directory counts only for the URAs that registered it at the LRZA. Its Organization
// counts when it carries one of those URAs or is partOf (transitively) one that does; its
// PractitionerRole, HealthcareService and Location when their organisation counts; its
// Practitioner when an accepted PractitionerRole refers to it; its Endpoint when an accepted
// Organization, HealthcareService or PractitionerRole refers to it. References only resolve inside
// the same directory. The LRZA's name and status of a URA Organization override the provider's.
// Everything else is kept but rejected, with a reason, and reported.
//
// # Where the Matrix address is read (design.md §4)
//
//   - Endpoint.address as a Matrix URI (matrix:u/alice:hs.example.nl), a matrix.to link
//     (https://matrix.to/#/@alice:hs.example.nl) or a bare user ID, referenced from
//     PractitionerRole.endpoint (a practitioner) or Organization.endpoint (a function account of a
//     care provider, resolving its ura); only status active within Endpoint.period counts.
//   - telecom with the contactpoint-purpose extension (PurposeExtension) valued matrix-messaging (a
//     user ID) on PractitionerRole, Practitioner or Organization, or matrix-homeserver (a server
//     name); a telecom value that is a matrix:u/ URI counts without the extension.
//   - an Endpoint whose connectionType or payloadType code mentions "matrix" and whose address is
//     https://<server name> is a homeserver; on an Organization it says where that provider's
//     practitioners live.
//
// What ozo-identity publishes itself, until a national code exists: Endpoint.address
// matrix:u/<localpart>:<server>, connectionType and payloadType codes "matrix" and
// "matrix-messaging" in the provisional system https://ozo-platform.github.io/fhir/CodeSystem/matrix,
// referenced from the PractitionerRole.
//
// # Which MXID a UZI number resolves to
//
// Candidates come only from an accepted PractitionerRole that is active, within its period, of an
// active organisation, whose Practitioner (if any) is active, and that carries the UZI number or
// whose Practitioner does. Each care provider (the URA its directory is registered for) first
// chooses among its own candidates, over all its directories:
//
//  1. a Matrix Endpoint referenced by the role itself (active, within its period) beats the
//     role's matrix-messaging telecom, which beats the Practitioner's;
//  2. then the most recently updated (the latest meta.lastUpdated of role, practitioner and
//     endpoint; a lastUpdated more than a minute after the time of fetching counts as the time
//     that version was first fetched);
//  3. then the lowest PractitionerRole id, then the lowest directory id, then the lowest MXID.
//
// Between care providers nothing is chosen: the UZI number resolves only when every provider
// that names a Matrix user names the same one (a practitioner working for two providers with one
// account). When they name different users it is a conflict, and the index answers nothing for
// that number (Resolve answers "", withheld, so that the lookup chain asks no peer either) —
// v2 and v1 lookups and store-invite find no one, /_ozo/v1/directory/homeserver
// lists each provider's claim with its organisation so that a person can choose, the placement
// stays where it was, `ozo-identity directory status` lists it and the sync logs a warning once.
// It resolves again when the providers agree, for instance when one withdraws its claim.
//
// Why this rule: any care provider can register a directory at the LRZA, and its resources
// count for its own URA, so a hostile or mistaken directory can publish anyone's UZI number.
// Whatever ordering picks between providers — recency, preference, the claim seen first — some
// directory can win it (by its timestamps, its form, or by publishing before the real one), and
// would then receive that practitioner's invitations. Leaving the number unresolved costs a
// lookup, never a hijack; the conflict is visible to the operator, who can bind the practitioner
// by hand (admin API) and ask the LRZA or the care provider to correct the directory.
// A binding the practitioner proved at this identity server (admin binding today, SSO or Dezi
// later) comes before the index in the resolution chain (package lookup) and always wins.
//
// An inactive role, an Endpoint that is off or outside its period, and anything rejected never
// resolve. A URA resolves to its Organization's Matrix Endpoint, else its matrix-messaging
// telecom; only directories registered for that URA publish it, so it has one care provider.
//
// # Homeserver localisation
//
// After each sync the homeserver of every practitioner whose candidates changed is recomputed
// with the same rule (providers that only name a homeserver must agree on it, unless a provider
// names a user), falling back to a matrix-homeserver telecom of the role or practitioner, then
// to the homeserver of the role's organisation or care provider. A change is a move: the previous
// homeserver and the time of the move are kept (Index.Homeserver) and Options.OnMove hears of it.
package mcsd
