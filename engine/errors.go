package engine

import "github.com/cockroachdb/errors"

// Sentinel errors returned by the engine. Test for them with errors.Is from
// github.com/cockroachdb/errors.
var (
	// ErrUnknownDefinition: no definition of that name is registered.
	ErrUnknownDefinition = errors.New("engine: unknown definition")
	// ErrNotFound: no saga with that id.
	ErrNotFound = errors.New("engine: saga not found")
	// ErrInvalidID: the string is not a saga id (a ULID).
	ErrInvalidID = errors.New("engine: invalid saga id")
	// ErrClosed: the engine is closed or closing.
	ErrClosed = errors.New("engine: closed")
	// ErrRunning: Run was called while the engine was already running.
	ErrRunning = errors.New("engine: already running")
	// ErrConflict: the saga's state does not allow the operation (abort of a
	// finished saga, retry of a saga that has not failed, ...).
	ErrConflict = errors.New("engine: operation not allowed in the saga's state")
	// ErrInvalidInput: the input cannot be encoded as JSON, or an argument
	// (an idempotency key, a note) is not acceptable.
	ErrInvalidInput = errors.New("engine: invalid input")
	// ErrKeyReused: Start was given an idempotency key that names a saga
	// started with another input. Errors with this mark are also marked
	// ErrConflict.
	ErrKeyReused = errors.New("engine: idempotency key names a saga started with another input")
	// ErrTooLarge marks the error of a step whose output is over
	// Options.MaxStepOutput or would take the saga's data over
	// Options.MaxSagaData. Such an error is also permanent.
	ErrTooLarge = errors.New("engine: step output too large")
	// ErrDeadline is the cause recorded when a saga passes its deadline.
	ErrDeadline = errors.New("engine: saga deadline exceeded")
	// ErrAborted is the cause recorded when a saga is aborted.
	ErrAborted = errors.New("engine: saga aborted")
	// ErrBreakerOpen is the cause recorded when a step's circuit breaker was
	// open and its fallback was used instead.
	ErrBreakerOpen = errors.New("engine: circuit breaker open")
	// errPanic marks the error of a step function that panicked.
	errPanic = errors.New("engine: step panicked")
	// errShutdown cancels attempts cut off by Close; their outcome is not
	// recorded and recovery re-runs them.
	errShutdown = errors.New("engine: shutting down")
)
