package saga_test

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/cockroachdb/errors"

	"github.com/sagad/sagad/saga"
)

// validEvent returns an event that passes Validate, for table rows to change.
func validEvent() saga.Event {
	return saga.Event{
		Name: "payment.charged", RoutingKey: "payment.charged.eu", Exchange: "payments",
		Payload: json.RawMessage(`{"amount":42}`), Headers: map[string]string{"tenant": "acme"},
	}
}

// withEvent returns validEvent changed by f.
func withEvent(f func(*saga.Event)) saga.Event {
	ev := validEvent()
	f(&ev)
	return ev
}

// requireInvalidEvent fails unless err is marked ErrInvalidEvent and its
// message contains every one of wants.
func requireInvalidEvent(t *testing.T, what string, err error, wants ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s = nil, want an error marked ErrInvalidEvent containing %q", what, wants)
	}
	if !errors.Is(err, saga.ErrInvalidEvent) {
		t.Errorf("%s = %q, want it marked with saga.ErrInvalidEvent", what, err)
	}
	if errors.Is(err, saga.ErrInvalidDefinition) {
		t.Errorf("%s = %q, must not be marked ErrInvalidDefinition", what, err)
	}
	for _, w := range wants {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("%s = %q, want the message to contain %q", what, err, w)
		}
	}
}

// jsonString returns a JSON string literal of exactly n bytes.
func jsonString(n int) json.RawMessage {
	return json.RawMessage(`"` + strings.Repeat("a", n-2) + `"`)
}

func TestEventValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		ev   saga.Event
		want []string // nil: valid
	}{
		{"valid", validEvent(), nil},
		{"minimal", saga.Event{Name: "a", Payload: json.RawMessage(`null`)}, nil},
		{"name of 128 bytes", withEvent(func(e *saga.Event) { e.Name = strings.Repeat("n", 128) }), nil},
		{"name with every allowed character", withEvent(func(e *saga.Event) { e.Name = "0aZ._-9" }), nil},
		{"routing key of 255 bytes", withEvent(func(e *saga.Event) { e.RoutingKey = strings.Repeat("k", 255) }), nil},
		{"routing key with any bytes", withEvent(func(e *saga.Event) { e.RoutingKey = "a/b *#\xff" }), nil},
		{"empty routing key", withEvent(func(e *saga.Event) { e.RoutingKey = "" }), nil},
		{"empty exchange", withEvent(func(e *saga.Event) { e.Exchange = "" }), nil},
		{"payload {}", withEvent(func(e *saga.Event) { e.Payload = json.RawMessage(`{}`) }), nil},
		{"payload with surrounding space", withEvent(func(e *saga.Event) { e.Payload = json.RawMessage(" [1, 2]\n") }), nil},
		{"payload of MaxEventSize bytes", withEvent(func(e *saga.Event) { e.Payload = jsonString(saga.MaxEventSize) }), nil},
		{"no headers", withEvent(func(e *saga.Event) { e.Headers = nil }), nil},
		{"header like the prefix but not it", withEvent(func(e *saga.Event) {
			e.Headers = map[string]string{"x-sagaid": "1", "saga-id": "2", "x-sag-a": "3", "xx-saga-id": "4"}
		}), nil},
		{"header name of 128 bytes", withEvent(func(e *saga.Event) { e.Headers = map[string]string{strings.Repeat("h", 128): ""} }), nil},
		{"empty header value", withEvent(func(e *saga.Event) { e.Headers = map[string]string{"h": ""} }), nil},

		{"empty name", withEvent(func(e *saga.Event) { e.Name = "" }), []string{`event ""`, "name must match"}},
		{"name starting with a dot", withEvent(func(e *saga.Event) { e.Name = ".charged" }), []string{"name must match"}},
		{"name starting with a dash", withEvent(func(e *saga.Event) { e.Name = "-charged" }), []string{"name must match"}},
		{"name starting with an underscore", withEvent(func(e *saga.Event) { e.Name = "_charged" }), []string{"name must match"}},
		{"name with a space", withEvent(func(e *saga.Event) { e.Name = "payment charged" }), []string{"name must match"}},
		{"name with a slash", withEvent(func(e *saga.Event) { e.Name = "payment/charged" }), []string{"name must match"}},
		{"name with a newline at the end", withEvent(func(e *saga.Event) { e.Name = "charged\n" }), []string{"name must match"}},
		{"name not ASCII", withEvent(func(e *saga.Event) { e.Name = "paiement.effectué" }), []string{"name must match"}},
		{"name of 129 bytes", withEvent(func(e *saga.Event) { e.Name = strings.Repeat("n", 129) }), []string{"name must match"}},
		{"routing key of 256 bytes", withEvent(func(e *saga.Event) { e.RoutingKey = strings.Repeat("k", 256) }),
			[]string{"routing key is 256 bytes, at most 255"}},
		{"exchange with a space", withEvent(func(e *saga.Event) { e.Exchange = "my exchange" }), []string{`exchange "my exchange" must match`}},
		{"exchange starting with a dot", withEvent(func(e *saga.Event) { e.Exchange = ".x" }), []string{`exchange ".x" must match`}},
		{"exchange of 129 bytes", withEvent(func(e *saga.Event) { e.Exchange = strings.Repeat("x", 129) }), []string{"exchange", "must match"}},
		{"nil payload", withEvent(func(e *saga.Event) { e.Payload = nil }), []string{"payload is empty"}},
		{"empty payload", withEvent(func(e *saga.Event) { e.Payload = json.RawMessage{} }), []string{"payload is empty"}},
		{"unterminated JSON", withEvent(func(e *saga.Event) { e.Payload = json.RawMessage(`{"a":`) }), []string{"payload is not valid JSON"}},
		{"JSON with trailing bytes", withEvent(func(e *saga.Event) { e.Payload = json.RawMessage(`{} {}`) }), []string{"payload is not valid JSON"}},
		{"bare word", withEvent(func(e *saga.Event) { e.Payload = json.RawMessage(`charged`) }), []string{"payload is not valid JSON"}},
		{"blank payload", withEvent(func(e *saga.Event) { e.Payload = json.RawMessage(" ") }), []string{"payload is not valid JSON"}},
		{"payload one byte over MaxEventSize", withEvent(func(e *saga.Event) { e.Payload = jsonString(saga.MaxEventSize + 1) }),
			[]string{fmt.Sprintf("payload is %d bytes, at most %d", saga.MaxEventSize+1, saga.MaxEventSize)}},
		{"reserved header", withEvent(func(e *saga.Event) { e.Headers = map[string]string{"x-saga-id": "1"} }),
			[]string{`header name "x-saga-id"`, "prefix is reserved"}},
		{"reserved header, title case", withEvent(func(e *saga.Event) { e.Headers = map[string]string{"X-Saga-Step": "1"} }),
			[]string{`header name "X-Saga-Step"`, "prefix is reserved"}},
		{"reserved header, upper case", withEvent(func(e *saga.Event) { e.Headers = map[string]string{"X-SAGA-DEFINITION": "1"} }),
			[]string{"prefix is reserved"}},
		{"reserved header, mixed case", withEvent(func(e *saga.Event) { e.Headers = map[string]string{"x-SaGa-custom": "1"} }),
			[]string{"prefix is reserved"}},
		{"the prefix alone", withEvent(func(e *saga.Event) { e.Headers = map[string]string{"x-saga-": "1"} }),
			[]string{"prefix is reserved"}},
		{"reserved among allowed headers", withEvent(func(e *saga.Event) {
			e.Headers = map[string]string{"a": "1", "b": "2", "X-Saga-Id": "3", "c": "4"}
		}), []string{"prefix is reserved"}},
		{"empty header name", withEvent(func(e *saga.Event) { e.Headers = map[string]string{"": "v"} }),
			[]string{`header name ""`, "must be 1 to 128 bytes"}},
		{"header name of 129 bytes", withEvent(func(e *saga.Event) { e.Headers = map[string]string{strings.Repeat("h", 129): "v"} }),
			[]string{"must be 1 to 128 bytes"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := tt.ev.Validate()
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			requireInvalidEvent(t, "Validate()", err, tt.want...)
			if tt.ev.Name != "" && !strings.Contains(err.Error(), fmt.Sprintf("%q", tt.ev.Name)) {
				t.Errorf("Validate() = %q, want it to name the event %q", err, tt.ev.Name)
			}
		})
	}
}

