package rabbitmq_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sagad/sagad/clock"
	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/internal/brokertest"
	"github.com/sagad/sagad/internal/tcpproxy"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
	"github.com/sagad/sagad/storage/bolt"
	"github.com/sagad/sagad/transport/rabbitmq"
)

// seqDef has steps that each emit one event, routed by the saga's input:
// {"keys": ["a.1", "b.2", ...]} makes step i emit an event with routing key
// keys[i] and payload {"seq": i}.
func seqDef(steps int) *saga.Definition {
	def := &saga.Definition{Name: "seq"}
	for i := range steps {
		def.Steps = append(def.Steps, saga.Step{Name: fmt.Sprintf("s%d", i),
			Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
				var in struct{ Keys []string }
				if err := c.DecodeInput(&in); err != nil {
					return nil, err
				}
				return nil, c.Emit(saga.Event{Name: "seq.event", RoutingKey: in.Keys[i],
					Payload: json.RawMessage(fmt.Sprintf(`{"seq":%d}`, i))})
			}})
	}
	return def
}

func keys(prefix string, n int) map[string][]string {
	k := make([]string, n)
	for i := range k {
		k[i] = fmt.Sprintf("%s.%d", prefix, i)
	}
	return map[string][]string{"keys": k}
}

// seqOf returns the seq field of each delivery of one saga, in order.
func seqOf(t *testing.T, ds []amqp.Delivery) map[string][]int {
	t.Helper()
	out := map[string][]int{}
	for _, d := range ds {
		var p struct{ Seq int }
		if err := json.Unmarshal(d.Body, &p); err != nil {
			t.Fatalf("delivery %s: body %s: %v", d.MessageId, d.Body, err)
		}
		sid, _ := d.Headers["x-saga-id"].(string)
		out[sid] = append(out[sid], p.Seq)
	}
	return out
}

// An event nobody can route is returned and acked by the broker: the relay
// must count that as a failure, give up after MaxAttempts, park only that
// saga, and publish it, then the saga's later events, once re-queued.
func TestRelayUnroutableEventParksItsSagaUntilRequeued(t *testing.T) {
	t.Parallel()
	brokerURL := brokertest.URL(t)
	exchange := brokertest.Name("test.unroutable")
	sink := brokertest.NewSink(t, brokerURL, exchange, "ok.#")
	sink.Bind(t, "marker")
	notProduced := make(chan *storage.OutboxEvent, 4)
	b := setup(t, setupOpts{defs: []*saga.Definition{seqDef(3)}, cfg: rabbitmq.Config{URL: brokerURL, Exchange: exchange,
		MaxAttempts: 3, RetryInitial: 5 * time.Millisecond, RetryMax: 20 * time.Millisecond,
		Hooks: rabbitmq.Hooks{NotProduced: func(ev *storage.OutboxEvent, err error) { notProduced <- ev }}}})

	stuck := b.run(t, "seq", map[string][]string{"keys": {"ok.0", "lost.1", "ok.2"}})
	var bad *storage.OutboxEvent
	select {
	case bad = <-notProduced:
	case <-time.After(20 * time.Second):
		t.Fatalf("no event became not_produced; relay %+v", b.relay.Stats())
	}
	if bad.RoutingKey != "lost.1" || bad.Attempts != 3 || !strings.Contains(bad.LastError, "NO_ROUTE") {
		t.Fatalf("not_produced event: key %q, attempts %d, last error %q; want lost.1, 3, NO_ROUTE", bad.RoutingKey, bad.Attempts, bad.LastError)
	}
	// Other sagas go on while this one is parked. Everything but the parked
	// saga's last event gets marked produced, and so reached the queue
	// before the marker.
	free := b.run(t, "seq", keys("ok", 3))
	b.waitOutbox(t, 20*time.Second, "one event new", func(st engine.OutboxStats) bool { return st.Counts.New == 1 })
	sink.Marker(t, "marker-1")
	got := seqOf(t, sink.Collect(t, "marker-1", 20*time.Second))
	if !slices.Equal(got[stuck.ID], []int{0}) {
		t.Errorf("parked saga delivered %v before the re-queue, want [0] (its later events must wait)", got[stuck.ID])
	}
	if !slices.Equal(got[free.ID], []int{0, 1, 2}) {
		t.Errorf("other saga delivered %v, want [0 1 2]", got[free.ID])
	}
	st, err := b.eng.OutboxStats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Counts.NotProduced != 1 || st.Counts.Produced != 4 || st.OldestNotProduced.IsZero() {
		t.Errorf("outbox %+v: want 1 not_produced, 4 produced and 1 new (held behind it)", st)
	}
	page, err := b.eng.OutboxList(context.Background(), engine.OutboxListOptions{Status: storage.OutboxNotProduced})
	if err != nil || len(page.Events) != 1 || page.Events[0].ID != bad.ID {
		t.Fatalf("not_produced list %+v (%v), want the lost event", page, err)
	}

	// Now make it routable and re-queue it: it arrives, then the event
	// that waited behind it.
	sink.Bind(t, "lost.#")
	if err := b.eng.OutboxRequeue(context.Background(), bad.ID.String()); err != nil {
		t.Fatalf("requeue: %v", err)
	}
	if err := b.eng.OutboxRequeue(context.Background(), bad.ID.String()); err == nil {
		t.Errorf("second requeue of a new event succeeded, want a conflict")
	}
	b.drained(t, 20*time.Second)
	sink.Marker(t, "marker-2")
	got = seqOf(t, sink.Collect(t, "marker-2", 20*time.Second))
	if !slices.Equal(got[stuck.ID], []int{1, 2}) {
		t.Errorf("after the re-queue the parked saga delivered %v, want [1 2]", got[stuck.ID])
	}
	if s := b.relay.Stats(); s.NotProduced != 1 || s.Retried != 2 || s.ParkedSagas != 0 {
		t.Errorf("relay stats %+v: want 1 not produced, 2 retried, none parked", s)
	}
}

