package engine

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/oklog/ulid/v2"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
)

// Tracing. A saga is a trace: a span for the saga, from Start until it
// ends, and a child span per attempt of every action, compensation and
// fallback. The saga span's context is stored with the saga
// (storage.Saga.Trace), so a saga that outlives its process continues its
// trace: the engine that resumes it starts a span of its own for the rest
// of the saga, a child of the stored one, with sagad.resumed set. (The
// first process's saga span is exported only if it ended: at Close, or
// when the saga paused, parked or failed; a process killed mid-saga takes
// its saga span with it, not its ended attempts'.) The saga span's events
// mirror the saga's step log.
//
// The engine's spans start with no attributes and get them only when
// they record. While the global provider is unset (the engine was given
// none and the program set none) the engine starts no span at all; with a
// provider that records nothing, one non-recording span per saga and per
// load, and none per attempt.

// TracerName is the instrumentation name of the engine's tracer.
const TracerName = "github.com/sagad/sagad/engine"

// Span attribute keys.
const (
	attrSaga     = attribute.Key("sagad.saga.id")
	attrDef      = attribute.Key("sagad.definition")
	attrVersion  = attribute.Key("sagad.definition.version")
	attrStep     = attribute.Key("sagad.step")
	attrPhase    = attribute.Key("sagad.phase")
	attrAttempt  = attribute.Key("sagad.attempt")
	attrKey      = attribute.Key("sagad.idempotency_key")
	attrStartKey = attribute.Key("sagad.saga.idempotency_key")
	attrOutcome  = attribute.Key("sagad.outcome")
	attrUnknown  = attribute.Key("sagad.outcome_unknown")
	attrStatus   = attribute.Key("sagad.status")
	attrResumed  = attribute.Key("sagad.resumed")
	attrNext     = attribute.Key("sagad.next")
	attrNote     = attribute.Key("sagad.note")
	attrError    = attribute.Key("sagad.error")
	attrDupOf    = attribute.Key("sagad.duplicate_of")
	attrInterupt = attribute.Key("sagad.interrupted")
)

// traceContext is the W3C propagator the engine writes and reads trace
// context with: into stored sagas, outbox events and commands.
var traceContext propagation.TraceContext

// spans holds the saga spans this engine has open, by saga: a saga's span
// outlives its drivers (a retry's backoff releases the driver).
type spans struct {
	n  atomic.Int64 // len(m), read without mu: an untraced engine never locks
	mu sync.Mutex
	m  map[ulid.ULID]trace.Span
}

func (s *spans) get(id ulid.ULID) trace.Span {
	if s.n.Load() == 0 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[id]
}

func (s *spans) put(id ulid.ULID, sp trace.Span) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = make(map[ulid.ULID]trace.Span)
	}
	s.m[id] = sp
	s.n.Store(int64(len(s.m)))
}

// take removes and returns a saga's span.
func (s *spans) take(id ulid.ULID) trace.Span {
	s.mu.Lock()
	defer s.mu.Unlock()
	sp := s.m[id]
	delete(s.m, id)
	s.n.Store(int64(len(s.m)))
	return sp
}

// endAll ends every open saga span: the engine closes, the sagas go on in
// the next process.
func (s *spans) endAll() {
	s.mu.Lock()
	m := s.m
	s.m = nil
	s.n.Store(0)
	s.mu.Unlock()
	for _, sp := range m {
		sp.SetAttributes(attrInterupt.Bool(true))
		sp.End()
	}
}

// tracerFor returns the tracer of a provider (nil: the global one), and,
// when it is the global one and no program has set it yet, that unset
// provider: while the global provider is still it, the engine starts no
// span at all (not even a non-recording one).
func tracerFor(tp trace.TracerProvider) (trace.Tracer, trace.TracerProvider) {
	var unset trace.TracerProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
		// The global provider before otel.SetTracerProvider: a delegate
		// that records nothing until one is set, after which
		// GetTracerProvider returns the one set. (Were the type renamed,
		// the engine would start non-recording spans: correct, and
		// cheap.)
		if fmt.Sprintf("%T", tp) == "*global.tracerProvider" {
			unset = tp
		}
	}
	return tp.Tracer(TracerName), unset
}

// tracingOff reports whether no provider can record a span: none was
// given and the global one is still unset.
func (e *Engine) tracingOff() bool {
	return e.unsetTP != nil && otel.GetTracerProvider() == e.unsetTP
}

// startSpan starts a new saga's span, linked to the span of ctx (the
// caller's), and stores its context in the record.
func (d *driver) startSpan(ctx context.Context) {
	if caller := trace.SpanContextFromContext(ctx); caller.IsValid() {
		d.openSpan(context.Background(), false, trace.WithNewRoot(), trace.WithLinks(trace.Link{SpanContext: caller}))
		return
	}
	d.openSpan(context.Background(), false, newRoot...)
}

// newRoot is the options of a saga's span with no caller: built once, as
// this runs for every saga, traced or not.
var newRoot = []trace.SpanStartOption{trace.WithNewRoot()}

