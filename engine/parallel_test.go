package engine_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/recovery"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/steps"
	"github.com/sagad/sagad/storage"
)

// barrier lets n calls through only once all n have arrived: steps that
// pass it ran at the same time. A call that waits longer than a few
// seconds fails.
type barrier struct {
	mu      sync.Mutex
	n       int
	arrived chan struct{}
}

func newBarrier(n int) *barrier { return &barrier{n: n, arrived: make(chan struct{})} }

func (b *barrier) wait(ctx context.Context) error { return b.waitThen(ctx, nil) }

// waitThen is wait; the last call to arrive runs last first, while the
// others wait.
func (b *barrier) waitThen(ctx context.Context, last func()) error {
	b.mu.Lock()
	b.n--
	if b.n == 0 {
		if last != nil {
			last()
		}
		close(b.arrived)
	}
	b.mu.Unlock()
	select {
	case <-b.arrived:
		return nil
	case <-time.After(5 * time.Second):
		return saga.Permanent(errors.New("barrier: the other branches never came: the steps did not run at the same time"))
	case <-ctx.Done():
		return ctx.Err()
	}
}

// TestParallelStepsRunAtOnce: a fan-out of three steps after a root and a
// fan-in step after them: the three run at the same time (a barrier only
// they together can pass), and the fan-in step sees all their outputs.
func TestParallelStepsRunAtOnce(t *testing.T) {
	t.Parallel()
	bar := newBarrier(3)
	var rec recorder
	branch := func(name string) saga.Step {
		return saga.Step{Name: name, After: []string{"root"},
			Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
				if _, ok := c.Data["root"]; !ok {
					return nil, saga.Permanent(fmt.Errorf("%s: no output of root in %v", name, c.Data))
				}
				if err := bar.wait(ctx); err != nil {
					return nil, err
				}
				rec.add(name, c)
				return json.Marshal(name + "-done")
			},
			Compensation: rec.ok("undo-"+name, nil)}
	}
	var seen map[string]json.RawMessage
	def := &saga.Definition{Name: "fan", Steps: []saga.Step{
		{Name: "root", Action: rec.ok("root", "r"), Compensation: rec.ok("undo-root", nil)},
		branch("a"), branch("b"), branch("c"),
		{Name: "join", After: []string{"a", "b", "c"}, Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
			seen = c.Data
			return nil, nil
		}},
	}}
	b := setup(t, setupOpts{defs: []*saga.Definition{def}})
	s := b.run(t, "fan", nil)
	if s.Status != saga.StatusCompleted {
		t.Fatalf("status %s (%v), want completed", s.Status, s.Err)
	}
	for _, k := range []string{"root", "a", "b", "c"} {
		if _, ok := seen[k]; !ok {
			t.Errorf("join saw data %v: no output of %s", seen, k)
		}
	}
	// The log shows the three attempts overlapping: all started before
	// any succeeded.
	log, err := b.eng.Log(context.Background(), s.ID)
	if err != nil {
		t.Fatal(err)
	}
	started, firstDone := 0, -1
	for i, e := range log {
		if e.Step == "a" || e.Step == "b" || e.Step == "c" {
			if e.Event == storage.EventAttemptStarted {
				started++
				if firstDone >= 0 {
					t.Errorf("log entry %d: %s started after a branch succeeded (entry %d)", i, e.Step, firstDone)
				}
			}
			if e.Event == storage.EventAttemptSucceeded && firstDone < 0 {
				firstDone = i
			}
		}
	}
	if started != 3 {
		t.Errorf("%d branch attempts started, want 3", started)
	}
}

