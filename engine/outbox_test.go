package engine_test

import (
	"context"
	"encoding/json"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/errors"
	"github.com/oklog/ulid/v2"

	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
	"github.com/sagad/sagad/storage/bolt"
)

// outbox returns every event in the outbox in status s, oldest first.
func outbox(t *testing.T, e *engine.Engine, s storage.OutboxStatus) []*storage.OutboxEvent {
	t.Helper()
	var out []*storage.OutboxEvent
	for cursor := ""; ; {
		p, err := e.OutboxList(context.Background(), engine.OutboxListOptions{Status: s, Cursor: cursor, Limit: 2})
		if err != nil {
			t.Fatalf("outbox list: %v", err)
		}
		out = append(out, p.Events...)
		if cursor = p.NextCursor; cursor == "" {
			return out
		}
	}
}

func names(evs []*storage.OutboxEvent) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = ev.Name
		if ev.Step != "" {
			out[i] += "@" + ev.Step
		}
	}
	return out
}

// emitting returns a step function that emits one event named name and
// then returns err from attempt failUntil and before.
func emitting(name string, failUntil int, err error) saga.Func {
	return func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
		payload := json.RawMessage(`{"attempt":` + string(rune('0'+c.Attempt)) + `}`)
		if eerr := c.Emit(saga.Event{Name: name, Payload: payload}); eerr != nil {
			return nil, eerr
		}
		if c.Attempt <= failUntil {
			return nil, err
		}
		return json.RawMessage(`{"done":true}`), nil
	}
}

func TestOutboxEventsFollowCommittedOutcomes(t *testing.T) {
	t.Parallel()
	def := &saga.Definition{Name: "order", Events: saga.Events{Lifecycle: true, Exchange: "orders"}, Steps: []saga.Step{
		// Fails once, then succeeds: only the second attempt's event exists.
		{Name: "reserve", Action: emitting("stock.reserved", 1, errors.New("busy")), Retry: fastRetry(3),
			Compensation: emitting("stock.released", 0, nil)},
		// Fails for good after emitting: its event never exists.
		{Name: "charge", Action: emitting("payment.charged", 9, saga.Permanent(errors.New("declined")))},
	}}
	b := setup(t, setupOpts{defs: []*saga.Definition{def}})
	s := b.run(t, "order", map[string]int{"n": 1})
	if s.Status != saga.StatusCompensated {
		t.Fatalf("status %s, want compensated", s.Status)
	}
	evs := outbox(t, b.eng, storage.OutboxNew)
	want := []string{"saga.started", "stock.reserved@reserve", "step.succeeded@reserve",
		"stock.released@reserve", "step.compensated@reserve", "saga.compensated"}
	if got := names(evs); !equal(got, want) {
		t.Fatalf("outbox %v, want %v", got, want)
	}
	for i, ev := range evs {
		if i > 0 && evs[i-1].ID.Compare(ev.ID) >= 0 {
			t.Errorf("event ids out of order: %s then %s", evs[i-1].ID, ev.ID)
		}
		if ev.SagaID.String() != s.ID || ev.Definition != "order" || ev.Status != storage.OutboxNew || ev.Attempts != 0 {
			t.Errorf("event %s: saga %s definition %q status %s attempts %d", ev.Name, ev.SagaID, ev.Definition, ev.Status, ev.Attempts)
		}
	}
	reserved := evs[1]
	if string(reserved.Payload) != `{"attempt":2}` || reserved.RoutingKey != "stock.reserved" || reserved.Exchange != "orders" {
		t.Errorf("step event %+v: want the second attempt's payload, routing key = name, the definition's exchange", reserved)
	}
	var p map[string]any
	if err := json.Unmarshal(evs[5].Payload, &p); err != nil {
		t.Fatal(err)
	}
	if p["saga_id"] != s.ID || p["status"] != "compensated" || !strings.Contains(p["error"].(string), "declined") ||
		evs[5].RoutingKey != "order.saga.compensated" {
		t.Errorf("saga.compensated payload %s, routing key %q", evs[5].Payload, evs[5].RoutingKey)
	}
	if err := json.Unmarshal(evs[2].Payload, &p); err != nil {
		t.Fatal(err)
	}
	if p["step"] != "reserve" || p["output"].(map[string]any)["done"] != true {
		t.Errorf("step.succeeded payload %s: want the step and its output", evs[2].Payload)
	}
	st, err := b.eng.OutboxStats(context.Background())
	if err != nil || st.Counts.New != 6 || st.OldestNew.IsZero() || !st.OldestNotProduced.IsZero() {
		t.Errorf("stats %+v (%v): want 6 new, an oldest new time, no not_produced", st, err)
	}
}