// openSpan starts the saga's span as a child of ctx's and, if it is valid
// (a provider is set), keeps it in the driver and the engine's open spans,
// and in the record when the record holds none.
func (d *driver) openSpan(ctx context.Context, resumed bool, opts ...trace.SpanStartOption) {
	if d.e.tracingOff() {
		d.untraced = true
		return
	}
	r := d.rec
	_, sp := d.e.tracer.Start(ctx, "saga "+r.Definition, opts...)
	sc := sp.SpanContext()
	if !sc.IsValid() || (!sp.IsRecording() && sc.SpanID() == trace.SpanContextFromContext(ctx).SpanID()) {
		// No provider: no span, or one that only carries the stored
		// parent's context (a saga traced before a restart without one).
		d.untraced = true
		return
	}
	if sp.IsRecording() {
		sp.SetAttributes(attrSaga.String(r.ID.String()), attrDef.String(r.Definition), attrVersion.String(r.Fingerprint))
		if r.IdempotencyKey != "" {
			sp.SetAttributes(attrStartKey.String(r.IdempotencyKey))
		}
		if resumed {
			sp.SetAttributes(attrResumed.Bool(true))
		}
	}
	if r.Trace == "" {
		r.Trace, r.TraceState = traceparent(sc), sc.TraceState().String()
	}
	d.span = sp
	d.e.spans.put(r.ID, sp)
}

// tracing returns the saga's span, opening it if the engine has none open
// for the saga (it was started by another process, or before a restart):
// a child of the stored one, or a new root for a saga stored untraced. Nil
// when the saga is not traced.
func (d *driver) tracing() trace.Span {
	if d.span != nil || d.untraced {
		return d.span
	}
	r := d.rec
	if sp := d.e.spans.get(r.ID); sp != nil {
		d.span = sp
		return sp
	}
	if r.Status.Finished() || r.Status == saga.StatusPaused {
		d.untraced = true
		return nil
	}
	if r.Trace == "" {
		d.openSpan(context.Background(), true, trace.WithNewRoot())
		return d.span
	}
	ctx := traceContext.Extract(context.Background(), propagation.MapCarrier{"traceparent": r.Trace, "tracestate": r.TraceState})
	d.openSpan(ctx, true)
	return d.span
}

// traceparent formats a span context as a W3C traceparent.
func traceparent(sc trace.SpanContext) string {
	c := propagation.MapCarrier{}
	traceContext.Inject(trace.ContextWithSpanContext(context.Background(), sc), c)
	return c["traceparent"]
}

// withTrace returns headers (copied) with the trace context of sp added:
// traceparent, and tracestate when there is one.
func withTrace(headers map[string]string, sp trace.Span) map[string]string {
	h := make(map[string]string, len(headers)+2)
	for k, v := range headers {
		h[k] = v
	}
	traceContext.Inject(trace.ContextWithSpan(context.Background(), sp), propagation.MapCarrier(h))
	return h
}

// attemptSpan starts the span of an attempt of n, a child of the saga's,
// and returns ctx with it; nil when the saga is not traced.
func (d *driver) attemptSpan(ctx context.Context, n effect, attempt int) (context.Context, trace.Span) {
	parent := d.tracing()
	if parent == nil {
		return ctx, nil
	}
	r, name := d.rec, d.def.Steps[n.step].Name
	ctx, sp := d.e.tracer.Start(trace.ContextWithSpan(ctx, parent), name+" "+string(n.phase))
	if sp.IsRecording() {
		id := r.ID.String()
		sp.SetAttributes(attrSaga.String(id), attrDef.String(r.Definition), attrVersion.String(r.Fingerprint),
			attrStep.String(name), attrPhase.String(string(n.phase)), attrAttempt.Int(attempt),
			attrKey.String(idempotencyKey(id, name, n.phase)))
	}
	return ctx, sp
}

// endAttempts ends the spans of the attempts whose outcomes the last
// commit recorded.
func (d *driver) endAttempts() {
	for i, o := range d.spanned {
		d.endAttempt(o)
		d.spanned[i] = nil
	}
	d.spanned = d.spanned[:0]
}

// dropSpanned ends the spans of the attempts whose outcomes a failed commit
// did not record: they run again.
func (d *driver) dropSpanned() {
	for i, o := range d.spanned {
		dropAttempt(o)
		d.spanned[i] = nil
	}
	d.spanned = d.spanned[:0]
}

// letGo ends the saga's span as its driver lets go, when the next driver
// may be another process's (a store several share) or must load it again
// (a failed commit): a later driver opens a span of its own, in the same
// trace. Otherwise the span stays open while the saga waits.
func (d *driver) letGo() {
	if d.span == nil || (!d.reload && d.e.sagas.SagaWake() == nil) {
		return
	}
	if sp := d.e.spans.take(d.rec.ID); sp != nil {
		sp.End()
	}
	d.span = nil
}

