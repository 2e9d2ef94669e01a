package saga

import (
	"context"
	"encoding/json"
	"sync"

	"github.com/cockroachdb/errors"
)

// Func is what a step runs: its action, its compensation or its fallback.
//
// It returns the step's output as JSON (nil for none). An action's or
// fallback's output is stored as Data[step] and passed to every later step
// and to compensations. A compensation's output is recorded in the step log
// only. The engine keeps the returned slice: do not change it afterwards.
// The Call's Input and Data are the Func's own copies, free to change.
//
// A Func must honour ctx: it carries the attempt's timeout and the saga's
// deadline. It must be idempotent for a given Call.IdempotencyKey, because the
// engine runs it at least once: again after a crash, and on every retry.
type Func func(ctx context.Context, c *Call) (json.RawMessage, error)

// Phase says which of a step's functions a Call is for.
type Phase string

// Phases.
const (
	PhaseAction       Phase = "action"
	PhaseFallback     Phase = "fallback"
	PhaseCompensation Phase = "compensation"
)

// Call describes one attempt of a step function. The engine builds a new Call
// for every attempt; a Func may keep no reference to it after returning.
type Call struct {
	// SagaID is the saga instance's id (a ULID string).
	SagaID string
	// Definition is the saga's definition name.
	Definition string
	// Step is the step's name.
	Step string
	// Phase says whether this is the action, the fallback or the compensation.
	Phase Phase
	// Attempt counts attempts of this phase, from 1. An attempt that was in
	// flight when the process died is run again with the same number.
	Attempt int
	// IdempotencyKey is stable across retries and restarts for one saga, step
	// and phase ("<saga id>/<step>/<phase>"), so a participant can
	// de-duplicate. Action, fallback and compensation have different keys.
	IdempotencyKey string
	// Input is the saga's input, as given to Start.
	Input json.RawMessage
	// Data holds the outputs of the steps that succeeded before this one, by
	// step name. It is the caller's copy: changing it changes nothing stored.
	Data map[string]json.RawMessage

	mu     sync.Mutex
	events []Event
	tx     Tx
	sealed bool
}

// DecodeInput unmarshals the saga's input into v.
func (c *Call) DecodeInput(v any) error {
	if len(c.Input) == 0 {
		return errors.Newf("saga %s: step %q: no input", c.SagaID, c.Step)
	}
	return errors.Wrapf(json.Unmarshal(c.Input, v), "saga %s: step %q: decode input", c.SagaID, c.Step)
}

// Output unmarshals the stored output of an earlier step into v. It fails if
// that step produced no output.
func (c *Call) Output(step string, v any) error {
	raw, ok := c.Data[step]
	if !ok || len(raw) == 0 {
		return errors.Newf("saga %s: step %q: no output from step %q", c.SagaID, c.Step, step)
	}
	return errors.Wrapf(json.Unmarshal(raw, v), "saga %s: step %q: decode output of %q", c.SagaID, c.Step, step)
}
