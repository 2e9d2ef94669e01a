package steps_test

import (
	"context"
	"encoding/json"
	"math"
	"strings"
	"testing"

	"github.com/cockroachdb/errors"

	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/steps"
)

type order struct {
	Item string `json:"item"`
	Qty  int    `json:"qty"`
}

type receipt struct {
	Order order  `json:"order"`
	Total int    `json:"total"`
	Step  string `json:"step"`
}

var errDeclined = errors.New("steps_test: declined")

func TestTyped(t *testing.T) {
	t.Parallel()

	// price echoes its input and the call it got, so the test sees what
	// Typed decoded and passed on.
	price := steps.Typed(func(ctx context.Context, c *saga.Call, in order) (receipt, error) {
		if in.Item == "declined" {
			return receipt{}, errDeclined
		}
		return receipt{Order: in, Total: in.Qty * 10, Step: c.Step}, nil
	})
	noOutput := steps.Typed(func(ctx context.Context, c *saga.Call, in order) (struct{}, error) {
		return struct{}{}, nil
	})
	pointerOut := steps.Typed(func(ctx context.Context, c *saga.Call, in order) (*receipt, error) {
		if in.Qty == 0 {
			return nil, nil
		}
		return &receipt{Total: in.Qty}, nil
	})
	badOutput := steps.Typed(func(ctx context.Context, c *saga.Call, in order) (float64, error) {
		return math.NaN(), nil
	})

	tests := []struct {
		name  string
		fn    saga.Func
		input string
		// want is the expected output JSON; "" means nil.
		want string
		// errIs, when set, is what the error must match; permanent says
		// whether it must be marked permanent.
		errIs     error
		errMsg    string
		wantErr   bool
		permanent bool
	}{
		{name: "decodes input, encodes output", fn: price, input: `{"item":"book","qty":2}`, want: `{"order":{"item":"book","qty":2},"total":20,"step":"charge"}`},
		{name: "no input gives the zero value", fn: price, input: "", want: `{"order":{"item":"","qty":0},"total":0,"step":"charge"}`},
		{name: "undecodable input is permanent", fn: price, input: `{"item":`, wantErr: true, permanent: true, errMsg: `step "charge": decode saga input as steps_test.order`},
		{name: "input of the wrong type is permanent", fn: price, input: `[1,2]`, wantErr: true, permanent: true, errMsg: "decode saga input"},
		{name: "function error returned as is, not permanent", fn: price, input: `{"item":"declined"}`, wantErr: true, errIs: errDeclined},
		{name: "empty struct output is nil", fn: noOutput, input: `{"item":"book"}`},
		{name: "nil pointer output is nil", fn: pointerOut, input: `{"qty":0}`},
		{name: "pointer output encoded", fn: pointerOut, input: `{"qty":3}`, want: `{"order":{"item":"","qty":0},"total":3,"step":""}`},
		{name: "unencodable output is permanent", fn: badOutput, input: `{}`, wantErr: true, permanent: true, errMsg: "encode output"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := &saga.Call{SagaID: "01J0000000000000000000000", Step: "charge", Phase: saga.PhaseAction, Attempt: 1}
			if tt.input != "" {
				c.Input = json.RawMessage(tt.input)
			}
			out, err := tt.fn(context.Background(), c)
			if !tt.wantErr {
				if err != nil {
					t.Fatalf("Func = %v, want success", err)
				}
				if tt.want == "" {
					if out != nil {
						t.Fatalf("output = %s, want nil", out)
					}
					return
				}
				if string(out) != tt.want {
					t.Fatalf("output = %s, want %s", out, tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("Func = nil error (output %s), want an error", out)
			}
			if out != nil {
				t.Errorf("output = %s alongside an error, want nil", out)
			}
			if got := saga.IsPermanent(err); got != tt.permanent {
				t.Errorf("IsPermanent(%q) = %v, want %v", err, got, tt.permanent)
			}
			if tt.errIs != nil && !errors.Is(err, tt.errIs) {
				t.Errorf("error = %v, want it to match %v", err, tt.errIs)
			}
			if tt.errMsg != "" && !strings.Contains(err.Error(), tt.errMsg) {
				t.Errorf("error = %q, want it to contain %q", err, tt.errMsg)
			}
		})
	}
}

func TestTypedPassesContextAndCall(t *testing.T) {
	t.Parallel()
	type key struct{}
	ctx := context.WithValue(context.Background(), key{}, "v")
	call := &saga.Call{Step: "s", Input: json.RawMessage(`"hello"`)}
	var gotCtx context.Context
	var gotCall *saga.Call
	var gotIn string
	fn := steps.Typed(func(ctx context.Context, c *saga.Call, in string) (int, error) {
		gotCtx, gotCall, gotIn = ctx, c, in
		return 7, nil
	})
	out, err := fn(ctx, call)
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != "7" {
		t.Errorf("output = %s, want 7", out)
	}
	if gotCtx == nil || gotCtx.Value(key{}) != "v" {
		t.Errorf("the typed function did not get the caller's context")
	}
	if gotCall != call {
		t.Errorf("the typed function got call %p, want the caller's %p", gotCall, call)
	}
	if gotIn != "hello" {
		t.Errorf("input = %q, want %q", gotIn, "hello")
	}
}

func TestNoop(t *testing.T) {
	t.Parallel()
	out, err := steps.Noop(context.Background(), &saga.Call{})
	if out != nil || err != nil {
		t.Errorf("Noop = %s, %v; want nil, nil", out, err)
	}
}
