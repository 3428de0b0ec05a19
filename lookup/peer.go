package lookup

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ozo-platform/ozo-identity/internal/matrixid"
	"github.com/ozo-platform/ozo-identity/threepid"
)

// PeerOptions configure a peer identity server link.
type PeerOptions struct {
	// BaseURL of the peer, e.g. https://is.other-vendor.example.nl.
	BaseURL string
	// Token is this server's access token at the peer (from the peer's account/register).
	Token string
	// Client makes the requests [a client with a 10s timeout].
	Client *http.Client
	// Media are the canonical media asked about [uzi, ura]; other 3PIDs never leave this server.
	Media []string
}

// Peer asks another vendor's identity server (Matrix Identity Service API v2 hash_details and
// lookup). It answers plain 3PIDs only: hashed lookups arrive hashed with this server's pepper,
// which the peer cannot match, so ResolveHashes finds nothing. Wrap it in Optional.
type Peer struct {
	opts PeerOptions
	mu   sync.Mutex
	algo string // "sha256" or "none", from the last hash_details
	pep  string
}

// NewPeer returns a link to the peer identity server described by opts.
func NewPeer(opts PeerOptions) *Peer {
	opts.BaseURL = strings.TrimRight(opts.BaseURL, "/")
	if opts.Client == nil {
		opts.Client = &http.Client{Timeout: 10 * time.Second}
	}
	if len(opts.Media) == 0 {
		opts.Media = []string{threepid.MediumUZI, threepid.MediumURA}
	}
	return &Peer{opts: opts}
}

// maxPeerBody bounds what is read of a peer's answer.
const maxPeerBody = 1 << 20

// peerError is a Matrix error answer of the peer.
type peerError struct {
	Status  int
	ErrCode string `json:"errcode"`
	Message string `json:"error"`
}

func (e *peerError) Error() string {
	return fmt.Sprintf("peer identity server: %d %s: %s", e.Status, e.ErrCode, e.Message)
}

func (p *Peer) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, p.opts.BaseURL+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+p.opts.Token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := p.opts.Client.Do(req)
	if err != nil {
		return fmt.Errorf("peer identity server: %w", err)
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(io.LimitReader(resp.Body, maxPeerBody))
	if resp.StatusCode != http.StatusOK {
		e := &peerError{Status: resp.StatusCode}
		dec.Decode(e)
		e.Message = strings.ToValidUTF8(e.Message[:min(len(e.Message), 200)], "")
		return e
	}
	if err := dec.Decode(out); err != nil {
		return fmt.Errorf("peer identity server %s: %w", path, err)
	}
	return nil
}

func (p *Peer) hashDetails(ctx context.Context) (algo, pepper string, err error) {
	var hd struct {
		Algorithms []string `json:"algorithms"`
		Pepper     string   `json:"lookup_pepper"`
	}
	if err := p.do(ctx, http.MethodGet, "/_matrix/identity/v2/hash_details", nil, &hd); err != nil {
		return "", "", err
	}
	switch {
	case slices.Contains(hd.Algorithms, "sha256") && hd.Pepper != "":
		algo = "sha256"
	case slices.Contains(hd.Algorithms, "none"):
		algo = "none"
	default:
		return "", "", fmt.Errorf("peer identity server offers no usable lookup algorithm: %v", hd.Algorithms)
	}
	p.mu.Lock()
	p.algo, p.pep = algo, hd.Pepper
	p.mu.Unlock()
	return algo, hd.Pepper, nil
}

// Resolve asks the peer about the 3PIDs of the configured media.
func (p *Peer) Resolve(ctx context.Context, tps []threepid.ThreePID) (map[threepid.ThreePID]string, error) {
	out := make(map[threepid.ThreePID]string)
	var want []threepid.ThreePID
	for _, tp := range tps {
		if slices.Contains(p.opts.Media, tp.Medium) {
			want = append(want, tp)
		}
	}
	if len(want) == 0 {
		return out, nil
	}
	p.mu.Lock()
	algo, pepper := p.algo, p.pep
	p.mu.Unlock()
	var err error
	if algo == "" {
		if algo, pepper, err = p.hashDetails(ctx); err != nil {
			return nil, err
		}
	}
	for start := 0; start < len(want); start += 200 {
		chunk := want[start:min(len(want), start+200)]
		found, err := p.lookup(ctx, chunk, algo, pepper)
		var pe *peerError
		if errors.As(err, &pe) && pe.ErrCode == "M_INVALID_PEPPER" {
			// The peer rotated its pepper: fetch the new one and try once more.
			if algo, pepper, err = p.hashDetails(ctx); err != nil {
				return nil, err
			}
			found, err = p.lookup(ctx, chunk, algo, pepper)
		}
		if err != nil {
			return nil, err
		}
		for tp, mxid := range found {
			out[tp] = mxid
		}
	}
	return out, nil
}

func (p *Peer) lookup(ctx context.Context, tps []threepid.ThreePID, algo, pepper string) (map[threepid.ThreePID]string, error) {
	byAddr := make(map[string]threepid.ThreePID)
	var addrs []string
	for _, tp := range tps {
		var keys []string
		if algo == "sha256" {
			keys = threepid.LookupHashes(tp, pepper)
		} else {
			for _, m := range threepid.MediumNames(tp.Medium) {
				keys = append(keys, tp.Address+" "+m)
			}
		}
		for _, k := range keys {
			byAddr[k] = tp
			addrs = append(addrs, k)
		}
	}
	var resp struct {
		Mappings map[string]string `json:"mappings"`
	}
	if err := p.do(ctx, http.MethodPost, "/_matrix/identity/v2/lookup",
		map[string]any{"addresses": addrs, "algorithm": algo, "pepper": pepper}, &resp); err != nil {
		return nil, err
	}
	out := make(map[threepid.ThreePID]string)
	for k, mxid := range resp.Mappings {
		tp, asked := byAddr[k]
		if !asked || !matrixid.ValidUserID(mxid) {
			continue // never take an answer to a question we did not ask
		}
		out[tp] = mxid
	}
	return out, nil
}

// ResolveHashes finds nothing: the hashes are made with this server's pepper, not the peer's.
func (p *Peer) ResolveHashes(ctx context.Context, hashes []string) (map[string]string, error) {
	return map[string]string{}, nil
}
