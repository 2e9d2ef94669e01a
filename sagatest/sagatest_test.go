package sagatest_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/sagatest"
)

// order is a saga whose charge fails twice, then succeeds, or declines
// for good; retries wait ten minutes each.
func order(charges *atomic.Int32) *saga.Definition {
	ok := func(context.Context, *saga.Call) (json.RawMessage, error) { return nil, nil }
	return &saga.Definition{Name: "order", Steps: []saga.Step{
		{Name: "reserve", Action: ok, Compensation: ok},
		{Name: "charge", Retry: saga.RetryPolicy{MaxAttempts: 5, InitialInterval: 10 * time.Minute, Jitter: -1},
			Action: func(_ context.Context, c *saga.Call) (json.RawMessage, error) {
				if string(c.Input) == `"decline"` {
					return nil, saga.Permanent(errors.New("card declined"))
				}
				if charges.Add(1) <= 2 {
					return nil, errors.New("payment service busy")
				}
				return nil, c.Emit(saga.Event{Name: "payment.charged", Payload: json.RawMessage(`{}`)})
			}},
	}}
}

func TestRunPassesBackoffAtOnce(t *testing.T) {
	t.Parallel()
	var charges atomic.Int32
	seen := make(chan engine.AttemptInfo, 16) // the test's own hook runs beside the harness's
	h := sagatest.NewWith(t, sagatest.Options{Engine: engine.Options{Hooks: engine.Hooks{
		AttemptFinished: func(a engine.AttemptInfo) { seen <- a }}}}, order(&charges))
	start := time.Now()
	s := h.Run("order", "ok")
	sagatest.RequireStatus(t, s, saga.StatusCompleted)
	if got := h.Calls(s.ID); fmt.Sprint(got) != "[reserve/action charge/action charge/action charge/action]" {
		t.Errorf("calls %v", got)
	}
	h.RequireCalls(s.ID, "reserve/action", "charge/action")
	h.RequireEvents(s.ID, "payment.charged")
	for i := range 4 { // the hook runs after the commit the saga's end is read from
		select {
		case a := <-seen:
			if a.SagaID != s.ID {
				t.Errorf("the test's hook saw an attempt of saga %s, want %s", a.SagaID, s.ID)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("the test's AttemptFinished hook saw %d attempts, want 4", i)
		}
	}
	if moved := h.Clock.Now().Sub(sagatest.Start); moved < 20*time.Minute {
		t.Errorf("the clock moved %s, want past two ten-minute backoffs", moved)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("the saga took %s of real time", took)
	}

	d := h.Run("order", "decline")
	sagatest.RequireStatus(t, d, saga.StatusCompensated)
	h.RequireCalls(d.ID, "reserve/action", "charge/action", "reserve/compensation")
	h.RequireEvents(d.ID)
}

// A test of a saga with a ten-minute backoff runs in milliseconds.
func Example() {
	var busy atomic.Bool
	busy.Store(true)
	def := &saga.Definition{Name: "charge", Steps: []saga.Step{{
		Name:  "charge",
		Retry: saga.RetryPolicy{InitialInterval: 10 * time.Minute, Jitter: -1},
		Action: func(context.Context, *saga.Call) (json.RawMessage, error) {
			if busy.Swap(false) {
				return nil, errors.New("busy: try again")
			}
			return json.RawMessage(`{"receipt":"R-1"}`), nil
		},
	}}}
	t := newExampleT() // in a test: the test's own t
	defer t.done()
	h := sagatest.New(t, def)
	s := h.Run("charge", nil)
	fmt.Println(s.Status, string(s.Data["charge"]), h.Clock.Now().Sub(sagatest.Start))
	fmt.Println(h.Calls(s.ID))
	// Output:
	// completed {"receipt":"R-1"} 10m0s
	// [charge/action charge/action]
}

// exampleT stands in for the *testing.T an Example has not got.
type exampleT struct {
	dir      string
	cleanups []func()
}

func newExampleT() *exampleT {
	dir, err := os.MkdirTemp("", "sagatest-example")
	if err != nil {
		panic(err)
	}
	return &exampleT{dir: dir}
}

func (t *exampleT) Helper()                      {}
func (t *exampleT) Fatalf(f string, args ...any) { panic(fmt.Sprintf(f, args...)) }
func (t *exampleT) Errorf(f string, args ...any) { panic(fmt.Sprintf(f, args...)) }
func (t *exampleT) Cleanup(f func())             { t.cleanups = append(t.cleanups, f) }
func (t *exampleT) TempDir() string              { return t.dir }
func (t *exampleT) done() {
	for i := len(t.cleanups) - 1; i >= 0; i-- {
		t.cleanups[i]()
	}
	_ = os.RemoveAll(t.dir)
}