// Events of one saga arrive in the order they were committed, while many
// sagas run at once and an early event of each is refused for a while (no
// queue is bound for it yet): the later ones must wait for it.
func TestRelayKeepsPerSagaOrder(t *testing.T) {
	t.Parallel()
	brokerURL := brokertest.URL(t)
	exchange := brokertest.Name("test.order")
	sink := brokertest.NewSink(t, brokerURL, exchange, "k.#")
	sink.Bind(t, "marker")
	const sagas, steps = 100, 6
	// Every saga's late event must have been refused at least once before
	// its queue is bound: then each saga had an event that held the later
	// ones back.
	var mu sync.Mutex
	refused := make(map[ulid.ULID]bool)
	allRefused := make(chan struct{})
	b := setup(t, setupOpts{defs: []*saga.Definition{seqDef(steps)}, cfg: rabbitmq.Config{URL: brokerURL, Exchange: exchange,
		Window: 32, MaxAttempts: 1000, RetryInitial: 5 * time.Millisecond, RetryMax: 50 * time.Millisecond,
		Hooks: rabbitmq.Hooks{Retried: func(ev *storage.OutboxEvent, _ error) {
			mu.Lock()
			defer mu.Unlock()
			if !refused[ev.SagaID] {
				refused[ev.SagaID] = true
				if len(refused) == sagas {
					close(allRefused)
				}
			}
		}}}})
	ids := startMany(t, b, sagas, 25, func(i int) any {
		k := keys("k", steps)
		k["keys"][1] = fmt.Sprintf("late.%d", i) // unroutable until "late.#" is bound
		return k
	})
	select {
	case <-allRefused:
	case <-time.After(30 * time.Second):
		mu.Lock()
		n := len(refused)
		mu.Unlock()
		t.Fatalf("publications of %d of %d sagas were retried, want all", n, sagas)
	}
	sink.Bind(t, "late.#")
	b.drained(t, 30*time.Second)
	sink.Marker(t, "marker")
	got := seqOf(t, sink.Collect(t, "marker", 30*time.Second))
	want := []int{0, 1, 2, 3, 4, 5}
	for _, id := range ids {
		if !slices.Equal(got[id], want) {
			t.Errorf("saga %s delivered %v, want %v", id, got[id], want)
		}
	}
	if s := b.relay.Stats(); s.Retried < sagas {
		t.Errorf("relay retried %d publications, want at least one per saga (%d)", s.Retried, sagas)
	}
}

