package engine_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
	"github.com/sagad/sagad/storage/bolt"
)

// watchedStore records, for every transition written, whether it started
// an attempt and which commands it wrote to the outbox.
type watchedStore struct {
	storage.Store
	mu          sync.Mutex
	transitions []watched
}

type watched struct {
	started  []string // "step/phase/attempt" of the attempts it records as started
	commands []string // the correlation ids of the commands it writes
}

func (w *watchedStore) note(t *storage.Transition) {
	var n watched
	for _, e := range t.Log {
		if e.Event == storage.EventAttemptStarted {
			n.started = append(n.started, engine.CorrelationID(t.Saga.ID.String(), e.Step, e.Phase, e.Attempt))
		}
	}
	for _, ev := range t.Events {
		if c, ok := ev.Headers[storage.HeaderCorrelationID]; ok {
			n.commands = append(n.commands, c)
		}
	}
	w.mu.Lock()
	w.transitions = append(w.transitions, n)
	w.mu.Unlock()
}

func (w *watchedStore) SagaCreate(ctx context.Context, t *storage.Transition) (existing ulid.ULID, err error) {
	w.note(t)
	id, err := w.Store.SagaCreate(ctx, t)
	return id, err
}

func (w *watchedStore) SagaCommit(ctx context.Context, t *storage.Transition) error {
	w.note(t)
	return w.Store.SagaCommit(ctx, t)
}

// command builds a command to the routing key, with the saga's input as
// its payload.
func command(key string) saga.Command {
	return func(c *saga.Call) (saga.Event, error) {
		return saga.Event{Name: key, RoutingKey: key, Payload: c.Input, Headers: map[string]string{"tenant": "t1"}}, nil
	}
}

