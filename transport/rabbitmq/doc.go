// Package rabbitmq relays a sagad database's transactional outbox to
// RabbitMQ.
//
// Steps emit integration events with saga.Call.Emit, and definitions can
// turn on lifecycle events (saga.Events). The engine writes them to the
// outbox in the same bbolt transaction as the transition that causes them:
// an event exists if and only if that transition committed. A Relay reads
// the outbox and publishes each event with publisher confirms, marking it
// produced once the broker has acked it.
//
// # Guarantees
//
//   - At least once. An event is marked produced only after the broker's
//     ack, so a crash (or a lost connection) between the ack and the mark
//     publishes it again, with the same message id. Consumers de-duplicate
//     on the AMQP message-id property, which is the event's ULID.
//   - Per-saga order. A saga's events are published in the order they were
//     committed, and at most one of them is unconfirmed at a time: a later
//     event never overtakes an earlier one that is being retried. Events of
//     different sagas are pipelined (Config.Window).
//   - One bad event parks only its own saga. An event that is nacked,
//     returned because no queue is bound for it (every publish is mandatory
//     unless Config.AllowUnroutable), or whose exchange the broker refuses to
//     declare (it exists with another kind, or is missing under
//     Config.NoDeclare; exchanges are declared on a channel of their own, so
//     a refusal does not touch the publishing one), is retried with
//     exponential backoff; after Config.MaxAttempts it is marked
//     not_produced and its saga's later events wait in the outbox until an
//     operator re-queues or discards it (engine.OutboxRequeue,
//     engine.OutboxDiscard). Other sagas go on.
//   - The broker going away is normal weather: the relay reconnects with
//     backoff and publishes what waited, while the engine keeps committing.
//   - A broker that blocks the connection (a memory or disk alarm) pauses
//     publishing (Stats.Blocked) until it lifts. Run still returns within
//     Config.DrainTimeout and a second of its context ending: a connection
//     the broker stopped reading is closed hard, and what it did not confirm
//     stays new.
//
// # Messages
//
// Each message is persistent, with content type application/json, message
// id = event id, type = event name, timestamp = the event's creation time,
// app id "sagad", the event's headers plus x-saga-id, x-saga-definition and
// (for step events) x-saga-step, and the event's payload as body. It goes to
// the event's exchange (or Config.Exchange), declared durable of
// Config.ExchangeKind before first use, with the event's routing key.
//
// # Commands and replies
//
// A step whose participant answers by message (saga.Command, a JSON
// definition's {"amqp": ...} call) writes its command to the outbox in the
// commit that records the attempt's start. The relay publishes a command
// as it does an event, always mandatory, with the attempt's identity as
// headers (Idempotency-Key, X-Saga-Id, X-Saga-Definition, X-Saga-Step,
// X-Saga-Phase, X-Saga-Attempt), correlation id
// "<saga id>/<step>/<phase>/<attempt>" and reply_to Config.ReplyQueue
// (used as it is, declared durable if it is missing, before the first
// command; one queue per database). Its exchange is taken as it
// is: empty is the broker's default exchange, and a named one is only
// checked, never declared. A command the broker cannot deliver (returned,
// or its exchange is missing) is not retried by the relay: its attempt
// fails at once (Config.Completer), and the step's retry policy sends a new
// one.
//
// Replies consumes Config.ReplyQueue with manual acknowledgements and hands
// each reply to the engine (engine.Engine.Complete); it acknowledges a
// reply once its outcome is committed, so a crash in between delivers it
// again, and the second delivery is recorded and ignored.
//
//	cfg := rabbitmq.Config{URL: url, Completer: eng}
//	relay, err := rabbitmq.New(eng.Store(), cfg)
//	...
//	replies, err := rabbitmq.NewReplies(cfg)
//	...
//	go relay.Run(ctx)
//	go replies.Run(ctx)
//
// # Running it
//
// Run one relay per database, next to engine.Run in the same process (the
// file is locked to one process):
//
//	relay, err := rabbitmq.New(eng.Store(), rabbitmq.Config{URL: "amqp://guest:guest@127.0.0.1:5672/"})
//	...
//	go relay.Run(ctx)
//
// It wakes as soon as a transaction that adds events commits; there is no
// polling delay.
package rabbitmq
