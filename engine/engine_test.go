package engine_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/errors"
	"github.com/oklog/ulid/v2"

	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
	"github.com/sagad/sagad/storage/bolt"
	"github.com/sagad/sagad/storage/bolt/bolttest"
)

var errFlaky = errors.New("flaky participant")

func TestCompensationOrder(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		failAt int    // index of the step whose action fails permanently; -1: none
		noComp []bool // steps without compensation
		want   []string
		status saga.Status
	}{
		{"all succeed", -1, nil, []string{"a0", "a1", "a2", "a3"}, saga.StatusCompleted},
		{"first fails", 0, nil, []string{"a0"}, saga.StatusCompensated},
		{"last fails", 3, nil, []string{"a0", "a1", "a2", "a3", "c2", "c1", "c0"}, saga.StatusCompensated},
		{"middle fails", 2, nil, []string{"a0", "a1", "a2", "c1", "c0"}, saga.StatusCompensated},
		{"step without compensation is skipped", 3, []bool{false, true, false, false},
			[]string{"a0", "a1", "a2", "a3", "c2", "c0"}, saga.StatusCompensated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rec := &recorder{}
			def := &saga.Definition{Name: "four"}
			for i := range 4 {
				a := fmt.Sprintf("a%d", i)
				s := saga.Step{Name: fmt.Sprintf("s%d", i), Action: rec.ok(a, map[string]int{"i": i})}
				if i == tt.failAt {
					s.Action = rec.fail(a, saga.Permanent(errors.New("no")))
				}
				if tt.noComp == nil || !tt.noComp[i] {
					s.Compensation = rec.ok(fmt.Sprintf("c%d", i), nil)
				}
				def.Steps = append(def.Steps, s)
			}
			b := setup(t, setupOpts{defs: []*saga.Definition{def}})
			s := b.run(t, "four", nil)
			if s.Status != tt.status {
				t.Fatalf("status %s, want %s (err %v)", s.Status, tt.status, s.Err)
			}
			if got := rec.list(); !equal(got, tt.want) {
				t.Fatalf("calls %v, want %v", got, tt.want)
			}
			if tt.failAt >= 0 {
				if !saga.IsPermanent(s.Err) {
					t.Fatalf("saga error %v should keep its permanent mark through storage", s.Err)
				}
				if st := s.Steps[tt.failAt].Status; st != saga.StepFailed {
					t.Fatalf("failing step status %s, want failed", st)
				}
				for i := tt.failAt + 1; i < 4; i++ {
					if st := s.Steps[i].Status; st != saga.StepSkipped {
						t.Fatalf("step %d after the failure is %s, want skipped", i, st)
					}
				}
			}
			log, err := b.eng.Log(context.Background(), s.ID)
			if err != nil || len(log) == 0 {
				t.Fatalf("log: %d entries, %v", len(log), err)
			}
			for i, e := range log {
				if e.Seq != uint32(i+1) {
					t.Fatalf("log entry %d has seq %d: the log must be gap-free and ordered", i, e.Seq)
				}
			}
		})
	}
}

func TestRetries(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		failures  int   // failures before success
		err       error // the failure
		attempts  int   // MaxAttempts
		wantCalls int
		status    saga.Status
	}{
		{"retry then succeed", 2, errFlaky, 3, 3, saga.StatusCompleted},
		{"attempts exhausted", 100, errFlaky, 3, 3, saga.StatusCompensated},
		{"permanent is not retried", 100, saga.Permanent(errFlaky), 5, 1, saga.StatusCompensated},
		{"wrapped permanent is not retried", 100, errors.Wrap(saga.Permanent(errFlaky), "ctx"), 5, 1, saga.StatusCompensated},
		{"deadline exceeded is retried", 2, context.DeadlineExceeded, 3, 3, saga.StatusCompleted},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var calls atomic.Int32
			keys := map[string]bool{}
			var mu sync.Mutex
			rec := &recorder{}
			def := &saga.Definition{Name: "retry", Steps: []saga.Step{
				{Name: "first", Action: rec.ok("first", nil), Compensation: rec.ok("undo-first", nil)},
				{Name: "flaky", Retry: fastRetry(tt.attempts), Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
					n := calls.Add(1)
					mu.Lock()
					keys[c.IdempotencyKey] = true
					mu.Unlock()
					if c.Attempt != int(n) {
						return nil, saga.Permanent(errors.Newf("attempt %d on call %d", c.Attempt, n))
					}
					if int(n) <= tt.failures {
						return nil, tt.err
					}
					return nil, nil
				}},
			}}
			b := setup(t, setupOpts{defs: []*saga.Definition{def}})
			s := b.run(t, "retry", nil)
			if s.Status != tt.status {
				t.Fatalf("status %s, want %s (err %v)", s.Status, tt.status, s.Err)
			}
			if got := int(calls.Load()); got != tt.wantCalls {
				t.Fatalf("%d calls, want %d", got, tt.wantCalls)
			}
			if s.Steps[1].Attempts != tt.wantCalls {
				t.Fatalf("recorded %d attempts, want %d", s.Steps[1].Attempts, tt.wantCalls)
			}
			if len(keys) != 1 {
				t.Fatalf("idempotency keys %v: want one key across retries", keys)
			}
			if tt.status == saga.StatusCompensated && !equal(rec.list(), []string{"first", "undo-first"}) {
				t.Fatalf("calls %v: want the first step compensated", rec.list())
			}
		})
	}
}

func TestAttemptTimeoutRetried(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	def := &saga.Definition{Name: "slow", Steps: []saga.Step{{
		Name: "slow", Timeout: 20 * time.Millisecond, Retry: fastRetry(3),
		Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
			if calls.Add(1) == 1 {
				<-ctx.Done() // hang until the attempt's deadline
				return nil, ctx.Err()
			}
			return json.RawMessage(`{"ok":true}`), nil
		},
	}}}
	b := setup(t, setupOpts{defs: []*saga.Definition{def}})
	s := b.run(t, "slow", nil)
	if s.Status != saga.StatusCompleted || calls.Load() != 2 {
		t.Fatalf("status %s after %d calls, want completed after 2 (a timed-out attempt is retried)", s.Status, calls.Load())
	}
	log, _ := b.eng.Log(context.Background(), s.ID)
	found := false
	for _, e := range log {
		if e.Event == storage.EventAttemptFailed && strings.Contains(e.Error, "deadline exceeded") {
			found = true
		}
	}
	if !found {
		t.Fatalf("log has no failed attempt with a deadline error: %+v", log)
	}
}

