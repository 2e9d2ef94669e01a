package sagatest

// The crash explorer. A run without a crash learns a saga's durable points:
// the commits of its record (SagaCreate, SagaCommit), each with the log
// entries and outbox events it carries. Then, for every point and both
// kinds of crash, a new run kills its engine there, in process, as a
// SIGKILL would: the store it used is copied as it stands at that instant
// (bbolt's consistent Backup), and from then on nothing that engine does
// reaches a participant or the copy. A new engine opens the copy, recovers
// the saga, drives it to its end, and the run is checked.
//
// Abandoning an engine: a gate, shared by the engine's store and its step
// functions, closes at the crash. Writes and calls that reach it block until
// the run tears the engine down, then fail; they never reach the file the
// next engine opens, nor a participant. Calls already inside a participant
// run on to their end: a participant outlives the orchestrator, and its
// journal entry says what it did. The teardown waits for them (up to
// Patience) before it cancels anything, and the engine is closed (and every
// one of its goroutines gone) before the next one starts, so calls of the
// two never overlap.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cockroachdb/errors"
	"github.com/oklog/ulid/v2"

	"github.com/sagad/sagad/clock"
	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/internal/dag"
	"github.com/sagad/sagad/internal/jsonw"
	"github.com/sagad/sagad/recovery"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
	"github.com/sagad/sagad/storage/bolt"
)

// CrashKind says where, around a durable point, a run of Explore crashes
// its engine.
type CrashKind string

// Crash kinds.
const (
	// CrashBefore: the calls of step functions since the previous durable
	// point have happened; the point's write never lands.
	CrashBefore CrashKind = "before"
	// CrashAfter: the point's write is durable; nothing after it happens.
	CrashAfter CrashKind = "after"
)

// Property names what Explore checks of every run.
type Property string

// Properties.
const (
	// PropertyFinal: the saga ended in a final status
	// (saga.Status.Finished), the one the run without a crash ended in.
	// The comparison is strict: a saga whose ending depends on timing (a
	// parallel branch failing for good before or after another one
	// passes its pivot, a deadline racing a step) may end otherwise after
	// a crash, and is reported.
	PropertyFinal Property = "final"
	// PropertyIdempotency: once a call of an idempotency key succeeded, no
	// later call of that key failed or returned another output, and the
	// engine recorded no failure of it (other than an unknown outcome);
	// the output the saga kept for a step (engine.Saga.Data) is the one
	// the first successful call of its key returned; the engine recorded
	// at most one success of each step's action, fallback and
	// compensation; and the engine after the restart called no phase whose
	// success the file the crash left had recorded. (A success recorded
	// twice is reported here rather than under PropertyEvents, which
	// expects the events of every recorded success: the fault is the
	// second run of the step, the duplicated events only its symptom.)
	PropertyIdempotency Property = "idempotency"
	// PropertyCompensation: a completed saga compensated nothing; a
	// compensated one compensated every step whose action or fallback
	// succeeded at its participant; no step was compensated unless its
	// action or fallback succeeded at its participant or the last outcome
	// the engine recorded of its action (or of its fallback) was unknown
	// (attempt_in_doubt, or a failure with an unknown outcome: a later,
	// definite failure of the same phase settles the doubt); and a step's
	// compensation began only once the compensations of the steps that
	// depend on it (directly or not) had succeeded: for a sequential
	// saga, exact reverse order.
	PropertyCompensation Property = "compensation"
	// PropertyEvents: every event emitted by a call whose success the
	// engine recorded (attempt_succeeded) is in the outbox exactly once,
	// and no other event of the saga's steps is; with lifecycle events on,
	// each of those is there once too.
	PropertyEvents Property = "events"
	// PropertyFile: the file a crash left, and the one a run ended with,
	// pass the storage's consistency check.
	PropertyFile Property = "file"
)

// Exploration is what Explore runs: a definition and an input.
//
// The crash points are the saga's own commits (SagaCreate and SagaCommit)
// and nothing else: no outbox relay runs, so events stay in the outbox
// unpublished, and no operator action (abort, pause, retry, resolve,
// replace input) is taken, so their writes are not explored.
type Exploration struct {
	// Definition returns the definition to explore with participants of
	// its own. Explore calls it once per run, in the order of the runs
	// (Report.Reference, then Report.Runs), so that every run starts from
	// fresh participants: keep what it returns to check the participants'
	// state afterwards. The engine that crashes and the one that finishes
	// the saga after the restart share what one call returned, as remote
	// participants outlive an orchestrator.
	//
	// The saga must end on its own: Explore refuses steps sent as
	// commands (saga.Step.Commands) and, after the run without a crash,
	// steps that returned saga.ErrPending (nothing answers them) or a saga
	// that did not end within Patience (a step that waits for something
	// outside the saga). Steps may honour their context: a call in flight
	// at a crash is not cancelled until it returns (or Patience passes).
	Definition func() *saga.Definition
	// Input is the saga's input, as given to engine.Engine.Start.
	Input any
	// Engine is the engines' options. Clock and ShutdownGrace are set by
	// Explore, Logger when nil, and Hooks are wrapped: yours run too, for
	// both engines of a run (the one that crashes reports nothing after
	// its crash). Retention and Outbox.Retention are cleared: a saga
	// pruned once it ended would read as a violation.
	Engine engine.Options
}

// Point is a durable point of a saga: one commit, the atomic write of its
// record with the log entries (and outbox events) it carries. Points are
// numbered from 1 in commit order, and named "commit N" (Point.String,
// Run.String): the commit that creates the saga is commit 1.
type Point struct {
	// N numbers the point from 1, in commit order; 0 is no point.
	N int
	// Log holds the log entries the commit carries.
	Log []storage.LogEntry
}

// String describes the point: "commit 3: attempt_succeeded charge/action,
// attempt_started ship/action".
func (p Point) String() string {
	if p.N == 0 {
		return "no commit"
	}
	labels := make([]string, len(p.Log))
	for i, e := range p.Log {
		labels[i] = entryLabel(e)
	}
	return fmt.Sprintf("commit %d: %s", p.N, strings.Join(labels, ", "))
}

