package steps

import (
	"context"
	"encoding/json"

	"github.com/cockroachdb/errors"

	"github.com/sagad/sagad/saga"
)

// Typed adapts a typed function to a saga.Func. The saga's input is
// decoded into In (a decoding error is permanent: retrying cannot fix it)
// and the returned Out is encoded as the step's output. Use struct{} for a
// step without output.
func Typed[In, Out any](f func(ctx context.Context, c *saga.Call, in In) (Out, error)) saga.Func {
	return func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
		var in In
		if len(c.Input) > 0 {
			if err := json.Unmarshal(c.Input, &in); err != nil {
				return nil, saga.Permanent(errors.Wrapf(err, "step %q: decode saga input as %T", c.Step, in))
			}
		}
		out, err := f(ctx, c, in)
		if err != nil {
			return nil, err
		}
		raw, err := json.Marshal(out)
		if err != nil {
			return nil, saga.Permanent(errors.Wrapf(err, "step %q: encode output %T", c.Step, out))
		}
		if string(raw) == "{}" || string(raw) == "null" {
			return nil, nil
		}
		return raw, nil
	}
}

// Noop is a step function that does nothing and succeeds.
func Noop(context.Context, *saga.Call) (json.RawMessage, error) { return nil, nil }
