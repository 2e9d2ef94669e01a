package engine_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cockroachdb/errors"

	"github.com/sagad/sagad/clock"
	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/steps"
	"github.com/sagad/sagad/storage"
	"github.com/sagad/sagad/storage/bolt"
)

// Order is the input of the order sagas in these examples.
type Order struct {
	ID   string `json:"id"`
	Item string `json:"item"`
	Qty  int    `json:"qty"`
}

// An order saga of three steps: reserve stock, charge the card, ship. Each
// step is a typed Go function; its output is stored and passed to later
// steps.
func Example() {
	dir, err := os.MkdirTemp("", "sagad-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)

	eng, err := engine.Open(filepath.Join(dir, "sagad.db"), engine.Options{
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		panic(err)
	}

	type Reservation struct {
		ID string `json:"id"`
	}
	type Charge struct {
		ID string `json:"id"`
	}
	type Shipment struct {
		Carrier  string `json:"carrier"`
		Tracking string `json:"tracking"`
	}
	err = eng.Register(&saga.Definition{
		Name: "order",
		Steps: []saga.Step{
			{
				Name: "reserve",
				Action: steps.Typed(func(ctx context.Context, c *saga.Call, o Order) (Reservation, error) {
					return Reservation{ID: "res-" + o.ID}, nil
				}),
				Compensation: steps.Noop, // release the reservation
			},
			{
				Name: "charge",
				Action: steps.Typed(func(ctx context.Context, c *saga.Call, o Order) (Charge, error) {
					// c.IdempotencyKey is stable across retries: pass it to
					// the payment provider so a retry cannot charge twice.
					return Charge{ID: "ch-" + o.ID}, nil
				}),
				Compensation: steps.Noop, // refund
			},
			{
				Name: "ship",
				Action: steps.Typed(func(ctx context.Context, c *saga.Call, o Order) (Shipment, error) {
					var r Reservation
					if err := c.Output("reserve", &r); err != nil {
						return Shipment{}, err
					}
					return Shipment{Carrier: "acme", Tracking: "TRK-" + r.ID}, nil
				}),
			},
		},
	})
	if err != nil {
		panic(err)
	}

	// Run recovers unfinished sagas, then runs new ones until ctx ends.
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- eng.Run(ctx) }()

	started, err := eng.Start(ctx, "order", Order{ID: "1001", Item: "book", Qty: 2},
		engine.WithIdempotencyKey("order-1001"))
	if err != nil {
		panic(err)
	}
	s, err := eng.Wait(ctx, started.ID)
	if err != nil {
		panic(err)
	}
	fmt.Println("status:", s.Status)
	fmt.Println("ship:", string(s.Data["ship"]))
	for _, st := range s.Steps {
		fmt.Printf("%s: %s after %d attempt(s)\n", st.Name, st.Status, st.Attempts)
	}

	cancel()
	if err := <-runDone; err != nil {
		panic(err)
	}
	if err := eng.Close(); err != nil {
		panic(err)
	}
	// Output:
	// status: completed
	// ship: {"carrier":"acme","tracking":"TRK-res-1001"}
	// reserve: succeeded after 1 attempt(s)
	// charge: succeeded after 1 attempt(s)
	// ship: succeeded after 1 attempt(s)
}

// A declined card is a permanent error: the charge is not retried, and the
// steps that succeeded before it are compensated, last first.
func ExampleEngine_Start_compensation() {
	var undone []string
	undo := func(what string) saga.Func {
		return func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
			undone = append(undone, what)
			return nil, nil
		}
	}
	eng, stop := runExampleEngine(&saga.Definition{
		Name: "order",
		Steps: []saga.Step{
			{Name: "reserve", Action: steps.Noop, Compensation: undo("release stock")},
			{Name: "courier", Action: steps.Noop, Compensation: undo("cancel courier")},
			{
				Name: "charge",
				Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
					return nil, saga.Permanent(errors.New("card declined"))
				},
				Compensation: undo("refund"), // not run: the charge never succeeded
			},
			{Name: "ship", Action: steps.Noop},
		},
	})
	defer stop()

	ctx := context.Background()
	started, err := eng.Start(ctx, "order", Order{ID: "1002", Item: "book", Qty: 1})
	if err != nil {
		panic(err)
	}
	s, err := eng.Wait(ctx, started.ID)
	if err != nil {
		panic(err)
	}
	fmt.Println("status:", s.Status)
	fmt.Println("reason:", s.Err)
	fmt.Println("permanent:", saga.IsPermanent(s.Err))
	fmt.Println("compensations:", strings.Join(undone, ", "))
	for _, st := range s.Steps {
		fmt.Printf("%s: %s\n", st.Name, st.Status)
	}
	// Output:
	// status: compensated
	// reason: step "charge" failed: card declined
	// permanent: true
	// compensations: cancel courier, release stock
	// reserve: compensated
	// courier: compensated
	// charge: failed
	// ship: skipped
}

