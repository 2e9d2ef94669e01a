// Package brokertest gives tests a real RabbitMQ: it finds the broker,
// skips (or, in CI, fails) when none answers, and declares throwaway
// exchanges and queues to read what was published. It is for tests only.
package brokertest

import (
	"fmt"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"
	amqp "github.com/rabbitmq/amqp091-go"
)

// DefaultURL is where the broker is looked for when SAGAD_AMQP_URL is unset.
const DefaultURL = "amqp://guest:guest@127.0.0.1:5672/"

// URL returns the broker's URL. If no broker answers there, the test is
// skipped with a message that says how to start one, or fails when
// SAGAD_REQUIRE_BROKER=1 (as in CI, where a skipped broker test would hide a
// failure).
func URL(t testing.TB) string {
	t.Helper()
	u := os.Getenv("SAGAD_AMQP_URL")
	if u == "" {
		u = DefaultURL
	}
	conn, err := amqp.DialConfig(u, amqp.Config{Dial: amqp.DefaultDial(3 * time.Second)})
	if err != nil {
		msg := fmt.Sprintf("no RabbitMQ answers at %s (%v): start one with `rabbitmq-server -detached`, or set SAGAD_AMQP_URL", redact(u), err)
		if os.Getenv("SAGAD_REQUIRE_BROKER") == "1" {
			t.Fatalf("SAGAD_REQUIRE_BROKER=1: %s", msg)
		}
		t.Skip(msg)
	}
	_ = conn.Close()
	return u
}

func redact(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "the configured URL"
	}
	return p.Redacted()
}

// Name returns a unique name for a test's exchange or queue.
func Name(prefix string) string { return prefix + "." + ulid.Make().String() }

// Sink is a queue bound to an exchange, consumed by the test.
type Sink struct {
	Exchange   string
	Queue      string
	Deliveries <-chan amqp.Delivery
	conn       *amqp.Connection
	ch         *amqp.Channel
}

// NewSink declares a durable topic exchange (as the relay does), an
// exclusive queue bound to it with binding, and consumes the queue. All of
// it is deleted when the test ends.
func NewSink(t testing.TB, brokerURL, exchange, binding string) *Sink {
	t.Helper()
	conn, err := amqp.Dial(brokerURL)
	if err != nil {
		t.Fatalf("sink: dial: %v", err)
	}
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("sink: channel: %v", err)
	}
	if err := ch.ExchangeDeclare(exchange, "topic", true, false, false, false, nil); err != nil {
		t.Fatalf("sink: declare exchange: %v", err)
	}
	q, err := ch.QueueDeclare(Name("sink"), false, true, true, false, nil)
	if err != nil {
		t.Fatalf("sink: declare queue: %v", err)
	}
	if err := ch.QueueBind(q.Name, binding, exchange, false, nil); err != nil {
		t.Fatalf("sink: bind: %v", err)
	}
	d, err := ch.Consume(q.Name, "", true, true, false, false, nil)
	if err != nil {
		t.Fatalf("sink: consume: %v", err)
	}
	s := &Sink{Exchange: exchange, Queue: q.Name, Deliveries: d, conn: conn, ch: ch}
	t.Cleanup(func() {
		_ = ch.ExchangeDelete(exchange, false, false)
		_ = conn.Close()
	})
	return s
}

// Bind adds a binding to the sink's queue.
func (s *Sink) Bind(t testing.TB, binding string) {
	t.Helper()
	if err := s.ch.QueueBind(s.Queue, binding, s.Exchange, false, nil); err != nil {
		t.Fatalf("sink: bind %q: %v", binding, err)
	}
}

// Marker publishes a message with routing key "marker" and id "marker-<n>"
// straight to the sink's exchange and waits for its confirm: a consumer that
// reads up to it has read everything published before it. Bind the sink to
// "marker" (or "#") to receive it.
func (s *Sink) Marker(t testing.TB, id string) {
	t.Helper()
	ch, err := s.conn.Channel()
	if err != nil {
		t.Fatalf("marker: channel: %v", err)
	}
	defer ch.Close()
	if err := ch.Confirm(false); err != nil {
		t.Fatalf("marker: confirm: %v", err)
	}
	dc, err := ch.PublishWithDeferredConfirm(s.Exchange, "marker", true, false, amqp.Publishing{MessageId: id, Body: []byte("{}")})
	if err != nil {
		t.Fatalf("marker: publish: %v", err)
	}
	if !dc.Wait() {
		t.Fatalf("marker: nacked")
	}
}

// Collect reads deliveries until one with message id until arrives, or
// timeout passes (a failure). It returns what came before it, in order.
func (s *Sink) Collect(t testing.TB, until string, timeout time.Duration) []amqp.Delivery {
	t.Helper()
	var out []amqp.Delivery
	deadline := time.After(timeout)
	for {
		select {
		case d, ok := <-s.Deliveries:
			if !ok {
				t.Fatalf("sink: consumer closed after %d deliveries", len(out))
			}
			if d.MessageId == until {
				return out
			}
			out = append(out, d)
		case <-deadline:
			t.Fatalf("sink: %s passed before marker %q; got %d deliveries", timeout, until, len(out))
		}
	}
}

// Channel opens a connection to the broker and a channel on it, both
// closed when the test ends.
func Channel(t testing.TB, brokerURL string) *amqp.Channel {
	t.Helper()
	conn, err := amqp.Dial(brokerURL)
	if err != nil {
		t.Fatalf("brokertest: dial: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("brokertest: channel: %v", err)
	}
	return ch
}

// DeleteQueue deletes a durable queue when the test ends.
func DeleteQueue(t testing.TB, brokerURL, queue string) {
	t.Helper()
	t.Cleanup(func() {
		conn, err := amqp.Dial(brokerURL)
		if err != nil {
			t.Errorf("brokertest: delete queue %s: %v", queue, err)
			return
		}
		defer func() { _ = conn.Close() }()
		ch, err := conn.Channel()
		if err == nil {
			_, err = ch.QueueDelete(queue, false, false, false)
		}
		if err != nil {
			t.Errorf("brokertest: delete queue %s: %v", queue, err)
		}
	})
}
