package sagatest

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/errors"

	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
)

// desk is a participant of the test sagas: it does each step's phase once
// per idempotency key and answers a repeated call as it answered the first,
// unless it is told to misbehave.
type desk struct {
	mu    sync.Mutex
	done  map[string]json.RawMessage // key -> output
	calls map[string]int             // "step/phase" -> calls
	// refuse fails a "step/phase" for good; busy fails it (for a retry) on
	// its first calls; twice fails the second call of one key for good (a
	// participant that is not idempotent).
	refuse, twice string
	busy          map[string]int
}

func newDesk() *desk {
	return &desk{done: map[string]json.RawMessage{}, calls: map[string]int{}, busy: map[string]int{}}
}

func (d *desk) fn(step string, phase saga.Phase) saga.Func {
	sp := step + "/" + string(phase)
	return func(_ context.Context, c *saga.Call) (json.RawMessage, error) {
		d.mu.Lock()
		defer d.mu.Unlock()
		d.calls[sp]++
		if sp == d.refuse {
			return nil, saga.Permanent(errors.Newf("%s refused", sp))
		}
		if d.busy[sp] > 0 {
			d.busy[sp]--
			return nil, errors.Newf("%s busy", sp)
		}
		out, ok := d.done[c.IdempotencyKey]
		switch {
		case ok && sp == d.twice:
			return nil, saga.Permanent(errors.Newf("%s: key %s already used", sp, c.IdempotencyKey))
		case !ok:
			out = json.RawMessage(fmt.Sprintf(`{"n":%d}`, len(d.done)+1))
			d.done[c.IdempotencyKey] = out
		}
		if phase != saga.PhaseCompensation {
			if err := c.Emit(saga.Event{Name: step + ".done", Payload: out}); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
}

// def returns a definition of steps ("name" or "name<dep1,dep2" for a step
// after others, "name<" for one at the start) over d.
func (d *desk) def(name string, steps ...string) *saga.Definition {
	def := &saga.Definition{Name: name, Events: saga.Events{Lifecycle: true}}
	for _, s := range steps {
		st, deps, parallel := strings.Cut(s, "<")
		step := saga.Step{Name: st, Action: d.fn(st, saga.PhaseAction), Compensation: d.fn(st, saga.PhaseCompensation),
			Retry: saga.RetryPolicy{MaxAttempts: 4, InitialInterval: 10 * time.Minute, Jitter: -1}}
		if parallel {
			step.After = saga.AtStart
			if deps != "" {
				step.After = strings.Split(deps, ",")
			}
		}
		def.Steps = append(def.Steps, step)
	}
	return def
}

// fakeT records what Explore reports, to check it without failing.
type fakeT struct {
	*testing.T
	mu     sync.Mutex
	errors []string
	fatal  string
}

func (f *fakeT) Errorf(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.errors = append(f.errors, fmt.Sprintf(format, args...))
}

func (f *fakeT) Fatalf(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fatal = fmt.Sprintf(format, args...)
}

// pointWith returns the number of the first point of r that carries a log
// entry ev of step/phase, or fails the test.
func pointWith(t *testing.T, r *Report, ev storage.Event, step string, phase saga.Phase) int {
	t.Helper()
	for _, p := range r.Points {
		if slices.ContainsFunc(p.Log, func(e storage.LogEntry) bool { return e.Event == ev && e.Step == step && e.Phase == phase }) {
			return p.N
		}
	}
	t.Fatalf("no point carries %s %s/%s; points:\n%v", ev, step, phase, r.Points)
	return 0
}

// TestExplore explores correct sagas: every run of every point passes.
func TestExplore(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		steps []string
		setup func(d *desk)
		want  saga.Status
		// points is how many durable points the run without a crash has.
		points int
	}{
		// create; a ok + b started; b ok + c started; c ok + completed.
		{name: "sequential completes", steps: []string{"a", "b", "c"}, want: saga.StatusCompleted, points: 4},
		// ... c failed + compensating + b's compensation started; b's
		// ok + a's started; a's ok + compensated.
		{name: "sequential compensates", steps: []string{"a", "b", "c"}, setup: func(d *desk) { d.refuse = "c/action" },
			want: saga.StatusCompensated, points: 6},
		// b fails twice, waits ten minutes each time: two points more for
		// each failure and the next attempt's start.
		{name: "sequential retries", steps: []string{"a", "b", "c"}, setup: func(d *desk) { d.busy["b/action"] = 2 },
			want: saga.StatusCompleted, points: 8},
		{name: "compensation retries", steps: []string{"a", "b", "c"},
			setup: func(d *desk) { d.refuse, d.busy["a/compensation"] = "c/action", 1 },
			want:  saga.StatusCompensated, points: 8},
		{name: "parallel completes", steps: []string{"a", "b<a", "c<a", "d<b,c"}, want: saga.StatusCompleted},
		{name: "parallel compensates", steps: []string{"a", "b<a", "c<a", "d<b,c"}, setup: func(d *desk) { d.refuse = "d/action" },
			want: saga.StatusCompensated},
		{name: "parallel fails beside a running step", steps: []string{"a", "b<a", "c<a", "d<b,c"},
			setup: func(d *desk) { d.refuse = "b/action" }, want: saga.StatusCompensated},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var desks []*desk
			r := Explore(t, Exploration{
				Definition: func() *saga.Definition {
					d := newDesk()
					if tc.setup != nil {
						tc.setup(d)
					}
					desks = append(desks, d)
					return d.def("explored", tc.steps...)
				},
				Input: map[string]string{"order": "42"},
			})
			if r.Reference.Status != tc.want {
				t.Errorf("the run without a crash ended %s, want %s", r.Reference.Status, tc.want)
			}
			if tc.points != 0 && len(r.Points) != tc.points {
				t.Errorf("%d durable points, want %d:\n%v", len(r.Points), tc.points, r.Points)
			}
			if len(r.Runs) != 2*len(r.Points) || len(desks) != 1+len(r.Runs) {
				t.Fatalf("%d runs with a crash and %d definitions for %d points, want %d and %d",
					len(r.Runs), len(desks), len(r.Points), 2*len(r.Points), 1+2*len(r.Points))
			}
			crashed := map[CrashKind]int{}
			for i, run := range r.Runs {
				if want := [2]CrashKind{CrashBefore, CrashAfter}[i%2]; run.Kind != want || run.Point.N != i/2+1 {
					t.Errorf("run %d crashes %s commit %d, want %s commit %d", i, run.Kind, run.Point.N, want, i/2+1)
				}
				if run.Crashed {
					crashed[run.Kind]++
				}
				if run.Point.N == 1 && run.Kind == CrashBefore {
					if run.Status != "" || len(run.Calls) != 0 {
						t.Errorf("%s: the saga is %q with %d calls, want it never created", run, run.Status, len(run.Calls))
					}
					continue
				}
				if run.Status != tc.want {
					t.Errorf("%s: ended %s, want %s", run, run.Status, tc.want)
				}
			}
			if len(r.Points) == tc.points || tc.points == 0 {
				// Sequential sagas reach every point; a parallel one may
				// group its outcomes otherwise in a run.
				if min := len(r.Points) / 2; crashed[CrashBefore] < min || crashed[CrashAfter] < min {
					t.Errorf("runs that crashed: %v, want at least %d of each kind", crashed, min)
				}
				if tc.points != 0 && (crashed[CrashBefore] != tc.points || crashed[CrashAfter] != tc.points) {
					t.Errorf("runs that crashed: %v, want %d of each kind", crashed, tc.points)
				}
			}
			if len(r.Violations) > 0 {
				t.Errorf("violations: %v", r.Violations)
			}
		})
	}
}