// Steps that name what they wait for (After) run in parallel: stock is
// reserved and the card authorised at the same time, and shipping waits
// for both. Each gets its own retries, timeout and compensation; the step
// after them sees both outputs.
func ExampleEngine_Start_parallel() {
	answer := func(out string) saga.Func {
		return func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
			return json.Marshal(out)
		}
	}
	eng, stop := runExampleEngine(&saga.Definition{
		Name: "order",
		Steps: []saga.Step{
			{Name: "reserve", After: saga.AtStart, Action: answer("R-7"), Compensation: steps.Noop},
			{Name: "authorise", After: saga.AtStart, Action: answer("A-9"), Compensation: steps.Noop},
			{
				Name:  "ship",
				After: []string{"reserve", "authorise"},
				Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
					return json.Marshal("shipping " + string(c.Data["reserve"]) + " paid by " + string(c.Data["authorise"]))
				},
			},
		},
	})
	defer stop()

	ctx := context.Background()
	started, err := eng.Start(ctx, "order", Order{ID: "1003", Item: "lamp", Qty: 1})
	if err != nil {
		panic(err)
	}
	s, err := eng.Wait(ctx, started.ID)
	if err != nil {
		panic(err)
	}
	fmt.Println("status:", s.Status)
	fmt.Println("ship:", string(s.Data["ship"]))
	// Output:
	// status: completed
	// ship: "shipping \"R-7\" paid by \"A-9\""
}

// A step whose participant answers by message: its Command builds the
// message, which the engine writes to the outbox in the commit that starts
// the attempt. A relay publishes it (transport/rabbitmq), and the reply
// comes back through Complete (rabbitmq.Replies calls it); the step holds
// no goroutine meanwhile. Here the example plays the relay and the
// participant.
func ExampleEngine_Complete_command() {
	eng, stop := runExampleEngine(&saga.Definition{
		Name: "order",
		Steps: []saga.Step{{
			Name: "reserve",
			Commands: saga.Commands{Action: func(c *saga.Call) (saga.Event, error) {
				return saga.Event{Name: "inventory.reserve", Payload: c.Input}, nil
			}},
			Timeout: time.Minute, // how long an attempt waits for the reply
		}},
	})
	defer stop()

	ctx := context.Background()
	<-eng.Recovered() // a running engine starts the first attempt with the saga
	started, err := eng.Start(ctx, "order", Order{ID: "1004", Item: "desk", Qty: 1})
	if err != nil {
		panic(err)
	}
	page, err := eng.OutboxList(ctx, engine.OutboxListOptions{})
	if err != nil {
		panic(err)
	}
	cmd := page.Events[0]
	fmt.Println("command:", cmd.RoutingKey, string(cmd.Payload))
	id, step, phase, attempt, err := engine.ParseCorrelationID(cmd.Headers[storage.HeaderCorrelationID])
	if err != nil {
		panic(err)
	}
	fmt.Println("for:", id == started.ID, step, phase, attempt)

	// The participant's reply: status 200 and its data.
	applied, err := eng.Complete(ctx, id, step, phase, attempt, engine.StatusResult(200, json.RawMessage(`{"hold":"H-1"}`), ""))
	if err != nil {
		panic(err)
	}
	s, err := eng.Wait(ctx, started.ID)
	if err != nil {
		panic(err)
	}
	fmt.Println("applied:", applied, s.Status, string(s.Data["reserve"]))
	// Output:
	// command: inventory.reserve {"id":"1004","item":"desk","qty":1}
	// for: true reserve action 1
	// applied: true completed {"hold":"H-1"}
}

// Starting twice with the same idempotency key starts one saga: the second
// Start returns the first saga's id and says it is a duplicate. Use the
// key a client sends with its request (an order number, a request id).
func ExampleWithIdempotencyKey() {
	eng, stop := runExampleEngine(&saga.Definition{
		Name:  "order",
		Steps: []saga.Step{{Name: "reserve", Action: steps.Noop}},
	})
	defer stop()

	ctx := context.Background()
	order := Order{ID: "1003", Item: "book", Qty: 1}
	first, err := eng.Start(ctx, "order", order, engine.WithIdempotencyKey("order-1003"))
	if err != nil {
		panic(err)
	}
	second, err := eng.Start(ctx, "order", order, engine.WithIdempotencyKey("order-1003"))
	if err != nil {
		panic(err)
	}
	fmt.Println("same saga:", first.ID == second.ID)
	fmt.Println("duplicate:", first.Duplicate, second.Duplicate)
	// Output:
	// same saga: true
	// duplicate: false true
}

