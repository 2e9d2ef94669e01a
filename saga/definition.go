package saga

import (
	"crypto/sha256"
	"encoding/hex"
	"math"
	"regexp"
	"strconv"
	"time"

	"github.com/cockroachdb/errors"

	"github.com/sagad/sagad/internal/dag"
	"github.com/sagad/sagad/internal/errmark"
)

// MaxSteps is the most steps a definition may have. It bounds the size of a
// saga's record (rewritten on every transition) and of per-step metrics.
const MaxSteps = 100

// Definition is a named, ordered list of steps. Register it with the engine
// before starting sagas of that name.
type Definition struct {
	// Name identifies the definition; sagas are started by name. It matches
	// [A-Za-z0-9][A-Za-z0-9._-]{0,127}.
	Name string
	// Steps run in order, each once the one listed before it has
	// succeeded, unless a step names the steps it waits for (Step.After):
	// then steps whose dependencies have all succeeded run at the same
	// time. At least one.
	Steps []Step
	// Timeout is the saga's deadline, measured from Start. A saga still
	// running at its deadline is compensated, not abandoned. Zero: none.
	Timeout time.Duration
	// Events turns on lifecycle events for this definition's sagas.
	Events Events
	// Version, when set, names this version of the definition in place of
	// the fingerprint of its step names (see Fingerprint). Declarative
	// definitions set it to a hash of their whole text, so that a changed
	// URL or policy is a new version and running sagas keep the old one. It
	// matches the same pattern as Name.
	Version string
}

// Events configures the integration events a definition emits on its own.
type Events struct {
	// Lifecycle writes an outbox event when a saga starts and when it ends
	// (saga.started, saga.completed, saga.compensated, saga.failed,
	// saga.resolved) and for every step that succeeded or was compensated
	// (step.succeeded, step.compensated), in the same transaction as the
	// change it describes.
	Lifecycle bool
	// Exchange is the exchange lifecycle events are published to. Empty: the
	// relay's default exchange.
	Exchange string
}

// Step is one unit of a saga: an action and, optionally, how to undo it.
type Step struct {
	// Name is unique within the definition; it matches the same pattern as
	// Definition.Name. It keys the step's output in Call.Data.
	Name string
	// Action does the step's work. Required, unless Commands.Action
	// sends it to the participant as a message instead.
	Action Func
	// Compensation undoes a succeeded Action. Optional: a step without one
	// (and without Commands.Compensation) is skipped during compensation.
	Compensation Func
	// Fallback runs once when Action has failed for good (attempts or time
	// exhausted, a permanent error, or the circuit breaker open). If it
	// succeeds, the step counts as succeeded and the saga goes on.
	Fallback Func
	// Commands sends phases of the step to a participant that answers
	// later, as messages through the outbox (see Command), in place of
	// their Func. A phase has a Func or a Command, not both.
	Commands Commands
	// Retry is the Action's retry policy. The zero value retries 3 times in
	// all (see RetryPolicy for the defaults).
	Retry RetryPolicy
	// CompensationRetry is the Compensation's retry policy. Its zero value
	// allows 10 attempts; when they are used up the saga ends failed.
	CompensationRetry RetryPolicy
	// Timeout bounds each attempt of Action, Fallback and Compensation (a
	// context deadline). Zero: 30 seconds. A timed-out attempt is retried.
	Timeout time.Duration
	// Breaker names the circuit breaker that guards this step's participant.
	// Steps (of any definition) that name the same breaker share it. The zero
	// value means no breaker.
	Breaker BreakerPolicy
	// Pivot marks the point of no return. Every step before the pivot must
	// have a compensation. Once the pivot has succeeded the saga can only go
	// forward: later steps are retried and never compensated, and a later step
	// that fails for good ends the saga failed. In a saga with parallel
	// steps, every other step must come before the pivot or after it.
	Pivot bool
	// After names the steps this one waits for: it starts once all of them
	// have succeeded, at the same time as any other step whose wait is
	// over. Nil: the step listed before it (none for the first), so that a
	// definition without After is a straight line. AtStart (an empty,
	// non-nil list): none; the step starts with the saga. When a saga
	// turns around, a step's compensation starts once the compensations of
	// the succeeded steps that wait for it have ended.
	After []string
}

