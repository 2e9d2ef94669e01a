package engine_test

import (
	"context"
	"encoding/json"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/errors"
	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/internal/tcpproxy"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage/bolt"
)

// PostgreSQL goes away mid-run (every connection of two engines on one
// schema cut, new ones refused, for two seconds) and comes back: the
// engines retry from the stored state and every saga finishes, each step
// done once or, when its outcome was lost with the connection, again with
// its idempotency key.
func TestPostgresGoesAwayAndComesBack(t *testing.T) {
	t.Parallel()
	dbURL := postgresURL(t)
	proxy, viaURL := tcpproxy.ForURL(t, dbURL)

	var mu sync.Mutex
	calls := map[string]int{} // idempotency key -> calls
	step := func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
		mu.Lock()
		calls[c.IdempotencyKey]++
		mu.Unlock()
		time.Sleep(time.Millisecond)
		return json.RawMessage(`{}`), nil
	}
	def := &saga.Definition{Name: "d", Steps: []saga.Step{
		{Name: "a", Action: step}, {Name: "b", Action: step}, {Name: "c", Action: step}}}
	a := setup(t, setupOpts{path: viaURL, defs: []*saga.Definition{def}})
	b := setup(t, setupOpts{path: viaURL, defs: []*saga.Definition{def}})

	const n = 200
	ids := make([]string, 0, n)
	for i := range n {
		eng := []*engine.Engine{a.eng, b.eng}[i%2]
		if i == n/2 {
			proxy.Cut()
			time.AfterFunc(2*time.Second, func() {
				if err := proxy.Restore(); err != nil {
					t.Error(err)
				}
			})
		}
		var st engine.Started
		var err error
		for try := 0; try < 100; try++ { // a start fails while PostgreSQL is away
			if st, err = eng.Start(context.Background(), "d", nil); err == nil {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("start %d: %v", i, err)
		}
		ids = append(ids, st.ID)
	}
	for i, id := range ids {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		s, err := []*engine.Engine{a.eng, b.eng}[i%2].Wait(ctx, id)
		cancel()
		if err != nil || s.Status != saga.StatusCompleted {
			t.Fatalf("saga %d: %+v, %v; want completed", i, s, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, id := range ids {
		for _, st := range []string{"a", "b", "c"} {
			if calls[id+"/"+st+"/action"] == 0 {
				t.Errorf("saga %s: step %s never called", id, st)
			}
		}
	}
}

// An operator's abort on one node reaches the saga another node drives: it
// compensates once its attempt in flight has ended. And a wait on the
// node that does not drive the saga answers when it ends.
func TestAbortAcrossNodes(t *testing.T) {
	t.Parallel()
	dbURL := postgresURL(t)
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	var undone sync.WaitGroup
	var ranC atomic.Int32
	undone.Add(1)
	def := &saga.Definition{Name: "d", Steps: []saga.Step{
		{Name: "a", Action: func(context.Context, *saga.Call) (json.RawMessage, error) { return nil, nil },
			Compensation: func(context.Context, *saga.Call) (json.RawMessage, error) { undone.Done(); return nil, nil }},
		{Name: "b", Timeout: time.Minute, Action: func(ctx context.Context, _ *saga.Call) (json.RawMessage, error) {
			once.Do(func() { close(entered) })
			<-release
			return nil, nil
		}},
		{Name: "c", Action: func(context.Context, *saga.Call) (json.RawMessage, error) { ranC.Add(1); return nil, nil }}}}
	a := setup(t, setupOpts{path: dbURL, defs: []*saga.Definition{def}})
	b := setup(t, setupOpts{path: dbURL, defs: []*saga.Definition{def}})
	st, err := a.eng.Start(context.Background(), "d", nil)
	if err != nil {
		t.Fatal(err)
	}
	<-entered // a drives it, inside step b
	if err := b.eng.Abort(context.Background(), st.ID); err != nil {
		t.Fatalf("abort on the other node: %v", err)
	}
	close(release)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := b.eng.Wait(ctx, st.ID) // b does not drive it
	if err != nil || s.Status != saga.StatusCompensated || !errors.Is(s.Err, engine.ErrAborted) {
		t.Fatalf("saga after an abort on the other node: %+v, %v; want compensated, aborted", s, err)
	}
	undone.Wait()
	if n := ranC.Load(); n != 0 {
		t.Errorf("step c ran %d times after the abort was recorded, want never", n)
	}
}

// A node that shuts down in the middle of an attempt (its grace too short
// for it) leaves the saga to the others at once: another node finishes it.
func TestTakeoverAfterShutdown(t *testing.T) {
	t.Parallel()
	dbURL := postgresURL(t)
	var calls atomic.Int32
	entered := make(chan struct{})
	def := &saga.Definition{Name: "d", Steps: []saga.Step{{Name: "s", Timeout: time.Minute,
		Action: func(ctx context.Context, _ *saga.Call) (json.RawMessage, error) {
			if calls.Add(1) == 1 {
				close(entered)
				<-ctx.Done() // past the shutdown grace
				return nil, ctx.Err()
			}
			return nil, nil
		}}}}
	a := openStore(t, dbURL, bolt.Options{}, engine.Options{ShutdownGrace: time.Millisecond}, def)
	go func() { _ = a.Run(context.Background()) }()
	b := setup(t, setupOpts{path: dbURL, defs: []*saga.Definition{def}})
	st, err := a.Start(context.Background(), "d", nil)
	if err != nil {
		t.Fatal(err)
	}
	<-entered
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if s, err := b.eng.Wait(ctx, st.ID); err != nil || s.Status != saga.StatusCompleted || calls.Load() != 2 {
		t.Fatalf("saga after its node shut down mid-attempt: %+v, %v, %d calls; want completed by the other, 2 calls", s, err, calls.Load())
	}
}

// A node cut off from PostgreSQL in the middle of an attempt loses the
// saga to another node within five seconds of the cut (its lease lasts 3 s;
// the other looks every second), which runs the attempt again with the same
// idempotency key and finishes the saga.
func TestTakeoverWithinFiveSeconds(t *testing.T) {
	t.Parallel()
	dbURL := postgresURL(t)
	proxy, viaURL := tcpproxy.ForURL(t, dbURL)
	var mu sync.Mutex
	var keys []string
	entered := make(chan struct{})
	var once sync.Once
	def := &saga.Definition{Name: "d", Steps: []saga.Step{{Name: "s", Timeout: time.Minute,
		Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
			mu.Lock()
			keys = append(keys, c.IdempotencyKey)
			first := len(keys) == 1
			mu.Unlock()
			if first {
				once.Do(func() { close(entered) })
				<-ctx.Done() // the cut-off node's attempt never answers
				return nil, ctx.Err()
			}
			return nil, nil
		}}}}
	a := setup(t, setupOpts{path: viaURL, defs: []*saga.Definition{def}, opts: engine.Options{ShutdownGrace: time.Millisecond}})
	b := setup(t, setupOpts{path: dbURL, defs: []*saga.Definition{def}})
	st, err := a.eng.Start(context.Background(), "d", nil)
	if err != nil {
		t.Fatal(err)
	}
	<-entered
	proxy.Cut() // for good: a never comes back
	cut := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := b.eng.Wait(ctx, st.ID)
	took := time.Since(cut)
	if err != nil || s.Status != saga.StatusCompleted {
		t.Fatalf("saga after its node was cut off: %+v, %v", s, err)
	}
	if took > 5*time.Second {
		t.Errorf("taken over and finished %s after the cut, want within 5s", took.Round(time.Millisecond))
	}
	mu.Lock()
	defer mu.Unlock()
	if len(keys) != 2 || keys[0] != keys[1] {
		t.Errorf("calls %v, want the cut-off attempt and its re-run with the same key", keys)
	}
	t.Logf("taken over and finished %s after the cut", took.Round(time.Millisecond))
}
