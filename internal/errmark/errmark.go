// Package errmark makes the marks of github.com/cockroachdb/errors visible
// to the standard library's errors.Is.
//
// cockroachdb/errors' Mark adds a mark that only its own Is can see; an
// application that tests a sagad error with the standard library's
// errors.Is would miss it. Std wraps an error in a type whose Is method
// asks cockroachdb/errors, so both see the same marks.
package errmark

import (
	"fmt"

	"github.com/cockroachdb/errors"
)

// Std returns err wrapped so that the standard library's errors.Is reports
// every mark and cause that cockroachdb/errors' Is reports. The message is
// err's. Std(nil) is nil; wrapping twice is a no-op.
func Std(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := err.(*stdIs); ok {
		return err
	}
	return &stdIs{cause: err}
}

type stdIs struct{ cause error }

func (e *stdIs) Error() string { return e.cause.Error() }
func (e *stdIs) Unwrap() error { return e.cause }

// Is lets the standard library's errors.Is see cockroachdb/errors' marks.
// cockroachdb/errors' own Is calls it too, on the cause only: no loop.
func (e *stdIs) Is(target error) bool { return errors.Is(e.cause, target) }

// Format keeps %+v's details (stack traces) of the cause.
func (e *stdIs) Format(s fmt.State, verb rune) { errors.FormatError(e, s, verb) }
