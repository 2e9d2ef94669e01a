package engine_test

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/sagad/sagad/clock"
	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
)

// pendingCall is a call a participant took, to answer later.
type pendingCall struct {
	id, step string
	phase    saga.Phase
	attempt  int
}

// answersLater is a step function that hands its call to calls and
// returns saga.ErrPending.
func answersLater(calls chan<- pendingCall) saga.Func {
	return func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
		calls <- pendingCall{c.SagaID, c.Step, c.Phase, c.Attempt}
		return nil, saga.ErrPending
	}
}

func nextCall(t *testing.T, calls <-chan pendingCall) pendingCall {
	t.Helper()
	select {
	case c := <-calls:
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("the participant was never called")
		return pendingCall{}
	}
}

// TestPendingStepIsCompleted: a step whose participant answers later
// waits, across a restart, until Complete delivers the answer; a second
// delivery is recorded and ignored.
func TestPendingStepIsCompleted(t *testing.T) {
	t.Parallel()
	testPendingCompleted(t, filepath.Join(t.TempDir(), "sagad.db"))
}

// TestPendingStepIsCompletedPostgres is the same on PostgreSQL.
func TestPendingStepIsCompletedPostgres(t *testing.T) {
	t.Parallel()
	testPendingCompleted(t, postgresURL(t))
}

func testPendingCompleted(t *testing.T, path string) {
	calls := make(chan pendingCall, 4)
	var seen json.RawMessage
	def := &saga.Definition{Name: "approval", Steps: []saga.Step{
		{Name: "approve", Action: answersLater(calls), Timeout: time.Hour},
		{Name: "ship", Action: func(_ context.Context, c *saga.Call) (json.RawMessage, error) {
			seen = c.Data["approve"]
			return nil, nil
		}},
	}}
	pending := make(chan engine.AttemptInfo, 1)
	b := setupNoCleanup(t, path, def, true, engine.Hooks{AttemptPending: func(a engine.AttemptInfo) { pending <- a }})
	ctx := context.Background()
	st, err := b.eng.Start(ctx, "approval", nil)
	if err != nil {
		t.Fatal(err)
	}
	c := nextCall(t, calls)
	if a := <-pending; a.Step != "approve" || a.Attempt != 1 || !a.Pending || a.Err != nil {
		t.Errorf("AttemptPending hook got %+v, want approve's first attempt", a)
	}
	b.close(t)

	b = setupNoCleanup(t, path, def, true)
	defer b.close(t)
	s, err := b.eng.Get(ctx, st.ID)
	if err != nil || s.Status != saga.StatusRunning || s.WakeAt.IsZero() {
		t.Fatalf("after a restart: %+v (%v), want running and due at the end of its wait", s, err)
	}
	if w := s.Steps[0]; !w.Waiting || w.WaitingSince.IsZero() || w.WaitingUntil.Sub(w.WaitingSince) != time.Hour || !w.WaitingUntil.Equal(s.WakeAt) {
		t.Errorf("approve %+v: want waiting, for up to its hour-long timeout, until the saga's wake time", w)
	}
	if applied, err := b.eng.Complete(ctx, c.id, c.step, c.phase, c.attempt, engine.Result{Data: json.RawMessage(`{"by":"ann"}`)}); err != nil || !applied {
		t.Fatalf("complete: applied %v, %v", applied, err)
	}
	s = b.wait(t, st.ID)
	if s.Status != saga.StatusCompleted || string(seen) != `{"by":"ann"}` {
		t.Fatalf("status %s, ship saw %s: want completed with the answer's data", s.Status, seen)
	}
	if applied, err := b.eng.Complete(ctx, c.id, c.step, c.phase, c.attempt, engine.Result{Data: json.RawMessage(`{"by":"bob"}`)}); err != nil || applied {
		t.Fatalf("second complete: applied %v, %v; want recorded and ignored", applied, err)
	}
	if _, err := b.eng.Complete(ctx, c.id, "nope", c.phase, 1, engine.Result{}); !errors.Is(err, engine.ErrInvalidInput) {
		t.Errorf("complete of an unknown step: %v, want ErrInvalidInput", err)
	}
	log, err := b.eng.Log(ctx, st.ID)
	if err != nil {
		t.Fatal(err)
	}
	var events []storage.Event
	for _, e := range log {
		if e.Step == "approve" && e.Event != storage.EventAttemptStarted {
			events = append(events, e.Event)
		}
	}
	want := []storage.Event{storage.EventAttemptPending, storage.EventAttemptSucceeded, storage.EventAnswerIgnored}
	if len(events) != len(want) || events[0] != want[0] || events[1] != want[1] || events[2] != want[2] {
		t.Errorf("approve's log %v, want %v", events, want)
	}
}