// TestParallelFailureWaitsForSiblings: one branch fails for good while
// another runs; the running one is recorded when it ends, nothing new
// starts, and compensation runs in reverse dependency order.
func TestParallelFailureWaitsForSiblings(t *testing.T) {
	t.Parallel()
	var rec recorder
	failed := make(chan struct{})
	def := &saga.Definition{Name: "fail", Steps: []saga.Step{
		{Name: "root", Action: rec.ok("root", nil), Compensation: rec.ok("undo-root", nil)},
		{Name: "slow", After: []string{"root"}, Compensation: rec.ok("undo-slow", nil),
			Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
				<-failed // ends only once its sibling failed for good
				rec.add("slow", c)
				return nil, nil
			}},
		{Name: "bad", After: []string{"root"}, Action: rec.fail("bad", saga.Permanent(errors.New("out of stock"))),
			Compensation: rec.ok("undo-bad", nil)},
		{Name: "never", After: []string{"slow", "bad"}, Action: rec.ok("never", nil)},
	}}
	var once sync.Once
	b := setup(t, setupOpts{defs: []*saga.Definition{def}, opts: engine.Options{Hooks: engine.Hooks{
		AttemptFinished: func(a engine.AttemptInfo) {
			if a.Step == "bad" && a.Err != nil {
				once.Do(func() { close(failed) })
			}
		}}}})
	s := b.run(t, "fail", nil)
	if s.Status != saga.StatusCompensated {
		t.Fatalf("status %s (%v), want compensated", s.Status, s.Err)
	}
	calls := rec.list()
	// root; then bad and slow in either order; undo-slow before undo-root;
	// bad failed without effect: not compensated; never never runs.
	if !slices.Contains(calls, "slow") || slices.Contains(calls, "never") || slices.Contains(calls, "undo-bad") {
		t.Fatalf("calls %v: want slow recorded, never and undo-bad not run", calls)
	}
	if i, j := slices.Index(calls, "undo-slow"), slices.Index(calls, "undo-root"); i < 0 || j < 0 || i > j {
		t.Errorf("calls %v: want undo-slow before undo-root", calls)
	}
	for _, st := range s.Steps {
		want := map[string]saga.StepStatus{"root": saga.StepCompensated, "slow": saga.StepCompensated,
			"bad": saga.StepFailed, "never": saga.StepSkipped}[st.Name]
		if st.Status != want {
			t.Errorf("step %s: %s, want %s", st.Name, st.Status, want)
		}
	}
}

// TestParallelCompensationOrderOfRandomGraphs is a property test: for many
// random graphs and a random step that fails for good, exactly the steps
// that succeeded are compensated, each compensation starts only after the
// compensations of the succeeded steps that waited for it have ended, and
// no step starts before those it waits for succeeded.
func TestParallelCompensationOrderOfRandomGraphs(t *testing.T) {
	t.Parallel()
	testRandomGraphs(t, "")
}

// TestParallelCompensationOrderOfRandomGraphsPostgres is the same on
// PostgreSQL, whose commits and claims differ.
func TestParallelCompensationOrderOfRandomGraphsPostgres(t *testing.T) {
	t.Parallel()
	testRandomGraphs(t, postgresURL(t))
}

func testRandomGraphs(t *testing.T, path string) {
	const graphs = 60
	rng := rand.New(rand.NewPCG(7, 11))
	type span struct{ start, end int64 }
	var clockTick atomic.Int64
	var defs []*saga.Definition
	type run struct {
		def  *saga.Definition
		deps [][]int
		mu   sync.Mutex
		act  map[string]span // succeeded actions
		comp map[string]span
	}
	runs := make([]*run, graphs)
	for g := range graphs {
		n := 2 + rng.IntN(7)
		r := &run{act: map[string]span{}, comp: map[string]span{}, deps: make([][]int, n)}
		def := &saga.Definition{Name: fmt.Sprintf("g%d", g)}
		bad := rng.IntN(n)
		for i := range n {
			name := fmt.Sprintf("s%d", i)
			after := []string{}
			for k := range i {
				if rng.IntN(3) == 0 {
					after = append(after, fmt.Sprintf("s%d", k))
					r.deps[i] = append(r.deps[i], k)
				}
			}
			pause := time.Duration(rng.IntN(3)) * time.Millisecond
			fails := i == bad
			def.Steps = append(def.Steps, saga.Step{Name: name, After: after,
				Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
					start := clockTick.Add(1)
					time.Sleep(pause) // a participant's work, to let branches overlap
					if fails {
						return nil, saga.Permanent(errors.New("refused"))
					}
					r.mu.Lock()
					r.act[name] = span{start, clockTick.Add(1)}
					r.mu.Unlock()
					return nil, nil
				},
				Compensation: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
					start := clockTick.Add(1)
					time.Sleep(pause)
					r.mu.Lock()
					r.comp[name] = span{start, clockTick.Add(1)}
					r.mu.Unlock()
					return nil, nil
				}})
		}
		r.def = def
		runs[g] = r
		defs = append(defs, def)
	}
	b := setup(t, setupOpts{defs: defs, path: path})
	ids := make([]string, graphs)
	for g, r := range runs {
		st, err := b.eng.Start(context.Background(), r.def.Name, nil)
		if err != nil {
			t.Fatal(err)
		}
		ids[g] = st.ID
	}
	for g, r := range runs {
		s := b.wait(t, ids[g])
		if s.Status != saga.StatusCompensated {
			t.Errorf("graph %d: status %s (%v), want compensated", g, s.Status, s.Err)
			continue
		}
		for i, deps := range r.deps {
			name := fmt.Sprintf("s%d", i)
			a, ran := r.act[name]
			c, undone := r.comp[name]
			if ran != undone {
				t.Errorf("graph %d (%v): %s succeeded %v, compensated %v: want both or neither", g, r.deps, name, ran, undone)
			}
			for _, k := range deps {
				dep := fmt.Sprintf("s%d", k)
				if ran && r.act[dep].end > a.start {
					t.Errorf("graph %d (%v): %s started before %s, which it waits for, succeeded", g, r.deps, name, dep)
				}
				// The dependency is compensated after this step's
				// compensation ended.
				if undone && r.comp[dep].start < c.end {
					t.Errorf("graph %d (%v): compensation of %s started before that of %s ended", g, r.deps, dep, name)
				}
			}
		}
	}
}