// TestCommandStep: a phase sent as a command writes the command to the
// outbox in the commit that records its attempt as started, with the
// attempt's identity in its headers; the step waits for Complete; a
// compensation sent as a command goes the same way; a command that cannot
// be built fails its attempt.
func TestCommandStep(t *testing.T) {
	t.Parallel()
	db, err := bolt.Open(filepath.Join(t.TempDir(), "sagad.db"), &bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	ws := &watchedStore{Store: db}
	pending := make(chan engine.AttemptInfo, 8)
	eng, err := engine.New(ws, engine.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Hooks: engine.Hooks{AttemptPending: func(a engine.AttemptInfo) { pending <- a }}})
	if err != nil {
		t.Fatal(err)
	}
	def := &saga.Definition{Name: "order", Steps: []saga.Step{
		{Name: "reserve", Commands: saga.Commands{Action: command("inventory.reserve"), Compensation: command("inventory.release")}, Timeout: time.Hour},
		{Name: "charge", Action: func(_ context.Context, c *saga.Call) (json.RawMessage, error) {
			if string(c.Input) == `"decline"` {
				return nil, saga.Permanent(errors.New("card declined"))
			}
			return c.Data["reserve"], nil
		}},
	}}
	badCommand := func(*saga.Call) (saga.Event, error) {
		return saga.Event{Name: "bad name!", Payload: json.RawMessage(`{}`)}, nil
	}
	broken := &saga.Definition{Name: "broken", Steps: []saga.Step{
		{Name: "reserve", Commands: saga.Commands{Action: badCommand}},
	}}
	// ship's command cannot be built, and it falls due in Complete's
	// commit, which has no concurrency slot to run its failing attempt.
	brokenLater := &saga.Definition{Name: "broken-later", Steps: []saga.Step{
		{Name: "reserve", Commands: saga.Commands{Action: command("inventory.reserve"), Compensation: command("inventory.release")}, Timeout: time.Hour},
		{Name: "ship", Commands: saga.Commands{Action: badCommand}},
	}}
	// pay's action and fallback are commands: once the action failed for
	// good, the fallback goes out in the same commit.
	withFallback := &saga.Definition{Name: "fallback", Steps: []saga.Step{
		{Name: "pay", Commands: saga.Commands{Action: command("card.charge"), Fallback: command("invoice.send")}, Timeout: time.Hour},
		{Name: "ship", Commands: saga.Commands{Action: command("ship")}, Timeout: time.Hour},
	}}
	for _, d := range []*saga.Definition{def, broken, brokenLater, withFallback} {
		if err := eng.Register(d); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	done := make(chan struct{})
	go func() { defer close(done); _ = eng.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		if err := eng.Close(); err != nil {
			t.Error(err)
		}
	})

	// waitingFor returns the command with correlation id corr, once saga
	// id (the only one running) waits for its answer.
	waitingFor := func(id, corr string) storage.OutboxEvent {
		t.Helper()
		select {
		case <-pending:
		case <-time.After(10 * time.Second):
			s, _ := eng.Get(ctx, id)
			log, _ := eng.Log(ctx, id)
			t.Fatalf("saga %s never waited: %+v\n%+v", id, s, log)
		}
		s, err := eng.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		w := s.Steps[slices.IndexFunc(s.Steps, func(st engine.Step) bool { return st.Waiting })]
		if !s.WakeAt.Equal(w.WaitingUntil) {
			t.Errorf("saga %s wakes at %s, not when %s's wait ends (%s)", id, s.WakeAt, w.Name, w.WaitingUntil)
		}
		if ws, err := eng.Waits(ctx); err != nil || ws.Steps != 1 || !ws.Oldest.Equal(w.WaitingSince) {
			t.Errorf("Waits = %+v (%v), want %s's wait, since %s", ws, err, w.Name, w.WaitingSince)
		}
		page, err := eng.OutboxList(ctx, engine.OutboxListOptions{Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range page.Events {
			if ev.Headers[storage.HeaderCorrelationID] == corr {
				return *ev
			}
		}
		t.Fatalf("saga %s (%s) waits, and no command %s is in the outbox", id, s.Status, corr)
		return storage.OutboxEvent{}
	}

	ok, err := eng.Start(ctx, "order", "fine")
	if err != nil {
		t.Fatal(err)
	}
	ev := waitingFor(ok.ID, ok.ID+"/reserve/action/1")
	want := map[string]string{"tenant": "t1", "Idempotency-Key": ok.ID + "/reserve/action", "X-Saga-Id": ok.ID,
		"X-Saga-Definition": "order", "X-Saga-Step": "reserve", "X-Saga-Phase": "action", "X-Saga-Attempt": "1",
		storage.HeaderCorrelationID: ok.ID + "/reserve/action/1"}
	for k, v := range want {
		if ev.Headers[k] != v {
			t.Errorf("command header %s = %q, want %q", k, ev.Headers[k], v)
		}
	}
	if ev.Exchange != "" || ev.RoutingKey != "inventory.reserve" || string(ev.Payload) != `"fine"` || ev.Step != "reserve" {
		t.Errorf("command %+v: want the default exchange, routing key inventory.reserve, the input as payload", ev)
	}
	if applied, err := eng.Complete(ctx, ok.ID, "reserve", saga.PhaseAction, 1, engine.Result{Data: json.RawMessage(`{"hold":7}`)}); err != nil || !applied {
		t.Fatalf("complete: %v %v", applied, err)
	}
	if s, err := eng.Wait(ctx, ok.ID); err != nil || s.Status != saga.StatusCompleted || string(s.Data["charge"]) != `{"hold":7}` {
		t.Fatalf("saga %+v, %v: want completed, charge seeing reserve's answer", s, err)
	}

	// A declined charge turns the saga around: the compensation is a
	// command too.
	no, err := eng.Start(ctx, "order", "decline")
	if err != nil {
		t.Fatal(err)
	}
	waitingFor(no.ID, no.ID+"/reserve/action/1")
	if _, err := eng.Complete(ctx, no.ID, "reserve", saga.PhaseAction, 1, engine.Result{}); err != nil {
		t.Fatal(err)
	}
	ev = waitingFor(no.ID, no.ID+"/reserve/compensation/1")
	if ev.RoutingKey != "inventory.release" || ev.Headers["Idempotency-Key"] != no.ID+"/reserve/compensation" {
		t.Errorf("compensation command %+v", ev)
	}
	if _, err := eng.Complete(ctx, no.ID, "reserve", saga.PhaseCompensation, 1, engine.Result{}); err != nil {
		t.Fatal(err)
	}
	if s, err := eng.Wait(ctx, no.ID); err != nil || s.Status != saga.StatusCompensated {
		t.Fatalf("saga %+v, %v: want compensated", s, err)
	}

	// An invalid command fails its attempt for good, sending nothing.
	bad, err := eng.Start(ctx, "broken", nil)
	if err != nil {
		t.Fatal(err)
	}
	s, err := eng.Wait(ctx, bad.ID)
	if err != nil || s.Status != saga.StatusCompensated || !strings.Contains(s.Steps[0].Error, "bad name!") {
		t.Fatalf("broken saga %+v, %v: want compensated with the command's fault as the step's error", s, err)
	}

	// A command that falls due as an answer is recorded is written in the
	// same commit: the fallback of a failed action, the next step's.
	fb, err := eng.Start(ctx, "fallback", "card")
	if err != nil {
		t.Fatal(err)
	}
	waitingFor(fb.ID, fb.ID+"/pay/action/1")
	inOutbox := func(corr string) bool {
		page, err := eng.OutboxList(ctx, engine.OutboxListOptions{Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		return slices.ContainsFunc(page.Events, func(ev *storage.OutboxEvent) bool { return ev.Headers[storage.HeaderCorrelationID] == corr })
	}
	if _, err := eng.Complete(ctx, fb.ID, "pay", saga.PhaseAction, 1, engine.StatusResult(402, nil, "card declined")); err != nil {
		t.Fatal(err)
	}
	if !inOutbox(fb.ID + "/pay/fallback/1") {
		t.Fatal("the fallback's command is not in the outbox when Complete returns")
	}
	<-pending
	if _, err := eng.Complete(ctx, fb.ID, "pay", saga.PhaseFallback, 1, engine.StatusResult(200, nil, "")); err != nil {
		t.Fatal(err)
	}
	if !inOutbox(fb.ID + "/ship/action/1") {
		t.Fatal("ship's command is not in the outbox when Complete returns")
	}
	<-pending
	if _, err := eng.Complete(ctx, fb.ID, "ship", saga.PhaseAction, 1, engine.StatusResult(200, nil, "")); err != nil {
		t.Fatal(err)
	}
	if s, err := eng.Wait(ctx, fb.ID); err != nil || s.Status != saga.StatusCompleted || !s.Steps[0].FallbackUsed {
		t.Fatalf("saga %+v, %v: want completed through pay's fallback", s, err)
	}

	// A command that cannot be built, falling due in Complete's commit:
	// a driver with a slot runs its failing attempt, and the saga turns
	// around.
	bl, err := eng.Start(ctx, "broken-later", "desk")
	if err != nil {
		t.Fatal(err)
	}
	waitingFor(bl.ID, bl.ID+"/reserve/action/1")
	if _, err := eng.Complete(ctx, bl.ID, "reserve", saga.PhaseAction, 1, engine.Result{}); err != nil {
		t.Fatal(err)
	}
	waitingFor(bl.ID, bl.ID+"/reserve/compensation/1")
	if _, err := eng.Complete(ctx, bl.ID, "reserve", saga.PhaseCompensation, 1, engine.Result{}); err != nil {
		t.Fatal(err)
	}
	if s, err := eng.Wait(ctx, bl.ID); err != nil || s.Status != saga.StatusCompensated || !strings.Contains(s.Steps[1].Error, "bad name!") {
		t.Fatalf("saga %+v, %v: want compensated, ship failed by its command", s, err)
	}

	// Every command was written by the transition that recorded its
	// attempt as started, and every started attempt of a command phase
	// wrote its command.
	ws.mu.Lock()
	defer ws.mu.Unlock()
	sent := 0
	for _, tr := range ws.transitions {
		for _, c := range tr.commands {
			sent++
			if !slices.Contains(tr.started, c) {
				t.Errorf("command %s was written by a transition that did not start its attempt (started %v)", c, tr.started)
			}
		}
		for _, a := range tr.started {
			if !strings.HasPrefix(a, bad.ID) && !strings.HasPrefix(a, bl.ID+"/ship/") && !strings.Contains(a, "/charge/") && !slices.Contains(tr.commands, a) {
				t.Errorf("attempt %s started without its command in the same transition", a)
			}
		}
	}
	if sent != 8 {
		t.Errorf("%d commands written, want 8 (none for the broken steps): %+v", sent, ws.transitions)
	}
}