// TestExploreCrashTakesEffect checks that the crashes are real: a crash
// before a success is recorded runs the call again on the engine after
// the restart, under the same key and attempt; a crash after it does not.
func TestExploreCrashTakesEffect(t *testing.T) {
	t.Parallel()
	r := Explore(t, Exploration{
		Definition: func() *saga.Definition { return newDesk().def("effect", "a", "b") },
	})
	n := pointWith(t, r, storage.EventAttemptSucceeded, "a", saga.PhaseAction)
	calls := func(kind CrashKind) []string {
		run := r.Runs[2*(n-1)+map[CrashKind]int{CrashBefore: 0, CrashAfter: 1}[kind]]
		var out []string
		for _, c := range run.Calls {
			if c.Step == "a" {
				out = append(out, c.String())
			}
		}
		return out
	}
	if got, want := calls(CrashBefore), []string{"a/action attempt 1 on engine 1: ok", "a/action attempt 1 on engine 2: ok"}; !slices.Equal(got, want) {
		t.Errorf("crash before commit %d: calls of a %q, want %q", n, got, want)
	}
	if got, want := calls(CrashAfter), []string{"a/action attempt 1 on engine 1: ok"}; !slices.Equal(got, want) {
		t.Errorf("crash after commit %d: calls of a %q, want %q", n, got, want)
	}
}

