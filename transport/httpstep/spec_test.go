package httpstep_test

import (
	"encoding/json"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/errors"

	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/transport/httpstep"
)

// exampleSpec is the definition the package documentation shows.
const exampleSpec = `{"steps": [
  {"name": "reserve",
   "action":       {"url": "http://127.0.0.1:9001/reserve", "method": "POST", "timeout": "2s"},
   "compensation": {"url": "http://127.0.0.1:9001/release", "retry": {"max_attempts": 10}},
   "retry": {"max_attempts": 3, "initial_interval": "50ms", "max_interval": "1s", "multiplier": 2},
   "fallback": {"url": "http://127.0.0.1:9002/reserve"},
   "circuit_breaker": {"name": "inventory", "failures": 5, "open_for": "10s"}}
 ],
 "timeout": "30s",
 "events": {"lifecycle": true, "exchange": "sagas"}}`

// oneStep returns a spec of one step whose action has the given fields
// (JSON members, without braces) besides its URL.
func oneStep(action string) string {
	if action != "" {
		action = ", " + action
	}
	return `{"steps": [{"name": "a", "action": {"url": "http://127.0.0.1:1/a"` + action + `}}]}`
}

func TestParseValid(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		input string
		check func(t *testing.T, s *httpstep.Spec, d *saga.Definition)
	}{
		{name: "example", input: exampleSpec},
		{name: "minimal", input: oneStep(""), check: func(t *testing.T, s *httpstep.Spec, d *saga.Definition) {
			st := d.Steps[0]
			if st.Timeout != 30*time.Second || st.Compensation != nil || st.Fallback != nil || st.Retry != (saga.RetryPolicy{}) {
				t.Errorf("step = %+v, want defaults: 30s timeout, no compensation, no fallback, zero retry", st)
			}
		}},
		{name: "nulls are absent fields", input: `{"steps": [{"name": "a", "action": {"url": "http://x/a", "retry": null, "headers": null},
			"compensation": null, "fallback": null, "retry": null, "circuit_breaker": null, "pivot": null}],
			"timeout": null, "events": null}`},
		{name: "negative max_attempts means unlimited", input: oneStep(`"retry": {"max_attempts": -1}`),
			check: func(t *testing.T, s *httpstep.Spec, d *saga.Definition) {
				if got := d.Steps[0].Retry.MaxAttempts; got != -1 {
					t.Errorf("MaxAttempts = %d, want -1", got)
				}
			}},
		{name: "parallel steps", input: `{"steps": [{"name": "a", "action": {"url": "http://x/a"}},
			{"name": "b", "action": {"url": "http://x/b"}, "after": []},
			{"name": "c", "action": {"url": "http://x/c"}, "after": ["a", "b"]},
			{"name": "d", "action": {"url": "http://x/d"}}]}`,
			check: func(t *testing.T, s *httpstep.Spec, d *saga.Definition) {
				if d.Steps[0].After != nil || d.Steps[1].After == nil || len(d.Steps[1].After) != 0 ||
					!slices.Equal(d.Steps[2].After, []string{"a", "b"}) || d.Steps[3].After != nil {
					t.Errorf("after lists %q %q %q %q, want nil, [], [a b], nil", d.Steps[0].After, d.Steps[1].After, d.Steps[2].After, d.Steps[3].After)
				}
				// The canonical JSON keeps [] apart from absent.
				b, err := json.Marshal(s)
				if err != nil || !strings.Contains(string(b), `"after":[]`) || strings.Count(string(b), `"after"`) != 2 {
					t.Errorf("canonical JSON %s (%v): want after on b ([]) and c only", b, err)
				}
			}},
		{name: "https with port, path and query", input: `{"steps": [{"name": "a", "action": {"url": "https://user:pw@example.com:8443/x/y?z=1"}}]}`},
		{name: "PUT", input: oneStep(`"method": "PUT"`)},
		{name: "PATCH", input: oneStep(`"method": "PATCH"`)},
		{name: "DELETE", input: oneStep(`"method": "DELETE"`)},
		{name: "amqp", input: `{"steps": [{"name": "reserve",
			"action": {"amqp": {"exchange": "", "routing_key": "inventory.reserve", "timeout": "2m"}, "retry": {"max_attempts": 5}, "headers": {"tenant": "acme"}},
			"compensation": {"amqp": {"exchange": "inventory", "routing_key": "release", "timeout": "2m"}},
			"fallback": {"url": "http://127.0.0.1:1/reserve"}}]}`,
			check: func(t *testing.T, s *httpstep.Spec, d *saga.Definition) {
				st := d.Steps[0]
				if st.Action != nil || st.Commands.Action == nil || st.Compensation != nil || st.Commands.Compensation == nil ||
					st.Fallback == nil || st.Commands.Fallback != nil {
					t.Errorf("step %+v: want the action and compensation as commands, the fallback as an HTTP call", st)
				}
				if st.Timeout != 2*time.Minute || st.Retry.MaxAttempts != 5 {
					t.Errorf("step timeout %s, retry %+v: want the reply's 2m and 5 attempts", st.Timeout, st.Retry)
				}
				call := &saga.Call{SagaID: "01J0000000000000000000000S", Definition: "d", Step: "reserve", Phase: saga.PhaseAction, Attempt: 2,
					Input: json.RawMessage(`{"sku":"x"}`)}
				ev, err := st.Commands.Action(call)
				if err != nil {
					t.Fatal(err)
				}
				if ev.Exchange != "" || ev.RoutingKey != "inventory.reserve" || ev.Headers["tenant"] != "acme" || ev.Validate() != nil ||
					!strings.Contains(string(ev.Payload), `"attempt":2,"input":{"sku":"x"}`) {
					t.Errorf("command %+v (%s): want the HTTP request body on the default exchange", ev, ev.Payload)
				}
				if ev, _ := st.Commands.Compensation(call); ev.Exchange != "inventory" || ev.RoutingKey != "release" {
					t.Errorf("compensation command %+v", ev)
				}
			}},
		{name: "headers", input: oneStep(`"headers": {"Authorization": "Bearer t", "x-tenant": "acme", "User-Agent": "shop/1", "Accept": "*/*"}`)},
		{name: "durations", input: oneStep(`"timeout": "1m30s", "retry": {"initial_interval": "0s", "max_elapsed": "1h"}`),
			check: func(t *testing.T, s *httpstep.Spec, d *saga.Definition) {
				if got := d.Steps[0].Timeout; got != 90*time.Second {
					t.Errorf("Timeout = %s, want 1m30s", got)
				}
				if got := d.Steps[0].Retry.MaxElapsed; got != time.Hour {
					t.Errorf("MaxElapsed = %s, want 1h", got)
				}
			}},
		{name: "pivot", input: `{"steps": [
			{"name": "a", "action": {"url": "http://x/a"}, "compensation": {"url": "http://x/a/undo"}},
			{"name": "b", "action": {"url": "http://x/b"}, "pivot": true},
			{"name": "c", "action": {"url": "http://x/c"}}]}`},
		{name: "shared breaker, same settings after defaults", input: `{"steps": [
			{"name": "a", "action": {"url": "http://x/a"}, "circuit_breaker": {"name": "inv", "failures": 5}},
			{"name": "b", "action": {"url": "http://x/b"}, "circuit_breaker": {"name": "inv"}}]}`},
		{name: "retry in action", input: oneStep(`"retry": {"max_attempts": 7}`),
			check: func(t *testing.T, s *httpstep.Spec, d *saga.Definition) {
				if got := d.Steps[0].Retry.MaxAttempts; got != 7 {
					t.Errorf("MaxAttempts = %d, want 7", got)
				}
			}},
		{name: "largest call timeout", input: `{"steps": [{"name": "a",
			"action": {"url": "http://x/a", "timeout": "2s"},
			"compensation": {"url": "http://x/b", "timeout": "5s"},
			"fallback": {"url": "http://x/c", "timeout": "1s"}}]}`,
			check: func(t *testing.T, s *httpstep.Spec, d *saga.Definition) {
				if got := d.Steps[0].Timeout; got != 5*time.Second {
					t.Errorf("Timeout = %s, want 5s", got)
				}
			}},
		{name: "whitespace around", input: "\n\t " + oneStep("") + " \n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, err := httpstep.Parse("order", []byte(tt.input))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			d, err := s.Definition("order", nil)
			if err != nil {
				t.Fatalf("Definition: %v", err)
			}
			if err := d.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			if tt.check != nil {
				tt.check(t, s, d)
			}
		})
	}
}