func TestStepsSeeEarlierData(t *testing.T) {
	t.Parallel()
	type reservation struct{ Sku string }
	var seen reservation
	var input map[string]string
	def := &saga.Definition{Name: "data", Steps: []saga.Step{
		{Name: "reserve", Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
			return json.Marshal(reservation{Sku: "abc"})
		}},
		{Name: "charge", Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
			if err := c.DecodeInput(&input); err != nil {
				return nil, saga.Permanent(err)
			}
			return nil, c.Output("reserve", &seen)
		}},
	}}
	b := setup(t, setupOpts{defs: []*saga.Definition{def}})
	s := b.run(t, "data", map[string]string{"order": "42"})
	if s.Status != saga.StatusCompleted || seen.Sku != "abc" || input["order"] != "42" {
		t.Fatalf("status %s, step 2 saw %+v and input %v", s.Status, seen, input)
	}
	if string(s.Data["reserve"]) != `{"Sku":"abc"}` {
		t.Fatalf("stored data %s", s.Data["reserve"])
	}
}

func TestFallback(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		actionErr   error
		fallbackErr error
		wantCalls   []string
		status      saga.Status
	}{
		{"after retries", errFlaky, nil, []string{"a", "a", "fb", "next"}, saga.StatusCompleted},
		{"after permanent error", saga.Permanent(errFlaky), nil, []string{"a", "fb", "next"}, saga.StatusCompleted},
		{"fallback fails", errFlaky, errors.New("fallback down"), []string{"a", "a", "fb", "undo-first"}, saga.StatusCompensated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rec := &recorder{}
			fb := rec.ok("fb", map[string]string{"via": "fallback"})
			if tt.fallbackErr != nil {
				fb = rec.fail("fb", tt.fallbackErr)
			}
			def := &saga.Definition{Name: "fb", Steps: []saga.Step{
				{Name: "first", Action: rec.ok("first", nil), Compensation: rec.ok("undo-first", nil)},
				{Name: "main", Retry: fastRetry(2), Action: rec.fail("a", tt.actionErr), Fallback: fb},
				{Name: "next", Action: rec.ok("next", nil)},
			}}
			b := setup(t, setupOpts{defs: []*saga.Definition{def}})
			s := b.run(t, "fb", nil)
			if s.Status != tt.status {
				t.Fatalf("status %s, want %s (%v)", s.Status, tt.status, s.Err)
			}
			if got := rec.list()[1:]; !equal(got, tt.wantCalls) {
				t.Fatalf("calls %v, want %v", got, tt.wantCalls)
			}
			if tt.status == saga.StatusCompleted {
				if !s.Steps[1].FallbackUsed || s.Steps[1].Status != saga.StepSucceeded {
					t.Fatalf("step %+v: want succeeded with FallbackUsed", s.Steps[1])
				}
				if string(s.Data["main"]) != `{"via":"fallback"}` {
					t.Fatalf("fallback output not stored: %s", s.Data["main"])
				}
			}
			keys := rec.keys["fb"]
			if len(keys) != 1 || !strings.HasSuffix(keys[0], "/main/fallback") {
				t.Fatalf("fallback keys %v: want one key ending in /main/fallback", keys)
			}
		})
	}
}

