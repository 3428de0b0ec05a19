package api

import (
	"net/http"
	"sync"
)

// lookupRequest is the body of a v2 lookup.
type lookupRequest struct {
	Addresses []string `json:"addresses"`
	Algorithm string   `json:"algorithm"`
	Pepper    *string  `json:"pepper"`
}

// decodeLookup decodes a v2 lookup body. Homeservers send large batches of plain ASCII hashes,
// which encoding/json decodes at several times the cost of the lookup itself; those bodies take
// a single pass here, and every other body (escapes, unknown or repeated keys, nulls, non-ASCII,
// anything malformed) goes to encoding/json, so what is accepted and how errors read is unchanged.
// FuzzDecodeLookup holds the two paths to the same answers.
func decodeLookup(body []byte) (lookupRequest, error) {
	if req, ok := scanLookup(body); ok {
		return req, nil
	}
	var req lookupRequest
	err := decodeJSONBytes(body, &req)
	return req, err
}

// scanLookup is the single pass: it reports false for any body it does not fully understand.
// The strings it returns share one copy of the body.
func scanLookup(body []byte) (lookupRequest, bool) {
	var req lookupRequest
	s := string(body)
	i := skipSpace(s, 0)
	if i >= len(s) || s[i] != '{' {
		return req, false
	}
	var seenAddresses, seenAlgorithm, seenPepper bool
	i = skipSpace(s, i+1)
	if i < len(s) && s[i] == '}' {
		return req, false // an empty object: let encoding/json leave everything unset
	}
	for {
		key, next, ok := scanString(s, i)
		if !ok {
			return req, false
		}
		i = skipSpace(s, next)
		if i >= len(s) || s[i] != ':' {
			return req, false
		}
		i = skipSpace(s, i+1)
		switch {
		case key == "addresses" && !seenAddresses:
			seenAddresses = true
			if req.Addresses, i, ok = scanStrings(s, i); !ok {
				return req, false
			}
		case key == "algorithm" && !seenAlgorithm:
			seenAlgorithm = true
			if req.Algorithm, i, ok = scanString(s, i); !ok {
				return req, false
			}
		case key == "pepper" && !seenPepper:
			seenPepper = true
			var p string
			if p, i, ok = scanString(s, i); !ok {
				return req, false
			}
			req.Pepper = &p
		default:
			// Unknown or repeated keys, and encoding/json's case-insensitive matches of ours.
			return req, false
		}
		i = skipSpace(s, i)
		if i >= len(s) {
			return req, false
		}
		switch s[i] {
		case ',':
			i = skipSpace(s, i+1)
			continue
		case '}':
			if skipSpace(s, i+1) != len(s) {
				return req, false
			}
			return req, true
		}
		return req, false
	}
}

// scanStrings reads a JSON array of plain strings at s[i:].
func scanStrings(s string, i int) ([]string, int, bool) {
	if i >= len(s) || s[i] != '[' {
		return nil, i, false
	}
	// Count the quotes for the capacity: an upper bound of twice the strings, one allocation.
	end := i + 1
	quotes := 0
	for ; end < len(s) && s[end] != ']'; end++ {
		if s[end] == '"' {
			quotes++
		}
	}
	out := make([]string, 0, quotes/2)
	i = skipSpace(s, i+1)
	if i < len(s) && s[i] == ']' {
		return out, i + 1, true
	}
	for {
		v, next, ok := scanString(s, i)
		if !ok {
			return nil, i, false
		}
		out = append(out, v)
		i = skipSpace(s, next)
		if i >= len(s) {
			return nil, i, false
		}
		switch s[i] {
		case ',':
			i = skipSpace(s, i+1)
			continue
		case ']':
			return out, i + 1, true
		}
		return nil, i, false
	}
}

// scanString reads a JSON string of printable ASCII without escapes at s[i:] and returns it
// and the index after its closing quote.
func scanString(s string, i int) (string, int, bool) {
	if i >= len(s) || s[i] != '"' {
		return "", i, false
	}
	for j := i + 1; j < len(s); j++ {
		switch c := s[j]; {
		case c == '"':
			return s[i+1 : j], j + 1, true
		case c < 0x20 || c >= 0x7f || c == '\\':
			return "", i, false
		}
	}
	return "", i, false
}

func skipSpace(s string, i int) int {
	for i < len(s) && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r') {
		i++
	}
	return i
}

// buffers recycles the request and answer bodies of lookups, tens of kilobytes each for large
// batches, so that a busy server does not spend its time allocating and collecting them.
type buffers struct{ pool sync.Pool }

// maxPooled keeps one unusually large request from pinning its buffer for good.
const maxPooled = 1 << 20

func (b *buffers) get(n int) *[]byte {
	if p, ok := b.pool.Get().(*[]byte); ok && cap(*p) >= n {
		*p = (*p)[:0]
		return p
	}
	buf := make([]byte, 0, max(n, 4096))
	return &buf
}

func (b *buffers) put(p *[]byte) {
	if cap(*p) <= maxPooled {
		b.pool.Put(p)
	}
}

// readLookupBody reads the body into a pooled buffer, sized at once from Content-Length when
// the client sent one. The caller puts the buffer back.
func (s *Server) readLookupBody(w http.ResponseWriter, r *http.Request) (*[]byte, error) {
	limit := s.cfg.MaxBodyBytes
	if n, ok := r.Context().Value(bodyLimitKey).(int64); ok {
		limit = n
	}
	hint := 0
	if r.ContentLength > 0 && r.ContentLength <= limit {
		hint = int(r.ContentLength) + 1 // +1: the read that sees EOF needs room
	}
	buf := s.buffers.get(hint)
	body, err := readAll(http.MaxBytesReader(w, r.Body, limit), *buf)
	*buf = body
	if err != nil {
		s.buffers.put(buf)
		return nil, bodyError(err, limit)
	}
	return buf, nil
}
