package api

import (
	"context"
	"net/http"
	"strconv"
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
	}
	m.registry.MustRegister(m.requests, m.duration, m.lookupAddresses,
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

const unmatchedKey ctxKey = 2

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

// OpsHandler serves /metrics, /healthz (the process runs) and /readyz: 503 "unavailable" when
// ready fails (the database does not answer), 200 "degraded" with the reason when degraded
// reports one (limits held per replica while Redis is down: serving beats refusing everyone),
// else 200 "ok". degraded may be nil.
func OpsHandler(m *Metrics, ready func(ctx context.Context) error, degraded func() error) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := ready(ctx); err != nil {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "unavailable", "error": err.Error()})
			return
		}
		if degraded != nil {
			if err := degraded(); err != nil {
				writeJSON(w, http.StatusOK, map[string]string{"status": "degraded", "degraded": err.Error()})
				return
			}
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	return mux
}
