package recovery

import "github.com/sagad/sagad/storage/bolt"

// Problem is one inconsistency a check found.
type Problem = bolt.Problem

// ErrInconsistent marks the error CheckFile returns when it finds problems.
var ErrInconsistent = bolt.ErrInconsistent

// Check runs the database's consistency check (bolt.DB.Check), with
// validate, when set, as the parser of stored declarative definitions
// (the daemon passes transport/httpstep's).
func Check(db *bolt.DB, validate func(name string, spec []byte) error) ([]Problem, error) {
	return db.Check(&bolt.CheckOptions{Definition: validate})
}

// CheckFile opens the database at path read-only, checks it (stored
// definitions are not parsed) and closes it. It returns an error marked
// ErrInconsistent listing every problem, or nil. Tests run it on every
// file they leave behind.
func CheckFile(path string) error { return bolt.CheckFile(path, nil) }