// TestPendingStepTimesOut: no answer within the step's timeout fails the
// attempt with an unknown outcome; the retry waits again; the late answer
// to the first attempt is ignored, the second's is used; an answer that
// fails for good compensates.
func TestPendingStepTimesOut(t *testing.T) {
	t.Parallel()
	start := time.Date(2032, 1, 1, 0, 0, 0, 0, time.UTC)
	f := clock.NewFake(start)
	calls := make(chan pendingCall, 4)
	undone := make(chan string, 4)
	def := &saga.Definition{Name: "slow", Steps: []saga.Step{
		{Name: "reserve", Action: func(context.Context, *saga.Call) (json.RawMessage, error) { return nil, nil },
			Compensation: func(_ context.Context, c *saga.Call) (json.RawMessage, error) { undone <- c.Step; return nil, nil }},
		{Name: "approve", Action: answersLater(calls), Timeout: time.Minute,
			Retry:        saga.RetryPolicy{MaxAttempts: 3, InitialInterval: time.Second, Jitter: -1},
			Compensation: func(_ context.Context, c *saga.Call) (json.RawMessage, error) { undone <- c.Step; return nil, nil }},
	}}
	b := setup(t, setupOpts{defs: []*saga.Definition{def}, opts: engine.Options{Clock: f}})
	ctx := context.Background()
	st, err := b.eng.Start(ctx, "slow", nil)
	if err != nil {
		t.Fatal(err)
	}
	first := nextCall(t, calls)
	f.BlockUntilWaiting(start.Add(time.Minute)) // the scheduler waits for the end of the wait
	f.Advance(time.Minute)                      // no answer: the attempt timed out
	f.BlockUntilWaiting(start.Add(time.Minute + time.Second))
	f.Advance(time.Second) // the retry
	second := nextCall(t, calls)
	if second.attempt != 2 {
		t.Fatalf("second call is attempt %d, want 2", second.attempt)
	}
	if applied, err := b.eng.Complete(ctx, first.id, first.step, first.phase, first.attempt, engine.Result{}); err != nil || applied {
		t.Fatalf("late answer: applied %v, %v; want ignored", applied, err)
	}
	if applied, err := b.eng.Complete(ctx, second.id, second.step, second.phase, second.attempt,
		engine.Result{Err: saga.Permanent(errors.New("rejected by a person"))}); err != nil || !applied {
		t.Fatalf("answer: applied %v, %v", applied, err)
	}
	s := b.wait(t, st.ID)
	if s.Status != saga.StatusCompensated || s.Err == nil || !saga.IsPermanent(s.Err) {
		t.Fatalf("status %s (%v), want compensated for the rejection", s.Status, s.Err)
	}
	// The answer to the same idempotency key settles what the timed-out
	// attempt did: approve did nothing, and only reserve is undone.
	if got := <-undone; got != "reserve" {
		t.Errorf("compensation of %s, want reserve", got)
	}
	select {
	case got := <-undone:
		t.Errorf("a second compensation, of %s; want none", got)
	default:
	}
}

