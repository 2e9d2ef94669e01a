package engine_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/cockroachdb/errors"

	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/saga"
)

var errOutOfStock = errors.New("out of stock")

// TestStoredErrorKeepsMarks checks that a saga's error survives storage
// with its message and marks, and gains none.
func TestStoredErrorKeepsMarks(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name  string
		err   error
		marks []error
	}{
		{"permanent, wrapped", errors.Wrapf(saga.Permanent(errors.Newf("answered %d: %q", 422, "declined")), "step %q", "charge"),
			[]error{saga.ErrPermanent}},
		{"deadline", errors.Wrapf(engine.ErrDeadline, "deadline %s", "2026-11-23T10:00:00Z"), []error{engine.ErrDeadline}},
		{"aborted", engine.ErrAborted, []error{engine.ErrAborted}},
		{"user mark", errors.Mark(errors.Wrap(fmt.Errorf("stock service: %w", context.DeadlineExceeded), "reserve"), errOutOfStock),
			[]error{errOutOfStock, context.DeadlineExceeded}},
		{"joined", errors.Join(saga.Permanent(errors.New("a")), errors.Wrap(errOutOfStock, "b")),
			[]error{saga.ErrPermanent, errOutOfStock}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			enc := engine.EncodeError(tt.err)
			if len(enc) == 0 {
				t.Fatal("not encoded")
			}
			got := engine.DecodeError(enc, "fallback")
			if got.Error() != tt.err.Error() {
				t.Errorf("message %q, want %q", got.Error(), tt.err.Error())
			}
			for _, m := range tt.marks {
				if !errors.Is(got, m) {
					t.Errorf("errors.Is(decoded, %v) = false", m)
				}
			}
			if errors.Is(got, errors.New("unrelated")) || (!errors.Is(tt.err, saga.ErrPermanent) && saga.IsPermanent(got)) {
				t.Errorf("decoded error gained a mark")
			}
		})
	}
}

// TestStoredErrorFallsBackToItsMessage checks that an error whose encoding
// is missing or damaged still reads back as its message.
func TestStoredErrorFallsBackToItsMessage(t *testing.T) {
	t.Parallel()
	for _, enc := range [][]byte{nil, []byte("not a protobuf")} {
		if got := engine.DecodeError(enc, "declined"); got == nil || got.Error() != "declined" || saga.IsPermanent(got) {
			t.Errorf("DecodeError(%q) = %v, want the message alone", enc, got)
		}
	}
}