// entryLabel is a log entry in a few words: "attempt_started charge/action".
func entryLabel(e storage.LogEntry) string {
	s := string(e.Event)
	if e.Step != "" {
		s += " " + e.Step
		if e.Phase != "" {
			s += "/" + string(e.Phase)
		}
	}
	if e.Attempt > 1 {
		s += fmt.Sprintf(" #%d", e.Attempt)
	}
	if e.Event == storage.EventStatus {
		s += " " + string(e.Status)
	}
	return s
}

// Call is one call of a step function that reached the participant, as
// Explore's journal recorded it when it returned.
type Call struct {
	// Engine is 1 for the engine a run started with (the one that
	// crashed), 2 for the one that finished the saga after the restart.
	Engine int
	// Step is the step's name; Phase the function called (action,
	// fallback or compensation).
	Step  string
	Phase saga.Phase
	// Attempt is the attempt's number within its phase, from 1 (a call
	// run again after a crash keeps its number).
	Attempt int
	// IdempotencyKey is the key the call carried (saga.Call): one per
	// saga, step and phase, the same for every attempt.
	IdempotencyKey string
	// Output is what the function returned; nil when it returned none.
	Output json.RawMessage
	// Err is the function's error (a panic's too), nil on success.
	Err error
	// Events are the events the function emitted (saga.Call.Emit).
	Events []saga.Event
	// Began and Ended order the run's calls: numbers from one counter,
	// taken as the call began and as it returned.
	Began, Ended int
}

// String describes the call: "charge/action attempt 1 on engine 2: ok".
func (c Call) String() string {
	res := "ok"
	if c.Err != nil {
		res = "failed: " + c.Err.Error()
	}
	return fmt.Sprintf("%s/%s attempt %d on engine %d: %s", c.Step, c.Phase, c.Attempt, c.Engine, res)
}

// Run is one run of an exploration.
type Run struct {
	// Kind is how the run crashed; empty for the run without a crash.
	Kind CrashKind
	// Point is the point the run crashed at, as this run wrote it (after)
	// or was about to (before). Its Log is empty when the run did not get
	// that far: the saga ended first, which a saga with parallel steps
	// may do, since how its outcomes group into commits varies.
	Point Point
	// Crashed reports whether the run reached its point and crashed there.
	Crashed bool
	// SagaID is the saga's id (the one it was to have, when a crash
	// before point 1 kept it from being created).
	SagaID string
	// Status is how the saga ended (or where it stood after Patience);
	// empty when it was never created.
	Status saga.Status
	// Calls are the calls of step functions, of both engines, in the order
	// they returned.
	Calls []Call
	// Log is the saga's step log as the run left it.
	Log []storage.LogEntry
}

// String says which run it is: "crash before commit 3: ...".
func (r Run) String() string {
	switch {
	case r.Kind == "":
		return "the run without a crash"
	case !r.Crashed:
		return fmt.Sprintf("crash %s commit %d (not reached: the saga ended first)", r.Kind, r.Point.N)
	}
	return fmt.Sprintf("crash %s %s", r.Kind, r.Point)
}

// Violation is a property a run broke.
type Violation struct {
	// Run is the index of the run in Report.Runs (-1: Report.Reference);
	// the run's Calls and Log show what happened.
	Run int
	// Kind and Point say where the run crashed, as the run's Kind and
	// Point do.
	Kind  CrashKind
	Point Point
	// Property is what broke.
	Property Property
	// Detail says how, naming steps, keys and calls.
	Detail string

	run string // the run, as Run.String describes it
}

// String describes the violation in one line: the run, the property, the
// detail.
func (v Violation) String() string {
	run := v.run
	if run == "" {
		run = fmt.Sprintf("run %d", v.Run)
	}
	return fmt.Sprintf("%s: %s: %s", run, v.Property, v.Detail)
}

// Report is what Explore found.
type Report struct {
	// Points are the durable points of the run without a crash, in order.
	Points []Point
	// Reference is the run without a crash.
	Reference Run
	// Runs are the runs with a crash: for every point in order, one that
	// crashes before it, then one that crashes after it.
	Runs []Run
	// Violations are the properties broken, by every run, in run order.
	Violations []Violation
}

// Explore explores the crashes of one saga. It runs the saga once to learn
// its durable points (its commits), then, for each point and each
// CrashKind, runs it again, crashes the engine at that point (in process,
// as a kill would: the store is abandoned as it stands, and nothing the
// dead engine does afterwards reaches a participant or the store; calls
// already inside a participant run to their end), reopens the store in a
// new engine, lets it recover and finish the saga, moving a fake clock to
// each wake as Harness.Run does, and checks the run: see the Property
// constants. Each run starts over from a fresh definition (see
// Exploration.Definition) on a file of its own.
//
// Explore fails the test with Errorf, listing every violation with its
// point, crash kind and property, and returns the report for further
// assertions. It fails it with Fatalf when it cannot run the saga at all,
// or when the run without a crash did not end (see
// Exploration.Definition), after reporting the violations found so far. A
// run with a crash whose saga does not end within Patience is a violation
// of PropertyFinal.
func Explore(t T, e Exploration) *Report {
	t.Helper()
	rep := &Report{}
	if e.Definition == nil {
		t.Fatalf("sagatest: explore: Exploration.Definition is nil")
		return rep
	}
	x := &explorer{e: e, dir: t.TempDir()}
	ref, err := x.run(0, "", "")
	if err == nil {
		err = ref.unexplorable()
	}
	if err != nil {
		t.Fatalf("sagatest: explore: the run without a crash: %v", err)
		return rep
	}
	rep.Points, rep.Reference = ref.points, *ref.run
	rep.add(-1, ref.violations)
	for n := range rep.Points {
		for _, kind := range []CrashKind{CrashBefore, CrashAfter} {
			r, err := x.run(n+1, kind, ref.run.Status)
			if err != nil {
				if len(rep.Violations) > 0 {
					t.Errorf("%s", rep.summary(x.name, e.Input))
				}
				t.Fatalf("sagatest: explore %s: crash %s commit %d: %v", x.name, kind, n+1, err)
				return rep
			}
			rep.Runs = append(rep.Runs, *r.run)
			rep.add(len(rep.Runs)-1, r.violations)
		}
	}
	if len(rep.Violations) > 0 {
		t.Errorf("%s", rep.summary(x.name, e.Input))
	}
	return rep
}

