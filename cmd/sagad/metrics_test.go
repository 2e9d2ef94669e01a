package main

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestMetricsHooks checks the series the engine's and the relay's hooks
// feed: breaker states and relay outcomes. The others are checked against
// a daemon's run by TestBenchAgainstADaemon.
func TestMetricsHooks(t *testing.T) {
	t.Parallel()
	m := newMetrics()
	eh, rh := m.engineHooks(), m.relayHooks()
	for _, tt := range []struct {
		to   string
		want float64
	}{{"open", 2}, {"half-open", 1}, {"closed", 0}} {
		eh.BreakerStateChanged("inventory", "", tt.to)
		if got := testutil.ToFloat64(m.breakers.WithLabelValues("inventory")); got != tt.want {
			t.Errorf("breaker %s: sagad_breaker_state = %v, want %v", tt.to, got, tt.want)
		}
	}
	rh.Published(3)
	rh.Published(2)
	rh.Retried(nil, nil)
	rh.NotProduced(nil, nil)
	for outcome, want := range map[string]float64{"published": 5, "retried": 1, "not_produced": 1} {
		if got := testutil.ToFloat64(m.relayOut.WithLabelValues(outcome)); got != want {
			t.Errorf("sagad_relay_events_total{outcome=%q} = %v, want %v", outcome, got, want)
		}
	}
	if n, err := testutil.GatherAndCount(m.reg, "sagad_breaker_state", "sagad_relay_events_total"); err != nil || n != 4 {
		t.Errorf("gathered %d series (%v), want 4", n, err)
	}
}