// TestExploreCatchesNonIdempotent explores sagas whose participant fails a
// second call of one key: the explorer must blame the runs whose crash
// makes the engine call again (before the success is committed), and
// only those.
func TestExploreCatchesNonIdempotent(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, twice, refuse string
		// blamed is the point, by the log entry it carries, whose crash
		// before must break idempotency.
		ev    storage.Event
		step  string
		phase saga.Phase
	}{
		{name: "action", twice: "b/action", ev: storage.EventAttemptSucceeded, step: "b", phase: saga.PhaseAction},
		{name: "compensation", twice: "a/compensation", refuse: "c/action",
			ev: storage.EventAttemptSucceeded, step: "a", phase: saga.PhaseCompensation},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ft := &fakeT{T: t}
			r := Explore(ft, Exploration{
				Definition: func() *saga.Definition {
					d := newDesk()
					d.twice, d.refuse = tc.twice, tc.refuse
					return d.def("careless", "a", "b", "c")
				},
			})
			if ft.fatal != "" {
				t.Fatalf("Explore failed: %s", ft.fatal)
			}
			n := pointWith(t, r, tc.ev, tc.step, tc.phase)
			blamed := map[string]bool{}
			for _, v := range r.Violations {
				// v.Run leads to the run, whose value prints as the
				// violation names it.
				if v.Run < 0 || v.Run >= len(r.Runs) {
					t.Fatalf("violation %s: run %d of %d", v, v.Run, len(r.Runs))
				}
				if run := r.Runs[v.Run]; run.Kind != v.Kind || run.Point.N != v.Point.N ||
					!strings.HasPrefix(v.String(), fmt.Sprint(run)+": ") || len(run.Calls) == 0 {
					t.Errorf("violation %s: run %d is %s, with %d calls", v, v.Run, fmt.Sprint(run), len(run.Calls))
				}
				if v.Property == PropertyIdempotency {
					blamed[fmt.Sprintf("%s %d", v.Kind, v.Point.N)] = true
					if !strings.Contains(v.Detail, tc.twice) || !strings.Contains(v.Detail, "already used") {
						t.Errorf("violation %q does not name the call that failed", v)
					}
				} else if v.Kind != CrashBefore || v.Point.N != n {
					t.Errorf("violation at another point: %s", v)
				}
			}
			if want := fmt.Sprintf("%s %d", CrashBefore, n); len(blamed) != 1 || !blamed[want] {
				t.Errorf("idempotency broken at %v, want only at %s", blamed, want)
			}
			if len(ft.errors) != 1 {
				t.Fatalf("Explore reported %d errors, want 1: %q", len(ft.errors), ft.errors)
			}
			for _, want := range []string{"1 of " + fmt.Sprint(len(r.Runs)+1) + " runs broke a property",
				fmt.Sprintf("\n  crash before %s:\n", r.Points[n-1]), "\n    idempotency: key ",
				"the run without a crash ended"} {
				if !strings.Contains(ft.errors[0], want) {
					t.Errorf("Explore's report lacks %q:\n%s", want, ft.errors[0])
				}
			}
		})
	}
}