// newCall returns a Call as the engine would build it for one attempt.
func newCall() *saga.Call {
	return &saga.Call{SagaID: "01J0000000000000000000SAGA", Definition: "order", Step: "charge", Phase: saga.PhaseAction, Attempt: 1}
}

func TestCallEmitCopies(t *testing.T) {
	t.Parallel()
	c := newCall()
	payload := []byte(`{"amount":42}`)
	headers := map[string]string{"tenant": "acme", "trace": "t-1"}
	if err := c.Emit(saga.Event{Name: "payment.charged", Payload: payload, Headers: headers}); err != nil {
		t.Fatalf("Emit: %v", err)
	}
	if err := c.Emit(saga.Event{Name: "no.headers", Payload: payload}); err != nil {
		t.Fatalf("Emit without headers: %v", err)
	}
	// The step function reuses its buffers after Emit.
	copy(payload, `{"amount":99}`)
	headers["tenant"] = "other"
	headers["added"] = "x"
	delete(headers, "trace")

	got := c.Emitted()
	if len(got) != 2 {
		t.Fatalf("Emitted() = %d events, want 2", len(got))
	}
	if string(got[0].Payload) != `{"amount":42}` || string(got[1].Payload) != `{"amount":42}` {
		t.Errorf("payloads after the caller changed its slice = %s, %s; want the bytes given to Emit",
			got[0].Payload, got[1].Payload)
	}
	if want := map[string]string{"tenant": "acme", "trace": "t-1"}; !maps.Equal(got[0].Headers, want) {
		t.Errorf("headers after the caller changed its map = %v, want %v", got[0].Headers, want)
	}
	if got[1].Headers != nil {
		t.Errorf("event emitted without headers has headers %v, want nil", got[1].Headers)
	}
	if got[0].Name != "payment.charged" {
		t.Errorf("Emitted()[0].Name = %q, want payment.charged", got[0].Name)
	}
}

func TestCallEmitInvalid(t *testing.T) {
	t.Parallel()
	c := newCall()
	err := c.Emit(saga.Event{Name: "bad name", Payload: json.RawMessage(`{}`)})
	requireInvalidEvent(t, "Emit(invalid)", err, c.SagaID, `step "charge"`, "name must match")
	if err := c.Emit(withEvent(func(e *saga.Event) { e.Headers = map[string]string{"X-Saga-Id": "forged"} })); err == nil {
		t.Fatalf("Emit with a reserved header = nil, want ErrInvalidEvent")
	}
	if got := c.Emitted(); len(got) != 0 {
		t.Errorf("Emitted() after two refused events = %d events, want 0", len(got))
	}
}

