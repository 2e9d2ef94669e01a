package saga

import (
	"time"

	"github.com/cockroachdb/errors"

	"github.com/sagad/sagad/internal/errmark"
)

// ErrPermanent marks an error that retrying cannot fix. Wrap an error with
// Permanent to return it; test for it with IsPermanent.
var ErrPermanent = errors.New("saga: permanent failure")

// ErrPending is what a step function returns when the participant took
// the call and answers later (an HTTP 202, a command sent to a queue): the
// attempt is recorded as waiting and holds no goroutine and no concurrency
// slot until its answer comes through engine.Engine.Complete, or its
// step's Timeout passes (then it failed with an unknown outcome, and its
// retry policy applies). Return it as is or wrapped.
var ErrPending = errors.New("saga: pending: the participant answers later")

// ErrInvalidDefinition is the mark on every error Validate returns.
var ErrInvalidDefinition = errors.New("saga: invalid definition")

// ErrOutcomeUnknown marks an error after which the participant may have
// acted: a call that timed out, a connection dropped after the request was
// sent, an answer that could not be read. Wrap an error with OutcomeUnknown
// to return it; test for it with IsOutcomeUnknown.
var ErrOutcomeUnknown = errors.New("saga: outcome unknown")

// Permanent marks err as permanent: the engine does not retry the attempt
// that returned it and goes to the step's fallback, or to compensation. The
// returned error keeps err's message and its own marks. Both
// cockroachdb/errors' Is and the standard library's errors.Is see the mark.
// Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return errmark.Std(errors.Mark(err, ErrPermanent))
}

// OutcomeUnknown marks err as an attempt whose effect is unknown: the
// participant may have acted. The engine treats it as it treats an attempt
// cut off by its timeout: the attempt is retried (unless err is also
// permanent) and, if the saga turns around, the step is compensated even
// though it never succeeded. The mark survives storage and is seen by both
// cockroachdb/errors' Is and the standard library's errors.Is.
// OutcomeUnknown(nil) is nil.
func OutcomeUnknown(err error) error {
	if err == nil {
		return nil
	}
	return errmark.Std(errors.Mark(err, ErrOutcomeUnknown))
}

// IsOutcomeUnknown reports whether err, or an error it wraps, was marked
// with OutcomeUnknown.
func IsOutcomeUnknown(err error) bool {
	return errors.Is(err, ErrOutcomeUnknown)
}

// IsPermanent reports whether err, or an error it wraps, was marked with
// Permanent. The mark survives storage in the engine's database.
func IsPermanent(err error) bool {
	return errors.Is(err, ErrPermanent)
}

// RetryAfter wraps err with the earliest time the participant wants the next
// attempt (an HTTP Retry-After, a rate limit's reset). The engine waits at
// least d before the next attempt, even when the backoff policy would retry
// sooner, but never longer than the policy's MaxInterval: a participant
// cannot park a saga for longer than its definition allows. RetryAfter(nil,
// d) is nil.
func RetryAfter(err error, d time.Duration) error {
	if err == nil {
		return nil
	}
	return &retryAfterError{cause: err, after: d}
}

// RetryAfterDelay returns the delay carried by an error built with RetryAfter,
// and false when err carries none.
func RetryAfterDelay(err error) (time.Duration, bool) {
	var ra *retryAfterError
	if errors.As(err, &ra) {
		return ra.after, true
	}
	return 0, false
}

type retryAfterError struct {
	cause error
	after time.Duration
}

func (e *retryAfterError) Error() string { return e.cause.Error() }
func (e *retryAfterError) Unwrap() error { return e.cause }