func TestParseInvalid(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		def   string // definition name; "" for "order"
		input string
		want  string // a substring of the error
	}{
		{name: "empty", input: "", want: "definition is empty"},
		{name: "not JSON", input: `{"steps": [`, want: "definition is not valid JSON"},
		{name: "null", input: `null`, want: "must be a JSON object"},
		{name: "array", input: `[]`, want: "definition: must be a JSON object"},
		{name: "no steps", input: `{}`, want: "steps: at least one step is required"},
		{name: "empty steps", input: `{"steps": []}`, want: "steps: at least one step is required"},
		{name: "steps not an array", input: `{"steps": {}}`, want: "steps: must be a JSON array"},
		{name: "unknown top-level field", input: `{"step": []}`, want: "step: unknown field (known: steps, timeout, events)"},
		{name: "unknown step field", input: `{"steps": [{"name": "a", "acton": {"url": "http://x/a"}}]}`, want: "steps[0].acton: unknown field"},
		{name: "unknown call field", input: oneStep(`"timout": "2s"`), want: "steps[0].action.timout: unknown field"},
		{name: "unknown retry field", input: oneStep(`"retry": {"attempts": 2}`), want: "steps[0].action.retry.attempts: unknown field"},
		{name: "field with odd name", input: oneStep(`"a b": 1`), want: `steps[0].action["a b"]: unknown field`},
		{name: "field given twice", input: oneStep(`"url": "http://x/b"`), want: "steps[0].action.url: given twice"},
		{name: "case matters", input: `{"Steps": []}`, want: "Steps: unknown field"},
		{name: "after not an array", input: `{"steps": [{"name": "a", "action": {"url": "http://x/a"}, "after": "b"}]}`,
			want: "steps[0].after: must be an array of step names"},
		{name: "after with a number", input: `{"steps": [{"name": "a", "action": {"url": "http://x/a"}, "after": [1]}]}`,
			want: "steps[0].after[0]: must be a string"},
		{name: "after names no step", input: `{"steps": [{"name": "a", "action": {"url": "http://x/a"}},
			{"name": "b", "action": {"url": "http://x/b"}, "after": ["a", "c"]}]}`, want: `steps[1].after[1]: "c" names no step`},
		{name: "after names a step twice", input: `{"steps": [{"name": "a", "action": {"url": "http://x/a"}},
			{"name": "b", "action": {"url": "http://x/b"}, "after": ["a", "a"]}]}`, want: `steps[1].after[1]: "a" is named twice`},
		{name: "after forms a cycle", input: `{"steps": [{"name": "a", "action": {"url": "http://x/a"}, "after": ["b"]},
			{"name": "b", "action": {"url": "http://x/b"}}]}`, want: `steps[0].after[0]: forms a cycle: "a" waits for "b" waits for "a"`},
		{name: "a step alongside the pivot", input: `{"steps": [{"name": "a", "action": {"url": "http://x/a"}, "compensation": {"url": "http://x/u"}},
			{"name": "p", "action": {"url": "http://x/p"}, "pivot": true},
			{"name": "b", "action": {"url": "http://x/b"}, "after": ["a"]}]}`, want: `the step runs alongside the pivot "p"`},
		{name: "bad duration", input: oneStep(`"timeout": "2x"`), want: `steps[0].action.timeout: invalid duration "2x"`},
		{name: "number as duration", input: oneStep(`"timeout": 2`), want: `steps[0].action.timeout: invalid duration 2: must be a string`},
		{name: "number as saga timeout", input: `{"steps": [{"name": "a", "action": {"url": "http://x/a"}}], "timeout": 30}`, want: "timeout: invalid duration 30"},
		{name: "negative duration", input: oneStep(`"timeout": "-1s"`), want: "steps[0].action.timeout: must not be negative"},
		{name: "negative saga timeout", input: `{"steps": [{"name": "a", "action": {"url": "http://x/a"}}], "timeout": "-1s"}`, want: "timeout: must not be negative"},
		{name: "missing action", input: `{"steps": [{"name": "a"}]}`, want: "steps[0].action: is required"},
		{name: "null action", input: `{"steps": [{"name": "a", "action": null}]}`, want: "steps[0].action: is required"},
		{name: "action not an object", input: `{"steps": [{"name": "a", "action": "http://x/a"}]}`, want: "steps[0].action: must be a JSON object"},
		{name: "missing url", input: `{"steps": [{"name": "a", "action": {"method": "POST"}}]}`, want: "steps[0].action.url: is required"},
		{name: "url and amqp", input: oneStep(`"amqp": {"routing_key": "k"}`), want: "steps[0].action.amqp: give url or amqp, not both"},
		{name: "amqp with method", input: `{"steps": [{"name": "a", "action": {"amqp": {"routing_key": "k"}, "method": "PUT"}}]}`, want: "steps[0].action.method: not allowed with amqp"},
		{name: "amqp with call timeout", input: `{"steps": [{"name": "a", "action": {"amqp": {"routing_key": "k"}, "timeout": "1s"}}]}`,
			want: "steps[0].action.timeout: not allowed with amqp: give it as steps[0].action.amqp.timeout"},
		{name: "amqp without routing key", input: `{"steps": [{"name": "a", "action": {"amqp": {"exchange": "x"}}}]}`, want: "steps[0].action.amqp.routing_key: is required"},
		{name: "amqp bad exchange", input: `{"steps": [{"name": "a", "action": {"amqp": {"exchange": "a b", "routing_key": "k"}}}]}`, want: "steps[0].action.amqp.exchange"},
		{name: "amqp long routing key", input: `{"steps": [{"name": "a", "action": {"amqp": {"routing_key": "` + strings.Repeat("k", 256) + `"}}}]}`,
			want: "steps[0].action.amqp.routing_key: is 256 bytes, at most 255"},
		{name: "amqp negative timeout", input: `{"steps": [{"name": "a", "action": {"amqp": {"routing_key": "k", "timeout": "-1s"}}}]}`, want: "steps[0].action.amqp.timeout: must not be negative"},
		{name: "amqp unknown field", input: `{"steps": [{"name": "a", "action": {"amqp": {"routing_key": "k", "queue": "q"}}}]}`, want: "steps[0].action.amqp.queue: unknown field"},
		{name: "amqp reserved header", input: `{"steps": [{"name": "a", "action": {"amqp": {"routing_key": "k"}, "headers": {"X-Saga-Id": "x"}}}]}`, want: "X-Saga-Id is reserved"},
		{name: "amqp action with breaker", input: `{"steps": [{"name": "a", "action": {"amqp": {"routing_key": "k"}}, "circuit_breaker": {"name": "b"}}]}`,
			want: "steps[0].circuit_breaker: not allowed in a step with calls over AMQP"},
		{name: "amqp timeout shorter than the step's", input: `{"steps": [{"name": "a", "action": {"amqp": {"routing_key": "k", "timeout": "2s"}}, "compensation": {"amqp": {"routing_key": "k"}}}]}`,
			want: "steps[0].action.amqp.timeout: 2s, but the step's compensation takes up to 30s"},
		{name: "amqp timeout shorter than an HTTP call's", input: `{"steps": [{"name": "a", "action": {"amqp": {"routing_key": "k"}}, "fallback": {"url": "http://x/a", "timeout": "2m"}}]}`,
			want: "steps[0].action.amqp.timeout: 30s, but the step's fallback takes up to 2m0s"},
		{name: "amqp compensation with breaker", input: `{"steps": [{"name": "a", "action": {"url": "http://x/a"}, "compensation": {"amqp": {"routing_key": "k"}}, "circuit_breaker": {"name": "b"}}]}`,
			want: "steps[0].circuit_breaker: not allowed in a step with calls over AMQP"},
		{name: "relative url", input: `{"steps": [{"name": "a", "action": {"url": "http://x/a"}}, {"name": "b", "action": {"url": "/reserve"}}]}`,
			want: "steps[1].action.url: must be an absolute http or https URL"},
		{name: "ftp url", input: `{"steps": [{"name": "a", "action": {"url": "ftp://x/a"}}]}`, want: "steps[0].action.url: must be an absolute http or https URL"},
		{name: "url without host", input: `{"steps": [{"name": "a", "action": {"url": "http:///a"}}]}`, want: "steps[0].action.url: must be an absolute"},
		{name: "opaque url", input: `{"steps": [{"name": "a", "action": {"url": "http:x"}}]}`, want: "steps[0].action.url: must be an absolute"},
		{name: "compensation url", input: `{"steps": [{"name": "a", "action": {"url": "http://x/a"}, "compensation": {"url": "x"}}]}`,
			want: "steps[0].compensation.url: must be an absolute"},
		{name: "url not a string", input: `{"steps": [{"name": "a", "action": {"url": 1}}]}`, want: "steps[0].action.url: must be a string, not 1"},
		{name: "GET", input: oneStep(`"method": "GET"`), want: `steps[0].action.method: "GET" is not one of POST, PUT, PATCH, DELETE`},
		{name: "lower-case method", input: oneStep(`"method": "post"`), want: `steps[0].action.method: "post" is not one of`},
		{name: "retry on fallback", input: `{"steps": [{"name": "a", "action": {"url": "http://x/a"}, "fallback": {"url": "http://x/b", "retry": {}}}]}`,
			want: "steps[0].fallback.retry: not allowed: a fallback runs once"},
		{name: "step retry and action retry", input: `{"steps": [{"name": "a", "action": {"url": "http://x/a", "retry": {"max_attempts": 2}}, "retry": {"max_attempts": 3}}]}`,
			want: "steps[0].retry: the action's retry policy is also given as steps[0].action.retry"},
		{name: "bad step name", input: `{"steps": [{"name": "no spaces", "action": {"url": "http://x/a"}}]}`, want: `steps[0].name: "no spaces" must match`},
		{name: "missing step name", input: `{"steps": [{"action": {"url": "http://x/a"}}]}`, want: `steps[0].name: "" must match`},
		{name: "step name not a string", input: `{"steps": [{"name": 7, "action": {"url": "http://x/a"}}]}`, want: `steps[0].name: must be a string, not 7`},
		{name: "duplicate step names", input: `{"steps": [{"name": "a", "action": {"url": "http://x/a"}}, {"name": "a", "action": {"url": "http://x/b"}}]}`,
			want: `steps[1].name: "a" is already the name of steps[0]`},
		{name: "max_attempts not an integer", input: oneStep(`"retry": {"max_attempts": 1.5}`), want: "steps[0].action.retry.max_attempts: must be an integer, not 1.5"},
		{name: "max_attempts a string", input: oneStep(`"retry": {"max_attempts": "3"}`), want: `steps[0].action.retry.max_attempts: must be an integer, not "3"`},
		{name: "max_interval below initial", input: oneStep(`"retry": {"initial_interval": "2s", "max_interval": "1s"}`),
			want: "steps[0].action.retry.max_interval: 1s is below initial_interval 2s"},
		{name: "multiplier below 1", input: `{"steps": [{"name": "a", "action": {"url": "http://x/a"}, "retry": {"multiplier": 0.5}}]}`,
			want: "steps[0].retry.multiplier: 0.5 is not zero or a finite number >= 1"},
		{name: "multiplier out of range", input: oneStep(`"retry": {"multiplier": 1e999}`), want: "steps[0].action.retry.multiplier: must be a number"},
		{name: "negative max_elapsed", input: `{"steps": [{"name": "a", "action": {"url": "http://x/a"}, "compensation": {"url": "http://x/b", "retry": {"max_elapsed": "-1s"}}}]}`,
			want: "steps[0].compensation.retry.max_elapsed: must not be negative"},
		{name: "reserved header", input: oneStep(`"headers": {"Idempotency-Key": "k"}`), want: `steps[0].action.headers["Idempotency-Key"]: Idempotency-Key is reserved`},
		{name: "reserved header, any case", input: oneStep(`"headers": {"x-saga-id": "k"}`), want: `headers["x-saga-id"]: X-Saga-Id is reserved`},
		{name: "reserved Content-Type", input: oneStep(`"headers": {"content-type": "text/plain"}`), want: `Content-Type is reserved`},
		{name: "reserved Host", input: oneStep(`"headers": {"Host": "evil"}`), want: `Host is reserved`},
		{name: "bad header name", input: oneStep(`"headers": {"bad header": "v"}`), want: `headers["bad header"]: "bad header" is not a valid header name`},
		{name: "bad header value", input: oneStep(`"headers": {"X-A": "a\r\nX-B: b"}`), want: `headers["X-A"]: value contains a control character`},
		{name: "header not a string", input: oneStep(`"headers": {"X-A": 1}`), want: `headers["X-A"]: must be a string`},
		{name: "same header twice", input: oneStep(`"headers": {"X-A": "1", "x-a": "2"}`), want: `headers["x-a"]: names the same header as "X-A"`},
		{name: "breaker without name", input: `{"steps": [{"name": "a", "action": {"url": "http://x/a"}, "circuit_breaker": {"failures": 3}}]}`,
			want: "steps[0].circuit_breaker.name: is required"},
		{name: "bad breaker name", input: `{"steps": [{"name": "a", "action": {"url": "http://x/a"}, "circuit_breaker": {"name": "a b"}}]}`,
			want: `steps[0].circuit_breaker.name: "a b" must match`},
		{name: "negative breaker failures", input: `{"steps": [{"name": "a", "action": {"url": "http://x/a"}, "circuit_breaker": {"name": "b", "failures": -1}}]}`,
			want: "steps[0].circuit_breaker.failures: must be an integer from 0 to 4294967295"},
		{name: "breaker settings differ", input: `{"steps": [
			{"name": "a", "action": {"url": "http://x/a"}, "circuit_breaker": {"name": "inv", "failures": 3}},
			{"name": "b", "action": {"url": "http://x/b"}, "circuit_breaker": {"name": "inv"}}]}`,
			want: `steps[1].circuit_breaker: breaker "inv" is configured differently in steps[0]`},
		{name: "pivot not a bool", input: `{"steps": [{"name": "a", "action": {"url": "http://x/a"}, "pivot": "yes"}]}`, want: `steps[0].pivot: must be true or false`},
		{name: "no compensation before the pivot", input: `{"steps": [
			{"name": "a", "action": {"url": "http://x/a"}},
			{"name": "b", "action": {"url": "http://x/b"}, "pivot": true}]}`,
			want: `compensation: is required before the pivot "b"`},
		{name: "compensation after the pivot", input: `{"steps": [
			{"name": "a", "action": {"url": "http://x/a"}, "pivot": true},
			{"name": "b", "action": {"url": "http://x/b"}, "compensation": {"url": "http://x/c"}}]}`,
			want: `a step after the pivot "a" is never compensated`},
		{name: "bad exchange", input: `{"steps": [{"name": "a", "action": {"url": "http://x/a"}}], "events": {"exchange": "a b"}}`,
			want: `events.exchange: "a b" must match`},
		{name: "lifecycle not a bool", input: `{"steps": [{"name": "a", "action": {"url": "http://x/a"}}], "events": {"lifecycle": 1}}`,
			want: `events.lifecycle: must be true or false`},
		{name: "trailing garbage", input: oneStep("") + ` x`, want: "trailing data after the definition"},
		{name: "second object", input: oneStep("") + `{}`, want: "trailing data after the definition"},
		{name: "oversized", input: oneStep(`"headers": {"X-Pad": "` + strings.Repeat("a", httpstep.MaxSpecSize) + `"}`),
			want: "bytes, at most 1048576"},
		{name: "bad definition name", def: "no spaces", input: oneStep(""), want: `definition name "no spaces": must match`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			name := tt.def
			if name == "" {
				name = "order"
			}
			s, err := httpstep.Parse(name, []byte(tt.input))
			if err == nil {
				t.Fatalf("Parse accepted %s: %+v", excerpt(tt.input), s)
			}
			if !errors.Is(err, saga.ErrInvalidDefinition) {
				t.Errorf("error %q is not marked saga.ErrInvalidDefinition", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
		})
	}
}

