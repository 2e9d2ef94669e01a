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
						t.Errorf("%s: the saga is %q with %d calls, want it never created", &run, run.Status, len(run.Calls))
					}
					continue
				}
				if run.Status != tc.want {
					t.Errorf("%s: ended %s, want %s", &run, run.Status, tc.want)
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

// TestExploreRefuses checks what Explore cannot run.
func TestExploreRefuses(t *testing.T) {
	t.Parallel()
	for name, e := range map[string]Exploration{
		"no definition": {},
		"commands": {Definition: func() *saga.Definition {
			return &saga.Definition{Name: "cmd", Steps: []saga.Step{{Name: "a", Commands: saga.Commands{
				Action: func(*saga.Call) (saga.Event, error) { return saga.Event{}, nil }}}}}
		}},
	} {
		ft := &fakeT{T: t}
		Explore(ft, e)
		if ft.fatal == "" {
			t.Errorf("%s: Explore did not fail", name)
		}
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
		}, want: PropertyCompensation, detail: `"b" was compensated (b/compensation attempt 1 on engine 1: ok), but its action never succeeded`},
		{name: "a step in doubt may be compensated", change: func(f *facts) {
			f.calls[1].Err, f.calls[1].Events = errors.New("refused"), nil
			f.log[1].Event, f.outbox = storage.EventInDoubt, f.outbox[:1]
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
			f.outbox = nil
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
			f.outbox = nil
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