func TestOutboxWithoutLifecycleHasOnlyStepEvents(t *testing.T) {
	t.Parallel()
	def := &saga.Definition{Name: "quiet", Steps: []saga.Step{{Name: "a", Action: emitting("a.done", 0, nil)}}}
	b := setup(t, setupOpts{defs: []*saga.Definition{def}})
	b.run(t, "quiet", 1)
	if got := names(outbox(t, b.eng, storage.OutboxNew)); !equal(got, []string{"a.done@a"}) {
		t.Fatalf("outbox %v, want only the step's event", got)
	}
}

func TestOutboxEmitErrors(t *testing.T) {
	t.Parallel()
	var late atomic.Pointer[saga.Call]
	def := &saga.Definition{Name: "bad", Steps: []saga.Step{{Name: "a",
		Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
			late.Store(c)
			err := c.Emit(saga.Event{Name: "x", Payload: json.RawMessage(`{not json`)})
			if !errors.Is(err, saga.ErrInvalidEvent) {
				return nil, saga.Permanent(errors.Newf("emit of invalid JSON: %v, want ErrInvalidEvent", err))
			}
			return nil, nil
		}}}}
	b := setup(t, setupOpts{defs: []*saga.Definition{def}})
	if s := b.run(t, "bad", 1); s.Status != saga.StatusCompleted {
		t.Fatalf("saga %s: %v", s.Status, s.Err)
	}
	if err := late.Load().Emit(saga.Event{Name: "late", Payload: json.RawMessage(`{}`)}); !errors.Is(err, saga.ErrInvalidEvent) {
		t.Errorf("emit after the step returned: %v, want ErrInvalidEvent", err)
	}
	if n := len(outbox(t, b.eng, storage.OutboxNew)); n != 0 {
		t.Errorf("outbox holds %d events, want none", n)
	}
}

func TestOutboxCompressesLargePayloads(t *testing.T) {
	t.Parallel()
	big := json.RawMessage(`{"text":"` + strings.Repeat("saga ", 400) + `"}`)
	def := &saga.Definition{Name: "big", Steps: []saga.Step{{Name: "a",
		Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
			if err := c.Emit(saga.Event{Name: "small", Payload: json.RawMessage(`{}`)}); err != nil {
				return nil, err
			}
			return nil, c.Emit(saga.Event{Name: "big", Payload: big})
		}}}}
	b := setup(t, setupOpts{defs: []*saga.Definition{def}, store: bolt.Options{CompressAbove: 256}})
	b.run(t, "big", 1)
	evs := outbox(t, b.eng, storage.OutboxNew)
	if len(evs) != 2 || evs[0].Compressed || !evs[1].Compressed || string(evs[1].Payload) != string(big) {
		t.Fatalf("events %v: want the small one stored plain, the big one compressed and read back whole", names(evs))
	}
}