// TestParallelOutputsSeenByLaterSteps: two steps start with the saga
// (saga.AtStart); the step after both sees their outputs.
func TestParallelOutputsSeenByLaterSteps(t *testing.T) {
	t.Parallel()
	var got map[string]json.RawMessage
	def := &saga.Definition{Name: "roots", Steps: []saga.Step{
		{Name: "x", After: saga.AtStart, Action: func(context.Context, *saga.Call) (json.RawMessage, error) { return json.RawMessage(`1`), nil }},
		{Name: "y", After: saga.AtStart, Action: func(context.Context, *saga.Call) (json.RawMessage, error) { return json.RawMessage(`2`), nil }},
		{Name: "z", After: []string{"x", "y"}, Action: func(_ context.Context, c *saga.Call) (json.RawMessage, error) {
			got = c.Data
			return nil, nil
		}},
	}}
	b := setup(t, setupOpts{defs: []*saga.Definition{def}})
	s := b.run(t, "roots", nil)
	if s.Status != saga.StatusCompleted || string(got["x"]) != "1" || string(got["y"]) != "2" {
		t.Fatalf("status %s, z saw %v: want completed, x=1 and y=2", s.Status, got)
	}
}

// The parallel crash test kills a child process (SIGKILL) while two
// branches of one saga are both inside their actions, restarts the engine
// on the same file, and checks that both branches ran again under their
// idempotency keys, that every saga ended as designed, and that
// compensations ran once each, in reverse dependency order.

const (
	parCrashEnvChild = "SAGAD_PAR_CRASH_CHILD"
	parCrashSagas    = 16
	parCrashHit      = 5 // the saga whose branches meet fifth is killed
)

// parCrashDefinition is root, then a and b in parallel, then join, which
// fails for good for odd inputs. a and b meet at a per-saga barrier before
// they answer, when met is set (in the child); met is called by the branch
// that arrives second.
func parCrashDefinition(j *journal, met func(c *saga.Call)) *saga.Definition {
	var mu sync.Mutex
	bars := map[string]*barrier{}
	call := func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
		if err := j.call(c, "called"); err != nil {
			return nil, err
		}
		// In the child only: after the restart, a branch whose sibling
		// succeeded before the crash runs alone.
		if met != nil && c.Phase == saga.PhaseAction && (c.Step == "a" || c.Step == "b") {
			mu.Lock()
			bar := bars[c.SagaID+"/"+strconv.Itoa(c.Attempt)]
			if bar == nil {
				bar = newBarrier(2)
				bars[c.SagaID+"/"+strconv.Itoa(c.Attempt)] = bar
			}
			mu.Unlock()
			var last func()
			if met != nil {
				last = func() { met(c) }
			}
			if err := bar.waitThen(ctx, last); err != nil {
				return nil, err
			}
		}
		if c.Step == "join" && c.Phase == saga.PhaseAction {
			var in struct{ N int }
			if err := c.DecodeInput(&in); err != nil {
				return nil, saga.Permanent(err)
			}
			if in.N%2 == 1 {
				return nil, saga.Permanent(fmt.Errorf("order %d is odd", in.N))
			}
		}
		return nil, j.call(c, "ok")
	}
	return &saga.Definition{Name: "par-crash", Steps: []saga.Step{
		{Name: "root", Action: call, Compensation: call},
		{Name: "a", After: []string{"root"}, Action: call, Compensation: call},
		{Name: "b", After: []string{"root"}, Action: call, Compensation: call},
		{Name: "join", After: []string{"a", "b"}, Action: call},
	}}
}

