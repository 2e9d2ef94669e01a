package engine_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
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

	"github.com/cockroachdb/errors"

	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/recovery"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
	"github.com/sagad/sagad/storage/postgres"
)

// The crash test runs the engine in a child process (this test binary,
// re-executed with TestCrashChild selected), kills it with SIGKILL at a chosen
// instant, then reopens the same file in the parent and checks that every
// saga ends as designed. Every participant call is appended to a journal file
// shared by child and parent, so the parent can see which side effects ran
// before and after the crash.

const (
	crashEnvChild   = "SAGAD_CRASH_CHILD"
	crashEnvDB      = "SAGAD_CRASH_DB"
	crashEnvPoint   = "SAGAD_CRASH_POINT"
	crashEnvHit     = "SAGAD_CRASH_HIT"
	crashEnvJournal = "SAGAD_CRASH_JOURNAL"

	crashDefName = "crash-order"
	crashSagas   = 48
)

// crashSteps are the definition's steps, in order. The last one's action fails
// for good for sagas with an odd input, so those sagas compensate the other
// three, last first.
var crashSteps = []string{"reserve", "charge", "ship", "confirm"}

var crashFailStep = len(crashSteps) - 1

func crashStepIndex(name string) int { return slices.Index(crashSteps, name) }

// crashCase names an instant at which the child kills itself, the hit-th time
// it gets there.
type crashCase struct {
	point string
	hit   int64
	// phase is the phase of the attempt in flight at the crash.
	phase saga.Phase
}

var crashCases = []crashCase{
	// The attempt is recorded as started; its function has not run.
	{point: "before_step", hit: 20, phase: saga.PhaseAction},
	// Inside an action function.
	{point: "inside_action", hit: 50, phase: saga.PhaseAction},
	// The action returned; its outcome is not committed.
	{point: "after_action", hit: 90, phase: saga.PhaseAction},
	// Inside a compensation function.
	{point: "inside_compensation", hit: 20, phase: saga.PhaseCompensation},
	// A compensation is recorded as started after another compensation of
	// the same saga was committed.
	{point: "between_compensations", hit: 15, phase: saga.PhaseCompensation},
}

// journal is an append-only file of participant calls. Each line is one
// write(2) on an O_APPEND file, so lines from concurrent goroutines (and from
// the child and the parent) never interleave, and a SIGKILL keeps every line
// written before it (the page cache survives the process).
//
// Lines:
//
//	call <saga> <step> <phase> <idempotency key> <attempt> ok|fail|called
//	started <saga> <n>
//	kill <point> <saga> <step> <phase> <attempt>
//	restart
type journal struct{ f *os.File }

func openJournal(path string) (*journal, error) {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return nil, errors.Wrap(err, "open journal")
	}
	return &journal{f: f}, nil
}

// reopenJournal opens the journal in the parent, once the child is dead,
// and marks the restart in it.
func reopenJournal(t *testing.T, path string) *journal {
	t.Helper()
	j, err := openJournal(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = j.f.Close() })
	if err := j.write("restart"); err != nil {
		t.Fatal(err)
	}
	return j
}

func (j *journal) write(fields ...any) error {
	_, err := j.f.WriteString(fmt.Sprintln(fields...))
	return errors.Wrap(err, "write journal")
}

func (j *journal) call(c *saga.Call, result string) error {
	return j.write("call", c.SagaID, c.Step, c.Phase, c.IdempotencyKey, c.Attempt, result)
}

