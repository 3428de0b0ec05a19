package api

import "github.com/ozo-platform/ozo-identity/audit"

// SetLookupAudit replaces the lookup aggregator, so a benchmark can compare auditing on and off.
func SetLookupAudit(s *Server, a *audit.Aggregator) { s.cfg.Audit.Lookups = a }
