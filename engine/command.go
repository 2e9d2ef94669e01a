package engine

import (
	"context"
	"encoding/json"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/cockroachdb/errors"
	"github.com/oklog/ulid/v2"

	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
)

// CorrelationID names one attempt of a step's phase, as a command's
// correlation id (see saga.Command): "<saga id>/<step>/<phase>/<attempt>".
func CorrelationID(sagaID, step string, phase saga.Phase, attempt int) string {
	return idempotencyKey(sagaID, step, phase) + "/" + strconv.Itoa(attempt)
}

// idempotencyKey is the key every attempt of a step's phase shares
// (saga.Call.IdempotencyKey): "<saga id>/<step>/<phase>".
func idempotencyKey(sagaID, step string, phase saga.Phase) string {
	return sagaID + "/" + step + "/" + string(phase)
}

// ParseCorrelationID splits a command's correlation id into what
// Complete takes. Step names cannot hold a slash, so the split is exact.
func ParseCorrelationID(s string) (sagaID, step string, phase saga.Phase, attempt int, err error) {
	parts := strings.Split(s, "/")
	if len(parts) != 4 {
		return "", "", "", 0, errors.Wrapf(ErrInvalidInput, "correlation id %q: want <saga id>/<step>/<phase>/<attempt>", s)
	}
	if _, err := ulid.ParseStrict(parts[0]); err != nil {
		return "", "", "", 0, errors.Wrapf(ErrInvalidID, "correlation id %q: saga id %q", s, parts[0])
	}
	switch phase = saga.Phase(parts[2]); phase {
	case saga.PhaseAction, saga.PhaseCompensation, saga.PhaseFallback:
	default:
		return "", "", "", 0, errors.Wrapf(ErrInvalidInput, "correlation id %q: phase %q: want action, compensation or fallback", s, parts[2])
	}
	attempt, err = strconv.Atoi(parts[3])
	if err != nil || attempt < 1 {
		return "", "", "", 0, errors.Wrapf(ErrInvalidInput, "correlation id %q: attempt %q: want a number from 1", s, parts[3])
	}
	return parts[0], parts[1], phase, attempt, nil
}

// StatusResult is the Result of an answer that came later with an HTTP
// status (a 202's callback, a command's reply): 2xx is a success with
// data; 4xx other than 408, 425 and 429 is a permanent failure; any other
// status is a failure the step's retry policy retries. msg describes a
// failure (empty: the status's text).
func StatusResult(status int, data json.RawMessage, msg string) Result {
	if status >= 200 && status <= 299 {
		return Result{Data: data}
	}
	if msg == "" {
		msg = http.StatusText(status)
	}
	err := errors.Newf("the participant answered %d: %s", status, msg)
	if status >= 400 && status <= 499 && status != http.StatusRequestTimeout && status != http.StatusTooEarly &&
		status != http.StatusTooManyRequests {
		return Result{Err: saga.Permanent(err)}
	}
	return Result{Err: err}
}

// commandFunc is the Func of a phase sent as a command. It runs as an
// ordinary attempt only when building the command failed as the attempt
// started (see driver.send and driver.attempt): it builds it again and
// fails with that error.
func commandFunc(cmd saga.Command) saga.Func {
	return func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
		if _, err := buildCommand(cmd, c); err != nil {
			return nil, err
		}
		return nil, saga.Permanent(errors.Newf("step %q %s: its command could not be built when the attempt started, and now it can: a Command must give the same answer for the same call",
			c.Step, c.Phase))
	}
}

// buildCommand runs a Command, turning a panic into a permanent error, and
// checks the event it returns.
func buildCommand(cmd saga.Command, c *saga.Call) (ev saga.Event, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = saga.Permanent(errors.Mark(errors.Newf("step %q %s: command panicked: %v\n%s", c.Step, c.Phase, r, debug.Stack()), errPanic))
		}
	}()
	ev, err = cmd(c)
	if err != nil {
		return ev, errors.Wrapf(err, "step %q %s: build command", c.Step, c.Phase)
	}
	if err := ev.Validate(); err != nil {
		return ev, saga.Permanent(errors.Wrapf(err, "step %q %s: command", c.Step, c.Phase))
	}
	return ev, nil
}

// send starts attempt s.Attempts of step i's phase, sent as a command: the
// command goes to the outbox in the commit that records the start, and the
// step waits for the answer. False when the command cannot be built: the
// attempt then runs as a Func that fails with the reason (commandFunc).
//
//go:noinline
func (d *driver) send(now time.Time, i int, cmd saga.Command) bool {
	r, s := d.rec, &d.rec.Steps[i]
	call := d.newCall(effect{step: i, phase: s.Phase})
	ev, err := buildCommand(cmd, call)
	if err != nil {
		return false
	}
	h := make(map[string]string, len(ev.Headers)+7)
	for k, v := range ev.Headers {
		h[k] = v
	}
	h["Idempotency-Key"] = call.IdempotencyKey
	h["X-Saga-Id"] = call.SagaID
	h["X-Saga-Definition"] = call.Definition
	h["X-Saga-Step"] = call.Step
	h["X-Saga-Phase"] = string(call.Phase)
	h["X-Saga-Attempt"] = strconv.Itoa(call.Attempt)
	h[storage.HeaderCorrelationID] = CorrelationID(call.SagaID, call.Step, call.Phase, call.Attempt)
	if !d.untraced {
		d.sentSpan(effect{step: i, phase: s.Phase}, s.Attempts, h)
	}
	if ev.RoutingKey == "" {
		ev.RoutingKey = ev.Name
	}
	d.events = append(d.events, storage.OutboxEvent{SagaID: r.ID, Definition: r.Definition, Step: s.Name,
		Name: ev.Name, Exchange: ev.Exchange, RoutingKey: ev.RoutingKey, Payload: ev.Payload, Headers: h, CreatedAt: now})
	d.log(now, storage.LogEntry{Event: storage.EventAttemptStarted, Step: s.Name, Phase: s.Phase, Attempt: s.Attempts})
	d.waitForAnswer(now, i, s.Phase, s.Attempts, now, 0, "command "+ev.Name+" sent (exchange "+strconv.Quote(ev.Exchange)+
		", routing key "+ev.RoutingKey+"); waiting for the reply until the step's timeout")
	return true
}
