package storage

import (
	"encoding/binary"
	"encoding/json"
	"time"

	"github.com/cockroachdb/errors"
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
	// LogSeq is the sequence number of the saga's last log entry.
	LogSeq uint32 `json:"log_seq"`
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
	EventResumed          Event = "resumed"
	EventRetryRequested   Event = "retry_requested"
	EventResolved         Event = "resolved"
)

// statusCodes maps statuses to the one-byte codes used in keys and headers.
var statusCodes = map[saga.Status]byte{
	saga.StatusRunning:      1,
	saga.StatusCompensating: 2,
	saga.StatusCompleted:    3,
	saga.StatusCompensated:  4,
	saga.StatusFailed:       5,
	saga.StatusResolved:     6,
}

// headerLen is the fixed prefix of a stored saga: status code (1 byte),
// wake time (8, unix nanos) and the key of its newest log entry (8), so
// index and log maintenance read the old values without decoding JSON.
const headerLen = 17

// Header is the fixed prefix of a stored saga record.
type Header struct {
	Status byte
	// Wake is the wake time in unix nanoseconds; 0 for none.
	Wake int64
	// LogHead is the key of the saga's newest log entry; 0 for none.
	LogHead uint64
}

// DecodeHeader parses the header of a stored saga value. It returns false
// when the value is too short to hold one.
func DecodeHeader(v []byte) (Header, bool) {
	if len(v) < headerLen {
		return Header{}, false
	}
	return Header{Status: v[0], Wake: int64(binary.BigEndian.Uint64(v[1:])), LogHead: binary.BigEndian.Uint64(v[9:])}, true
}

// logHeaderLen is the fixed prefix of a stored log entry: the key of the
// saga's previous entry (8 bytes, 0 for none) and the saga's id (16).
const logHeaderLen = 24

// Encoded is a saga record encoded for storage. Encode outside the write
// transaction (EncodeSaga) to keep the committer's work short.
type Encoded struct {
	ID     ulid.ULID
	status byte
	wake   int64
	value  []byte
}

// EncodeSaga encodes s for SagaPut.
func EncodeSaga(s *Saga) (*Encoded, error) {
	code, ok := statusCodes[s.Status]
	if !ok {
		return nil, errors.Newf("storage: saga %s: unknown status %q", s.ID, s.Status)
	}
	var wake int64 // 0: none; a wake-up before 1970 is due, as 1 ns is
	if !s.WakeAt.IsZero() {
		wake = int64(max(stamp(s.WakeAt), 1))
	}
	buf := make([]byte, headerLen, 512)
	buf[0] = code
	binary.BigEndian.PutUint64(buf[1:], uint64(wake))
	return &Encoded{ID: s.ID, status: code, wake: wake, value: appendSaga(buf, s)}, nil
}

// DecodeSaga decodes a stored saga record: key is the saga's id, value the
// stored bytes. It fails with ErrCorrupt on anything malformed.
func DecodeSaga(key, value []byte) (*Saga, error) { return decodeSaga(key, value) }

// EncodedLog is a log entry encoded for SagaPut.
type EncodedLog struct {
	value []byte // logHeaderLen bytes, filled in by SagaPut, then JSON
}

// EncodeLog encodes e for SagaPut.
func EncodeLog(e *LogEntry) EncodedLog {
	return EncodedLog{value: appendLog(make([]byte, logHeaderLen, 192), e)}
}

func statusKey(code byte, id ulid.ULID) []byte {
	k := make([]byte, 17)
	k[0] = code
	copy(k[1:], id[:])
	return k
}

func dueKey(wake int64, id ulid.ULID) []byte {
	k := make([]byte, 24)
	binary.BigEndian.PutUint64(k, uint64(wake))
	copy(k[8:], id[:])
	return k
}