// TestExploreInFlightAtCrash explores a saga whose branch b is inside its
// participant when the commit of branch c's success is the crash. b's
// participant honours its context, yet its call must run to its end, as a
// remote participant's would: the crashed engine is not torn down (nor
// its calls cancelled) before it returns.
func TestExploreInFlightAtCrash(t *testing.T) {
	t.Parallel()
	type branches struct {
		d         *desk
		in        chan struct{} // closed once b's call is inside its participant
		committed chan struct{} // closed once c's success is committed
		inOnce    sync.Once
		doneOnce  sync.Once
		mu        sync.Mutex
		cut       []string // b's calls cut off by their context
	}
	var (
		mu   sync.Mutex
		cur  *branches // the current run's participants
		runs []*branches
	)
	const slow = 150 * time.Millisecond // how long a branch waits for the other at most
	wait := func(ctx context.Context, ch chan struct{}) error {
		timer := time.NewTimer(slow)
		defer timer.Stop()
		select {
		case <-ch:
		case <-timer.C:
		case <-ctx.Done():
			return ctx.Err()
		}
		return nil
	}
	r := Explore(t, Exploration{
		Definition: func() *saga.Definition {
			p := &branches{d: newDesk(), in: make(chan struct{}), committed: make(chan struct{})}
			mu.Lock()
			cur, runs = p, append(runs, p)
			mu.Unlock()
			def := p.d.def("inflight", "a", "b<a", "c<a", "d<b,c")
			b, c := def.Steps[1].Action, def.Steps[2].Action
			def.Steps[1].Action = func(ctx context.Context, call *saga.Call) (json.RawMessage, error) {
				p.inOnce.Do(func() { close(p.in) })
				// b answers once c's success is committed, in a commit of
				// its own; when that commit is the crash, nothing says so:
				// b answers a little later.
				if _, ok := call.Data["c"]; !ok {
					if err := wait(ctx, p.committed); err != nil {
						p.mu.Lock()
						p.cut = append(p.cut, fmt.Sprintf("attempt %d: %v", call.Attempt, err))
						p.mu.Unlock()
						return nil, err
					}
				}
				return b(ctx, call)
			}
			def.Steps[2].Action = func(ctx context.Context, call *saga.Call) (json.RawMessage, error) {
				if err := wait(ctx, p.in); err != nil { // c answers once b is under way
					return nil, err
				}
				return c(ctx, call)
			}
			return def
		},
		Engine: engine.Options{Hooks: engine.Hooks{AttemptFinished: func(info engine.AttemptInfo) {
			if info.Step == "c" && info.Phase == saga.PhaseAction && info.Err == nil {
				mu.Lock()
				p := cur
				mu.Unlock()
				p.doneOnce.Do(func() { close(p.committed) })
			}
		}}},
	})
	n := pointWith(t, r, storage.EventAttemptSucceeded, "c", saga.PhaseAction)
	if nb := pointWith(t, r, storage.EventAttemptSucceeded, "b", saga.PhaseAction); nb <= n {
		t.Fatalf("b's success is in commit %d, c's in commit %d: want b's later; points:\n%v", nb, n, r.Points)
	}
	for _, run := range r.Runs[2*(n-1) : 2*n] {
		if !run.Crashed {
			t.Errorf("%s: did not crash", run)
			continue
		}
		var b []string
		for _, c := range run.Calls {
			if c.Step == "b" && c.Phase == saga.PhaseAction {
				b = append(b, c.String())
			}
		}
		// In flight at the crash, b's call ended at its participant; the
		// engine after the restart ran it again (its success was not
		// recorded), under the same key.
		if want := []string{"b/action attempt 1 on engine 1: ok", "b/action attempt 1 on engine 2: ok"}; !slices.Equal(b, want) {
			t.Errorf("%s: calls of b %q, want %q", run, b, want)
		}
	}
	for i, p := range runs {
		if len(p.cut) > 0 {
			t.Errorf("run %d: b's participant was cut off: %q", i-1, p.cut)
		}
	}
}

// TestExploreRefuses checks what Explore cannot run: it fails at once, or
// right after the run without a crash, saying why, and runs nothing more.
func TestExploreRefuses(t *testing.T) {
	t.Parallel()
	pending := func(context.Context, *saga.Call) (json.RawMessage, error) { return nil, saga.ErrPending }
	tests := []struct {
		name string
		def  func() *saga.Definition
		// fatal is in the failure; runs is how many runs began.
		fatal string
		runs  int
	}{
		{name: "no definition", fatal: "Exploration.Definition is nil"},
		{name: "nil definition", def: func() *saga.Definition { return nil }, fatal: "returned nil", runs: 1},
		{name: "commands", def: func() *saga.Definition {
			return &saga.Definition{Name: "cmd", Steps: []saga.Step{{Name: "a", Commands: saga.Commands{
				Action: func(*saga.Call) (saga.Event, error) { return saga.Event{}, nil }}}}}
		}, fatal: `step "a" sends commands`, runs: 1},
		{name: "pending", def: func() *saga.Definition {
			return &saga.Definition{Name: "later", Steps: []saga.Step{{Name: "a", Action: pending, Timeout: time.Minute,
				Retry: saga.RetryPolicy{MaxAttempts: 1}}}}
		}, fatal: `the run without a crash: step "a" action returned saga.ErrPending`, runs: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ft := &fakeT{T: t}
			runs := 0
			e := Exploration{}
			if tc.def != nil {
				e.Definition = func() *saga.Definition { runs++; return tc.def() }
			}
			Explore(ft, e)
			if !strings.Contains(ft.fatal, tc.fatal) || runs != tc.runs {
				t.Errorf("Explore failed with %q after %d runs, want %q after %d", ft.fatal, runs, tc.fatal, tc.runs)
			}
			if strings.Contains(ft.fatal, ".go:") {
				t.Errorf("the failure has a stack trace: %s", ft.fatal)
			}
		})
	}
}

