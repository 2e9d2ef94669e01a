package client

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/cockroachdb/errors"
)

// Saga is a saga as the API reports it. Get returns all of it; the items
// of a List page have no Input and no Data.
type Saga struct {
	ID         string `json:"id"`
	Definition string `json:"definition"`
	// Version is the definition version the saga runs with.
	Version string `json:"version"`
	// Status is running, compensating, completed, compensated, failed,
	// resolved or paused.
	Status string `json:"status"`
	// Input is the saga's input. Empty in List items: Get has it.
	Input json.RawMessage `json:"input,omitempty"`
	// Data holds what the saga's succeeded steps returned, by step name.
	// Empty in List items: Get has it.
	Data map[string]json.RawMessage `json:"data,omitempty"`
	// Error says why the saga compensated or failed.
	Error          string    `json:"error,omitempty"`
	IdempotencyKey string    `json:"idempotency_key,omitempty"`
	CreatedAt      time.Time `json:"created_at"`
	UpdatedAt      time.Time `json:"updated_at"`
	Deadline       time.Time `json:"deadline,omitzero"`
	// WakeAt is when the next attempt is due, while the saga waits for a
	// retry.
	WakeAt time.Time `json:"wake_at,omitzero"`
	// Parked says why the saga is not driven (its definition version is not
	// registered).
	Parked string `json:"parked,omitempty"`
	// PausedFrom is the status a paused saga resumes in (running or
	// compensating); empty unless it is paused.
	PausedFrom string `json:"paused_from,omitempty"`
	// TraceID is the OpenTelemetry trace id of the saga's spans, when
	// sagad traces it.
	TraceID string `json:"trace_id,omitempty"`
	Steps   []Step `json:"steps"`
}

// Finished reports whether the saga has ended.
func (s *Saga) Finished() bool {
	switch s.Status {
	case "completed", "compensated", "failed", "resolved":
		return true
	}
	return false
}

// Step is one step of a saga.
type Step struct {
	Name string `json:"name"`
	// Status is pending, running, succeeded, failed, compensating,
	// compensated or skipped.
	Status string `json:"status"`
	// Phase is the function last attempted: action, fallback or
	// compensation.
	Phase                string `json:"phase,omitempty"`
	Attempts             int    `json:"attempts"`
	CompensationAttempts int    `json:"compensation_attempts,omitempty"`
	FallbackUsed         bool   `json:"fallback_used,omitempty"`
	InFlight             bool   `json:"in_flight,omitempty"`
	// Waiting is true while the step's attempt waits for its participant's
	// answer (a 202): since WaitingSince, at most until WaitingUntil.
	Waiting      bool      `json:"waiting,omitempty"`
	WaitingSince time.Time `json:"waiting_since,omitzero"`
	WaitingUntil time.Time `json:"waiting_until,omitzero"`
	Error        string    `json:"error,omitempty"`
}

// LogEntry is one entry of a saga's step log.
type LogEntry struct {
	Seq     uint32    `json:"seq"`
	At      time.Time `json:"at"`
	Event   string    `json:"event"`
	Step    string    `json:"step,omitempty"`
	Phase   string    `json:"phase,omitempty"`
	Attempt int       `json:"attempt,omitempty"`
	// Status is the saga's status after the event.
	Status string `json:"status,omitempty"`
	// Duration is the attempt's duration. In JSON it is a Go duration
	// string ("1.5s", "250ms"), the format of every duration sagad shows:
	// in the API, its logs and the CLI's --json.
	Duration time.Duration `json:"-"`
	Error    string        `json:"error,omitempty"`
	Next     time.Time     `json:"next,omitzero"`
	Note     string        `json:"note,omitempty"`
	// OutcomeUnknown is set on a failed attempt whose participant may have
	// acted (cut off by its timeout, or no usable answer).
	OutcomeUnknown bool `json:"outcome_unknown,omitempty"`
	// Input and PrevInput are the saga's new and old input, on an
	// input_replaced entry (a retry with a corrected input).
	Input     json.RawMessage `json:"input,omitempty"`
	PrevInput json.RawMessage `json:"prev_input,omitempty"`
}

// logEntryJSON is LogEntry's wire format: its duration as a string.
type logEntryJSON struct {
	logEntryFields
	Duration json.RawMessage `json:"duration,omitempty"`
}

type logEntryFields LogEntry // without LogEntry's methods

// MarshalJSON encodes e with its duration as a Go duration string.
func (e LogEntry) MarshalJSON() ([]byte, error) {
	w := logEntryJSON{logEntryFields: logEntryFields(e)}
	if e.Duration != 0 {
		w.Duration = strconv.AppendQuote(nil, e.Duration.String())
	}
	return json.Marshal(w)
}

// UnmarshalJSON decodes e, reading its duration as a Go duration string
// (or, as daemons before the string format sent it, nanoseconds).
func (e *LogEntry) UnmarshalJSON(b []byte) error {
	var w logEntryJSON
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	*e = LogEntry(w.logEntryFields)
	switch raw := w.Duration; {
	case len(raw) == 0 || string(raw) == "null":
	case raw[0] == '"':
		var str string
		if err := json.Unmarshal(raw, &str); err != nil {
			return errors.Wrapf(err, "log entry %d: duration", w.Seq)
		}
		d, err := time.ParseDuration(str)
		if err != nil {
			return errors.Wrapf(err, "log entry %d: duration", w.Seq)
		}
		e.Duration = d
	default:
		var ns int64
		if err := json.Unmarshal(raw, &ns); err != nil {
			return errors.Wrapf(err, "log entry %d: duration", w.Seq)
		}
		e.Duration = time.Duration(ns)
	}
	return nil
}

