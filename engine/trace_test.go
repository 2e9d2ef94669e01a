package engine_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagad/sagad/clock"
	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
	"github.com/sagad/sagad/storage/bolt"
)

// tracedEngine returns an engine that exports its spans to an in-memory
// exporter as they end.
func tracedEngine(t *testing.T, defs ...*saga.Definition) (*bundle, *tracetest.InMemoryExporter) {
	t.Helper()
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	b := setup(t, setupOpts{defs: defs, opts: engine.Options{TracerProvider: tp}})
	return b, exp
}

// spansOf returns the exported spans of one trace, by name; several spans
// of one name are in the order they ended.
func spansOf(exp *tracetest.InMemoryExporter, id trace.TraceID) map[string][]tracetest.SpanStub {
	out := map[string][]tracetest.SpanStub{}
	for _, s := range exp.GetSpans() {
		if s.SpanContext.TraceID() == id {
			out[s.Name] = append(out[s.Name], s)
		}
	}
	return out
}

func attr(s tracetest.SpanStub, key string) attribute.Value {
	for _, kv := range s.Attributes {
		if string(kv.Key) == key {
			return kv.Value
		}
	}
	return attribute.Value{}
}

func eventNames(s tracetest.SpanStub) []string {
	var out []string
	for _, e := range s.Events {
		out = append(out, e.Name)
	}
	return out
}