// crashDefinition returns the test's definition. Every call is journalled
// before the function returns; inside, when set, runs first (the child uses
// it to die inside a function).
func crashDefinition(j *journal, inside func(*saga.Call)) *saga.Definition {
	fn := func(i int, phase saga.Phase) saga.Func {
		return func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
			if inside != nil {
				inside(c)
			}
			var err error
			if i == crashFailStep && phase == saga.PhaseAction {
				var in struct{ N int }
				if derr := c.DecodeInput(&in); derr != nil {
					return nil, saga.Permanent(derr)
				}
				if in.N%2 == 1 {
					err = saga.Permanent(errors.Newf("crash test: order %d is odd", in.N))
				}
			}
			result := "ok"
			if err != nil {
				result = "fail"
			} else if eerr := c.Emit(saga.Event{Name: "crash." + string(c.Phase),
				Payload: json.RawMessage(`{"step":"` + c.Step + `"}`)}); eerr != nil {
				return nil, eerr
			}
			if werr := j.call(c, result); werr != nil {
				return nil, werr
			}
			return nil, err
		}
	}
	def := &saga.Definition{Name: crashDefName}
	for i, name := range crashSteps {
		def.Steps = append(def.Steps, saga.Step{
			Name:              name,
			Action:            fn(i, saga.PhaseAction),
			Compensation:      fn(i, saga.PhaseCompensation),
			Retry:             fastRetry(3),
			CompensationRetry: fastRetry(3),
		})
	}
	return def
}

