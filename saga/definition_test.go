package saga_test

import (
	"context"
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/errors"

	"github.com/sagad/sagad/saga"
)

func noop(context.Context, *saga.Call) (json.RawMessage, error) { return nil, nil }

func cmd(c *saga.Call) (saga.Event, error) {
	return saga.Event{Name: "do", Payload: json.RawMessage(`{}`)}, nil
}

// step returns a valid step named name with an action and a compensation.
func step(name string) saga.Step {
	return saga.Step{Name: name, Action: noop, Compensation: noop}
}

// def returns a valid definition with the given steps.
func def(steps ...saga.Step) *saga.Definition {
	return &saga.Definition{Name: "order", Steps: steps}
}

// with returns s changed by f, so table rows can start from a valid step.
func with(s saga.Step, f func(*saga.Step)) saga.Step {
	f(&s)
	return s
}

// requireInvalid fails unless err is marked ErrInvalidDefinition and its
// message contains every one of wants.
func requireInvalid(t *testing.T, err error, wants ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("Validate() = nil, want an error marked ErrInvalidDefinition containing %q", wants)
	}
	if !errors.Is(err, saga.ErrInvalidDefinition) {
		t.Errorf("Validate() = %q, want it marked with saga.ErrInvalidDefinition", err)
	}
	for _, w := range wants {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("Validate() = %q, want the message to contain %q", err, w)
		}
	}
}

