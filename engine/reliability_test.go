package engine_test

import (
	"context"
	"encoding/json"
	stderrors "errors"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/errors"

	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
)

// An Abort accepted while the saga's last step runs is acted on: the saga
// compensates. An Abort that comes after the saga completed fails with
// ErrConflict. Never both, never neither (the cleanup's consistency check
// also reports an abort request left on a finished saga). In the pivot
// variant an accepted Abort must have been seen, and ignored, by the
// pivot's own transition; the refusal of one that comes after the pivot
// succeeded is rare under this race, and TestAbortAfterPivotIsRefused
// makes it certain.
func TestAbortRacesLastStep(t *testing.T) {
	t.Parallel()
	for _, pivot := range []bool{false, true} {
		t.Run(map[bool]string{false: "last step", true: "pivot"}[pivot], func(t *testing.T) {
			t.Parallel()
			abortRacesLastStep(t, pivot)
		})
	}
}

func abortRacesLastStep(t *testing.T, pivot bool) {
	const sagas = 300
	var mu sync.Mutex
	abortErr := make(map[string]error)
	aborted := make(map[string]chan struct{})
	var b *bundle
	var ready sync.WaitGroup
	ready.Add(1)
	def := &saga.Definition{Name: "race", Steps: []saga.Step{
		{Name: "one", Action: noop, Compensation: noop},
		{Name: "two", Pivot: pivot, Compensation: map[bool]saga.Func{false: noop}[pivot], Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
			ready.Wait()
			done := make(chan struct{})
			mu.Lock()
			aborted[c.SagaID] = done
			mu.Unlock()
			go func() {
				defer close(done)
				err := b.eng.Abort(context.Background(), c.SagaID)
				mu.Lock()
				abortErr[c.SagaID] = err
				mu.Unlock()
			}()
			// Return while the Abort is on its way: a spin of random length
			// moves the instant across its whole path.
			for range rand.IntN(2000) {
				runtime.Gosched()
			}
			return nil, nil
		}},
	}}
	if pivot {
		def.Steps = append(def.Steps, saga.Step{Name: "three", Action: noop})
	}
	b = setup(t, setupOpts{defs: []*saga.Definition{def}, opts: engine.Options{Concurrency: 64}})
	ready.Done()
	ids := make([]string, sagas)
	for i := range ids {
		st, err := b.eng.Start(context.Background(), "race", nil)
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = st.ID
	}
	won := map[bool]int{}
	for _, id := range ids {
		s := b.wait(t, id)
		mu.Lock()
		done := aborted[id]
		mu.Unlock()
		<-done
		mu.Lock()
		err := abortErr[id]
		mu.Unlock()
		switch {
		case pivot && err == nil && s.Status == saga.StatusCompleted:
			// Accepted while the pivot ran: the pivot's own transition
			// ignored it (the saga could only go forward) and logged so,
			// before the step after the pivot started. An abort written
			// after the pivot succeeded would have been refused.
			log, lerr := b.eng.Log(context.Background(), id)
			ignored := slices.IndexFunc(log, func(e storage.LogEntry) bool {
				return e.Event == storage.EventAbortRequested && strings.Contains(e.Note, "past its pivot")
			})
			three := slices.IndexFunc(log, func(e storage.LogEntry) bool {
				return e.Event == storage.EventAttemptStarted && e.Step == "three"
			})
			if lerr != nil || ignored < 0 || ignored > three {
				t.Errorf("saga %s: Abort returned nil, yet the pivot's transition did not see it: log %+v (%v)", id, log, lerr)
			}
			won[true]++
		case !pivot && err == nil && s.Status == saga.StatusCompensated && errors.Is(s.Err, engine.ErrAborted):
			won[true]++
		case errors.Is(err, engine.ErrConflict) && s.Status == saga.StatusCompleted:
			won[false]++
		default:
			t.Errorf("saga %s: Abort returned %v and the saga ended %s (%v): an accepted abort must be acted on",
				id, err, s.Status, s.Err)
		}
	}
	t.Logf("aborts accepted: %d, refused because the saga had completed or passed its pivot: %d", won[true], won[false])
}

