package bolt

import "github.com/cockroachdb/errors"

// Sentinel errors of the bbolt backend. It also returns storage's
// (storage.ErrCorrupt for a file that is not a bbolt database or is damaged,
// storage.ErrSchema for another schema version). Test for them with
// errors.Is from github.com/cockroachdb/errors.
var (
	// ErrLocked: another process holds the database file.
	ErrLocked = errors.New("storage: database file is locked by another process")
	// ErrNotSagad: the file is a bbolt database that sagad did not create.
	ErrNotSagad = errors.New("storage: not a sagad database")
	// ErrInconsistent marks the error CheckFile returns when it finds
	// problems.
	ErrInconsistent = errors.New("storage: database is inconsistent")
)
