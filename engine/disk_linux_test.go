package engine_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/errors"

	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/internal/diskfull"
	"github.com/sagad/sagad/saga"
)

// counter is a slog handler that counts records whose message contains
// its substring and signals the first one.
type counter struct {
	substr string
	n      atomic.Int64
	first  chan struct{}
}

func (c *counter) Enabled(context.Context, slog.Level) bool { return true }
func (c *counter) WithAttrs([]slog.Attr) slog.Handler       { return c }
func (c *counter) WithGroup(string) slog.Handler            { return c }
func (c *counter) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, c.substr) && c.n.Add(1) == 1 {
		close(c.first)
	}
	return nil
}

// A full disk fails commits; the engine must go on by itself once space is
// freed: every saga ends, every waiter is answered, no concurrency slot or
// driver is lost, and a Start while the disk is full answers at once.
func TestFullDiskDoesNotWedge(t *testing.T) {
	t.Parallel()
	dir := diskfull.Mount(t, 32<<20)
	const sagas = 40
	gate := make(chan struct{})
	big := json.RawMessage(`"` + strings.Repeat("x", 32<<10) + `"`)
	step := func(name string, wait bool) saga.Step {
		return saga.Step{Name: name, Retry: fastRetry(3), Compensation: noop,
			Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
				if wait {
					<-gate
				}
				return big, nil
			}}
	}
	def := &saga.Definition{Name: "disk", Steps: []saga.Step{step("one", true), step("two", false), step("three", false)}}
	failures := &counter{substr: "not committed", first: make(chan struct{})}
	b := setup(t, setupOpts{path: filepath.Join(dir, "sagad.db"), defs: []*saga.Definition{def},
		opts: engine.Options{Concurrency: 2, Logger: slog.New(failures)}})

	ids := make([]string, sagas)
	for i := range ids {
		st, err := b.eng.Start(context.Background(), "disk", nil)
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = st.ID
	}
	type result struct {
		s   *engine.Saga
		err error
	}
	results := make(chan result, sagas)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, id := range ids {
		go func() {
			s, err := b.eng.Wait(ctx, id)
			results <- result{s, err}
		}()
	}

	free := diskfull.Fill(t, dir)
	close(gate) // the first outputs arrive on a full disk
	select {
	case <-failures.first:
	case <-time.After(time.Minute):
		t.Fatal("no commit failed on the full disk: the test proves nothing")
	}
	// A Start on the full disk answers (with an error, or the saga if it
	// fit) rather than hanging on a lost slot.
	started := make(chan error, 1)
	go func() {
		_, err := b.eng.Start(context.Background(), "disk", nil, engine.WithIdempotencyKey("while-full"))
		started <- err
	}()
	select {
	case err := <-started:
		t.Logf("start on a full disk: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("Start hung for 10s on a full disk")
	}

	free()
	for range sagas {
		r := <-results
		if r.err != nil {
			t.Fatalf("a waiter was not answered after space was freed: %v", r.err)
		}
		if r.s.Status != saga.StatusCompleted {
			t.Errorf("saga %s ended %s (%v), want completed", r.s.ID, r.s.Status, r.s.Err)
		}
	}
	t.Logf("%d commits failed while the disk was full", failures.n.Load())
	// Every slot is back: Concurrency (2) sagas run their steps at once.
	var arrived atomic.Int32
	met := make(chan struct{})
	pair := &saga.Definition{Name: "pair", Steps: []saga.Step{{Name: "meet", Timeout: 10 * time.Second,
		Action: func(ctx context.Context, _ *saga.Call) (json.RawMessage, error) {
			if arrived.Add(1) == 2 {
				close(met)
			}
			select {
			case <-met: // the other saga is running too
				return nil, nil
			case <-ctx.Done():
				return nil, saga.Permanent(errors.New("the other saga never ran: a slot is lost"))
			}
		}}}}
	if err := b.eng.Register(pair); err != nil {
		t.Fatal(err)
	}
	first, err := b.eng.Start(context.Background(), "pair", nil)
	if err != nil {
		t.Fatal(err)
	}
	if s := b.run(t, "pair", nil); s.Status != saga.StatusCompleted {
		t.Errorf("second saga of a pair ended %s (%v): a concurrency slot was lost", s.Status, s.Err)
	}
	if s := b.wait(t, first.ID); s.Status != saga.StatusCompleted {
		t.Errorf("first saga of a pair ended %s (%v): a concurrency slot was lost", s.Status, s.Err)
	}
}
