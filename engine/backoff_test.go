package engine_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/errors"

	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage/bolt"
)

// errBackoffUnavailable is the retryable error the backoff tests' step
// returns on its first attempt.
var errBackoffUnavailable = errors.New("engine_test: backoff: participant unavailable")

// backoffDef is a one-step saga whose step fails its first attempt with a
// retryable error and would succeed on the second, which is due an hour
// later (no jitter, so the wake time is exact).
func backoffDef() *saga.Definition {
	return &saga.Definition{Name: "backoff", Steps: []saga.Step{{
		Name: "charge",
		Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
			if c.Attempt == 1 {
				return nil, errBackoffUnavailable
			}
			return nil, nil
		},
		Retry: saga.RetryPolicy{MaxAttempts: 3, InitialInterval: time.Hour, MaxInterval: time.Hour, Jitter: -1},
	}}}
}

// retryCounter is an AttemptFinished hook that closes done once n retries
// have been committed, and counts any other outcome as unexpected.
type retryCounter struct {
	n          int64
	retries    atomic.Int64
	unexpected atomic.Int64
	done       chan struct{}
}

func newRetryCounter(n int) *retryCounter {
	return &retryCounter{n: int64(n), done: make(chan struct{})}
}

func (c *retryCounter) hook(a engine.AttemptInfo) {
	if !a.Retry || a.Attempt != 1 || !errors.Is(a.Err, errBackoffUnavailable) {
		c.unexpected.Add(1)
		return
	}
	if c.retries.Add(1) == c.n {
		close(c.done)
	}
}

// wait waits for all n retries to be committed, or fails after limit.
func (c *retryCounter) wait(tb testing.TB, limit time.Duration) {
	tb.Helper()
	select {
	case <-c.done:
	case <-time.After(limit):
		tb.Fatalf("after %s only %d of %d first attempts committed a retry (%d unexpected outcomes): "+
			"are sagas waiting for their retry holding concurrency slots?", limit, c.retries.Load(), c.n, c.unexpected.Load())
	}
	if u := c.unexpected.Load(); u != 0 {
		tb.Fatalf("%d attempts finished with an unexpected outcome (want only first attempts failing retryably, Retry=true)", u)
	}
}

// startBackoffSagas starts n backoff sagas from clients goroutines and
// returns their ids if keep is set (the benchmark does not keep them, so
// the client adds nothing per saga to the heap).
func startBackoffSagas(tb testing.TB, eng *engine.Engine, n, clients int, keep bool) []string {
	tb.Helper()
	var ids []string
	if keep {
		ids = make([]string, n)
	}
	var next atomic.Int64
	var failed atomic.Bool
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			for !failed.Load() {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				st, err := eng.Start(context.Background(), "backoff", nil)
				if err != nil {
					failed.Store(true)
					tb.Errorf("start saga %d: %v", i, err)
					return
				}
				if keep {
					ids[i] = st.ID
				}
			}
		})
	}
	wg.Wait()
	if failed.Load() {
		tb.FailNow()
	}
	return ids
}