// Command builds the message that asks a step's participant to act, for a
// phase whose participant answers later by message (Step.Commands). When
// the engine starts an attempt of the phase, it calls the Command with the
// attempt's Call and writes the message to the outbox in the same commit
// that records the attempt as started, so that no message is lost and none
// is sent for an attempt that was not recorded. A relay publishes it, with
// the attempt's identity as headers (Idempotency-Key, X-Saga-Id,
// X-Saga-Definition, X-Saga-Step, X-Saga-Phase, X-Saga-Attempt) and a
// correlation id "<saga id>/<step>/<phase>/<attempt>". The step then waits,
// holding no goroutine, for the answer (Engine.Complete; a reply consumer
// such as transport/rabbitmq's Replies calls it) until its Timeout, as
// for a Func that returns ErrPending.
//
// The Event's Exchange is taken as it is: empty is the broker's default
// exchange, which routes on the queue's name. A Command must have no side
// effects and give the same message for the same Call: it may run more
// than once for one attempt. An error fails the attempt, with the meaning
// a Func's error has.
type Command func(c *Call) (Event, error)

// Commands are the phases of a step whose participant is reached by a
// message (see Command). Nil fields are phases run by the step's Funcs.
type Commands struct {
	Action       Command
	Compensation Command
	Fallback     Command
}

// Any reports whether the step sends any phase as a command.
func (c *Commands) Any() bool { return c.Action != nil || c.Compensation != nil || c.Fallback != nil }

// For returns the Command of phase p, or nil.
func (c *Commands) For(p Phase) Command {
	switch p {
	case PhaseAction:
		return c.Action
	case PhaseCompensation:
		return c.Compensation
	case PhaseFallback:
		return c.Fallback
	}
	return nil
}

// HasCompensation reports whether the step can be undone: it has a
// Compensation or a Commands.Compensation.
func (s *Step) HasCompensation() bool { return s.Compensation != nil || s.Commands.Compensation != nil }

// HasFallback reports whether the step has a Fallback or a
// Commands.Fallback.
func (s *Step) HasFallback() bool { return s.Fallback != nil || s.Commands.Fallback != nil }

// AtStart is the After of a step that waits for no other step: it starts
// with the saga. Any empty, non-nil slice means the same.
var AtStart = []string{}

// RetryPolicy says how often and how fast an attempt is repeated. Intervals
// grow exponentially with jitter, as computed by
// github.com/cenkalti/backoff/v4. Zero fields take the documented defaults.
type RetryPolicy struct {
	// MaxAttempts is the total number of attempts, the first included.
	// Zero: 3 for actions, 10 for compensations. Negative: unlimited.
	MaxAttempts int
	// InitialInterval is the wait before the second attempt. Zero: 100ms.
	InitialInterval time.Duration
	// MaxInterval caps the wait between attempts, a participant's
	// Retry-After included. Zero: 30s, or InitialInterval if that is longer.
	MaxInterval time.Duration
	// Multiplier grows the interval after every attempt. Zero: 2.
	Multiplier float64
	// Jitter randomises each interval by ±Jitter (a fraction of it).
	// Zero: 0.5. Negative: no jitter.
	Jitter float64
	// MaxElapsed gives up on new attempts once this much time has passed
	// since the first attempt of the phase. Zero: no limit.
	MaxElapsed time.Duration
}