func TestBreakerSharedAcrossDefinitions(t *testing.T) {
	t.Parallel()
	var participant atomic.Int32
	down := func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
		participant.Add(1)
		return nil, errFlaky
	}
	br := saga.BreakerPolicy{Name: "payments", Failures: 2, OpenFor: time.Hour}
	rec := &recorder{}
	a := &saga.Definition{Name: "a", Steps: []saga.Step{{Name: "pay", Action: down, Retry: fastRetry(1), Breaker: br}}}
	withFB := &saga.Definition{Name: "b", Steps: []saga.Step{{Name: "pay", Action: down, Retry: fastRetry(1), Breaker: br,
		Fallback: rec.ok("fallback", nil)}}}
	noFB := &saga.Definition{Name: "c", Steps: []saga.Step{{Name: "pay", Action: down, Retry: fastRetry(5), Breaker: br}}}
	var opened atomic.Int32
	b := setup(t, setupOpts{defs: []*saga.Definition{a, withFB, noFB}, opts: engine.Options{Hooks: engine.Hooks{
		BreakerStateChanged: func(name, from, to string) {
			if name == "payments" && to == "open" {
				opened.Add(1)
			}
		}}}})
	for range 2 {
		if s := b.run(t, "a", nil); s.Status != saga.StatusCompensated {
			t.Fatalf("status %s", s.Status)
		}
	}
	if participant.Load() != 2 || opened.Load() != 1 {
		t.Fatalf("participant called %d times, breaker opened %d times: want 2 and 1", participant.Load(), opened.Load())
	}
	// Another definition naming the breaker fails fast to its fallback.
	s := b.run(t, "b", nil)
	if s.Status != saga.StatusCompleted || !s.Steps[0].FallbackUsed || participant.Load() != 2 {
		t.Fatalf("status %s, fallback %v, participant calls %d: want the fallback without calling the participant",
			s.Status, s.Steps[0].FallbackUsed, participant.Load())
	}
	// A step without fallback waits for the half-open time without burning attempts.
	st, err := b.eng.Start(context.Background(), "c", nil)
	if err != nil {
		t.Fatal(err)
	}
	var got *engine.Saga
	for i := 0; i < 1000; i++ { // wait for the saga to be parked on the breaker's timer
		got, _ = b.eng.Get(context.Background(), st.ID)
		if !got.WakeAt.IsZero() {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if got.WakeAt.Before(time.Now().Add(50*time.Minute)) || got.Steps[0].Attempts != 0 || participant.Load() != 2 {
		t.Fatalf("wake %v, attempts %d, participant calls %d: want a wait of about an hour and no attempt",
			got.WakeAt, got.Steps[0].Attempts, participant.Load())
	}
	var open bool
	for _, bs := range b.eng.Breakers() {
		open = open || (bs.Name == "payments" && bs.State == "open" && bs.OpenUntil.Equal(got.WakeAt))
	}
	if !open {
		t.Fatalf("breakers %+v: want payments open until %v", b.eng.Breakers(), got.WakeAt)
	}
}

func TestBreakerHalfOpenThenCloses(t *testing.T) {
	t.Parallel()
	var healthy atomic.Bool
	var calls atomic.Int32
	br := saga.BreakerPolicy{Name: "inventory", Failures: 1, OpenFor: 50 * time.Millisecond}
	def := &saga.Definition{Name: "h", Steps: []saga.Step{{Name: "s", Breaker: br, Retry: fastRetry(2),
		Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
			calls.Add(1)
			if !healthy.Load() {
				return nil, errFlaky
			}
			return nil, nil
		}}}}
	var mu sync.Mutex
	var transitions []string
	opened := make(chan struct{})
	b := setup(t, setupOpts{defs: []*saga.Definition{def}, opts: engine.Options{Hooks: engine.Hooks{
		BreakerStateChanged: func(name, from, to string) {
			mu.Lock()
			transitions = append(transitions, from+">"+to)
			mu.Unlock()
			if to == "open" {
				close(opened)
			}
		}}}})
	st, err := b.eng.Start(context.Background(), "h", nil)
	if err != nil {
		t.Fatal(err)
	}
	// The first attempt opens the breaker; the retry (1ms later by policy)
	// must wait for the half-open time instead, and then succeeds.
	<-opened
	healthy.Store(true)
	s := b.wait(t, st.ID)
	if s.Status != saga.StatusCompleted || calls.Load() != 2 || s.Steps[0].Attempts != 2 {
		t.Fatalf("status %s after %d calls and %d recorded attempts: want completed after 2", s.Status, calls.Load(), s.Steps[0].Attempts)
	}
	if d := s.UpdatedAt.Sub(s.CreatedAt); d < 50*time.Millisecond {
		t.Fatalf("saga finished %s after it started: the retry did not wait for the breaker to half-open", d)
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []string{"closed>open", "open>half-open", "half-open>closed"}; !equal(transitions, want) {
		t.Fatalf("transitions %v, want %v", transitions, want)
	}
}

func TestBreakerOpenSurvivesRestart(t *testing.T) {
	t.Parallel()
	path := t.TempDir() + "/sagad.db"
	var participant atomic.Int32
	br := saga.BreakerPolicy{Name: "shipping", Failures: 1, OpenFor: time.Hour}
	def := func(fb saga.Func) *saga.Definition {
		return &saga.Definition{Name: "ship", Steps: []saga.Step{{Name: "ship", Breaker: br, Retry: fastRetry(1), Fallback: fb,
			Action: func(context.Context, *saga.Call) (json.RawMessage, error) {
				participant.Add(1)
				return nil, errFlaky
			}}}}
	}
	{
		b := setupNoCleanup(t, path, def(nil), true)
		if s := b.run(t, "ship", nil); s.Status != saga.StatusCompensated {
			t.Fatalf("status %s", s.Status)
		}
		b.close(t)
	}
	rec := &recorder{}
	b := setup(t, setupOpts{path: path, defs: []*saga.Definition{def(rec.ok("fb", nil))}})
	var state string
	for _, bs := range b.eng.Breakers() {
		if bs.Name == "shipping" {
			state = bs.State
		}
	}
	if state != "open" {
		t.Fatalf("breaker after restart is %q, want open", state)
	}
	s := b.run(t, "ship", nil)
	if s.Status != saga.StatusCompleted || participant.Load() != 1 || !equal(rec.list(), []string{"fb"}) {
		t.Fatalf("status %s, participant calls %d, calls %v: want the fallback with the breaker still open",
			s.Status, participant.Load(), rec.list())
	}
}

func TestSagaDeadline(t *testing.T) {
	t.Parallel()
	rec := &recorder{}
	def := &saga.Definition{Name: "deadline", Timeout: 50 * time.Millisecond, Steps: []saga.Step{
		{Name: "quick", Action: rec.ok("quick", nil), Compensation: rec.ok("undo-quick", nil)},
		{Name: "hang", Retry: saga.RetryPolicy{MaxAttempts: -1, InitialInterval: time.Millisecond, MaxInterval: time.Millisecond},
			Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
				<-ctx.Done()
				return nil, ctx.Err()
			}},
		{Name: "never", Action: rec.ok("never", nil)},
	}}
	b := setup(t, setupOpts{defs: []*saga.Definition{def}})
	s := b.run(t, "deadline", nil)
	if s.Status != saga.StatusCompensated || !errors.Is(s.Err, engine.ErrDeadline) {
		t.Fatalf("status %s, err %v: want compensated because of the deadline", s.Status, s.Err)
	}
	if got := rec.list(); !equal(got, []string{"quick", "undo-quick"}) {
		t.Fatalf("calls %v", got)
	}
}

func TestIdempotentStart(t *testing.T) {
	t.Parallel()
	var runs atomic.Int32
	def := &saga.Definition{Name: "idem", Steps: []saga.Step{{Name: "s", Action: func(context.Context, *saga.Call) (json.RawMessage, error) {
		runs.Add(1)
		return nil, nil
	}}}}
	b := setup(t, setupOpts{defs: []*saga.Definition{def}})
	ids := make([]engine.Started, 16)
	var wg sync.WaitGroup
	for i := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := b.eng.Start(context.Background(), "idem", nil, engine.WithIdempotencyKey("order-42"))
			if err != nil {
				t.Error(err)
			}
			ids[i] = st
		}()
	}
	wg.Wait()
	fresh := 0
	for _, st := range ids {
		if st.ID != ids[0].ID {
			t.Fatalf("ids %v: want one saga", ids)
		}
		if !st.Duplicate {
			fresh++
		}
	}
	if fresh != 1 {
		t.Fatalf("%d starts reported a new saga, want 1", fresh)
	}
	b.wait(t, ids[0].ID)
	again, err := b.eng.Start(context.Background(), "idem", nil, engine.WithIdempotencyKey("order-42"))
	if err != nil || !again.Duplicate || again.ID != ids[0].ID {
		t.Fatalf("start after finish: %+v, %v", again, err)
	}
	if runs.Load() != 1 {
		t.Fatalf("step ran %d times, want 1", runs.Load())
	}
}