// TestParallelCrashChild is the child half of TestParallelCrash.
func TestParallelCrashChild(t *testing.T) {
	if os.Getenv(parCrashEnvChild) == "" {
		t.Skip("the child process of TestParallelCrash")
	}
	j, err := openJournal(os.Getenv(crashEnvJournal))
	if err != nil {
		t.Fatal(err)
	}
	var met atomic.Int64
	def := parCrashDefinition(j, func(c *saga.Call) {
		if met.Add(1) != parCrashHit {
			return
		}
		if err := j.write("kill", "branches_in_flight", c.SagaID, c.Step, c.Phase, c.Attempt); err != nil {
			panic(err)
		}
		if err := syscall.Kill(os.Getpid(), syscall.SIGKILL); err != nil {
			panic(err)
		}
		select {}
	})
	eng, ctx, stop := runChildEngine(t, os.Getenv(crashEnvDB), def)
	defer stop()
	var ids []string
	for n := range parCrashSagas {
		st, err := eng.Start(ctx, "par-crash", map[string]int{"n": n})
		if err != nil {
			t.Fatalf("start: %v", err)
		}
		if err := j.write("started", st.ID, n); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, st.ID)
	}
	for _, id := range ids {
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_, err := eng.Wait(wctx, id)
		cancel()
		if err != nil {
			t.Errorf("wait: %v", err)
		}
	}
	t.Errorf("every saga finished; the branches of %d sagas met, never the %dth time", met.Load(), parCrashHit)
}

