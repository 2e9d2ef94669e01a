// Package sagatest helps test sagas: it runs a definition on a real engine
// over a temporary bbolt file with a fake clock, drives each saga to its
// end (a ten-minute backoff passes at once), and asserts on what happened:
// the saga's status, the calls of its steps in order, the events it
// emitted. Explore crashes a saga's engine at each of its durable points,
// before and after the write, lets a new engine finish it, and checks that
// it ended as without the crash, that idempotency keys held, that the
// compensations undid what was done in reverse order, and that every event
// is in the outbox once.
//
//	func TestOrder(t *testing.T) {
//		h := sagatest.New(t, orderDefinition())
//		s := h.Run("order", Order{ID: "42"})
//		sagatest.RequireStatus(t, s, saga.StatusCompleted)
//		h.RequireCalls(s.ID, "reserve/action", "charge/action", "ship/action")
//		h.RequireEvents(s.ID, "payment.charged")
//	}
package sagatest

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/sagad/sagad/clock"
	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/recovery"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
	"github.com/sagad/sagad/storage/bolt"
)

// T is what a harness needs of a test: *testing.T and *testing.B are one.
type T interface {
	Helper()
	Fatalf(format string, args ...any)
	Errorf(format string, args ...any)
	Cleanup(func())
	TempDir() string
}

// Start is the time the fake clock of a Harness starts at.
var Start = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

// Patience bounds, in real time, how long Run, Finish and each of
// Explore's runs wait for a saga to end.
const Patience = 30 * time.Second

// Harness is an engine for one test: on a temporary bbolt file (no fsync),
// with a fake clock, running until the test ends, when it is closed and
// its file checked for consistency.
type Harness struct {
	// Engine is the engine: start, abort, complete sagas with it.
	Engine *engine.Engine
	// Clock is the engine's clock. Run moves it; a test may too.
	Clock *clock.Fake

	t       T
	changed chan struct{}
}

// Options configures New. The zero value is the defaults.
type Options struct {
	// Engine is the engine's options; Clock and Logger are set by New
	// (Logger only when nil), and Hooks are wrapped: yours run too.
	Engine engine.Options
}

// New returns a running harness with defs registered.
func New(t T, defs ...*saga.Definition) *Harness {
	t.Helper()
	return NewWith(t, Options{}, defs...)
}

