package engine_test

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cockroachdb/errors"
	"github.com/oklog/ulid/v2"

	"github.com/sagad/sagad/clock"
	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/recovery"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
	"github.com/sagad/sagad/storage/bolt"
)

// formatFixture is a database written by sagad before the storage seam
// (schema 1, commit 04d5962). It holds a completed saga, a saga with an
// attempt in flight (as a crash leaves it), one waiting for a retry, a
// failed one, a parked one, and outbox events new, produced and
// not_produced. Every later sagad must open it and finish its sagas. It is
// written by TestWriteFormatFixture, which only its maker runs:
//
//	SAGAD_WRITE_FIXTURE=1 go test ./engine -run TestWriteFormatFixture
const formatFixture = "testdata/format-v1.db"

// fixtureInput says what a fixture saga's steps do while the fixture is
// written; afterwards every step succeeds.
type fixtureInput struct {
	Role string `json:"role"` // completed, in-flight, backed-off, failed
}

// fixtureDefs returns the fixture's definitions: "order" and "parked".
// writing selects the behaviour of the steps while the file is written.
func fixtureDefs(writing bool) (order, parked *saga.Definition) {
	role := func(c *saga.Call) string {
		var in fixtureInput
		_ = json.Unmarshal(c.Input, &in)
		return in.Role
	}
	ok := func(context.Context, *saga.Call) (json.RawMessage, error) { return json.RawMessage(`{"ok":true}`), nil }
	charge := func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
		if !writing {
			return json.RawMessage(`{"charged":true}`), nil
		}
		switch role(c) {
		case "in-flight":
			<-ctx.Done() // cut off by the engine's shutdown: left in flight
			return nil, ctx.Err()
		case "backed-off":
			return nil, errors.New("fixture: payment service unavailable")
		case "failed":
			return nil, saga.Permanent(errors.New("fixture: card declined"))
		}
		return json.RawMessage(`{"charged":true}`), nil
	}
	release := func(_ context.Context, c *saga.Call) (json.RawMessage, error) {
		if writing && role(c) == "failed" {
			return nil, errors.New("fixture: stock service down")
		}
		return nil, nil
	}
	order = &saga.Definition{Name: "order", Events: saga.Events{Lifecycle: true, Exchange: "fixture"}, Steps: []saga.Step{
		{Name: "reserve", Action: ok, Compensation: release, CompensationRetry: saga.RetryPolicy{MaxAttempts: 1}},
		{Name: "charge", Action: charge, Compensation: ok,
			Retry: saga.RetryPolicy{MaxAttempts: 5, InitialInterval: time.Hour, MaxInterval: time.Hour, Jitter: -1}},
		{Name: "ship", Action: ok},
	}}
	parked = &saga.Definition{Name: "parked", Steps: []saga.Step{{Name: "only", Action: ok}}}
	return order, parked
}

