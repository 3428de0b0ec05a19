package api

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are the Prometheus metrics of the HTTP API.
type Metrics struct {
	registry        *prometheus.Registry
	requests        *prometheus.CounterVec
	duration        *prometheus.HistogramVec
	lookupAddresses prometheus.Counter
	lookupBatch     prometheus.Histogram
	onBindGivenUp   *prometheus.CounterVec
}

// knownErrcodes bounds the errcode label to the spec's codes: homeservers choose the string.
var knownErrcodes = map[string]bool{
	"M_FORBIDDEN": true, "M_UNKNOWN_TOKEN": true, "M_MISSING_TOKEN": true, "M_BAD_JSON": true,
	"M_NOT_JSON": true, "M_NOT_FOUND": true, "M_LIMIT_EXCEEDED": true, "M_UNRECOGNIZED": true,
	"M_UNKNOWN": true, "M_UNAUTHORIZED": true, "M_USER_DEACTIVATED": true, "M_INVALID_PARAM": true,
	"M_MISSING_PARAM": true, "M_MISSING_PARAMS": true, "M_TOO_LARGE": true, "M_UNSUPPORTED_ROOM_VERSION": true,
	"M_INCOMPATIBLE_ROOM_VERSION": true, "M_BAD_STATE": true, "M_GUEST_ACCESS_FORBIDDEN": true,
	"M_SERVER_NOT_TRUSTED": true, "M_ROOM_IN_USE": true, "M_INVALID_ROOM_STATE": true,
	"M_THREEPID_NOT_FOUND": true, "M_THREEPID_IN_USE": true, "M_UNABLE_TO_AUTHORISE_JOIN": true,
	"M_UNABLE_TO_GRANT_JOIN": true, "M_EXCLUSIVE": true, "M_RESOURCE_LIMIT_EXCEEDED": true,
}

// OnBindGivenUp counts an onbind delivery given up, by the homeserver's errcode: "none" when it
// sent none, "other" for codes outside the spec, "expired" when retries ran out of time.
func (m *Metrics) OnBindGivenUp(errcode string, expired bool) {
	label := errcode
	switch {
	case expired:
		label = "expired"
	case errcode == "":
		label = "none"
	case !knownErrcodes[errcode]:
		label = "other"
	}
	m.onBindGivenUp.WithLabelValues(label).Inc()
}

// NewMetrics creates a registry with the API metrics and the Go runtime's.
func NewMetrics() *Metrics {
	m := &Metrics{
		registry: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ozo_identity_http_requests_total",
			Help: "HTTP requests by route, method and status."}, []string{"route", "method", "status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "ozo_identity_http_request_duration_seconds",
			Help: "HTTP request latency by route.", Buckets: prometheus.DefBuckets}, []string{"route"}),
		lookupAddresses: prometheus.NewCounter(prometheus.CounterOpts{Name: "ozo_identity_lookup_addresses_total",
			Help: "Addresses asked for in v2 lookups."}),
		lookupBatch: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ozo_identity_lookup_batch_size",
			Help: "Addresses per v2 lookup request.", Buckets: []float64{1, 2, 5, 10, 25, 50, 100, 250, 1000, 2500, 10000}}),
		onBindGivenUp: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ozo_identity_onbind_given_up_total",
			Help: "Onbind deliveries given up, by the homeserver's errcode (none, other, expired)."}, []string{"errcode"}),
	}
	m.registry.MustRegister(m.requests, m.duration, m.lookupAddresses, m.lookupBatch, m.onBindGivenUp,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (s *Server) instrument(next http.Handler) http.Handler {
	if s.metrics == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		unmatched := new(bool)
		next.ServeHTTP(rec, r.WithContext(context.WithValue(r.Context(), unmatchedKey, unmatched)))
		// Labels come only from the route table and a fixed method list: anything a client
		// invents (methods, paths) lands in one series, so it cannot grow /metrics.
		route := "unmatched"
		if rc := chi.RouteContext(r.Context()); rc != nil && rc.RoutePattern() != "" && !*unmatched {
			route = rc.RoutePattern()
		}
		s.metrics.requests.WithLabelValues(route, methodLabel(r.Method), strconv.Itoa(rec.status)).Inc()
		s.metrics.duration.WithLabelValues(route).Observe(since(start))
	})
}

// markUnmatched tells instrument that no route served r (chi's pattern would name the mount point).
func markUnmatched(r *http.Request) {
	if p, ok := r.Context().Value(unmatchedKey).(*bool); ok {
		*p = true
	}
}

// methodLabel keeps the methods the API serves and maps every other to "other".
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions:
		return m
	}
	return "other"
}

// MustRegister adds collectors of other components (the rate limiter's state) to /metrics.
func (m *Metrics) MustRegister(cs ...prometheus.Collector) { m.registry.MustRegister(cs...) }

// ReadyCheck is one dependency /readyz asks about: Check fails while it is unreachable.
type ReadyCheck struct {
	Name  string // what ?exclude= names it by: "database", "redis"
	Check func(ctx context.Context) error
}

// readyTimeout bounds each check, so a dependency that hangs answers 503 in time for the prober.
const readyTimeout = 2 * time.Second

// OpsHandler serves /metrics, /healthz (the process runs: restart it when this fails) and
// /readyz: 200 when every check passes, else 503 naming the dependency that failed, and 503
// "stopping" once stopping reports true (the replica drains before it exits). /readyz?exclude=redis
// leaves a check out, as Kubernetes' /readyz does: a load balancer that takes replicas out over
// a dependency they all share (Redis) turns a degraded service into an outage.
func OpsHandler(m *Metrics, checks []ReadyCheck, stopping func() bool) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		excluded := map[string]bool{}
		for _, v := range r.URL.Query()["exclude"] {
			for _, name := range strings.Split(v, ",") {
				if !slices.ContainsFunc(checks, func(c ReadyCheck) bool { return c.Name == name }) {
					// A typo in a prober's URL must show at once, not exclude nothing quietly.
					writeJSON(w, http.StatusBadRequest, map[string]string{"status": "bad request",
						"error": fmt.Sprintf("exclude=%q: no such check (have %s)", name, checkNames(checks))})
					return
				}
				excluded[name] = true
			}
		}
		if stopping != nil && stopping() {
			writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "stopping",
				"error": "the replica is shutting down"})
			return
		}
		results := make([]error, len(checks))
		var wg sync.WaitGroup
		for i, c := range checks {
			if excluded[c.Name] {
				continue
			}
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(r.Context(), readyTimeout)
				defer cancel()
				results[i] = c.Check(ctx)
			})
		}
		wg.Wait()
		status, out := http.StatusOK, map[string]string{}
		var failed []string
		for i, c := range checks {
			switch {
			case excluded[c.Name]:
				out[c.Name] = "excluded"
			case results[i] != nil:
				status = http.StatusServiceUnavailable
				out[c.Name] = "unreachable: " + results[i].Error()
				failed = append(failed, c.Name+" unreachable: "+results[i].Error())
			default:
				out[c.Name] = "ok"
			}
		}
		if status != http.StatusOK {
			writeJSON(w, status, map[string]any{"status": "unavailable", "error": strings.Join(failed, "; "), "checks": out})
			return
		}
		writeJSON(w, status, map[string]any{"status": "ok", "checks": out})
	})
	return mux
}

func checkNames(checks []ReadyCheck) string {
	var names []string
	for _, c := range checks {
		names = append(names, c.Name)
	}
	return strings.Join(names, ", ")
}