// NewWith is New with options.
func NewWith(t T, o Options, defs ...*saga.Definition) *Harness {
	t.Helper()
	h := &Harness{Clock: clock.NewFake(Start), t: t, changed: make(chan struct{}, 1)}
	eo := o.Engine
	eo.Clock = h.Clock
	if eo.Logger == nil {
		eo.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	eo.Hooks = poked(eo.Hooks, h.changed)
	path := filepath.Join(t.TempDir(), "sagad.db")
	db, err := bolt.Open(path, &bolt.Options{NoSync: true, Clock: h.Clock})
	if err != nil {
		t.Fatalf("sagatest: open %s: %v", path, err)
	}
	eng, err := engine.New(db, eo)
	if err != nil {
		_ = db.Close()
		t.Fatalf("sagatest: engine: %v", err)
	}
	h.Engine = eng
	for _, d := range defs {
		if err := eng.Register(d); err != nil {
			t.Fatalf("sagatest: register %s: %v", d.Name, err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- eng.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("sagatest: engine run: %v", err)
		}
		if err := eng.Close(); err != nil {
			t.Errorf("sagatest: close engine: %v", err)
		}
		if err := recovery.CheckFile(path); err != nil {
			t.Errorf("sagatest: the file the test left is inconsistent: %v", err)
		}
	})
	<-eng.Recovered()
	return h
}

// poked returns hooks that call user's, then signal every change on ch
// (for Run, and Explore's runs).
func poked(user engine.Hooks, ch chan struct{}) engine.Hooks {
	poke := func() {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	w := user
	w.SagaStatusChanged = then(user.SagaStatusChanged, poke)
	w.AttemptFinished = then(user.AttemptFinished, poke)
	w.AttemptPending = then(user.AttemptPending, poke)
	w.StepWaiting = then(user.StepWaiting, poke)
	return w
}

// then returns a hook that calls user's, if any, then after.
func then[T any](user func(T), after func()) func(T) {
	return func(v T) {
		if user != nil {
			user(v)
		}
		after()
	}
}

// Run starts a saga of def with input and drives it to its end: whenever
// it waits for a time (a retry's backoff, its deadline, an answer's
// timeout), the clock moves there. Circuit breakers keep the wall clock's
// time: a saga that waits for an open breaker waits for real. It returns
// the saga as it ended, and fails the test if it does not end within
// Patience.
func (h *Harness) Run(def string, input any, opts ...engine.StartOption) *engine.Saga {
	h.t.Helper()
	st, err := h.Engine.Start(context.Background(), def, input, opts...)
	if err != nil {
		h.t.Fatalf("sagatest: start %s: %v", def, err)
	}
	return h.Finish(st.ID)
}

// Finish drives a started saga to its end, as Run does.
func (h *Harness) Finish(id string) *engine.Saga {
	h.t.Helper()
	ctx := context.Background()
	deadline := time.NewTimer(Patience) // real time: how long a test may take
	defer deadline.Stop()
	for {
		s, err := h.Engine.Get(ctx, id)
		if err != nil {
			h.t.Fatalf("sagatest: saga %s: %v", id, err)
		}
		if s.Status.Finished() {
			return s
		}
		skipIdle(h.Clock, s)
		select {
		case <-h.changed:
		case <-deadline.C:
			h.t.Fatalf("sagatest: saga %s did not end within %s: %s, waiting until %s (clock at %s)", id, Patience, s.Status, s.WakeAt, h.Clock.Now())
		case <-time.After(20 * time.Millisecond):
			// The engine's timer for the wake is set after the commit its
			// hook reports: look again shortly.
		}
	}
}

// skipIdle moves clk to the saga's wake time if the saga is idle until
// then (not paused, no attempt in flight) and the engine's timer for it is
// set: a wait passes at once.
func skipIdle(clk *clock.Fake, s *engine.Saga) {
	if wake := s.WakeAt; !wake.IsZero() && wake.After(clk.Now()) && s.Status != saga.StatusPaused &&
		!inFlight(s) && clk.HasWaiter(wake) {
		clk.Set(wake)
	}
}

func inFlight(s *engine.Saga) bool {
	return slices.ContainsFunc(s.Steps, func(st engine.Step) bool { return st.InFlight })
}

// RequireStatus fails the test unless the saga ended in status want.
func RequireStatus(t T, s *engine.Saga, want saga.Status) {
	t.Helper()
	if s.Status != want {
		t.Fatalf("saga %s of %s is %s, want %s; error: %v", s.ID, s.Definition, s.Status, want, s.Err)
	}
}

// Calls returns the attempts of a saga's step functions in the order they
// started, as "step/phase" ("reserve/action", "reserve/compensation"); a
// phase attempted several times (retries) appears each time.
func (h *Harness) Calls(id string) []string {
	h.t.Helper()
	log, err := h.Engine.Log(context.Background(), id)
	if err != nil {
		h.t.Fatalf("sagatest: log of %s: %v", id, err)
	}
	var out []string
	for _, e := range log {
		if e.Event == storage.EventAttemptStarted {
			out = append(out, e.Step+"/"+string(e.Phase))
		}
	}
	return out
}

// RequireCalls fails the test unless the saga's step functions were
// called in this order, each once: retries of one phase count as one call
// here (Calls has them all).
func (h *Harness) RequireCalls(id string, want ...string) {
	h.t.Helper()
	got := slices.Compact(h.Calls(id))
	if !slices.Equal(got, want) {
		h.t.Fatalf("saga %s called %s, want %s", id, strings.Join(got, ", "), strings.Join(want, ", "))
	}
}

// Events returns the names of the outbox events a saga emitted, in order
// (no relay runs in a harness: they stay in the outbox).
func (h *Harness) Events(id string) []string {
	h.t.Helper()
	var out []string
	for _, st := range storage.OutboxStatuses {
		for cursor := ""; ; {
			page, err := h.Engine.OutboxList(context.Background(), engine.OutboxListOptions{Status: st, Cursor: cursor, Limit: 1000})
			if err != nil {
				h.t.Fatalf("sagatest: outbox: %v", err)
			}
			for _, ev := range page.Events {
				if ev.SagaID.String() == id {
					out = append(out, ev.Name)
				}
			}
			if cursor = page.NextCursor; cursor == "" {
				break
			}
		}
	}
	return out
}

// RequireEvents fails the test unless the saga emitted exactly these
// events, in this order.
func (h *Harness) RequireEvents(id string, want ...string) {
	h.t.Helper()
	if got := h.Events(id); !slices.Equal(got, want) {
		h.t.Fatalf("saga %s emitted %v, want %v", id, got, want)
	}
}
