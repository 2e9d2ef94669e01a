package sagatest_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"

	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/sagatest"
)

// stock is a participant that holds one reservation per saga, however
// often a saga's reserve is called, as a participant must for a saga to
// survive crashes: after one, the engine calls again with the same
// idempotency key.
type stock struct {
	mu       sync.Mutex
	reserved map[string]bool // by saga id
}

func (s *stock) reserve(_ context.Context, c *saga.Call) (json.RawMessage, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reserved[c.SagaID] = true
	return nil, c.Emit(saga.Event{Name: "stock.reserved", Payload: json.RawMessage(`{"sku":"book"}`)})
}

func (s *stock) release(_ context.Context, c *saga.Call) (json.RawMessage, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.reserved, c.SagaID)
	return nil, nil
}

// Crash a saga's engine at each of its durable points, before and after
// the write, and check each run: it ends, idempotency keys hold,
// compensations undo what was done in reverse order, and every event of a
// recorded success is in the outbox once.
func ExampleExplore() {
	t := newExampleT() // in a test: the test's own t
	defer t.done()
	r := sagatest.Explore(t, sagatest.Exploration{
		// Called once per run: every run starts with fresh participants.
		Definition: func() *saga.Definition {
			s := &stock{reserved: map[string]bool{}}
			charge := func(context.Context, *saga.Call) (json.RawMessage, error) {
				return json.RawMessage(`{"charge":"ch-1"}`), nil
			}
			return &saga.Definition{Name: "order", Steps: []saga.Step{
				{Name: "reserve", Action: s.reserve, Compensation: s.release},
				{Name: "charge", Action: charge},
			}}
		},
		Input: map[string]string{"order": "42"},
	})
	for _, p := range r.Points {
		fmt.Println(p)
	}
	fmt.Printf("%d runs with a crash, %d violations\n", len(r.Runs), len(r.Violations))
	// Output:
	// commit 1: saga_started, attempt_started reserve/action
	// commit 2: attempt_succeeded reserve/action, attempt_started charge/action
	// commit 3: attempt_succeeded charge/action, status_changed completed
	// 6 runs with a crash, 0 violations
}