func TestParallelCrash(t *testing.T) {
	t.Parallel()
	if os.Getenv(parCrashEnvChild) != "" || os.Getenv(crashEnvChild) != "" {
		t.Skip("in a child process")
	}
	dir := t.TempDir()
	dbPath, jpath := filepath.Join(dir, "sagad.db"), filepath.Join(dir, "journal")
	cmd := exec.Command(os.Args[0], "-test.run=^TestParallelCrashChild$", "-test.count=1", "-test.v", "-test.timeout=60s")
	cmd.Env = append(os.Environ(), parCrashEnvChild+"=1", crashEnvDB+"="+dbPath, crashEnvJournal+"="+jpath, "GORACE=halt_on_error=1")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("child: %v, want it killed; output:\n%s", err, out)
	}
	if ws, ok := ee.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child ended with %v, want SIGKILL; output:\n%s", err, out)
	}
	if err := recovery.CheckFile(dbPath); err != nil {
		t.Fatalf("consistency check right after the crash: %v", err)
	}
	j := reopenJournal(t, jpath)
	b := setup(t, setupOpts{path: dbPath, defs: []*saga.Definition{parCrashDefinition(j, nil)}})

	lines := readJournal(t, jpath)
	var kill jline
	inputs := map[string]int{}
	for _, l := range lines {
		switch l.kind {
		case "kill":
			kill = l
		case "started":
			inputs[l.id] = l.n
		}
	}
	if kill.id == "" {
		t.Fatalf("no kill line in the journal")
	}
	if _, ok := inputs[kill.id]; !ok {
		inputs[kill.id] = -1 // started, not journalled: its input is read from the saga
	}
	ctx := context.Background()
	for id := range inputs {
		s := b.wait(t, id)
		var in struct{ N int }
		if err := json.Unmarshal(s.Input, &in); err != nil {
			t.Fatal(err)
		}
		inputs[id] = in.N
		want := saga.StatusCompleted
		if in.N%2 == 1 {
			want = saga.StatusCompensated
		}
		if s.Status != want {
			t.Errorf("saga %s (n=%d): %s, want %s", id, in.N, s.Status, want)
		}
	}
	lines = readJournal(t, jpath)
	restart := slices.IndexFunc(lines, func(l jline) bool { return l.kind == "restart" })
	// Both branches of the killed saga were inside their actions; both ran
	// again after the restart, under the same keys.
	for _, step := range []string{"a", "b"} {
		var before, after []string
		for _, l := range lines {
			if l.kind == "call" && l.id == kill.id && l.step == step && l.phase == saga.PhaseAction && l.result == "called" {
				if l.pos < restart {
					before = append(before, l.key)
				} else {
					after = append(after, l.key)
				}
			}
		}
		if len(before) != 1 || len(after) != 1 || before[0] != after[0] {
			t.Errorf("branch %s of the killed saga: called with keys %v before the crash and %v after, want one each, the same", step, before, after)
		}
	}
	log, err := b.eng.Log(ctx, kill.id)
	if err != nil {
		t.Fatal(err)
	}
	doubt := 0
	for _, e := range log {
		if e.Event == storage.EventInDoubt && (e.Step == "a" || e.Step == "b") {
			doubt++
		}
	}
	if doubt != 2 {
		t.Errorf("killed saga: %d attempt_in_doubt entries for a and b, want 2", doubt)
	}
	// Compensations, from the sagas' logs: each step's succeeded once (a
	// compensation in flight at the crash ran again, as it should), and
	// root's started only once both branches' had ended.
	for id, n := range inputs {
		if n%2 == 0 {
			continue
		}
		log, err := b.eng.Log(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		done := map[string]int{}
		for _, e := range log {
			if e.Phase != saga.PhaseCompensation {
				continue
			}
			switch e.Event {
			case storage.EventAttemptSucceeded:
				done[e.Step]++
			case storage.EventAttemptStarted:
				if e.Step == "root" && (done["a"] != 1 || done["b"] != 1) {
					t.Errorf("saga %s: root's compensation started before those of a and b ended (%v)", id, done)
				}
			}
		}
		if done["root"] != 1 || done["a"] != 1 || done["b"] != 1 {
			t.Errorf("saga %s: compensations succeeded %v, want once each for root, a and b", id, done)
		}
	}
}

// TestParallelCompensationFailsAfterSiblings: one branch's compensation
// fails for good while another's runs: the saga ends failed once the
// running one has ended (and is recorded), starts nothing else, and a
// retry finishes the compensation in dependency order.
func TestParallelCompensationFailsAfterSiblings(t *testing.T) {
	t.Parallel()
	var rec recorder
	aFailed := make(chan struct{})
	var fixed atomic.Bool
	def := &saga.Definition{Name: "undo", Steps: []saga.Step{
		{Name: "root", Action: rec.ok("root", nil), Compensation: rec.ok("undo-root", nil)},
		{Name: "a", After: []string{"root"}, Action: rec.ok("a", nil), CompensationRetry: fastRetry(1),
			Compensation: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
				if fixed.Load() {
					rec.add("undo-a", c)
					return nil, nil
				}
				return nil, errors.New("refund service down")
			}},
		{Name: "b", After: []string{"root"}, Action: rec.ok("b", nil),
			Compensation: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
				<-aFailed // still running when a's compensation fails for good
				rec.add("undo-b", c)
				return nil, nil
			}},
		{Name: "c", After: []string{"a", "b"}, Action: rec.fail("c", saga.Permanent(errors.New("no")))},
	}}
	var once sync.Once
	b := setup(t, setupOpts{defs: []*saga.Definition{def}, opts: engine.Options{Hooks: engine.Hooks{
		AttemptFinished: func(ai engine.AttemptInfo) {
			if ai.Step == "a" && ai.Phase == saga.PhaseCompensation && ai.Err != nil {
				once.Do(func() { close(aFailed) })
			}
		}}}})
	s := b.run(t, "undo", nil)
	if s.Status != saga.StatusFailed {
		t.Fatalf("status %s (%v), want failed", s.Status, s.Err)
	}
	calls := rec.list()
	if !slices.Contains(calls, "undo-b") || slices.Contains(calls, "undo-root") {
		t.Fatalf("calls %v: want b's compensation recorded, root's not started", calls)
	}
	fixed.Store(true)
	if err := b.eng.Retry(context.Background(), s.ID); err != nil {
		t.Fatal(err)
	}
	s = b.wait(t, s.ID)
	calls = rec.list()
	if s.Status != saga.StatusCompensated || slices.Index(calls, "undo-a") > slices.Index(calls, "undo-root") {
		t.Fatalf("after the retry: %s, calls %v; want compensated, a's before root's", s.Status, calls)
	}
}