// TestExploreUnfinished checks the failure for a run without a crash that
// did not end (waiting it out takes Patience).
func TestExploreUnfinished(t *testing.T) {
	t.Parallel()
	r := &runResult{run: &Run{Status: saga.StatusRunning}, wake: Start.Add(time.Hour)}
	err := r.unexplorable()
	if want := "the saga did not end within 30s: it is running, waiting until 2030-01-01T01:00:00Z"; err == nil ||
		!strings.Contains(err.Error(), want) {
		t.Errorf("unexplorable: %v, want %q", err, want)
	}
	r.run.Status = saga.StatusCompleted
	if err := r.unexplorable(); err != nil {
		t.Errorf("unexplorable of a completed saga: %v", err)
	}
}

// TestExploreFatalKeepsViolations checks that a run Explore cannot go on
// after does not lose the violations found before it.
func TestExploreFatalKeepsViolations(t *testing.T) {
	t.Parallel()
	ft := &fakeT{T: t}
	runs := 0
	r := Explore(ft, Exploration{Definition: func() *saga.Definition {
		runs++
		if runs == 6 { // the run that crashes before commit 3
			return nil
		}
		d := newDesk()
		d.twice = "a/action" // the crash before commit 2 breaks it
		return d.def("careless", "a", "b")
	}})
	if !strings.Contains(ft.fatal, "crash before commit 3: Exploration.Definition returned nil") {
		t.Errorf("Explore failed with %q", ft.fatal)
	}
	if len(r.Violations) == 0 || len(ft.errors) != 1 || !strings.Contains(ft.errors[0], "crash before commit 2") {
		t.Errorf("violations %v reported as %q, want those of the crash before commit 2", r.Violations, ft.errors)
	}
}

// The checks, on hand-built runs: each property can fail.

// call builds a journal entry: ok when err is "".
func call(engine int, step string, phase saga.Phase, attempt int, out, err string, began, ended int, events ...string) Call {
	c := Call{Engine: engine, Step: step, Phase: phase, Attempt: attempt, IdempotencyKey: "S/" + step + "/" + string(phase),
		Began: began, Ended: ended}
	if out != "" {
		c.Output = json.RawMessage(out)
	}
	if err != "" {
		c.Err = errors.New(err)
	}
	for _, name := range events {
		c.Events = append(c.Events, saga.Event{Name: name, Payload: json.RawMessage(`{}`)})
	}
	return c
}

func entry(ev storage.Event, step string, phase saga.Phase, attempt int) storage.LogEntry {
	return storage.LogEntry{Event: ev, Step: step, Phase: phase, Attempt: attempt}
}

func event(step, name string) *storage.OutboxEvent {
	return &storage.OutboxEvent{Step: step, Name: name, RoutingKey: name, Payload: json.RawMessage(`{}`)}
}