// Page is one page of a saga listing.
type Page struct {
	// Sagas are the page's sagas, newest first, without their Input and
	// Data (which have no size limit, and would make a page of many sagas
	// as large as all of them): Get a saga for those.
	Sagas []Saga `json:"sagas"`
	// NextCursor fetches the next page; empty on the last one.
	NextCursor string `json:"next_cursor,omitempty"`
}

// Started is the answer to a start that has not finished (yet).
type Started struct {
	ID     string `json:"id"`
	Status string `json:"status"`
}

// RetryRequest is the optional body of POST /v1/sagas/{id}/retry.
type RetryRequest struct {
	// Input, when set, replaces the saga's input for every attempt that
	// follows (see engine.RetryWithInput).
	Input json.RawMessage `json:"input,omitempty"`
}

// StartRequest is the body of POST /v1/sagas.
type StartRequest struct {
	Definition string          `json:"definition"`
	Input      json.RawMessage `json:"input,omitempty"`
	// IdempotencyKey, when set, makes the start safe to repeat (see
	// StartOptions.IdempotencyKey): valid UTF-8 of at most 256 bytes.
	IdempotencyKey string `json:"idempotency_key,omitempty"`
}

// ResolveRequest is the body of POST /v1/sagas/{id}/resolve.
type ResolveRequest struct {
	// Note says what was done by hand. Required.
	Note string `json:"note"`
	// By names who resolved it.
	By string `json:"by,omitempty"`
}

// CompleteRequest is the body of POST /v1/sagas/{id}/steps/{step}/complete:
// a participant's answer to a call it answered 202 Accepted (see
// engine.Engine.Complete).
type CompleteRequest struct {
	// Phase and Attempt name the call answered: its X-Saga-Phase and
	// X-Saga-Attempt headers.
	Phase   string `json:"phase"`
	Attempt int    `json:"attempt"`
	// Status means what an HTTP status of a synchronous answer means: 2xx
	// success, 4xx other than 408, 425 and 429 a failure for good, the
	// rest a failure that is retried.
	Status int `json:"status"`
	// Data is the step's output, on success.
	Data json.RawMessage `json:"data,omitempty"`
	// Error says why it failed.
	Error string `json:"error,omitempty"`
}

// Completed is the answer to a completion.
type Completed struct {
	// Applied is false when no attempt waited for this answer (answered
	// already, timed out): it was recorded in the saga's log and ignored.
	Applied bool `json:"applied"`
}

// Definition is a registered declarative definition.
type Definition struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	// Spec is the definition's JSON, as registered.
	Spec json.RawMessage `json:"spec,omitempty"`
	// Created is true when a PUT stored a new version.
	Created bool `json:"created,omitempty"`
}

// DefinitionVersion is one stored version of a definition.
type DefinitionVersion struct {
	Version string `json:"version"`
	// Latest is true for the version new sagas start on.
	Latest bool            `json:"latest,omitempty"`
	Spec   json.RawMessage `json:"spec"`
	// Unfinished counts the sagas running, compensating, paused or failed
	// on this version.
	Unfinished int `json:"unfinished"`
}

// OutboxEvent is an integration event in the outbox.
type OutboxEvent struct {
	ID         string            `json:"id"`
	SagaID     string            `json:"saga_id"`
	Definition string            `json:"definition"`
	Step       string            `json:"step,omitempty"`
	Name       string            `json:"name"`
	Exchange   string            `json:"exchange,omitempty"`
	RoutingKey string            `json:"routing_key"`
	Payload    json.RawMessage   `json:"payload"`
	Headers    map[string]string `json:"headers,omitempty"`
	CreatedAt  time.Time         `json:"created_at"`
	// Status is new, produced or not_produced.
	Status     string    `json:"status"`
	StatusAt   time.Time `json:"status_at,omitzero"`
	Attempts   int       `json:"attempts"`
	LastError  string    `json:"last_error,omitempty"`
	Compressed bool      `json:"compressed,omitempty"`
}

// OutboxPage is one page of an outbox listing.
type OutboxPage struct {
	Events     []OutboxEvent `json:"events"`
	NextCursor string        `json:"next_cursor,omitempty"`
}

// OutboxStats describes the outbox.
type OutboxStats struct {
	Counts struct {
		New         int64 `json:"new"`
		Produced    int64 `json:"produced"`
		NotProduced int64 `json:"not_produced"`
	} `json:"counts"`
	OldestNew         time.Time `json:"oldest_new,omitzero"`
	OldestNotProduced time.Time `json:"oldest_not_produced,omitzero"`
}

// Problem is an error answer (RFC 9457 problem details). The client
// returns it as the error of a failed call.
type Problem struct {
	Type     string `json:"type,omitempty"`
	Title    string `json:"title"`
	Status   int    `json:"status"`
	Detail   string `json:"detail,omitempty"`
	Instance string `json:"instance,omitempty"`
}

// Error implements error.
func (p *Problem) Error() string {
	if p.Detail != "" {
		return fmt.Sprintf("sagad: %d %s: %s", p.Status, p.Title, p.Detail)
	}
	return fmt.Sprintf("sagad: %d %s", p.Status, p.Title)
}
