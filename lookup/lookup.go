// Package lookup resolves 3PIDs to Matrix user IDs. v2 lookup, v1 lookup and store-invite all
// use one chain: the identity server's own bindings first, then the mCSD index of Generieke
// Functie Adressering (package lookup/mcsd), then, optionally, peer identity servers.
package lookup

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/ozo-platform/ozo-identity/threepid"
)

// Resolver maps 3PIDs to MXIDs. 3PIDs are canonical (threepid.Normalize); hashes are v2 lookup
// hashes made with the current pepper. What a resolver does not know is absent from its result;
// an empty MXID means it knows the 3PID but withholds it (care providers' directories disagree),
// and the chain then asks no later link, which might have been misled the same way.
type Resolver interface {
	Resolve(ctx context.Context, tps []threepid.ThreePID) (map[threepid.ThreePID]string, error)
	ResolveHashes(ctx context.Context, hashes []string) (map[string]string, error)
}

// Chain asks each link in turn about what the earlier links did not resolve; the first answer
// wins, and a withheld answer ends the lookup of that 3PID with none. An error of a link ends the
// lookup, unless the link is wrapped in Optional.
func Chain(links ...Resolver) Resolver { return chain(links) }

type chain []Resolver

func (c chain) Resolve(ctx context.Context, tps []threepid.ThreePID) (map[threepid.ThreePID]string, error) {
	out := make(map[threepid.ThreePID]string)
	rest := tps
	for i, link := range c {
		if len(rest) == 0 {
			break
		}
		found, err := link.Resolve(ctx, rest)
		if err != nil {
			return nil, fmt.Errorf("lookup link %d: %w", i, err)
		}
		next := rest[:0:0]
		for _, tp := range rest {
			if mxid, ok := found[tp]; ok {
				if _, done := out[tp]; !done && mxid != "" {
					out[tp] = mxid
				}
				continue
			}
			if _, done := out[tp]; !done {
				next = append(next, tp)
			}
		}
		rest = next
	}
	return out, nil
}

func (c chain) ResolveHashes(ctx context.Context, hashes []string) (map[string]string, error) {
	var out map[string]string
	rest := hashes
	for i, link := range c {
		if len(rest) == 0 {
			break
		}
		found, err := link.ResolveHashes(ctx, rest)
		if err != nil {
			return nil, fmt.Errorf("lookup link %d: %w", i, err)
		}
		if out == nil && (len(found) == len(rest) || answersAll(found, rest)) && !withheld(found) {
			return found, nil // the first link answered everything: nothing to merge
		}
		if out == nil {
			out = make(map[string]string, len(found))
		}
		next := rest[:0:0]
		for _, h := range rest {
			if mxid, ok := found[h]; ok {
				if _, done := out[h]; !done && mxid != "" {
					out[h] = mxid
				}
				continue
			}
			if _, done := out[h]; !done {
				next = append(next, h)
			}
		}
		rest = next
	}
	if out == nil {
		out = map[string]string{}
	}
	return out, nil
}

// answersAll reports whether found answers every one of hashes, some of which are asked more than
// once (a batch with repeats would otherwise be copied into a merged map for nothing).
func answersAll(found map[string]string, hashes []string) bool {
	if len(found) == 0 {
		return len(hashes) == 0
	}
	for _, h := range hashes {
		if _, ok := found[h]; !ok {
			return false
		}
	}
	return true
}

// withheld reports whether found withholds an answer ("").
func withheld(found map[string]string) bool {
	for _, mxid := range found {
		if mxid == "" {
			return true
		}
	}
	return false
}

// Optional wraps a link whose failure must not fail the lookup, such as a peer identity server:
// its errors are logged and it then answers nothing.
func Optional(name string, r Resolver, log *slog.Logger) Resolver {
	return optional{name: name, r: r, log: log}
}

type optional struct {
	name string
	r    Resolver
	log  *slog.Logger
}

func (o optional) Resolve(ctx context.Context, tps []threepid.ThreePID) (map[threepid.ThreePID]string, error) {
	found, err := o.r.Resolve(ctx, tps)
	if err != nil {
		o.log.WarnContext(ctx, "optional lookup failed; skipped", "link", o.name, "count", len(tps), "err", err)
		return nil, nil
	}
	return found, nil
}

func (o optional) ResolveHashes(ctx context.Context, hashes []string) (map[string]string, error) {
	found, err := o.r.ResolveHashes(ctx, hashes)
	if err != nil {
		o.log.WarnContext(ctx, "optional hashed lookup failed; skipped", "link", o.name, "count", len(hashes), "err", err)
		return nil, nil
	}
	return found, nil
}

// BindingStore is the part of identity.Store that the local-bindings link needs.
type BindingStore interface {
	LookupThreePIDs(ctx context.Context, tps []threepid.ThreePID) (map[threepid.ThreePID]string, error)
	LookupHashes(ctx context.Context, hashes []string) (map[string]string, error)
}

// Bindings is the first link of the chain: the 3PIDs bound at this identity server.
func Bindings(s BindingStore) Resolver { return bindings{s} }

type bindings struct{ s BindingStore }

func (b bindings) Resolve(ctx context.Context, tps []threepid.ThreePID) (map[threepid.ThreePID]string, error) {
	return b.s.LookupThreePIDs(ctx, tps)
}

func (b bindings) ResolveHashes(ctx context.Context, hashes []string) (map[string]string, error) {
	return b.s.LookupHashes(ctx, hashes)
}