func TestDefinitionValidate(t *testing.T) {
	t.Parallel()

	retryCases := []struct {
		name   string
		policy saga.RetryPolicy
		want   string
	}{
		{"negative initial interval", saga.RetryPolicy{InitialInterval: -time.Second}, "initial interval -1s is negative"},
		{"negative max interval", saga.RetryPolicy{MaxInterval: -time.Second}, "max interval -1s is negative"},
		{"max below initial", saga.RetryPolicy{InitialInterval: 2 * time.Second, MaxInterval: time.Second}, "below initial interval"},
		{"multiplier below 1", saga.RetryPolicy{Multiplier: 0.5}, "multiplier"},
		{"multiplier NaN", saga.RetryPolicy{Multiplier: math.NaN()}, "multiplier"},
		{"multiplier infinite", saga.RetryPolicy{Multiplier: math.Inf(1)}, "multiplier"},
		{"jitter 1", saga.RetryPolicy{Jitter: 1}, "jitter"},
		{"jitter above 1", saga.RetryPolicy{Jitter: 1.5}, "jitter"},
		{"jitter NaN", saga.RetryPolicy{Jitter: math.NaN()}, "jitter"},
		{"negative max elapsed", saga.RetryPolicy{MaxElapsed: -time.Second}, "max elapsed -1s is negative"},
	}

	tests := []struct {
		name string
		def  *saga.Definition
		// wants are substrings of the error; nil means the definition is valid.
		wants []string
	}{
		{name: "valid single step", def: def(saga.Step{Name: "a", Action: noop})},
		{
			name: "valid with pivot and every option",
			def: &saga.Definition{
				Name:    "Order.v2_x-y",
				Timeout: time.Minute,
				Steps: []saga.Step{
					{
						Name: "reserve", Action: noop, Compensation: noop, Fallback: noop,
						Retry:             saga.RetryPolicy{MaxAttempts: -1, InitialInterval: time.Second, MaxInterval: time.Second, Multiplier: 1, Jitter: -1, MaxElapsed: time.Hour},
						CompensationRetry: saga.RetryPolicy{MaxAttempts: 20, Jitter: 0.99},
						Timeout:           time.Second,
						Breaker:           saga.BreakerPolicy{Name: "payments", Failures: 3, OpenFor: time.Second, HalfOpenRequests: 2},
					},
					{Name: "charge", Action: noop, Pivot: true},
					{Name: "ship", Action: noop},
				},
			},
		},
		{name: "pivot first without compensation", def: def(saga.Step{Name: "a", Action: noop, Pivot: true}, saga.Step{Name: "b", Action: noop})},
		{name: "pivot with its own compensation", def: def(step("a"), with(step("p"), func(s *saga.Step) { s.Pivot = true }))},
		{name: "nil definition", def: nil, wants: []string{"nil"}},
		{name: "empty name", def: &saga.Definition{Name: "", Steps: []saga.Step{step("a")}}, wants: []string{"definition name"}},
		{name: "name with space", def: &saga.Definition{Name: "my order", Steps: []saga.Step{step("a")}}, wants: []string{"definition name", `"my order"`}},
		{name: "name starting with dash", def: &saga.Definition{Name: "-order", Steps: []saga.Step{step("a")}}, wants: []string{"definition name"}},
		{name: "name too long", def: &saga.Definition{Name: strings.Repeat("a", 129), Steps: []saga.Step{step("a")}}, wants: []string{"definition name"}},
		{name: "no steps", def: &saga.Definition{Name: "order"}, wants: []string{`"order"`, "steps", "at least one"}},
		{name: "negative saga timeout", def: &saga.Definition{Name: "order", Steps: []saga.Step{step("a")}, Timeout: -time.Second}, wants: []string{"timeout", "negative"}},
		{name: "bad step name", def: def(step("a"), step("b c")), wants: []string{"steps[1]", `"b c"`, "name"}},
		{name: "empty step name", def: def(step("")), wants: []string{"steps[0]", "name"}},
		{name: "duplicate step names", def: def(step("a"), step("b"), step("a")), wants: []string{"steps[2]", `"a"`, "duplicates steps[0]"}},
		{name: "missing action", def: def(step("a"), saga.Step{Name: "b"}), wants: []string{"steps[1]", `"b"`, "action", "required"}},
		{name: "command action", def: def(saga.Step{Name: "a", Commands: saga.Commands{Action: cmd, Compensation: cmd}, Fallback: noop})},
		{name: "command before the pivot counts as compensation", def: def(saga.Step{Name: "a", Action: noop, Commands: saga.Commands{Compensation: cmd}}, with(step("p"), func(s *saga.Step) { s.Pivot = true; s.Compensation = nil }))},
		{name: "action func and command", def: def(saga.Step{Name: "a", Action: noop, Commands: saga.Commands{Action: cmd}}), wants: []string{`"a"`, "action", "both a Func and a Command"}},
		{name: "compensation func and command", def: def(saga.Step{Name: "a", Action: noop, Compensation: noop, Commands: saga.Commands{Compensation: cmd}}), wants: []string{"compensation", "both"}},
		{name: "fallback func and command", def: def(saga.Step{Name: "a", Action: noop, Fallback: noop, Commands: saga.Commands{Fallback: cmd}}), wants: []string{"fallback", "both"}},
		{name: "breaker on a command", def: def(saga.Step{Name: "a", Commands: saga.Commands{Action: cmd}, Breaker: saga.BreakerPolicy{Name: "b"}}), wants: []string{`"a"`, "breaker", "commands"}},
		{name: "breaker on a command compensation", def: def(saga.Step{Name: "a", Action: noop, Commands: saga.Commands{Compensation: cmd}, Breaker: saga.BreakerPolicy{Name: "b"}}), wants: []string{`"a"`, "breaker", "commands"}},
		{name: "command after the pivot", def: def(with(step("p"), func(s *saga.Step) { s.Pivot = true }), saga.Step{Name: "b", Action: noop, Commands: saga.Commands{Compensation: cmd}}), wants: []string{`"b"`, "never compensated"}},
		{name: "negative step timeout", def: def(with(step("a"), func(s *saga.Step) { s.Timeout = -1 })), wants: []string{"steps[0]", `"a"`, "timeout", "negative"}},
		{name: "breaker settings without name", def: def(with(step("a"), func(s *saga.Step) { s.Breaker.Failures = 3 })), wants: []string{`"a"`, "breaker", "no name"}},
		{name: "breaker open_for without name", def: def(with(step("a"), func(s *saga.Step) { s.Breaker.OpenFor = time.Second })), wants: []string{`"a"`, "breaker", "no name"}},
		{name: "bad breaker name", def: def(with(step("a"), func(s *saga.Step) { s.Breaker.Name = "no spaces" })), wants: []string{"breaker name", `"no spaces"`}},
		{name: "negative breaker open_for", def: def(with(step("a"), func(s *saga.Step) { s.Breaker = saga.BreakerPolicy{Name: "b", OpenFor: -time.Second} })), wants: []string{"breaker open_for", "negative"}},
		{
			name:  "two pivots",
			def:   def(with(step("a"), func(s *saga.Step) { s.Pivot = true }), saga.Step{Name: "b", Action: noop, Pivot: true}),
			wants: []string{"steps[1]", `"b"`, "pivot", `steps[0] ("a") is already the pivot`},
		},
		{
			name:  "step before pivot without compensation",
			def:   def(step("a"), saga.Step{Name: "b", Action: noop}, saga.Step{Name: "p", Action: noop, Pivot: true}),
			wants: []string{"steps[1]", `"b"`, "compensation", "before the pivot", `"p"`},
		},
		{name: "after names no step", def: def(step("a"), with(step("b"), func(s *saga.Step) { s.After = []string{"a", "x"} })),
			wants: []string{`steps[1] ("b"): after[1]: "x" names no step`}},
		{name: "after names itself", def: def(step("a"), with(step("b"), func(s *saga.Step) { s.After = []string{"b"} })),
			wants: []string{`steps[1] ("b"): after[0]`, "itself"}},
		{name: "after names a step twice", def: def(step("a"), with(step("b"), func(s *saga.Step) { s.After = []string{"a", "a"} })),
			wants: []string{`steps[1] ("b"): after[1]: "a" is named twice`}},
		{name: "after forms a cycle", def: def(with(step("a"), func(s *saga.Step) { s.After = []string{"c"} }), step("b"), step("c")),
			wants: []string{`steps[0] ("a"): after[0]: forms a cycle: "a" waits for "c" waits for "b" waits for "a"`}},
		{name: "step alongside the pivot", def: def(step("a"), saga.Step{Name: "p", Action: noop, Pivot: true},
			with(step("b"), func(s *saga.Step) { s.After = []string{"a"} })),
			wants: []string{`steps[2] ("b"): pivot: the step runs alongside the pivot "p"`}},
		{
			name:  "step after pivot with compensation",
			def:   def(saga.Step{Name: "p", Action: noop, Pivot: true}, saga.Step{Name: "b", Action: noop}, step("c")),
			wants: []string{"steps[2]", `"c"`, "compensation", "after the pivot", `"p"`},
		},
	}
	for _, rc := range retryCases {
		tests = append(tests,
			struct {
				name  string
				def   *saga.Definition
				wants []string
			}{
				name:  "retry: " + rc.name,
				def:   def(step("a"), with(step("b"), func(s *saga.Step) { s.Retry = rc.policy })),
				wants: []string{"steps[1]", `"b"`, "): retry: ", rc.want},
			},
			struct {
				name  string
				def   *saga.Definition
				wants []string
			}{
				name:  "compensation retry: " + rc.name,
				def:   def(step("a"), with(step("b"), func(s *saga.Step) { s.CompensationRetry = rc.policy })),
				wants: []string{"steps[1]", `"b"`, "compensation retry: ", rc.want},
			},
		)
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := tt.def.Validate()
			if tt.wants == nil {
				if err != nil {
					t.Fatalf("Validate() = %q, want nil", err)
				}
				return
			}
			requireInvalid(t, err, tt.wants...)
		})
	}
}