// TestCrashChild is the child half of TestCrash; it does nothing unless
// TestCrash runs it. It drives sagas on the file with fsync on and kills
// itself at the point it is told, the hit-th time it gets there.
func TestCrashChild(t *testing.T) {
	if os.Getenv(crashEnvChild) == "" {
		t.Skip("the child process of TestCrash")
	}
	dbPath, point, jpath := os.Getenv(crashEnvDB), os.Getenv(crashEnvPoint), os.Getenv(crashEnvJournal)
	hit, err := strconv.ParseInt(os.Getenv(crashEnvHit), 10, 64)
	if err != nil {
		t.Fatalf("%s: %v", crashEnvHit, err)
	}
	j, err := openJournal(jpath)
	if err != nil {
		t.Fatal(err)
	}
	var hits atomic.Int64
	kill := func(p, id, step string, phase saga.Phase, attempt int, called *saga.Call) {
		if p != point || hits.Add(1) != hit {
			return
		}
		if called != nil {
			if err := j.call(called, "called"); err != nil {
				panic(err)
			}
		}
		if err := j.write("kill", p, id, step, phase, attempt); err != nil {
			panic(err)
		}
		if err := syscall.Kill(os.Getpid(), syscall.SIGKILL); err != nil {
			panic(err)
		}
		select {} // SIGKILL is on its way; do not return to the engine
	}
	engine.SetTestHook(func(p, id, step string, phase saga.Phase) {
		switch {
		case p == "before_attempt" && phase == saga.PhaseAction:
			kill("before_step", id, step, phase, 0, nil)
		case p == "after_attempt" && phase == saga.PhaseAction:
			kill("after_action", id, step, phase, 0, nil)
		case p == "before_attempt" && phase == saga.PhaseCompensation && crashStepIndex(step) < crashFailStep-1:
			// Sagas compensate from the step before the failing one; any
			// earlier step comes after a committed compensation.
			kill("between_compensations", id, step, phase, 0, nil)
		}
	})
	defer engine.SetTestHook(nil)
	inside := func(c *saga.Call) {
		switch c.Phase {
		case saga.PhaseAction:
			kill("inside_action", c.SagaID, c.Step, c.Phase, c.Attempt, c)
		case saga.PhaseCompensation:
			kill("inside_compensation", c.SagaID, c.Step, c.Phase, c.Attempt, c)
		}
	}

	eng, ctx, stop := runChildEngine(t, dbPath, crashDefinition(j, inside))
	defer stop()

	ids := make([]string, crashSagas)
	var wg sync.WaitGroup
	for n := range crashSagas {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := eng.Start(ctx, crashDefName, map[string]int{"n": n})
			if err != nil {
				t.Errorf("start saga %d: %v", n, err)
				return
			}
			ids[n] = st.ID
			if err := j.write("started", st.ID, n); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	for _, id := range ids {
		if id == "" {
			continue
		}
		wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
		_, err := eng.Wait(wctx, id)
		wcancel()
		if err != nil {
			t.Errorf("wait for saga %s: %v", id, err)
		}
	}
	t.Errorf("every saga finished but crash point %s was reached %d times, never the %dth time", point, hits.Load(), hit)
}

// runChildEngine opens and runs, in a crash test's child process, the
// engine on the file with def registered; stop ends it. fsync stays on: the
// file must survive the kill as the engine left it.
func runChildEngine(t *testing.T, path string, def *saga.Definition) (*engine.Engine, context.Context, func()) {
	t.Helper()
	o := engine.Options{Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	var eng *engine.Engine
	var err error
	if isPostgres(path) {
		var db *postgres.DB
		if db, err = postgres.Open(context.Background(), path, &postgres.Options{Logger: o.Logger}); err == nil {
			eng, err = engine.New(db, o)
		}
	} else {
		eng, err = engine.Open(path, o)
	}
	if err != nil {
		t.Fatalf("open engine: %v", err)
	}
	if err := eng.Register(def); err != nil {
		t.Fatalf("register: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- eng.Run(ctx) }()
	return eng, ctx, func() {
		cancel()
		if err := <-runErr; err != nil {
			t.Errorf("run: %v", err)
		}
		if err := eng.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	}
}

// jline is one parsed journal line; pos is its line number.
type jline struct {
	pos     int
	kind    string // call, started, kill, restart
	point   string // kill
	id      string
	step    string
	phase   saga.Phase
	key     string
	attempt int
	result  string // call: ok, fail, called
	n       int    // started
}

func readJournal(t *testing.T, path string) []jline {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read journal: %v", err)
	}
	var out []jline
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		l := jline{pos: len(out)}
		if len(f) > 0 {
			l.kind = f[0]
		}
		var err error
		switch {
		case l.kind == "call" && len(f) == 7:
			l.id, l.step, l.phase, l.key, l.result = f[1], f[2], saga.Phase(f[3]), f[4], f[6]
			l.attempt, err = strconv.Atoi(f[5])
		case l.kind == "started" && len(f) == 3:
			l.id = f[1]
			l.n, err = strconv.Atoi(f[2])
		case l.kind == "kill" && len(f) == 6:
			l.point, l.id, l.step, l.phase = f[1], f[2], f[3], saga.Phase(f[4])
			l.attempt, err = strconv.Atoi(f[5])
		case l.kind == "restart" && len(f) == 1:
		default:
			err = errors.New("unknown line")
		}
		if err != nil {
			t.Fatalf("journal line %d %q: %v", len(out)+1, sc.Text(), err)
		}
		out = append(out, l)
	}
	return out
}

// runCrashChild runs TestCrashChild and returns how it ended and its output.
func runCrashChild(t *testing.T, tc crashCase, dbPath, jpath string) (string, error) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1", "-test.v", "-test.timeout=60s")
	cmd.Env = append(os.Environ(),
		crashEnvChild+"=1",
		crashEnvDB+"="+dbPath,
		crashEnvPoint+"="+tc.point,
		crashEnvHit+"="+strconv.FormatInt(tc.hit, 10),
		crashEnvJournal+"="+jpath,
		"GORACE=halt_on_error=1",
	)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func TestCrash(t *testing.T) {
	t.Parallel()
	if os.Getenv(crashEnvChild) != "" {
		t.Skip("in the child process")
	}
	testCrash(t, func(t *testing.T, dir string) string { return filepath.Join(dir, "sagad.db") })
}

// TestCrashPostgres is TestCrash on PostgreSQL: the child's engine writes
// to a schema of the test's, and the next engine recovers from it.
func TestCrashPostgres(t *testing.T) {
	t.Parallel()
	if os.Getenv(crashEnvChild) != "" {
		t.Skip("in the child process")
	}
	testCrash(t, func(t *testing.T, _ string) string { return postgresURL(t) })
}

// testCrash kills a child at each crash point, on the database db makes,
// and checks what the next engine makes of it.
func testCrash(t *testing.T, db func(t *testing.T, dir string) string) {
	for _, tc := range crashCases {
		t.Run(tc.point, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			dbPath, jpath := db(t, dir), filepath.Join(dir, "journal")

			start := time.Now()
			out, err := runCrashChild(t, tc, dbPath, jpath)
			var ee *exec.ExitError
			if !errors.As(err, &ee) {
				t.Fatalf("child: %v, want it killed by SIGKILL; output:\n%s", err, out)
			}
			ws, ok := ee.Sys().(syscall.WaitStatus)
			if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
				t.Fatalf("child ended with %v, want killed by SIGKILL at %s; output:\n%s", err, tc.point, out)
			}
			if strings.Contains(out, "DATA RACE") {
				t.Fatalf("child reported a data race:\n%s", out)
			}
			t.Logf("child killed at %s after %s", tc.point, time.Since(start).Round(time.Millisecond))

			before := readJournal(t, jpath)
			var kills []jline
			for _, l := range before {
				if l.kind == "kill" {
					kills = append(kills, l)
				}
			}
			if len(kills) != 1 || kills[0].point != tc.point || kills[0].phase != tc.phase {
				t.Fatalf("journal kill lines %+v, want one at %s (%s)", kills, tc.point, tc.phase)
			}
			kill := kills[0]

			// The file as the killed process left it is consistent.
			if !isPostgres(dbPath) {
				if err := recovery.CheckFile(dbPath); err != nil {
					t.Fatalf("consistency check right after the crash: %v", err)
				}
			}

			j := reopenJournal(t, jpath)
			// setup closes the engine and checks the file when the test ends.
			b := setup(t, setupOpts{path: dbPath, defs: []*saga.Definition{crashDefinition(j, nil)}})
			checkCrashRecovery(t, b, tc, kill, jpath)
			t.Logf("recovered and checked after %s", time.Since(start).Round(time.Millisecond))
		})
	}
}

