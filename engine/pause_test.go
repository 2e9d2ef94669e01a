package engine_test

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sagad/sagad/clock"
	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
)

// statusSignal returns hooks that send every status a saga enters on ch.
func statusSignal(ch chan<- saga.Status) engine.Hooks {
	return engine.Hooks{SagaStatusChanged: func(c engine.StatusChange) { ch <- c.To }}
}

func waitStatus(t *testing.T, ch <-chan saga.Status, want saga.Status) {
	t.Helper()
	for {
		select {
		case got := <-ch:
			if got == want {
				return
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("the saga never became %s", want)
		}
	}
}

// TestPauseWaitsForAttemptsAndSurvivesRestart: a pause asked for while an
// attempt runs lets it finish and be recorded, starts nothing after it,
// and holds across a restart; resume carries on where it stopped.
func TestPauseWaitsForAttemptsAndSurvivesRestart(t *testing.T) {
	t.Parallel()
	testPauseRestart(t, filepath.Join(t.TempDir(), "sagad.db"))
}

// TestPauseWaitsForAttemptsAndSurvivesRestartPostgres is the same on
// PostgreSQL.
func TestPauseWaitsForAttemptsAndSurvivesRestartPostgres(t *testing.T) {
	t.Parallel()
	testPauseRestart(t, postgresURL(t))
}

func testPauseRestart(t *testing.T, path string) {
	entered, release := make(chan struct{}), make(chan struct{})
	var shipped atomic.Int32
	def := &saga.Definition{Name: "order", Steps: []saga.Step{
		{Name: "reserve", Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
			if c.Attempt == 1 {
				close(entered)
				<-release
			}
			return json.RawMessage(`"R-1"`), nil
		}},
		{Name: "ship", Action: func(context.Context, *saga.Call) (json.RawMessage, error) {
			shipped.Add(1)
			return nil, nil
		}},
	}}
	statuses := make(chan saga.Status, 16)
	b := setupNoCleanup(t, path, def, true, statusSignal(statuses))
	ctx := context.Background()
	st, err := b.eng.Start(ctx, "order", nil)
	if err != nil {
		t.Fatal(err)
	}
	<-entered
	if err := b.eng.Pause(ctx, st.ID); err != nil {
		t.Fatalf("pause: %v", err)
	}
	if s, _ := b.eng.Get(ctx, st.ID); s.Status != saga.StatusRunning {
		t.Errorf("status while the attempt runs: %s, want running until it ends", s.Status)
	}
	close(release)
	waitStatus(t, statuses, saga.StatusPaused)
	s, err := b.eng.Get(ctx, st.ID)
	if err != nil {
		t.Fatal(err)
	}
	if s.Status != saga.StatusPaused || s.PausedFrom != saga.StatusRunning || string(s.Data["reserve"]) != `"R-1"` {
		t.Fatalf("saga %+v: want paused from running, with reserve's output recorded", s)
	}
	if err := b.eng.Pause(ctx, st.ID); err != nil {
		t.Errorf("a second pause: %v, want none (idempotent)", err)
	}
	b.close(t)

	// Restarted: still paused, nothing runs.
	b = setupNoCleanup(t, path, def, true, statusSignal(statuses))
	defer b.close(t)
	if s, err := b.eng.Get(ctx, st.ID); err != nil || s.Status != saga.StatusPaused {
		t.Fatalf("after a restart: %v (%v), want paused", s.Status, err)
	}
	if n := shipped.Load(); n != 0 {
		t.Fatalf("ship ran %d times while the saga was paused", n)
	}
	if err := b.eng.Resume(ctx, st.ID); err != nil {
		t.Fatalf("resume: %v", err)
	}
	s = b.wait(t, st.ID)
	if s.Status != saga.StatusCompleted || shipped.Load() != 1 {
		t.Fatalf("after resume: %s, ship ran %d times; want completed, once", s.Status, shipped.Load())
	}
	if err := b.eng.Resume(ctx, st.ID); !errors.Is(err, engine.ErrConflict) {
		t.Errorf("resume of a completed saga: %v, want ErrConflict", err)
	}
	if err := b.eng.Pause(ctx, st.ID); !errors.Is(err, engine.ErrConflict) {
		t.Errorf("pause of a completed saga: %v, want ErrConflict", err)
	}
	log, err := b.eng.Log(ctx, st.ID)
	if err != nil {
		t.Fatal(err)
	}
	var events []storage.Event
	for _, e := range log {
		if e.Event == storage.EventPaused || e.Event == storage.EventUnpaused {
			events = append(events, e.Event)
		}
	}
	if len(events) != 2 || events[0] != storage.EventPaused || events[1] != storage.EventUnpaused {
		t.Errorf("pause and resume log entries %v, want paused then unpaused", events)
	}
}