func noop(context.Context, *saga.Call) (json.RawMessage, error) { return nil, nil }

// An Abort that read the saga before its pivot succeeded, and writes its
// request after, is refused: the saga is past its pivot by then.
func TestAbortAfterPivotIsRefused(t *testing.T) {
	// Not parallel: it installs package-wide hooks.
	var eng atomic.Pointer[engine.Engine]
	atLock, committed, shipped := make(chan struct{}), make(chan struct{}), make(chan struct{})
	aborted := make(chan error, 1)
	engine.SetAbortHoldHook(func(string) {
		close(atLock)
		<-committed // take the lock only once the pivot's success is durable
	})
	engine.SetTestHook(func(point, id, step string, _ saga.Phase) {
		if point == "after_attempt" && step == "pay" {
			go func() { aborted <- eng.Load().Abort(context.Background(), id) }()
			<-atLock // the Abort found the pivot not yet succeeded
		}
	})
	t.Cleanup(func() { engine.SetAbortHoldHook(nil); engine.SetTestHook(nil) })
	def := &saga.Definition{Name: "pivot", Steps: []saga.Step{
		{Name: "reserve", Action: noop, Compensation: noop},
		{Name: "pay", Action: noop, Pivot: true},
		{Name: "ship", Action: func(context.Context, *saga.Call) (json.RawMessage, error) { <-shipped; return nil, nil }},
	}}
	b := setup(t, setupOpts{defs: []*saga.Definition{def}, opts: engine.Options{Hooks: engine.Hooks{
		AttemptFinished: func(a engine.AttemptInfo) {
			if a.Step == "pay" {
				close(committed)
			}
		}}}})
	eng.Store(b.eng)
	st, err := b.eng.Start(context.Background(), "pivot", nil)
	if err != nil {
		t.Fatal(err)
	}
	err = <-aborted // written while the step after the pivot runs
	close(shipped)
	if s := b.wait(t, st.ID); !errors.Is(err, engine.ErrConflict) || s.Status != saga.StatusCompleted {
		t.Fatalf("Abort = %v, saga %s; want ErrConflict (past its pivot) and completed", err, s.Status)
	}
}

// A step's Call holds its own copies of the input and data; Start keeps its
// own copy of a json.RawMessage input.
func TestStepsCannotChangeStoredData(t *testing.T) {
	t.Parallel()
	gate := make(chan struct{})
	var seen [][]byte
	def := &saga.Definition{Name: "copies", Steps: []saga.Step{
		{Name: "one", Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
			<-gate
			return json.RawMessage(`{"v":"one"}`), nil
		}},
		{Name: "two", Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
			copy(c.Data["one"], `{"v":"bad"}`)
			copy(c.Input, `{"n":"bad"}`)
			return nil, nil
		}},
		{Name: "three", Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
			seen = [][]byte{c.Input, c.Data["one"]}
			return nil, nil
		}},
	}}
	b := setup(t, setupOpts{defs: []*saga.Definition{def}})
	input := json.RawMessage(`{"n":"in!"}`)
	st, err := b.eng.Start(context.Background(), "copies", input)
	if err != nil {
		t.Fatal(err)
	}
	copy(input, `{"n":"BAD"}`) // the caller reuses its buffer once Start returned
	close(gate)
	s := b.wait(t, st.ID)
	if s.Status != saga.StatusCompleted {
		t.Fatalf("status %s (%v)", s.Status, s.Err)
	}
	if got := string(seen[0]) + " " + string(seen[1]); got != `{"n":"in!"} {"v":"one"}` {
		t.Errorf("step three saw %s, want the input and output as they were made", got)
	}
	if string(s.Input) != `{"n":"in!"}` || string(s.Data["one"]) != `{"v":"one"}` {
		t.Errorf("stored input %s, data %s: changed in place by a step or the caller", s.Input, s.Data["one"])
	}
}

