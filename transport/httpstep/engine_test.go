package httpstep_test

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/recovery"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage/bolt"
	"github.com/sagad/sagad/transport/httpstep"
)

// runEngine opens an engine on a temporary file, registers the definition
// parsed from spec and runs it until the test ends, when the file is closed
// and checked for consistency.
func runEngine(t *testing.T, spec string) (*engine.Engine, *saga.Definition) {
	t.Helper()
	return runEngineHooks(t, spec, engine.Hooks{})
}

// runEngineHooks is runEngine with hooks.
func runEngineHooks(t *testing.T, spec string, hooks engine.Hooks) (*engine.Engine, *saga.Definition) {
	t.Helper()
	return runEngineOpts(t, spec, engine.Options{Hooks: hooks})
}

// runEngineOpts is runEngine with options.
func runEngineOpts(t *testing.T, spec string, opts engine.Options) (*engine.Engine, *saga.Definition) {
	t.Helper()
	s, err := httpstep.Parse("order", []byte(spec))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	def := define(t, s, nil)
	path := filepath.Join(t.TempDir(), "sagad.db")
	opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	db, err := bolt.Open(path, &bolt.Options{NoSync: true})
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	eng, err := engine.New(db, opts)
	if err != nil {
		t.Fatalf("open engine: %v", err)
	}
	if err := eng.Register(def); err != nil {
		t.Fatalf("register: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- eng.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
		if err := eng.Close(); err != nil {
			t.Errorf("close engine: %v", err)
		}
		if err := recovery.CheckFile(path); err != nil {
			t.Errorf("consistency check after test: %v", err)
		}
	})
	return eng, def
}

// runSaga starts a saga and waits for it to finish.
func runSaga(t *testing.T, eng *engine.Engine, input any) *engine.Saga {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := eng.Start(ctx, "order", input)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	s, err := eng.Wait(ctx, st.ID)
	if err != nil {
		t.Fatalf("wait for saga %s: %v", st.ID, err)
	}
	return s
}

// routes answers each path with its handler, and 404 otherwise.
func routes(m map[string]http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if h, ok := m[r.URL.Path]; ok {
			h(w, r)
			return
		}
		http.NotFound(w, r)
	}
}

// summary lists requests as "METHOD /path phase attempt".
func summary(reqs []received) []string {
	var out []string
	for _, r := range reqs {
		out = append(out, fmt.Sprintf("%s %s %s %s", r.Method, r.Path, r.Header.Get("X-Saga-Phase"), r.Header.Get("X-Saga-Attempt")))
	}
	return out
}

func wantRequests(t *testing.T, reqs []received, want ...string) {
	t.Helper()
	if got := summary(reqs); !reflect.DeepEqual(got, want) {
		t.Fatalf("participants received\n\t%s\nwant\n\t%s", strings.Join(got, "\n\t"), strings.Join(want, "\n\t"))
	}
}