func TestAbort(t *testing.T) {
	t.Parallel()
	t.Run("while a step runs", func(t *testing.T) {
		t.Parallel()
		rec := &recorder{}
		entered, release := make(chan struct{}), make(chan struct{})
		def := &saga.Definition{Name: "abort", Steps: []saga.Step{
			{Name: "one", Action: rec.ok("one", nil), Compensation: rec.ok("undo-one", nil)},
			{Name: "two", Compensation: rec.ok("undo-two", nil), Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
				close(entered)
				<-release
				return nil, nil
			}},
			{Name: "three", Action: rec.ok("three", nil)},
		}}
		b := setup(t, setupOpts{defs: []*saga.Definition{def}})
		st, _ := b.eng.Start(context.Background(), "abort", nil)
		<-entered
		if err := b.eng.Abort(context.Background(), st.ID); err != nil {
			t.Fatal(err)
		}
		close(release)
		s := b.wait(t, st.ID)
		if s.Status != saga.StatusCompensated || !errors.Is(s.Err, engine.ErrAborted) {
			t.Fatalf("status %s, err %v", s.Status, s.Err)
		}
		if got := rec.list(); !equal(got, []string{"one", "undo-two", "undo-one"}) {
			t.Fatalf("calls %v: the step in flight finishes and is compensated, later steps never run", got)
		}
		if err := b.eng.Abort(context.Background(), st.ID); !errors.Is(err, engine.ErrConflict) {
			t.Fatalf("abort of a finished saga: %v, want ErrConflict", err)
		}
	})
	t.Run("while waiting for a retry", func(t *testing.T) {
		t.Parallel()
		rec := &recorder{}
		failed := make(chan struct{}, 1)
		def := &saga.Definition{Name: "abort", Steps: []saga.Step{
			{Name: "one", Action: rec.ok("one", nil), Compensation: rec.ok("undo-one", nil)},
			{Name: "two", Retry: saga.RetryPolicy{InitialInterval: time.Hour, MaxInterval: time.Hour},
				Action: func(context.Context, *saga.Call) (json.RawMessage, error) {
					failed <- struct{}{}
					return nil, errFlaky
				}},
		}}
		retried := make(chan struct{})
		b := setup(t, setupOpts{defs: []*saga.Definition{def}, opts: engine.Options{Hooks: engine.Hooks{
			AttemptFinished: func(a engine.AttemptInfo) {
				if a.Retry {
					close(retried) // the hour-long retry is committed
				}
			}}}})
		st, _ := b.eng.Start(context.Background(), "abort", nil)
		<-failed
		<-retried
		if err := b.eng.Abort(context.Background(), st.ID); err != nil {
			t.Fatal(err)
		}
		s := b.wait(t, st.ID)
		if s.Status != saga.StatusCompensated || !equal(rec.list(), []string{"one", "undo-one"}) {
			t.Fatalf("status %s, calls %v", s.Status, rec.list())
		}
	})
}

func TestPivot(t *testing.T) {
	t.Parallel()
	rec := &recorder{}
	var healthy atomic.Bool
	def := &saga.Definition{Name: "pivot", Steps: []saga.Step{
		{Name: "reserve", Action: rec.ok("reserve", nil), Compensation: rec.ok("release", nil)},
		{Name: "charge", Pivot: true, Action: rec.ok("charge", nil), Compensation: rec.ok("refund", nil)},
		{Name: "ship", Retry: fastRetry(2), Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
			rec.add("ship", c)
			if !healthy.Load() {
				return nil, errFlaky
			}
			return nil, nil
		}},
	}}
	b := setup(t, setupOpts{defs: []*saga.Definition{def}})
	s := b.run(t, "pivot", nil)
	if s.Status != saga.StatusFailed {
		t.Fatalf("status %s, want failed: a step after the pivot is never compensated", s.Status)
	}
	if got := rec.list(); !equal(got, []string{"reserve", "charge", "ship", "ship"}) {
		t.Fatalf("calls %v", got)
	}
	if err := b.eng.Abort(context.Background(), s.ID); !errors.Is(err, engine.ErrConflict) {
		t.Fatalf("abort of a failed saga: %v", err)
	}
	healthy.Store(true)
	if err := b.eng.Retry(context.Background(), s.ID); err != nil {
		t.Fatal(err)
	}
	s = b.wait(t, s.ID)
	if s.Status != saga.StatusCompleted || s.Err != nil {
		t.Fatalf("after retry: %s (%v), want completed without an error", s.Status, s.Err)
	}
}

func TestCompensationFailsThenRetry(t *testing.T) {
	t.Parallel()
	var fixed atomic.Bool
	rec := &recorder{}
	def := &saga.Definition{Name: "stuck", Steps: []saga.Step{
		{Name: "one", Action: rec.ok("one", nil), Compensation: rec.ok("undo-one", nil)},
		{Name: "two", Action: rec.ok("two", nil), CompensationRetry: fastRetry(2),
			Compensation: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
				rec.add("undo-two", c)
				if !fixed.Load() {
					return nil, errFlaky
				}
				return nil, nil
			}},
		{Name: "three", Action: rec.fail("three", saga.Permanent(errFlaky))},
	}}
	var logs syncBuffer
	b := setup(t, setupOpts{defs: []*saga.Definition{def}, opts: engine.Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))}})
	s := b.run(t, "stuck", nil)
	if s.Status != saga.StatusFailed || s.Steps[1].CompensationAttempts != 2 {
		t.Fatalf("status %s, compensation attempts %d: want failed after 2", s.Status, s.Steps[1].CompensationAttempts)
	}
	if out := logs.String(); !strings.Contains(out, `level=WARN msg="saga failed`) || !strings.Contains(out, "saga="+s.ID) ||
		!strings.Contains(out, "step=two") || !strings.Contains(out, "definition=stuck") {
		t.Errorf("a failed saga is not logged at WARN with its id, definition and step:\n%s", out)
	}
	page, err := b.eng.List(context.Background(), engine.ListOptions{Status: saga.StatusFailed})
	if err != nil || len(page.Sagas) != 1 || page.Sagas[0].ID != s.ID {
		t.Fatalf("failed sagas listed: %v, %v", page, err)
	}
	if err := b.eng.Retry(context.Background(), "01ARZ3NDEKTSV4RRFFQ69G5FAV"); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("retry of an unknown saga: %v", err)
	}
	fixed.Store(true)
	if err := b.eng.Retry(context.Background(), s.ID); err != nil {
		t.Fatal(err)
	}
	s = b.wait(t, s.ID)
	if s.Status != saga.StatusCompensated {
		t.Fatalf("after retry: %s", s.Status)
	}
	if got := rec.list(); !equal(got, []string{"one", "two", "three", "undo-two", "undo-two", "undo-two", "undo-one"}) {
		t.Fatalf("calls %v", got)
	}
	if err := b.eng.Retry(context.Background(), s.ID); !errors.Is(err, engine.ErrConflict) {
		t.Fatalf("retry of a compensated saga: %v, want ErrConflict", err)
	}
}