func excerpt(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}

// TestParseErrorPrefix pins the whole message of one error, as the API
// server shows it.
func TestParseErrorPrefix(t *testing.T) {
	t.Parallel()
	_, err := httpstep.Parse("order", []byte(oneStep(`"timeout": "2x"`)))
	want := `httpstep: definition "order": steps[0].action.timeout: invalid duration "2x" (want a Go duration such as "2s" or "150ms")`
	if err == nil || err.Error() != want {
		t.Fatalf("error = %v, want %s", err, want)
	}
}

func TestDefinitionMapping(t *testing.T) {
	t.Parallel()
	s, err := httpstep.Parse("order", []byte(exampleSpec))
	if err != nil {
		t.Fatal(err)
	}
	d, err := s.Definition("order", nil)
	if err != nil {
		t.Fatal(err)
	}
	if d.Name != "order" || d.Timeout != 30*time.Second || d.Events != (saga.Events{Lifecycle: true, Exchange: "sagas"}) {
		t.Errorf("definition = %q, timeout %s, events %+v; want order, 30s, lifecycle to sagas", d.Name, d.Timeout, d.Events)
	}
	if len(d.Steps) != 1 {
		t.Fatalf("%d steps, want 1", len(d.Steps))
	}
	st := d.Steps[0]
	if st.Name != "reserve" || st.Action == nil || st.Compensation == nil || st.Fallback == nil || st.Pivot {
		t.Errorf("step = %+v, want reserve with action, compensation and fallback, not the pivot", st)
	}
	wantRetry := saga.RetryPolicy{MaxAttempts: 3, InitialInterval: 50 * time.Millisecond, MaxInterval: time.Second, Multiplier: 2}
	if st.Retry != wantRetry {
		t.Errorf("Retry = %+v, want %+v", st.Retry, wantRetry)
	}
	if want := (saga.RetryPolicy{MaxAttempts: 10}); st.CompensationRetry != want {
		t.Errorf("CompensationRetry = %+v, want %+v", st.CompensationRetry, want)
	}
	// The action's 2s, the compensation's and the fallback's default 30s.
	if st.Timeout != 30*time.Second {
		t.Errorf("Timeout = %s, want 30s", st.Timeout)
	}
	if want := (saga.BreakerPolicy{Name: "inventory", Failures: 5, OpenFor: 10 * time.Second}); st.Breaker != want {
		t.Errorf("Breaker = %+v, want %+v", st.Breaker, want)
	}
	if !regexp.MustCompile(`^[0-9a-f]{16}$`).MatchString(d.Version) || d.Fingerprint() != d.Version {
		t.Errorf("Version = %q, Fingerprint = %q: want 16 hex digits, equal", d.Version, d.Fingerprint())
	}
}