// WithDefaults returns p with zero fields set to their defaults; attempts is
// the default for MaxAttempts.
func (p RetryPolicy) WithDefaults(attempts int) RetryPolicy {
	if p.MaxAttempts == 0 {
		p.MaxAttempts = attempts
	}
	if p.InitialInterval == 0 {
		p.InitialInterval = 100 * time.Millisecond
	}
	if p.MaxInterval == 0 {
		p.MaxInterval = max(30*time.Second, p.InitialInterval)
	}
	if p.Multiplier == 0 {
		p.Multiplier = 2
	}
	switch {
	case p.Jitter == 0:
		p.Jitter = 0.5
	case p.Jitter < 0:
		p.Jitter = 0
	}
	return p
}

func (p RetryPolicy) validate() error {
	switch {
	case p.InitialInterval < 0:
		return errors.Newf("initial interval %s is negative", p.InitialInterval)
	case p.MaxInterval < 0:
		return errors.Newf("max interval %s is negative", p.MaxInterval)
	case p.MaxInterval != 0 && p.MaxInterval < p.InitialInterval:
		return errors.Newf("max interval %s is below initial interval %s", p.MaxInterval, p.InitialInterval)
	case p.Multiplier != 0 && (p.Multiplier < 1 || math.IsNaN(p.Multiplier) || math.IsInf(p.Multiplier, 0)):
		return errors.Newf("multiplier %v is not a finite number >= 1", p.Multiplier)
	case p.Jitter >= 1 || math.IsNaN(p.Jitter):
		return errors.Newf("jitter %v is not below 1", p.Jitter)
	case p.MaxElapsed < 0:
		return errors.Newf("max elapsed %s is negative", p.MaxElapsed)
	}
	return nil
}

// BreakerPolicy configures a named circuit breaker
// (github.com/sony/gobreaker/v2). While the breaker is open, attempts fail
// fast without calling the participant: a step with a fallback goes to it at
// once, a step without one waits for the breaker to half-open without using
// up its attempts.
type BreakerPolicy struct {
	// Name identifies the breaker; empty means no breaker. Every step naming
	// it must give the same settings.
	Name string
	// Failures is the number of consecutive failed attempts that opens the
	// breaker. Zero: 5.
	Failures uint32
	// OpenFor is how long the breaker stays open before it lets trial
	// requests through (half-open). Zero: 30s.
	OpenFor time.Duration
	// HalfOpenRequests is how many trial requests the half-open breaker lets
	// through; that many successes close it. Zero: 1.
	HalfOpenRequests uint32
}

// WithDefaults returns b with zero fields set to their defaults.
func (b BreakerPolicy) WithDefaults() BreakerPolicy {
	if b.Failures == 0 {
		b.Failures = 5
	}
	if b.OpenFor == 0 {
		b.OpenFor = 30 * time.Second
	}
	if b.HalfOpenRequests == 0 {
		b.HalfOpenRequests = 1
	}
	return b
}

var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// Validate reports the first problem with d, naming the field at fault, as
// an error marked with ErrInvalidDefinition.
func (d *Definition) Validate() error {
	if err := d.validate(); err != nil {
		return errmark.Std(errors.Mark(err, ErrInvalidDefinition))
	}
	return nil
}