// waitGoroutines polls runtime.NumGoroutine until it is at most
// baseline+slack, and returns the last count. It fails after limit, saying
// how many goroutines remain and which stacks hold them.
func waitGoroutines(tb testing.TB, baseline, slack int, limit time.Duration, what string) int {
	tb.Helper()
	deadline := time.Now().Add(limit)
	for {
		g := runtime.NumGoroutine()
		if g <= baseline+slack {
			return g
		}
		if time.Now().After(deadline) {
			var buf bytes.Buffer
			_ = pprof.Lookup("goroutine").WriteTo(&buf, 1)
			stacks := buf.String()
			if len(stacks) > 6000 {
				stacks = stacks[:6000] + "\n... (truncated)"
			}
			tb.Fatalf("%s: %d goroutines remain %s after they were committed, baseline before starting them was %d "+
				"(want at most %d, %d over): sagas waiting for a retry must hold no goroutine\n%s",
				what, g, limit, baseline, baseline+slack, g-baseline, stacks)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// goroutineSlack is how far above its baseline the goroutine count may stay
// once every driver is released: the engine's own goroutines (Run, the
// scheduler, the committer) already count in the baseline, so this only
// covers stragglers unrelated to the sagas. It must stay far below the
// number of sagas for the check to mean anything.
const goroutineSlack = 10

// TestBackoffHoldsNoGoroutines checks that a saga waiting for its next
// attempt costs no goroutine: N sagas fail their first attempt and are due
// again in an hour; once their retries are committed the goroutine count
// returns to where it was before they started, and each saga is stored as
// running, with one attempt and a wake time an hour away. Concurrency is
// below N, so the sagas that start late also prove that waiting sagas give
// their concurrency slot back.
func TestBackoffHoldsNoGoroutines(t *testing.T) {
	// Not parallel: runtime.NumGoroutine counts the whole process.
	const n = 2000
	rc := newRetryCounter(n)
	b := setup(t, setupOpts{
		opts: engine.Options{Concurrency: n / 4, Hooks: engine.Hooks{AttemptFinished: rc.hook}},
		defs: []*saga.Definition{backoffDef()},
	})
	baseline := runtime.NumGoroutine()

	t0 := time.Now()
	ids := startBackoffSagas(t, b.eng, n, 64, true)
	rc.wait(t, 20*time.Second)
	t1 := time.Now()
	g := waitGoroutines(t, baseline, goroutineSlack, 10*time.Second, fmt.Sprintf("%d sagas in backoff", n))
	t.Logf("%d sagas in backoff: %d goroutines, baseline %d; started and retries committed in %s",
		n, g, baseline, t1.Sub(t0).Round(time.Millisecond))

	// Every saga is stored waiting: running, one attempt, due an hour
	// after its attempt failed (no jitter).
	want := make(map[string]bool, n)
	for _, id := range ids {
		want[id] = true
	}
	earliest, latest := t0.Add(time.Hour), t1.Add(time.Hour)
	seen := 0
	cursor := ""
	for {
		p, err := b.eng.List(context.Background(), engine.ListOptions{Status: saga.StatusRunning, Limit: 1000, Cursor: cursor})
		if err != nil {
			t.Fatalf("list running sagas: %v", err)
		}
		for _, s := range p.Sagas {
			if !want[s.ID] {
				t.Fatalf("saga %s is listed as running but was not started by this test (or listed twice)", s.ID)
			}
			delete(want, s.ID)
			seen++
			if s.WakeAt.Before(earliest) || s.WakeAt.After(latest) {
				t.Errorf("saga %s: WakeAt %s, want between %s and %s (1h after its failed attempt)",
					s.ID, s.WakeAt.Format(time.RFC3339Nano), earliest.Format(time.RFC3339Nano), latest.Format(time.RFC3339Nano))
			}
			if len(s.Steps) != 1 {
				t.Fatalf("saga %s has %d steps, want 1", s.ID, len(s.Steps))
			}
			st := s.Steps[0]
			if st.Status != saga.StepRunning || st.Attempts != 1 || st.InFlight || st.Error == "" {
				t.Errorf("saga %s step %s: status %s, attempts %d, in flight %v, error %q; "+
					"want running, 1 attempt, not in flight, the first attempt's error",
					s.ID, st.Name, st.Status, st.Attempts, st.InFlight, st.Error)
			}
		}
		if p.NextCursor == "" {
			break
		}
		cursor = p.NextCursor
	}
	if seen != n || len(want) != 0 {
		t.Fatalf("listed %d running sagas, want %d; %d started sagas are not running", seen, n, len(want))
	}
}

// BenchmarkBackoffMemory measures what 100,000 sagas waiting for a retry
// cost: each fails its first attempt and is due again in an hour. Once
// every retry is committed and every driver released, it reports the
// process's goroutines (which must not grow with the number of sagas), the
// live heap per saga and the database file per saga:
//
//	go test ./engine -run '^$' -bench BenchmarkBackoffMemory -benchtime 1x
//
// The database runs with Storage.NoSync: this measures memory, not
// durability, and fsync would only make the setup slow. b.N is ignored:
// every run starts the same 100,000 sagas on a fresh database.
func BenchmarkBackoffMemory(b *testing.B) {
	const (
		n       = 100_000
		clients = 256
	)
	path := filepath.Join(b.TempDir(), "backoff.db")
	rc := newRetryCounter(n)
	o := engine.Options{
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Hooks:  engine.Hooks{AttemptFinished: rc.hook},
	}
	db, err := bolt.Open(path, &bolt.Options{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	eng, err := engine.New(db, o)
	if err != nil {
		b.Fatal(err)
	}
	if err := eng.Register(backoffDef()); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan struct{})
	go func() {
		defer close(runDone)
		if err := eng.Run(ctx); err != nil {
			b.Errorf("run: %v", err)
		}
	}()
	defer func() {
		cancel()
		<-runDone
		if err := eng.Close(); err != nil {
			b.Errorf("close: %v", err)
		}
	}()

	baseG := runtime.NumGoroutine()
	before := heapAfterGC()
	b.ResetTimer()
	start := time.Now()
	startBackoffSagas(b, eng, n, clients, false)
	rc.wait(b, 10*time.Minute)
	elapsed := time.Since(start)
	waitGoroutines(b, baseG, goroutineSlack, time.Minute, fmt.Sprintf("%d sagas in backoff", n))
	b.StopTimer()
	after := heapAfterGC()
	g := runtime.NumGoroutine() // after the GC, as reported

	fi, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	used, err := eng.Store().(*bolt.DB).BackupSize() // the pages in use
	if err != nil {
		b.Fatal(err)
	}
	inuse := float64(int64(after.HeapInuse)-int64(before.HeapInuse)) / n
	live := float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / n
	b.ReportMetric(float64(g), "goroutines")
	b.ReportMetric(inuse, "heap-bytes/saga")
	b.ReportMetric(live, "live-bytes/saga")
	b.ReportMetric(float64(fi.Size())/n, "db-bytes/saga")
	// A waiting saga may cost its record on disk and nothing in memory: a
	// timer or goroutine per saga shows up here as hundreds of bytes each.
	if live > 100 {
		b.Errorf("live heap grew by %.0f bytes per waiting saga, want under 100: something in memory scales with the sagas in backoff", live)
	}
	b.Logf("n=%d sagas in backoff (1 step, first attempt fails, next due in 1h), %d clients, Concurrency=1024 (default), "+
		"NoSync=true, GOMAXPROCS=%d: started and retries committed in %s (%.0f sagas/s); goroutines %d (baseline %d); "+
		"heap in use +%.1f MiB (%.0f B/saga), live heap +%.1f MiB (%.0f B/saga); db file %.1f MiB (%.0f B/saga), bbolt high-water %.1f MiB",
		n, clients, runtime.GOMAXPROCS(0), elapsed.Round(time.Millisecond), n/elapsed.Seconds(), g, baseG,
		mib(int64(after.HeapInuse)-int64(before.HeapInuse)), inuse, mib(int64(after.HeapAlloc)-int64(before.HeapAlloc)), live,
		mib(fi.Size()), float64(fi.Size())/n, mib(used))

	// The figures are only meaningful if the sagas are really waiting.
	running := 0
	cursor := ""
	for {
		p, err := eng.List(context.Background(), engine.ListOptions{Status: saga.StatusRunning, Limit: 1000, Cursor: cursor})
		if err != nil {
			b.Fatalf("list running sagas: %v", err)
		}
		for _, s := range p.Sagas {
			if time.Until(s.WakeAt) < 59*time.Minute || s.Steps[0].Attempts != 1 {
				b.Fatalf("saga %s: WakeAt %s, %d attempts; want due in about 1h after 1 attempt", s.ID, s.WakeAt, s.Steps[0].Attempts)
			}
		}
		running += len(p.Sagas)
		if p.NextCursor == "" {
			break
		}
		cursor = p.NextCursor
	}
	if running != n {
		b.Fatalf("%d sagas running, want %d", running, n)
	}
}

func heapAfterGC() runtime.MemStats {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }
