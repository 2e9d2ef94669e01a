package storage

import (
	"encoding/json"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/sagad/sagad/saga"
)

// Saga is the stored state of one saga instance.
type Saga struct {
	// ID is the saga's key; it is not repeated in the stored value.
	ID          ulid.ULID   `json:"-"`
	Definition  string      `json:"definition"`
	Fingerprint string      `json:"fingerprint"`
	Status      saga.Status `json:"status"`
	// Input is the saga's input; Data the outputs of succeeded steps by name.
	Input json.RawMessage            `json:"input,omitempty"`
	Data  map[string]json.RawMessage `json:"data,omitempty"`
	Steps []Step                     `json:"steps"`
	// IdempotencyKey is the key the saga was started with, if any.
	IdempotencyKey string `json:"idempotency_key,omitempty"`
	// Error is why the saga compensated or failed. ErrorEnc keeps the same
	// error with its marks (github.com/cockroachdb/errors EncodeError).
	Error     string    `json:"error,omitempty"`
	ErrorEnc  []byte    `json:"error_enc,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
	// Deadline is when the saga must stop going forward; zero for none.
	Deadline time.Time `json:"deadline,omitzero"`
	// WakeAt is when the saga's next attempt is due; zero when it is due now
	// or finished. It is mirrored in the due index.
	WakeAt time.Time `json:"wake_at,omitzero"`
	// Parked says why the engine will not drive the saga (its definition is
	// missing or has another fingerprint); empty when it is not parked.
	Parked string `json:"parked,omitempty"`
	// PausedFrom is the status a paused saga resumes in: running or
	// compensating. Empty unless the saga is paused.
	PausedFrom saga.Status `json:"paused_from,omitempty"`
	// LogSeq is the sequence number of the saga's last log entry.
	LogSeq uint32 `json:"log_seq"`
	// Trace is the W3C traceparent of the saga's span when the engine
	// traces it (engine.Options.TracerProvider), TraceState its
	// tracestate: a saga that outlives its process continues its trace.
	// Empty when the saga is not traced.
	Trace      string `json:"trace,omitempty"`
	TraceState string `json:"trace_state,omitempty"`
}

// Step is the stored state of one step of a saga.
type Step struct {
	Name   string          `json:"name"`
	Status saga.StepStatus `json:"status"`
	// Phase is the function being attempted: action, fallback or compensation.
	Phase saga.Phase `json:"phase,omitempty"`
	// InFlight is true from the moment an attempt is recorded as started until
	// its outcome is recorded. A step found in flight at start-up is in doubt.
	InFlight bool `json:"in_flight,omitempty"`
	// Attempts counts attempts of the current phase.
	Attempts int `json:"attempts,omitempty"`
	// PhaseStarted is when the first attempt of the current phase started.
	PhaseStarted time.Time `json:"phase_started,omitzero"`
	// ActionAttempts keeps the action's attempt count once the step moved on
	// to its fallback or compensation.
	ActionAttempts int `json:"action_attempts,omitempty"`
	// FallbackUsed is true when the step succeeded through its fallback.
	FallbackUsed bool `json:"fallback_used,omitempty"`
	// OutcomeUnknown is true when the step's last attempt was cut off
	// without an answer (its timeout, or the saga's deadline): it may have
	// taken effect, so the step is compensated if the saga turns around.
	OutcomeUnknown bool `json:"outcome_unknown,omitempty"`
	// Error is the last error of the step.
	Error string `json:"error,omitempty"`
	// Pending is true while the step's current attempt waits for the
	// participant's answer (saga.ErrPending); Next is then when it stops
	// waiting.
	Pending bool `json:"pending,omitempty"`
	// GaveUp is true when the step's compensation failed for good while
	// attempts of other steps were in flight: the saga fails once they
	// have ended.
	GaveUp bool `json:"gave_up,omitempty"`
	// Next is when the step's next attempt is due (a retry's backoff, an
	// open breaker's wait); zero when it is due now. The saga's WakeAt is
	// the earliest of its steps'.
	Next time.Time `json:"next,omitzero"`
}

// LogEntry is one record in a saga's append-only step log.
type LogEntry struct {
	Seq uint32    `json:"seq"`
	At  time.Time `json:"at"`
	// Event says what happened (see the Event constants).
	Event   Event      `json:"event"`
	Step    string     `json:"step,omitempty"`
	Phase   saga.Phase `json:"phase,omitempty"`
	Attempt int        `json:"attempt,omitempty"`
	// Status is the saga's status after the event.
	Status   saga.Status   `json:"status,omitempty"`
	Duration time.Duration `json:"duration,omitempty"`
	Error    string        `json:"error,omitempty"`
	// Next is when the next attempt is due, on a failed attempt that will be
	// retried and on a wait for an open circuit breaker.
	Next time.Time `json:"next,omitzero"`
	Note string    `json:"note,omitempty"`
	// OutcomeUnknown is set on a failed attempt whose participant may have
	// acted: it was cut off by its timeout or the saga's deadline, or
	// failed with saga.ErrOutcomeUnknown.
	OutcomeUnknown bool `json:"outcome_unknown,omitempty"`
	// InputChange is set on an input_replaced entry. A pointer: entries
	// are built on the hot path, where their size counts.
	*InputChange
}

// InputChange is the saga's new and old input, on an input_replaced log
// entry.
type InputChange struct {
	Input     json.RawMessage `json:"input,omitempty"`
	PrevInput json.RawMessage `json:"prev_input,omitempty"`
}

// Event names a kind of log entry.
type Event string

// Log events.
const (
	EventStarted          Event = "saga_started"
	EventAttemptStarted   Event = "attempt_started"
	EventAttemptSucceeded Event = "attempt_succeeded"
	EventAttemptFailed    Event = "attempt_failed"
	EventInDoubt          Event = "attempt_in_doubt"
	EventBreakerOpen      Event = "breaker_open"
	EventStatus           Event = "status_changed"
	EventAbortRequested   Event = "abort_requested"
	EventParked           Event = "parked"
	EventInputReplaced    Event = "input_replaced"
	EventPauseRequested   Event = "pause_requested"
	EventPaused           Event = "paused"
	EventUnpaused         Event = "unpaused"
	EventAttemptPending   Event = "attempt_pending"
	EventAnswerIgnored    Event = "answer_ignored"
	EventResumed          Event = "resumed"
	EventRetryRequested   Event = "retry_requested"
	EventResolved         Event = "resolved"
)

// StoredDefinition is one stored version of a declarative definition.
type StoredDefinition struct {
	Name    string
	Version string
	Spec    []byte
	// Latest is true for the version registered last.
	Latest bool
}

// Problem is one inconsistency a backend's consistency check found.
type Problem struct {
	// Kind is a short code: "index-missing-saga", "log-missing", ...
	Kind string `json:"kind"`
	// Detail says exactly what is wrong and where.
	Detail string `json:"detail"`
}
