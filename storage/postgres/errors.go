package postgres

import "github.com/cockroachdb/errors"

// Sentinel errors of the PostgreSQL backend; it also returns storage's.
// Test for them with errors.Is from github.com/cockroachdb/errors.
var (
	// ErrLocked: another process has the schema open. One engine drives a
	// schema's sagas at a time.
	ErrLocked = errors.New("postgres: the schema is in use by another process")
	// ErrLockLost: the connection that held the schema's lock was lost;
	// writes are refused until it is held again, since another process
	// may have taken the schema meanwhile.
	ErrLockLost = errors.New("postgres: lost the schema's lock")
)
