package mcsd_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/lookup/mcsd"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore/dbtest"
)

// TestHostileDirectory runs directories that misbehave on purpose against the syncer: each must
// end in a reported error for that directory only, within bounded time and memory.
func TestHostileDirectory(t *testing.T) {
	const org = `{"fullUrl":"x","resource":{"resourceType":"Organization","id":"o","identifier":[{"system":"http://fhir.nl/fhir/NamingSystem/ura","value":"12345678"}],"name":"O"}}`
	var hits atomic.Int64
	cases := []struct {
		name    string
		handler func(base string) http.HandlerFunc
		errPart string
	}{
		{"next link to another host", func(base string) http.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request) {
				fmt.Fprintf(w, `{"resourceType":"Bundle","type":"history","link":[{"relation":"next","url":"https://attacker.example/steal"}],"entry":[%s]}`, org)
			}
		}, "leaves the directory's origin"},
		{"next link that repeats", func(base string) http.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request) {
				hits.Add(1)
				fmt.Fprintf(w, `{"resourceType":"Bundle","type":"history","link":[{"relation":"next","url":"%s/Organization/_history?page=2"}],"entry":[]}`, base)
			}
		}, "next link repeats"},
		{"endless pages", func(base string) http.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request) {
				fmt.Fprintf(w, `{"resourceType":"Bundle","type":"history","link":[{"relation":"next","url":"%s/Organization/_history?page=%d"}],"entry":[]}`, base, hits.Add(1))
			}
		}, "more than 20 pages"},
		{"page too large", func(base string) http.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request) {
				fmt.Fprint(w, `{"resourceType":"Bundle","type":"history","entry":[{"resource":{"resourceType":"Organization","id":"o","name":"`)
				chunk := strings.Repeat("A", 64<<10)
				for range 64 { // 4 MiB, more than the limit below
					if _, err := fmt.Fprint(w, chunk); err != nil {
						return
					}
				}
				fmt.Fprint(w, `"}}]}`)
			}
		}, "page larger than"},
		{"not a Bundle", func(base string) http.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request) {
				fmt.Fprint(w, `{"resourceType":"OperationOutcome","issue":[]}`)
			}
		}, "expected a Bundle"},
		{"body trickles", func(base string) http.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request) {
				fmt.Fprint(w, `{"resourceType":"Bundle","entry":[`)
				w.(http.Flusher).Flush()
				select {
				case <-time.After(10 * time.Second):
				case <-r.Context().Done():
				}
			}
		}, "no complete answer within"},
	}
	for _, engine := range dbtest.Engines {
		t.Run(string(engine), func(t *testing.T) {
			for _, c := range cases {
				t.Run(c.name, func(t *testing.T) {
					db := dbtest.Open(t, engine)
					mux := http.NewServeMux()
					srv := httptest.NewTLSServer(mux)
					defer srv.Close()
					base := srv.URL + "/fhir"
					mux.Handle("/fhir/", c.handler(base))
					s := mcsd.NewSyncer(mcsd.NewIndex(db), mcsd.Options{
						Client:         srv.Client(),
						Directories:    []mcsd.StaticDirectory{{BaseURL: base, URAs: []string{"12345678"}}},
						RequestTimeout: 2 * time.Second, // the 1 MiB page must arrive in time under -race on a busy machine
						MaxPageBytes:   1 << 20,
						MaxPages:       20,
					})
					start := time.Now()
					reps, err := s.SyncAll(context.Background())
					if err != nil {
						t.Fatal(err)
					}
					if time.Since(start) > 5*time.Second {
						t.Errorf("took %v", time.Since(start))
					}
					if len(reps) != 1 || reps[0].Err == nil || !strings.Contains(reps[0].Err.Error(), c.errPart) {
						t.Fatalf("reports: %+v, want an error with %q", reps, c.errPart)
					}
				})
			}
		})
	}
}