// TestTracing: a saga is a trace. Its span is a new root linked to the
// caller's span; every attempt is a child span with the saga's and the
// attempt's attributes and its outcome; a retry is an event; the step
// function runs in its attempt's span; the events it emits carry the
// attempt's trace context; the saga's view names the trace.
func TestTracing(t *testing.T) {
	t.Parallel()
	var charges atomic.Int32
	var seen sync.Map // step -> trace.SpanContext the function ran in
	def := &saga.Definition{Name: "order", Steps: []saga.Step{
		{Name: "reserve",
			Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
				seen.Store(c.Step, trace.SpanContextFromContext(ctx))
				return json.RawMessage(`{"id":"r1"}`), nil
			},
			Compensation: func(context.Context, *saga.Call) (json.RawMessage, error) { return nil, nil }},
		{Name: "charge", Retry: saga.RetryPolicy{InitialInterval: time.Millisecond, Jitter: -1},
			Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
				if charges.Add(1) == 1 {
					return nil, errFlaky
				}
				seen.Store(c.Step, trace.SpanContextFromContext(ctx))
				return nil, c.Emit(saga.Event{Name: "payment.charged", Payload: json.RawMessage(`{}`)})
			}},
		{Name: "ship", Action: func(context.Context, *saga.Call) (json.RawMessage, error) {
			return nil, saga.Permanent(errors.New("no carrier"))
		}},
	}}
	b, exp := tracedEngine(t, def)

	// The caller's own trace.
	callerTP := sdktrace.NewTracerProvider()
	ctx, caller := callerTP.Tracer("caller").Start(context.Background(), "POST /v1/sagas")
	st, err := b.eng.Start(ctx, "order", nil, engine.WithIdempotencyKey("order-1"))
	caller.End()
	if err != nil {
		t.Fatal(err)
	}
	s := b.wait(t, st.ID)
	if s.Status != saga.StatusCompensated {
		t.Fatalf("saga %s, want compensated", s.Status)
	}
	tid, err := trace.TraceIDFromHex(s.TraceID)
	if err != nil || tid == caller.SpanContext().TraceID() {
		t.Fatalf("saga's trace id %q (%v): want a trace of its own, not the caller's %s", s.TraceID, err, caller.SpanContext().TraceID())
	}
	spans := spansOf(exp, tid)
	root := spans["saga order"]
	if len(root) != 1 {
		t.Fatalf("saga spans %d, want 1; spans: %v", len(root), spanNames(spans))
	}
	sg := root[0]
	if sg.Parent.IsValid() || len(sg.Links) != 1 || !sg.Links[0].SpanContext.Equal(caller.SpanContext()) {
		t.Errorf("saga span: parent %v, links %v; want a root linked to the caller %v", sg.Parent, sg.Links, caller.SpanContext())
	}
	if attr(sg, "sagad.saga.id").AsString() != st.ID || attr(sg, "sagad.definition").AsString() != "order" ||
		attr(sg, "sagad.definition.version").AsString() != s.Fingerprint || attr(sg, "sagad.saga.idempotency_key").AsString() != "order-1" ||
		attr(sg, "sagad.status").AsString() != "compensated" || sg.Status.Code != codes.Error {
		t.Errorf("saga span attributes %v, status %v", sg.Attributes, sg.Status)
	}
	ev := eventNames(sg)
	for _, want := range []string{"saga_started", "retry_scheduled", "attempt_succeeded", "status_changed"} {
		if !slices.Contains(ev, want) {
			t.Errorf("saga span events %v: %s missing", ev, want)
		}
	}

	// One span per attempt, children of the saga's.
	want := []struct {
		name     string
		outcomes []string
	}{
		{"reserve action", []string{"succeeded"}},
		{"charge action", []string{"retry", "succeeded"}},
		{"ship action", []string{"failed"}},
		{"reserve compensation", []string{"succeeded"}},
	}
	total := 1
	for _, w := range want {
		got := spans[w.name]
		total += len(got)
		if len(got) != len(w.outcomes) {
			t.Errorf("%s: %d spans, want %d", w.name, len(got), len(w.outcomes))
			continue
		}
		for i, sp := range got {
			step, phase, _ := strings.Cut(w.name, " ")
			if sp.Parent.SpanID() != sg.SpanContext.SpanID() || sp.SpanKind != trace.SpanKindInternal {
				t.Errorf("%s: parent %s, want the saga's span %s", w.name, sp.Parent.SpanID(), sg.SpanContext.SpanID())
			}
			if attr(sp, "sagad.outcome").AsString() != w.outcomes[i] || attr(sp, "sagad.attempt").AsInt64() != int64(i+1) ||
				attr(sp, "sagad.step").AsString() != step || attr(sp, "sagad.phase").AsString() != phase ||
				attr(sp, "sagad.saga.id").AsString() != st.ID || attr(sp, "sagad.definition").AsString() != "order" ||
				attr(sp, "sagad.idempotency_key").AsString() != st.ID+"/"+step+"/"+phase {
				t.Errorf("%s attempt %d: attributes %v, want outcome %s", w.name, i+1, sp.Attributes, w.outcomes[i])
			}
			failed := w.outcomes[i] == "retry" || w.outcomes[i] == "failed"
			if failed != (sp.Status.Code == codes.Error) || failed != slices.Contains(eventNames(sp), "exception") {
				t.Errorf("%s attempt %d: status %v, events %v; want an error recorded: %v", w.name, i+1, sp.Status, eventNames(sp), failed)
			}
		}
	}
	if n := len(exp.GetSpans()); n != total {
		t.Errorf("%d spans exported, want %d: %v", n, total, spanNames(spans))
	}

	// Functions run in their attempt's span.
	for _, step := range []string{"reserve", "charge"} {
		v, _ := seen.Load(step)
		sc, _ := v.(trace.SpanContext)
		last := spans[step+" action"][len(spans[step+" action"])-1]
		if !sc.Equal(last.SpanContext) {
			t.Errorf("%s ran in span %v, want its attempt's %v", step, sc, last.SpanContext)
		}
	}
	// The emitted event carries the charge's successful attempt.
	evs, err := b.eng.OutboxList(context.Background(), engine.OutboxListOptions{Status: storage.OutboxNew})
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, e := range evs.Events {
		if e.Name == "payment.charged" {
			found = true
			charged := spans["charge action"][1].SpanContext
			if tp := e.Headers["traceparent"]; tp != "00-"+charged.TraceID().String()+"-"+charged.SpanID().String()+"-01" {
				t.Errorf("event traceparent %q, want the charge's attempt %v", tp, charged)
			}
		}
	}
	if !found {
		t.Errorf("no payment.charged event in the outbox")
	}
}

