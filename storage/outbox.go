package storage

import (
	"encoding/json"
	"time"

	"github.com/oklog/ulid/v2"
)

// OutboxStatus is where an outbox event stands.
type OutboxStatus string

// Outbox statuses.
const (
	// OutboxNew: committed, not yet confirmed by the broker.
	OutboxNew OutboxStatus = "new"
	// OutboxProduced: the broker confirmed it. Pruned after the retention.
	OutboxProduced OutboxStatus = "produced"
	// OutboxNotProduced: the relay gave up after its attempts. Kept until an
	// operator re-queues or discards it; its saga's later events wait.
	OutboxNotProduced OutboxStatus = "not_produced"
)

// OutboxStatuses lists the outbox statuses in the order an event goes
// through them.
var OutboxStatuses = []OutboxStatus{OutboxNew, OutboxProduced, OutboxNotProduced}

// HeaderCorrelationID is the header that makes an outbox event a command to
// a step's participant (saga.Command): a relay publishes it with the
// header's value as the message's correlation id, its reply queue as
// reply_to, and the exchange as it is (empty: the broker's default).
const HeaderCorrelationID = "x-saga-correlation-id"

// OutboxEvent is an integration event in the outbox.
type OutboxEvent struct {
	ID         ulid.ULID `json:"id"`
	SagaID     ulid.ULID `json:"saga_id"`
	Definition string    `json:"definition"`
	// Step is the step that emitted it; empty for saga lifecycle events.
	Step       string `json:"step,omitempty"`
	Name       string `json:"name"`
	Exchange   string `json:"exchange,omitempty"`
	RoutingKey string `json:"routing_key"`
	// Payload is the event's JSON body (decompressed).
	Payload   json.RawMessage   `json:"payload"`
	Headers   map[string]string `json:"headers,omitempty"`
	CreatedAt time.Time         `json:"created_at"`
	Status    OutboxStatus      `json:"status"`
	// StatusAt is when the event became produced or not_produced.
	StatusAt  time.Time `json:"status_at,omitzero"`
	Attempts  int       `json:"attempts"`
	LastError string    `json:"last_error,omitempty"`
	// Compressed says the payload is stored compressed (it was larger than
	// the threshold given to EncodeEvent).
	Compressed bool `json:"compressed,omitempty"`
}

// OutboxCounts counts the outbox's events by status.
type OutboxCounts struct {
	New         int64 `json:"new"`
	Produced    int64 `json:"produced"`
	NotProduced int64 `json:"not_produced"`
}

// OutboxListOptions filters OutboxList.
type OutboxListOptions struct {
	// Status keeps only events in this status. Empty: new.
	Status OutboxStatus
	// After starts the listing after this id (exclusive), oldest first.
	After ulid.ULID
	// Limit caps the result. Zero: 100.
	Limit int
}
