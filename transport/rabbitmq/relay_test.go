package rabbitmq_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/errors"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/internal/brokertest"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
	"github.com/sagad/sagad/transport/rabbitmq"
)

type orderInput struct {
	SKU     string `json:"sku"`
	Decline bool   `json:"decline"`
}

// orderDef emits an event from every step and compensation; charge emits
// its event and then fails when the order is declined, so that event must
// never reach the broker.
func orderDef() *saga.Definition {
	emit := func(name string) saga.Func {
		return func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
			var in orderInput
			if err := c.DecodeInput(&in); err != nil {
				return nil, err
			}
			payload, _ := json.Marshal(map[string]string{"sku": in.SKU, "saga": c.SagaID})
			if err := c.Emit(saga.Event{Name: name, Payload: payload, Headers: map[string]string{"tenant": "acme"}}); err != nil {
				return nil, err
			}
			if name == "payment.charged" && in.Decline {
				return nil, saga.Permanent(errors.New("card declined"))
			}
			return json.RawMessage(`{"ok":true}`), nil
		}
	}
	return &saga.Definition{Name: "order", Events: saga.Events{Lifecycle: true}, Steps: []saga.Step{
		{Name: "reserve", Action: emit("stock.reserved"), Compensation: emit("stock.released")},
		{Name: "charge", Action: emit("payment.charged"), Compensation: emit("payment.refunded")},
		{Name: "ship", Action: emit("order.shipped")},
	}}
}

func TestRelayPublishesCommittedEventsOnly(t *testing.T) {
	t.Parallel()
	url := brokertest.URL(t)
	exchange := brokertest.Name("test.relay")
	sink := brokertest.NewSink(t, url, exchange, "#")
	b := setup(t, setupOpts{cfg: rabbitmq.Config{URL: url, Exchange: exchange}, defs: []*saga.Definition{orderDef()}})

	ok := b.run(t, "order", orderInput{SKU: "book"})
	declined := b.run(t, "order", orderInput{SKU: "lamp", Decline: true})
	if ok.Status != saga.StatusCompleted || declined.Status != saga.StatusCompensated {
		t.Fatalf("statuses %s, %s; want completed, compensated", ok.Status, declined.Status)
	}
	b.drained(t, 20*time.Second)
	sink.Marker(t, "marker-1")
	got := sink.Collect(t, "marker-1", 20*time.Second)

	want := map[string][]string{
		ok.ID: {"saga.started", "stock.reserved", "step.succeeded", "payment.charged", "step.succeeded",
			"order.shipped", "step.succeeded", "saga.completed"},
		declined.ID: {"saga.started", "stock.reserved", "step.succeeded", "stock.released", "step.compensated", "saga.compensated"},
	}
	bySaga := map[string][]string{}
	ids := map[string]bool{}
	for _, d := range got {
		sid, _ := d.Headers["x-saga-id"].(string)
		bySaga[sid] = append(bySaga[sid], d.Type)
		if ids[d.MessageId] {
			t.Errorf("message id %s delivered twice without a crash", d.MessageId)
		}
		ids[d.MessageId] = true
	}
	for sid, names := range want {
		if !slices.Equal(bySaga[sid], names) {
			t.Errorf("saga %s: got events %v, want %v", sid, bySaga[sid], names)
		}
	}
	if len(bySaga) != len(want) {
		t.Errorf("events from %d sagas, want %d: %v", len(bySaga), len(want), bySaga)
	}

	// Every delivered message is the outbox's record of it, field for field.
	page, err := b.eng.OutboxList(context.Background(), engine.OutboxListOptions{Status: storage.OutboxProduced, Limit: 1000})
	if err != nil {
		t.Fatalf("outbox list: %v", err)
	}
	stored := map[string]*storage.OutboxEvent{}
	for _, ev := range page.Events {
		stored[ev.ID.String()] = ev
	}
	if len(stored) != len(got) {
		t.Fatalf("outbox holds %d produced events, broker delivered %d", len(stored), len(got))
	}
	for _, d := range got {
		ev := stored[d.MessageId]
		if ev == nil {
			t.Fatalf("delivered message %s (%s) is not in the outbox", d.MessageId, d.Type)
		}
		checkDelivery(t, d, ev, exchange)
	}
	// A step event carries the step's own payload and headers.
	for _, d := range got {
		if d.Type != "stock.reserved" || d.Headers["x-saga-id"] != ok.ID {
			continue
		}
		var p map[string]string
		if err := json.Unmarshal(d.Body, &p); err != nil || p["sku"] != "book" || p["saga"] != ok.ID {
			t.Errorf("stock.reserved payload %s (%v)", d.Body, err)
		}
		if d.Headers["tenant"] != "acme" || d.Headers["x-saga-step"] != "reserve" || d.Headers["x-saga-definition"] != "order" {
			t.Errorf("stock.reserved headers %v", d.Headers)
		}
		if d.RoutingKey != "stock.reserved" {
			t.Errorf("stock.reserved routing key %q, want the event name", d.RoutingKey)
		}
	}
}