func TestCallEmitAfterEmitted(t *testing.T) {
	t.Parallel()
	c := newCall()
	if err := c.Emit(validEvent()); err != nil {
		t.Fatalf("Emit: %v", err)
	}
	first := c.Emitted()
	err := c.Emit(withEvent(func(e *saga.Event) { e.Name = "late" }))
	requireInvalidEvent(t, "Emit after Emitted", err, c.SagaID, `step "charge"`, `event "late"`, "after the step function returned")
	if got := c.Emitted(); len(got) != 1 || got[0].Name != first[0].Name || len(first) != 1 {
		t.Errorf("Emitted() after a late Emit = %d events, want the 1 emitted before", len(got))
	}

	// Sealing applies even to a call that emitted nothing.
	empty := newCall()
	if got := empty.Emitted(); len(got) != 0 {
		t.Fatalf("Emitted() on a fresh call = %d events, want 0", len(got))
	}
	requireInvalidEvent(t, "Emit after an empty Emitted", empty.Emit(validEvent()), "after the step function returned")
}

func TestCallEmittedOrder(t *testing.T) {
	t.Parallel()
	c := newCall()
	var want []string
	for i := range 20 {
		name := fmt.Sprintf("event.%02d", i)
		want = append(want, name)
		if err := c.Emit(saga.Event{Name: name, Payload: json.RawMessage(fmt.Sprint(i))}); err != nil {
			t.Fatalf("Emit(%s): %v", name, err)
		}
	}
	got := c.Emitted()
	names := make([]string, len(got))
	for i, ev := range got {
		names[i] = ev.Name
		if string(ev.Payload) != fmt.Sprint(i) {
			t.Errorf("event %d carries payload %s, want %d", i, ev.Payload, i)
		}
	}
	if !slices.Equal(names, want) {
		t.Errorf("Emitted() names = %v, want %v", names, want)
	}
}

// TestCallEmitConcurrent runs Emit from several goroutines (run it with
// -race): nothing is lost, and each goroutine's events keep their order.
func TestCallEmitConcurrent(t *testing.T) {
	t.Parallel()
	const workers, each = 8, 50
	c := newCall()
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				errs <- c.Emit(saga.Event{Name: fmt.Sprintf("w%d.e%03d", w, i), Payload: json.RawMessage(`{}`),
					Headers: map[string]string{"worker": fmt.Sprint(w)}})
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent Emit: %v", err)
		}
	}
	got := c.Emitted()
	if len(got) != workers*each {
		t.Fatalf("Emitted() = %d events, want %d", len(got), workers*each)
	}
	next := make([]int, workers)
	for _, ev := range got {
		var w, i int
		if _, err := fmt.Sscanf(ev.Name, "w%d.e%d", &w, &i); err != nil {
			t.Fatalf("unexpected event %q", ev.Name)
		}
		if i != next[w] {
			t.Fatalf("worker %d: event %d came after %d, want its events in the order it emitted them", w, i, next[w]-1)
		}
		next[w]++
	}
}

// TestCallEmitRacesEmitted seals the call while goroutines emit: every
// Emit either lands in what Emitted returned or fails with ErrInvalidEvent.
func TestCallEmitRacesEmitted(t *testing.T) {
	t.Parallel()
	const workers, each = 4, 100
	c := newCall()
	var wg sync.WaitGroup
	accepted := make(chan string, workers*each)
	start := make(chan struct{})
	for w := range workers {
		wg.Go(func() {
			<-start
			for i := range each {
				name := fmt.Sprintf("w%d.e%03d", w, i)
				err := c.Emit(saga.Event{Name: name, Payload: json.RawMessage(`1`)})
				switch {
				case err == nil:
					accepted <- name
				case !errors.Is(err, saga.ErrInvalidEvent):
					t.Errorf("Emit racing Emitted = %v, want nil or ErrInvalidEvent", err)
				}
			}
		})
	}
	close(start)
	got := c.Emitted()
	wg.Wait()
	close(accepted)
	var want []string
	for name := range accepted {
		want = append(want, name)
	}
	names := make([]string, len(got))
	for i, ev := range got {
		names[i] = ev.Name
	}
	slices.Sort(names)
	slices.Sort(want)
	if !slices.Equal(names, want) {
		t.Errorf("Emitted() returned %d events, but %d Emit calls succeeded", len(names), len(want))
	}
}