// TestParallelTurnAroundAcrossRestart: a branch's action is in flight when
// the saga turns around, and the engine stops before it answers. After the
// restart the action is in doubt: it is compensated, then the step before
// it, and the saga ends compensated (it used to stay compensating).
func TestParallelTurnAroundAcrossRestart(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "sagad.db")
	var rec recorder
	var restarted atomic.Bool
	def := &saga.Definition{Name: "turn", Steps: []saga.Step{
		{Name: "root", Action: rec.ok("root", nil), Compensation: rec.ok("undo-root", nil)},
		{Name: "bad", After: []string{"root"}, Action: rec.fail("bad", saga.Permanent(errors.New("no")))},
		{Name: "slow", After: []string{"root"}, Compensation: rec.ok("undo-slow", nil),
			Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
				if restarted.Load() {
					return nil, nil
				}
				<-ctx.Done() // cut off by the shutdown
				return nil, ctx.Err()
			}},
	}}
	statuses := make(chan saga.Status, 16)
	eng := openEngine(t, path, engine.Options{ShutdownGrace: 10 * time.Millisecond, Hooks: statusSignal(statuses)}, def)
	stop := runEngine(t, eng)
	st, err := eng.Start(context.Background(), "turn", nil)
	if err != nil {
		t.Fatal(err)
	}
	waitStatus(t, statuses, saga.StatusCompensating)
	stop()
	restarted.Store(true)
	b := setup(t, setupOpts{path: path, defs: []*saga.Definition{def}})
	s := b.wait(t, st.ID)
	calls := rec.list()
	if s.Status != saga.StatusCompensated || !slices.Contains(calls, "undo-slow") ||
		slices.Index(calls, "undo-slow") > slices.Index(calls, "undo-root") {
		t.Fatalf("after the restart: %s, calls %v; want compensated, the in-doubt branch undone before root", s.Status, calls)
	}
}

// TestParallelFailurePastPivotAcrossRestart: past the pivot, a branch fails
// for good while another runs, and the engine stops before that one ends.
// After the restart the saga ends failed once the other branch is done (it
// used to stay running, with nothing to wake it).
func TestParallelFailurePastPivotAcrossRestart(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "sagad.db")
	var restarted atomic.Bool
	def := &saga.Definition{Name: "pivot", Steps: []saga.Step{
		{Name: "p", Pivot: true, Action: steps.Noop},
		{Name: "x", After: []string{"p"}, Action: func(context.Context, *saga.Call) (json.RawMessage, error) {
			return nil, saga.Permanent(errors.New("refused"))
		}},
		{Name: "y", After: []string{"p"}, Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
			if restarted.Load() {
				return nil, nil
			}
			<-ctx.Done()
			return nil, ctx.Err()
		}},
	}}
	xFailed := make(chan struct{})
	var once sync.Once
	eng := openEngine(t, path, engine.Options{ShutdownGrace: 10 * time.Millisecond, Hooks: engine.Hooks{
		AttemptFinished: func(a engine.AttemptInfo) {
			if a.Step == "x" && a.Err != nil {
				once.Do(func() { close(xFailed) })
			}
		}}}, def)
	stop := runEngine(t, eng)
	st, err := eng.Start(context.Background(), "pivot", nil)
	if err != nil {
		t.Fatal(err)
	}
	<-xFailed
	stop()
	restarted.Store(true)
	b := setup(t, setupOpts{path: path, defs: []*saga.Definition{def}})
	s := b.wait(t, st.ID)
	if s.Status != saga.StatusFailed || s.Err == nil || !strings.Contains(s.Err.Error(), `step "x" after the pivot failed for good`) {
		t.Fatalf("after the restart: %s (%v), want failed because of x", s.Status, s.Err)
	}
	for _, step := range s.Steps {
		if step.Name == "y" && step.Status != saga.StepSucceeded {
			t.Errorf("y: %s, want succeeded (it ran again after the restart)", step.Status)
		}
	}
}