// checkDelivery compares a delivered message with its outbox record.
func checkDelivery(t *testing.T, d amqp.Delivery, ev *storage.OutboxEvent, exchange string) {
	t.Helper()
	switch {
	case d.Type != ev.Name:
		t.Errorf("%s: type %q, want %q", ev.ID, d.Type, ev.Name)
	case d.RoutingKey != ev.RoutingKey:
		t.Errorf("%s: routing key %q, want %q", ev.ID, d.RoutingKey, ev.RoutingKey)
	case d.Exchange != exchange:
		t.Errorf("%s: exchange %q, want %q", ev.ID, d.Exchange, exchange)
	case string(d.Body) != string(ev.Payload):
		t.Errorf("%s: body %s, want %s", ev.ID, d.Body, ev.Payload)
	case d.DeliveryMode != amqp.Persistent:
		t.Errorf("%s: delivery mode %d, want persistent", ev.ID, d.DeliveryMode)
	case d.ContentType != "application/json":
		t.Errorf("%s: content type %q", ev.ID, d.ContentType)
	case d.Headers["x-saga-id"] != ev.SagaID.String():
		t.Errorf("%s: x-saga-id %v, want %s", ev.ID, d.Headers["x-saga-id"], ev.SagaID)
	case ev.Step != "" && d.Headers["x-saga-step"] != ev.Step:
		t.Errorf("%s: x-saga-step %v, want %s", ev.ID, d.Headers["x-saga-step"], ev.Step)
	case d.Timestamp.Unix() != ev.CreatedAt.Unix():
		t.Errorf("%s: timestamp %s, want %s", ev.ID, d.Timestamp, ev.CreatedAt)
	}
}

// pollingOutbox hides the store's in-process wake-ups from the relay, as a
// backend written to by other processes would: its wake channel closes on
// a timer.
type pollingOutbox struct {
	storage.OutboxStore
	every time.Duration
	polls atomic.Int64
}

func (p *pollingOutbox) OutboxWake() <-chan struct{} {
	p.polls.Add(1)
	ch := make(chan struct{})
	time.AfterFunc(p.every, func() { close(ch) })
	return ch
}

// A backend that learns of new events by polling serves the relay as well:
// every event is published, in per-saga order.
func TestRelayOnPollingStore(t *testing.T) {
	t.Parallel()
	url := brokertest.URL(t)
	exchange := brokertest.Name("test.polling")
	sink := brokertest.NewSink(t, url, exchange, "#")
	poller := &pollingOutbox{every: 20 * time.Millisecond}
	b := setup(t, setupOpts{cfg: rabbitmq.Config{URL: url, Exchange: exchange}, defs: []*saga.Definition{orderDef()},
		outbox: func(s storage.Store) storage.OutboxStore { poller.OutboxStore = s; return poller }})
	var ids []string
	for i := range 5 {
		s := b.run(t, "order", orderInput{SKU: fmt.Sprint("sku-", i)})
		if s.Status != saga.StatusCompleted {
			t.Fatalf("saga %s: %s", s.ID, s.Status)
		}
		ids = append(ids, s.ID)
	}
	b.drained(t, 20*time.Second)
	sink.Marker(t, "marker-1")
	bySaga := map[string][]string{}
	for _, d := range sink.Collect(t, "marker-1", 20*time.Second) {
		sid, _ := d.Headers["x-saga-id"].(string)
		bySaga[sid] = append(bySaga[sid], d.Type)
	}
	want := []string{"saga.started", "stock.reserved", "step.succeeded", "payment.charged", "step.succeeded",
		"order.shipped", "step.succeeded", "saga.completed"}
	for _, id := range ids {
		if !slices.Equal(bySaga[id], want) {
			t.Errorf("saga %s: got events %v, want %v", id, bySaga[id], want)
		}
	}
	if len(bySaga) != len(ids) {
		t.Errorf("events from %d sagas, want %d", len(bySaga), len(ids))
	}
	if n := poller.polls.Load(); n < 2 {
		t.Errorf("the relay took %d wake channels, want it to poll", n)
	}
}
