package postgres_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/errors"
	"github.com/jackc/pgx/v5"

	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/internal/pgtest"
	"github.com/sagad/sagad/internal/tcpproxy"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/steps"
	"github.com/sagad/sagad/storage/postgres"
)

// A step that writes in the transaction recording its success (DB.Step)
// takes effect exactly once: its first attempt debits the balance, and then
// the connection is cut before the success is committed, so the debit goes
// with it; the attempt runs again and debits once. A failed attempt's
// writes are rolled back.
func TestStepWritesExactlyOnce(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.URL(t)
	schema := pgtest.Schema(t, dbURL)
	proxy, viaURL := tcpproxy.ForURL(t, dbURL)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	db, err := postgres.Open(ctx, viaURL, &postgres.Options{Schema: schema, PollInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	balances := pgx.Identifier{schema, "balances"}.Sanitize()
	if _, err := db.Pool().Exec(ctx, "CREATE TABLE "+balances+" (account text PRIMARY KEY, amount int NOT NULL); INSERT INTO "+balances+" VALUES ('A', 100)"); err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int32
	var restoreErr atomic.Value // why the proxy could not listen again, if so
	debit := db.Step(func(ctx context.Context, tx pgx.Tx, c *saga.Call) (json.RawMessage, error) {
		var in struct{ Fail bool }
		if err := c.DecodeInput(&in); err != nil {
			return nil, err
		}
		if _, err := tx.Exec(ctx, "UPDATE "+balances+" SET amount = amount - 10 WHERE account = 'A'"); err != nil {
			return nil, err
		}
		if in.Fail {
			return nil, saga.Permanent(errors.New("declined after writing"))
		}
		return json.RawMessage(`{"debited":10}`), nil
	})
	step := func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
		out, err := debit(ctx, c)
		if err == nil && calls.Add(1) == 1 {
			// The process loses PostgreSQL once the step has returned,
			// before the engine commits its success.
			proxy.Cut()
			time.AfterFunc(300*time.Millisecond, func() {
				// The port may take a moment to listen on again: try for
				// a few seconds, and say so if it never does.
				var err error
				for range 100 {
					if err = proxy.Restore(); err == nil {
						return
					}
					time.Sleep(50 * time.Millisecond)
				}
				restoreErr.Store(err.Error())
			})
		}
		return out, err
	}
	eng, err := engine.New(db, engine.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	if err := eng.Register(&saga.Definition{Name: "pay", Steps: []saga.Step{
		{Name: "debit", Action: step}, {Name: "notify", Action: steps.Noop}}}); err != nil {
		t.Fatal(err)
	}
	go func() { _ = eng.Run(ctx) }()

	run := func(input any) *engine.Saga {
		t.Helper()
		var st engine.Started
		var err error
		for try := 0; try < 100; try++ { // PostgreSQL may be away a moment
			if st, err = eng.Start(ctx, "pay", input); err == nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			t.Fatal(err)
		}
		wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
		defer wcancel()
		s, err := eng.Wait(wctx, st.ID)
		if err != nil {
			got, gerr := eng.Get(ctx, st.ID)
			t.Fatalf("%v; the saga is %+v (%v); the proxy's restore: %v", err, got, gerr, restoreErr.Load())
		}
		return s
	}
	amount := func() int {
		t.Helper()
		var n int
		err := db.Pool().QueryRow(ctx, "SELECT amount FROM "+balances+" WHERE account = 'A'").Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if s := run(map[string]bool{"fail": false}); s.Status != saga.StatusCompleted || string(s.Data["debit"]) != `{"debited":10}` {
		t.Fatalf("saga %s, data %s; want completed with the debit's output", s.Status, s.Data)
	}
	if n, c := amount(), calls.Load(); n != 90 || c != 2 {
		t.Fatalf("balance %d after %d attempts, want 90 after 2 (the first one's debit lost with its commit)", n, c)
	}
	if s := run(map[string]bool{"fail": true}); s.Status == saga.StatusCompleted {
		t.Fatalf("a declined debit completed")
	}
	if n := amount(); n != 90 {
		t.Fatalf("balance %d after a failed attempt that wrote, want 90", n)
	}
}

// A step function that panics leaves no transaction open: its connection
// goes back to the pool.
func TestStepPanicRollsBack(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.URL(t)
	ctx := context.Background()
	db, err := postgres.Open(ctx, dbURL, &postgres.Options{Schema: pgtest.Schema(t, dbURL), MaxConns: 6})
	if err != nil {
		t.Fatal(err)
	}
	eng, err := engine.New(db, engine.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	boom := db.Step(func(context.Context, pgx.Tx, *saga.Call) (json.RawMessage, error) { panic("boom") })
	if err := eng.Register(&saga.Definition{Name: "d", Steps: []saga.Step{{Name: "s", Action: boom}}}); err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { _ = eng.Run(rctx) }()
	for range 3 {
		st, err := eng.Start(ctx, "d", nil)
		if err != nil {
			t.Fatal(err)
		}
		wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
		s, err := eng.Wait(wctx, st.ID)
		wcancel()
		if err != nil || s.Status == saga.StatusCompleted {
			t.Fatalf("a panicking step: %+v, %v", s, err)
		}
	}
	if n := db.Pool().Stat().AcquiredConns(); n != 0 {
		t.Fatalf("%d connections still held after 3 panicking steps, want 0", n)
	}
}