// After the saga's deadline, a step past the pivot that failed can still
// be finished by Retry: the deadline no longer applies to it.
func TestRetryPastPivotAfterDeadline(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	def := &saga.Definition{Name: "late", Timeout: 200 * time.Millisecond, Steps: []saga.Step{
		{Name: "pay", Action: noop, Pivot: true},
		{Name: "ship", Retry: fastRetry(1), Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
			if calls.Add(1) == 1 {
				return nil, saga.Permanent(errFlaky)
			}
			// A participant call would fail at once on an expired context.
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			return nil, nil
		}},
	}}
	b := setup(t, setupOpts{defs: []*saga.Definition{def}})
	s := b.run(t, "late", nil)
	if s.Status != saga.StatusFailed {
		t.Fatalf("status %s, want failed (a step past the pivot failed)", s.Status)
	}
	time.Sleep(time.Until(s.Deadline)) // the deadline itself is what is tested
	if err := b.eng.Retry(context.Background(), s.ID); err != nil {
		t.Fatal(err)
	}
	if s = b.wait(t, s.ID); s.Status != saga.StatusCompleted || s.Err != nil {
		t.Fatalf("after retry: %s (%v), want completed", s.Status, s.Err)
	}
}

// A BreakerStateChanged hook may call Engine.Breakers.
func TestBreakerHookMayCallBreakers(t *testing.T) {
	t.Parallel()
	var eng atomic.Pointer[engine.Engine]
	states := make(chan []engine.BreakerState, 4)
	def := &saga.Definition{Name: "hook", Steps: []saga.Step{{Name: "one", Retry: fastRetry(1),
		Breaker: saga.BreakerPolicy{Name: "hook-breaker", Failures: 1, OpenFor: time.Hour},
		Action:  func(context.Context, *saga.Call) (json.RawMessage, error) { return nil, errFlaky }}}}
	b := setup(t, setupOpts{defs: []*saga.Definition{def}, opts: engine.Options{Hooks: engine.Hooks{
		BreakerStateChanged: func(name, from, to string) { states <- eng.Load().Breakers() },
	}}})
	eng.Store(b.eng)
	done := make(chan *engine.Saga, 1)
	go func() { done <- b.run(t, "hook", nil) }()
	select {
	case st := <-states:
		if len(st) != 1 || st[0].State != "open" || st[0].OpenUntil.IsZero() {
			t.Errorf("Breakers() in the hook = %+v, want hook-breaker open with its time", st)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no breaker state within 10s: the hook's call to Breakers deadlocked")
	}
	if s := <-done; s.Status != saga.StatusCompensated {
		t.Errorf("status %s", s.Status)
	}
}

// A BreakerStateChanged hook may call Abort, even for the saga whose
// attempt moves the breaker.
func TestBreakerHookMayAbort(t *testing.T) {
	t.Parallel()
	var eng atomic.Pointer[engine.Engine]
	var id atomic.Value
	aborted := make(chan error, 1)
	var calls atomic.Int32
	gate := make(chan struct{}) // holds the saga until its id is known
	def := &saga.Definition{Name: "hook-abort", Steps: []saga.Step{
		{Name: "one", Action: func(context.Context, *saga.Call) (json.RawMessage, error) { <-gate; return nil, nil },
			Compensation: noop},
		{Name: "two", Retry: fastRetry(5), Compensation: noop,
			Breaker: saga.BreakerPolicy{Name: "hook-abort-breaker", Failures: 1, OpenFor: 20 * time.Millisecond},
			Action: func(context.Context, *saga.Call) (json.RawMessage, error) {
				if calls.Add(1) == 1 {
					return nil, errFlaky
				}
				return nil, nil
			}},
	}}
	b := setup(t, setupOpts{defs: []*saga.Definition{def}, opts: engine.Options{Hooks: engine.Hooks{
		BreakerStateChanged: func(_, _, to string) {
			if to == "half-open" {
				aborted <- eng.Load().Abort(context.Background(), id.Load().(string))
			}
		}}}})
	eng.Store(b.eng)
	st, err := b.eng.Start(context.Background(), "hook-abort", nil)
	if err != nil {
		t.Fatal(err)
	}
	id.Store(st.ID)
	close(gate)
	select {
	case err := <-aborted:
		if err != nil {
			t.Errorf("Abort from the hook: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no Abort from the hook within 10s: it deadlocked")
	}
	if s := b.wait(t, st.ID); s.Status != saga.StatusCompensated || !errors.Is(s.Err, engine.ErrAborted) {
		t.Errorf("status %s (%v), want compensated by the abort", s.Status, s.Err)
	}
}

// A step past the pivot that waits for its breaker after the saga's
// deadline waits for the breaker, without spinning on the deadline.
func TestBreakerWaitPastPivotAfterDeadline(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	// The deadline leaves the pivot room to commit on a loaded machine;
	// the breaker stays open well past it.
	def := &saga.Definition{Name: "spin", Timeout: 150 * time.Millisecond, Steps: []saga.Step{
		{Name: "pay", Action: noop, Pivot: true},
		{Name: "ship", Retry: fastRetry(5),
			Breaker: saga.BreakerPolicy{Name: "spin-breaker", Failures: 1, OpenFor: 600 * time.Millisecond},
			Action: func(context.Context, *saga.Call) (json.RawMessage, error) {
				if calls.Add(1) == 1 {
					return nil, errFlaky
				}
				return nil, nil
			}},
	}}
	b := setup(t, setupOpts{defs: []*saga.Definition{def}})
	s := b.run(t, "spin", nil)
	if s.Status != saga.StatusCompleted {
		t.Fatalf("status %s (%v)", s.Status, s.Err)
	}
	log, err := b.eng.Log(context.Background(), s.ID)
	if err != nil {
		t.Fatal(err)
	}
	waits := 0
	for _, e := range log {
		if e.Event == storage.EventBreakerOpen {
			waits++
		}
	}
	if waits > 3 {
		t.Errorf("%d breaker waits logged in 600ms, want a few: the saga spun on its passed deadline", waits)
	}
}

// An operator's Retry right after the saga shows failed waits for its
// driver to let go instead of failing with "being driven".
func TestRetryRightAfterFailed(t *testing.T) {
	// Not parallel: it installs a package-wide hook.
	var eng atomic.Pointer[engine.Engine]
	gate := make(chan struct{})
	retried := make(chan error, 1)
	var undone sync.Map // saga id -> whether its compensation was called
	busy := make(chan struct{}, 1)
	engine.SetClaimBusyHook(func(string) { busy <- struct{}{} })
	t.Cleanup(func() { engine.SetClaimBusyHook(nil) })
	def := &saga.Definition{Name: "quick", Steps: []saga.Step{
		{Name: "one", Action: noop, CompensationRetry: fastRetry(1),
			Compensation: func(_ context.Context, c *saga.Call) (json.RawMessage, error) {
				if _, again := undone.LoadOrStore(c.SagaID, true); again {
					return nil, nil // fixed by the time an operator retries
				}
				return nil, errFlaky
			}},
		{Name: "two", Action: func(context.Context, *saga.Call) (json.RawMessage, error) {
			<-gate
			return nil, saga.Permanent(errFlaky)
		}},
	}}
	b := setup(t, setupOpts{defs: []*saga.Definition{def}, opts: engine.Options{Hooks: engine.Hooks{
		// Called once the failed status is committed, before the driver
		// lets go: the instant an operator's list first shows it.
		SagaStatusChanged: func(c engine.StatusChange) {
			if c.To == saga.StatusFailed {
				id := c.SagaID
				go func() { retried <- eng.Load().Retry(context.Background(), id) }()
				// Hold the driver until the Retry finds it busy.
				select {
				case <-busy:
				case <-time.After(10 * time.Second):
					t.Error("Retry never found the saga held by its driver")
				}
			}
		},
	}}})
	eng.Store(b.eng)
	for i := range 20 {
		st, err := b.eng.Start(context.Background(), "quick", nil)
		if err != nil {
			t.Fatal(err)
		}
		gate <- struct{}{}
		select {
		case err := <-retried:
			if err != nil {
				t.Fatalf("saga %d: retry right after failed: %v, want it to wait for the driver", i, err)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("saga %d: never failed", i)
		}
		if s := b.wait(t, st.ID); s.Status != saga.StatusCompensated {
			t.Fatalf("saga %d: %s after retry, want compensated", i, s.Status)
		}
	}
}

// A participant's Retry-After is capped by the policy's MaxInterval.
func TestRetryAfterIsCapped(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	def := &saga.Definition{Name: "later", Steps: []saga.Step{{Name: "one",
		Retry: saga.RetryPolicy{MaxAttempts: 2, InitialInterval: time.Millisecond, MaxInterval: 20 * time.Millisecond},
		Action: func(context.Context, *saga.Call) (json.RawMessage, error) {
			if calls.Add(1) == 1 {
				return nil, saga.RetryAfter(errFlaky, 2_000_000*time.Hour)
			}
			return nil, nil
		}}}}
	b := setup(t, setupOpts{defs: []*saga.Definition{def}})
	s := b.run(t, "later", nil)
	if s.Status != saga.StatusCompleted {
		t.Fatalf("status %s", s.Status)
	}
	log, err := b.eng.Log(context.Background(), s.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range log {
		if e.Event == storage.EventAttemptFailed {
			if wait := e.Next.Sub(e.At); wait > 20*time.Millisecond {
				t.Errorf("retry scheduled %s after the failure, want at most MaxInterval (20ms)", wait)
			}
		}
	}
}

// An operator can retry now, or resolve, a saga whose compensation waits
// for a retry; and retry now a step waiting for one.
func TestOperatorMovesAWaitingSaga(t *testing.T) {
	t.Parallel()
	hourly := saga.RetryPolicy{MaxAttempts: 5, InitialInterval: time.Hour, MaxInterval: time.Hour, Jitter: -1}
	tests := []struct {
		name        string
		compensates bool // the wait is in compensation (else in a step's action)
		resolve     bool
		want        saga.Status
	}{
		{"retry a waiting compensation", true, false, saga.StatusCompensated},
		{"resolve a waiting compensation", true, true, saga.StatusResolved},
		{"retry a waiting step", false, false, saga.StatusCompleted},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var calls atomic.Int32
			flaky := func(context.Context, *saga.Call) (json.RawMessage, error) {
				if calls.Add(1) == 1 {
					return nil, errFlaky
				}
				return nil, nil
			}
			one := saga.Step{Name: "one", Action: noop, Compensation: noop}
			two := saga.Step{Name: "two", Action: flaky, Retry: hourly}
			if tt.compensates {
				one = saga.Step{Name: "one", Action: noop, Compensation: flaky, CompensationRetry: hourly}
				two = saga.Step{Name: "two", Action: func(context.Context, *saga.Call) (json.RawMessage, error) {
					return nil, saga.Permanent(errFlaky)
				}}
			}
			waitingNow := make(chan struct{}, 1)
			b := setup(t, setupOpts{defs: []*saga.Definition{{Name: "wait", Steps: []saga.Step{one, two}}},
				opts: engine.Options{Hooks: onRetry(waitingNow)}})
			st, err := b.eng.Start(context.Background(), "wait", nil)
			if err != nil {
				t.Fatal(err)
			}
			<-waitingNow
			// The hook runs before the driver lets go; the operator's
			// change waits for it.
			if tt.resolve {
				err = b.eng.Resolve(context.Background(), st.ID, "refunded by hand", "ops")
			} else {
				err = b.eng.Retry(context.Background(), st.ID)
			}
			if err != nil {
				t.Fatal(err)
			}
			if s := b.wait(t, st.ID); s.Status != tt.want {
				t.Fatalf("status %s, want %s", s.Status, tt.want)
			}
		})
	}
}

// Outputs over the limits fail their step for good, and the step is
// compensated: its participant acted.
func TestOutputLimits(t *testing.T) {
	t.Parallel()
	out := func(n int) json.RawMessage { return json.RawMessage(`"` + strings.Repeat("x", n-2) + `"`) }
	tests := []struct {
		name     string
		opts     engine.Options
		sizes    []int
		failed   string
		undone   []string
		complete bool
	}{
		{"a step over MaxStepOutput", engine.Options{MaxStepOutput: 1000}, []int{500, 1001, 10}, "two",
			[]string{"undo-two", "undo-one"}, false},
		{"the saga over MaxSagaData", engine.Options{MaxSagaData: 2500}, []int{1000, 1000, 1000}, "three",
			[]string{"undo-three", "undo-two", "undo-one"}, false},
		{"no limits", engine.Options{MaxStepOutput: -1, MaxSagaData: -1}, []int{3 << 20, 3 << 20, 10}, "", nil, true},
		{"within the defaults", engine.Options{}, []int{1 << 20, 1 << 20, 1 << 20}, "", nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rec := &recorder{}
			var steps []saga.Step
			for i, name := range []string{"one", "two", "three"} {
				o := out(tt.sizes[i])
				steps = append(steps, saga.Step{Name: name, Retry: fastRetry(3),
					Action:       func(context.Context, *saga.Call) (json.RawMessage, error) { return o, nil },
					Compensation: rec.ok("undo-"+name, nil)})
			}
			b := setup(t, setupOpts{defs: []*saga.Definition{{Name: "big", Steps: steps}}, opts: tt.opts})
			s := b.run(t, "big", nil)
			if tt.complete {
				if s.Status != saga.StatusCompleted {
					t.Fatalf("status %s (%v), want completed", s.Status, s.Err)
				}
				return
			}
			if s.Status != saga.StatusCompensated || !errors.Is(s.Err, engine.ErrTooLarge) || !saga.IsPermanent(s.Err) {
				t.Fatalf("status %s, err %v: want compensated, too large and permanent", s.Status, s.Err)
			}
			for _, st := range s.Steps {
				if st.Name == tt.failed && st.Attempts != 1 {
					t.Errorf("step %s attempted %d times, want once (the failure is permanent)", st.Name, st.Attempts)
				}
			}
			if got := rec.list(); !equal(got, tt.undone) {
				t.Errorf("compensations %v, want %v (the step whose output was refused acted)", got, tt.undone)
			}
			if _, ok := s.Data[tt.failed]; ok {
				t.Errorf("the refused output of %s was stored", tt.failed)
			}
		})
	}
}

// Idempotency keys: invalid UTF-8 and over-long keys are refused; a known
// key with another input is a conflict; with the same input (as JSON) it
// names the saga.
func TestIdempotencyKeys(t *testing.T) {
	t.Parallel()
	def := &saga.Definition{Name: "keyed", Steps: []saga.Step{{Name: "one", Action: noop}}}
	other := &saga.Definition{Name: "other", Steps: []saga.Step{{Name: "one", Action: noop}}}
	b := setup(t, setupOpts{defs: []*saga.Definition{def, other}})
	first, err := b.eng.Start(context.Background(), "keyed", json.RawMessage(`{"a":1,"b":[1,2]}`), engine.WithIdempotencyKey("order-1"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		def   string
		key   string
		input json.RawMessage
		want  error // nil: a duplicate of first
	}{
		{"same input", "keyed", "order-1", json.RawMessage(`{"a":1,"b":[1,2]}`), nil},
		{"same value, other spacing and order", "keyed", "order-1", json.RawMessage(` { "b" : [1, 2], "a": 1 } `), nil},
		{"other input", "keyed", "order-1", json.RawMessage(`{"a":2,"b":[1,2]}`), engine.ErrKeyReused},
		{"a number written otherwise", "keyed", "order-1", json.RawMessage(`{"a":1.0,"b":[1,2]}`), engine.ErrKeyReused},
		{"other definition", "other", "order-1", json.RawMessage(`{"a":1,"b":[1,2]}`), engine.ErrKeyReused},
		{"invalid UTF-8", "keyed", "order-\xff", nil, engine.ErrInvalidInput},
		{"other invalid UTF-8", "keyed", "order-\xfe", nil, engine.ErrInvalidInput},
		{"too long", "keyed", strings.Repeat("k", engine.MaxIdempotencyKey+1), nil, engine.ErrInvalidInput},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := b.eng.Start(context.Background(), tt.def, tt.input, engine.WithIdempotencyKey(tt.key))
			switch {
			case tt.want == nil:
				if err != nil || !st.Duplicate || st.ID != first.ID {
					t.Errorf("Start = %+v, %v; want a duplicate of %s", st, err, first.ID)
				}
			case !errors.Is(err, tt.want):
				t.Errorf("Start = %+v, %v; want %v", st, err, tt.want)
			case errors.Is(tt.want, engine.ErrKeyReused) && !errors.Is(err, engine.ErrConflict):
				t.Errorf("Start: %v is not also ErrConflict", err)
			}
		})
	}
	page, err := b.eng.List(context.Background(), engine.ListOptions{})
	if err != nil || len(page.Sagas) != 1 {
		t.Fatalf("%d sagas (%v), want only the first", len(page.Sagas), err)
	}
}