// add adds the violations of run i (-1: the reference).
func (r *Report) add(i int, vs []Violation) {
	for _, v := range vs {
		v.Run = i
		r.Violations = append(r.Violations, v)
	}
}

// summary is the failure Explore reports.
func (r *Report) summary(name string, input any) string {
	var b strings.Builder
	in, err := json.Marshal(input)
	if err != nil || len(in) > 200 {
		in = []byte("…")
	}
	broken := map[int]bool{}
	for _, v := range r.Violations {
		broken[v.Run] = true
	}
	fmt.Fprintf(&b, "sagatest: explore %s with input %s: %d of %d runs broke a property:\n",
		name, in, len(broken), len(r.Runs)+1)
	last := -2
	for _, v := range r.Violations {
		if v.Run != last {
			fmt.Fprintf(&b, "  %s:\n", v.run)
			last = v.Run
		}
		fmt.Fprintf(&b, "    %s: %s\n", v.Property, v.Detail)
	}
	fmt.Fprintf(&b, "the run without a crash ended %s after %d durable points:\n", r.Reference.Status, len(r.Points))
	for _, p := range r.Points {
		fmt.Fprintf(&b, "  %s\n", p)
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// explorer runs the runs of one exploration.
type explorer struct {
	e    Exploration
	dir  string
	name string // the definition's name, for messages
}

// runResult is a run with what the explorer learnt from it.
type runResult struct {
	run        *Run
	points     []Point   // the points the first engine wrote
	wake       time.Time // when the saga was to wake, if it did not end
	violations []Violation
}

// errCrashed fails what a crashed engine does after its crash.
var errCrashed = errors.New("sagatest: the engine crashed here (explorer)")

// run runs the saga once, crashing at point n as kind says (n 0: no
// crash), and checks it; want is the status the run without a crash ended
// in (empty for that run).
func (x *explorer) run(n int, kind CrashKind, want saga.Status) (*runResult, error) {
	base := x.e.Definition()
	if err := explorable(base); err != nil {
		return nil, err
	}
	x.name = base.Name
	clk := clock.NewFake(Start)
	j := &journal{}
	name := fmt.Sprintf("run-%03d-%s", n, cmpOr(string(kind), "none"))
	first, err := x.open(1, filepath.Join(x.dir, name+"-1.db"), base, j, clk,
		crashPlan{at: n, kind: kind, snapshot: filepath.Join(x.dir, name+"-2.db")})
	if err != nil {
		return nil, err
	}
	res := &runResult{run: &Run{Kind: kind, Point: Point{N: n}}}
	var files []Violation

	started := make(chan error, 1)
	go func() {
		_, err := first.eng.Start(context.Background(), base.Name, x.e.Input)
		started <- err
	}()
	crashed, startPending := false, true
	select {
	case err := <-started:
		startPending = false
		if err != nil && !first.store.crashing() {
			_ = first.stop()
			return nil, errors.Wrapf(err, "start %s", base.Name)
		}
	case <-first.store.crashed:
		crashed = true
	}
	id := first.store.id()
	final := first
	var copied []storage.LogEntry // the saga's log in the crash's copy
	if !crashed {
		crashed = drive(first, clk, id.String()) == nil
	}
	res.points = first.store.commits()
	if crashed {
		res.run.Crashed, res.run.Point = true, res.points[n-1]
		_ = first.stop() // a dead engine's errors are its own
		if startPending {
			<-started
		}
		_ = os.Remove(first.path)
		if err := first.store.snapshotErr(); err != nil {
			return nil, err
		}
		if err := recovery.CheckFile(first.store.plan.snapshot); err != nil {
			files = append(files, Violation{Property: PropertyFile,
				Detail: fmt.Sprintf("the file the crash left is inconsistent: %v", err)})
		}
		if copied, err = logOf(first.store.plan.snapshot, id); err != nil {
			return nil, errors.Wrap(err, "the crash's copy of the file")
		}
		if final, err = x.open(2, first.store.plan.snapshot, base, j, clk, crashPlan{}); err != nil {
			return nil, errors.Wrap(err, "restart")
		}
	}

	f := &facts{def: base, want: want, copied: copied}
	if id != (ulid.ULID{}) {
		res.run.SagaID = id.String()
		if _, err := final.eng.Get(context.Background(), id.String()); err == nil {
			f.created = true
			last := drive(final, clk, id.String())
			f.status, f.wake, f.data = last.Status, last.WakeAt, last.Data
		} else if !errors.Is(err, engine.ErrNotFound) {
			_ = final.stop()
			return nil, err
		}
	}
	if f.created {
		if f.log, err = final.eng.Log(context.Background(), id.String()); err != nil {
			_ = final.stop()
			return nil, err
		}
		if f.outbox, err = final.store.outbox(id); err != nil {
			_ = final.stop()
			return nil, err
		}
	}
	if err := final.stop(); err != nil {
		return nil, errors.Wrap(err, "stop the engine")
	}
	if err := recovery.CheckFile(final.path); err != nil {
		files = append(files, Violation{Property: PropertyFile,
			Detail: fmt.Sprintf("the file the run ended with is inconsistent: %v", err)})
	}
	_ = os.Remove(final.path)
	f.calls = j.all()
	res.run.Status, res.run.Calls, res.run.Log, res.wake = f.status, f.calls, f.log, f.wake

	where := res.run.String()
	for _, v := range append(files, check(f)...) {
		v.run, v.Kind, v.Point = where, kind, res.run.Point
		res.violations = append(res.violations, v)
	}
	return res, nil
}

// logOf reads the log of saga id in the file at path; nil when the file
// holds no such saga.
func logOf(path string, id ulid.ULID) ([]storage.LogEntry, error) {
	if id == (ulid.ULID{}) {
		return nil, nil
	}
	db, err := bolt.Open(path, &bolt.Options{ReadOnly: true})
	if err != nil {
		return nil, errors.Wrapf(err, "open %s", path)
	}
	log, err := db.LogList(context.Background(), id)
	if errors.Is(err, storage.ErrNotFound) {
		log, err = nil, nil
	}
	return log, errors.CombineErrors(err, db.Close())
}

// unexplorable says why the run without a crash cannot be explored: a step
// returned saga.ErrPending, or the saga did not end; nil if it can.
func (r *runResult) unexplorable() error {
	for _, c := range r.run.Calls {
		if errors.Is(c.Err, saga.ErrPending) {
			return errors.Newf("step %q %s returned saga.ErrPending: Explore answers no participant (engine.Engine.Complete); "+
				"explore steps that answer when they return", c.Step, c.Phase)
		}
	}
	if !r.run.Status.Finished() {
		wake := ""
		if !r.wake.IsZero() {
			wake = fmt.Sprintf(", waiting until %s", r.wake.Format(time.RFC3339))
		}
		return errors.Newf("the saga did not end within %s: it is %s%s; Explore needs a saga that ends on its own, "+
			"with no step waiting for anything outside it", Patience, cmpOr(string(r.run.Status), "not created"), wake)
	}
	return nil
}

// explorable refuses what Explore cannot run: steps sent as commands (no
// relay runs, nothing answers them). What a definition does not show (a
// step that returns saga.ErrPending, or waits for something outside the
// saga) is refused after the run without a crash: see unexplorable.
func explorable(def *saga.Definition) error {
	if def == nil {
		return errors.New("Exploration.Definition returned nil")
	}
	for _, st := range def.Steps {
		if st.Commands.Any() {
			return errors.Newf("definition %s: step %q sends commands: the explorer runs step functions only", def.Name, st.Name)
		}
	}
	return nil
}

func cmpOr(s, or string) string {
	if s == "" {
		return or
	}
	return s
}

// drive drives a saga on inc until it ends, as Harness.Finish does, and
// returns it as it ended; nil when inc's engine crashed first. It gives up
// after Patience and returns the saga as it was.
func drive(inc *incarnation, clk *clock.Fake, id string) *engine.Saga {
	ctx := context.Background()
	deadline := time.NewTimer(Patience) // real time: how long a run may take
	defer deadline.Stop()
	poll := time.NewTicker(5 * time.Millisecond)
	defer poll.Stop()
	for {
		s, err := inc.eng.Get(ctx, id)
		switch {
		case inc.store.crashing():
			// A crash has begun: the saga, read or not, is the next
			// engine's now.
			<-inc.store.crashed
			return nil
		case err != nil:
			return &engine.Saga{ID: id, Status: saga.Status("unreadable: " + err.Error())}
		case s.Status.Finished():
			return s
		}
		skipIdle(clk, s)
		select {
		case <-inc.changed:
		case <-inc.store.crashed:
		case <-deadline.C:
			return s
		case <-poll.C:
			// The engine's timer for a wake is set after the commit its
			// hook reports: look again shortly.
		}
	}
}

// incarnation is one engine of a run: the one it starts with, or the one
// after the restart.
type incarnation struct {
	eng     *engine.Engine
	store   *crashStore
	path    string
	changed chan struct{}
	cancel  context.CancelFunc
	runErr  chan error
}

// open opens the engine number n of a run on path, with base registered
// (its functions journalled in j), and runs it.
func (x *explorer) open(n int, path string, base *saga.Definition, j *journal, clk *clock.Fake, plan crashPlan) (*incarnation, error) {
	db, err := bolt.Open(path, &bolt.Options{NoSync: true, Clock: clk})
	if err != nil {
		return nil, errors.Wrapf(err, "open %s", path)
	}
	inc := &incarnation{path: path, changed: make(chan struct{}, 1), runErr: make(chan error, 1),
		store: &crashStore{DB: db, plan: plan, gate: newGate(), crashed: make(chan struct{})}}
	o := x.e.Engine
	o.Clock = clk
	// stop lets a crashed engine's calls inside participants end before it
	// tears the engine down; what is left then (attempts blocked at the
	// gate) has nothing to finish. The engine after the restart stops with
	// nothing in flight, unless its saga did not end.
	o.ShutdownGrace = time.Millisecond
	// A pruned saga would read as a violation.
	o.Retention, o.Outbox.Retention = 0, 0
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	o.Hooks = poked(o.Hooks, inc.changed)
	eng, err := engine.New(inc.store, o)
	if err != nil {
		_ = db.Close()
		return nil, errors.Wrap(err, "engine")
	}
	inc.eng = eng
	if err := eng.Register(journalled(base, n, j, inc.store.gate)); err != nil {
		_ = eng.Close()
		return nil, errors.Wrapf(err, "register %s", base.Name)
	}
	ctx, cancel := context.WithCancel(context.Background())
	inc.cancel = cancel
	go func() { inc.runErr <- eng.Run(ctx) }()
	select {
	case <-eng.Recovered():
	case err := <-inc.runErr:
		cancel()
		return nil, errors.CombineErrors(errors.Wrap(err, "run"), eng.Close())
	}
	return inc, nil
}

// stop tears the engine down: once its calls inside participants have
// returned (a crashed engine's, for up to Patience: they are the
// participants' work, which a crash of the orchestrator does not stop),
// what its crash blocked fails, Run returns, and Close waits for every one
// of its goroutines.
func (inc *incarnation) stop() error {
	if inc.store.gate.isDead() {
		inc.store.gate.settle(Patience)
	}
	inc.store.gate.release()
	inc.cancel()
	err := <-inc.runErr
	return errors.CombineErrors(err, inc.eng.Close())
}

// gate is what a crash closes: afterwards, whatever passes through it
// waits for the engine's teardown, then fails. It counts the calls that
// passed it and have not returned: the calls inside participants.
type gate struct {
	mu       sync.Mutex
	dead     bool
	calls    int           // calls inside participants
	idle     chan struct{} // closed when calls drops to 0, for settle
	once     sync.Once
	released chan struct{}
}

func newGate() *gate { return &gate{released: make(chan struct{})} }

// pass reports whether the engine is alive; if not, it returns only once
// the engine is torn down.
func (g *gate) pass() bool {
	if !g.isDead() {
		return true
	}
	<-g.released
	return false
}

// enter is pass for a call: when it reports true, the call is counted
// inside its participant until it calls leave.
func (g *gate) enter() bool {
	g.mu.Lock()
	if g.dead {
		g.mu.Unlock()
		<-g.released
		return false
	}
	g.calls++
	g.mu.Unlock()
	return true
}

func (g *gate) leave() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.calls--
	if g.calls == 0 && g.idle != nil {
		close(g.idle)
		g.idle = nil
	}
}

// kill closes the gate: the crash.
func (g *gate) kill() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.dead = true
}