func TestDefinitionPivotIndex(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		def  *saga.Definition
		want int
	}{
		{"none", def(step("a"), step("b")), -1},
		{"first", def(saga.Step{Name: "a", Action: noop, Pivot: true}), 0},
		{"last", def(step("a"), step("b"), saga.Step{Name: "c", Action: noop, Pivot: true}), 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := tt.def.PivotIndex(); got != tt.want {
				t.Errorf("PivotIndex() = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestDefinitionFingerprint(t *testing.T) {
	t.Parallel()
	failing := func(context.Context, *saga.Call) (json.RawMessage, error) { return nil, errors.New("boom") }
	base := &saga.Definition{Name: "order", Steps: []saga.Step{step("reserve"), step("charge"), step("ship")}}
	baseFP := base.Fingerprint()
	if len(baseFP) != 16 {
		t.Fatalf("Fingerprint() = %q, want 16 hex digits", baseFP)
	}
	// with returns a copy of base changed by f.
	with := func(f func(*saga.Definition)) *saga.Definition {
		d := *base
		d.Steps = append([]saga.Step(nil), base.Steps...)
		f(&d)
		return &d
	}
	// Running sagas record it: a straight line's must not change.
	if want := "f84b5acde1dce998"; baseFP != want {
		t.Errorf("Fingerprint() = %s, want %s (the fingerprint running sagas hold must not change)", baseFP, want)
	}
	// The fingerprint before it covered policies; files written then hold it.
	if got, want := base.LegacyFingerprint(), "e1f37050364a0352"; got != want {
		t.Errorf("LegacyFingerprint() = %s, want %s (the fingerprint older files hold must not change)", got, want)
	}
	if v := (&saga.Definition{Name: "x", Version: "v1"}); v.LegacyFingerprint() != "" || v.Fingerprint() != "v1" {
		t.Errorf("a versioned definition: Fingerprint %q, LegacyFingerprint %q; want v1 and none", v.Fingerprint(), v.LegacyFingerprint())
	}

	tests := []struct {
		name string
		def  *saga.Definition
		same bool
	}{
		{"same names and order", &saga.Definition{Name: "order", Steps: []saga.Step{step("reserve"), step("charge"), step("ship")}}, true},
		{
			name: "other functions with the same roles",
			def: &saga.Definition{Name: "order", Steps: []saga.Step{
				{Name: "reserve", Action: failing, Compensation: failing}, step("charge"), {Name: "ship", Action: noop, Compensation: failing},
			}},
			same: true,
		},
		{"saga timeout", with(func(d *saga.Definition) { d.Timeout = time.Hour }), false},
		{"lifecycle events", with(func(d *saga.Definition) { d.Events.Lifecycle = true }), false},
		{"events exchange", with(func(d *saga.Definition) { d.Events.Exchange = "x" }), false},
		{"a fallback added", with(func(d *saga.Definition) { d.Steps[0].Fallback = noop }), false},
		{"a compensation removed", with(func(d *saga.Definition) { d.Steps[2].Compensation = nil }), false},
		{"retry attempts", with(func(d *saga.Definition) { d.Steps[0].Retry.MaxAttempts = 9 }), false},
		{"retry interval", with(func(d *saga.Definition) { d.Steps[0].Retry.InitialInterval = time.Second }), false},
		{"retry multiplier", with(func(d *saga.Definition) { d.Steps[0].Retry.Multiplier = 3 }), false},
		{"retry jitter", with(func(d *saga.Definition) { d.Steps[0].Retry.Jitter = -1 }), false},
		{"compensation retry", with(func(d *saga.Definition) { d.Steps[1].CompensationRetry.MaxElapsed = time.Hour }), false},
		{"step timeout", with(func(d *saga.Definition) { d.Steps[1].Timeout = time.Minute }), false},
		{"breaker", with(func(d *saga.Definition) { d.Steps[1].Breaker = saga.BreakerPolicy{Name: "pay"} }), false},
		{"breaker settings", with(func(d *saga.Definition) { d.Steps[1].Breaker = saga.BreakerPolicy{Name: "pay", Failures: 2} }), false},
		{"pivot", with(func(d *saga.Definition) { d.Steps[2].Pivot = true }), false},
		{"action sent as a command", with(func(d *saga.Definition) { d.Steps[0].Action, d.Steps[0].Commands.Action = nil, cmd }), false},
		{"compensation sent as a command", with(func(d *saga.Definition) { d.Steps[0].Compensation, d.Steps[0].Commands.Compensation = nil, cmd }), false},
		{"after spelling out the line", with(func(d *saga.Definition) {
			d.Steps[0].After, d.Steps[1].After, d.Steps[2].After = saga.AtStart, []string{"reserve"}, []string{"charge"}
		}), true},
		{"parallel steps", with(func(d *saga.Definition) { d.Steps[2].After = []string{"reserve"} }), false},
		{"a second root", with(func(d *saga.Definition) { d.Steps[1].After = saga.AtStart }), false},
		{"steps reordered", &saga.Definition{Name: "order", Steps: []saga.Step{step("charge"), step("reserve"), step("ship")}}, false},
		{"step renamed", &saga.Definition{Name: "order", Steps: []saga.Step{step("reserve"), step("pay"), step("ship")}}, false},
		{"step added", &saga.Definition{Name: "order", Steps: []saga.Step{step("reserve"), step("charge"), step("ship"), step("mail")}}, false},
		{"step removed", &saga.Definition{Name: "order", Steps: []saga.Step{step("reserve"), step("charge")}}, false},
		{"definition renamed", &saga.Definition{Name: "order2", Steps: []saga.Step{step("reserve"), step("charge"), step("ship")}}, false},
		// Names are separated, so moving a boundary changes the fingerprint.
		{"boundary moved", &saga.Definition{Name: "order", Steps: []saga.Step{step("reservecharge"), step("ship")}}, false},
		{"name boundary moved", &saga.Definition{Name: "orderreserve", Steps: []saga.Step{step("charge"), step("ship")}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := tt.def.Fingerprint()
			if tt.same && got != baseFP {
				t.Errorf("Fingerprint() = %s, want %s (same as the base definition)", got, baseFP)
			}
			if !tt.same && got == baseFP {
				t.Errorf("Fingerprint() = %s, want it to differ from the base definition's", got)
			}
		})
	}
}

func TestRetryPolicyWithDefaults(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		in       saga.RetryPolicy
		attempts int
		want     saga.RetryPolicy
	}{
		{
			name: "zero action policy", in: saga.RetryPolicy{}, attempts: 3,
			want: saga.RetryPolicy{MaxAttempts: 3, InitialInterval: 100 * time.Millisecond, MaxInterval: 30 * time.Second, Multiplier: 2, Jitter: 0.5},
		},
		{
			name: "zero compensation policy", in: saga.RetryPolicy{}, attempts: 10,
			want: saga.RetryPolicy{MaxAttempts: 10, InitialInterval: 100 * time.Millisecond, MaxInterval: 30 * time.Second, Multiplier: 2, Jitter: 0.5},
		},
		{
			name: "negative jitter means none, unlimited attempts kept", in: saga.RetryPolicy{MaxAttempts: -1, Jitter: -0.3}, attempts: 3,
			want: saga.RetryPolicy{MaxAttempts: -1, InitialInterval: 100 * time.Millisecond, MaxInterval: 30 * time.Second, Multiplier: 2, Jitter: 0},
		},
		{
			name: "an initial interval above the default cap raises the cap", in: saga.RetryPolicy{InitialInterval: time.Hour}, attempts: 3,
			want: saga.RetryPolicy{MaxAttempts: 3, InitialInterval: time.Hour, MaxInterval: time.Hour, Multiplier: 2, Jitter: 0.5},
		},
		{
			name:     "set fields kept",
			in:       saga.RetryPolicy{MaxAttempts: 7, InitialInterval: time.Second, MaxInterval: time.Minute, Multiplier: 1.5, Jitter: 0.1, MaxElapsed: time.Hour},
			attempts: 3,
			want:     saga.RetryPolicy{MaxAttempts: 7, InitialInterval: time.Second, MaxInterval: time.Minute, Multiplier: 1.5, Jitter: 0.1, MaxElapsed: time.Hour},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := tt.in.WithDefaults(tt.attempts); got != tt.want {
				t.Errorf("%+v.WithDefaults(%d) = %+v, want %+v", tt.in, tt.attempts, got, tt.want)
			}
		})
	}
}

func TestBreakerPolicyWithDefaults(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   saga.BreakerPolicy
		want saga.BreakerPolicy
	}{
		{"zero", saga.BreakerPolicy{Name: "b"}, saga.BreakerPolicy{Name: "b", Failures: 5, OpenFor: 30 * time.Second, HalfOpenRequests: 1}},
		{
			"set fields kept",
			saga.BreakerPolicy{Name: "b", Failures: 2, OpenFor: time.Second, HalfOpenRequests: 4},
			saga.BreakerPolicy{Name: "b", Failures: 2, OpenFor: time.Second, HalfOpenRequests: 4},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := tt.in.WithDefaults(); got != tt.want {
				t.Errorf("%+v.WithDefaults() = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}

var errBase = errors.New("saga_test: participant said no")

func TestPermanent(t *testing.T) {
	t.Parallel()

	if err := saga.Permanent(nil); err != nil {
		t.Fatalf("Permanent(nil) = %v, want nil", err)
	}
	if saga.IsPermanent(nil) {
		t.Errorf("IsPermanent(nil) = true, want false")
	}

	perm := saga.Permanent(errBase)
	roundTrip := func(err error) error {
		enc := errors.EncodeError(context.Background(), err)
		// Go through the wire form, as a stored error does.
		b, mErr := enc.Marshal()
		if mErr != nil {
			t.Fatalf("marshal encoded error: %v", mErr)
		}
		var back errors.EncodedError
		if uErr := back.Unmarshal(b); uErr != nil {
			t.Fatalf("unmarshal encoded error: %v", uErr)
		}
		return errors.DecodeError(context.Background(), back)
	}

	tests := []struct {
		name      string
		err       error
		permanent bool
		// msg is the expected message; empty means not checked.
		msg string
	}{
		{name: "plain error", err: errBase, permanent: false},
		{name: "marked", err: perm, permanent: true, msg: errBase.Error()},
		{name: "wrapped after marking", err: errors.Wrap(perm, "step reserve"), permanent: true, msg: "step reserve: " + errBase.Error()},
		{name: "wrapped twice with fmt verbs", err: errors.Wrapf(errors.WithHint(perm, "hint"), "saga %d", 1), permanent: true},
		{name: "marking a wrapped error", err: saga.Permanent(errors.Wrap(errBase, "ctx")), permanent: true, msg: "ctx: " + errBase.Error()},
		{name: "inside RetryAfter", err: saga.RetryAfter(perm, time.Second), permanent: true},
		{name: "encoded and decoded", err: roundTrip(perm), permanent: true, msg: errBase.Error()},
		{name: "wrapped, encoded and decoded", err: roundTrip(errors.Wrap(perm, "outer")), permanent: true, msg: "outer: " + errBase.Error()},
		{name: "unmarked, encoded and decoded", err: roundTrip(errors.Wrap(errBase, "outer")), permanent: false},
		{name: "other error with the same text is not permanent", err: errors.New(errBase.Error()), permanent: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := saga.IsPermanent(tt.err); got != tt.permanent {
				t.Errorf("IsPermanent(%q) = %v, want %v", tt.err, got, tt.permanent)
			}
			if tt.msg != "" && tt.err.Error() != tt.msg {
				t.Errorf("message = %q, want %q", tt.err.Error(), tt.msg)
			}
		})
	}

	// Marking keeps the cause's own identity.
	if !errors.Is(perm, errBase) {
		t.Errorf("errors.Is(Permanent(errBase), errBase) = false, want true")
	}
	if !errors.Is(roundTrip(perm), errBase) {
		t.Errorf("errors.Is(decoded Permanent(errBase), errBase) = false, want true")
	}
}

func TestRetryAfter(t *testing.T) {
	t.Parallel()

	if err := saga.RetryAfter(nil, time.Second); err != nil {
		t.Fatalf("RetryAfter(nil, 1s) = %v, want nil", err)
	}
	tests := []struct {
		name   string
		err    error
		delay  time.Duration
		hasDel bool
	}{
		{name: "none", err: errBase},
		{name: "nil", err: nil},
		{name: "direct", err: saga.RetryAfter(errBase, 3*time.Second), delay: 3 * time.Second, hasDel: true},
		{name: "zero delay", err: saga.RetryAfter(errBase, 0), delay: 0, hasDel: true},
		{name: "wrapped", err: errors.Wrap(saga.RetryAfter(errBase, time.Minute), "outer"), delay: time.Minute, hasDel: true},
		{name: "marked permanent", err: saga.Permanent(saga.RetryAfter(errBase, time.Minute)), delay: time.Minute, hasDel: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d, ok := saga.RetryAfterDelay(tt.err)
			if d != tt.delay || ok != tt.hasDel {
				t.Errorf("RetryAfterDelay(%v) = %s, %v; want %s, %v", tt.err, d, ok, tt.delay, tt.hasDel)
			}
		})
	}

	ra := saga.RetryAfter(errBase, time.Second)
	if ra.Error() != errBase.Error() {
		t.Errorf("RetryAfter(err).Error() = %q, want the cause's message %q", ra.Error(), errBase.Error())
	}
	if !errors.Is(ra, errBase) {
		t.Errorf("errors.Is(RetryAfter(errBase), errBase) = false, want true")
	}
}

func TestCallDecode(t *testing.T) {
	t.Parallel()
	type order struct {
		Item string `json:"item"`
		Qty  int    `json:"qty"`
	}
	call := &saga.Call{
		SagaID: "01J0000000000000000000000", Step: "ship",
		Input: json.RawMessage(`{"item":"book","qty":2}`),
		Data: map[string]json.RawMessage{
			"reserve": json.RawMessage(`{"item":"reserved","qty":1}`),
			"empty":   nil,
			"broken":  json.RawMessage(`{"item":`),
		},
	}

	t.Run("input", func(t *testing.T) {
		t.Parallel()
		var got order
		if err := call.DecodeInput(&got); err != nil {
			t.Fatalf("DecodeInput: %v", err)
		}
		if want := (order{Item: "book", Qty: 2}); got != want {
			t.Errorf("DecodeInput = %+v, want %+v", got, want)
		}
	})
	t.Run("output", func(t *testing.T) {
		t.Parallel()
		var got order
		if err := call.Output("reserve", &got); err != nil {
			t.Fatalf("Output(reserve): %v", err)
		}
		if want := (order{Item: "reserved", Qty: 1}); got != want {
			t.Errorf("Output(reserve) = %+v, want %+v", got, want)
		}
	})

	errTests := []struct {
		name  string
		run   func() error
		wants []string
	}{
		{"no input", func() error { var v order; return (&saga.Call{SagaID: "x", Step: "ship"}).DecodeInput(&v) }, []string{`"ship"`, "no input"}},
		{"input of the wrong type", func() error {
			var v order
			return (&saga.Call{Step: "ship", Input: json.RawMessage(`[1]`)}).DecodeInput(&v)
		}, []string{`"ship"`, "decode input"}},
		{"missing step output", func() error { var v order; return call.Output("nope", &v) }, []string{`"ship"`, `no output from step "nope"`}},
		{"empty step output", func() error { var v order; return call.Output("empty", &v) }, []string{`no output from step "empty"`}},
		{"broken step output", func() error { var v order; return call.Output("broken", &v) }, []string{`decode output of "broken"`}},
	}
	for _, tt := range errTests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := tt.run()
			if err == nil {
				t.Fatalf("got nil, want an error containing %q", tt.wants)
			}
			for _, w := range tt.wants {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error = %q, want it to contain %q", err, w)
				}
			}
		})
	}
}