// checkCrashRecovery checks a run with one crash: every saga is checked by
// checkCrashedFile, and the attempt in flight at the crash as tc says.
func checkCrashRecovery(t *testing.T, b *bundle, tc crashCase, kill jline, jpath string) {
	run := checkCrashedFile(t, b, jpath)
	if !slices.Contains(run.ids, kill.id) {
		t.Fatalf("the saga in flight at the crash, %s, is not in the file", kill.id)
	}
	restart := slices.IndexFunc(run.lines, func(l jline) bool { return l.kind == "restart" })
	checkKilledAttempt(t, tc, kill, run.lines, restart, run.inDoubt[kill.id])
	if len(run.inDoubt) == 0 {
		t.Errorf("no saga has an %s log entry after a crash with an attempt in flight", storage.EventInDoubt)
	}
	t.Logf("%d sagas, %d with attempts in doubt, %d journal lines", len(run.ids), len(run.inDoubt), len(run.lines))
}

// crashedRun is what checkCrashedFile found.
type crashedRun struct {
	ids     []string                  // every saga, in id order
	lines   []jline                   // the journal once every saga ended
	inDoubt map[string]map[string]int // saga -> step/phase -> attempt_in_doubt entries, for sagas that have some
}

// checkCrashedFile waits for every saga of a crashed run to finish and
// checks what happened to each, from the engine's records and the journal,
// then the outbox.
func checkCrashedFile(t *testing.T, b *bundle, jpath string) crashedRun {
	t.Helper()
	ctx := context.Background()

	// Sagas: those the child saw started, and those the file holds (a saga
	// can be recorded without the child getting to journal its id).
	listed := map[string]bool{}
	for cursor := ""; ; {
		p, err := b.eng.List(ctx, engine.ListOptions{Cursor: cursor, Limit: 500})
		if err != nil {
			t.Fatalf("list: %v", err)
		}
		for _, s := range p.Sagas {
			listed[s.ID] = true
		}
		if cursor = p.NextCursor; cursor == "" {
			break
		}
	}
	run := crashedRun{ids: slices.Sorted(maps.Keys(listed)), inDoubt: map[string]map[string]int{}}
	for _, l := range readJournal(t, jpath) {
		if l.kind == "started" && !listed[l.id] {
			t.Errorf("saga %s (n=%d) was started (Start returned) but is not in the file after the crash", l.id, l.n)
			listed[l.id] = true
			run.ids = append(run.ids, l.id)
		}
	}
	final := map[string]*engine.Saga{}
	for _, id := range run.ids {
		final[id] = b.wait(t, id)
	}

	// Every saga is finished, so every participant call is in the journal.
	run.lines = readJournal(t, jpath)
	bySaga := map[string][]jline{}
	for _, l := range run.lines {
		if l.kind == "call" {
			bySaga[l.id] = append(bySaga[l.id], l)
		}
	}
	for _, id := range run.ids {
		logs, err := b.eng.Log(ctx, id)
		if err != nil {
			t.Fatalf("log of saga %s: %v", id, err)
		}
		inDoubt := map[string]int{}
		for _, e := range logs {
			if e.Event == storage.EventInDoubt {
				inDoubt[e.Step+"/"+string(e.Phase)]++
				if e.Attempt != 1 {
					t.Errorf("saga %s: in-doubt %s %s attempt %d, want 1 (no attempt in this test fails and retries)",
						id, e.Step, e.Phase, e.Attempt)
				}
			}
		}
		if len(inDoubt) > 0 {
			run.inDoubt[id] = inDoubt
		}
		checkCrashSaga(t, final[id], bySaga[id], inDoubt)
	}
	checkCrashOutbox(t, b, final)
	return run
}

