package rabbitmq_test

import (
	"context"
	"encoding/json"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/internal/brokertest"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
	"github.com/sagad/sagad/storage/bolt"
	"github.com/sagad/sagad/transport/rabbitmq"
)

// benchWindow is the number of unconfirmed messages both publishers allow.
const benchWindow = 256

// BenchmarkRelay compares, in one run, a plain amqp091-go publisher with
// confirms against the relay draining an outbox holding the same b.N
// messages (persistent, to a durable queue), then the relay draining as
// much while the engine runs sagas that emit events of their own. Run it
// with a message count, for example:
//
//	go test ./transport/rabbitmq -run '^$' -bench BenchmarkRelay -benchtime 50000x
func BenchmarkRelay(b *testing.B) {
	url := brokertest.URL(b)
	exchange := brokertest.Name("bench.relay")
	queue := brokertest.Name("bench.relay")
	admin := benchQueue(b, url, exchange, queue, "#")
	purge := func() {
		if _, err := admin.QueuePurge(queue, false); err != nil {
			b.Fatal(err)
		}
	}
	n := b.N
	payload := json.RawMessage(`{"order":"A-1042","sku":"book","qty":1,"amount":{"value":1999,"currency":"EUR"}}`)
	sagas := make([]ulid.ULID, max(n/4, 1)) // four events a saga, interleaved
	for i := range sagas {
		sagas[i] = ulid.Make()
	}
	b.ResetTimer()

	raw := rawPublish(b, url, exchange, n, payload)
	purge()
	relayed := relayDrain(b, url, exchange, n, payload, sagas, false)
	purge()
	busy := relayDrain(b, url, exchange, n, payload, sagas, true)
	purge()

	b.StopTimer()
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(raw, "raw-msgs/s")
	b.ReportMetric(relayed, "relay-msgs/s")
	b.ReportMetric(relayed/raw, "ratio")
	b.ReportMetric(busy, "relay-busy-msgs/s")
	b.ReportMetric(busy/raw, "busy-ratio")
}

// benchQueue declares a durable topic exchange and a durable queue bound
// to it with binding, both deleted when the benchmark ends, and returns a
// channel to manage them.
func benchQueue(b *testing.B, url, exchange, queue, binding string) *amqp.Channel {
	admin := brokertest.Channel(b, url)
	if err := admin.ExchangeDeclare(exchange, "topic", true, false, false, false, nil); err != nil {
		b.Fatal(err)
	}
	if _, err := admin.QueueDeclare(queue, true, false, false, false, nil); err != nil {
		b.Fatal(err)
	}
	if err := admin.QueueBind(queue, binding, exchange, false, nil); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_, _ = admin.QueueDelete(queue, false, false, false)
		_ = admin.ExchangeDelete(exchange, false, false)
	})
	return admin
}

// rawPublish publishes n messages with a window of benchWindow unconfirmed
// ones and returns messages per second.
func rawPublish(b *testing.B, url, exchange string, n int, payload []byte) float64 {
	conn, err := amqp.Dial(url)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		b.Fatal(err)
	}
	confirms := ch.NotifyPublish(make(chan amqp.Confirmation, benchWindow+1))
	returns := ch.NotifyReturn(make(chan amqp.Return, benchWindow+1))
	start := time.Now()
	inflight, acked := 0, 0
	sagaID := ulid.Make().String()
	for sent := 0; acked < n; {
		for inflight < benchWindow && sent < n {
			err := ch.Publish(exchange, "order.placed", true, false, amqp.Publishing{
				Headers:     amqp.Table{"x-saga-id": sagaID, "x-saga-definition": "order", "x-saga-step": "place"},
				ContentType: "application/json", DeliveryMode: amqp.Persistent, MessageId: ulid.Make().String(),
				Timestamp: time.Now(), Type: "order.placed", AppId: "bench", Body: payload,
			})
			if err != nil {
				b.Fatal(err)
			}
			sent++
			inflight++
		}
		select {
		case c := <-confirms:
			if !c.Ack {
				b.Fatalf("raw publisher: message %d nacked", c.DeliveryTag)
			}
			inflight--
			acked++
		case r := <-returns:
			b.Fatalf("raw publisher: returned %s", r.ReplyText)
		}
	}
	return float64(n) / time.Since(start).Seconds()
}

// relayDrain fills an outbox with n events and returns the rate at which a
// relay publishes them. With busy, an engine runs sagas (each emitting an
// event) at concurrency 64 meanwhile, and those events count too.
func relayDrain(b *testing.B, url, exchange string, n int, payload []byte, sagas []ulid.ULID, busy bool) float64 {
	path := filepath.Join(b.TempDir(), "relay.db")
	eng, err := engine.Open(path, engine.Options{Logger: quietLogger()})
	if err != nil {
		b.Fatal(err)
	}
	defer eng.Close()
	def := &saga.Definition{Name: "order", Steps: []saga.Step{{Name: "place",
		Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
			return nil, c.Emit(saga.Event{Name: "order.placed", Payload: payload})
		}}}}
	if err := eng.Register(def); err != nil {
		b.Fatal(err)
	}
	db := eng.Store().(*bolt.DB)
	now := time.Now()
	for i := 0; i < n; i += 1000 {
		err := db.Update(func(tx *bolt.Tx) error {
			for j := i; j < min(i+1000, n); j++ {
				ev := &storage.OutboxEvent{SagaID: sagas[j%len(sagas)], Definition: "order", Step: "place",
					Name: "order.placed", RoutingKey: "order.placed", Payload: payload, CreatedAt: now}
				if _, err := tx.OutboxPut(bolt.EncodeEvent(ev, 4096)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	engDone := make(chan struct{})
	go func() { defer close(engDone); _ = eng.Run(ctx) }()
	defer func() { cancel(); <-engDone }()

	want := int64(n)
	var sagaErr atomic.Value
	sagasDone := make(chan struct{})
	if busy {
		extra := n / 4
		want += int64(extra)
		go func() {
			defer close(sagasDone)
			sem := make(chan struct{}, 64)
			for range extra {
				sem <- struct{}{}
				go func() {
					defer func() { <-sem }()
					st, err := eng.Start(ctx, "order", map[string]int{"qty": 1})
					if err == nil {
						_, err = eng.Wait(ctx, st.ID)
					}
					if err != nil && ctx.Err() == nil {
						sagaErr.Store(err)
					}
				}()
			}
			for range cap(sem) {
				sem <- struct{}{}
			}
		}()
	} else {
		close(sagasDone)
	}
	var published atomic.Int64
	done := make(chan struct{})
	relay, err := rabbitmq.New(db, rabbitmq.Config{URL: url, Exchange: exchange, Window: benchWindow, Logger: quietLogger(),
		Hooks: rabbitmq.Hooks{Published: func(k int) {
			if published.Add(int64(k)) == want {
				close(done)
			}
		}}})
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	relayDone := make(chan error, 1)
	go func() { relayDone <- relay.Run(ctx) }()
	select {
	case <-done:
	case <-time.After(10 * time.Minute):
		b.Fatalf("relay published %d of %d in 10 minutes: %+v", published.Load(), want, relay.Stats())
	}
	elapsed := time.Since(start)
	<-sagasDone
	if err, _ := sagaErr.Load().(error); err != nil {
		b.Fatalf("saga: %v", err)
	}
	cancel()
	if err := <-relayDone; err != nil {
		b.Fatal(err)
	}
	if busy {
		b.Logf("busy: %d prefilled + %d from sagas in %s", n, want-int64(n), elapsed)
	}
	return float64(want) / elapsed.Seconds()
}