// A failed saga whose compensation is retried and succeeds ends with the
// error that made it compensate, not the compensation's old failure.
func TestRetriedCompensationKeepsItsCause(t *testing.T) {
	t.Parallel()
	var fixed atomic.Bool
	def := &saga.Definition{Name: "cause", Steps: []saga.Step{
		{Name: "one", Action: noop, CompensationRetry: fastRetry(1),
			Compensation: func(context.Context, *saga.Call) (json.RawMessage, error) {
				if fixed.Load() {
					return nil, nil
				}
				return nil, errors.New("refund service down")
			}},
		{Name: "two", Action: func(context.Context, *saga.Call) (json.RawMessage, error) {
			return nil, saga.Permanent(errors.New("card declined"))
		}},
	}}
	b := setup(t, setupOpts{defs: []*saga.Definition{def}})
	s := b.run(t, "cause", nil)
	if s.Status != saga.StatusFailed || !strings.Contains(s.Err.Error(), "refund service down") {
		t.Fatalf("status %s, err %v", s.Status, s.Err)
	}
	fixed.Store(true)
	if err := b.eng.Retry(context.Background(), s.ID); err != nil {
		t.Fatal(err)
	}
	s = b.wait(t, s.ID)
	if s.Status != saga.StatusCompensated || s.Err == nil || s.Err.Error() != `step "two" failed: card declined` {
		t.Fatalf("after retry: %s, err %v; want compensated with the step's failure", s.Status, s.Err)
	}
	if !saga.IsPermanent(s.Err) || !stderrors.Is(s.Err, saga.ErrPermanent) {
		t.Errorf("after retry the saga's error %v lost its permanent mark", s.Err)
	}
}