// checkCrashSaga checks one finished saga against the calls the journal
// holds for it (child and parent), in journal order.
func checkCrashSaga(t *testing.T, s *engine.Saga, calls []jline, inDoubt map[string]int) {
	var in struct{ N int }
	if err := json.Unmarshal(s.Input, &in); err != nil {
		t.Fatalf("saga %s: input %s: %v", s.ID, s.Input, err)
	}
	wantStatus := saga.StatusCompleted
	if in.N%2 == 1 {
		wantStatus = saga.StatusCompensated
	}
	if s.Status != wantStatus {
		t.Errorf("saga %s (n=%d): status %s (err %v), want %s", s.ID, in.N, s.Status, s.Err, wantStatus)
		return
	}

	type sp struct {
		step  int
		phase saga.Phase
	}
	count := map[sp]int{}
	firstOK, lastOK, firstCall := map[sp]int{}, map[sp]int{}, map[sp]int{}
	failed := map[sp]bool{}
	for _, c := range calls {
		i := crashStepIndex(c.step)
		if i < 0 {
			t.Errorf("saga %s: journal names unknown step %q", s.ID, c.step)
			continue
		}
		if wantKey := s.ID + "/" + c.step + "/" + string(c.phase); c.key != wantKey {
			t.Errorf("saga %s: %s %s called with idempotency key %q, want %q", s.ID, c.step, c.phase, c.key, wantKey)
		}
		if c.attempt != 1 {
			t.Errorf("saga %s: %s %s called as attempt %d, want 1: nothing fails and retries here, and an attempt "+
				"in doubt is re-run under its own number", s.ID, c.step, c.phase, c.attempt)
		}
		k := sp{i, c.phase}
		count[k]++
		if _, ok := firstCall[k]; !ok {
			firstCall[k] = c.pos
		}
		switch c.result {
		case "ok":
			if _, ok := firstOK[k]; !ok {
				firstOK[k] = c.pos
			}
			lastOK[k] = c.pos
		case "fail":
			failed[k] = true
		}
	}
	// An attempt runs once, plus once per restart that found it in flight.
	for k, n := range count {
		name := crashSteps[k.step] + "/" + string(k.phase)
		if n > 1+inDoubt[name] {
			t.Errorf("saga %s: %s called %d times, with %d attempts in doubt: a committed outcome was re-run",
				s.ID, name, n, inDoubt[name])
		}
	}
	// Forward order: a step's action runs only after the previous one succeeded.
	for i := 1; i < len(crashSteps); i++ {
		if c, ok := firstCall[sp{i, saga.PhaseAction}]; ok {
			if p, ok := firstOK[sp{i - 1, saga.PhaseAction}]; !ok || p > c {
				t.Errorf("saga %s: action %s ran before action %s succeeded", s.ID, crashSteps[i], crashSteps[i-1])
			}
		}
	}

	if wantStatus == saga.StatusCompleted {
		for i, name := range crashSteps {
			if _, ok := firstOK[sp{i, saga.PhaseAction}]; !ok {
				t.Errorf("saga %s completed but the journal has no successful %s action", s.ID, name)
			}
			if n := count[sp{i, saga.PhaseCompensation}]; n > 0 {
				t.Errorf("saga %s completed but %s was compensated %d times", s.ID, name, n)
			}
			if st := s.Steps[i]; st.Status != saga.StepSucceeded || st.InFlight {
				t.Errorf("saga %s completed with step %s %s (in flight %v), want succeeded", s.ID, name, st.Status, st.InFlight)
			}
		}
		return
	}

	// Compensated: the failing step failed and was not compensated.
	fs := sp{crashFailStep, saga.PhaseAction}
	if _, ok := firstOK[fs]; ok || !failed[fs] {
		t.Errorf("saga %s (n=%d): step %s should have failed, never succeeded", s.ID, in.N, crashSteps[crashFailStep])
	}
	if n := count[sp{crashFailStep, saga.PhaseCompensation}]; n > 0 {
		t.Errorf("saga %s: the failed step %s was compensated %d times", s.ID, crashSteps[crashFailStep], n)
	}
	// Every step whose action succeeded was compensated; the last successful
	// compensations run in exact reverse step order.
	var want []string // steps that compensated, in reverse step order
	pos := map[string]int{}
	for i := len(crashSteps) - 1; i >= 0; i-- {
		if i == crashFailStep {
			continue
		}
		_, acted := firstOK[sp{i, saga.PhaseAction}]
		p, compensated := lastOK[sp{i, saga.PhaseCompensation}]
		if !acted {
			t.Errorf("saga %s: action %s never succeeded, but the failing step after it ran", s.ID, crashSteps[i])
		}
		if acted && !compensated {
			t.Errorf("saga %s: step %s succeeded but has no successful compensation", s.ID, crashSteps[i])
		}
		if compensated {
			want = append(want, crashSteps[i])
			pos[crashSteps[i]] = p
		}
		if st := s.Steps[i]; st.Status != saga.StepCompensated || st.InFlight {
			t.Errorf("saga %s compensated with step %s %s (in flight %v), want compensated",
				s.ID, crashSteps[i], st.Status, st.InFlight)
		}
	}
	got := slices.Clone(want)
	slices.SortFunc(got, func(a, b string) int { return pos[a] - pos[b] })
	if !equal(got, want) {
		t.Errorf("saga %s: last successful compensations in order %v, want %v", s.ID, got, want)
	}
	if c, ok := firstCall[sp{0, saga.PhaseCompensation}]; ok {
		for i := 1; i < crashFailStep; i++ {
			if c2, ok := firstCall[sp{i, saga.PhaseCompensation}]; ok && c2 > c {
				t.Errorf("saga %s: compensation of %s first ran after that of %s", s.ID, crashSteps[i], crashSteps[0])
			}
		}
	}
}

