package app

import (
	"log/slog"
	"testing"

	"github.com/ozo-platform/ozo-identity/api"
)

// Item 13: the metrics listener keeps no connection longer than the public one does.
func TestOpsServerHasPublicTimeouts(t *testing.T) {
	a := &App{log: slog.New(slog.DiscardHandler), Metrics: api.NewMetrics()}
	pub, ops := a.newServer(nil), a.OpsServer()
	if ops.ReadHeaderTimeout <= 0 || ops.ReadTimeout <= 0 || ops.WriteTimeout <= 0 || ops.IdleTimeout <= 0 || ops.MaxHeaderBytes <= 0 {
		t.Fatalf("metrics listener without timeouts: %+v", ops)
	}
	if ops.ReadHeaderTimeout != pub.ReadHeaderTimeout || ops.ReadTimeout != pub.ReadTimeout ||
		ops.WriteTimeout != pub.WriteTimeout || ops.IdleTimeout != pub.IdleTimeout || ops.MaxHeaderBytes != pub.MaxHeaderBytes {
		t.Fatalf("metrics listener timeouts differ from the public listener's")
	}
}
