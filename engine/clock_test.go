package engine_test

import (
	"context"
	"encoding/json"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sagad/sagad/clock"
	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/saga"
)

// With a fake clock, an hour-long retry wait and a minute-long attempt
// timeout pass when the test moves the time, not in an hour: the engine's
// waits, timeouts and records all go through Options.Clock.
func TestFakeClockMovesRetriesAndTimeouts(t *testing.T) {
	t.Parallel()
	start := time.Date(2032, 1, 1, 0, 0, 0, 0, time.UTC)
	f := clock.NewFake(start)
	var calls atomic.Int32
	retried := make(chan struct{}, 4)
	def := &saga.Definition{Name: "slow", Steps: []saga.Step{{Name: "one", Timeout: time.Minute,
		Retry: saga.RetryPolicy{MaxAttempts: 3, InitialInterval: time.Hour, MaxInterval: time.Hour, Jitter: -1},
		Action: func(ctx context.Context, _ *saga.Call) (json.RawMessage, error) {
			switch calls.Add(1) {
			case 1:
				return nil, errFlaky // retried in an hour
			case 2:
				<-ctx.Done() // cut off by its minute-long timeout
				return nil, ctx.Err()
			}
			return nil, nil
		}}}}
	b := setup(t, setupOpts{defs: []*saga.Definition{def}, opts: engine.Options{Clock: f, Hooks: onRetry(retried)}})
	st, err := b.eng.Start(context.Background(), "slow", nil)
	if err != nil {
		t.Fatal(err)
	}
	<-retried
	f.BlockUntilWaiting(start.Add(time.Hour)) // the scheduler sleeps until the retry
	f.Advance(time.Hour)
	f.BlockUntilWaiting(start.Add(time.Hour + time.Minute)) // the second attempt's timeout
	f.Advance(time.Minute)
	<-retried
	f.BlockUntilWaiting(start.Add(2*time.Hour + time.Minute))
	f.Advance(time.Hour)
	s := b.wait(t, st.ID)
	if s.Status != saga.StatusCompleted || calls.Load() != 3 {
		t.Fatalf("status %s after %d calls, want completed after 3", s.Status, calls.Load())
	}
	if want := start.Add(2*time.Hour + time.Minute); !s.UpdatedAt.Equal(want) {
		t.Errorf("UpdatedAt = %v, want the fake time %v", s.UpdatedAt, want)
	}
}