func TestDefinitionInvalidSpec(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		spec *httpstep.Spec
		want string
	}{
		{name: "nil", spec: nil, want: "spec is nil"},
		{name: "no steps", spec: &httpstep.Spec{}, want: "steps: at least one step"},
		{name: "bad url", spec: &httpstep.Spec{Steps: []httpstep.StepSpec{{Name: "a", Action: &httpstep.CallSpec{URL: "x"}}}},
			want: "steps[0].action.url: must be an absolute"},
		{name: "NaN multiplier", spec: &httpstep.Spec{Steps: []httpstep.StepSpec{{Name: "a", Action: &httpstep.CallSpec{URL: "http://x/a"},
			Retry: &httpstep.RetrySpec{Multiplier: nan()}}}}, want: "steps[0].retry.multiplier"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := tt.spec.Definition("order", nil)
			if err == nil || !errors.Is(err, saga.ErrInvalidDefinition) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want one marked saga.ErrInvalidDefinition containing %q", err, tt.want)
			}
		})
	}
}

func nan() float64 {
	zero := 0.0
	return zero / zero
}

func TestVersion(t *testing.T) {
	t.Parallel()
	version := func(t *testing.T, input string) string {
		t.Helper()
		s, err := httpstep.Parse("order", []byte(input))
		if err != nil {
			t.Fatalf("Parse(%s): %v", input, err)
		}
		d, err := s.Definition("order", nil)
		if err != nil {
			t.Fatal(err)
		}
		return d.Version
	}
	base := `{"steps": [{"name": "a", "action": {"url": "http://x/a", "timeout": "2s", "headers": {"A": "1", "B": "2"}}}], "timeout": "1m"}`
	same := []string{
		`{"timeout":"1m","steps":[{"action":{"headers":{"B":"2","A":"1"},"timeout":"2s","url":"http://x/a"},"name":"a"}]}`,
		"{\n  \"steps\": [\n    {\"name\": \"a\",\n     \"action\": {\"timeout\": \"2000ms\", \"url\": \"http://x/a\", \"headers\": {\"B\": \"2\", \"A\": \"1\"}}}\n  ],\n  \"timeout\": \"60s\"\n}\n",
		`{"steps": [{"name": "a", "action": {"url": "http://x/a", "timeout": "2s", "headers": {"A": "1", "B": "2"}, "retry": null}}], "timeout": "1m", "events": null}`,
	}
	different := []string{
		`{"steps": [{"name": "a", "action": {"url": "http://x/b", "timeout": "2s", "headers": {"A": "1", "B": "2"}}}], "timeout": "1m"}`,
		`{"steps": [{"name": "a", "action": {"url": "http://x/a", "timeout": "3s", "headers": {"A": "1", "B": "2"}}}], "timeout": "1m"}`,
		`{"steps": [{"name": "a", "action": {"url": "http://x/a", "timeout": "2s", "headers": {"A": "1", "B": "3"}}}], "timeout": "1m"}`,
		`{"steps": [{"name": "a", "action": {"url": "http://x/a", "timeout": "2s", "headers": {"A": "1", "B": "2"}}, "retry": {"max_attempts": 4}}], "timeout": "1m"}`,
		`{"steps": [{"name": "a", "action": {"url": "http://x/a", "timeout": "2s", "headers": {"A": "1", "B": "2"}}}], "timeout": "2m"}`,
	}
	want := version(t, base)
	for _, in := range same {
		if got := version(t, in); got != want {
			t.Errorf("version of %s = %s, want %s (same as %s)", in, got, want, base)
		}
	}
	for _, in := range different {
		if got := version(t, in); got == want {
			t.Errorf("version of %s = %s, the same as %s's", in, got, base)
		}
	}
}

