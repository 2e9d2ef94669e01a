package rabbitmq_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/internal/brokertest"
	"github.com/sagad/sagad/internal/tcpproxy"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
	"github.com/sagad/sagad/storage/bolt"
	"github.com/sagad/sagad/transport/rabbitmq"
)

// A broker that blocks the relay's connection (a memory or disk alarm) stops
// reading it, and a publish then blocks in the socket write once the buffers
// are full. The proxy stalls the connection the same way. Run must still
// return within DrainTimeout and a second or so of its context ending, with
// nothing marked produced (nothing was confirmed), and the next Run must
// publish every event.
func TestRelayStopsWhileBrokerStopsReading(t *testing.T) {
	t.Parallel()
	brokerURL := brokertest.URL(t)
	proxy, viaProxy := tcpproxy.ForURL(t, brokerURL)

	exchange := brokertest.Name("test.stalled")
	sink := brokertest.NewSink(t, brokerURL, exchange, "#")
	b := setup(t, setupOpts{noRelay: true})
	up := make(chan struct{}, 1)
	const drain = 500 * time.Millisecond
	relay, err := rabbitmq.New(b.eng.Store(), rabbitmq.Config{URL: viaProxy, Exchange: exchange,
		DrainTimeout: drain, Heartbeat: time.Minute, Logger: quietLogger(), // no heartbeat within the test
		Hooks: rabbitmq.Hooks{Connection: func(ok bool, err error) {
			if ok {
				select {
				case up <- struct{}{}:
				default:
				}
			}
		}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- relay.Run(ctx) }()
	select {
	case <-up:
	case <-time.After(10 * time.Second):
		t.Fatal("relay did not connect")
	}

	proxy.Stall()
	// One event per saga, so that all are published at once: far more bytes
	// than the socket buffers between the relay and the proxy hold.
	const events = 32
	payload := json.RawMessage(`"` + strings.Repeat("x", saga.MaxEventSize-2) + `"`)
	ids := map[string]bool{}
	err = b.eng.Store().(*bolt.DB).Update(func(tx *bolt.Tx) error {
		for range events {
			ev := &storage.OutboxEvent{SagaID: ulid.Make(), Definition: "d", Name: "big", RoutingKey: "big",
				Payload: payload, CreatedAt: time.Now()}
			id, err := tx.OutboxPut(bolt.EncodeEvent(ev, 0))
			if err != nil {
				return err
			}
			ids[id.String()] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-proxy.Held():
	case <-time.After(20 * time.Second):
		t.Fatal("the relay wrote nothing to the stalled connection")
	}

	cancel()
	cancelled := time.Now()
	limit := drain + 3*time.Second // DrainTimeout, the hard close a second later, and slack
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("relay run: %v", err)
		}
		took := time.Since(cancelled)
		if took > limit {
			t.Fatalf("Run returned %s after its context ended, want within %s (DrainTimeout %s)", took, limit, drain)
		}
		t.Logf("Run returned %s after its context ended (DrainTimeout %s)", took.Round(time.Millisecond), drain)
	case <-time.After(limit):
		proxy.Cut() // let the stuck write fail, so that Run returns
		<-done
		t.Fatalf("Run did not return within %s of its context ending (DrainTimeout %s) while the broker did not read its connection", limit, drain)
	}
	if s := relay.Stats(); s.Connected || s.InFlight != 0 {
		t.Errorf("stats after Run returned: %+v, want not connected and nothing in flight", s)
	}
	st, err := b.eng.OutboxStats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Counts.New != events || st.Counts.Produced != 0 {
		t.Fatalf("outbox %+v after the stalled run: want all %d events new (none was confirmed)", st.Counts, events)
	}

	// The next Run, with a broker that reads, publishes them all.
	published := make(chan struct{}, 1)
	relay2, err := rabbitmq.New(b.eng.Store(), rabbitmq.Config{URL: brokerURL, Exchange: exchange, Logger: quietLogger(),
		Hooks: rabbitmq.Hooks{Published: func(int) {
			select {
			case published <- struct{}{}:
			default:
			}
		}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx2, cancel2 := context.WithCancel(context.Background())
	done2 := make(chan error, 1)
	go func() { done2 <- relay2.Run(ctx2) }()
	defer func() {
		cancel2()
		if err := <-done2; err != nil {
			t.Error(err)
		}
	}()
	b.relay, b.published = relay2, published
	b.drained(t, 60*time.Second)
	sink.Bind(t, "marker")
	sink.Marker(t, "marker")
	got := map[string]bool{}
	for _, d := range sink.Collect(t, "marker", 60*time.Second) {
		if !ids[d.MessageId] || !bytes.Equal(d.Body, payload) {
			t.Errorf("unexpected delivery %s (%d bytes)", d.MessageId, len(d.Body))
		}
		got[d.MessageId] = true
	}
	if len(got) != events {
		t.Errorf("%d distinct events arrived, want %d", len(got), events)
	}
}

// routedDef has two steps that each emit one event, to the exchanges and
// with the routing keys its input names: {"exchanges": [x0, x1]} makes step
// i emit to xi ("" is the relay's default) with routing key "k.<i>" and
// payload {"seq": i}.
func routedDef() *saga.Definition {
	def := &saga.Definition{Name: "routed"}
	for i := range 2 {
		def.Steps = append(def.Steps, saga.Step{Name: fmt.Sprintf("s%d", i),
			Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
				var in struct{ Exchanges []string }
				if err := c.DecodeInput(&in); err != nil {
					return nil, err
				}
				return nil, c.Emit(saga.Event{Name: "routed.event", Exchange: in.Exchanges[i], RoutingKey: fmt.Sprintf("k.%d", i),
					Payload: json.RawMessage(fmt.Sprintf(`{"seq":%d}`, i))})
			}})
	}
	return def
}

// An event whose exchange the broker refuses to declare is that event's
// failed attempt, like a nack: it is retried, ends not_produced and parks
// its saga. The relay's connection, and the other sagas' messages in flight
// on it, are not touched.
func TestRelayRefusedExchangeParksOnlyItsSaga(t *testing.T) {
	t.Parallel()
	brokerURL := brokertest.URL(t)
	tests := []struct {
		name      string
		noDeclare bool
		// prepare makes the bad exchange undeclarable.
		prepare func(t *testing.T, bad string)
		wantErr string
	}{
		{name: "exists with another kind", wantErr: "PRECONDITION_FAILED", prepare: func(t *testing.T, bad string) {
			declare(t, brokerURL, bad, "direct")
		}},
		{name: "missing under NoDeclare", noDeclare: true, wantErr: "NOT_FOUND", prepare: func(*testing.T, string) {}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			exchange := brokertest.Name("test.refused")
			bad := brokertest.Name("test.refused.bad")
			sink := brokertest.NewSink(t, brokerURL, exchange, "#")
			tt.prepare(t, bad)
			const maxAttempts = 3
			var downs atomic.Int64
			notProduced := make(chan *storage.OutboxEvent, 1)
			b := setup(t, setupOpts{defs: []*saga.Definition{routedDef()}, cfg: rabbitmq.Config{URL: brokerURL, Exchange: exchange,
				NoDeclare: tt.noDeclare, MaxAttempts: maxAttempts, RetryInitial: 5 * time.Millisecond, RetryMax: 20 * time.Millisecond,
				ReconnectInitial: 5 * time.Millisecond, ReconnectMax: 10 * time.Millisecond,
				Hooks: rabbitmq.Hooks{
					Connection: func(up bool, err error) {
						if !up {
							downs.Add(1)
						}
					},
					NotProduced: func(ev *storage.OutboxEvent, err error) { notProduced <- ev }}}})

			stuck := b.run(t, "routed", map[string][]string{"exchanges": {bad, ""}})
			var good []string
			for range 40 {
				good = append(good, b.run(t, "routed", map[string][]string{"exchanges": {"", ""}}).ID)
			}
			var ev *storage.OutboxEvent
			select {
			case ev = <-notProduced:
			case <-time.After(20 * time.Second):
				t.Fatalf("the event to %s never became not_produced; relay %+v", bad, b.relay.Stats())
			}
			if ev.Exchange != bad || ev.Attempts != maxAttempts || !strings.Contains(ev.LastError, tt.wantErr) {
				t.Errorf("not_produced event: exchange %q, attempts %d, last error %q; want %q, %d, %s",
					ev.Exchange, ev.Attempts, ev.LastError, bad, maxAttempts, tt.wantErr)
			}
			// Everything but the parked saga's second event is produced.
			b.waitOutbox(t, 20*time.Second, "one event new", func(st engine.OutboxStats) bool { return st.Counts.New == 1 })
			sink.Bind(t, "marker")
			sink.Marker(t, "marker")
			ds := sink.Collect(t, "marker", 20*time.Second)
			seen := map[string]int{}
			for _, d := range ds {
				seen[d.MessageId]++
			}
			for id, n := range seen {
				if n > 1 {
					t.Errorf("message %s delivered %d times: the relay published it again", id, n)
				}
			}
			got := seqOf(t, ds)
			if len(got[stuck.ID]) != 0 {
				t.Errorf("the parked saga delivered %v, want nothing (its second event waits behind the first)", got[stuck.ID])
			}
			for _, id := range good {
				if s := got[id]; len(s) != 2 || s[0] != 0 || s[1] != 1 {
					t.Errorf("saga %s delivered %v, want [0 1]", id, s)
				}
			}
			if n := downs.Load(); n != 0 {
				t.Errorf("the relay lost its connection %d times over one saga's exchange, want never", n)
			}
			if s := b.relay.Stats(); !s.Connected || s.NotProduced != 1 || s.Retried != maxAttempts-1 || s.ParkedSagas != 1 {
				t.Errorf("relay stats %+v: want connected, 1 not produced, %d retried, 1 parked saga", s, maxAttempts-1)
			}
		})
	}
}

// declare declares an exchange of kind, deleted when the test ends.
func declare(t *testing.T, brokerURL, name, kind string) {
	t.Helper()
	conn, err := amqp.Dial(brokerURL)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("channel: %v", err)
	}
	if err := ch.ExchangeDeclare(name, kind, false, false, false, false, nil); err != nil {
		t.Fatalf("declare %s exchange %s: %v", kind, name, err)
	}
	t.Cleanup(func() { _ = ch.ExchangeDelete(name, false, false) })
}
