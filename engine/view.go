package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/cockroachdb/errors"
	"github.com/cockroachdb/errors/errorspb"
	"github.com/gogo/protobuf/proto"
	"github.com/oklog/ulid/v2"

	"github.com/sagad/sagad/internal/errmark"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
)

// Saga is a saga instance as the engine reports it.
type Saga struct {
	ID          string
	Definition  string
	Fingerprint string
	Status      saga.Status
	// Input is the saga's input; Data the outputs of its succeeded steps.
	Input json.RawMessage
	Data  map[string]json.RawMessage
	// Err is why the saga compensated or failed (nil otherwise), with its
	// marks: errors.Is(s.Err, saga.ErrPermanent), ErrDeadline, ErrAborted,
	// with cockroachdb/errors' Is or the standard library's.
	Err            error
	IdempotencyKey string
	CreatedAt      time.Time
	UpdatedAt      time.Time
	// Deadline is when the saga must have finished going forward (zero: none).
	Deadline time.Time
	// WakeAt is when the saga's next attempt is due (zero: now, or never).
	WakeAt time.Time
	// Parked says why the engine does not drive the saga (its definition
	// version is not registered); empty when it is not parked.
	Parked string
	// PausedFrom is the status a paused saga resumes in (running or
	// compensating); empty unless it is paused.
	PausedFrom saga.Status
	// TraceID is the OpenTelemetry trace id of the saga's spans (32 hex
	// digits), empty when the saga is not traced (Options.TracerProvider).
	TraceID string
	Steps   []Step
}

// Step is the state of one step of a saga.
type Step struct {
	Name   string
	Status saga.StepStatus
	// Phase is the function last attempted (action, fallback, compensation).
	Phase saga.Phase
	// Attempts counts the action's attempts; CompensationAttempts the
	// compensation's.
	Attempts             int
	CompensationAttempts int
	// FallbackUsed is true when the step succeeded through its fallback.
	FallbackUsed bool
	// InFlight is true while an attempt is running (or was, when the process
	// died).
	InFlight bool
	// Waiting is true while the step's attempt waits for its participant's
	// answer (saga.ErrPending, an HTTP 202): since WaitingSince, at most
	// until WaitingUntil.
	Waiting                    bool
	WaitingSince, WaitingUntil time.Time
	// Error is the step's last error.
	Error string
}

// view is sagaView, with the start of the waits of steps that wait for an
// answer (their timeout is in the definition).
func (e *Engine) view(r *storage.Saga) *Saga {
	s := sagaView(r)
	for i := range s.Steps {
		if st := &s.Steps[i]; st.Waiting {
			if def := e.definition(r.Definition, r.Fingerprint); def != nil && i < len(def.Steps) {
				st.WaitingSince = st.WaitingUntil.Add(-attemptTimeout(&def.Steps[i]))
			}
		}
	}
	return s
}

func sagaView(r *storage.Saga) *Saga {
	s := &Saga{
		ID: r.ID.String(), Definition: r.Definition, Fingerprint: r.Fingerprint, Status: r.Status,
		Input: r.Input, Data: r.Data, IdempotencyKey: r.IdempotencyKey, CreatedAt: r.CreatedAt,
		UpdatedAt: r.UpdatedAt, Deadline: r.Deadline, WakeAt: r.WakeAt, Parked: r.Parked, PausedFrom: r.PausedFrom, TraceID: traceID(r.Trace),
		Steps: make([]Step, len(r.Steps)),
	}
	if r.Error != "" {
		s.Err = errmark.Std(decodeError(r.ErrorEnc, r.Error))
	}
	for i, st := range r.Steps {
		v := Step{Name: st.Name, Status: st.Status, Phase: st.Phase, Attempts: actionAttempts(&st),
			FallbackUsed: st.FallbackUsed, InFlight: st.InFlight, Error: st.Error}
		if st.Phase == saga.PhaseCompensation {
			v.CompensationAttempts = st.Attempts
		}
		if st.Pending {
			v.Waiting, v.WaitingUntil = true, st.Next
		}
		s.Steps[i] = v
	}
	return s
}

// encodeError encodes err for storage with its messages and marks, so that
// errors.Is works on it after decodeError.
func encodeError(err error) []byte {
	enc := errors.EncodeError(context.Background(), err)
	b, err := enc.Marshal()
	if err != nil {
		return nil
	}
	return b
}