// endAttempt ends an attempt's span with its outcome, as apply recorded it
// in the log entries just committed.
func (d *driver) endAttempt(o *outcome) {
	sp := o.span
	o.span = nil
	if !sp.IsRecording() {
		sp.End()
		return
	}
	outcome := "failed"
	if o.err == nil {
		outcome = "succeeded"
	}
	name := d.def.Steps[o.step].Name
	for i := len(d.logs) - 1; i >= 0; i-- {
		e := &d.logs[i]
		if e.Step != name || e.Phase != o.phase || (e.Attempt != o.attempt && e.Event != storage.EventBreakerOpen) {
			continue
		}
		switch e.Event {
		case storage.EventAttemptSucceeded:
			outcome = "succeeded"
		case storage.EventAttemptPending:
			outcome = "pending"
		case storage.EventBreakerOpen:
			outcome = "refused"
		case storage.EventAttemptFailed:
			if !e.Next.IsZero() {
				outcome = "retry"
				sp.SetAttributes(attrNext.String(e.Next.UTC().Format(time.RFC3339Nano)))
			}
			if e.OutcomeUnknown {
				sp.SetAttributes(attrUnknown.Bool(true))
			}
		default:
			continue
		}
		break
	}
	sp.SetAttributes(attrOutcome.String(outcome))
	if o.err != nil && outcome != "pending" {
		sp.RecordError(o.err)
		sp.SetStatus(codes.Error, o.err.Error())
	}
	sp.End()
}

// dropAttempt ends the span of an attempt whose outcome is not recorded
// (a shutdown cut it off, a commit failed): it runs again.
func dropAttempt(o *outcome) {
	if o.span != nil {
		o.span.SetAttributes(attrOutcome.String("not_recorded"))
		o.span.End()
		o.span = nil
	}
}

// sentSpan records an attempt sent as a command: a span that ends at once
// (the answer comes later, to the saga), whose context the command
// carries.
func (d *driver) sentSpan(n effect, attempt int, headers map[string]string) {
	_, sp := d.attemptSpan(context.Background(), n, attempt)
	if sp == nil {
		return
	}
	traceContext.Inject(trace.ContextWithSpan(context.Background(), sp), propagation.MapCarrier(headers))
	sp.SetAttributes(attrOutcome.String("sent"))
	sp.End()
}

// traceCommitted mirrors the committed log entries as events of the saga's
// span, and ends it when the saga leaves the engine's hands: finished,
// paused or parked.
func (d *driver) traceCommitted() {
	sp := d.tracing()
	if sp == nil {
		return
	}
	r := d.rec
	if sp.IsRecording() {
		for i := range d.logs {
			e := &d.logs[i]
			name := string(e.Event)
			switch {
			case e.Event == storage.EventAttemptStarted:
				continue // the attempt's span
			case e.Event == storage.EventAttemptFailed && !e.Next.IsZero():
				name = "retry_scheduled"
			}
			attrs := make([]attribute.KeyValue, 0, 6)
			if e.Step != "" {
				attrs = append(attrs, attrStep.String(e.Step), attrPhase.String(string(e.Phase)))
			}
			if e.Attempt != 0 {
				attrs = append(attrs, attrAttempt.Int(e.Attempt))
			}
			if e.Status != "" {
				attrs = append(attrs, attrStatus.String(string(e.Status)))
			}
			if !e.Next.IsZero() {
				attrs = append(attrs, attrNext.String(e.Next.UTC().Format(time.RFC3339Nano)))
			}
			if e.Error != "" {
				attrs = append(attrs, attrError.String(e.Error))
			}
			if e.Note != "" {
				attrs = append(attrs, attrNote.String(e.Note))
			}
			sp.AddEvent(name, trace.WithAttributes(attrs...))
		}
	}
	if !r.Status.Finished() && r.Status != saga.StatusPaused && r.Parked == "" {
		return
	}
	d.endSaga(sp)
}

// endSaga ends the saga's span with its status.
func (d *driver) endSaga(sp trace.Span) {
	r := d.rec
	d.e.spans.take(r.ID)
	d.span, d.untraced = nil, true
	if sp.IsRecording() {
		sp.SetAttributes(attrStatus.String(string(r.Status)))
		switch {
		case r.Parked != "":
			sp.SetAttributes(attrNote.String(r.Parked))
		case r.Status == saga.StatusCompensated || r.Status == saga.StatusFailed:
			sp.SetStatus(codes.Error, r.Error)
		}
	}
	sp.End()
}

// duplicateSpan ends the span of a Start that found its idempotency key
// taken: no saga of its own.
func (d *driver) duplicateSpan(dup ulid.ULID, err error) {
	sp := d.span
	if sp == nil {
		return
	}
	d.e.spans.take(d.rec.ID)
	d.span = nil
	if err != nil {
		sp.RecordError(err)
		sp.SetStatus(codes.Error, err.Error())
	} else {
		sp.SetAttributes(attrDupOf.String(dup.String()))
	}
	sp.End()
}

// traceID returns the trace id a stored traceparent names, or "".
func traceID(traceparent string) string {
	// 00-<32 hex trace id>-<16 hex span id>-<2 hex flags>
	if len(traceparent) < 35 || traceparent[2] != '-' {
		return ""
	}
	return traceparent[3:35]
}