func (g *gate) isDead() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.dead
}

// settle waits, for up to d, until no call is inside a participant.
func (g *gate) settle(d time.Duration) {
	timer := time.NewTimer(d) // real time: the participants'
	defer timer.Stop()
	for {
		g.mu.Lock()
		if g.calls == 0 {
			g.mu.Unlock()
			return
		}
		if g.idle == nil {
			g.idle = make(chan struct{})
		}
		idle := g.idle
		g.mu.Unlock()
		select {
		case <-idle:
		case <-timer.C:
			return // what is left is cancelled
		}
	}
}

func (g *gate) release() { g.once.Do(func() { close(g.released) }) }

// crashPlan says where a store crashes: at its write number at (0: never),
// before or after it, leaving a copy of itself at snapshot.
type crashPlan struct {
	at       int
	kind     CrashKind
	snapshot string
}

// crashStore is a bbolt store that counts the saga's durable points and
// crashes at one of them: it copies the file as it stands then and lets
// no write through afterwards.
type crashStore struct {
	*bolt.DB
	plan    crashPlan
	gate    *gate
	crashed chan struct{} // closed once the crash is over: the copy is made

	mu      sync.Mutex
	points  []Point
	saga    ulid.ULID
	snapErr error
}

// begin counts a write of the saga's record and says whether to crash at it.
func (s *crashStore) begin(t *storage.Transition) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.saga == (ulid.ULID{}) {
		s.saga = t.Saga.ID
	}
	s.points = append(s.points, Point{N: len(s.points) + 1, Log: slices.Clone(t.Log)})
	return len(s.points) == s.plan.at
}

