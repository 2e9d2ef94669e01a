package engine_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/internal/sagaload"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/steps"
	"github.com/sagad/sagad/storage/bolt"
)

// BenchmarkSaga runs 3-step sagas of no-op steps, durably (fsync on), at
// several concurrencies, and reports sagas/s and the Start-to-finished
// latency (p50, p99):
//
//	go test ./engine -run '^$' -bench BenchmarkSaga -benchtime 20000x
//
// The same command runs BenchmarkSagaRawUpdate and BenchmarkSagaBatch, so
// the gain from group commit shows in the same run.
func BenchmarkSaga(b *testing.B) { benchModes(b, bolt.CommitGroup) }

// BenchmarkSagaRawUpdate is BenchmarkSaga with every transition committed
// by its own DB.Update (one fsync each): the baseline group commit beats.
func BenchmarkSagaRawUpdate(b *testing.B) { benchModes(b, bolt.CommitEach) }

// BenchmarkSagaBatch is BenchmarkSaga with transitions committed through
// bbolt's DB.Batch instead of the engine's committer.
func BenchmarkSagaBatch(b *testing.B) { benchModes(b, bolt.CommitBatch) }

// BenchmarkSagaLifecycle is BenchmarkSaga with lifecycle events on: each
// saga writes five outbox events (started, three step.succeeded,
// completed) in the transactions of the transitions they describe.
func BenchmarkSagaLifecycle(b *testing.B) {
	for _, c := range []int{1, 64, 1024} {
		b.Run(fmt.Sprintf("c=%d", c), func(b *testing.B) { benchSagas(b, c, bolt.CommitGroup, true) })
	}
}

// BenchmarkParallel runs sagas of one root, three parallel steps that each
// take 50 ms (a participant's work), and a final step, durably, at c=1 and
// c=64. The three run at once: a saga takes about 50 ms, not 150 ms.
//
//	go test ./engine -run '^$' -bench BenchmarkParallel -benchtime 200x
func BenchmarkParallel(b *testing.B) {
	work := func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
		select {
		case <-time.After(50 * time.Millisecond):
			return nil, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	def := &saga.Definition{Name: "bench", Steps: []saga.Step{
		{Name: "root", Action: steps.Noop, Compensation: steps.Noop},
		{Name: "a", After: []string{"root"}, Action: work, Compensation: steps.Noop},
		{Name: "b", After: []string{"root"}, Action: work, Compensation: steps.Noop},
		{Name: "c", After: []string{"root"}, Action: work, Compensation: steps.Noop},
		{Name: "last", After: []string{"a", "b", "c"}, Action: steps.Noop},
	}}
	for _, c := range []int{1, 64} {
		b.Run(fmt.Sprintf("c=%d", c), func(b *testing.B) { benchDef(b, c, bolt.CommitGroup, engine.Options{}, def) })
	}
}

func benchModes(b *testing.B, mode bolt.CommitMode) {
	for _, c := range []int{1, 64, 1024} {
		b.Run(fmt.Sprintf("c=%d", c), func(b *testing.B) { benchSagas(b, c, mode, false) })
	}
}

func benchSagas(b *testing.B, conc int, mode bolt.CommitMode, lifecycle bool) {
	benchDef(b, conc, mode, engine.Options{}, &saga.Definition{Name: "bench", Steps: []saga.Step{
		{Name: "one", Action: steps.Noop, Compensation: steps.Noop},
		{Name: "two", Action: steps.Noop, Compensation: steps.Noop},
		{Name: "three", Action: steps.Noop},
	}, Events: saga.Events{Lifecycle: lifecycle}})
}

// BenchmarkSagaTraced is BenchmarkSaga with every saga traced and sampled:
// four spans a saga (the saga's, one per attempt) through the SDK's batch
// processor to an exporter that drops them. What tracing costs.
func BenchmarkSagaTraced(b *testing.B) {
	for _, c := range []int{1, 64} {
		b.Run(fmt.Sprintf("c=%d", c), func(b *testing.B) {
			tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(discardSpans{}), sdktrace.WithSampler(sdktrace.AlwaysSample()))
			defer func() { _ = tp.Shutdown(context.Background()) }()
			benchDef(b, c, bolt.CommitGroup, engine.Options{TracerProvider: tp}, &saga.Definition{Name: "bench", Steps: []saga.Step{
				{Name: "one", Action: steps.Noop, Compensation: steps.Noop},
				{Name: "two", Action: steps.Noop, Compensation: steps.Noop},
				{Name: "three", Action: steps.Noop},
			}})
		})
	}
}