// fixtureIDs reads the fixture's saga ids by role from its idempotency
// keys (the role is the key).
func fixtureIDs(t *testing.T, eng *engine.Engine) map[string]string {
	t.Helper()
	ids := map[string]string{}
	page, err := eng.List(context.Background(), engine.ListOptions{Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range page.Sagas {
		ids[s.IdempotencyKey] = s.ID
	}
	return ids
}

// fixtureTime is when the fixture at path was last written: its newest
// saga's last update.
func fixtureTime(t *testing.T, path string) time.Time {
	t.Helper()
	db, err := bolt.Open(path, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	recs, _, err := db.SagaList(context.Background(), storage.ListOptions{Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	var last time.Time
	for _, r := range recs {
		if r.UpdatedAt.After(last) {
			last = r.UpdatedAt
		}
	}
	if last.IsZero() {
		t.Fatalf("%s holds no saga", path)
	}
	return last
}

// TestWriteFormatFixture writes formatFixture. It runs only with
// SAGAD_WRITE_FIXTURE=1: the file must come from the sagad that wrote
// the old format, not be rewritten by a later one.
func TestWriteFormatFixture(t *testing.T) {
	if os.Getenv("SAGAD_WRITE_FIXTURE") != "1" {
		t.Skip("writes the format fixture; set SAGAD_WRITE_FIXTURE=1 to rewrite testdata/format-v1.db")
	}
	path := filepath.Join(t.TempDir(), "fixture.db")
	order, parked := fixtureDefs(true)
	ctx := context.Background()

	// A saga of "parked" recorded, not run; the next engine does not know
	// its definition and parks it.
	eng := openEngine(t, path, engine.Options{}, parked)
	if _, err := eng.Start(ctx, "parked", nil, engine.WithIdempotencyKey("parked")); err != nil {
		t.Fatal(err)
	}
	if err := eng.Close(); err != nil {
		t.Fatal(err)
	}

	retrying := make(chan struct{}, 1)
	o := engine.Options{ShutdownGrace: 50 * time.Millisecond, Hooks: onRetry(retrying)}
	eng = openEngine(t, path, o, order)
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- eng.Run(runCtx) }()
	<-eng.Recovered()
	start := func(role string) string {
		st, err := eng.Start(ctx, "order", fixtureInput{Role: role}, engine.WithIdempotencyKey(role))
		if err != nil {
			t.Fatal(err)
		}
		return st.ID
	}
	wait := func(id string, want saga.Status) {
		s, err := eng.Wait(ctx, id)
		if err != nil || s.Status != want {
			t.Fatalf("fixture saga %s: %v, %v; want %s", id, s, err, want)
		}
	}
	completed := start("completed")
	wait(completed, saga.StatusCompleted)
	wait(start("failed"), saga.StatusFailed)
	start("backed-off")
	<-retrying
	start("in-flight")
	for {
		page, err := eng.List(ctx, engine.ListOptions{Status: saga.StatusRunning})
		if err != nil {
			t.Fatal(err)
		}
		inFlight := false
		for _, s := range page.Sagas {
			inFlight = inFlight || (s.IdempotencyKey == "in-flight" && s.Steps[1].InFlight)
		}
		if inFlight {
			break
		}
		time.Sleep(time.Millisecond) // no hook tells when an attempt is recorded as started
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	// The completed saga's events: the first produced, the second failed
	// for good; the rest stay new.
	page, err := eng.OutboxList(ctx, engine.OutboxListOptions{Status: storage.OutboxNew, Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	var mine []ulid.ULID
	for _, ev := range page.Events {
		if ev.SagaID.String() == completed {
			mine = append(mine, ev.ID)
		}
	}
	now := time.Now()
	err = eng.Store().(*bolt.DB).Update(func(tx *bolt.Tx) error {
		if _, err := tx.OutboxProduced(mine[:1], now); err != nil {
			return err
		}
		_, err := tx.OutboxFailed(mine[1], "fixture: no queue bound", true, now)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := eng.Close(); err != nil {
		t.Fatal(err)
	}
	if err := recovery.CheckFile(path); err != nil {
		t.Fatal(err)
	}
	copyFile(t, path, formatFixture)
}

// A file in the format before the storage seam opens, and every saga in it
// finishes: the one in flight is re-run, the one waiting for a retry and the
// failed one are retried by an operator, the parked one resumes once its
// definition is registered. Its outbox is readable and re-queueable.
func TestFormatFixtureFinishes(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "sagad.db")
	copyFile(t, formatFixture, path)
	order, parked := fixtureDefs(false)
	// The engine runs at the time the fixture was written, so that the
	// backed-off saga still waits for its retry (an hour), whenever the
	// test runs. Nothing here waits on the clock.
	b := setup(t, setupOpts{path: path, defs: []*saga.Definition{order},
		opts: engine.Options{Clock: clock.NewFake(fixtureTime(t, path))}})
	ids := fixtureIDs(t, b.eng)
	ctx := context.Background()
	if len(ids) != 5 {
		t.Fatalf("fixture sagas by key: %v, want 5", ids)
	}
	s, err := b.eng.Get(ctx, ids["parked"])
	if err != nil || s.Parked == "" {
		t.Fatalf("the parked saga: %+v, %v; want parked", s, err)
	}
	if err := b.eng.Register(parked); err != nil {
		t.Fatal(err)
	}
	for _, role := range []string{"backed-off", "failed"} {
		if err := b.eng.Retry(ctx, ids[role]); err != nil {
			t.Fatalf("retry the %s saga: %v", role, err)
		}
	}
	for role, want := range map[string]saga.Status{
		"completed": saga.StatusCompleted, "in-flight": saga.StatusCompleted, "backed-off": saga.StatusCompleted,
		"failed": saga.StatusCompensated, "parked": saga.StatusCompleted,
	} {
		s := b.wait(t, ids[role])
		if s.Status != want {
			t.Errorf("the %s saga ended %s (%v), want %s", role, s.Status, s.Err, want)
		}
		if role == "completed" && string(s.Data["charge"]) != `{"charged":true}` {
			t.Errorf("the completed saga's data %s, want its charge output", s.Data)
		}
	}
	log, err := b.eng.Log(ctx, ids["in-flight"])
	if err != nil {
		t.Fatal(err)
	}
	inDoubt := false
	for _, e := range log {
		inDoubt = inDoubt || e.Event == storage.EventInDoubt
	}
	if !inDoubt {
		t.Error("the saga in flight was not re-run as in doubt")
	}
	st, err := b.eng.OutboxStats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Counts.Produced != 1 || st.Counts.NotProduced != 1 || st.Counts.New == 0 {
		t.Fatalf("outbox counts %+v, want 1 produced, 1 not_produced and new ones", st.Counts)
	}
	page, err := b.eng.OutboxList(ctx, engine.OutboxListOptions{Status: storage.OutboxNotProduced})
	if err != nil || len(page.Events) != 1 {
		t.Fatalf("not_produced events: %+v, %v", page, err)
	}
	if err := b.eng.OutboxRequeue(ctx, page.Events[0].ID.String()); err != nil {
		t.Fatal(err)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.Create(to)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}