func spanNames(m map[string][]tracetest.SpanStub) []string {
	var out []string
	for k, v := range m {
		for range v {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// TestTracingOff: with no provider (the global one records nothing) a
// saga stores no trace context and its events carry none.
func TestTracingOff(t *testing.T) {
	t.Parallel()
	def := &saga.Definition{Name: "plain", Events: saga.Events{Lifecycle: true}, Steps: []saga.Step{{Name: "a",
		Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
			if trace.SpanContextFromContext(ctx).IsValid() {
				return nil, saga.Permanent(errors.New("a span in an untraced saga"))
			}
			return nil, c.Emit(saga.Event{Name: "done", Payload: json.RawMessage(`{}`)})
		}}}}
	b := setup(t, setupOpts{defs: []*saga.Definition{def}})
	s := b.run(t, "plain", nil)
	if s.Status != saga.StatusCompleted || s.TraceID != "" {
		t.Fatalf("saga %s, trace id %q; want completed, untraced", s.Status, s.TraceID)
	}
	evs, err := b.eng.OutboxList(context.Background(), engine.OutboxListOptions{Status: storage.OutboxNew})
	if err != nil || len(evs.Events) == 0 {
		t.Fatalf("outbox: %v, %d events", err, len(evs.Events))
	}
	for _, e := range evs.Events {
		if _, ok := e.Headers["traceparent"]; ok {
			t.Errorf("event %s carries a traceparent in an untraced saga", e.Name)
		}
	}
}

// TestTracingOffAfterARestart: a saga traced before a restart, driven
// after it by an engine with no provider, is not traced any more: its
// functions run in no span and its events carry no trace context.
func TestTracingOffAfterARestart(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	spanned := make(chan bool, 2)
	def := &saga.Definition{Name: "later", Steps: []saga.Step{{Name: "a", Retry: saga.RetryPolicy{InitialInterval: time.Hour, Jitter: -1},
		Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
			spanned <- trace.SpanContextFromContext(ctx).IsValid()
			if calls.Add(1) == 1 {
				return nil, errFlaky
			}
			return nil, c.Emit(saga.Event{Name: "done", Payload: json.RawMessage(`{}`)})
		}}}}
	path := filepath.Join(t.TempDir(), "sagad.db")
	clk := clock.NewFake(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	tp := sdktrace.NewTracerProvider()
	defer func() { _ = tp.Shutdown(context.Background()) }()
	retried := make(chan struct{}, 1)
	eng := openStore(t, path, bolt.Options{}, engine.Options{TracerProvider: tp, Clock: clk, Hooks: onRetry(retried)}, def)
	stop := runEngine(t, eng)
	st, err := eng.Start(context.Background(), "later", nil)
	if err != nil {
		t.Fatal(err)
	}
	<-retried
	stop()
	if !<-spanned {
		t.Fatalf("the traced engine ran the step in no span")
	}
	eng = openStore(t, path, bolt.Options{}, engine.Options{Clock: clk}, def)
	stop = runEngine(t, eng)
	clk.Advance(2 * time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := eng.Wait(ctx, st.ID)
	if err != nil {
		t.Fatal(err)
	}
	evs, err := eng.OutboxList(context.Background(), engine.OutboxListOptions{Status: storage.OutboxNew})
	stop()
	if err != nil || s.Status != saga.StatusCompleted || len(evs.Events) != 1 {
		t.Fatalf("saga %s, %d events (%v); want completed, one event", s.Status, len(evs.Events), err)
	}
	if <-spanned {
		t.Errorf("after a restart with no provider, the step ran in a span")
	}
	if tp, ok := evs.Events[0].Headers["traceparent"]; ok {
		t.Errorf("after a restart with no provider, the event carries traceparent %q", tp)
	}
}

// TestTracingParkedAndResumed: Close ends the span of a saga that waits;
// a restart that parks the saga (its version is not registered) opens a
// span of the same trace, a child of the stored one, which ends with a
// parked event; once the definition is registered, another such span
// carries the saga to its end, its attempts its children.
func TestTracingParkedAndResumed(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	def := &saga.Definition{Name: "slow", Steps: []saga.Step{
		{Name: "a", Action: func(context.Context, *saga.Call) (json.RawMessage, error) { return nil, nil }},
		{Name: "b", Retry: saga.RetryPolicy{InitialInterval: time.Hour, Jitter: -1},
			Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
				if calls.Add(1) == 1 {
					return nil, errFlaky // waits an hour for its retry
				}
				return nil, nil
			}},
	}}
	path := filepath.Join(t.TempDir(), "sagad.db")
	clk := clock.NewFake(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	retried := make(chan struct{}, 1)
	eng := openStore(t, path, bolt.Options{}, engine.Options{TracerProvider: tp, Clock: clk, Hooks: onRetry(retried)}, def)
	stop := runEngine(t, eng)
	st, err := eng.Start(context.Background(), "slow", nil)
	if err != nil {
		t.Fatal(err)
	}
	<-retried
	first, err := eng.Get(context.Background(), st.ID)
	if err != nil {
		t.Fatal(err)
	}
	stop() // the saga waits for its retry; Close ends its span
	tid, _ := trace.TraceIDFromHex(first.TraceID)
	spans := spansOf(exp, tid)
	if len(spans["saga slow"]) != 1 || !attr(spans["saga slow"][0], "sagad.interrupted").AsBool() {
		t.Fatalf("after Close: saga spans %v, want one, interrupted", spans["saga slow"])
	}
	orig := spans["saga slow"][0].SpanContext

	// A restart with no version of "slow" registered: parked.
	parks := make(chan engine.ParkInfo, 1)
	eng = openStore(t, path, bolt.Options{}, engine.Options{TracerProvider: tp, Clock: clk,
		Hooks: engine.Hooks{SagaParked: func(p engine.ParkInfo) { parks <- p }}})
	stop = runEngine(t, eng)
	clk.Advance(2 * time.Hour) // the retry is due: the saga is loaded, and parked
	<-parks
	spans = spansOf(exp, tid)
	if len(spans["saga slow"]) != 2 {
		t.Fatalf("after parking: %d saga spans, want 2", len(spans["saga slow"]))
	}
	parked := spans["saga slow"][1]
	if parked.Parent.SpanID() != orig.SpanID() || !attr(parked, "sagad.resumed").AsBool() ||
		!slices.Contains(eventNames(parked), "parked") || attr(parked, "sagad.note").AsString() == "" {
		t.Errorf("parked span: parent %s (want %s), attributes %v, events %v", parked.Parent.SpanID(), orig.SpanID(), parked.Attributes, eventNames(parked))
	}
	// Registered: the saga resumes, in the same trace.
	if err := eng.Register(def); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := eng.Wait(ctx, st.ID)
	if err != nil {
		t.Fatal(err)
	}
	stop()
	if s.Status != saga.StatusCompleted || s.TraceID != first.TraceID {
		t.Fatalf("saga %s, trace %s; want completed in trace %s", s.Status, s.TraceID, first.TraceID)
	}
	spans = spansOf(exp, tid)
	last := spans["saga slow"][len(spans["saga slow"])-1]
	bs := spans["b action"]
	if len(spans["saga slow"]) != 3 || last.Parent.SpanID() != orig.SpanID() || attr(last, "sagad.status").AsString() != "completed" ||
		len(bs) != 2 || bs[1].Parent.SpanID() != last.SpanContext.SpanID() || attr(bs[1], "sagad.outcome").AsString() != "succeeded" {
		t.Errorf("after the restart: %d saga spans, the last's parent %s (want %s), status %v; b's attempts %d, the last's parent %s (want %s)",
			len(spans["saga slow"]), last.Parent.SpanID(), orig.SpanID(), attr(last, "sagad.status"), len(bs), bs[len(bs)-1].Parent.SpanID(), last.SpanContext.SpanID())
	}
}

// spanFile is a span exporter that appends a line per span to a file as
// it ends: what a process killed mid-saga exported.
type spanFile struct{ f *os.File }

type spanLine struct {
	Name, Trace, Span, Parent, Saga string
}

func (s spanFile) ExportSpans(_ context.Context, spans []sdktrace.ReadOnlySpan) error {
	for _, sp := range spans {
		var sagaID string
		for _, kv := range sp.Attributes() {
			if kv.Key == "sagad.saga.id" {
				sagaID = kv.Value.AsString()
			}
		}
		b, _ := json.Marshal(spanLine{Name: sp.Name(), Trace: sp.SpanContext().TraceID().String(), Span: sp.SpanContext().SpanID().String(),
			Parent: sp.Parent().SpanID().String(), Saga: sagaID})
		if _, err := s.f.Write(append(b, '\n')); err != nil {
			return err
		}
	}
	return nil
}

func (s spanFile) Shutdown(context.Context) error { return nil }

const traceChildEnv = "SAGAD_TRACE_CRASH_CHILD"

// traceCrashDef is a saga of three steps whose second kills the process
// when kill is set.
func traceCrashDef(kill bool, seen func(trace.SpanContext)) *saga.Definition {
	ok := func(context.Context, *saga.Call) (json.RawMessage, error) { return nil, nil }
	return &saga.Definition{Name: "crashy", Steps: []saga.Step{
		{Name: "a", Action: ok},
		{Name: "b", Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
			if kill {
				_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {}
			}
			seen(trace.SpanContextFromContext(ctx))
			return nil, nil
		}},
		{Name: "c", Action: ok},
	}}
}

// TestTraceCrashChild is the process TestTraceCrash kills.
func TestTraceCrashChild(t *testing.T) {
	dir := os.Getenv(traceChildEnv)
	if dir == "" {
		t.Skip("run by TestTraceCrash")
	}
	f, err := os.OpenFile(filepath.Join(dir, "spans.jsonl"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spanFile{f}))
	eng, err := engine.Open(filepath.Join(dir, "sagad.db"), engine.Options{TracerProvider: tp})
	if err != nil {
		t.Fatal(err)
	}
	if err := eng.Register(traceCrashDef(true, nil)); err != nil {
		t.Fatal(err)
	}
	go func() { _ = eng.Run(context.Background()) }()
	if _, err := eng.Start(context.Background(), "crashy", nil); err != nil {
		t.Fatal(err)
	}
	select {} // step b kills the process
}

// TestTraceCrash: a saga whose process is killed (SIGKILL) mid-saga
// continues its trace after the restart: the spans the dead process
// exported and those of the new one share the trace id, the new saga span
// is a child of the one the dead process started (stored with the saga),
// and the attempt re-run after the crash, whose function sees the trace,
// is a child of the new one.
func TestTraceCrash(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestTraceCrashChild$", "-test.count=1", "-test.timeout=60s")
	cmd.Env = append(os.Environ(), traceChildEnv+"="+dir)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("child ended with %v, want SIGKILL; output:\n%s", err, out)
	}
	f, err := os.Open(filepath.Join(dir, "spans.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var before []spanLine
	for sc := bufio.NewScanner(f); sc.Scan(); {
		var l spanLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatal(err)
		}
		before = append(before, l)
	}
	// The dead process exported a's attempt, and nothing of b's.
	if len(before) != 1 || before[0].Name != "a action" || before[0].Saga == "" {
		t.Fatalf("spans of the killed process: %+v; want a's attempt only", before)
	}
	a := before[0]

	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	var seen atomic.Value
	eng := openStore(t, filepath.Join(dir, "sagad.db"), bolt.Options{}, engine.Options{TracerProvider: tp},
		traceCrashDef(false, func(sc trace.SpanContext) { seen.Store(sc) }))
	stop := runEngine(t, eng)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := eng.Wait(ctx, a.Saga)
	if err != nil {
		t.Fatal(err)
	}
	stop()
	if s.Status != saga.StatusCompleted || s.TraceID != a.Trace {
		t.Fatalf("saga %s in trace %q; want completed, in the dead process's trace %s", s.Status, s.TraceID, a.Trace)
	}
	tid, _ := trace.TraceIDFromHex(a.Trace)
	spans := spansOf(exp, tid)
	if n := len(exp.GetSpans()); n != 3 || len(spans["saga crashy"]) != 1 || len(spans["b action"]) != 1 || len(spans["c action"]) != 1 {
		t.Fatalf("spans after the restart: %v (%d in all); want the saga's, b's and c's, in trace %s", spanNames(spans), n, a.Trace)
	}
	resumed, b := spans["saga crashy"][0], spans["b action"][0]
	if resumed.Parent.SpanID().String() != a.Parent || !resumed.Parent.IsRemote() || !attr(resumed, "sagad.resumed").AsBool() {
		t.Errorf("resumed saga span's parent %s (remote %v), want the dead process's saga span %s", resumed.Parent.SpanID(), resumed.Parent.IsRemote(), a.Parent)
	}
	for _, sp := range []tracetest.SpanStub{b, spans["c action"][0]} {
		if sp.Parent.SpanID() != resumed.SpanContext.SpanID() {
			t.Errorf("%s: parent %s, want the resumed saga span %s", sp.Name, sp.Parent.SpanID(), resumed.SpanContext.SpanID())
		}
	}
	if !slices.Contains(eventNames(resumed), "attempt_in_doubt") {
		t.Errorf("resumed saga span events %v: attempt_in_doubt missing", eventNames(resumed))
	}
	if sc, _ := seen.Load().(trace.SpanContext); !sc.Equal(b.SpanContext) {
		t.Errorf("b ran in span %v, want its attempt's %v", sc, b.SpanContext)
	}
}

// TestTracingSharedStore: on a store several processes share (PostgreSQL),
// a saga's span ends whenever its driver lets go (another node may drive
// it next), and each later stint is a span of its own in the same trace, a
// child of the first: no span stays open on a node that no longer drives
// the saga.
func TestTracingSharedStore(t *testing.T) {
	t.Parallel()
	url := postgresURL(t)
	var calls atomic.Int32
	def := &saga.Definition{Name: "shared", Steps: []saga.Step{{Name: "a", Retry: saga.RetryPolicy{InitialInterval: time.Hour, Jitter: -1},
		Action: func(context.Context, *saga.Call) (json.RawMessage, error) {
			if calls.Add(1) == 1 {
				return nil, errFlaky
			}
			return nil, nil
		}}}}
	clk := clock.NewFake(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	retried := make(chan struct{}, 1)
	eng := openStore(t, url, bolt.Options{}, engine.Options{TracerProvider: tp, Clock: clk, Hooks: onRetry(retried)}, def)
	stop := runEngine(t, eng)
	<-eng.Recovered()
	st, err := eng.Start(context.Background(), "shared", nil)
	if err != nil {
		t.Fatal(err)
	}
	<-retried
	// The driver lets go after the hook, and no hook says when: look until
	// the span it ends then is exported.
	sagaSpans := func() []tracetest.SpanStub {
		var out []tracetest.SpanStub
		for _, s := range exp.GetSpans() {
			if s.Name == "saga shared" {
				out = append(out, s)
			}
		}
		return out
	}
	for deadline := time.Now().Add(10 * time.Second); len(sagaSpans()) == 0; {
		if time.Now().After(deadline) {
			t.Fatalf("the saga's span did not end when its driver let go")
		}
		time.Sleep(5 * time.Millisecond)
	}
	clk.Advance(2 * time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := eng.Wait(ctx, st.ID)
	if err != nil || s.Status != saga.StatusCompleted {
		t.Fatalf("saga %v, %v; want completed", s, err)
	}
	stop()
	stints := sagaSpans()
	first, last := stints[0], stints[len(stints)-1]
	ids := map[trace.SpanID]bool{}
	for i, sp := range stints {
		ids[sp.SpanContext.SpanID()] = true
		if sp.SpanContext.TraceID() != first.SpanContext.TraceID() || (i > 0 && sp.Parent.SpanID() != first.SpanContext.SpanID()) ||
			attr(sp, "sagad.interrupted").AsBool() {
			t.Errorf("saga span %d: trace %s, parent %s, attributes %v; want the first's trace, a child of it, not interrupted",
				i, sp.SpanContext.TraceID(), sp.Parent.SpanID(), sp.Attributes)
		}
	}
	if len(stints) < 2 || attr(last, "sagad.status").AsString() != "completed" {
		t.Errorf("%d saga spans, the last with status %v; want one per stint, the last completed", len(stints), attr(last, "sagad.status"))
	}
	var attempts int
	for _, sp := range exp.GetSpans() {
		if sp.Name == "a action" {
			attempts++
			if !ids[sp.Parent.SpanID()] {
				t.Errorf("attempt %v: parent %s is none of the saga's spans", attr(sp, "sagad.attempt"), sp.Parent.SpanID())
			}
		}
	}
	if attempts != 2 {
		t.Errorf("%d attempt spans, want 2", attempts)
	}
}

const globalChildEnv = "SAGAD_TRACE_GLOBAL_CHILD"

// TestTracingGlobalProviderChild is TestTracingGlobalProvider's process: it
// sets the global provider, which no other test may see.
func TestTracingGlobalProviderChild(t *testing.T) {
	if os.Getenv(globalChildEnv) == "" {
		t.Skip("run by TestTracingGlobalProvider")
	}
	def := &saga.Definition{Name: "g", Steps: []saga.Step{{Name: "a", Action: func(context.Context, *saga.Call) (json.RawMessage, error) { return nil, nil }}}}
	b := setup(t, setupOpts{defs: []*saga.Definition{def}})
	if s := b.run(t, "g", nil); s.TraceID != "" {
		t.Fatalf("with no provider set, the saga is traced (%s)", s.TraceID)
	}
	exp := tracetest.NewInMemoryExporter()
	otel.SetTracerProvider(sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp)))
	s := b.run(t, "g", nil)
	if s.TraceID == "" || len(exp.GetSpans()) != 2 {
		t.Fatalf("once the global provider is set: trace %q, %d spans; want the saga traced, 2 spans", s.TraceID, len(exp.GetSpans()))
	}
}

// TestTracingGlobalProvider: an engine given no provider traces nothing
// while the program sets none, and traces with the global provider once
// the program sets it, even after the engine was made.
func TestTracingGlobalProvider(t *testing.T) {
	t.Parallel()
	cmd := exec.Command(os.Args[0], "-test.run=^TestTracingGlobalProviderChild$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), globalChildEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestTracingGlobalProviderChild") {
		t.Fatalf("child: %v\n%s", err, out)
	}
}