func TestPanicInStepIsPermanent(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	def := &saga.Definition{Name: "panic", Steps: []saga.Step{{Name: "boom", Retry: fastRetry(5),
		Action: func(context.Context, *saga.Call) (json.RawMessage, error) { calls.Add(1); panic("boom") }}}}
	b := setup(t, setupOpts{defs: []*saga.Definition{def}})
	s := b.run(t, "panic", nil)
	if s.Status != saga.StatusCompensated || calls.Load() != 1 || !strings.Contains(s.Err.Error(), "panicked") {
		t.Fatalf("status %s after %d calls, err %v", s.Status, calls.Load(), s.Err)
	}
}

func TestStartErrors(t *testing.T) {
	t.Parallel()
	def := &saga.Definition{Name: "ok", Steps: []saga.Step{{Name: "s", Action: (&recorder{}).ok("s", nil)}}}
	b := setup(t, setupOpts{defs: []*saga.Definition{def}})
	ctx := context.Background()
	if _, err := b.eng.Start(ctx, "nope", nil); !errors.Is(err, engine.ErrUnknownDefinition) {
		t.Errorf("unknown definition: %v", err)
	}
	if _, err := b.eng.Start(ctx, "ok", make(chan int)); !errors.Is(err, engine.ErrInvalidInput) {
		t.Errorf("unencodable input: %v", err)
	}
	if _, err := b.eng.Start(ctx, "ok", json.RawMessage(`{bad`)); !errors.Is(err, engine.ErrInvalidInput) {
		t.Errorf("invalid raw JSON: %v", err)
	}
	if _, err := b.eng.Get(ctx, "not-an-id"); !errors.Is(err, engine.ErrInvalidID) {
		t.Errorf("bad id: %v", err)
	}
	if _, err := b.eng.Get(ctx, "01ARZ3NDEKTSV4RRFFQ69G5FAV"); !errors.Is(err, engine.ErrNotFound) {
		t.Errorf("unknown id: %v", err)
	}
	if err := b.eng.Register(&saga.Definition{Name: "bad name!"}); !errors.Is(err, saga.ErrInvalidDefinition) {
		t.Errorf("invalid definition: %v", err)
	}
	conflict := &saga.Definition{Name: "br", Steps: []saga.Step{{Name: "s", Action: (&recorder{}).ok("s", nil),
		Breaker: saga.BreakerPolicy{Name: "x", Failures: 1}}}}
	if err := b.eng.Register(conflict); err != nil {
		t.Fatal(err)
	}
	conflict2 := &saga.Definition{Name: "br2", Steps: []saga.Step{{Name: "s", Action: (&recorder{}).ok("s", nil),
		Breaker: saga.BreakerPolicy{Name: "x", Failures: 2}}}}
	if err := b.eng.Register(conflict2); !errors.Is(err, saga.ErrInvalidDefinition) || !strings.Contains(err.Error(), `"x"`) {
		t.Errorf("breaker reused with other settings: %v", err)
	}
	// A refused definition creates none of its breakers: "y", named before
	// the conflicting "x", stays free for another definition's settings.
	refused := &saga.Definition{Name: "br3", Steps: []saga.Step{
		{Name: "s", Action: (&recorder{}).ok("s", nil), Breaker: saga.BreakerPolicy{Name: "y", Failures: 3}},
		{Name: "t", Action: (&recorder{}).ok("t", nil), Breaker: saga.BreakerPolicy{Name: "x", Failures: 7}}}}
	if err := b.eng.Register(refused); !errors.Is(err, saga.ErrInvalidDefinition) || !strings.Contains(err.Error(), `"x"`) {
		t.Errorf("breaker reused with other settings after a new one: %v", err)
	}
	free := &saga.Definition{Name: "br4", Steps: []saga.Step{{Name: "s", Action: (&recorder{}).ok("s", nil),
		Breaker: saga.BreakerPolicy{Name: "y", Failures: 9}}}}
	if err := b.eng.Register(free); err != nil {
		t.Errorf("breaker of a refused definition was kept: %v", err)
	}
	// Two steps of one definition may not name one breaker with two settings.
	twice := &saga.Definition{Name: "br5", Steps: []saga.Step{
		{Name: "s", Action: (&recorder{}).ok("s", nil), Breaker: saga.BreakerPolicy{Name: "z", Failures: 1}},
		{Name: "t", Action: (&recorder{}).ok("t", nil), Breaker: saga.BreakerPolicy{Name: "z", Failures: 2}}}}
	if err := b.eng.Register(twice); !errors.Is(err, saga.ErrInvalidDefinition) || !strings.Contains(err.Error(), "earlier step") {
		t.Errorf("one breaker with two settings in one definition: %v", err)
	}
}

