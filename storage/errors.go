package storage

import "github.com/cockroachdb/errors"

// Sentinel errors. Test for them with errors.Is from
// github.com/cockroachdb/errors.
var (
	// ErrLocked: another process holds the database file.
	ErrLocked = errors.New("storage: database file is locked by another process")
	// ErrNotSagad: the file is a bbolt database that sagad did not create.
	ErrNotSagad = errors.New("storage: not a sagad database")
	// ErrSchema: the file was written by a sagad with another schema version.
	ErrSchema = errors.New("storage: unsupported schema version")
	// ErrCorrupt: the file is not a bbolt database, or it is damaged.
	ErrCorrupt = errors.New("storage: database file is corrupt or not a bbolt file")
	// ErrNotFound: no saga with that id.
	ErrNotFound = errors.New("storage: saga not found")
	// ErrClosed: the database was closed.
	ErrClosed = errors.New("storage: database is closed")
	// ErrEventNotFound: no outbox event with that id.
	ErrEventNotFound = errors.New("storage: outbox event not found")
	// ErrEventPending: the outbox event is new (waiting to be published),
	// and the operation is only for events the relay is done with.
	ErrEventPending = errors.New("storage: outbox event waiting to be published")
	// ErrNoWrite is what a check passed to AbortPut returns to write
	// nothing without failing: AbortPut then returns nil.
	ErrNoWrite = errors.New("storage: nothing to write")
	// ErrInconsistent marks the error CheckFile returns when it finds
	// problems.
	ErrInconsistent = errors.New("storage: database is inconsistent")
)
