package mcsd

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// pageInfo is what a history page says besides its entries.
type pageInfo struct {
	LastUpdated string // Bundle.meta.lastUpdated: the server's time of the query
	Next        string // Bundle.link[relation=next].url
	Entries     int
}

type bundleLink struct {
	Relation string `json:"relation"`
	URL      string `json:"url"`
}

// readBundle streams a FHIR Bundle token by token and hands each Bundle.entry to fn as raw JSON,
// so that memory holds one entry at a time, never the page.
func readBundle(r io.Reader, fn func(raw json.RawMessage) error) (pageInfo, error) {
	var info pageInfo
	dec := json.NewDecoder(r)
	if err := expectDelim(dec, '{'); err != nil {
		return info, err
	}
	sawType := false
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return info, fmt.Errorf("read bundle: %w", err)
		}
		key, _ := tok.(string)
		switch key {
		case "resourceType":
			var rt string
			if err := dec.Decode(&rt); err != nil {
				return info, fmt.Errorf("read bundle resourceType: %w", err)
			}
			if rt != "Bundle" {
				return info, fmt.Errorf("expected a Bundle, got resourceType %q", clean(rt, 64))
			}
			sawType = true
		case "meta":
			var m meta
			if err := dec.Decode(&m); err != nil {
				return info, fmt.Errorf("read bundle meta: %w", err)
			}
			info.LastUpdated = m.LastUpdated
		case "link":
			var links []bundleLink
			if err := dec.Decode(&links); err != nil {
				return info, fmt.Errorf("read bundle link: %w", err)
			}
			for _, l := range links {
				if l.Relation == "next" {
					info.Next = l.URL
				}
			}
		case "entry":
			if err := expectDelim(dec, '['); err != nil {
				return info, err
			}
			for dec.More() {
				var raw json.RawMessage
				if err := dec.Decode(&raw); err != nil {
					return info, fmt.Errorf("read bundle entry %d: %w", info.Entries, err)
				}
				info.Entries++
				if err := fn(raw); err != nil {
					return info, err
				}
			}
			if err := expectDelim(dec, ']'); err != nil {
				return info, err
			}
		default:
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return info, fmt.Errorf("read bundle %s: %w", clean(key, 64), err)
			}
		}
	}
	if err := expectDelim(dec, '}'); err != nil {
		return info, err
	}
	if !sawType {
		return info, errors.New("expected a Bundle, got no resourceType")
	}
	return info, nil
}

func expectDelim(dec *json.Decoder, want json.Delim) error {
	tok, err := dec.Token()
	if err != nil {
		return fmt.Errorf("read bundle: %w", err)
	}
	if d, ok := tok.(json.Delim); !ok || d != want {
		return fmt.Errorf("read bundle: expected %q, got %v", want, tok)
	}
	return nil
}

type bundleEntry struct {
	FullURL  string          `json:"fullUrl"`
	Resource json.RawMessage `json:"resource"`
	Request  *struct {
		Method string `json:"method"`
		URL    string `json:"url"`
	} `json:"request"`
	Response *struct {
		Status       string `json:"status"`
		LastModified string `json:"lastModified"`
	} `json:"response"`
}

// parseEntry turns one history entry of the typ history at base into an index row: a version of
// the resource, or a tombstone when the entry records a delete. An entry that cannot be used is
// an error that names why; the caller reports it and goes on.
func parseEntry(raw json.RawMessage, typ, base string) (Resource, error) {
	var e bundleEntry
	if err := json.Unmarshal(raw, &e); err != nil {
		return Resource{}, fmt.Errorf("malformed entry: %v", err)
	}
	method := ""
	if e.Request != nil {
		method = strings.ToUpper(e.Request.Method)
	}
	if len(e.Resource) == 0 || string(e.Resource) == "null" || method == "DELETE" {
		return parseDelete(e, typ, base)
	}
	var r resource
	if err := json.Unmarshal(e.Resource, &r); err != nil {
		return Resource{ID: entryID(e, typ, base)}, fmt.Errorf("malformed %s: %v", typ, err)
	}
	if r.ResourceType != typ {
		return Resource{ID: clean(r.ID, 64)}, fmt.Errorf("unexpected %s in the %s history", clean(r.ResourceType, 64), typ)
	}
	if !idPattern.MatchString(r.ID) {
		return Resource{}, fmt.Errorf("%s with invalid id %q", typ, clean(r.ID, 64))
	}
	out, err := toRow(&r, base)
	if err != nil {
		return Resource{ID: r.ID}, fmt.Errorf("malformed %s: %v", typ, err)
	}
	return out, nil
}

func parseDelete(e bundleEntry, typ, base string) (Resource, error) {
	id := entryID(e, typ, base)
	if id == "" {
		return Resource{}, fmt.Errorf("%s history entry without resource and without a usable request.url or fullUrl", typ)
	}
	isDelete := e.Request != nil && strings.EqualFold(e.Request.Method, "DELETE") ||
		e.Response != nil && (strings.HasPrefix(e.Response.Status, "410") || strings.HasPrefix(e.Response.Status, "204"))
	if !isDelete {
		return Resource{ID: id}, fmt.Errorf("%s history entry without resource that is not a delete", typ)
	}
	out := Resource{Type: typ, ID: id, Deleted: true}
	if e.Response != nil {
		ts, err := parseInstant(e.Response.LastModified, false)
		if err != nil {
			return Resource{ID: id}, fmt.Errorf("delete of %s/%s: response.lastModified: %v", typ, id, err)
		}
		out.TS = ts
	}
	return out, nil
}

// entryID finds the id an entry is about from request.url ("Practitioner/1/_history/2") or fullUrl.
func entryID(e bundleEntry, typ, base string) string {
	var cands []string
	if e.Request != nil {
		cands = append(cands, e.Request.URL)
	}
	cands = append(cands, e.FullURL)
	for _, c := range cands {
		c = strings.TrimSpace(c)
		if c == "" {
			continue
		}
		c, _, _ = strings.Cut(c, "?")
		if i := strings.Index(c, "/_history/"); i >= 0 {
			c = c[:i]
		}
		if i := strings.LastIndex(c, "/"+typ+"/"); i >= 0 {
			c = c[i+1:]
		}
		if id := localRef(&reference{Reference: c}, typ, base); isLocal(id) {
			return id
		}
	}
	return ""
}
