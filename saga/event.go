package saga

import (
	"encoding/json"
	"maps"
	"strings"

	"github.com/cockroachdb/errors"
)

// Event is an integration event. A step emits it with Call.Emit; the engine
// writes it to the outbox in the same transaction that records the
// attempt's success, and a relay publishes it.
type Event struct {
	// Name is the event's type, such as "payment.charged". It matches
	// [A-Za-z0-9][A-Za-z0-9._-]{0,127} and is published as the message type.
	Name string
	// RoutingKey routes the message on its exchange; at most 255 bytes.
	// Empty: Name.
	RoutingKey string
	// Exchange overrides the exchange the relay publishes to. Empty: the
	// definition's Events.Exchange, or else the relay's default exchange.
	Exchange string
	// Payload is the message body: valid JSON, at most MaxEventSize bytes.
	Payload json.RawMessage
	// Headers are added to the message's headers. Names starting with
	// "x-saga-" are reserved for the ones the relay sets.
	Headers map[string]string
}

// MaxEventSize caps an event's payload.
const MaxEventSize = 1 << 20

// HeaderPrefix starts the names of the headers the relay sets itself
// (x-saga-id, x-saga-step, x-saga-definition).
const HeaderPrefix = "x-saga-"

// ErrInvalidEvent is the mark on every error Event.Validate returns.
var ErrInvalidEvent = errors.New("saga: invalid event")

// exchangePattern is a conservative subset of the exchange names RabbitMQ
// accepts (it also allows ':' and up to 255 bytes).
var exchangePattern = namePattern

// Validate reports the first thing wrong with ev, marked ErrInvalidEvent.
func (ev *Event) Validate() error {
	bad := func(format string, args ...any) error {
		return errors.Mark(errors.Newf("saga: event %q: "+format, append([]any{ev.Name}, args...)...), ErrInvalidEvent)
	}
	switch {
	case !namePattern.MatchString(ev.Name):
		return bad("name must match %s", namePattern)
	case len(ev.RoutingKey) > 255:
		return bad("routing key is %d bytes, at most 255", len(ev.RoutingKey))
	case ev.Exchange != "" && !exchangePattern.MatchString(ev.Exchange):
		return bad("exchange %q must match %s", ev.Exchange, exchangePattern)
	case len(ev.Payload) == 0:
		return bad("payload is empty; send null or {} for none")
	case len(ev.Payload) > MaxEventSize:
		return bad("payload is %d bytes, at most %d", len(ev.Payload), MaxEventSize)
	case !json.Valid(ev.Payload):
		return bad("payload is not valid JSON")
	}
	for k := range ev.Headers {
		if k == "" || len(k) > 128 {
			return bad("header name %q must be 1 to 128 bytes", k)
		}
		if strings.HasPrefix(strings.ToLower(k), HeaderPrefix) {
			return bad("header name %q: the %s prefix is reserved", k, HeaderPrefix)
		}
	}
	return nil
}

// Emit adds ev to the outbox, atomically with this attempt's success: if the
// attempt fails, or the process dies before its outcome is committed, the
// event never exists; once the outcome is committed the relay will publish
// it (at least once). An attempt that runs again after a crash emits its
// events again, so emit the same events for the same IdempotencyKey.
//
// Emit copies ev. It fails, marked ErrInvalidEvent, if ev is invalid, and
// after the step function has returned.
func (c *Call) Emit(ev Event) error {
	if err := ev.Validate(); err != nil {
		return errors.Wrapf(err, "saga %s: step %q", c.SagaID, c.Step)
	}
	ev.Payload = append(json.RawMessage(nil), ev.Payload...)
	ev.Headers = maps.Clone(ev.Headers)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sealed {
		return errors.Mark(errors.Newf("saga %s: step %q: event %q emitted after the step function returned",
			c.SagaID, c.Step, ev.Name), ErrInvalidEvent)
	}
	c.events = append(c.events, ev)
	return nil
}

// Emitted returns the events emitted through c, in order, and refuses any
// later Emit. The engine calls it once the step function has returned.
func (c *Call) Emitted() []Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sealed = true
	return c.events
}