func TestStatus(t *testing.T) {
	t.Parallel()
	tests := []struct {
		s        saga.Status
		valid    bool
		finished bool
	}{
		{saga.StatusRunning, true, false},
		{saga.StatusCompensating, true, false},
		{saga.StatusPaused, true, false},
		{saga.StatusCompleted, true, true},
		{saga.StatusCompensated, true, true},
		{saga.StatusFailed, true, true},
		{saga.StatusResolved, true, true},
		{"", false, false},
		{"done", false, false},
	}
	for _, tt := range tests {
		t.Run(string(tt.s), func(t *testing.T) {
			t.Parallel()
			if got := tt.s.Valid(); got != tt.valid {
				t.Errorf("Status(%q).Valid() = %v, want %v", tt.s, got, tt.valid)
			}
			if got := tt.s.Finished(); got != tt.finished {
				t.Errorf("Status(%q).Finished() = %v, want %v", tt.s, got, tt.finished)
			}
		})
	}
	if len(saga.Statuses) != 7 {
		t.Errorf("len(Statuses) = %d, want 7", len(saga.Statuses))
	}
}

// A compensation runs after those of the steps after it, passing through
// steps without one: the diagram's dashed arrows say so.
func TestMermaidCompensationOrder(t *testing.T) {
	t.Parallel()
	def := &saga.Definition{Name: "d", Steps: []saga.Step{
		{Name: "a", Action: noop, Compensation: noop},
		{Name: "b", Action: noop},
		{Name: "c", Action: noop, Compensation: noop},
	}}
	got := def.Mermaid()
	if !strings.Contains(got, "c2 -.-> c0\n") || strings.Contains(got, "c1") {
		t.Errorf("diagram:\n%s\nwant undo c before undo a, through b, which has none", got)
	}
}
