package engine_test

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/errors"

	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
)

func TestResolveFailedSaga(t *testing.T) {
	t.Parallel()
	ok := func(ctx context.Context, c *saga.Call) (json.RawMessage, error) { return nil, nil }
	broken := func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
		return nil, saga.Permanent(errors.New("refund service gone"))
	}
	def := &saga.Definition{Name: "stuck", Events: saga.Events{Lifecycle: true}, Steps: []saga.Step{
		{Name: "charge", Action: ok, Compensation: broken},
		{Name: "ship", Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
			return nil, saga.Permanent(errors.New("no carrier"))
		}},
	}}
	b := setup(t, setupOpts{defs: []*saga.Definition{def}})
	ctx := context.Background()
	failed := b.run(t, "stuck", 1)
	if failed.Status != saga.StatusFailed {
		t.Fatalf("saga %s, want failed", failed.Status)
	}
	cases := []struct {
		name, id, note string
		want           error
	}{
		{"empty note", failed.ID, " ", engine.ErrInvalidInput},
		{"unknown saga", "01J9Z3K8Q5W6X7Y8Z9A0B1C2D3", "x", engine.ErrNotFound},
		{"malformed id", "nope", "x", engine.ErrInvalidID},
	}
	for _, tc := range cases {
		if err := b.eng.Resolve(ctx, tc.id, tc.note, "ops"); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	resolving := time.Now()
	if err := b.eng.Resolve(ctx, failed.ID, "refunded by hand, ticket OPS-17", "alice@ops"); err != nil {
		t.Fatal(err)
	}
	s, err := b.eng.Get(ctx, failed.ID)
	if err != nil || s.Status != saga.StatusResolved {
		t.Fatalf("after resolve: %v %v, want resolved", s, err)
	}
	// Retention counts from the resolution, not from the failure.
	if s.UpdatedAt.Before(resolving) {
		t.Errorf("resolved saga updated at %v, before it was resolved (%v)", s.UpdatedAt, resolving)
	}
	if n, err := b.eng.Prune(ctx, resolving); err != nil || n != 0 {
		t.Errorf("prune of sagas finished before the resolution: %d, %v; want none", n, err)
	}
	logs, err := b.eng.Log(ctx, failed.ID)
	if err != nil {
		t.Fatal(err)
	}
	var note string
	for _, e := range logs {
		if e.Event == storage.EventResolved {
			note = e.Note
		}
	}
	if !strings.Contains(note, "alice@ops") || !strings.Contains(note, "OPS-17") {
		t.Errorf("resolved log entry note %q: want who and the note", note)
	}
	if err := b.eng.Resolve(ctx, failed.ID, "again", "bob"); !errors.Is(err, engine.ErrConflict) {
		t.Errorf("resolve of a resolved saga: %v, want ErrConflict", err)
	}
	if err := b.eng.Retry(ctx, failed.ID); !errors.Is(err, engine.ErrConflict) {
		t.Errorf("retry of a resolved saga: %v, want ErrConflict", err)
	}
	// Resolved sagas are pruned like completed ones; nothing else was due.
	if n, err := b.eng.Prune(ctx, time.Now().Add(time.Hour)); err != nil || n != 1 {
		t.Errorf("prune: %d, %v; want the resolved saga", n, err)
	}
	if evs := names(outbox(t, b.eng, storage.OutboxNew)); evs[len(evs)-1] != "saga.resolved" {
		t.Errorf("lifecycle events %v: want saga.resolved last", evs)
	}
}

// TestRetryRacesResolve sends Retry and Resolve at once to failed sagas: at
// most one of them may win, and the saga ends as the winner says. A Retry
// that read the saga before a Resolve must not bring it back to life.
func TestRetryRacesResolve(t *testing.T) {
	t.Parallel()
	var fixed atomic.Bool
	def := &saga.Definition{Name: "stuck", Steps: []saga.Step{
		{Name: "one", Action: func(context.Context, *saga.Call) (json.RawMessage, error) { return nil, nil },
			CompensationRetry: fastRetry(1),
			Compensation: func(context.Context, *saga.Call) (json.RawMessage, error) {
				if !fixed.Load() {
					return nil, saga.Permanent(errFlaky)
				}
				return nil, nil
			}},
		{Name: "two", Action: func(context.Context, *saga.Call) (json.RawMessage, error) { return nil, saga.Permanent(errFlaky) }},
	}}
	b := setup(t, setupOpts{defs: []*saga.Definition{def}})
	ctx := context.Background()
	const n = 100
	ids := make([]string, n)
	for i := range ids {
		s := b.run(t, "stuck", nil)
		if s.Status != saga.StatusFailed {
			t.Fatalf("saga %s, want failed", s.Status)
		}
		ids[i] = s.ID
	}
	fixed.Store(true)
	var wg sync.WaitGroup
	retried, resolved := make([]error, n), make([]error, n)
	for i, id := range ids {
		start := make(chan struct{})
		wg.Add(2)
		go func() { defer wg.Done(); <-start; retried[i] = b.eng.Retry(ctx, id) }()
		go func() { defer wg.Done(); <-start; resolved[i] = b.eng.Resolve(ctx, id, "fixed by hand", "ops") }()
		close(start)
	}
	wg.Wait()
	for i, id := range ids {
		for _, err := range []error{retried[i], resolved[i]} {
			if err != nil && !errors.Is(err, engine.ErrConflict) {
				t.Fatalf("saga %s: %v, want success or ErrConflict", id, err)
			}
		}
		want := saga.StatusFailed
		switch {
		case retried[i] == nil && resolved[i] == nil:
			t.Errorf("saga %s: both Retry and Resolve succeeded", id)
			continue
		case retried[i] == nil:
			want = saga.StatusCompensated
		case resolved[i] == nil:
			want = saga.StatusResolved
		}
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		s, err := b.eng.Wait(wctx, id)
		cancel()
		if err != nil || s.Status != want {
			t.Errorf("saga %s (retry: %v, resolve: %v): %v, %v; want %s", id, retried[i], resolved[i], s, err, want)
		}
	}
}