func TestChecks(t *testing.T) {
	t.Parallel()
	ok := func(context.Context, *saga.Call) (json.RawMessage, error) { return nil, nil }
	line := &saga.Definition{Name: "line", Steps: []saga.Step{
		{Name: "a", Action: ok, Compensation: ok}, {Name: "b", Action: ok, Compensation: ok}, {Name: "c", Action: ok}}}
	fork := &saga.Definition{Name: "fork", Steps: []saga.Step{
		{Name: "a", Action: ok, Compensation: ok},
		{Name: "b", Action: ok, Compensation: ok, After: []string{"a"}},
		{Name: "c", Action: ok, Compensation: ok, After: []string{"a"}}}}
	const (
		act  = saga.PhaseAction
		comp = saga.PhaseCompensation
	)
	succeeded := storage.EventAttemptSucceeded
	// A compensated run of line that passes: a and b acted, c failed, b
	// then a compensated.
	good := func() *facts {
		return &facts{def: line, created: true, status: saga.StatusCompensated, want: saga.StatusCompensated,
			calls: []Call{
				call(1, "a", act, 1, `{"n":1}`, "", 1, 2, "a.done"),
				call(1, "b", act, 1, `{"n":2}`, "", 3, 4, "b.done"),
				call(1, "c", act, 1, "", "refused", 5, 6),
				call(1, "b", comp, 1, "", "", 7, 8),
				call(1, "a", comp, 1, "", "", 9, 10),
			},
			log: []storage.LogEntry{
				entry(succeeded, "a", act, 1), entry(succeeded, "b", act, 1),
				entry(storage.EventAttemptFailed, "c", act, 1),
				entry(succeeded, "b", comp, 1), entry(succeeded, "a", comp, 1),
			},
			outbox: []*storage.OutboxEvent{event("a", "a.done"), event("b", "b.done")},
			data:   map[string]json.RawMessage{"a": json.RawMessage(`{"n":1}`), "b": json.RawMessage(`{"n":2}`)},
		}
	}
	tests := []struct {
		name   string
		change func(f *facts)
		want   Property
		detail string // in the violation's detail
	}{
		{name: "passes", change: func(*facts) {}},
		{name: "not created, no calls", change: func(f *facts) {
			f.created, f.status, f.calls, f.log, f.outbox = false, "", nil, nil, nil
		}},
		{name: "not created, calls", change: func(f *facts) { f.created = false },
			want: PropertyFinal, detail: "never created, yet 5 step calls ran"},
		{name: "not finished", change: func(f *facts) { f.status = saga.StatusCompensating },
			want: PropertyFinal, detail: "did not end"},
		{name: "another end", change: func(f *facts) { f.want = saga.StatusCompleted },
			want: PropertyFinal, detail: "ended compensated; the run without a crash ended completed"},

		{name: "a later call of a key fails", change: func(f *facts) {
			f.calls = append(f.calls, call(2, "b", act, 1, "", "already charged", 11, 12))
		}, want: PropertyIdempotency, detail: "b/action attempt 1 on engine 1: ok, then b/action attempt 1 on engine 2: failed: already charged"},
		{name: "a later call of a key answers otherwise", change: func(f *facts) {
			f.calls = append(f.calls, call(2, "a", act, 1, `{"n":3}`, "", 11, 12, "a.done"))
		}, want: PropertyIdempotency, detail: `returned {"n":1}, then a/action attempt 1 on engine 2: ok returned {"n":3}`},
		{name: "the same answer reformatted is the same", change: func(f *facts) {
			f.calls = append(f.calls, call(2, "a", act, 1, `{ "n": 1 }`, "", 11, 12, "a.done"))
		}},
		{name: "failures before the success are retries", change: func(f *facts) {
			f.calls = append([]Call{call(1, "a", act, 1, "", "busy", 0, 0)}, f.calls...)
		}},
		{name: "the engine records a failure after a success", change: func(f *facts) {
			f.log = append(f.log, storage.LogEntry{Event: storage.EventAttemptFailed, Step: "a", Phase: act, Attempt: 2, Error: "lost"})
		}, want: PropertyIdempotency, detail: "yet the engine recorded attempt 2 failed: lost"},
		{name: "the saga keeps another output", change: func(f *facts) {
			f.data["b"] = json.RawMessage(`{"n":7}`)
		}, want: PropertyIdempotency, detail: `b/action attempt 1 on engine 1: ok returned {"n":2}, yet the saga kept {"n":7} as the output of "b"`},
		{name: "the saga keeps no output", change: func(f *facts) { delete(f.data, "a") },
			want: PropertyIdempotency, detail: `yet the saga kept nothing as the output of "a"`},
		{name: "the output kept reformatted is the same", change: func(f *facts) {
			f.data["a"] = json.RawMessage(`{ "n": 1 }`)
		}},
		{name: "a success recorded twice", change: func(f *facts) {
			// A retry after a recorded success: the participant answers
			// the key as before, and the events are there twice, once per
			// recorded success.
			f.calls = append(f.calls, call(1, "a", act, 2, `{"n":1}`, "", 11, 12, "a.done"))
			f.log = slices.Insert(f.log, 1, entry(succeeded, "a", act, 2))
			f.outbox = append(f.outbox, event("a", "a.done"))
		}, want: PropertyIdempotency, detail: "the engine recorded a/action as succeeded twice: attempt 1, then attempt 2"},
		{name: "a durable success called again after the restart", change: func(f *facts) {
			f.copied = []storage.LogEntry{entry(storage.EventStarted, "", "", 0), entry(succeeded, "a", act, 1)}
			f.calls = append(f.calls, call(2, "a", act, 1, `{"n":1}`, "", 11, 12, "a.done"))
		}, want: PropertyIdempotency, detail: "the file the crash left records a/action attempt 1 as succeeded, " +
			"yet the engine after the restart called it again: a/action attempt 1 on engine 2: ok"},
		{name: "a success not yet durable called again after the restart", change: func(f *facts) {
			f.copied = []storage.LogEntry{entry(storage.EventStarted, "", "", 0), entry(storage.EventAttemptStarted, "a", act, 1)}
			f.calls = append(f.calls, call(2, "a", act, 1, `{"n":1}`, "", 11, 12, "a.done"))
		}},

		{name: "a completed saga compensates", change: func(f *facts) { f.status, f.want = saga.StatusCompleted, "" },
			want: PropertyCompensation, detail: `the saga completed, yet "a" was compensated`},
		{name: "a step that acted is not compensated", change: func(f *facts) {
			f.calls = slices.DeleteFunc(f.calls, func(c Call) bool { return c.Step == "a" && c.Phase == comp })
			f.log = slices.DeleteFunc(f.log, func(e storage.LogEntry) bool { return e.Step == "a" && e.Phase == comp })
		}, want: PropertyCompensation, detail: `"a" succeeded at its participant (a/action attempt 1 on engine 1: ok) but was never compensated`},
		{name: "a compensation the engine did not record", change: func(f *facts) {
			f.log = slices.DeleteFunc(f.log, func(e storage.LogEntry) bool { return e.Step == "b" && e.Phase == comp })
		}, want: PropertyCompensation, detail: `"b" was compensated at its participant`},
		{name: "a step that never acted is compensated", change: func(f *facts) {
			f.calls[1].Err, f.calls[1].Events = errors.New("refused"), nil
			f.log[1].Event, f.outbox = storage.EventAttemptFailed, f.outbox[:1]
			delete(f.data, "b")
		}, want: PropertyCompensation, detail: `"b" was compensated (b/compensation attempt 1 on engine 1: ok), but its action never succeeded`},
		{name: "a step in doubt may be compensated", change: func(f *facts) {
			f.calls[1].Err, f.calls[1].Events = errors.New("refused"), nil
			f.log[1].Event, f.outbox = storage.EventInDoubt, f.outbox[:1]
			delete(f.data, "b")
		}},
		{name: "in doubt, then refused for good, then compensated", change: func(f *facts) {
			// b's attempt was in flight at the crash; run again, it was
			// refused: nothing took effect, and nothing is to undo.
			f.calls[1] = call(2, "b", act, 1, "", "refused", 3, 4)
			f.log[1] = entry(storage.EventInDoubt, "b", act, 1)
			f.log = slices.Insert(f.log, 2, entry(storage.EventAttemptFailed, "b", act, 1))
			f.outbox = f.outbox[:1]
			delete(f.data, "b")
		}, want: PropertyCompensation, detail: `"b" was compensated (b/compensation attempt 1 on engine 1: ok), but its action never succeeded`},
		{name: "in doubt, then cut off again, then compensated", change: func(f *facts) {
			f.calls[1] = call(2, "b", act, 1, "", "timed out", 3, 4)
			f.log[1] = entry(storage.EventInDoubt, "b", act, 1)
			f.log = slices.Insert(f.log, 2, storage.LogEntry{Event: storage.EventAttemptFailed, Step: "b", Phase: act, Attempt: 1,
				OutcomeUnknown: true})
			f.outbox = f.outbox[:1]
			delete(f.data, "b")
		}},
		{name: "cut off, then the fallback refused for good, then compensated", change: func(f *facts) {
			// The fallback has a key of its own: its refusal says nothing
			// of what the action did.
			f.calls[1] = call(1, "b", act, 1, "", "timed out", 3, 4)
			f.calls = slices.Insert(f.calls, 2, call(1, "b", saga.PhaseFallback, 1, "", "refused", 5, 6))
			f.log[1] = storage.LogEntry{Event: storage.EventAttemptFailed, Step: "b", Phase: act, Attempt: 1, OutcomeUnknown: true}
			f.log = slices.Insert(f.log, 2, entry(storage.EventAttemptFailed, "b", saga.PhaseFallback, 1))
			f.outbox = f.outbox[:1]
			delete(f.data, "b")
		}},
		{name: "compensations in the wrong order", change: func(f *facts) {
			f.calls[3], f.calls[4] = call(1, "a", comp, 1, "", "", 7, 8), call(1, "b", comp, 1, "", "", 9, 10)
		}, want: PropertyCompensation, detail: `the compensation of "a" began (a/compensation attempt 1 on engine 1: ok) before that of "b"`},
		{name: "a compensation begun before the one after it succeeded", change: func(f *facts) {
			f.calls[3] = call(1, "b", comp, 1, "", "", 7, 10)
			f.calls[4] = call(1, "a", comp, 1, "", "", 8, 9)
		}, want: PropertyCompensation, detail: `the compensation of "a" began`},
		{name: "parallel branches compensate in any order", change: func(f *facts) {
			f.def = fork
			f.calls = []Call{
				call(1, "a", act, 1, "", "", 1, 2), call(1, "b", act, 1, "", "", 3, 6), call(1, "c", act, 1, "", "", 4, 5),
				call(1, "c", comp, 1, "", "", 7, 9), call(1, "b", comp, 1, "", "", 8, 10), call(1, "a", comp, 1, "", "", 11, 12),
			}
			f.log = []storage.LogEntry{
				entry(succeeded, "a", act, 1), entry(succeeded, "c", act, 1), entry(succeeded, "b", act, 1),
				entry(succeeded, "c", comp, 1), entry(succeeded, "b", comp, 1), entry(succeeded, "a", comp, 1),
			}
			f.outbox, f.data = nil, nil
		}},
		{name: "a parallel branch compensated after the step it depends on", change: func(f *facts) {
			f.def = fork
			f.calls = []Call{
				call(1, "a", act, 1, "", "", 1, 2), call(1, "b", act, 1, "", "", 3, 6), call(1, "c", act, 1, "", "", 4, 5),
				call(1, "b", comp, 1, "", "", 7, 8), call(1, "a", comp, 1, "", "", 9, 10), call(1, "c", comp, 1, "", "", 11, 12),
			}
			f.log = []storage.LogEntry{
				entry(succeeded, "a", act, 1), entry(succeeded, "c", act, 1), entry(succeeded, "b", act, 1),
				entry(succeeded, "b", comp, 1), entry(succeeded, "a", comp, 1), entry(succeeded, "c", comp, 1),
			}
			f.outbox, f.data = nil, nil
		}, want: PropertyCompensation, detail: `before that of "c", which depends on it`},

		{name: "an event missing", change: func(f *facts) { f.outbox = f.outbox[:1] },
			want: PropertyEvents, detail: `event "b.done" of "b" {} is in the outbox 0 times, want 1 (emitted by b/action attempt 1 on engine 1: ok)`},
		{name: "an event twice", change: func(f *facts) { f.outbox = append(f.outbox, event("a", "a.done")) },
			want: PropertyEvents, detail: `event "a.done" of "a" {} is in the outbox 2 times, want 1`},
		{name: "an event of a call whose success was not recorded", change: func(f *facts) {
			f.outbox = append(f.outbox, event("c", "c.done"))
		}, want: PropertyEvents, detail: `event "c.done" of "c" {} is in the outbox 1 times, but no recorded success emitted it`},
		{name: "the events of the call recorded, after a crash", change: func(f *facts) {
			// Engine 1's call of b succeeded with other events, and was
			// not recorded; engine 2's was.
			f.calls[1].Events = []saga.Event{{Name: "b.early", Payload: json.RawMessage(`{}`)}}
			f.calls = append(f.calls, call(2, "b", act, 1, `{"n":2}`, "", 11, 12, "b.done"))
		}},
		{name: "a success recorded without a call", change: func(f *facts) {
			f.log = append(f.log, entry(succeeded, "c", act, 2))
		}, want: PropertyEvents, detail: "the engine recorded c/action attempt 2 as succeeded, but no such call succeeded"},
		{name: "lifecycle events", change: func(f *facts) {
			def := *line
			def.Events.Lifecycle = true
			f.def = &def
			lc := func(step, name string) *storage.OutboxEvent {
				return &storage.OutboxEvent{Step: step, Name: name, RoutingKey: "line." + name, Payload: json.RawMessage(`{"x":1}`)}
			}
			f.outbox = append(f.outbox, lc("", "saga.started"), lc("a", "step.succeeded"), lc("b", "step.succeeded"),
				lc("b", "step.compensated"), lc("a", "step.compensated"), lc("", "saga.compensated"), lc("", "saga.compensated"))
		}, want: PropertyEvents, detail: `event "saga.compensated" is in the outbox 2 times, want 1 (the saga's end)`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := good()
			tc.change(f)
			got := check(f)
			if tc.want == "" {
				if len(got) > 0 {
					t.Errorf("violations %v, want none", got)
				}
				return
			}
			said := false
			for _, v := range got {
				said = said || strings.Contains(v.Detail, tc.detail)
				if v.Property != tc.want {
					t.Errorf("violation %v, want only violations of %s", v, tc.want)
				}
			}
			if !said {
				t.Errorf("violations %v, want one saying %q", got, tc.detail)
			}
		})
	}
}
