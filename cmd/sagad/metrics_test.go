package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/steps"
)

// TestMetricsHooks checks the series the engine's and the relay's hooks
// feed: breaker states and relay outcomes. The others are checked against
// a daemon's run by TestBenchAgainstADaemon.
func TestMetricsHooks(t *testing.T) {
	t.Parallel()
	m := newMetrics(true)
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

// TestMetricsStepLabels: the step attempt series stay bounded. Without
// step labels (the default) they are by definition, phase and outcome
// whatever the steps; with them, only the steps of the latest registered
// version of a definition get a label of their own, and a step the
// definition drops loses its series.
func TestMetricsStepLabels(t *testing.T) {
	t.Parallel()
	step := func(name string) saga.Step {
		return saga.Step{Name: name, Action: func(context.Context, *saga.Call) (json.RawMessage, error) { return nil, nil }}
	}
	v1 := &saga.Definition{Name: "order", Steps: []saga.Step{step("reserve"), step("charge")}}
	v2 := &saga.Definition{Name: "order", Steps: []saga.Step{step("reserve"), step("pay")}}
	// attempt reports one successful action attempt of each step.
	attempt := func(m *metrics, steps ...string) {
		for _, s := range steps {
			m.engineHooks().AttemptFinished(engine.AttemptInfo{Definition: "order", Step: s, Phase: saga.PhaseAction})
		}
	}
	many := make([]string, 500)
	for i := range many {
		many[i] = fmt.Sprintf("step-%d", i)
	}
	tests := []struct {
		name     string
		labels   bool
		registry []*saga.Definition // nil: the engine is not open yet
		steps    []string
		want     map[string]float64 // attempts by step label ("-": no step label)
	}{
		{"off: one series whatever the steps", false, []*saga.Definition{v1}, many, map[string]float64{"-": 500}},
		{"on: registered steps", true, []*saga.Definition{v1}, []string{"reserve", "charge", "charge"},
			map[string]float64{"reserve": 1, "charge": 2}},
		{"on: steps not registered share the empty label", true, []*saga.Definition{v1}, append([]string{"reserve"}, many...),
			map[string]float64{"reserve": 1, "": 500}},
		{"on: before the engine is open", true, nil, []string{"reserve"}, map[string]float64{"": 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			m := newMetrics(tt.labels)
			if tt.registry != nil && m.steps != nil {
				m.steps.setSource(func() []*saga.Definition { return tt.registry })
			}
			attempt(m, tt.steps...)
			if got := attemptsByStep(t, m); !maps.Equal(got, tt.want) {
				t.Errorf("sagad_step_attempts_total by step: %v, want %v", got, tt.want)
			}
		})
	}

	t.Run("on: a step the new version drops loses its series", func(t *testing.T) {
		t.Parallel()
		m := newMetrics(true)
		var mu sync.Mutex
		registry := []*saga.Definition{v1}
		m.steps.setSource(func() []*saga.Definition { mu.Lock(); defer mu.Unlock(); return registry })
		attempt(m, "reserve", "charge")
		mu.Lock()
		registry = []*saga.Definition{v2}
		mu.Unlock()
		attempt(m, "pay", "charge") // charge: a saga still on v1
		want := map[string]float64{"reserve": 1, "pay": 1, "": 1}
		if got := attemptsByStep(t, m); !maps.Equal(got, want) {
			t.Errorf("sagad_step_attempts_total by step: %v, want %v", got, want)
		}
		if n, err := testutil.GatherAndCount(m.reg, "sagad_step_attempt_duration_seconds"); err != nil || n != 3 {
			t.Errorf("%d duration series (%v), want 3: one per step label", n, err)
		}
	})
}

// attemptsByStep sums sagad_step_attempts_total by its step label ("-"
// for series without one).
func attemptsByStep(t *testing.T, m *metrics) map[string]float64 {
	t.Helper()
	families, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range families {
		if f.GetName() != "sagad_step_attempts_total" {
			continue
		}
		for _, s := range f.GetMetric() {
			step := "-"
			for _, l := range s.GetLabel() {
				if l.GetName() == "step" {
					step = l.GetValue()
				}
			}
			out[step] += s.GetCounter().GetValue()
		}
	}
	return out
}

// A registered definition's status counters and breaker are series from
// the scrape after it is registered, before any saga runs.
func TestMetricsExistFromTheStart(t *testing.T) {
	t.Parallel()
	eng, err := engine.Open(filepath.Join(t.TempDir(), "sagad.db"), engine.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	m := newMetrics(false)
	m.watch(eng, nil)
	if err := eng.Register(&saga.Definition{Name: "order", Steps: []saga.Step{{Name: "charge", Action: steps.Noop,
		Breaker: saga.BreakerPolicy{Name: "payments", Failures: 3, OpenFor: time.Second}}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.reg.Gather(); err != nil { // makes the series
		t.Fatal(err)
	}
	if n, err := testutil.GatherAndCount(m.reg, "sagad_saga_status_changes_total"); err != nil || n != len(saga.Statuses) {
		t.Errorf("status change series: %d (%v), want one per status, at zero", n, err)
	}
	if got := testutil.ToFloat64(m.breakers.WithLabelValues("payments")); got != 0 {
		t.Errorf("sagad_breaker_state{payments} = %v, want 0 (closed)", got)
	}
	if n, err := testutil.GatherAndCount(m.reg, "sagad_breaker_state"); err != nil || n != 1 {
		t.Errorf("breaker series: %d (%v), want the registered breaker's", n, err)
	}
}