// crash kills the store: nothing passes its gate any more, and the file,
// as it stands, is copied for the next engine.
func (s *crashStore) crash() {
	s.gate.kill()
	err := s.snapshot()
	s.mu.Lock()
	s.snapErr = err
	s.mu.Unlock()
	close(s.crashed)
}

func (s *crashStore) snapshot() error {
	f, err := os.OpenFile(s.plan.snapshot, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return errors.Wrap(err, "the crash's copy of the file")
	}
	_, err = s.Backup(f)
	return errors.CombineErrors(errors.Wrap(err, "the crash's copy of the file"), f.Close())
}

// crashing reports whether the crash has begun.
func (s *crashStore) crashing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.plan.at > 0 && len(s.points) >= s.plan.at
}

func (s *crashStore) commits() []Point {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.points)
}

func (s *crashStore) id() ulid.ULID {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.saga
}

func (s *crashStore) snapshotErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snapErr
}

// dead is what a write that meets the crash returns, once the engine is
// torn down.
func (s *crashStore) dead() error {
	<-s.gate.released
	return errCrashed
}

// SagaCreate implements storage.SagaStore: a durable point.
func (s *crashStore) SagaCreate(ctx context.Context, t *storage.Transition) (ulid.ULID, error) {
	if !s.gate.pass() {
		return ulid.ULID{}, errCrashed
	}
	crash := s.begin(t)
	if crash && s.plan.kind == CrashBefore {
		s.crash()
		return ulid.ULID{}, s.dead()
	}
	dup, err := s.DB.SagaCreate(ctx, t)
	if crash {
		s.crash()
		return ulid.ULID{}, s.dead()
	}
	return dup, err
}

// SagaCommit implements storage.SagaStore: a durable point.
func (s *crashStore) SagaCommit(ctx context.Context, t *storage.Transition) error {
	if !s.gate.pass() {
		return errCrashed
	}
	crash := s.begin(t)
	if crash && s.plan.kind == CrashBefore {
		s.crash()
		return s.dead()
	}
	err := s.DB.SagaCommit(ctx, t)
	if crash {
		s.crash()
		return s.dead()
	}
	return err
}

// The other writes stop at the crash too.

func (s *crashStore) SagaDelete(ctx context.Context, ids []ulid.ULID) (int, error) {
	if !s.gate.pass() {
		return 0, errCrashed
	}
	return s.DB.SagaDelete(ctx, ids)
}

func (s *crashStore) AbortPut(ctx context.Context, id ulid.ULID, at time.Time, check func(*storage.Saga) error) error {
	if !s.gate.pass() {
		return errCrashed
	}
	return s.DB.AbortPut(ctx, id, at, check)
}

func (s *crashStore) BreakerPut(ctx context.Context, name string, state []byte) error {
	if !s.gate.pass() {
		return errCrashed
	}
	return s.DB.BreakerPut(ctx, name, state)
}

