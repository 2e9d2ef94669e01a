package engine_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
)

// TestRetryWithInput: a saga waits for a retry because its input is wrong;
// an operator retries it with a corrected input: the next attempt gets the
// new input, the saga completes, and its log records both inputs.
func TestRetryWithInput(t *testing.T) {
	t.Parallel()
	retried := make(chan struct{}, 4)
	var seen []int
	def := &saga.Definition{Name: "charge", Steps: []saga.Step{{
		Name: "charge",
		Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
			var in struct{ Amount int }
			if err := c.DecodeInput(&in); err != nil {
				return nil, saga.Permanent(err)
			}
			seen = append(seen, in.Amount)
			if in.Amount <= 0 {
				return nil, errors.New("amount must be positive")
			}
			return nil, nil
		},
		// A retry an hour later: only the operator's retry brings it on.
		Retry: saga.RetryPolicy{MaxAttempts: 5, InitialInterval: time.Hour, Jitter: -1},
	}}}
	b := setup(t, setupOpts{defs: []*saga.Definition{def}, opts: engine.Options{Hooks: onRetry(retried)}})
	ctx := context.Background()
	st, err := b.eng.Start(ctx, "charge", map[string]int{"amount": -5})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-retried:
	case <-time.After(10 * time.Second):
		t.Fatal("the first attempt never failed")
	}
	if err := b.eng.Retry(ctx, st.ID, engine.RetryWithInput(func() {})); err == nil {
		t.Errorf("retry with an input that is not JSON: no error")
	}
	if err := b.eng.Retry(ctx, st.ID, engine.RetryWithInput(map[string]int{"amount": 5})); err != nil {
		t.Fatalf("retry with input: %v", err)
	}
	s := b.wait(t, st.ID)
	if s.Status != saga.StatusCompleted || string(s.Input) != `{"amount":5}` {
		t.Fatalf("status %s, input %s: want completed with the new input", s.Status, s.Input)
	}
	if len(seen) != 2 || seen[0] != -5 || seen[1] != 5 {
		t.Errorf("the step saw amounts %v, want [-5 5]", seen)
	}
	log, err := b.eng.Log(ctx, st.ID)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range log {
		if e.Event == storage.EventInputReplaced {
			found = true
			if string(e.PrevInput) != `{"amount":-5}` || string(e.Input) != `{"amount":5}` {
				t.Errorf("input_replaced entry: prev %s, new %s", e.PrevInput, e.Input)
			}
		}
	}
	if !found {
		t.Errorf("log has no %s entry", storage.EventInputReplaced)
	}
	// A finished saga: nothing to retry, and its input stays.
	if err := b.eng.Retry(ctx, st.ID, engine.RetryWithInput(map[string]int{"amount": 7})); !errors.Is(err, engine.ErrConflict) {
		t.Errorf("retry of a completed saga with input: %v, want ErrConflict", err)
	}
	if s, _ := b.eng.Get(ctx, st.ID); string(s.Input) != `{"amount":5}` {
		t.Errorf("input after a refused retry: %s", s.Input)
	}
}