// discardSpans is a span exporter that drops what it is given.
type discardSpans struct{}

func (discardSpans) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discardSpans) Shutdown(context.Context) error                             { return nil }

// benchDef runs b.N sagas of def, conc at a time, on a new file, with the
// engine options o (Concurrency is set).
func benchDef(b *testing.B, conc int, mode bolt.CommitMode, o engine.Options, def *saga.Definition) {
	o.Concurrency = max(conc, 1024)
	eng, ctx, stop := benchEngine(b, &bolt.Options{CommitMode: mode}, o, def)
	defer stop()
	b.ResetTimer()
	r := sagaload.Run(ctx, b, eng, conc, b.N, "bench", func(int) (any, saga.Status) { return nil, saga.StatusCompleted })
	b.StopTimer()
	b.ReportMetric(float64(r.CPU.Microseconds())/float64(b.N), "cpu-us/saga")
	b.ReportMetric(float64(b.N)/r.Elapsed.Seconds(), "sagas/s")
	// How the committer grouped the work, and what bbolt wrote for it.
	cs := eng.Store().Stats()
	if cs.Commits > 0 {
		n := float64(cs.Commits)
		b.ReportMetric(float64(cs.Writes)/n, "writes/commit")
		b.ReportMetric(float64(cs.PagesWritten)/n, "pages/commit")
		b.ReportMetric(float64(cs.CommitTime.Microseconds())/n, "us/commit")
	}
	b.ReportMetric(float64(r.Quantile(0.5))/1e6, "p50-ms")
	b.ReportMetric(float64(r.Quantile(0.99))/1e6, "p99-ms")
}

// BenchmarkPendingSagas starts b.N sagas whose one step's participant
// answers later (saga.ErrPending), waits until all of them wait, and
// reports the goroutines and heap the engine holds for them: a waiting saga
// costs its stored record, not a goroutine.
//
//	go test ./engine -run '^$' -bench BenchmarkPendingSagas -benchtime 100000x
func BenchmarkPendingSagas(b *testing.B) {
	var waiting atomic.Int64
	all := make(chan struct{})
	def := &saga.Definition{Name: "approval", Steps: []saga.Step{{Name: "approve", Timeout: 24 * time.Hour,
		Action: func(context.Context, *saga.Call) (json.RawMessage, error) { return nil, saga.ErrPending }}}}
	eng, ctx, stop := benchEngine(b, nil, engine.Options{Concurrency: 1024, Hooks: engine.Hooks{AttemptPending: func(engine.AttemptInfo) {
		if waiting.Add(1) == int64(b.N) {
			close(all)
		}
	}}}, def)
	defer stop()
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapInuse
	}
	g0, h0 := runtime.NumGoroutine(), heap()
	b.ResetTimer()
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 64 { // starters at once, so that commits are shared
		wg.Go(func() {
			for next.Add(1) <= int64(b.N) {
				if _, err := eng.Start(ctx, "approval", nil); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if b.Failed() {
		return
	}
	<-all
	b.StopTimer()
	// The drivers let go just after their last commit.
	for i := 0; i < 200 && runtime.NumGoroutine() > g0+16; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	g1, h1 := runtime.NumGoroutine(), heap()
	b.ReportMetric(float64(g1-g0), "goroutines")
	b.ReportMetric(float64(h1-h0)/float64(b.N), "heap-B/saga")
}

// benchEngine runs an engine with def registered on a new file until stop;
// it returns the engine and the context it runs under. (Not b.Cleanup: a
// benchmark function runs more than once, and each run's engine must be
// gone before the next.)
func benchEngine(b *testing.B, bo *bolt.Options, opts engine.Options, def *saga.Definition) (*engine.Engine, context.Context, func()) {
	b.Helper()
	db, err := bolt.Open(filepath.Join(b.TempDir(), "bench.db"), bo)
	if err != nil {
		b.Fatal(err)
	}
	opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	eng, err := engine.New(db, opts)
	if err != nil {
		b.Fatal(err)
	}
	if err := eng.Register(def); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan struct{})
	go func() { defer close(runDone); _ = eng.Run(ctx) }()
	return eng, ctx, func() {
		cancel()
		<-runDone
		_ = eng.Close()
	}
}
