// Package sagaload drives an engine the way the benchmarks do: concurrent
// clients that each start a saga and wait for it to end. It is for
// benchmarks only.
package sagaload

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/internal/cputime"
	"github.com/sagad/sagad/saga"
)

// Result is what a run measured.
type Result struct {
	// Elapsed is the run's wall time; CPU the process's CPU time in it.
	Elapsed, CPU time.Duration
	// Latencies are the sagas' Start-to-ended times, sorted.
	Latencies []time.Duration
}

// Quantile returns the latency below which a fraction q of the sagas ended.
func (r Result) Quantile(q float64) time.Duration {
	if len(r.Latencies) == 0 {
		return 0
	}
	return r.Latencies[min(int(float64(len(r.Latencies))*q), len(r.Latencies)-1)]
}

// Run starts n sagas of def from conc clients, each starting one saga and
// waiting for it before the next. input(i) gives the i-th saga's input and
// the status it must end in; a saga that ends otherwise fails b.
func Run(ctx context.Context, b *testing.B, eng *engine.Engine, conc, n int, def string, input func(i int) (any, saga.Status)) Result {
	lat := make([]time.Duration, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	cpu0 := cputime.Process()
	start := time.Now()
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				in, want := input(i)
				t0 := time.Now()
				st, err := eng.Start(ctx, def, in)
				if err != nil {
					b.Error(err)
					return
				}
				s, err := eng.Wait(ctx, st.ID)
				if err != nil || s.Status != want {
					b.Errorf("saga %s: %v %v, want %s", st.ID, s, err, want)
					return
				}
				lat[i] = time.Since(t0)
			}
		}()
	}
	wg.Wait()
	r := Result{Elapsed: time.Since(start), CPU: cputime.Process() - cpu0, Latencies: lat}
	slices.Sort(r.Latencies)
	return r
}
