package errmark

import (
	stderrors "errors"
	"fmt"
	"testing"

	"github.com/cockroachdb/errors"
)

func TestStdSeesMarks(t *testing.T) {
	t.Parallel()
	mark := errors.New("errmark test: mark")
	other := errors.New("errmark test: other")
	base := errors.New("errmark test: base")
	marked := errors.Mark(errors.Wrap(base, "context"), mark)
	if stderrors.Is(marked, mark) {
		t.Fatal("precondition: the standard library should not see a cockroachdb mark without Std")
	}
	tests := []struct {
		name string
		err  error
	}{
		{"marked", Std(marked)},
		{"wrapped by the standard library", fmt.Errorf("outer: %w", Std(marked))},
		{"wrapped by cockroachdb", errors.Wrap(Std(marked), "outer")},
		{"through a storage round trip", Std(errors.DecodeError(t.Context(), errors.EncodeError(t.Context(), marked)))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !stderrors.Is(tt.err, mark) || !errors.Is(tt.err, mark) {
				t.Errorf("Is(%v, mark): std %v, cockroachdb %v; want both true", tt.err,
					stderrors.Is(tt.err, mark), errors.Is(tt.err, mark))
			}
			if !stderrors.Is(tt.err, base) {
				t.Errorf("std Is(%v, base) = false, want true", tt.err)
			}
			if stderrors.Is(tt.err, other) || errors.Is(tt.err, other) {
				t.Errorf("Is(%v, other) = true, want false", tt.err)
			}
		})
	}
	if Std(nil) != nil {
		t.Error("Std(nil) != nil")
	}
	if e := Std(marked); Std(e) != e || e.Error() != marked.Error() {
		t.Error("Std is not idempotent or changes the message")
	}
}