// startMany starts n sagas, at most c at a time, and waits for them all.
func startMany(t *testing.T, b *bundle, n, c int, input func(i int) any) []string {
	t.Helper()
	ids := make([]string, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, c)
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			st, err := b.eng.Start(context.Background(), "seq", input(i))
			if err != nil {
				errs <- err
				return
			}
			ids[i] = st.ID
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			s, err := b.eng.Wait(ctx, st.ID)
			if err == nil && s.Status != saga.StatusCompleted {
				err = fmt.Errorf("saga %s ended %s: %v", s.ID, s.Status, s.Err)
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return ids
}

// The broker goes away (every connection cut, new ones refused) for several
// seconds while sagas keep running: the engine keeps committing, the relay
// reconnects, and every committed event arrives.
func TestRelaySurvivesBrokerOutage(t *testing.T) {
	t.Parallel()
	brokerURL := brokertest.URL(t)
	proxy, viaProxy := tcpproxy.ForURL(t, brokerURL)

	exchange := brokertest.Name("test.outage")
	sink := brokertest.NewSink(t, brokerURL, exchange, "#")
	var ups, downs atomic.Int64
	down := make(chan struct{}, 1)
	const steps = 3
	rec := &logRecorder{}
	b := setup(t, setupOpts{defs: []*saga.Definition{seqDef(steps)}, cfg: rabbitmq.Config{URL: viaProxy, Exchange: exchange,
		Logger: slog.New(rec), ReconnectInitial: 20 * time.Millisecond, ReconnectMax: 200 * time.Millisecond,
		Hooks: rabbitmq.Hooks{Connection: func(up bool, err error) {
			if up {
				ups.Add(1)
				return
			}
			downs.Add(1)
			select {
			case down <- struct{}{}:
			default:
			}
		}}}})

	before := startMany(t, b, 50, 10, func(int) any { return keys("k", steps) })
	b.drained(t, 20*time.Second)

	proxy.Cut()
	select {
	case <-down:
	case <-time.After(10 * time.Second):
		t.Fatal("relay did not notice the cut connection")
	}
	// The outage lasts while 100 sagas run to the end and for at least
	// three seconds: their events can only wait in the outbox.
	cutAt := time.Now()
	during := startMany(t, b, 100, 10, func(int) any { return keys("k", steps) })
	st, err := b.eng.OutboxStats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Counts.New != int64(len(during)*steps) {
		t.Errorf("during the outage the outbox holds %d new events, want %d (one per step of each saga run meanwhile)", st.Counts.New, len(during)*steps)
	}
	time.Sleep(time.Until(cutAt.Add(3 * time.Second))) // the outage itself, not synchronisation
	if err := proxy.Restore(); err != nil {
		t.Fatal(err)
	}
	after := startMany(t, b, 50, 10, func(int) any { return keys("k", steps) })
	b.drained(t, 30*time.Second)
	sink.Marker(t, "marker")
	deliveries := sink.Collect(t, "marker", 30*time.Second)

	got := seqOf(t, deliveries)
	for _, id := range slices.Concat(before, during, after) {
		if !slices.Equal(dedupe(got[id]), []int{0, 1, 2}) {
			t.Errorf("saga %s delivered %v, want [0 1 2] (duplicates allowed)", id, got[id])
		}
	}
	if ups.Load() < 2 || downs.Load() < 1 {
		t.Errorf("connection hook saw %d ups and %d downs, want a reconnect", ups.Load(), downs.Load())
	}
	t.Logf("%d deliveries for %d events; %d reconnect attempts failed", len(deliveries), 200*steps, downs.Load()-1)
	// The log tells the outage in two lines, not one per attempt.
	if lost := rec.lines("relay lost the broker"); len(lost) != 1 || lost[0].level != slog.LevelWarn {
		t.Errorf("lost-the-broker lines %+v, want one WARN", lost)
	}
	if n := len(rec.lines("relay cannot reach")) + len(rec.lines("relay still cannot reach")); n != 0 {
		t.Errorf("%d lines about failed reconnection attempts in an outage shorter than 30 s, want none", n)
	}
	conn := rec.lines("relay connected")
	if len(conn) != 2 || conn[1].attrs["failed_attempts"] != fmt.Sprint(downs.Load()) {
		t.Errorf("connected lines %+v, want two, the second after %d failures (the loss and the failed attempts)", conn, downs.Load())
	}
}

// dedupe keeps the first occurrence of each value, in order.
func dedupe(s []int) []int {
	seen := map[int]bool{}
	var out []int
	for _, v := range s {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}

// A saga with more events than the relay holds in memory for one saga: the
// ones it skipped must still come before events committed later.
func TestRelayKeepsOrderBeyondItsPerSagaBuffer(t *testing.T) {
	t.Parallel()
	brokerURL := brokertest.URL(t)
	exchange := brokertest.Name("test.overflow")
	sink := brokertest.NewSink(t, brokerURL, exchange, "#")
	b := setup(t, setupOpts{noRelay: true})
	sid := ulid.Make()
	put := func(from, to int) {
		t.Helper()
		err := b.eng.Store().(*bolt.DB).Update(func(tx *bolt.Tx) error {
			for i := from; i < to; i++ {
				ev := &storage.OutboxEvent{SagaID: sid, Definition: "d", Name: "seq.event", RoutingKey: "k.x",
					Payload: json.RawMessage(fmt.Sprintf(`{"seq":%d}`, i)), CreatedAt: time.Now()}
				if _, err := tx.OutboxPut(bolt.EncodeEvent(ev, 0)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	put(0, 40) // more than the relay loads for one saga
	first := make(chan struct{})
	published := make(chan struct{}, 1)
	var once sync.Once
	relay, err := rabbitmq.New(b.eng.Store(), rabbitmq.Config{URL: brokerURL, Exchange: exchange, Logger: quietLogger(),
		Hooks: rabbitmq.Hooks{Published: func(int) {
			once.Do(func() { close(first) })
			select {
			case published <- struct{}{}:
			default:
			}
		}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- relay.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	<-first
	put(40, 50) // committed while the skipped ones still wait
	b.published = published
	b.relay = relay
	b.drained(t, 30*time.Second)
	sink.Marker(t, "marker")
	got := seqOf(t, sink.Collect(t, "marker", 30*time.Second))[sid.String()]
	for i, v := range got {
		if v != i {
			t.Fatalf("saga's events arrived as %v, want 0..49 in order", got)
		}
	}
	if len(got) != 50 {
		t.Fatalf("%d events arrived, want 50", len(got))
	}
}

// A route that keeps failing is one WARN when it starts, a summary at most
// every 30 s, and one line when it recovers: not a line per publication.
func TestRelaySummarisesAFailingRoute(t *testing.T) {
	t.Parallel()
	brokerURL := brokertest.URL(t)
	exchange := brokertest.Name("test.failing")
	sink := brokertest.NewSink(t, brokerURL, exchange, "ok.#")
	fake := clock.NewFake(time.Now())
	rec := &logRecorder{}
	retried := make(chan struct{}, 1)
	b := setup(t, setupOpts{defs: []*saga.Definition{seqDef(1)}, cfg: rabbitmq.Config{URL: brokerURL, Exchange: exchange,
		MaxAttempts: 100, RetryInitial: 10 * time.Second, RetryMax: 10 * time.Second, Clock: fake, Logger: slog.New(rec),
		Hooks: rabbitmq.Hooks{Retried: func(*storage.OutboxEvent, error) { retried <- struct{}{} }}}})

	b.run(t, "seq", map[string][]string{"keys": {"lost.1"}})
	// Five failed publications 16 s apart (a retry comes 5 to 15 s after a
	// failure): at 0 s the first is logged, at 32 s and 64 s the two
	// before each are summarised.
	const failures = 5
	for i := range failures {
		select {
		case <-retried:
		case <-time.After(20 * time.Second):
			t.Fatalf("publication %d did not fail; relay %+v", i+1, b.relay.Stats())
		}
		if i == failures-1 {
			sink.Bind(t, "lost.#")
		}
		fake.Advance(16 * time.Second)
	}
	b.drained(t, 20*time.Second)

	first := rec.lines("outbox route failing")
	if len(first) != 1 || first[0].level != slog.LevelWarn || first[0].attrs["routing_key"] != "lost.1" ||
		!strings.Contains(first[0].attrs["err"], "NO_ROUTE") {
		t.Errorf("route failing lines %+v, want one WARN for lost.1 with NO_ROUTE", first)
	}
	summaries := rec.lines("outbox route still failing")
	if len(summaries) != 2 {
		t.Fatalf("summary lines %+v, want 2 (at 32 s and 64 s)", summaries)
	}
	for i, s := range summaries {
		if s.level != slog.LevelWarn || s.attrs["failures"] != "2" || s.attrs["failing_for"] != fmt.Sprint(time.Duration(i+1)*32*time.Second) ||
			!strings.Contains(s.attrs["last_err"], "NO_ROUTE") {
			t.Errorf("summary %d: %+v, want WARN, 2 failures, failing for %ds, NO_ROUTE", i, s, (i+1)*32)
		}
	}
	recovered := rec.lines("outbox route recovered")
	if len(recovered) != 1 || recovered[0].attrs["failed_attempts"] != fmt.Sprint(failures) || recovered[0].attrs["after"] != "1m20s" {
		t.Errorf("recovered lines %+v, want one, after %d failures and 1m20s", recovered, failures)
	}
	if n := len(rec.lines("outbox event publication failed")); n != 0 {
		t.Errorf("%d per-publication lines, want none", n)
	}
}