func (s *crashStore) DefinitionPut(ctx context.Context, name, version string, spec []byte) (bool, error) {
	if !s.gate.pass() {
		return false, errCrashed
	}
	return s.DB.DefinitionPut(ctx, name, version, spec)
}

func (s *crashStore) OutboxRequeue(ctx context.Context, id ulid.ULID) (bool, error) {
	if !s.gate.pass() {
		return false, errCrashed
	}
	return s.DB.OutboxRequeue(ctx, id)
}

func (s *crashStore) OutboxRequeueAll(ctx context.Context, limit int) (int, error) {
	if !s.gate.pass() {
		return 0, errCrashed
	}
	return s.DB.OutboxRequeueAll(ctx, limit)
}

func (s *crashStore) OutboxDiscard(ctx context.Context, id ulid.ULID) error {
	if !s.gate.pass() {
		return errCrashed
	}
	return s.DB.OutboxDiscard(ctx, id)
}

func (s *crashStore) OutboxPrune(ctx context.Context, before time.Time, limit int) (int, bool, error) {
	if !s.gate.pass() {
		return 0, false, errCrashed
	}
	return s.DB.OutboxPrune(ctx, before, limit)
}

func (s *crashStore) OutboxMark(ctx context.Context, produced []ulid.ULID, failed []storage.OutboxFailure, at time.Time) ([]int, error) {
	if !s.gate.pass() {
		return nil, errCrashed
	}
	return s.DB.OutboxMark(ctx, produced, failed, at)
}

// outbox returns the saga's events in the outbox, in every status.
func (s *crashStore) outbox(id ulid.ULID) ([]*storage.OutboxEvent, error) {
	var out []*storage.OutboxEvent
	for _, st := range storage.OutboxStatuses {
		o := storage.OutboxListOptions{Status: st, Limit: 1000}
		for {
			evs, more, err := s.DB.OutboxList(context.Background(), o)
			if err != nil {
				return nil, errors.Wrap(err, "outbox")
			}
			for _, ev := range evs {
				if ev.SagaID == id {
					out = append(out, ev)
				}
			}
			if !more || len(evs) == 0 {
				break
			}
			o.After = evs[len(evs)-1].ID
		}
	}
	return out, nil
}

// journal records the calls of a run's step functions, of both engines.
type journal struct {
	mu    sync.Mutex
	clock int
	calls []Call
}

func (j *journal) tick() int {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.clock++
	return j.clock
}

func (j *journal) add(c Call) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.clock++
	c.Ended = j.clock
	j.calls = append(j.calls, c)
}

func (j *journal) all() []Call {
	j.mu.Lock()
	defer j.mu.Unlock()
	return slices.Clone(j.calls)
}

// journalled returns a copy of base for engine number n whose functions
// are journalled in j, and reach their participant only while g is open.
func journalled(base *saga.Definition, n int, j *journal, g *gate) *saga.Definition {
	def := *base
	def.Steps = slices.Clone(base.Steps)
	for i := range def.Steps {
		st := &def.Steps[i]
		st.Action = j.wrap(n, g, st.Action)
		st.Compensation = j.wrap(n, g, st.Compensation)
		st.Fallback = j.wrap(n, g, st.Fallback)
	}
	return &def
}

func (j *journal) wrap(n int, g *gate, f saga.Func) saga.Func {
	if f == nil {
		return nil
	}
	return func(ctx context.Context, c *saga.Call) (out json.RawMessage, err error) {
		if !g.enter() {
			return nil, errCrashed // a dead engine's call: it never reaches the participant
		}
		began := j.tick()
		record := func(err error) {
			j.add(Call{Engine: n, Step: c.Step, Phase: c.Phase, Attempt: c.Attempt, IdempotencyKey: c.IdempotencyKey,
				Output: bytes.Clone(out), Err: err, Events: slices.Clone(c.Emitted()), Began: began})
			g.leave()
		}
		defer func() {
			if r := recover(); r != nil {
				record(errors.Newf("panic: %v", r))
				panic(r) // the engine makes it a permanent failure
			}
			record(err)
		}()
		return f(ctx, c)
	}
}

// facts are what a run's checks look at.
type facts struct {
	def *saga.Definition
	// created: the saga exists (a crash before point 1 leaves none).
	created bool
	status  saga.Status
	wake    time.Time
	// want is the status of the run without a crash; empty for that run.
	want   saga.Status
	calls  []Call
	log    []storage.LogEntry
	outbox []*storage.OutboxEvent
	// data is the outputs the saga kept, by step (engine.Saga.Data).
	data map[string]json.RawMessage
	// copied is the saga's log in the file the crash left; nil without a
	// crash, or when the crash left no saga.
	copied []storage.LogEntry
}

// check checks a run's properties.
func check(f *facts) []Violation {
	out := checkFinal(f)
	if !f.created {
		return out
	}
	out = append(out, checkIdempotency(f)...)
	out = append(out, checkOnce(f)...)
	out = append(out, checkCompensation(f)...)
	return append(out, checkEvents(f)...)
}

func violation(p Property, format string, args ...any) Violation {
	return Violation{Property: p, Detail: fmt.Sprintf(format, args...)}
}

// checkFinal checks PropertyFinal.
func checkFinal(f *facts) []Violation {
	switch {
	case !f.created && len(f.calls) > 0:
		return []Violation{violation(PropertyFinal, "the saga was never created, yet %d step calls ran, first %s",
			len(f.calls), f.calls[0])}
	case !f.created:
		return nil
	case !f.status.Finished():
		wake := ""
		if !f.wake.IsZero() {
			wake = fmt.Sprintf(", waiting until %s", f.wake.Format(time.RFC3339))
		}
		return []Violation{violation(PropertyFinal, "the saga did not end within %s: it is %s%s", Patience, f.status, wake)}
	case f.want != "" && f.status != f.want:
		return []Violation{violation(PropertyFinal, "the saga ended %s; the run without a crash ended %s", f.status, f.want)}
	}
	return nil
}

