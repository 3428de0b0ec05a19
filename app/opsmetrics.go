package app

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ozo-platform/ozo-identity/identity"
	"github.com/ozo-platform/ozo-identity/lookup/mcsd"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
)

// syncMetrics time every directory's sync and count its outcomes, labelled by the directory's
// base URL: the LRZA's list bounds them.
type syncMetrics struct {
	duration *prometheus.HistogramVec
	runs     *prometheus.CounterVec
}

func newSyncMetrics() *syncMetrics {
	return &syncMetrics{
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "ozo_identity_directory_sync_duration_seconds",
			Help:    "Duration of one directory's sync, by directory and outcome (ok, failed).",
			Buckets: []float64{0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900}}, []string{"directory", "outcome"}),
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ozo_identity_directory_syncs_total",
			Help: "Directory syncs by directory and outcome (ok, failed, skipped, refused, removed)."}, []string{"directory", "outcome"}),
	}
}

func (m *syncMetrics) observe(reports []mcsd.DirectoryReport) {
	if m == nil {
		return
	}
	for _, r := range reports {
		outcome := "ok"
		switch {
		case r.Skipped != "":
			outcome = "skipped"
		case r.Refused != "":
			outcome = "refused"
		case r.Removed:
			outcome = "removed"
		case r.Err != nil:
			outcome = "failed"
		}
		m.runs.WithLabelValues(r.Directory, outcome).Inc()
		if outcome == "ok" || outcome == "failed" {
			m.duration.WithLabelValues(r.Directory, outcome).Observe(r.Duration.Seconds())
		}
	}
}

// stateCollector reads, at each scrape, what replicas share in the database: the depth and
// age of the onbind queue and who holds each lease. Every replica reports the same queue.
type stateCollector struct {
	db  *sqlstore.DB
	log *slog.Logger
	// self matches lease holders of this process (mcsd.NewHolder: host/pid-N/random).
	self string

	depth, due, oldest, held, holder *prometheus.Desc
}

func newStateCollector(db *sqlstore.DB, log *slog.Logger) *stateCollector {
	host, _ := os.Hostname()
	return &stateCollector{db: db, log: log, self: fmt.Sprintf("%s/pid-%d", host, os.Getpid()),
		depth: prometheus.NewDesc("ozo_identity_queue_depth", "Items waiting in a durable queue.", []string{"queue"}, nil),
		due:   prometheus.NewDesc("ozo_identity_queue_due", "Items of a durable queue whose next attempt is due.", []string{"queue"}, nil),
		oldest: prometheus.NewDesc("ozo_identity_queue_oldest_age_seconds",
			"Age of the oldest item of a durable queue; 0 when empty.", []string{"queue"}, nil),
		held: prometheus.NewDesc("ozo_identity_lease_held", "1 while this replica holds the lease.", []string{"name"}, nil),
		holder: prometheus.NewDesc("ozo_identity_lease_holder",
			"1 for the host/pid holding the lease now (any replica); absent while nobody does.", []string{"name", "holder"}, nil),
	}
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.depth, c.due, c.oldest, c.held, c.holder} {
		ch <- d
	}
}

var holderRandom = regexp.MustCompile(`/[0-9a-f]+$`)

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	now := time.Now()
	var depth, due, oldest int64
	err := c.db.QueryRowContext(ctx, `SELECT COUNT(*), COALESCE(SUM(CASE WHEN next_attempt_at <= $1 THEN 1 ELSE 0 END), 0),
		COALESCE(MIN(created_at), 0) FROM onbind_queue`, now.UnixMilli()).Scan(&depth, &due, &oldest)
	if err != nil {
		// /readyz reports the database; a scrape without these series says the same.
		c.log.Warn("metrics: read onbind queue", "err", err)
	} else {
		age := 0.0
		if depth > 0 {
			age = now.Sub(time.UnixMilli(oldest)).Seconds()
		}
		ch <- prometheus.MustNewConstMetric(c.depth, prometheus.GaugeValue, float64(depth), "onbind")
		ch <- prometheus.MustNewConstMetric(c.due, prometheus.GaugeValue, float64(due), "onbind")
		ch <- prometheus.MustNewConstMetric(c.oldest, prometheus.GaugeValue, age, "onbind")
	}
	held := map[string]bool{mcsd.LeaseName: false}
	rows, err := c.db.QueryContext(ctx, `SELECT name, holder FROM leases WHERE expires_at > $1`, now.UnixMilli())
	if err != nil {
		c.log.Warn("metrics: read leases", "err", err)
		return
	}
	defer rows.Close()
	for rows.Next() {
		var name, holder string
		if err := rows.Scan(&name, &holder); err != nil {
			c.log.Warn("metrics: read leases", "err", err)
			return
		}
		// host/pid-N without the per-claim random part: one series per process, not per sync.
		proc := holderRandom.ReplaceAllString(holder, "")
		held[name] = proc == c.self
		ch <- prometheus.MustNewConstMetric(c.holder, prometheus.GaugeValue, 1, name, proc)
	}
	if err := rows.Err(); err != nil {
		c.log.Warn("metrics: read leases", "err", err)
		return
	}
	for name, mine := range held {
		v := 0.0
		if mine {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(c.held, prometheus.GaugeValue, v, name)
	}
}

// mirrorCollector reports the in-memory lookup index and token cache at each scrape.
type mirrorCollector struct {
	m                          *identity.Mirror
	hashes, bytes, age, tokens *prometheus.Desc
}

func newMirrorCollector(m *identity.Mirror) *mirrorCollector {
	return &mirrorCollector{m: m,
		hashes: prometheus.NewDesc("ozo_identity_lookup_index_hashes", "Lookup hashes in the in-memory index.", nil, nil),
		bytes:  prometheus.NewDesc("ozo_identity_lookup_index_bytes", "Memory of the in-memory lookup index.", nil, nil),
		age: prometheus.NewDesc("ozo_identity_lookup_index_age_seconds",
			"Since the in-memory index and token cache last caught up with the change log; -1 when they are not current (the database answers).", nil, nil),
		tokens: prometheus.NewDesc("ozo_identity_token_cache_entries", "Access tokens in the cache.", nil, nil),
	}
}

func (c *mirrorCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.hashes
	ch <- c.bytes
	ch <- c.age
	ch <- c.tokens
}

func (c *mirrorCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.m.Stats()
	age := s.Age.Seconds()
	if s.Age < 0 {
		age = -1
	}
	ch <- prometheus.MustNewConstMetric(c.hashes, prometheus.GaugeValue, float64(s.Hashes))
	ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.GaugeValue, float64(s.Bytes))
	ch <- prometheus.MustNewConstMetric(c.age, prometheus.GaugeValue, age)
	ch <- prometheus.MustNewConstMetric(c.tokens, prometheus.GaugeValue, float64(s.Tokens))
}
