package engine_test

import (
	"testing"

	"github.com/cockroachdb/errors"

	"github.com/sagad/sagad/saga"
)

func TestSmoke(t *testing.T) {
	t.Parallel()
	rec := &recorder{}
	def := &saga.Definition{Name: "order", Steps: []saga.Step{
		{Name: "reserve", Action: rec.ok("reserve", map[string]int{"n": 1}), Compensation: rec.ok("release", nil)},
		{Name: "charge", Action: rec.fail("charge", saga.Permanent(errors.New("card declined"))), Compensation: rec.ok("refund", nil)},
		{Name: "ship", Action: rec.ok("ship", nil)},
	}}
	b := setup(t, setupOpts{defs: []*saga.Definition{def}})
	s := b.run(t, "order", map[string]string{"id": "1"})
	if s.Status != saga.StatusCompensated {
		t.Fatalf("status %s, want compensated (err %v)", s.Status, s.Err)
	}
	if got, want := rec.list(), []string{"reserve", "charge", "release"}; !equal(got, want) {
		t.Fatalf("calls %v, want %v", got, want)
	}
	if !saga.IsPermanent(s.Err) {
		t.Fatalf("saga error %v should keep its permanent mark", s.Err)
	}
}