// decodeError restores a stored error with its marks, or falls back to its
// message.
func decodeError(enc []byte, msg string) error {
	if len(enc) > 0 {
		var e errorspb.EncodedError
		if e.Unmarshal(enc) == nil {
			if err := errors.DecodeError(context.Background(), e); err != nil {
				return err
			}
		}
	}
	return errors.Newf("%s", msg)
}

// compensationFailed is the error of a saga whose compensation failed for
// good: its message is the compensation's failure; why, kept beside it
// (not in its chain, so that the failure carries none of the cause's
// marks), is why the saga compensated. Retrying the compensation restores
// why as the saga's error, marks and all. It survives storage through the
// encoder registered below.
type compensationFailed struct {
	cause error // the compensation's failure
	why   error // why the saga compensated
}

func (e *compensationFailed) Error() string                 { return e.cause.Error() }
func (e *compensationFailed) Unwrap() error                 { return e.cause }
func (e *compensationFailed) Format(s fmt.State, verb rune) { errors.FormatError(e, s, verb) }

func init() {
	key := errors.GetTypeKey(&compensationFailed{})
	errors.RegisterWrapperEncoder(key, func(ctx context.Context, err error) (string, []string, proto.Message) {
		why := errors.EncodeError(ctx, err.(*compensationFailed).why)
		return "", nil, &why
	})
	errors.RegisterWrapperDecoder(key, func(ctx context.Context, cause error, _ string, _ []string, payload proto.Message) error {
		enc, ok := payload.(*errorspb.EncodedError)
		if !ok {
			return cause
		}
		return &compensationFailed{cause: cause, why: errors.DecodeError(ctx, *enc)}
	})
}

// Output unmarshals the output of one of the saga's succeeded steps into v.
func (s *Saga) Output(step string, v any) error {
	raw, ok := s.Data[step]
	if !ok || len(raw) == 0 {
		return errors.Newf("engine: saga %s: no output from step %q", s.ID, step)
	}
	return errors.Wrapf(json.Unmarshal(raw, v), "engine: saga %s: decode output of %q", s.ID, step)
}

// Waits summarises the steps that wait for their participant's answer
// (saga.ErrPending, a command, an HTTP 202).
type Waits struct {
	// Steps counts them.
	Steps int
	// Oldest is when the longest of their waits began; zero when none
	// waits.
	Oldest time.Time
}

// Waits counts the steps that wait for an answer, in every unfinished saga
// that waits for something. It reads each such saga: its cost grows with
// them (sagad's /metrics reads it at most every 15 seconds).
func (e *Engine) Waits(ctx context.Context) (Waits, error) {
	var ids []ulid.ULID
	err := e.sagas.SagaUnfinished(ctx, func(id ulid.ULID, _ saga.Status, wake time.Time) bool {
		if !wake.IsZero() {
			ids = append(ids, id)
		}
		return true
	})
	if err != nil {
		return Waits{}, errors.Wrap(err, "engine: waits: list unfinished sagas")
	}
	var w Waits
	for _, id := range ids {
		r, err := e.sagas.SagaGet(ctx, id)
		if errors.Is(err, storage.ErrNotFound) {
			continue // pruned meanwhile
		}
		if err != nil {
			return Waits{}, errors.Wrapf(err, "engine: waits: read saga %s", id)
		}
		e.countWaits(r, &w)
	}
	// A paused saga's answer may still come: its step waits too.
	if err := e.eachListed(ctx, storage.ListOptions{Status: saga.StatusPaused}, func(r *storage.Saga) { e.countWaits(r, &w) }); err != nil {
		return Waits{}, errors.Wrap(err, "engine: waits: list paused sagas")
	}
	return w, nil
}

// countWaits adds the steps of r that wait for an answer to w.
func (e *Engine) countWaits(r *storage.Saga, w *Waits) {
	def := e.definition(r.Definition, r.Fingerprint)
	for i := range r.Steps {
		s := &r.Steps[i]
		if !s.Pending {
			continue
		}
		w.Steps++
		since := s.Next
		if def != nil && i < len(def.Steps) {
			since = s.Next.Add(-attemptTimeout(&def.Steps[i]))
		}
		if w.Oldest.IsZero() || since.Before(w.Oldest) {
			w.Oldest = since
		}
	}
}
