package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ozo-platform/ozo-identity/lookup/mcsd"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore/dbtest"
)

// gauges gathers reg into "name{label=value,…}" → value.
func gauges(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName() + "{"
			for i, l := range m.GetLabel() {
				if i > 0 {
					key += ","
				}
				key += l.GetName() + "=" + l.GetValue()
			}
			out[key+"}"] = m.GetGauge().GetValue()
		}
	}
	return out
}

// The queue and lease gauges read what the replicas share: depth, due items and age of the
// onbind queue, and which process holds the sync lease (this one, or another).
func TestStateCollector(t *testing.T) {
	for _, engine := range dbtest.Engines {
		t.Run(string(engine), func(t *testing.T) {
			ctx := context.Background()
			db := dbtest.Open(t, engine)
			reg := prometheus.NewRegistry()
			reg.MustRegister(newStateCollector(db, slog.New(slog.DiscardHandler)))
			g := gauges(t, reg)
			if g[`ozo_identity_queue_depth{queue=onbind}`] != 0 || g[`ozo_identity_lease_held{name=`+mcsd.LeaseName+`}`] != 0 {
				t.Fatalf("empty database: %v", g)
			}
			now := time.Now()
			for i, next := range []time.Time{now.Add(-time.Second), now.Add(time.Hour)} {
				if _, err := db.ExecContext(ctx, `INSERT INTO onbind_queue (id, server_name, body, next_attempt_at, expires_at, created_at)
					VALUES ($1, 'hs.test', '{}', $2, $3, $4)`, fmt.Sprint(i), next.UnixMilli(), now.Add(time.Hour).UnixMilli(),
					now.Add(-90*time.Second).UnixMilli()); err != nil {
					t.Fatal(err)
				}
			}
			l, err := db.AcquireLease(ctx, mcsd.LeaseName, mcsd.NewHolder(), time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			host, _ := os.Hostname()
			g = gauges(t, reg)
			if g[`ozo_identity_queue_depth{queue=onbind}`] != 2 || g[`ozo_identity_queue_due{queue=onbind}`] != 1 ||
				g[`ozo_identity_queue_oldest_age_seconds{queue=onbind}`] < 90 {
				t.Errorf("queue gauges: %v", g)
			}
			self := fmt.Sprintf("%s/pid-%d", host, os.Getpid())
			if g[`ozo_identity_lease_held{name=`+mcsd.LeaseName+`}`] != 1 || g[`ozo_identity_lease_holder{holder=`+self+`,name=`+mcsd.LeaseName+`}`] != 1 {
				t.Errorf("lease held here: %v", g)
			}
			if err := l.Release(ctx); err != nil {
				t.Fatal(err)
			}
			if _, err := db.AcquireLease(ctx, mcsd.LeaseName, "replica-2/pid-7/0badcafe", time.Minute); err != nil {
				t.Fatal(err)
			}
			g = gauges(t, reg)
			if g[`ozo_identity_lease_held{name=`+mcsd.LeaseName+`}`] != 0 || g[`ozo_identity_lease_holder{holder=replica-2/pid-7,name=`+mcsd.LeaseName+`}`] != 1 {
				t.Errorf("lease held by another replica: %v", g)
			}
		})
	}
}

func TestSyncMetrics(t *testing.T) {
	m := newSyncMetrics()
	m.observe([]mcsd.DirectoryReport{
		{Directory: "https://a.test/fhir", Duration: 2 * time.Second},
		{Directory: "https://b.test/fhir", Err: errors.New("503"), Duration: time.Second},
		{Directory: "https://c.test/fhir", Skipped: "backing off"},
	})
	m.observe([]mcsd.DirectoryReport{{Directory: "https://a.test/fhir", Duration: time.Second}})
	for labels, want := range map[[2]string]float64{
		{"https://a.test/fhir", "ok"}: 2, {"https://b.test/fhir", "failed"}: 1, {"https://c.test/fhir", "skipped"}: 1,
	} {
		if got := testutil.ToFloat64(m.runs.WithLabelValues(labels[0], labels[1])); got != want {
			t.Errorf("syncs %v = %v, want %v", labels, got, want)
		}
	}
	if n := testutil.CollectAndCount(m.duration); n != 2 {
		t.Errorf("%d duration series, want 2 (ok of a, failed of b; none for the skipped)", n)
	}
}