// Abort makes a running saga compensate. An attempt in flight is not
// interrupted: it finishes, then the saga undoes what succeeded.
func ExampleEngine_Abort() {
	reserving := make(chan struct{}) // closed when reserve has started
	release := make(chan struct{})   // closed to let reserve finish
	var undone []string
	eng, stop := runExampleEngine(&saga.Definition{
		Name: "order",
		Steps: []saga.Step{
			{
				Name: "reserve",
				Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
					close(reserving)
					<-release
					return nil, nil
				},
				Compensation: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
					undone = append(undone, "release stock")
					return nil, nil
				},
			},
			{Name: "charge", Action: steps.Noop},
			{Name: "ship", Action: steps.Noop},
		},
	})
	defer stop()

	ctx := context.Background()
	started, err := eng.Start(ctx, "order", Order{ID: "1004", Item: "book", Qty: 1})
	if err != nil {
		panic(err)
	}
	<-reserving
	if err := eng.Abort(ctx, started.ID); err != nil {
		panic(err)
	}
	close(release)

	s, err := eng.Wait(ctx, started.ID)
	if err != nil {
		panic(err)
	}
	fmt.Println("status:", s.Status)
	fmt.Println("aborted:", errors.Is(s.Err, engine.ErrAborted))
	fmt.Println("compensations:", strings.Join(undone, ", "))
	for _, st := range s.Steps {
		fmt.Printf("%s: %s\n", st.Name, st.Status)
	}
	// Output:
	// status: compensated
	// aborted: true
	// compensations: release stock
	// reserve: compensated
	// charge: skipped
	// ship: skipped
}

// runExampleEngine opens an engine on a temporary file, registers def and
// runs the engine, as Example does step by step. stop shuts it down.
func runExampleEngine(def *saga.Definition) (eng *engine.Engine, stop func()) {
	dir, err := os.MkdirTemp("", "sagad-example")
	if err != nil {
		panic(err)
	}
	eng, err = engine.Open(filepath.Join(dir, "sagad.db"), engine.Options{
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		panic(err)
	}
	if err := eng.Register(def); err != nil {
		panic(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- eng.Run(ctx) }()
	return eng, func() {
		cancel()
		if err := <-runDone; err != nil {
			panic(err)
		}
		if err := eng.Close(); err != nil {
			panic(err)
		}
		os.RemoveAll(dir)
	}
}

// An engine on a store of your choosing, here the bbolt backend opened by
// hand, with a fake clock: the hour-long retry passes when the clock moves.
func ExampleNew() {
	dir, err := os.MkdirTemp("", "sagad-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	start := time.Date(2030, 1, 1, 9, 0, 0, 0, time.UTC)
	fake := clock.NewFake(start)
	store, err := bolt.Open(filepath.Join(dir, "sagad.db"), &bolt.Options{Clock: fake})
	if err != nil {
		panic(err)
	}
	retrying := make(chan struct{}, 1)
	eng, err := engine.New(store, engine.Options{Clock: fake, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Hooks: engine.Hooks{AttemptFinished: func(a engine.AttemptInfo) {
			if a.Retry {
				retrying <- struct{}{}
			}
		}}})
	if err != nil {
		panic(err)
	}
	defer eng.Close() // closes the store too

	tries := 0
	err = eng.Register(&saga.Definition{Name: "remind", Steps: []saga.Step{{Name: "send",
		Retry: saga.RetryPolicy{InitialInterval: time.Hour, MaxInterval: time.Hour, Jitter: -1},
		Action: func(context.Context, *saga.Call) (json.RawMessage, error) {
			if tries++; tries == 1 {
				return nil, errors.New("mail server busy")
			}
			return nil, nil
		}}}})
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = eng.Run(ctx) }()
	<-eng.Recovered()
	st, err := eng.Start(ctx, "remind", nil)
	if err != nil {
		panic(err)
	}
	<-retrying                                   // the first try failed; the next is due at 10:00
	fake.BlockUntilWaiting(start.Add(time.Hour)) // the engine waits for it on the fake clock
	fake.Advance(time.Hour)
	s, err := eng.Wait(ctx, st.ID)
	if err != nil {
		panic(err)
	}
	fmt.Println(s.Status, "after", tries, "tries, at", s.UpdatedAt.Format("15:04"))
	// Output: completed after 2 tries, at 10:00
}