// Sagas stored with the fingerprint of an older sagad (name and step names
// only) keep running when their definition is registered again.
func TestLegacyFingerprintRuns(t *testing.T) {
	t.Parallel()
	path := t.TempDir() + "/sagad.db"
	steps := []saga.Step{{Name: "one", Action: noop, Retry: fastRetry(2)}}
	def := &saga.Definition{Name: "old", Steps: steps}
	// A definition whose Version is the legacy fingerprint stores sagas as
	// an older sagad did.
	older := &saga.Definition{Name: "old", Steps: steps, Version: def.LegacyFingerprint()}
	if def.Fingerprint() == def.LegacyFingerprint() {
		t.Fatal("the fingerprint did not change: nothing to test")
	}
	eng := openEngine(t, path, engine.Options{}, older)
	st, err := eng.Start(context.Background(), "old", nil) // recorded due; no Run
	if err != nil {
		t.Fatal(err)
	}
	if err := eng.Close(); err != nil {
		t.Fatal(err)
	}
	b := setup(t, setupOpts{path: path, defs: []*saga.Definition{def}})
	if s := b.wait(t, st.ID); s.Status != saga.StatusCompleted || s.Fingerprint != def.LegacyFingerprint() {
		t.Fatalf("status %s, fingerprint %s: want completed under the legacy fingerprint", s.Status, s.Fingerprint)
	}
}