func TestOutboxOperatorActions(t *testing.T) {
	t.Parallel()
	def := &saga.Definition{Name: "ops", Steps: []saga.Step{{Name: "a", Action: emitting("a.done", 0, nil)}}}
	b := setup(t, setupOpts{defs: []*saga.Definition{def}, opts: engine.Options{Outbox: engine.OutboxOptions{Retention: -1}}})
	for range 3 {
		b.run(t, "ops", 1)
	}
	evs := outbox(t, b.eng, storage.OutboxNew)
	ctx := context.Background()
	// Mark the first produced, the second not_produced, as a relay would.
	err := b.eng.Store().(*bolt.DB).Update(func(tx *bolt.Tx) error {
		if _, err := tx.OutboxProduced([]ulid.ULID{evs[0].ID}, time.Now().Add(-time.Hour)); err != nil {
			return err
		}
		_, err := tx.OutboxFailed(evs[1].ID, "NO_ROUTE", true, time.Now())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	unknown := ulid.Make().String()
	cases := []struct {
		name string
		do   func() error
		want error
	}{
		{"requeue a new event", func() error { return b.eng.OutboxRequeue(ctx, evs[2].ID.String()) }, engine.ErrConflict},
		{"requeue an unknown id", func() error { return b.eng.OutboxRequeue(ctx, unknown) }, engine.ErrEventNotFound},
		{"requeue a malformed id", func() error { return b.eng.OutboxRequeue(ctx, "nope") }, engine.ErrInvalidID},
		{"discard a new event", func() error { return b.eng.OutboxDiscard(ctx, evs[2].ID.String()) }, engine.ErrConflict},
		{"discard an unknown id", func() error { return b.eng.OutboxDiscard(ctx, unknown) }, engine.ErrEventNotFound},
		{"get an unknown id", func() error { _, err := b.eng.OutboxGet(ctx, unknown); return err }, engine.ErrEventNotFound},
		{"list with a bad cursor", func() error {
			_, err := b.eng.OutboxList(ctx, engine.OutboxListOptions{Cursor: "x"})
			return err
		}, engine.ErrInvalidID},
	}
	for _, tc := range cases {
		if err := tc.do(); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	if n, err := b.eng.OutboxRequeueAll(ctx); err != nil || n != 1 {
		t.Errorf("requeue all: %d, %v; want the one not_produced event", n, err)
	}
	ev, err := b.eng.OutboxGet(ctx, evs[1].ID.String())
	if err != nil || ev.Status != storage.OutboxNew || ev.Attempts != 0 || ev.LastError != "NO_ROUTE" {
		t.Errorf("re-queued event %+v (%v): want new, attempts reset, last error kept", ev, err)
	}
	// Discard is for events that will not be published again.
	if err := b.eng.OutboxDiscard(ctx, evs[0].ID.String()); err != nil {
		t.Errorf("discard a produced event: %v", err)
	}
	if _, err := b.eng.OutboxGet(ctx, evs[0].ID.String()); !errors.Is(err, engine.ErrEventNotFound) {
		t.Errorf("discarded event still there: %v", err)
	}
}

func TestOutboxPrune(t *testing.T) {
	t.Parallel()
	def := &saga.Definition{Name: "prune", Steps: []saga.Step{{Name: "a", Action: emitting("a.done", 0, nil)}}}
	b := setup(t, setupOpts{defs: []*saga.Definition{def}, opts: engine.Options{Outbox: engine.OutboxOptions{Retention: -1}}})
	for range 3 {
		b.run(t, "prune", 1)
	}
	evs := outbox(t, b.eng, storage.OutboxNew)
	now := time.Now()
	err := b.eng.Store().(*bolt.DB).Update(func(tx *bolt.Tx) error {
		if _, err := tx.OutboxProduced([]ulid.ULID{evs[0].ID}, now); err != nil {
			return err
		}
		_, err := tx.OutboxProduced([]ulid.ULID{evs[1].ID}, now.Add(2*time.Hour))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	n, err := b.eng.PruneOutbox(context.Background(), now.Add(time.Hour))
	if err != nil || n != 1 {
		t.Fatalf("prune: %d, %v; want 1 (only the event produced before the cut-off)", n, err)
	}
	st, err := b.eng.OutboxStats(context.Background())
	if err != nil || st.Counts.Produced != 1 || st.Counts.New != 1 {
		t.Errorf("after prune %+v (%v): want 1 produced, 1 new", st.Counts, err)
	}
}

func TestOutboxLifecyclePayloads(t *testing.T) {
	t.Parallel()
	def := &saga.Definition{Name: "life", Events: saga.Events{Lifecycle: true}, Steps: []saga.Step{
		{Name: "a", Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
			var in struct{ Fail bool }
			_ = c.DecodeInput(&in)
			if in.Fail {
				return nil, saga.Permanent(errors.New("a \"quoted\"\nfailure\t\\ with ünïcode"))
			}
			return json.RawMessage(`{"x":1}`), nil
		}},
		{Name: "b", Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
			return nil, saga.Permanent(errors.New("primary down"))
		}, Fallback: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
			return json.RawMessage(`["backup"]`), nil
		}},
	}}
	b := setup(t, setupOpts{defs: []*saga.Definition{def}})
	ok := b.run(t, "life", map[string]bool{"fail": false})
	bad := b.run(t, "life", map[string]bool{"fail": true})
	type payload struct {
		SagaID                                 string `json:"saga_id"`
		Definition, Event, Status, Step, Error string
		Input, Output                          json.RawMessage
		Data                                   map[string]json.RawMessage
		Fallback                               bool
	}
	got := map[string]payload{}
	for _, ev := range outbox(t, b.eng, storage.OutboxNew) {
		var p payload
		if err := json.Unmarshal(ev.Payload, &p); err != nil {
			t.Fatalf("%s payload %s: %v", ev.Name, ev.Payload, err)
		}
		if p.Event != ev.Name || p.SagaID != ev.SagaID.String() || p.Definition != "life" || p.Step != ev.Step {
			t.Errorf("%s payload %s does not describe its event", ev.Name, ev.Payload)
		}
		got[ev.SagaID.String()+" "+ev.Name+" "+ev.Step] = p
	}
	if p := got[ok.ID+" saga.started "]; string(p.Input) != `{"fail":false}` || p.Status != "running" {
		t.Errorf("saga.started %+v: want the input and status running", p)
	}
	if p := got[ok.ID+" step.succeeded b"]; !p.Fallback || string(p.Output) != `["backup"]` {
		t.Errorf("step.succeeded b %+v: want fallback true and the fallback's output", p)
	}
	if p := got[ok.ID+" step.succeeded a"]; p.Fallback || string(p.Output) != `{"x":1}` {
		t.Errorf("step.succeeded a %+v: want no fallback and the output", p)
	}
	if p := got[ok.ID+" saga.completed "]; p.Status != "completed" || string(p.Data["a"]) != `{"x":1}` || string(p.Data["b"]) != `["backup"]` {
		t.Errorf("saga.completed %+v: want status completed and every step's output", p)
	}
	if p := got[bad.ID+" saga.compensated "]; p.Status != "compensated" || p.Error != bad.Err.Error() {
		t.Errorf("saga.compensated error %q, want the saga's error %q", p.Error, bad.Err)
	}
}
