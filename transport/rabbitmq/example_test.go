package rabbitmq_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"os/signal"
	"path/filepath"
	"syscall"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/transport/rabbitmq"
)

// A step emits an event; the engine stores it with the step's success, and
// the relay publishes it to RabbitMQ next to the engine.
func Example() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	eng, err := engine.Open(filepath.Join("/tmp", "orders.db"), engine.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer eng.Close()
	err = eng.Register(&saga.Definition{
		Name:   "order",
		Events: saga.Events{Lifecycle: true}, // saga.started, step.succeeded, saga.completed, ...
		Steps: []saga.Step{{
			Name: "charge",
			Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
				// ... charge the card, idempotently for c.IdempotencyKey ...
				return nil, c.Emit(saga.Event{Name: "payment.charged", Payload: json.RawMessage(`{"amount":1999}`)})
			},
		}},
	})
	if err != nil {
		log.Fatal(err)
	}
	relay, err := rabbitmq.New(eng.Store(), rabbitmq.Config{
		URL:      "amqp://guest:guest@127.0.0.1:5672/",
		Exchange: "orders", // a durable topic exchange, declared by the relay
	})
	if err != nil {
		log.Fatal(err)
	}
	go func() { _ = relay.Run(ctx) }()
	go func() { _ = eng.Run(ctx) }()
	if _, err := eng.Start(ctx, "order", map[string]string{"order": "A-1042"}); err != nil {
		log.Fatal(err)
	}
	<-ctx.Done()
}

// Delivery is at least once: a consumer skips message ids it has already
// processed. Here the ids are kept in memory; a real consumer records them
// in the same transaction as the effect of the message.
func Example_deduplicatingConsumer() {
	conn, err := amqp.Dial("amqp://guest:guest@127.0.0.1:5672/")
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		log.Fatal(err)
	}
	q, err := ch.QueueDeclare("billing", true, false, false, false, nil)
	if err != nil {
		log.Fatal(err)
	}
	if err := ch.QueueBind(q.Name, "payment.#", "orders", false, nil); err != nil {
		log.Fatal(err)
	}
	deliveries, err := ch.Consume(q.Name, "", false, false, false, false, nil)
	if err != nil {
		log.Fatal(err)
	}
	seen := map[string]bool{}
	for d := range deliveries {
		if !seen[d.MessageId] {
			fmt.Printf("%s for saga %s: %s\n", d.Type, d.Headers["x-saga-id"], d.Body)
			seen[d.MessageId] = true
		}
		_ = d.Ack(false)
	}
}