// checkKilledAttempt checks that the attempt in flight when the child died
// was found in doubt and run again, never skipped.
func checkKilledAttempt(t *testing.T, tc crashCase, kill jline, lines []jline, restart int, inDoubt map[string]int) {
	name := kill.step + "/" + string(kill.phase)
	if inDoubt[name] == 0 {
		t.Errorf("saga %s: %s was in flight at the crash but its log has no %s entry for it",
			kill.id, name, storage.EventInDoubt)
	}
	same := func(l jline) bool {
		return l.kind == "call" && l.id == kill.id && l.step == kill.step && l.phase == kill.phase
	}
	var pre []jline // calls of the killed attempt before the kill
	for _, l := range lines[:kill.pos] {
		if same(l) {
			pre = append(pre, l)
		}
	}
	rerun := false
	for _, l := range lines[restart+1:] {
		if same(l) && l.result != "called" {
			rerun = true
			if l.attempt != 1 {
				t.Errorf("saga %s: %s re-run as attempt %d, want the same attempt number 1", kill.id, name, l.attempt)
			}
		}
	}
	if !rerun {
		t.Errorf("saga %s: %s was in flight at the crash (%s) and was not run again after the restart",
			kill.id, name, tc.point)
	}
	switch tc.point {
	case "before_step":
		if len(pre) != 0 {
			t.Errorf("saga %s: %s ran before the kill at %s: %+v", kill.id, name, tc.point, pre)
		}
	case "inside_action", "inside_compensation":
		if len(pre) != 1 || pre[0].result != "called" {
			t.Errorf("saga %s: calls of %s before the kill %+v, want one 'called'", kill.id, name, pre)
		}
	case "after_action":
		if len(pre) != 1 || pre[0].result == "called" {
			t.Errorf("saga %s: calls of %s before the kill %+v, want one that returned", kill.id, name, pre)
		}
	case "between_compensations":
		if len(pre) != 0 {
			t.Errorf("saga %s: %s ran before the kill at %s: %+v", kill.id, name, tc.point, pre)
		}
		later := false
		for _, l := range lines[:kill.pos] {
			if l.kind == "call" && l.id == kill.id && l.phase == saga.PhaseCompensation && l.result == "ok" &&
				crashStepIndex(l.step) > crashStepIndex(kill.step) {
				later = true
			}
		}
		if !later {
			t.Errorf("saga %s: killed before compensating %s, but no later step's compensation had succeeded",
				kill.id, kill.step)
		}
	}
}