// TestPauseKeepsTimeCounting: a saga paused while it waits for a retry
// keeps its retry time, and a deadline that passed while it was paused
// turns it around when it resumes.
func TestPauseKeepsTimeCounting(t *testing.T) {
	t.Parallel()
	start := time.Date(2032, 1, 1, 0, 0, 0, 0, time.UTC)
	f := clock.NewFake(start)
	retried := make(chan struct{}, 4)
	var undone atomic.Int32
	def := &saga.Definition{Name: "slow", Timeout: 2 * time.Hour, Steps: []saga.Step{
		{Name: "reserve", Action: func(context.Context, *saga.Call) (json.RawMessage, error) { return nil, nil },
			Compensation: func(context.Context, *saga.Call) (json.RawMessage, error) { undone.Add(1); return nil, nil }},
		{Name: "charge", Retry: saga.RetryPolicy{MaxAttempts: 5, InitialInterval: time.Hour, MaxInterval: time.Hour, Jitter: -1},
			Action: func(context.Context, *saga.Call) (json.RawMessage, error) { return nil, errFlaky }},
	}}
	hooks := onRetry(retried)
	paused := make(chan struct{}, 4)
	hooks.SagaStatusChanged = func(c engine.StatusChange) {
		if c.To == saga.StatusPaused {
			paused <- struct{}{}
		}
	}
	b := setup(t, setupOpts{defs: []*saga.Definition{def}, opts: engine.Options{Clock: f, Hooks: hooks}})
	ctx := context.Background()
	st, err := b.eng.Start(ctx, "slow", nil)
	if err != nil {
		t.Fatal(err)
	}
	<-retried // charge waits an hour for its next attempt
	if err := b.eng.Pause(ctx, st.ID); err != nil {
		t.Fatal(err)
	}
	// The retry hook ran while the driver still held the saga: the
	// pause is then carried out as it lets go, after Pause returned.
	<-paused
	s, err := b.eng.Get(ctx, st.ID)
	if err != nil || s.Status != saga.StatusPaused || !s.WakeAt.IsZero() {
		t.Fatalf("paused saga %+v (%v): want paused, due never", s, err)
	}
	// Resumed within the hour, it waits for the same retry time.
	if err := b.eng.Resume(ctx, st.ID); err != nil {
		t.Fatal(err)
	}
	// The resumed saga is driven once, which finds the retry not yet due
	// and sets its wake time back to it. Nothing signals that from
	// outside: look until it shows.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if s, err = b.eng.Get(ctx, st.ID); err != nil {
			t.Fatal(err)
		}
		if s.WakeAt.Equal(start.Add(time.Hour)) && s.Status == saga.StatusRunning {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after resume: %s, due %v; want running, due at the retry time %v", s.Status, s.WakeAt, start.Add(time.Hour))
		}
	}
	// Paused again while its deadline passes: resumed, it compensates.
	if err := b.eng.Pause(ctx, st.ID); err != nil {
		t.Fatal(err)
	}
	<-paused
	f.Advance(3 * time.Hour)
	if s, _ := b.eng.Get(ctx, st.ID); s.Status != saga.StatusPaused {
		t.Fatalf("status %s after the deadline passed while paused, want still paused", s.Status)
	}
	if err := b.eng.Resume(ctx, st.ID); err != nil {
		t.Fatal(err)
	}
	s = b.wait(t, st.ID)
	if s.Status != saga.StatusCompensated || !errors.Is(s.Err, engine.ErrDeadline) || undone.Load() != 1 {
		t.Fatalf("after resume past the deadline: %s (%v), %d compensations; want compensated for the deadline, once", s.Status, s.Err, undone.Load())
	}
}

// TestAbortPausedSaga: an abort of a paused saga compensates it.
func TestAbortPausedSaga(t *testing.T) {
	t.Parallel()
	retried := make(chan struct{}, 4)
	var undone atomic.Int32
	def := &saga.Definition{Name: "order", Steps: []saga.Step{
		{Name: "reserve", Action: func(context.Context, *saga.Call) (json.RawMessage, error) { return nil, nil },
			Compensation: func(context.Context, *saga.Call) (json.RawMessage, error) { undone.Add(1); return nil, nil }},
		{Name: "charge", Retry: saga.RetryPolicy{MaxAttempts: 5, InitialInterval: time.Hour, Jitter: -1},
			Action: func(context.Context, *saga.Call) (json.RawMessage, error) { return nil, errFlaky }},
	}}
	b := setup(t, setupOpts{defs: []*saga.Definition{def}, opts: engine.Options{Hooks: onRetry(retried)}})
	ctx := context.Background()
	st, err := b.eng.Start(ctx, "order", nil)
	if err != nil {
		t.Fatal(err)
	}
	<-retried
	if err := b.eng.Pause(ctx, st.ID); err != nil {
		t.Fatal(err)
	}
	if err := b.eng.Abort(ctx, st.ID); err != nil {
		t.Fatalf("abort of a paused saga: %v", err)
	}
	s := b.wait(t, st.ID)
	if s.Status != saga.StatusCompensated || !errors.Is(s.Err, engine.ErrAborted) || undone.Load() != 1 {
		t.Fatalf("status %s (%v), %d compensations: want compensated for the abort, once", s.Status, s.Err, undone.Load())
	}
}