func TestEngineSuccess(t *testing.T) {
	t.Parallel()
	var charges atomic.Int32
	p := newParticipant(t, routes(map[string]http.HandlerFunc{
		"/reserve": answer(200, `{"id": "res-1", "_events": [{"name": "stock.reserved", "routing_key": "stock", "payload": {"id": "res-1"}}]}`),
		"/charge": func(w http.ResponseWriter, r *http.Request) {
			if charges.Add(1) == 1 {
				answer(503, `busy`, "Retry-After", "0")(w, r)
				return
			}
			answer(201, `{"charge": "ch-1"}`)(w, r)
		},
		"/ship": answer(204, ``),
	}))
	eng, def := runEngine(t, fmt.Sprintf(`{"steps": [
		{"name": "reserve", "action": {"url": "%[1]s/reserve"}, "compensation": {"url": "%[1]s/release"}},
		{"name": "charge", "action": {"url": "%[1]s/charge", "timeout": "5s"}, "compensation": {"url": "%[1]s/refund"},
		 "retry": {"max_attempts": 3, "initial_interval": "1ms", "max_interval": "1ms"}},
		{"name": "ship", "action": {"url": "%[1]s/ship", "method": "PUT"}}
	], "timeout": "1m"}`, p.URL))

	s := runSaga(t, eng, map[string]any{"order": 1001})
	if s.Status != saga.StatusCompleted {
		t.Fatalf("status = %s (%v), want completed", s.Status, s.Err)
	}
	if s.Fingerprint != def.Version {
		t.Errorf("saga fingerprint = %q, want the definition's version %q", s.Fingerprint, def.Version)
	}
	if got := string(s.Data["reserve"]); got != `{"id":"res-1"}` {
		t.Errorf("data[reserve] = %s, want the response without _events", got)
	}
	if got := string(s.Data["charge"]); got != `{"charge":"ch-1"}` {
		t.Errorf("data[charge] = %s, want {\"charge\":\"ch-1\"}", got)
	}
	reqs := p.requests()
	wantRequests(t, reqs,
		"POST /reserve action 1",
		"POST /charge action 1",
		"POST /charge action 2",
		"PUT /ship action 1",
	)
	if k1, k2 := reqs[1].Header.Get("Idempotency-Key"), reqs[2].Header.Get("Idempotency-Key"); k1 != k2 || k1 != s.ID+"/charge/action" {
		t.Errorf("charge idempotency keys = %q, %q; want both %q", k1, k2, s.ID+"/charge/action")
	}
	var ship struct {
		SagaID string                     `json:"saga_id"`
		Input  json.RawMessage            `json:"input"`
		Data   map[string]json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal([]byte(reqs[3].Body), &ship); err != nil {
		t.Fatalf("ship request body %s: %v", reqs[3].Body, err)
	}
	if ship.SagaID != s.ID || string(ship.Input) != `{"order":1001}` ||
		string(ship.Data["reserve"]) != `{"id":"res-1"}` || string(ship.Data["charge"]) != `{"charge":"ch-1"}` {
		t.Errorf("ship request body = %s, want the saga's id, input and earlier outputs", reqs[3].Body)
	}

	page, err := eng.OutboxList(context.Background(), engine.OutboxListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Events) != 1 || page.Events[0].Name != "stock.reserved" || page.Events[0].Step != "reserve" ||
		page.Events[0].RoutingKey != "stock" || string(page.Events[0].Payload) != `{"id": "res-1"}` {
		t.Errorf("outbox = %+v, want the one event reserve emitted", page.Events)
	}
}

// TestEngineTraceContext: in a traced saga, each request carries the
// traceparent of its attempt's span; an untraced saga's carry none.
func TestEngineTraceContext(t *testing.T) {
	t.Parallel()
	p := newParticipant(t, routes(map[string]http.HandlerFunc{"/reserve": answer(200, `{}`), "/charge": answer(200, `{}`)}))
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	eng, _ := runEngineOpts(t, fmt.Sprintf(`{"steps": [{"name": "reserve", "action": {"url": "%[1]s/reserve"}},
		{"name": "charge", "action": {"url": "%[1]s/charge"}}]}`, p.URL), engine.Options{TracerProvider: tp})
	s := runSaga(t, eng, nil)
	if s.Status != saga.StatusCompleted || s.TraceID == "" {
		t.Fatalf("saga %s, trace %q; want completed, traced", s.Status, s.TraceID)
	}
	spans := map[string]trace.SpanContext{}
	for _, sp := range exp.GetSpans() {
		spans[sp.Name] = sp.SpanContext
	}
	reqs := p.requests()
	for i, step := range []string{"reserve", "charge"} {
		sc := spans[step+" action"]
		want := "00-" + s.TraceID + "-" + sc.SpanID().String() + "-01"
		if got := reqs[i].Header.Get("Traceparent"); got != want || sc.TraceID().String() != s.TraceID {
			t.Errorf("%s: traceparent %q, want %q (its attempt's span)", step, got, want)
		}
	}

	// Untraced: no header.
	p2 := newParticipant(t, answer(200, `{}`))
	eng2, _ := runEngine(t, fmt.Sprintf(`{"steps": [{"name": "reserve", "action": {"url": "%s/reserve"}}]}`, p2.URL))
	runSaga(t, eng2, nil)
	if h := p2.requests()[0].Header.Get("Traceparent"); h != "" {
		t.Errorf("untraced saga sent traceparent %q", h)
	}
}

func TestEngineCompensation(t *testing.T) {
	t.Parallel()
	p := newParticipant(t, routes(map[string]http.HandlerFunc{
		"/a":      answer(200, `{"a": 1}`),
		"/a/undo": answer(204, ``),
		"/b":      answer(200, `{"b": 2}`),
		"/b/undo": answer(200, `{"undone": true}`),
		"/c":      answer(400, `{"error": "card declined"}`),
		"/c/undo": answer(204, ``),
	}))
	eng, _ := runEngine(t, fmt.Sprintf(`{"steps": [
		{"name": "a", "action": {"url": "%[1]s/a"}, "compensation": {"url": "%[1]s/a/undo"}},
		{"name": "b", "action": {"url": "%[1]s/b"}, "compensation": {"url": "%[1]s/b/undo", "method": "DELETE"}},
		{"name": "c", "action": {"url": "%[1]s/c"}, "compensation": {"url": "%[1]s/c/undo"}, "retry": {"max_attempts": 5}}
	]}`, p.URL))

	s := runSaga(t, eng, nil)
	if s.Status != saga.StatusCompensated {
		t.Fatalf("status = %s (%v), want compensated", s.Status, s.Err)
	}
	if !saga.IsPermanent(s.Err) || !strings.Contains(s.Err.Error(), "answered 400 Bad Request") || !strings.Contains(s.Err.Error(), "card declined") {
		t.Errorf("saga error = %v, want the permanent 400 with its body", s.Err)
	}
	reqs := p.requests()
	// The 400 is permanent: no retry. c never succeeded: no compensation.
	wantRequests(t, reqs,
		"POST /a action 1",
		"POST /b action 1",
		"POST /c action 1",
		"DELETE /b/undo compensation 1",
		"POST /a/undo compensation 1",
	)
	if got, want := reqs[3].Header.Get("Idempotency-Key"), s.ID+"/b/compensation"; got != want || got == reqs[1].Header.Get("Idempotency-Key") {
		t.Errorf("b's compensation key = %q, want %q, not the action's %q", got, want, reqs[1].Header.Get("Idempotency-Key"))
	}
	var undo struct {
		Phase string                     `json:"phase"`
		Data  map[string]json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal([]byte(reqs[3].Body), &undo); err != nil {
		t.Fatal(err)
	}
	if undo.Phase != "compensation" || string(undo.Data["b"]) != `{"b":2}` {
		t.Errorf("b's compensation body = %s, want phase compensation and b's output", reqs[3].Body)
	}
}

func TestEngineFallback(t *testing.T) {
	t.Parallel()
	p := newParticipant(t, routes(map[string]http.HandlerFunc{
		"/reserve":       answer(409, `out of stock`),
		"/reserve-other": answer(200, `{"id": "fb-1"}`),
		"/ship":          answer(204, ``),
	}))
	eng, _ := runEngine(t, fmt.Sprintf(`{"steps": [
		{"name": "reserve", "action": {"url": "%[1]s/reserve"}, "fallback": {"url": "%[1]s/reserve-other"}},
		{"name": "ship", "action": {"url": "%[1]s/ship"}}
	]}`, p.URL))

	s := runSaga(t, eng, nil)
	if s.Status != saga.StatusCompleted {
		t.Fatalf("status = %s (%v), want completed", s.Status, s.Err)
	}
	if !s.Steps[0].FallbackUsed || string(s.Data["reserve"]) != `{"id":"fb-1"}` {
		t.Errorf("reserve: fallback used %v, output %s; want the fallback's output", s.Steps[0].FallbackUsed, s.Data["reserve"])
	}
	reqs := p.requests()
	wantRequests(t, reqs,
		"POST /reserve action 1",
		"POST /reserve-other fallback 1",
		"POST /ship action 1",
	)
	if a, f := reqs[0].Header.Get("Idempotency-Key"), reqs[1].Header.Get("Idempotency-Key"); a == f || f != s.ID+"/reserve/fallback" {
		t.Errorf("action key %q, fallback key %q; want the fallback's to be %q", a, f, s.ID+"/reserve/fallback")
	}
}

// TestEngineFarAwayTimes: a Retry-After of centuries and a saga timeout of
// centuries are kept as the last instant storage can name (2262), never
// wrapped into the past, where the retry would run at once and the deadline
// would have passed.
func TestEngineFarAwayTimes(t *testing.T) {
	t.Parallel()
	t.Run("Retry-After", func(t *testing.T) {
		t.Parallel()
		for _, ra := range []string{"9999999999", "Fri, 31 Dec 9999 23:59:59 GMT"} {
			p := newParticipant(t, answer(503, `busy`, "Retry-After", ra))
			retries := make(chan engine.AttemptInfo, 1)
			eng, _ := runEngineHooks(t, `{"steps": [{"name": "a", "action": {"url": "`+p.URL+`/a"},
				"retry": {"max_attempts": 5, "max_interval": "1h"}}]}`,
				engine.Hooks{AttemptFinished: func(a engine.AttemptInfo) { retries <- a }})
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			st, err := eng.Start(ctx, "order", nil)
			if err != nil {
				t.Fatal(err)
			}
			if a := <-retries; !a.Retry {
				t.Fatalf("Retry-After %s: attempt 1 ended the step: %v", ra, a.Err)
			}
			s, err := eng.Get(ctx, st.ID)
			if err != nil {
				t.Fatal(err)
			}
			// The participant's wish is capped by the policy's max_interval.
			if wait := time.Until(s.WakeAt); s.Status != saga.StatusRunning || wait <= 59*time.Minute || wait > time.Hour {
				t.Errorf("Retry-After %s: saga %s waking in %v, want running for max_interval (1h)", ra, s.Status, wait)
			}
			// Abort ends the wait; the action must not have been retried.
			if err := eng.Abort(ctx, st.ID); err != nil {
				t.Fatal(err)
			}
			if s, err = eng.Wait(ctx, st.ID); err != nil || s.Status != saga.StatusCompensated {
				t.Fatalf("Retry-After %s: after abort: %v, %v; want compensated", ra, s, err)
			}
			wantRequests(t, p.requests(), "POST /a action 1")
		}
	})
	t.Run("timeout", func(t *testing.T) {
		t.Parallel()
		var n atomic.Int32
		p := newParticipant(t, func(w http.ResponseWriter, r *http.Request) {
			if n.Add(1) == 1 {
				answer(503, `busy`)(w, r)
				return
			}
			answer(200, `{}`)(w, r)
		})
		eng, _ := runEngine(t, `{"steps": [{"name": "a", "action": {"url": "`+p.URL+`/a"},
			"retry": {"initial_interval": "1ms", "max_interval": "1ms"}}], "timeout": "2500000h"}`)
		s := runSaga(t, eng, nil)
		if s.Status != saga.StatusCompleted || s.Deadline.Year() != 2262 {
			t.Errorf("saga %s (%v) with deadline %v, want completed with its deadline in 2262", s.Status, s.Err, s.Deadline)
		}
	})
}

// TestEngineOutcomeUnknown: an action that may have taken effect without a
// usable answer (its own timeout, a connection dropped after the request,
// a 2xx whose body is unusable) is compensated when the saga turns around,
// even though the step never succeeded, and even though the step's engine
// timeout (the largest of its calls', here the compensation's default 30s)
// is longer than the action's. Retries use the same idempotency key.
func TestEngineOutcomeUnknown(t *testing.T) {
	t.Parallel()
	// answered answers the second attempt and later ones, after first.
	answered := func(first http.HandlerFunc) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("X-Saga-Attempt") == "1" {
				first(w, r)
				return
			}
			answer(200, `{"charge": "ch-1"}`)(w, r)
		}
	}
	tests := []struct {
		name        string
		charge      http.HandlerFunc // the charge step's action
		maxAttempts int              // of the charge step's action
		timeout     string           // of the charge step's action; empty: 100ms
		want        saga.Status
		wantCharge  []string // what the charge participant received
	}{
		{name: "action timeout", charge: stall(nil), maxAttempts: 1, want: saga.StatusCompensated,
			wantCharge: []string{"POST /charge action 1", "POST /refund compensation 1"}},
		{name: "action timeout on every attempt", charge: stall(nil), maxAttempts: 2, want: saga.StatusCompensated,
			wantCharge: []string{"POST /charge action 1", "POST /charge action 2", "POST /refund compensation 1"}},
		{name: "2xx body stalls past the timeout", charge: stall(partial), maxAttempts: 1, want: saga.StatusCompensated,
			wantCharge: []string{"POST /charge action 1", "POST /refund compensation 1"}},
		{name: "2xx not JSON", charge: answer(200, `charged`), maxAttempts: 3, want: saga.StatusCompensated,
			wantCharge: []string{"POST /charge action 1", "POST /refund compensation 1"}},
		// Time to read 1 MiB, even on a loaded machine under -race.
		{name: "2xx over 1 MiB", charge: answer(200, `"`+strings.Repeat("x", 1<<20)+`"`), maxAttempts: 3, timeout: "10s", want: saga.StatusCompensated,
			wantCharge: []string{"POST /charge action 1", "POST /refund compensation 1"}},
		{name: "2xx with malformed _events", charge: answer(200, `{"id": 1, "_events": {"name": "charged"}}`), maxAttempts: 3,
			want: saga.StatusCompensated, wantCharge: []string{"POST /charge action 1", "POST /refund compensation 1"}},
		{name: "connection closed after the request", charge: drop(false, nil), maxAttempts: 2, want: saga.StatusCompensated,
			wantCharge: []string{"POST /charge action 1", "POST /charge action 2", "POST /refund compensation 1"}},
		{name: "connection reset after the request", charge: drop(true, nil), maxAttempts: 2, want: saga.StatusCompensated,
			wantCharge: []string{"POST /charge action 1", "POST /charge action 2", "POST /refund compensation 1"}},
		// A later answer to the same key settles the doubt.
		{name: "connection closed, then answered", charge: answered(drop(false, nil)), maxAttempts: 2, want: saga.StatusCompleted,
			wantCharge: []string{"POST /charge action 1", "POST /charge action 2"}},
		{name: "timeout, then answered", charge: answered(stall(nil)), maxAttempts: 2, want: saga.StatusCompleted,
			wantCharge: []string{"POST /charge action 1", "POST /charge action 2"}},
		// Controls: an answer that says the participant did nothing.
		{name: "4xx is not compensated", charge: answer(402, `declined`), maxAttempts: 3, want: saga.StatusCompensated,
			wantCharge: []string{"POST /charge action 1"}},
		{name: "5xx is not compensated", charge: answer(503, ``), maxAttempts: 2, want: saga.StatusCompensated,
			wantCharge: []string{"POST /charge action 1", "POST /charge action 2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			// Two participants, so that charge's connections are its own:
			// net/http resends a request with an Idempotency-Key by itself
			// when a reused connection turns out closed.
			shop := newParticipant(t, routes(map[string]http.HandlerFunc{
				"/reserve": answer(200, `{"id": "r-1"}`),
				"/release": answer(204, ``),
			}))
			bank := newParticipant(t, routes(map[string]http.HandlerFunc{
				"/charge": tt.charge,
				"/refund": answer(204, ``),
			}))
			eng, _ := runEngine(t, fmt.Sprintf(`{"steps": [
				{"name": "reserve", "action": {"url": "%[1]s/reserve"}, "compensation": {"url": "%[1]s/release"}},
				{"name": "charge", "action": {"url": "%[2]s/charge", "timeout": %[4]q}, "compensation": {"url": "%[2]s/refund"},
				 "retry": {"max_attempts": %[3]d, "initial_interval": "1ms", "max_interval": "1ms"}}
			]}`, shop.URL, bank.URL, tt.maxAttempts, cmp.Or(tt.timeout, "100ms")))

			s := runSaga(t, eng, nil)
			if s.Status != tt.want {
				t.Fatalf("status = %s (%v), want %s", s.Status, s.Err, tt.want)
			}
			reqs := bank.requests()
			wantRequests(t, reqs, tt.wantCharge...)
			for _, r := range reqs {
				want := s.ID + "/charge/" + r.Header.Get("X-Saga-Phase")
				if got := r.Header.Get("Idempotency-Key"); got != want {
					t.Errorf("%s %s: Idempotency-Key %q, want %q", r.Method, r.Path, got, want)
				}
			}
			if tt.want == saga.StatusCompensated {
				wantRequests(t, shop.requests(), "POST /reserve action 1", "POST /release compensation 1")
				wantStep := saga.StepFailed
				if tt.wantCharge[len(tt.wantCharge)-1] == "POST /refund compensation 1" {
					wantStep = saga.StepCompensated
				}
				if got := s.Steps[1].Status; got != wantStep {
					t.Errorf("charge step is %s (%s), want %s", got, s.Steps[1].Error, wantStep)
				}
			}
		})
	}
}