// checkIdempotency checks PropertyIdempotency, key by key.
func checkIdempotency(f *facts) []Violation {
	var keys []string
	byKey := map[string][]Call{}
	for _, c := range f.calls {
		if _, ok := byKey[c.IdempotencyKey]; !ok {
			keys = append(keys, c.IdempotencyKey)
		}
		byKey[c.IdempotencyKey] = append(byKey[c.IdempotencyKey], c)
	}
	var out []Violation
	for _, key := range keys {
		calls := byKey[key]
		sort.SliceStable(calls, func(a, b int) bool { return calls[a].Began < calls[b].Began })
		k := slices.IndexFunc(calls, func(c Call) bool { return c.Err == nil })
		if k < 0 {
			continue
		}
		ok, found := calls[k], false
		for _, c := range calls[k+1:] {
			if c.Began < ok.Ended {
				continue // began before the success was known
			}
			switch {
			case c.Err != nil:
				out = append(out, violation(PropertyIdempotency, "key %s: %s, then %s", key, ok, c))
				found = true
			case !jsonw.Equal(c.Output, ok.Output):
				out = append(out, violation(PropertyIdempotency, "key %s: %s returned %s, then %s returned %s",
					key, ok, orNone(ok.Output), c, orNone(c.Output)))
				found = true
			}
			if found {
				break
			}
		}
		if found {
			continue
		}
		for _, e := range f.log {
			if e.Event == storage.EventAttemptFailed && e.Step == ok.Step && e.Phase == ok.Phase &&
				e.Attempt >= ok.Attempt && !e.OutcomeUnknown {
				out = append(out, violation(PropertyIdempotency,
					"key %s: %s, yet the engine recorded attempt %d failed: %s", key, ok, e.Attempt, e.Error))
				break
			}
		}
		if ok.Phase == saga.PhaseCompensation || !recordedSuccess(f.log, ok.Step, ok.Phase) {
			continue
		}
		if kept := f.data[ok.Step]; !jsonw.Equal(kept, ok.Output) {
			out = append(out, violation(PropertyIdempotency, "key %s: %s returned %s, yet the saga kept %s as the output of %q",
				key, ok, orNone(ok.Output), orNone(kept), ok.Step))
		}
	}
	return out
}

// recordedSuccess reports whether log records a success of step's phase.
func recordedSuccess(log []storage.LogEntry, step string, phase saga.Phase) bool {
	return slices.ContainsFunc(log, func(e storage.LogEntry) bool {
		return e.Event == storage.EventAttemptSucceeded && e.Step == step && e.Phase == phase
	})
}

// stepPhase is a step's action, fallback or compensation.
type stepPhase struct {
	step  string
	phase saga.Phase
}

// checkOnce checks the engine's half of PropertyIdempotency: a phase whose
// success is recorded is not run again, neither before the crash (a second
// success recorded) nor after it (a call by the engine after the restart
// of a phase whose success the crash's copy of the file holds).
func checkOnce(f *facts) []Violation {
	var out []Violation
	first := map[stepPhase]storage.LogEntry{}
	for _, e := range f.log {
		if e.Event != storage.EventAttemptSucceeded {
			continue
		}
		k := stepPhase{e.Step, e.Phase}
		if p, ok := first[k]; ok {
			out = append(out, violation(PropertyIdempotency, "the engine recorded %s/%s as succeeded twice: attempt %d, then attempt %d",
				e.Step, e.Phase, p.Attempt, e.Attempt))
			continue
		}
		first[k] = e
	}
	durable := map[stepPhase]storage.LogEntry{}
	for _, e := range f.copied {
		if k := (stepPhase{e.Step, e.Phase}); e.Event == storage.EventAttemptSucceeded {
			durable[k] = e
		}
	}
	for _, c := range f.calls {
		k := stepPhase{c.Step, c.Phase}
		if e, ok := durable[k]; ok && c.Engine == 2 {
			out = append(out, violation(PropertyIdempotency,
				"the file the crash left records %s/%s attempt %d as succeeded, yet the engine after the restart called it again: %s",
				e.Step, e.Phase, e.Attempt, c))
			delete(durable, k) // one report per phase
		}
	}
	return out
}

func orNone(raw json.RawMessage) string {
	if len(raw) == 0 {
		return "nothing"
	}
	return string(raw)
}