// Marks on a saga's error are seen by the standard library's errors.Is too.
func TestErrorMarksMatchTheStandardLibrary(t *testing.T) {
	t.Parallel()
	if !stderrors.Is(saga.Permanent(errFlaky), saga.ErrPermanent) || !stderrors.Is(saga.Permanent(errFlaky), errFlaky) {
		t.Error("saga.Permanent: the standard library's errors.Is does not see the mark")
	}
	if !stderrors.Is(saga.OutcomeUnknown(errFlaky), saga.ErrOutcomeUnknown) {
		t.Error("saga.OutcomeUnknown: the standard library's errors.Is does not see the mark")
	}
	entered, release := make(chan struct{}), make(chan struct{})
	def := &saga.Definition{Name: "marks", Timeout: 30 * time.Second, Steps: []saga.Step{
		{Name: "declined", Action: func(context.Context, *saga.Call) (json.RawMessage, error) {
			return nil, saga.Permanent(errFlaky)
		}},
	}}
	slow := &saga.Definition{Name: "slow", Steps: []saga.Step{{Name: "one", Action: noop, Compensation: noop},
		{Name: "two", Action: func(ctx context.Context, _ *saga.Call) (json.RawMessage, error) {
			close(entered)
			<-release
			return nil, nil
		}}}}
	late := &saga.Definition{Name: "late", Timeout: time.Millisecond, Steps: []saga.Step{{Name: "one",
		Action: func(ctx context.Context, _ *saga.Call) (json.RawMessage, error) { <-ctx.Done(); return nil, ctx.Err() }}}}
	b := setup(t, setupOpts{defs: []*saga.Definition{def, slow, late}})
	permanent := b.run(t, "marks", nil)
	st, err := b.eng.Start(context.Background(), "slow", nil)
	if err != nil {
		t.Fatal(err)
	}
	<-entered
	if err := b.eng.Abort(context.Background(), st.ID); err != nil {
		t.Fatal(err)
	}
	close(release)
	aborted := b.wait(t, st.ID)
	deadline := b.run(t, "late", nil)
	for _, tt := range []struct {
		s    *engine.Saga
		mark error
	}{{permanent, saga.ErrPermanent}, {aborted, engine.ErrAborted}, {deadline, engine.ErrDeadline}} {
		if !stderrors.Is(tt.s.Err, tt.mark) || !errors.Is(tt.s.Err, tt.mark) {
			t.Errorf("saga %s: err %v: the standard library's errors.Is(err, %v) = %v, want true",
				tt.s.Definition, tt.s.Err, tt.mark, stderrors.Is(tt.s.Err, tt.mark))
		}
	}
}