func (d *Definition) validate() error {
	if d == nil {
		return errors.New("saga: definition is nil")
	}
	if !namePattern.MatchString(d.Name) {
		return errors.Newf("saga: definition name %q: must match %s", d.Name, namePattern)
	}
	if d.Version != "" && !namePattern.MatchString(d.Version) {
		return errors.Newf("saga: definition %q: version %q must match %s", d.Name, d.Version, namePattern)
	}
	if len(d.Steps) == 0 {
		return errors.Newf("saga: definition %q: steps: at least one step is required", d.Name)
	}
	if len(d.Steps) > MaxSteps {
		return errors.Newf("saga: definition %q: steps: %d steps, more than the limit of %d", d.Name, len(d.Steps), MaxSteps)
	}
	if d.Timeout < 0 {
		return errors.Newf("saga: definition %q: timeout %s is negative", d.Name, d.Timeout)
	}
	seen := make(map[string]int, len(d.Steps))
	pivot := -1
	for i, s := range d.Steps {
		field := func(f string) string {
			return "saga: definition " + strconv.Quote(d.Name) + ": steps[" + strconv.Itoa(i) + "] (" + strconv.Quote(s.Name) + "): " + f
		}
		if !namePattern.MatchString(s.Name) {
			return errors.Newf("%s must match %s", field("name"), namePattern)
		}
		if j, dup := seen[s.Name]; dup {
			return errors.Newf("%s duplicates steps[%d]", field("name"), j)
		}
		seen[s.Name] = i
		if s.Action == nil && s.Commands.Action == nil {
			return errors.Newf("%s is required (a Func, or Commands.Action)", field("action"))
		}
		for _, p := range []struct {
			name string
			both bool
		}{
			{"action", s.Action != nil && s.Commands.Action != nil},
			{"compensation", s.Compensation != nil && s.Commands.Compensation != nil},
			{"fallback", s.Fallback != nil && s.Commands.Fallback != nil},
		} {
			if p.both {
				return errors.Newf("%s has both a Func and a Command; give one", field(p.name))
			}
		}
		if s.Timeout < 0 {
			return errors.Newf("%s %s is negative", field("timeout"), s.Timeout)
		}
		if err := s.Retry.validate(); err != nil {
			return errors.Wrap(err, field("retry"))
		}
		if err := s.CompensationRetry.validate(); err != nil {
			return errors.Wrap(err, field("compensation retry"))
		}
		if s.Breaker.Name != "" && !namePattern.MatchString(s.Breaker.Name) {
			return errors.Newf("%s %q must match %s", field("breaker name"), s.Breaker.Name, namePattern)
		}
		if s.Breaker.Name != "" && s.Commands.Any() {
			return errors.Newf("%s: the step sends commands, whose answers a breaker does not see; a breaker guards steps whose phases are all calls", field("breaker"))
		}
		if s.Breaker.Name == "" && s.Breaker != (BreakerPolicy{}) {
			return errors.Newf("%s has settings but no name", field("breaker"))
		}
		if s.Breaker.OpenFor < 0 {
			return errors.Newf("%s %s is negative", field("breaker open_for"), s.Breaker.OpenFor)
		}
		if s.Pivot {
			if pivot >= 0 {
				return errors.Newf("%s: steps[%d] (%q) is already the pivot", field("pivot"), pivot, d.Steps[pivot].Name)
			}
			pivot = i
		}
	}
	g, p := d.graph()
	if p != nil {
		f := "after"
		if p.Ref >= 0 {
			f += "[" + strconv.Itoa(p.Ref) + "]"
		}
		return errors.Newf("saga: definition %q: steps[%d] (%q): %s: %s", d.Name, p.Step, d.Steps[p.Step].Name, f, p.Msg)
	}
	if pivot < 0 {
		return nil
	}
	pv := d.Steps[pivot].Name
	for i, s := range d.Steps {
		switch {
		case i == pivot:
		case !g.Related(i, pivot):
			return errors.Newf("saga: definition %q: steps[%d] (%q): pivot: the step runs alongside the pivot %q; every step must come before the pivot or after it",
				d.Name, i, s.Name, pv)
		case g.Before(i, pivot) && !s.HasCompensation():
			return errors.Newf("saga: definition %q: steps[%d] (%q): compensation: is required before the pivot %q", d.Name, i, s.Name, pv)
		case g.Before(pivot, i) && s.HasCompensation():
			return errors.Newf("saga: definition %q: steps[%d] (%q): compensation: a step after the pivot %q is never compensated", d.Name, i, s.Name, pv)
		}
	}
	return nil
}

// graph resolves the steps' After lists.
func (d *Definition) graph() (*dag.Graph, *dag.Problem) {
	names := make([]string, len(d.Steps))
	after := make([][]string, len(d.Steps))
	for i, s := range d.Steps {
		names[i], after[i] = s.Name, s.After
	}
	return dag.New(names, after)
}

