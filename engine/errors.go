package engine

import (
	"fmt"

	"github.com/cockroachdb/errors"
)

// Sentinel errors returned by the engine. Test for them with errors.Is from
// github.com/cockroachdb/errors. Their messages say what happened; the
// errors that carry them say where ("engine: abort saga 01J...: it is
// completed: not allowed in the saga's state").
var (
	// ErrUnknownDefinition: no definition of that name is registered.
	ErrUnknownDefinition = errors.New("unknown definition")
	// ErrNotFound: no saga with that id.
	ErrNotFound = errors.New("saga not found")
	// ErrInvalidID: the string is not a saga id (a ULID).
	ErrInvalidID = errors.New("invalid saga id")
	// ErrClosed: the engine is closed or closing.
	ErrClosed = errors.New("engine closed")
	// ErrRunning: Run was called while the engine was already running.
	ErrRunning = errors.New("engine already running")
	// ErrConflict: the saga's state does not allow the operation (abort of a
	// finished saga, retry of a saga that has not failed, ...).
	ErrConflict = errors.New("not allowed in the saga's state")
	// ErrInvalidInput: the input cannot be encoded as JSON, or an argument
	// (an idempotency key, a note) is not acceptable.
	ErrInvalidInput = errors.New("invalid input")
	// ErrKeyReused: Start was given an idempotency key that names a saga
	// started with another input. Errors with this mark are also marked
	// ErrConflict.
	ErrKeyReused = errors.New("idempotency key names a saga started with another input")
	// ErrTooLarge marks the error of a step whose output is over
	// Options.MaxStepOutput or would take the saga's data over
	// Options.MaxSagaData. Such an error is also permanent.
	ErrTooLarge = errors.New("step output too large")
	// ErrDeadline is the cause recorded when a saga passes its deadline.
	ErrDeadline = errors.New("saga deadline exceeded")
	// ErrAborted is the cause recorded when a saga is aborted.
	ErrAborted = errors.New("saga aborted")
	// ErrBreakerOpen is the cause recorded when a step's circuit breaker was
	// open and its fallback was used instead.
	ErrBreakerOpen = errors.New("circuit breaker open")
	// errPanic marks the error of a step function that panicked.
	errPanic = errors.New("step panicked")
	// errShutdown cancels attempts cut off by Close; their outcome is not
	// recorded and recovery re-runs them.
	errShutdown = errors.New("engine shutting down")
)

// plural is n with the noun, plural unless n is 1: "1 attempt", "3 attempts".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