func TestOpenLockedFile(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	start := time.Now()
	_, err := engine.Open(b.path, engine.Options{}) // waits 1s for the lock
	if !errors.Is(err, bolt.ErrLocked) {
		t.Fatalf("second open: %v, want ErrLocked", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("locked open took %s", d)
	}
	if !strings.Contains(errors.FlattenHints(err), "another process") {
		t.Fatalf("hint %q should tell the operator what to do", errors.FlattenHints(err))
	}
}

func TestStartBeforeRunAndList(t *testing.T) {
	t.Parallel()
	path := t.TempDir() + "/sagad.db"
	rec := &recorder{}
	def := &saga.Definition{Name: "later", Steps: []saga.Step{{Name: "s", Action: rec.ok("s", nil)}}}
	b := setupNoCleanup(t, path, def, false)
	var ids []string
	for range 25 {
		st, err := b.eng.Start(context.Background(), "later", nil)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, st.ID)
	}
	b.close(t) // never ran: the sagas wait in the due index
	if n := len(rec.list()); n != 0 {
		t.Fatalf("%d steps ran before Run", n)
	}
	b2 := setup(t, setupOpts{path: path, defs: []*saga.Definition{def}})
	for _, id := range ids {
		if s := b2.wait(t, id); s.Status != saga.StatusCompleted {
			t.Fatalf("saga %s: %s", id, s.Status)
		}
	}
	// Page through them: newest first, no gaps, no duplicates.
	seen := map[string]bool{}
	cursor := ""
	for pages := 0; ; pages++ {
		p, err := b2.eng.List(context.Background(), engine.ListOptions{Limit: 10, Cursor: cursor, Status: saga.StatusCompleted})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range p.Sagas {
			if seen[s.ID] {
				t.Fatalf("saga %s listed twice", s.ID)
			}
			seen[s.ID] = true
		}
		if cursor = p.NextCursor; cursor == "" {
			if pages != 2 {
				t.Fatalf("%d pages, want 3", pages+1)
			}
			break
		}
	}
	if len(seen) != 25 {
		t.Fatalf("listed %d sagas, want 25", len(seen))
	}
}

func TestDurableBackoffAcrossRestart(t *testing.T) {
	t.Parallel()
	path := t.TempDir() + "/sagad.db"
	var calls atomic.Int32
	def := &saga.Definition{Name: "backoff", Steps: []saga.Step{{Name: "s",
		Retry: saga.RetryPolicy{InitialInterval: time.Hour, MaxInterval: time.Hour, Jitter: -1},
		Action: func(context.Context, *saga.Call) (json.RawMessage, error) {
			calls.Add(1)
			return nil, errFlaky
		}}}}
	retried := make(chan struct{})
	b := setupNoCleanup(t, path, def, true, engine.Hooks{AttemptFinished: func(a engine.AttemptInfo) {
		if a.Retry {
			close(retried)
		}
	}})
	st, _ := b.eng.Start(context.Background(), "backoff", nil)
	<-retried
	before, err := b.eng.Get(context.Background(), st.ID)
	if err != nil {
		t.Fatal(err)
	}
	b.close(t)
	b2 := setup(t, setupOpts{path: path, defs: []*saga.Definition{def}})
	after, err := b2.eng.Get(context.Background(), st.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !after.WakeAt.Equal(before.WakeAt) || after.WakeAt.Before(time.Now().Add(50*time.Minute)) {
		t.Fatalf("wake time %v after restart, %v before: want the stored hour-long backoff kept", after.WakeAt, before.WakeAt)
	}
	if after.Status != saga.StatusRunning || after.Steps[0].Attempts != 1 || calls.Load() != 1 {
		t.Fatalf("status %s, attempts %d, calls %d: want one attempt and a waiting saga", after.Status, after.Steps[0].Attempts, calls.Load())
	}
}

func TestFingerprintMismatchParks(t *testing.T) {
	t.Parallel()
	path := t.TempDir() + "/sagad.db"
	rec := &recorder{}
	v1 := &saga.Definition{Name: "order", Steps: []saga.Step{
		{Name: "reserve", Action: rec.ok("reserve", nil)}, {Name: "charge", Action: rec.ok("charge", nil)}}}
	v2 := &saga.Definition{Name: "order", Steps: []saga.Step{
		{Name: "charge", Action: rec.ok("charge-v2", nil)}, {Name: "reserve", Action: rec.ok("reserve-v2", nil)}}}
	b := setupNoCleanup(t, path, v1, false)
	st, _ := b.eng.Start(context.Background(), "order", nil) // not run: waits for Run
	b.close(t)

	b2 := setupNoCleanup(t, path, v2, true)
	var s *engine.Saga
	for i := 0; i < 2000; i++ {
		s, _ = b2.eng.Get(context.Background(), st.ID)
		if s.Parked != "" {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if s.Parked == "" || s.Status != saga.StatusRunning || len(rec.list()) != 0 {
		t.Fatalf("parked %q, status %s, calls %v: want a parked saga and no step run by the wrong code", s.Parked, s.Status, rec.list())
	}
	if !strings.Contains(s.Parked, v1.Fingerprint()) {
		t.Fatalf("parked reason %q should name the missing version %s", s.Parked, v1.Fingerprint())
	}
	// Registering the version the saga started with resumes it.
	if err := b2.eng.Register(v1); err != nil {
		t.Fatal(err)
	}
	s = b2.wait(t, st.ID)
	if s.Status != saga.StatusCompleted || !equal(rec.list(), []string{"reserve", "charge"}) {
		t.Fatalf("status %s, calls %v", s.Status, rec.list())
	}
	b2.close(t)
}

func TestPrune(t *testing.T) {
	t.Parallel()
	rec := &recorder{}
	def := &saga.Definition{Name: "p", Steps: []saga.Step{
		{Name: "a", Action: rec.ok("a", nil), CompensationRetry: fastRetry(1),
			Compensation: rec.fail("undo", errFlaky)},
		{Name: "b", Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
			var in struct{ Fail bool }
			_ = c.DecodeInput(&in)
			if in.Fail {
				return nil, saga.Permanent(errFlaky)
			}
			return nil, nil
		}},
	}}
	b := setup(t, setupOpts{defs: []*saga.Definition{def}})
	done := b.run(t, "p", map[string]bool{"Fail": false}, engine.WithIdempotencyKey("k1"))
	failed := b.run(t, "p", map[string]bool{"Fail": true})
	if done.Status != saga.StatusCompleted || failed.Status != saga.StatusFailed {
		t.Fatalf("statuses %s %s", done.Status, failed.Status)
	}
	n, err := b.eng.Prune(context.Background(), time.Now().Add(time.Second))
	if err != nil || n != 1 {
		t.Fatalf("pruned %d (%v), want 1: failed sagas are kept", n, err)
	}
	if _, err := b.eng.Get(context.Background(), done.ID); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("pruned saga still there: %v", err)
	}
	if _, err := b.eng.Get(context.Background(), failed.ID); err != nil {
		t.Fatalf("failed saga pruned: %v", err)
	}
	st, err := b.eng.Start(context.Background(), "p", map[string]bool{}, engine.WithIdempotencyKey("k1"))
	if err != nil || st.Duplicate {
		t.Fatalf("start with a pruned saga's key: %+v %v, want a new saga", st, err)
	}
	b.wait(t, st.ID)
}

func TestStatusHooks(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var got []string
	def := &saga.Definition{Name: "hooks", Steps: []saga.Step{
		{Name: "a", Action: (&recorder{}).ok("a", nil), Compensation: (&recorder{}).ok("ua", nil)},
		{Name: "b", Action: (&recorder{}).fail("b", saga.Permanent(errFlaky))}}}
	b := setup(t, setupOpts{defs: []*saga.Definition{def}, opts: engine.Options{Hooks: engine.Hooks{
		SagaStatusChanged: func(c engine.StatusChange) {
			mu.Lock()
			got = append(got, string(c.From)+">"+string(c.To))
			mu.Unlock()
		}}}})
	b.run(t, "hooks", nil)
	mu.Lock()
	defer mu.Unlock()
	if want := []string{">running", "running>compensating", "compensating>compensated"}; !equal(got, want) {
		t.Fatalf("status changes %v, want %v", got, want)
	}
}

func TestConcurrencyLimit(t *testing.T) {
	t.Parallel()
	const limit, sagas = 2, 40
	var running, peak atomic.Int32
	def := &saga.Definition{Name: "limited", Steps: []saga.Step{{Name: "s",
		Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
			n := running.Add(1)
			defer running.Add(-1)
			for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
			}
			time.Sleep(time.Millisecond) // hold the slot so sagas overlap
			return nil, nil
		}}}}
	b := setup(t, setupOpts{defs: []*saga.Definition{def}, opts: engine.Options{Concurrency: limit}})
	ids := make([]string, 0, sagas)
	for range sagas {
		st, err := b.eng.Start(context.Background(), "limited", nil)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, st.ID)
	}
	// More sagas than slots, started and finished twice over: a slot that
	// leaks would leave the later ones waiting forever.
	for _, id := range ids {
		if s := b.wait(t, id); s.Status != saga.StatusCompleted {
			t.Fatalf("saga %s: %s", id, s.Status)
		}
	}
	for range sagas {
		b.run(t, "limited", nil)
	}
	if p := peak.Load(); p > limit {
		t.Fatalf("%d steps ran at once, limit %d", p, limit)
	}
}