// PivotIndex returns the index of the pivot step, or -1 when there is none.
func (d *Definition) PivotIndex() int {
	for i, s := range d.Steps {
		if s.Pivot {
			return i
		}
	}
	return -1
}

// Fingerprint identifies the definition's version: Version if set, else a
// hash of everything in it that changes how its sagas run: its name, its
// timeout and events, and for every step in order its name, which functions
// it has (not their code, which cannot be hashed), its policies, timeout,
// breaker and pivot. Every saga records the fingerprint it started with and
// is only ever driven by a definition with the same fingerprint.
func (d *Definition) Fingerprint() string {
	if d.Version != "" {
		return d.Version
	}
	h := sha256.New()
	b := make([]byte, 0, 256)
	b = strconv.AppendQuote(b, d.Name)
	b = strconv.AppendInt(append(b, " timeout="...), int64(d.Timeout), 10)
	b = strconv.AppendBool(append(b, " lifecycle="...), d.Events.Lifecycle)
	b = strconv.AppendQuote(append(b, " exchange="...), d.Events.Exchange)
	h.Write(b)
	for i, s := range d.Steps {
		b = strconv.AppendQuote(append(b[:0], "\nstep "...), s.Name)
		b = strconv.AppendBool(append(b, " compensation="...), s.HasCompensation())
		b = strconv.AppendBool(append(b, " fallback="...), s.HasFallback())
		// Absent without commands, so that definitions written before
		// them keep their fingerprints.
		if c := s.Commands; c.Any() {
			b = strconv.AppendBool(append(b, " commands="...), c.Action != nil)
			b = strconv.AppendBool(append(b, ","...), c.Compensation != nil)
			b = strconv.AppendBool(append(b, ","...), c.Fallback != nil)
		}
		b = appendPolicy(append(b, " retry="...), s.Retry)
		b = appendPolicy(append(b, " compensation_retry="...), s.CompensationRetry)
		b = strconv.AppendInt(append(b, " timeout="...), int64(s.Timeout), 10)
		b = strconv.AppendQuote(append(b, " breaker="...), s.Breaker.Name)
		b = strconv.AppendUint(append(b, ","...), uint64(s.Breaker.Failures), 10)
		b = strconv.AppendInt(append(b, ","...), int64(s.Breaker.OpenFor), 10)
		b = strconv.AppendUint(append(b, ","...), uint64(s.Breaker.HalfOpenRequests), 10)
		b = strconv.AppendBool(append(b, " pivot="...), s.Pivot)
		// Absent when it says what no After says, so that a straight line
		// keeps the fingerprint it had before steps could run in parallel.
		if s.After != nil && !(i == 0 && len(s.After) == 0) && !(i > 0 && len(s.After) == 1 && s.After[0] == d.Steps[i-1].Name) {
			b = append(b, " after="...)
			for _, a := range s.After {
				b = strconv.AppendQuote(append(b, ","...), a)
			}
		}
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}

func appendPolicy(b []byte, p RetryPolicy) []byte {
	b = strconv.AppendInt(b, int64(p.MaxAttempts), 10)
	for _, d := range []time.Duration{p.InitialInterval, p.MaxInterval, p.MaxElapsed} {
		b = strconv.AppendInt(append(b, ","...), int64(d), 10)
	}
	b = strconv.AppendFloat(append(b, ","...), p.Multiplier, 'g', -1, 64)
	return strconv.AppendFloat(append(b, ","...), p.Jitter, 'g', -1, 64)
}

// LegacyFingerprint is the fingerprint sagad gave a definition without a
// Version before Fingerprint covered its policies: a hash of its name and
// step names. The engine accepts it for sagas started before the change, so
// that they keep running after an upgrade. Definitions with a Version have
// no legacy fingerprint (the empty string).
func (d *Definition) LegacyFingerprint() string {
	if d.Version != "" {
		return ""
	}
	h := sha256.New()
	h.Write([]byte(d.Name))
	for _, s := range d.Steps {
		h.Write([]byte{0})
		h.Write([]byte(s.Name))
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}