func TestDurationJSON(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		want    httpstep.Duration
		wantErr string
	}{
		{in: `"2s"`, want: httpstep.Duration(2 * time.Second)},
		{in: `"150ms"`, want: httpstep.Duration(150 * time.Millisecond)},
		{in: `"1m30s"`, want: httpstep.Duration(90 * time.Second)},
		{in: `"0"`, want: 0},
		{in: `null`, want: httpstep.Duration(time.Minute)}, // unchanged
		{in: `"2x"`, wantErr: `invalid duration "2x"`},
		{in: `""`, wantErr: `invalid duration ""`},
		{in: `2`, wantErr: `invalid duration 2: must be a string`},
		{in: `2.5`, wantErr: `invalid duration 2.5: must be a string`},
		{in: `true`, wantErr: `invalid duration true: must be a string`},
		{in: `{}`, wantErr: `invalid duration {}: must be a string`},
		{in: `"9999999999h"`, wantErr: `invalid duration "9999999999h"`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			d := httpstep.Duration(time.Minute)
			err := json.Unmarshal([]byte(tt.in), &d)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Unmarshal(%s) = %v, %v; want an error containing %q", tt.in, time.Duration(d), err, tt.wantErr)
				}
				return
			}
			if err != nil || d != tt.want {
				t.Fatalf("Unmarshal(%s) = %s, %v; want %s", tt.in, time.Duration(d), err, time.Duration(tt.want))
			}
			out, err := json.Marshal(d)
			if err != nil {
				t.Fatal(err)
			}
			var back httpstep.Duration
			if err := json.Unmarshal(out, &back); err != nil || back != d {
				t.Fatalf("round trip through %s = %s, %v; want %s", out, time.Duration(back), err, time.Duration(d))
			}
		})
	}
	if out, _ := json.Marshal(httpstep.Duration(1500 * time.Millisecond)); string(out) != `"1.5s"` {
		t.Errorf("Marshal(1.5s) = %s, want \"1.5s\"", out)
	}
}

// TestCanonicalJSON checks that json.Marshal of a parsed spec is its
// canonical form: defaults are not filled in, absent fields stay absent.
func TestCanonicalJSON(t *testing.T) {
	t.Parallel()
	s, err := httpstep.Parse("order", []byte(exampleSpec))
	if err != nil {
		t.Fatal(err)
	}
	got, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"steps":[{"name":"reserve",` +
		`"action":{"url":"http://127.0.0.1:9001/reserve","method":"POST","timeout":"2s"},` +
		`"compensation":{"url":"http://127.0.0.1:9001/release","retry":{"max_attempts":10}},` +
		`"fallback":{"url":"http://127.0.0.1:9002/reserve"},` +
		`"retry":{"max_attempts":3,"initial_interval":"50ms","max_interval":"1s","multiplier":2},` +
		`"circuit_breaker":{"name":"inventory","failures":5,"open_for":"10s"}}],` +
		`"timeout":"30s","events":{"lifecycle":true,"exchange":"sagas"}}`
	if string(got) != want {
		t.Errorf("canonical JSON =\n%s\nwant\n%s", got, want)
	}
}