func TestCloseIsGraceful(t *testing.T) {
	t.Parallel()
	path := t.TempDir() + "/sagad.db"
	var mu sync.Mutex
	type seen struct {
		IdempotencyKey string
		Attempt        int
	}
	var calls []seen
	entered := make(chan struct{}, 1)
	def := &saga.Definition{Name: "slow", Steps: []saga.Step{{Name: "s", Timeout: time.Hour,
		Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
			mu.Lock()
			calls = append(calls, seen{c.IdempotencyKey, c.Attempt})
			first := len(calls) == 1
			mu.Unlock()
			if first {
				entered <- struct{}{}
				<-ctx.Done() // outlives the shutdown grace
				return nil, ctx.Err()
			}
			return nil, nil
		}}}}
	o := engine.Options{ShutdownGrace: 20 * time.Millisecond}
	eng := openEngine(t, path, o, def)
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- eng.Run(ctx) }()
	st, err := eng.Start(context.Background(), "slow", nil)
	if err != nil {
		t.Fatal(err)
	}
	<-entered
	cancel()
	if err := <-runDone; err != nil {
		t.Fatalf("Run returned %v after its context ended, want nil", err)
	}
	if err := eng.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := eng.Start(context.Background(), "slow", nil); !errors.Is(err, engine.ErrClosed) {
		t.Fatalf("Start after Close: %v, want ErrClosed", err)
	}

	// The cut-off attempt was not recorded as failed: it is in doubt, and
	// the next Run re-runs it with the same key and attempt number.
	var logs bytes.Buffer
	o.Logger = slog.New(slog.NewTextHandler(&syncWriter{w: &logs}, nil))
	b := setup(t, setupOpts{path: path, defs: []*saga.Definition{def}, opts: o})
	s := b.wait(t, st.ID)
	if s.Status != saga.StatusCompleted || s.Steps[0].Attempts != 1 {
		t.Fatalf("status %s, attempts %d: want completed with the in-doubt attempt re-run as attempt 1", s.Status, s.Steps[0].Attempts)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(calls) != 2 || calls[0].IdempotencyKey != calls[1].IdempotencyKey || calls[1].Attempt != 1 {
		t.Fatalf("calls %+v: want the attempt re-run once with the same key and attempt number", calls)
	}
	log, _ := b.eng.Log(context.Background(), st.ID)
	for _, e := range log {
		if e.Event == storage.EventAttemptFailed {
			t.Fatalf("log has a failed attempt %+v: an attempt cut off by shutdown must stay in doubt", e)
		}
	}
	b.close(t)
	if !strings.Contains(logs.String(), "recovery: resumed unfinished sagas") || !strings.Contains(logs.String(), "in_doubt=1") {
		t.Fatalf("recovery summary missing or wrong in the log:\n%s", logs.String())
	}
}

// syncWriter makes a writer safe for the engine's concurrent logging.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func TestDamagedRecordIsSetAside(t *testing.T) {
	t.Parallel()
	for _, keep := range []int{20, 10} { // the header (17 bytes) kept, and cut too
		t.Run(fmt.Sprintf("%d bytes", keep), func(t *testing.T) {
			t.Parallel()
			damagedRecordIsSetAside(t, keep)
		})
	}
}