// TestPendingAnswerWhilePaused: an answer that comes while the saga is
// paused is recorded, and the saga stays paused, in the status that
// follows from it; resumed, it goes on from there.
func TestPendingAnswerWhilePaused(t *testing.T) {
	t.Parallel()
	calls := make(chan pendingCall, 4)
	undone := make(chan string, 4)
	def := &saga.Definition{Name: "approval", Steps: []saga.Step{
		{Name: "reserve", Action: func(context.Context, *saga.Call) (json.RawMessage, error) { return nil, nil },
			Compensation: func(_ context.Context, c *saga.Call) (json.RawMessage, error) { undone <- c.Step; return nil, nil }},
		{Name: "approve", Action: answersLater(calls), Timeout: time.Hour},
	}}
	statuses := make(chan saga.Status, 16)
	b := setup(t, setupOpts{defs: []*saga.Definition{def}, opts: engine.Options{Hooks: statusSignal(statuses)}})
	ctx := context.Background()
	st, err := b.eng.Start(ctx, "approval", nil)
	if err != nil {
		t.Fatal(err)
	}
	c := nextCall(t, calls)
	if err := b.eng.Pause(ctx, st.ID); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, statuses, saga.StatusPaused) // a wait for an answer does not hold a pause up
	if w, err := b.eng.Waits(ctx); err != nil || w.Steps != 1 {
		t.Errorf("Waits of a paused saga whose step waits: %+v (%v), want 1 step", w, err)
	}
	if applied, err := b.eng.Complete(ctx, c.id, c.step, c.phase, c.attempt, engine.Result{Err: saga.Permanent(errors.New("rejected"))}); err != nil || !applied {
		t.Fatalf("complete: %v, %v", applied, err)
	}
	s, err := b.eng.Get(ctx, st.ID)
	if err != nil || s.Status != saga.StatusPaused || s.PausedFrom != saga.StatusCompensating {
		t.Fatalf("after the answer: %+v (%v), want still paused, to resume compensating", s, err)
	}
	select {
	case step := <-undone:
		t.Fatalf("compensation of %s ran while the saga was paused", step)
	default:
	}
	if err := b.eng.Resume(ctx, st.ID); err != nil {
		t.Fatal(err)
	}
	if s := b.wait(t, st.ID); s.Status != saga.StatusCompensated || <-undone != "reserve" {
		t.Fatalf("after resume: %s, want compensated with reserve undone", s.Status)
	}
}

// TestAnswerStartsTheNextStepAtOnce: an answer that lets a step start
// starts it at once, while a sibling still waits for its own answer (it
// used to wait for the end of the sibling's wait). A failure for good
// while a sibling waits fails the saga only once that wait ends.
func TestAnswerStartsTheNextStepAtOnce(t *testing.T) {
	t.Parallel()
	calls := make(chan pendingCall, 8)
	started := make(chan struct{}, 1)
	def := &saga.Definition{Name: "two", Steps: []saga.Step{
		{Name: "p", Pivot: true, Action: func(context.Context, *saga.Call) (json.RawMessage, error) { return nil, nil }},
		{Name: "a", After: []string{"p"}, Action: answersLater(calls), Timeout: time.Hour},
		{Name: "b", After: []string{"p"}, Action: answersLater(calls), Timeout: time.Hour},
		{Name: "c", After: []string{"a"}, Action: func(context.Context, *saga.Call) (json.RawMessage, error) {
			started <- struct{}{}
			return nil, saga.Permanent(errors.New("refused"))
		}},
	}}
	b := setup(t, setupOpts{defs: []*saga.Definition{def}})
	ctx := context.Background()
	st, err := b.eng.Start(ctx, "two", nil)
	if err != nil {
		t.Fatal(err)
	}
	waits := map[string]pendingCall{}
	for range 2 {
		c := nextCall(t, calls)
		waits[c.step] = c
	}
	// a's answer: c starts now, not when b's hour is over.
	a := waits["a"]
	if applied, err := b.eng.Complete(ctx, a.id, a.step, a.phase, a.attempt, engine.Result{}); err != nil || !applied {
		t.Fatalf("complete a: %v, %v", applied, err)
	}
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("c did not start after a's answer")
	}
	// c failed for good past the pivot, and b still waits: not failed yet.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) { // no signal for "c recorded"
		s, err := b.eng.Get(ctx, st.ID)
		if err != nil {
			t.Fatal(err)
		}
		if s.Steps[3].Status == saga.StepFailed {
			if s.Status != saga.StatusRunning {
				t.Fatalf("status %s while b waits for its answer, want running", s.Status)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("c's failure never recorded: %+v", s.Steps[3])
		}
	}
	bw := waits["b"]
	if applied, err := b.eng.Complete(ctx, bw.id, bw.step, bw.phase, bw.attempt, engine.Result{}); err != nil || !applied {
		t.Fatalf("complete b: %v, %v", applied, err)
	}
	if s := b.wait(t, st.ID); s.Status != saga.StatusFailed {
		t.Fatalf("status %s, want failed once b has answered", s.Status)
	}
}