// checkCompensation checks PropertyCompensation.
func checkCompensation(f *facts) []Violation {
	steps := f.def.Steps
	n := len(steps)
	index := make(map[string]int, n)
	for i, st := range steps {
		index[st.Name] = i
	}
	acted := make([]*Call, n)  // the first success of the step's action or fallback
	comps := make([][]Call, n) // the step's compensation calls, in journal order
	compOK := make([]*Call, n) // the first success of its compensation
	// unknown: the last outcome the engine recorded of the step's action
	// (or of its fallback) is unknown. The fallback has a key of its own:
	// its definite failure does not settle what the action did.
	unknown := make([]map[saga.Phase]bool, n)
	recorded := make([]bool, n) // the engine recorded its compensation's success
	for i := range f.calls {
		c := &f.calls[i]
		k, ok := index[c.Step]
		if !ok {
			continue
		}
		switch {
		case c.Phase == saga.PhaseCompensation:
			comps[k] = append(comps[k], *c)
			if c.Err == nil && (compOK[k] == nil || c.Ended < compOK[k].Ended) {
				compOK[k] = c
			}
		case c.Err == nil && (acted[k] == nil || c.Ended < acted[k].Ended):
			acted[k] = c
		}
	}
	for _, e := range f.log {
		k, ok := index[e.Step]
		if !ok {
			continue
		}
		if e.Phase == saga.PhaseCompensation {
			recorded[k] = recorded[k] || e.Event == storage.EventAttemptSucceeded
			continue
		}
		if unknown[k] == nil {
			unknown[k] = map[saga.Phase]bool{}
		}
		switch e.Event {
		case storage.EventInDoubt:
			unknown[k][e.Phase] = true
		case storage.EventAttemptFailed:
			unknown[k][e.Phase] = e.OutcomeUnknown
		case storage.EventAttemptSucceeded:
			unknown[k][e.Phase] = false
		}
	}

	var out []Violation
	for i, st := range steps {
		switch {
		case f.status == saga.StatusCompleted && len(comps[i]) > 0:
			out = append(out, violation(PropertyCompensation, "the saga completed, yet %q was compensated: %s", st.Name, comps[i][0]))
			continue
		case f.status == saga.StatusCompensated && st.Compensation != nil && acted[i] != nil && compOK[i] == nil:
			out = append(out, violation(PropertyCompensation, "%q succeeded at its participant (%s) but was never compensated",
				st.Name, acted[i]))
		case f.status == saga.StatusCompensated && compOK[i] != nil && !recorded[i]:
			out = append(out, violation(PropertyCompensation,
				"%q was compensated at its participant (%s), but the engine did not record it", st.Name, compOK[i]))
		}
		if len(comps[i]) > 0 && acted[i] == nil && !unknown[i][saga.PhaseAction] && !unknown[i][saga.PhaseFallback] {
			out = append(out, violation(PropertyCompensation,
				"%q was compensated (%s), but its action never succeeded and the last outcome the engine recorded of it was not unknown",
				st.Name, comps[i][0]))
		}
	}

	// Reverse order: a step's compensation begins once those of the steps
	// that depend on it have succeeded.
	names, after := make([]string, n), make([][]string, n)
	for i, st := range steps {
		names[i], after[i] = st.Name, st.After
	}
	g, problem := dag.New(names, after)
	if problem != nil {
		return out // Register refused it already
	}
	for i := range n {
		if len(comps[i]) == 0 {
			continue
		}
		first := comps[i][0]
		for _, j := range dependents(g, i) {
			if len(comps[j]) == 0 {
				continue
			}
			if compOK[j] == nil || compOK[j].Ended > first.Began {
				out = append(out, violation(PropertyCompensation,
					"the compensation of %q began (%s) before that of %q, which depends on it, had succeeded",
					steps[i].Name, first, steps[j].Name))
			}
		}
	}
	return out
}

// dependents returns the steps that depend on step i, directly or not, in
// index order.
func dependents(g *dag.Graph, i int) []int {
	seen := make([]bool, len(g.Dependents))
	var walk func(k int)
	walk = func(k int) {
		for _, d := range g.Dependents[k] {
			if !seen[d] {
				seen[d] = true
				walk(d)
			}
		}
	}
	walk(i)
	var out []int
	for k, ok := range seen {
		if ok {
			out = append(out, k)
		}
	}
	return out
}

// lifecycleEvents are the names of the events Events.Lifecycle adds.
var lifecycleEvents = []string{"saga.started", "saga.completed", "saga.compensated", "saga.failed", "saga.resolved",
	"step.succeeded", "step.compensated"}

// eventKey identifies an event for checkEvents: lifecycle events by step
// and name, the steps' own by their payload too.
type eventKey struct{ step, name, payload string }

func (k eventKey) String() string {
	s := fmt.Sprintf("%q", k.name)
	if k.step != "" {
		s += fmt.Sprintf(" of %q", k.step)
	}
	if k.payload != "" {
		s += " " + k.payload
	}
	return s
}

// checkEvents checks PropertyEvents.
func checkEvents(f *facts) []Violation {
	var out []Violation
	lifecycle := f.def.Events.Lifecycle
	want, why := map[eventKey]int{}, map[eventKey]string{}
	expect := func(k eventKey, from string) {
		want[k]++
		if _, ok := why[k]; !ok {
			why[k] = from
		}
	}
	for _, e := range f.log {
		if e.Event != storage.EventAttemptSucceeded {
			continue
		}
		var c *Call // the call whose success was recorded: the last to succeed
		for i := range f.calls {
			if k := &f.calls[i]; k.Step == e.Step && k.Phase == e.Phase && k.Attempt == e.Attempt && k.Err == nil {
				c = k
			}
		}
		if c == nil {
			out = append(out, violation(PropertyEvents, "the engine recorded %s/%s attempt %d as succeeded, but no such call succeeded",
				e.Step, e.Phase, e.Attempt))
			continue
		}
		for _, ev := range c.Events {
			expect(eventKey{e.Step, ev.Name, compact(ev.Payload)}, "emitted by "+c.String())
		}
		if lifecycle {
			name := "step.succeeded"
			if e.Phase == saga.PhaseCompensation {
				name = "step.compensated"
			}
			expect(eventKey{step: e.Step, name: name}, "the success of "+c.String())
		}
	}
	if lifecycle {
		expect(eventKey{name: "saga.started"}, "the saga's start")
		if f.status.Finished() {
			expect(eventKey{name: "saga." + string(f.status)}, "the saga's end")
		}
	}
	got := map[eventKey]int{}
	for _, ev := range f.outbox {
		k := eventKey{step: ev.Step, name: ev.Name}
		if !lifecycle || !slices.Contains(lifecycleEvents, ev.Name) || ev.RoutingKey != f.def.Name+"."+ev.Name {
			k.payload = compact(ev.Payload)
		}
		got[k]++
	}
	keys := make([]eventKey, 0, len(want)+len(got))
	for k := range want {
		keys = append(keys, k)
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, func(a, b eventKey) int { return strings.Compare(a.String(), b.String()) })
	for _, k := range keys {
		switch w, g := want[k], got[k]; {
		case w == g:
		case w == 0:
			out = append(out, violation(PropertyEvents, "event %s is in the outbox %d times, but no recorded success emitted it", k, g))
		default:
			out = append(out, violation(PropertyEvents, "event %s is in the outbox %d times, want %d (%s)", k, g, w, why[k]))
		}
	}
	return out
}

// compact is a payload in compact JSON, to compare payloads.
func compact(raw json.RawMessage) string {
	var b bytes.Buffer
	if json.Compact(&b, raw) != nil {
		return string(raw)
	}
	return b.String()
}
