package engine_test

import (
	"context"
	"encoding/json"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/saga"
)

// TestHooksCarryTheSaga: every hook names the saga and its definition;
// StepWaiting fires for a retry's backoff and for an open breaker, and
// SagaParked when a saga's version is not registered.
func TestHooksCarryTheSaga(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var statuses []engine.StatusChange
	var attempts []engine.AttemptInfo
	waits := make(chan engine.WaitInfo, 16)
	hooks := engine.Hooks{
		SagaStatusChanged: func(c engine.StatusChange) { mu.Lock(); statuses = append(statuses, c); mu.Unlock() },
		AttemptFinished:   func(a engine.AttemptInfo) { mu.Lock(); attempts = append(attempts, a); mu.Unlock() },
		StepWaiting:       func(w engine.WaitInfo) { waits <- w },
	}
	var calls atomic.Int32
	flaky := &saga.Definition{Name: "flaky", Steps: []saga.Step{{Name: "charge",
		Retry: saga.RetryPolicy{InitialInterval: time.Millisecond, Jitter: -1},
		Action: func(context.Context, *saga.Call) (json.RawMessage, error) {
			if calls.Add(1) == 1 {
				return nil, errFlaky
			}
			return nil, nil
		}}}}
	guarded := &saga.Definition{Name: "guarded", Steps: []saga.Step{{Name: "call",
		Retry:   saga.RetryPolicy{MaxAttempts: -1, InitialInterval: time.Millisecond, Jitter: -1},
		Breaker: saga.BreakerPolicy{Name: "hooks-test", Failures: 1, OpenFor: time.Hour},
		Action:  func(context.Context, *saga.Call) (json.RawMessage, error) { return nil, errFlaky }}}}
	b := setup(t, setupOpts{defs: []*saga.Definition{flaky, guarded}, opts: engine.Options{Hooks: hooks}})

	s := b.run(t, "flaky", nil)
	mu.Lock()
	if len(statuses) != 2 || statuses[0] != (engine.StatusChange{SagaID: s.ID, Definition: "flaky", To: saga.StatusRunning}) ||
		statuses[1] != (engine.StatusChange{SagaID: s.ID, Definition: "flaky", From: saga.StatusRunning, To: saga.StatusCompleted}) {
		t.Errorf("status changes %+v, want running then completed, for saga %s", statuses, s.ID)
	}
	if len(attempts) != 2 || attempts[0].SagaID != s.ID || attempts[0].Definition != "flaky" || !attempts[0].Retry || attempts[1].SagaID != s.ID {
		t.Errorf("attempts %+v, want two of saga %s, the first retried", attempts, s.ID)
	}
	mu.Unlock()
	if w := <-waits; w.SagaID != s.ID || w.Definition != "flaky" || w.Step != "charge" || w.Phase != saga.PhaseAction ||
		w.Reason != "retry" || w.Until.IsZero() {
		t.Errorf("wait %+v: want charge's retry of saga %s", w, s.ID)
	}

	g, err := b.eng.Start(context.Background(), "guarded", nil)
	if err != nil {
		t.Fatal(err)
	}
	if w := <-waits; w.SagaID != g.ID || w.Reason != "retry" {
		t.Errorf("first wait %+v: want the retry after the failure that opens the breaker", w)
	}
	if w := <-waits; w.SagaID != g.ID || w.Reason != "breaker" || time.Until(w.Until) < 50*time.Minute {
		t.Errorf("second wait %+v: want the breaker's hour", w)
	}
}

// TestSagaParkedHook: a saga whose version is not registered parks, and
// the hook says which.
func TestSagaParkedHook(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "sagad.db")
	calls := make(chan pendingCall, 1)
	v1 := &saga.Definition{Name: "order", Steps: []saga.Step{{Name: "approve", Action: answersLater(calls), Timeout: 50 * time.Millisecond}}}
	b := setupNoCleanup(t, path, v1, true)
	st, err := b.eng.Start(context.Background(), "order", nil)
	if err != nil {
		t.Fatal(err)
	}
	nextCall(t, calls)
	b.close(t)

	parked := make(chan engine.ParkInfo, 1)
	v2 := &saga.Definition{Name: "order", Steps: []saga.Step{{Name: "approve", Action: answersLater(calls)}, {Name: "ship", Action: answersLater(calls)}}}
	b = setupNoCleanup(t, path, v2, true, engine.Hooks{SagaParked: func(p engine.ParkInfo) { parked <- p }})
	defer b.close(t)
	select {
	case p := <-parked:
		if p.SagaID != st.ID || p.Definition != "order" || p.Version != v1.Fingerprint() || p.Reason == "" {
			t.Errorf("parked %+v, want saga %s on version %s", p, st.ID, v1.Fingerprint())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the saga never parked")
	}
}