// damagedRecordIsSetAside cuts a due saga's record to its first keep bytes,
// then checks that the engine runs other sagas and reports that one as
// corrupt.
func damagedRecordIsSetAside(t *testing.T, keep int) {
	path := t.TempDir() + "/sagad.db"
	rec := &recorder{}
	def := &saga.Definition{Name: "d", Steps: []saga.Step{{Name: "s", Action: rec.ok("s", nil)}}}
	b := setupNoCleanup(t, path, def, false)
	bad, err := b.eng.Start(context.Background(), "d", nil) // recorded due; not run
	if err != nil {
		t.Fatal(err)
	}
	b.close(t)
	// Keep the record's header and cut its body short.
	if err := bolttest.TruncateSaga(path, ulid.MustParse(bad.ID), keep); err != nil {
		t.Fatal(err)
	}
	b2 := setupNoCleanup(t, path, def, true)
	defer b2.close(t)
	if s := b2.run(t, "d", nil); s.Status != saga.StatusCompleted {
		t.Fatalf("a healthy saga beside a damaged one: %s", s.Status)
	}
	if _, err := b2.eng.Get(context.Background(), bad.ID); !errors.Is(err, storage.ErrCorrupt) {
		t.Fatalf("get of the damaged saga: %v, want ErrCorrupt", err)
	}
}

func TestInDoubtStepIsCompensatedOnAbort(t *testing.T) {
	t.Parallel()
	path := t.TempDir() + "/sagad.db"
	rec := &recorder{}
	entered := make(chan struct{})
	var once sync.Once
	def := &saga.Definition{Name: "d", Steps: []saga.Step{
		{Name: "one", Action: rec.ok("one", nil), Compensation: rec.ok("undo-one", nil)},
		{Name: "two", Compensation: rec.ok("undo-two", nil), Timeout: time.Hour,
			Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
				rec.add("two", c)
				once.Do(func() { close(entered) })
				<-ctx.Done() // cut off by shutdown: in doubt
				return nil, ctx.Err()
			}},
	}}
	eng := openEngine(t, path, engine.Options{ShutdownGrace: time.Millisecond}, def)
	go func() { _ = eng.Run(context.Background()) }()
	st, err := eng.Start(context.Background(), "d", nil)
	if err != nil {
		t.Fatal(err)
	}
	<-entered
	if err := eng.Close(); err != nil {
		t.Fatal(err)
	}
	// Abort before the next Run: step two's outcome is unknown, so it is
	// compensated, not treated as if it did nothing.
	b := setup(t, setupOpts{path: path, defs: []*saga.Definition{def}, noRun: true})
	if err := b.eng.Abort(context.Background(), st.ID); err != nil {
		t.Fatal(err)
	}
	go func() { _ = b.eng.Run(b.ctx) }()
	s := b.wait(t, st.ID)
	if s.Status != saga.StatusCompensated || s.Steps[1].Status != saga.StepCompensated {
		t.Fatalf("status %s, step two %s: want both compensated", s.Status, s.Steps[1].Status)
	}
	if got := rec.list(); !equal(got, []string{"one", "two", "undo-two", "undo-one"}) {
		t.Fatalf("calls %v", got)
	}
}

// TestCutOffStepIsCompensated: a step whose last attempt was cut off before
// it answered (by its timeout or the saga's deadline) may have taken effect,
// so it is compensated when the saga turns around; a step whose last attempt
// answered with a failure is not.
func TestCutOffStepIsCompensated(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		timeout time.Duration // the saga's
		step    time.Duration // the charge step's attempt timeout
		retry   int
		answers []string // what each charge attempt does: "hang" or "refuse"
		want    []string
	}{
		{"saga deadline", 100 * time.Millisecond, time.Hour, 5, []string{"hang"},
			[]string{"reserve", "charge", "refund", "release"}},
		{"attempt timeouts", 0, 20 * time.Millisecond, 2, []string{"hang", "hang"},
			[]string{"reserve", "charge", "charge", "refund", "release"}},
		{"timeout, then an answer", 0, 20 * time.Millisecond, 2, []string{"hang", "refuse"},
			[]string{"reserve", "charge", "charge", "release"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rec := &recorder{}
			var n atomic.Int32
			charge := func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
				rec.add("charge", c)
				if tt.answers[n.Add(1)-1] == "refuse" {
					return nil, saga.Permanent(errFlaky)
				}
				<-ctx.Done()
				return nil, ctx.Err()
			}
			def := &saga.Definition{Name: "cut", Timeout: tt.timeout, Steps: []saga.Step{
				{Name: "reserve", Action: rec.ok("reserve", nil), Compensation: rec.ok("release", nil)},
				{Name: "charge", Action: charge, Compensation: rec.ok("refund", nil), Timeout: tt.step, Retry: fastRetry(tt.retry)},
			}}
			b := setup(t, setupOpts{defs: []*saga.Definition{def}})
			s := b.run(t, "cut", nil)
			if s.Status != saga.StatusCompensated {
				t.Fatalf("status %s (%v), want compensated", s.Status, s.Err)
			}
			if got := rec.list(); !equal(got, tt.want) {
				t.Fatalf("calls %v, want %v", got, tt.want)
			}
		})
	}
}

// A step that enlists a transaction the store cannot write in (any, on a
// bbolt file) fails for good, once: it is not retried, nor its transaction
// kept open.
func TestEnlistOnAStoreThatCannot(t *testing.T) {
	t.Parallel()
	var calls, rollbacks atomic.Int32
	def := &saga.Definition{Name: "d", Steps: []saga.Step{{Name: "s",
		Action: func(_ context.Context, c *saga.Call) (json.RawMessage, error) {
			calls.Add(1)
			return nil, c.Enlist(fakeTx{&rollbacks})
		}}}}
	b := setup(t, setupOpts{defs: []*saga.Definition{def}})
	s := b.run(t, "d", nil)
	if s.Status == saga.StatusCompleted || calls.Load() != 1 || rollbacks.Load() != 1 {
		t.Fatalf("saga %s after %d calls and %d rollbacks; want it not completed, 1 call, 1 rollback", s.Status, calls.Load(), rollbacks.Load())
	}
}

type fakeTx struct{ rollbacks *atomic.Int32 }

func (fakeTx) Commit(context.Context) error     { return nil }
func (f fakeTx) Rollback(context.Context) error { f.rollbacks.Add(1); return nil }

// syncBuffer is a bytes.Buffer the engine's goroutines may log to.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