// checkCrashOutbox checks that the outbox holds exactly one event for each
// committed success: none from attempts cut off by the crash (their outcome
// was never committed), none from failed attempts, and no duplicate from an
// attempt re-run after the crash.
func checkCrashOutbox(t *testing.T, b *bundle, final map[string]*engine.Saga) {
	t.Helper()
	got := map[string]int{} // saga/step/event name -> events
	for cursor := ""; ; {
		p, err := b.eng.OutboxList(context.Background(), engine.OutboxListOptions{Cursor: cursor, Limit: 1000})
		if err != nil {
			t.Fatalf("outbox list: %v", err)
		}
		for _, ev := range p.Events {
			got[ev.SagaID.String()+"/"+ev.Step+"/"+ev.Name]++
		}
		if cursor = p.NextCursor; cursor == "" {
			break
		}
	}
	want := map[string]int{}
	for id, s := range final {
		for _, st := range s.Steps {
			switch st.Status {
			case saga.StepSucceeded:
				want[id+"/"+st.Name+"/crash.action"] = 1
			case saga.StepCompensated:
				want[id+"/"+st.Name+"/crash.action"] = 1
				want[id+"/"+st.Name+"/crash.compensation"] = 1
			}
		}
	}
	if !maps.Equal(got, want) {
		for k, n := range got {
			if want[k] != n {
				t.Errorf("outbox: %d events %s, want %d", n, k, want[k])
			}
		}
		for k, n := range want {
			if got[k] == 0 {
				t.Errorf("outbox: no event %s, want %d", k, n)
			}
		}
	}
}
