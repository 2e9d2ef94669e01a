package storage

import "github.com/cockroachdb/errors"

// Sentinel errors every backend returns for these conditions. Test for them
// with errors.Is from github.com/cockroachdb/errors.
var (
	// ErrNotFound: no saga with that id.
	ErrNotFound = errors.New("storage: saga not found")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("storage: store is closed")
	// ErrCorrupt: stored data cannot be read: a damaged record, or a
	// database the backend cannot open as its own.
	ErrCorrupt = errors.New("storage: stored data is corrupt")
	// ErrSchema: the database was written by a sagad with a schema version
	// this one does not know.
	ErrSchema = errors.New("storage: unsupported schema version")
	// ErrEventNotFound: no outbox event with that id.
	ErrEventNotFound = errors.New("storage: outbox event not found")
	// ErrEventPending: the outbox event is new (waiting to be published),
	// and the operation is only for events the relay is done with.
	ErrEventPending = errors.New("storage: outbox event waiting to be published")
	// ErrClaimed: another live process drives the saga (see SagaClaim).
	ErrClaimed = errors.New("storage: saga is driven by another process")
	// ErrNotOwner: a transition of a saga whose claim this process no
	// longer holds (it lapsed, and another process took the saga over);
	// nothing was written.
	ErrNotOwner = errors.New("storage: this process no longer holds the saga's claim")
	// ErrNoWrite is what a check passed to AbortPut returns to write
	// nothing without failing: AbortPut then returns nil.
	ErrNoWrite = errors.New("storage: nothing to write")
)
