package saga_test

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/cockroachdb/errors"

	"github.com/sagad/sagad/saga"
)

func ExampleDefinition_Validate() {
	act := func(context.Context, *saga.Call) (json.RawMessage, error) { return nil, nil }
	d := &saga.Definition{
		Name: "order",
		Steps: []saga.Step{
			{Name: "reserve", Action: act}, // no compensation before the pivot
			{Name: "charge", Action: act, Pivot: true},
			{Name: "ship", Action: act},
		},
	}
	err := d.Validate()
	fmt.Println(err)
	fmt.Println(errors.Is(err, saga.ErrInvalidDefinition))

	d.Steps[0].Compensation = act
	fmt.Println(d.Validate())
	// Output:
	// saga: definition "order": steps[0] ("reserve"): compensation: is required before the pivot "charge"
	// true
	// <nil>
}

func ExamplePermanent() {
	errDeclined := errors.New("card declined")
	charge := func(context.Context, *saga.Call) (json.RawMessage, error) {
		// Retrying a declined card cannot help: say so.
		return nil, saga.Permanent(errDeclined)
	}
	_, err := charge(context.Background(), &saga.Call{Step: "charge"})
	err = errors.Wrap(err, "step charge")
	fmt.Println(err)
	fmt.Println(saga.IsPermanent(err), errors.Is(err, errDeclined))
	fmt.Println(saga.IsPermanent(errors.New("connection reset")))
	// Output:
	// step charge: card declined
	// true true
	// false
}

// Mermaid draws a definition; in Markdown, put it in a ```mermaid block.
func ExampleDefinition_Mermaid() {
	noop := func(context.Context, *saga.Call) (json.RawMessage, error) { return nil, nil }
	def := &saga.Definition{Name: "order", Steps: []saga.Step{
		{Name: "reserve", Action: noop, Compensation: noop},
		{Name: "charge", Action: noop, Compensation: noop, Breaker: saga.BreakerPolicy{Name: "payments"}},
		{Name: "ship", Action: noop, Fallback: noop, Pivot: true},
	}}
	fmt.Print(def.Mermaid())
	// Output:
	// flowchart LR
	//   s0["reserve"]
	//   c0(["undo reserve"])
	//   s0 -.-> c0
	//   s1["charge<br/>breaker: payments"]
	//   c1(["undo charge"])
	//   s1 -.-> c1
	//   s2{{"ship<br/>pivot"}}
	//   f2[/"fallback of ship"/]
	//   s2 ==>|fails| f2
	//   s0 --> s1
	//   s1 --> s2
	//   c1 -.-> c0
}