// TestEngineParallelSteps: a JSON definition whose first two steps start
// with the saga: the participant sees both calls at once (each waits for
// the other), and the third step gets both outputs.
func TestEngineParallelSteps(t *testing.T) {
	t.Parallel()
	var arrived sync.WaitGroup
	arrived.Add(2)
	both := make(chan struct{})
	go func() { arrived.Wait(); close(both) }()
	meet := func(out string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			arrived.Done()
			select {
			case <-both:
				answer(200, out)(w, r)
			case <-time.After(5 * time.Second):
				answer(500, "the other branch never came")(w, r)
			}
		}
	}
	p := newParticipant(t, routes(map[string]http.HandlerFunc{
		"/reserve":   meet(`{"r": 1}`),
		"/authorise": meet(`{"a": 2}`),
		"/ship":      answer(200, `{}`),
	}))
	eng, _ := runEngine(t, fmt.Sprintf(`{"steps": [
		{"name": "reserve", "after": [], "action": {"url": "%[1]s/reserve"}},
		{"name": "authorise", "after": [], "action": {"url": "%[1]s/authorise"}, "retry": {"max_attempts": 1}},
		{"name": "ship", "after": ["reserve", "authorise"], "action": {"url": "%[1]s/ship"}}
	]}`, p.URL))
	s := runSaga(t, eng, nil)
	if s.Status != saga.StatusCompleted {
		t.Fatalf("status %s (%v), want completed", s.Status, s.Err)
	}
	for _, r := range p.requests() {
		if r.Path != "/ship" {
			continue
		}
		var body struct{ Data map[string]map[string]int }
		if err := json.Unmarshal([]byte(r.Body), &body); err != nil || body.Data["reserve"]["r"] != 1 || body.Data["authorise"]["a"] != 2 {
			t.Errorf("ship got %s (%v), want the outputs of reserve and authorise in data", r.Body, err)
		}
	}
}
