package engine

import (
	"context"
	"encoding/json"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/errors"
	"github.com/oklog/ulid/v2"
	"github.com/sony/gobreaker/v2"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagad/sagad/clock"
	"github.com/sagad/sagad/internal/dag"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
)

// A driver owns one saga while it is active: it alone writes the saga's
// record. Each loop applies the last attempt's outcome, decides what comes
// next, commits both in ONE write, and only then starts the next side
// effect.
type driver struct {
	e    *Engine
	def  *saga.Definition
	g    *dag.Graph // def's steps: which wait for which
	rec  *storage.Saga
	slot bool // holds a concurrency slot
	// extra counts the concurrency slots held beyond slot, for attempts of
	// parallel steps.
	extra int
	// mu is held from deciding a transition until it is committed (see
	// transition); Abort holds it while it records a request, so that a
	// transition either sees the request or commits before it is made.
	mu    sync.Mutex
	abort atomic.Bool
	// pausing: this transition found a pause requested (Engine.Pause): no
	// attempt starts, and the saga pauses once none is in flight.
	pausing bool
	rs      *recoveryStats // set for sagas resumed by recovery
	// reload asks release to load the saga again from storage after a
	// pause: a commit failed, and what was not committed is forgotten.
	reload bool
	// op marks an operator's hold (Abort, Retry, Resolve), not a driver
	// that loaded the saga.
	op bool
	// claimed: the driver holds the saga's claim in the store (it loaded
	// or created the saga, or committed a change to it); release lets go.
	claimed bool
	// abortedRemotely: the last commit found an abort request another
	// process wrote; the attempt it recorded as started is not run.
	abortedRemotely bool

	// starts are the attempts the last commit recorded as started, to run
	// now; outs the outcomes to apply at the next transition.
	starts []effect
	outs   []*outcome
	// results receives the outcomes of attempts run in goroutines of their
	// own (parallel steps); running counts those not yet received.
	results chan *outcome
	running int
	// failing is why the saga fails once the attempts in flight have
	// ended, when a step failed for good beside them (the record says so
	// too: a failed step past the pivot, a compensation that GaveUp).
	failing error

	logs     []storage.LogEntry
	from     saga.Status // status at the last commit
	clrAbort bool        // delete the abort request in the next commit
	finished bool        // the saga reached a final status: release notifies waiters
	// inDoubt marks steps whose attempt was in flight at a crash: their
	// outcome is unknown until they are attempted again.
	inDoubt map[int]bool
	// redispatch asks release to dispatch the saga again: something wanted
	// it while this driver held it. Guarded by e.mu.
	redispatch bool
	statuses   []saga.Status // statuses entered since the last commit, for the hook
	hooks      []AttemptInfo
	waits      []WaitInfo            // waits begun since the last commit, for Hooks.StepWaiting
	events     []storage.OutboxEvent // outbox events for the next commit
	tx         saga.Tx               // a step's transaction the next commit is written in
	tr         storage.Transition    // the change change() hands to the store, reused
	// span is the saga's span while the driver has looked for it (see
	// tracing); untraced: the saga is not traced, or its span ended.
	span     trace.Span
	untraced bool
	spanned  []*outcome // outcomes applied whose attempts' spans end at the commit
}

// effect is an attempt to run: a step's phase function.
type effect struct {
	step  int
	phase saga.Phase
}

type outcome struct {
	step    int
	phase   saga.Phase
	attempt int
	data    json.RawMessage
	err     error
	started time.Time
	dur     time.Duration
	// cut: the attempt's timeout or the saga's deadline ended it before it
	// answered, or it failed with saga.ErrOutcomeUnknown: its outcome is
	// unknown.
	cut bool
	// blocked: the circuit breaker refused the call; nothing was attempted.
	blocked      bool
	blockedUntil time.Time
	// events the function emitted; written only if it succeeded.
	events []saga.Event
	// tx is the transaction the function enlisted (saga.Call.Enlist); only
	// a succeeded attempt keeps it.
	tx saga.Tx
	// span is the attempt's span, when the saga is traced.
	span trace.Span
}

// dropTx rolls back the transaction the attempt enlisted, if any: its
// writes are not kept.
func (o *outcome) dropTx() {
	if o.tx != nil {
		_ = o.tx.Rollback(context.Background())
		o.tx = nil
	}
}

// create stores a new saga; with plan it also plans (and records) its
// first attempt. It returns the id of an existing saga when the
// idempotency key is taken.
func (d *driver) create(now time.Time, plan bool) (dup ulid.ULID, err error) {
	d.log(now, storage.LogEntry{Event: storage.EventStarted, Status: saga.StatusRunning})
	d.lifecycle(now, "saga.started", "", func(b []byte) []byte { return appendRaw(b, "input", d.rec.Input) })
	if plan {
		d.advance(now)
	}
	dup, err = d.e.sagas.SagaCreate(context.Background(), d.change())
	if err == nil && dup == (ulid.ULID{}) {
		d.claimed = true
		d.committed()
	}
	return dup, err
}

// load reads the saga for a dispatch and prepares it to be driven. It
// returns false when there is nothing to drive (finished, or parked).
func (d *driver) load(now time.Time) (bool, error) {
	id := d.rec.ID
	// The claim reads the record and its abort request together: an abort
	// written later reaches the driver through d.abort (see Engine.Abort)
	// or, from another process, through its next commit.
	r, aborted, err := d.e.sagas.SagaClaim(context.Background(), id)
	if errors.Is(err, storage.ErrClaimed) {
		return false, nil // another process drives it
	}
	if err != nil {
		return false, err
	}
	d.claimed = true
	d.rec = r
	d.from = r.Status
	if r.Status.Finished() {
		return false, nil
	}
	if aborted {
		d.abort.Store(true)
	}
	d.def, d.g = d.e.plan(r.Definition, r.Fingerprint)
	if d.def == nil || len(d.def.Steps) != len(r.Steps) {
		reason := "definition " + r.Definition + " version " + r.Fingerprint + " is not registered"
		if d.rs != nil {
			d.rs.parked.Add(1)
		}
		d.e.log.Warn("saga parked: its definition is not registered; register it to resume",
			"saga", r.ID.String(), "definition", r.Definition, "fingerprint", r.Fingerprint)
		if r.Parked == reason && r.WakeAt.IsZero() {
			return false, nil
		}
		r.Parked, r.WakeAt = reason, time.Time{}
		d.log(now, storage.LogEntry{Event: storage.EventParked, Note: reason})
		if err := d.commit(); err != nil {
			// Not a damaged record: the saga is loaded again later.
			d.e.commitFailed(d, err)
			return false, nil
		}
		if h := d.e.opts.Hooks.SagaParked; h != nil {
			h(ParkInfo{SagaID: r.ID.String(), Definition: r.Definition, Version: r.Fingerprint, Reason: reason})
		}
		// Register may have stored the definition between the look-up and
		// this commit, and scanned for parked sagas before it: look again.
		if d.e.definition(r.Definition, r.Fingerprint) != nil {
			d.e.mu.Lock()
			d.redispatch = true
			d.e.mu.Unlock()
		}
		return false, nil
	}
	if r.Parked != "" {
		r.Parked = ""
		d.log(now, storage.LogEntry{Event: storage.EventResumed, Note: "definition registered"})
	}
	if !r.WakeAt.IsZero() && !slices.ContainsFunc(r.Steps, func(s storage.Step) bool { return !s.Next.IsZero() }) {
		// Written before steps had wake times of their own: the saga's
		// is the waiting step's.
		for i := range r.Steps {
			if s := &r.Steps[i]; !s.InFlight && (s.Status == saga.StepRunning || s.Status == saga.StepCompensating) {
				s.Next = r.WakeAt
			}
		}
	}
	for i := range r.Steps {
		s := &r.Steps[i]
		if !s.InFlight {
			continue
		}
		// Started, no outcome: the process died mid-attempt. Run it again,
		// under the same attempt number and idempotency key.
		s.InFlight = false
		s.Attempts--
		// Recorded, so that a saga that turns around before the attempt
		// runs again compensates it, after a pause or restart too.
		s.OutcomeUnknown = true
		if d.inDoubt == nil {
			d.inDoubt = make(map[int]bool)
		}
		d.inDoubt[i] = true
		if d.rs != nil {
			d.rs.inDoubt.Add(1)
		}
		d.log(now, storage.LogEntry{Event: storage.EventInDoubt, Step: s.Name, Phase: s.Phase, Attempt: s.Attempts + 1,
			Note: "attempt started before a restart has no recorded outcome; running it again with the same idempotency key"})
	}
	return true, nil
}

// run drives the saga until it waits, finishes, or the engine stops. A
// single attempt runs on this goroutine; attempts of parallel steps run in
// goroutines of their own, and their outcomes are committed as they come,
// several in one commit when they come together.
func (d *driver) run() {
	defer d.e.release(d)
	for {
		if d.abortedRemotely {
			d.skipAborted()
		}
		if len(d.starts) == 1 && d.running == 0 && len(d.outs) == 0 {
			// The common case: one attempt, nothing else in flight.
			n := d.starts[0]
			d.starts = d.starts[:0]
			d.outs = append(d.outs, d.attempt(n).run(d))
		} else {
			d.launch()
			if len(d.outs) == 0 {
				if d.running == 0 {
					return // nothing to do before rec.WakeAt, or ever
				}
				d.collect()
			}
		}
		if context.Cause(d.e.attempts) != nil && !d.cutOff() {
			return
		}
		if err := d.transition(d.e.clock.Now()); err != nil {
			d.e.commitFailed(d, err)
			d.forget()
			return
		}
	}
}

// skipAborted ends the attempts the last commit recorded as started
// without running them: an abort request from another process came first.
// Compensations still run.
//
//go:noinline
func (d *driver) skipAborted() {
	d.abortedRemotely = false
	d.starts = slices.DeleteFunc(d.starts, func(n effect) bool {
		if n.phase == saga.PhaseCompensation {
			return false
		}
		d.outs = append(d.outs, &outcome{step: n.step, phase: n.phase, attempt: d.rec.Steps[n.step].Attempts,
			err: saga.Permanent(errors.Wrap(ErrAborted, "not run: an abort request came first"))})
		return true
	})
}

// launch runs the attempts the last commit recorded as started, each in a
// goroutine of its own that reports on d.results.
//
//go:noinline
func (d *driver) launch() {
	for _, n := range d.starts {
		if d.results == nil {
			d.results = make(chan *outcome, len(d.rec.Steps))
		}
		p := d.attempt(n)
		go func() { d.results <- p.run(d) }()
	}
	d.running += len(d.starts)
	d.starts = d.starts[:0]
}

// cutOff handles a shutdown that cut attempts off: those that did not
// answer stay in flight for recovery; those that did are committed once
// every attempt has ended. It reports whether there is anything to commit.
// Not inlined, as the other cold paths below: run is at the bottom of
// every driver's stack.
//
//go:noinline
func (d *driver) cutOff() bool {
	for ; d.running > 0; d.running-- {
		d.outs = append(d.outs, <-d.results)
	}
	d.outs = slices.DeleteFunc(d.outs, func(o *outcome) bool {
		if o.err != nil && !errors.Is(o.err, saga.ErrPending) {
			dropAttempt(o)
			return true
		}
		return false
	})
	return len(d.outs) > 0
}

// forget drops what a failed commit did not record: attempts still running
// end unseen (the saga is loaded again), and the steps' own writes go.
//
//go:noinline
func (d *driver) forget() {
	for ; d.running > 0; d.running-- {
		d.outs = append(d.outs, <-d.results)
	}
	for _, o := range d.outs {
		o.dropTx()
		dropAttempt(o)
	}
	d.outs = nil
	if len(d.spanned) > 0 {
		d.dropSpanned()
	}
}

// collect waits for an outcome of an attempt running in its own goroutine,
// or for a step's retry to fall due, then takes every outcome that came
// meanwhile.
func (d *driver) collect() {
	var due <-chan time.Time
	if wake := d.rec.WakeAt; !wake.IsZero() && d.e.isRunning() {
		t := d.e.clock.NewTimer(clock.Until(d.e.clock, wake))
		defer t.Stop()
		due = t.C()
	}
	select {
	case o := <-d.results:
		d.running--
		d.outs = append(d.outs, o)
	case <-due:
	}
	for {
		select {
		case o := <-d.results:
			d.running--
			d.outs = append(d.outs, o)
		default:
			return
		}
	}
}

// transition applies the outcomes that came, plans what comes next and
// commits both, holding d.mu until the write is durable (see driver.mu).
// Hooks run after.
func (d *driver) transition(now time.Time) error {
	d.mu.Lock()
	d.advance(now)
	err := d.write()
	d.mu.Unlock()
	if err != nil {
		d.starts = d.starts[:0]
		return err
	}
	if d.extra > 0 {
		d.releaseSlots()
	}
	d.committed()
	return nil
}

// prepared is an attempt ready to run: what it needs from the saga, read
// on the driver's goroutine, so that it may run on another.
type prepared struct {
	o        *outcome
	call     *saga.Call
	f        saga.Func
	b        *breaker
	parent   context.Context
	timeout  time.Duration
	deadline time.Time
}

// run runs the attempt and returns its outcome.
func (p prepared) run(d *driver) *outcome {
	ctx, cancel := clock.WithTimeout(d.e.clock, p.parent, p.timeout)
	defer cancel()
	if !p.deadline.IsZero() {
		var cancelD context.CancelFunc
		ctx, cancelD = d.e.clock.WithDeadline(ctx, p.deadline)
		defer cancelD()
	}
	d.call(ctx, p.o, p.b, p.f, p.call)
	return p.o
}

// attempt prepares an attempt of n. It reads the saga, on the driver's
// goroutine; the attempt may then run on another.
func (d *driver) attempt(n effect) prepared {
	r := d.rec
	st, s := &d.def.Steps[n.step], &r.Steps[n.step]
	f := st.Action
	switch n.phase {
	case saga.PhaseFallback:
		f = st.Fallback
	case saga.PhaseCompensation:
		f = st.Compensation
	}
	if f == nil {
		// A phase sent as a command whose command could not be built
		// when the attempt started: it fails with the reason.
		f = commandFunc(st.Commands.For(n.phase))
	}
	timeout := attemptTimeout(st)
	parent := d.e.shards[r.ID[15]%byte(len(d.e.shards))]
	// Past the pivot the saga only goes forward: its deadline no longer
	// applies (nor does it to compensations, which must run to the end).
	var deadline time.Time
	if n.phase != saga.PhaseCompensation && !d.pastPivot() {
		deadline = r.Deadline
	}
	o := &outcome{step: n.step, phase: n.phase, attempt: s.Attempts}
	if !d.untraced {
		parent, o.span = d.attemptSpan(parent, n, s.Attempts)
	}
	return prepared{o: o, call: d.newCall(n), f: f, b: d.breaker(n), parent: parent, timeout: timeout, deadline: deadline}
}

// newCall describes the current attempt of n to its function.
func (d *driver) newCall(n effect) *saga.Call {
	r, st := d.rec, &d.def.Steps[n.step]
	sagaID := r.ID.String()
	call := &saga.Call{
		SagaID:         sagaID,
		Definition:     r.Definition,
		Step:           st.Name,
		Phase:          n.phase,
		Attempt:        r.Steps[n.step].Attempts,
		IdempotencyKey: idempotencyKey(sagaID, st.Name, n.phase),
	}
	// The function gets its own copies: changing them in place must not
	// change what is stored or what later steps see.
	call.Input, call.Data = cloneInput(r.Input, r.Data)
	return call
}

// call runs f with the attempt's context and records what happened in o.
func (d *driver) call(ctx context.Context, o *outcome, b *breaker, f saga.Func, call *saga.Call) {
	sagaID, st := call.SagaID, &d.def.Steps[o.step]
	if testHook != nil {
		testHook("before_attempt", sagaID, st.Name, o.phase)
		defer testHook("after_attempt", sagaID, st.Name, o.phase)
	}
	start := d.e.clock.Now()
	if b != nil {
		o.data, o.err = b.cb.Execute(func() (json.RawMessage, error) { return safeCall(ctx, f, call) })
		if errors.Is(o.err, gobreaker.ErrOpenState) || errors.Is(o.err, gobreaker.ErrTooManyRequests) {
			o.blocked = true
			if blocked, until := b.blocked(start); blocked {
				o.blockedUntil = until
			} else {
				// Half-open and its trial slots taken: look again shortly.
				o.blockedUntil = start.Add(min(b.policy.OpenFor/10+time.Millisecond, time.Second))
			}
		}
	} else {
		o.data, o.err = safeCall(ctx, f, call)
	}
	o.started, o.dur = start, clock.Since(d.e.clock, start)
	// Cut off by its timeout or the deadline, or the function says it does
	// not know whether the participant acted: the outcome is unknown.
	o.cut = o.err != nil && !o.blocked && (ctx.Err() != nil || saga.IsOutcomeUnknown(o.err))
	if o.err == nil && len(o.data) > 0 && !json.Valid(o.data) {
		o.err = saga.Permanent(errors.Newf("step %q %s returned invalid JSON", st.Name, o.phase))
	}
	if evs := call.Emitted(); o.err == nil {
		o.events = evs
	}
	if o.tx = call.Enlisted(); o.tx != nil {
		if acc, ok := d.e.store.(storage.TxAcceptor); o.err == nil && (!ok || !acc.AcceptsTx(o.tx)) {
			// Retrying cannot help: the store cannot write in it.
			o.err = saga.Permanent(errors.Newf("step %q enlisted a transaction (%T) the engine's store cannot write in", st.Name, o.tx))
			o.events = nil
		}
		if o.err != nil {
			o.dropTx() // the attempt did not succeed: the step's own writes go
		}
	}
}

// checkOutput refuses an action's or fallback's output that is over
// Options.MaxStepOutput, or that would take the saga's data over
// Options.MaxSagaData. It is small, and the refusal is built elsewhere: it
// runs deep in the driver's stack, on every success.
func (d *driver) checkOutput(step int, out json.RawMessage) error {
	if len(out) == 0 {
		return nil
	}
	if m := d.e.opts.MaxStepOutput; m > 0 && len(out) > m {
		return d.tooLarge(step, len(out), 0, m)
	}
	if m := d.e.opts.MaxSagaData; m > 0 {
		total := len(out)
		for k, v := range d.rec.Data {
			if k != d.def.Steps[step].Name {
				total += len(v)
			}
		}
		if total > m {
			return d.tooLarge(step, len(out), total, m)
		}
	}
	return nil
}

// tooLarge is checkOutput's refusal: of the output itself (total 0), or of
// the saga's data it would make.
//
//go:noinline
func (d *driver) tooLarge(step, n, total, limit int) error {
	name := d.def.Steps[step].Name
	if total == 0 {
		return saga.Permanent(errors.WithHint(errors.Mark(errors.Newf(
			"step %q returned %d bytes of output, over the limit of %d", name, n, limit), ErrTooLarge),
			"return less (an id or a URL instead of a document), or raise the engine's MaxStepOutput (sagad serve --max-step-output)"))
	}
	return saga.Permanent(errors.WithHint(errors.Mark(errors.Newf(
		"step %q returned %d bytes of output, which would make the saga's data %d bytes, over the limit of %d",
		name, n, total, limit), ErrTooLarge),
		"return less from the saga's steps, or raise the engine's MaxSagaData (sagad serve --max-saga-data)"))
}

// cloneInput copies a saga's input and data into one new buffer.
func cloneInput(input json.RawMessage, data map[string]json.RawMessage) (json.RawMessage, map[string]json.RawMessage) {
	n := len(input)
	for _, v := range data {
		n += len(v)
	}
	if n == 0 && data == nil {
		return nil, nil
	}
	buf := make([]byte, 0, n)
	take := func(v []byte) json.RawMessage {
		if v == nil {
			return nil
		}
		buf = append(buf, v...)
		return buf[len(buf)-len(v) : len(buf) : len(buf)]
	}
	in := take(input)
	var out map[string]json.RawMessage
	if data != nil {
		out = make(map[string]json.RawMessage, len(data))
		for k, v := range data {
			out[k] = take(v)
		}
	}
	return in, out
}

// testHook, when set by a test, is called with "before_attempt" once an
// attempt is recorded as started and just before its function runs, and with
// "after_attempt" once the function returned and before its outcome is
// committed. Crash tests use it to kill the process at those instants.
var testHook func(point, sagaID, step string, phase saga.Phase)

// breaker returns the breaker guarding an effect, or nil. Fallbacks call
// another participant and are not guarded by the step's breaker.
func (d *driver) breaker(n effect) *breaker {
	name := d.def.Steps[n.step].Breaker.Name
	if name == "" || n.phase == saga.PhaseFallback {
		return nil
	}
	d.e.mu.Lock()
	defer d.e.mu.Unlock()
	return d.e.breakers[name]
}

// advance applies the outcomes that came, then moves the saga as far as it
// can go without a side effect: it records as started the attempts to run
// once the commit is durable (d.starts), and sets the saga's wake time.
func (d *driver) advance(now time.Time) {
	r := d.rec
	r.UpdatedAt = now
	if len(d.outs) > 0 {
		keep := d.outs[:0]
		for _, o := range d.outs {
			if o.tx != nil && d.tx != nil {
				// One enlisted transaction per commit: the next takes it.
				keep = append(keep, o)
				continue
			}
			d.apply(o, now)
			if o.span != nil {
				d.spanned = append(d.spanned, o) // its span ends once the outcome is durable
			}
		}
		clear(d.outs[len(keep):])
		d.outs = keep
	}
	d.expirePending(now)
	stopping := !d.e.isRunning()
	d.pausing = d.e.pauseRequested(r.ID)
	for {
		switch r.Status {
		case saga.StatusRunning:
			past := d.pastPivot()
			if d.abort.Load() {
				d.abort.Store(false)
				d.clrAbort = true
				if !past {
					// An abort calls off a pause: the saga is undone.
					d.e.pauseDone(r.ID)
					d.pausing = false
					d.compensate(now, ErrAborted)
					continue
				}
				d.log(now, storage.LogEntry{Event: storage.EventAbortRequested,
					Note: "abort ignored: the saga is past its pivot and can only go forward"})
			}
			if !r.Deadline.IsZero() && !now.Before(r.Deadline) && !past {
				d.compensate(now, errors.Wrapf(ErrDeadline, "deadline %s", r.Deadline.UTC().Format(time.RFC3339Nano)))
				continue
			}
			d.forward(now, stopping, past)
		case saga.StatusCompensating:
			d.backward(now, stopping)
		default:
			r.WakeAt = time.Time{}
		}
		return
	}
}

// tally is what forward and backward learn as they look at the steps.
type tally struct {
	wake     time.Time // the earliest time something is due
	inFlight bool      // an attempt runs
	waiting  bool      // an attempt waits for its answer (it may come, or time out)
	deferred bool      // an attempt is due and waits for a concurrency slot
}

// due notes that something is due at t.
func (t *tally) due(at time.Time) { t.wake = earliest(t.wake, at) }

// turn acts on step i, whose turn has come: it records its next attempt
// as started, unless nothing may start (held: a failure or a pause waits
// for the attempts in flight; stopping), no concurrency slot is free, or
// an open breaker makes it wait.
func (d *driver) turn(now time.Time, i int, held, stopping bool, t *tally) {
	switch {
	case held && !d.inDoubt[i]:
		// Nothing new starts; an attempt in flight at a crash runs to its end.
	case stopping:
		t.due(now)
	case !d.sends(i) && !d.canStart():
		// A command needs no slot: it is written with the commit.
		t.deferred = true
	case d.begin(now, i):
		if s := &d.rec.Steps[i]; s.Pending {
			// Sent as a command: it waits for the answer, or its timeout.
			t.waiting = true
			t.due(s.Next)
		} else {
			t.inFlight = true
		}
	default:
		t.due(d.rec.Steps[i].Next)
	}
}

// forward starts every step whose wait is over: those whose dependencies
// have all succeeded, and those whose retry is due. It completes the saga
// when every step has succeeded.
func (d *driver) forward(now time.Time, stopping, past bool) {
	r := d.rec
	var t tally
	done := true
	// A step failed for good past the pivot: nothing new starts, and the
	// saga fails once nothing is in flight.
	stuck := d.failing != nil || d.anyStep(saga.StepFailed, false)
	for _, i := range d.g.Order {
		s := &r.Steps[i]
		switch s.Status {
		case saga.StepSucceeded:
			continue
		case saga.StepPending:
			done = false
			if !d.depsSucceeded(i) {
				continue
			}
		case saga.StepRunning:
			done = false
			if s.Pending {
				t.waiting = true
				t.due(s.Next)
				continue
			}
			if s.InFlight {
				t.inFlight = true
				continue
			}
			if s.Next.After(now) {
				t.due(s.Next)
				continue
			}
		default: // failed for good past the pivot
			done = false
			continue
		}
		d.turn(now, i, stuck || d.pausing, stopping, &t)
	}
	switch {
	case done:
		d.finish(now, saga.StatusCompleted)
		return
	case stuck && !t.inFlight && !t.waiting:
		d.fail(now, d.failingCause())
		return
	case stuck:
	case d.pausing && !t.inFlight:
		d.enterPause(now)
		return
	case t.deferred && !t.inFlight:
		t.wake = now // a driver with a slot starts it
	}
	if !t.wake.IsZero() && !r.Deadline.IsZero() && t.wake.After(r.Deadline) && !past {
		t.wake = r.Deadline
	}
	r.WakeAt = t.wake
}

// backward starts the compensations whose turn has come, in reverse
// dependency order: a step's once the compensations of the steps that
// waited for it have ended. It ends the saga compensated when nothing is
// left to undo.
func (d *driver) backward(now time.Time, stopping bool) {
	r := d.rec
	var t tally
	for i := range r.Steps {
		if s := &r.Steps[i]; s.Status == saga.StepRunning && !s.InFlight && !s.Pending {
			// The action of a parallel step that was in flight when the
			// saga turned around, and did not answer before a restart or
			// a pause: undo it if it may have acted.
			d.undoOrDrop(now, i)
		}
	}
	// A compensation failed for good: nothing new starts, and the saga
	// fails once nothing is in flight.
	stuck := d.failing != nil || d.anyStep(saga.StepCompensating, true)
	for k := len(d.g.Order) - 1; k >= 0; k-- {
		i := d.g.Order[k]
		s := &r.Steps[i]
		switch {
		case s.Pending:
			// An attempt that waits for its answer.
			t.waiting = true
			t.due(s.Next)
			continue
		case s.InFlight:
			// A compensation, or the action of a parallel step that was
			// running when the saga turned around.
			t.inFlight = true
			continue
		case s.Status == saga.StepSucceeded:
			if !d.dependentsDone(i) {
				continue
			}
			if !d.def.Steps[i].HasCompensation() {
				s.Status = saga.StepSkipped
				continue
			}
		case s.Status == saga.StepCompensating:
			if s.GaveUp {
				continue
			}
			if s.Next.After(now) {
				t.due(s.Next)
				continue
			}
			if !d.dependentsDone(i) {
				continue
			}
		default:
			continue
		}
		d.turn(now, i, stuck || d.pausing, stopping, &t)
	}
	// Something is left to undo, or to wait for.
	left := slices.ContainsFunc(r.Steps, func(s storage.Step) bool {
		return s.Status == saga.StepSucceeded || s.Status == saga.StepCompensating || s.Pending
	})
	switch {
	case stuck && !t.inFlight && !t.waiting:
		d.fail(now, d.failingCause())
		return
	case stuck:
	case d.pausing && !t.inFlight && left:
		d.enterPause(now)
		return
	case !t.inFlight && !left:
		d.finish(now, saga.StatusCompensated)
		return
	case t.deferred && !t.inFlight:
		t.wake = now // a driver with a slot starts it
	}
	r.WakeAt = t.wake
}

// pend records that an attempt waits for its participant's answer
// (saga.ErrPending): until Engine.Complete delivers it, or the step's
// timeout passes.
//
//go:noinline
func (d *driver) pend(o *outcome, now time.Time) {
	delete(d.inDoubt, o.step)
	o.dropTx() // nothing is kept before the answer
	d.waitForAnswer(now, o.step, o.phase, o.attempt, o.started, o.dur,
		"the participant answers later; waiting until the step's timeout")
}

// waitForAnswer makes attempt of step i's phase, started at started, wait
// for its participant's answer until the step's timeout: recorded, and
// reported to Hooks.AttemptPending.
func (d *driver) waitForAnswer(now time.Time, i int, phase saga.Phase, attempt int, started time.Time, dur time.Duration, note string) {
	s := &d.rec.Steps[i]
	s.Pending, s.Next = true, started.Add(d.stepTimeout(i))
	d.log(now, storage.LogEntry{Event: storage.EventAttemptPending, Step: s.Name, Phase: phase, Attempt: attempt,
		Duration: dur, Next: s.Next, Note: note})
	d.hooks = append(d.hooks, AttemptInfo{Definition: d.rec.Definition, Step: s.Name, Phase: phase, Attempt: attempt,
		Duration: dur, Pending: true})
}

// expirePending ends the waits whose time is up: each attempt failed with
// an unknown outcome, and its retry policy applies.
func (d *driver) expirePending(now time.Time) {
	for i := range d.rec.Steps {
		if s := &d.rec.Steps[i]; s.Pending && !s.Next.After(now) {
			timeout := d.stepTimeout(i)
			started := s.Next.Add(-timeout)
			s.Pending, s.Next = false, time.Time{}
			d.apply(&outcome{step: i, phase: s.Phase, attempt: s.Attempts, started: started, dur: timeout, cut: true,
				err: saga.OutcomeUnknown(errors.Newf("step %q %s: no answer within its timeout (%s)", s.Name, s.Phase, timeout))}, now)
		}
	}
}

// stepTimeout is the timeout of step i's attempts.
func (d *driver) stepTimeout(i int) time.Duration { return attemptTimeout(&d.def.Steps[i]) }

// attemptTimeout is the timeout of a step's attempts (saga.Step.Timeout).
func attemptTimeout(st *saga.Step) time.Duration {
	if st.Timeout > 0 {
		return st.Timeout
	}
	return 30 * time.Second
}

// enterPause pauses the saga: no attempt of it is in flight, and none
// starts until it is resumed (Engine.Resume), in the status it had.
// Not inlined: a cold path, kept out of the frames of the hot ones.
//
//go:noinline
func (d *driver) enterPause(now time.Time) {
	r := d.rec
	d.pausing = false
	r.PausedFrom, r.Status, r.WakeAt = r.Status, saga.StatusPaused, time.Time{}
	d.statuses = append(d.statuses, r.Status)
	d.log(now, storage.LogEntry{Event: storage.EventPaused, Status: r.Status,
		Note: "paused by an operator: no attempt starts until it is resumed"})
}

// anyStep reports whether a step of the saga is in status st (and, with
// gaveUp, has given up).
func (d *driver) anyStep(st saga.StepStatus, gaveUp bool) bool {
	for i := range d.rec.Steps {
		if s := &d.rec.Steps[i]; s.Status == st && (!gaveUp || s.GaveUp) {
			return true
		}
	}
	return false
}

// depsSucceeded reports whether every step step i waits for has succeeded.
func (d *driver) depsSucceeded(i int) bool {
	for _, k := range d.g.Deps[i] {
		if d.rec.Steps[k].Status != saga.StepSucceeded {
			return false
		}
	}
	return true
}

// dependentsDone reports whether every step that waits for step i is done
// with: never ran, failed without effect, or compensated.
func (d *driver) dependentsDone(i int) bool {
	for _, k := range d.g.Dependents[i] {
		switch s := &d.rec.Steps[k]; {
		case s.InFlight, s.Status == saga.StepSucceeded, s.Status == saga.StepCompensating, s.Status == saga.StepRunning:
			return false
		}
	}
	return true
}

// sends reports whether the next attempt of step i is a command (see
// send): what the step's status says its next phase is.
func (d *driver) sends(i int) bool {
	c := &d.def.Steps[i].Commands
	if !c.Any() {
		return false
	}
	s := &d.rec.Steps[i]
	switch s.Status {
	case saga.StepPending:
		return c.Action != nil
	case saga.StepSucceeded, saga.StepCompensating:
		return c.Compensation != nil
	}
	return c.For(s.Phase) != nil
}

// canStart takes a concurrency slot for one more attempt of the saga, if it
// needs one and one is free. The driver's own slot runs its first attempt;
// parallel steps take more without waiting, and wait for one of the saga's
// own attempts to end when there is none.
func (d *driver) canStart() bool {
	if !d.slot {
		return false
	}
	if d.running+len(d.starts) < 1+d.extra {
		return true
	}
	select {
	case d.e.sem <- struct{}{}:
		d.extra++
		return true
	default:
		return false
	}
}

// releaseSlots gives back the slots the saga's attempts no longer need.
func (d *driver) releaseSlots() {
	for d.extra > 0 && d.running+len(d.starts) <= d.extra {
		<-d.e.sem
		d.extra--
	}
}

// othersInFlight reports whether a step other than step i has an attempt
// in flight, or waiting for its answer.
func (d *driver) othersInFlight(i int) bool {
	for k := range d.rec.Steps {
		if s := &d.rec.Steps[k]; k != i && (s.InFlight || s.Pending) {
			return true
		}
	}
	return false
}

// earliest returns the earlier of a and b, where zero is none.
func earliest(a, b time.Time) time.Time {
	if a.IsZero() || b.Before(a) {
		return b
	}
	return a
}

// begin plans the next attempt of step i and records it as started; false
// when an open breaker makes the step wait (until s.Next).
func (d *driver) begin(now time.Time, i int) bool {
	s := &d.rec.Steps[i]
	switch s.Status {
	case saga.StepPending:
		s.Status, s.Phase, s.Attempts, s.PhaseStarted = saga.StepRunning, saga.PhaseAction, 0, now
	case saga.StepSucceeded: // compensating: start the compensation
		s.ActionAttempts = actionAttempts(s)
		s.Status, s.Phase, s.Attempts, s.PhaseStarted, s.Error = saga.StepCompensating, saga.PhaseCompensation, 0, now, ""
	}
	n := effect{step: i, phase: s.Phase}
	if b := d.breaker(n); b != nil {
		if blocked, until := b.blocked(now); blocked {
			if d.blockedBy(now, i, b.name, until) {
				return d.begin(now, i) // moved on to the fallback
			}
			return false
		}
	}
	s.Attempts++
	s.Next = time.Time{}
	if cmd := d.def.Steps[i].Commands.For(s.Phase); cmd != nil {
		if d.send(now, i, cmd) {
			return true
		}
		if !d.canStart() {
			// The command cannot be built: the attempt runs as a
			// function that fails with the reason (commandFunc), which
			// takes a slot this driver (an operator's, Complete's) does
			// not have. One that has it runs it, at once.
			s.Attempts--
			s.Next = now
			return false
		}
	}
	s.InFlight = true
	d.log(now, storage.LogEntry{Event: storage.EventAttemptStarted, Step: s.Name, Phase: s.Phase, Attempt: s.Attempts})
	d.starts = append(d.starts, n)
	return true
}

// blockedBy handles a call refused by an open breaker: the action goes to
// its fallback at once (true); otherwise the step waits for the breaker to
// half-open without using up an attempt.
func (d *driver) blockedBy(now time.Time, i int, name string, until time.Time) bool {
	r, s, st := d.rec, &d.rec.Steps[i], &d.def.Steps[i]
	if s.Phase == saga.PhaseAction && st.HasFallback() {
		d.log(now, storage.LogEntry{Event: storage.EventBreakerOpen, Step: s.Name, Phase: s.Phase,
			Note: "circuit breaker " + name + " is open: running the fallback"})
		s.Error = errors.Wrapf(ErrBreakerOpen, "breaker %s", name).Error()
		d.toFallback(now, s)
		return true
	}
	if !r.Deadline.IsZero() && s.Phase == saga.PhaseAction && until.After(r.Deadline) && !d.pastPivot() {
		until = r.Deadline
	}
	s.Next = until
	d.log(now, storage.LogEntry{Event: storage.EventBreakerOpen, Step: s.Name, Phase: s.Phase, Next: until,
		Note: "circuit breaker " + name + " is open: waiting for it to half-open"})
	d.waiting(s, until, "breaker")
	return false
}

func (d *driver) toFallback(now time.Time, s *storage.Step) {
	s.ActionAttempts = s.Attempts
	s.Phase, s.Attempts, s.PhaseStarted, s.Next = saga.PhaseFallback, 0, now, time.Time{}
}

// apply records an attempt's outcome in the saga.
func (d *driver) apply(o *outcome, now time.Time) {
	r, s, st := d.rec, &d.rec.Steps[o.step], &d.def.Steps[o.step]
	s.InFlight = false
	if o.err != nil && !o.blocked && errors.Is(o.err, saga.ErrPending) {
		d.pend(o, now)
		return
	}
	if o.err == nil && o.phase != saga.PhaseCompensation {
		if err := d.checkOutput(o.step, o.data); err != nil {
			// The participant acted, but its answer cannot be kept: the
			// step fails for good and is compensated if the saga turns
			// around.
			o.err, o.cut, o.events = err, true, nil
			o.dropTx()
		}
	}
	if o.err != nil && o.phase != saga.PhaseCompensation && r.Status != saga.StatusRunning {
		d.turnedAround(now, o)
		return
	}
	if o.blocked {
		s.Attempts-- // refused by the breaker: nothing was attempted
		d.blockedBy(now, o.step, st.Breaker.Name, o.blockedUntil)
		return
	}
	info := AttemptInfo{Definition: r.Definition, Step: s.Name, Phase: o.phase, Attempt: o.attempt, Duration: o.dur, Err: o.err}
	entry := storage.LogEntry{Step: s.Name, Phase: o.phase, Attempt: o.attempt, Duration: o.dur, OutcomeUnknown: o.err != nil && o.cut}
	d.answered(s, o)
	if o.err == nil {
		entry.Event = storage.EventAttemptSucceeded
		d.log(now, entry)
		d.hooks = append(d.hooks, info)
		s.Error, s.PhaseStarted, s.OutcomeUnknown = "", time.Time{}, false
		for _, ev := range o.events {
			d.emit(now, s.Name, ev, o.span)
		}
		if o.tx != nil {
			d.tx, o.tx = o.tx, nil // the step's own writes commit with its success
		}
		switch o.phase {
		case saga.PhaseCompensation:
			s.Status = saga.StepCompensated
			d.lifecycle(now, "step.compensated", s.Name, func(b []byte) []byte { return appendRaw(b, "output", o.data) })
		default:
			s.Status = saga.StepSucceeded
			s.FallbackUsed = o.phase == saga.PhaseFallback
			if len(o.data) > 0 {
				if r.Data == nil {
					r.Data = make(map[string]json.RawMessage, len(r.Steps))
				}
				r.Data[s.Name] = o.data // the engine keeps it: see saga.Func
			}
			fallback := s.FallbackUsed
			d.lifecycle(now, "step.succeeded", s.Name, func(b []byte) []byte {
				b = appendRaw(b, "output", o.data)
				if fallback {
					b = append(b, `,"fallback":true`...)
				}
				return b
			})
		}
		return
	}
	d.failed(o, now, info, entry)
}

// failed records a failed attempt: a retry, the fallback, or the failure
// for good of its step. Apart from apply, which runs on every outcome, so
// that apply's frame stays small on the drivers' stacks.
//
//go:noinline
func (d *driver) failed(o *outcome, now time.Time, info AttemptInfo, entry storage.LogEntry) {
	r, s, st := d.rec, &d.rec.Steps[o.step], &d.def.Steps[o.step]
	s.Error = o.err.Error()
	entry.Event, entry.Error = storage.EventAttemptFailed, s.Error
	policy := st.Retry.WithDefaults(3)
	if o.phase == saga.PhaseCompensation {
		policy = st.CompensationRetry.WithDefaults(10)
	}
	if o.phase != saga.PhaseFallback && !saga.IsPermanent(o.err) {
		delay := retryDelay(policy, s.Attempts)
		// A participant may ask for a later retry, up to the policy's
		// MaxInterval: a Retry-After of centuries must not strand the saga.
		if ra, ok := saga.RetryAfterDelay(o.err); ok && ra > delay {
			delay = min(ra, policy.MaxInterval)
		}
		if next := now.Add(delay); !exhausted(policy, s.Attempts, s.PhaseStarted, next) {
			s.Next, entry.Next = next, next
			d.log(now, entry)
			info.Retry = true
			d.hooks = append(d.hooks, info)
			d.waiting(s, next, "retry")
			return
		}
	}
	entry.Note = "failed for good"
	d.log(now, entry)
	d.hooks = append(d.hooks, info)
	switch {
	case o.phase == saga.PhaseAction && st.HasFallback():
		d.toFallback(now, s)
	case o.phase == saga.PhaseCompensation:
		s.GaveUp = true
		d.failWhenDone(now, o.step, &compensationFailed{
			cause: errors.Wrapf(o.err, "compensation of step %q failed after %s", s.Name, plural(s.Attempts, "attempt")),
			why:   decodeError(r.ErrorEnc, r.Error),
		})
	default:
		s.ActionAttempts = actionAttempts(s)
		s.Status = saga.StepFailed
		if d.pastPivot() {
			d.failWhenDone(now, o.step, errors.Wrapf(o.err, "step %q after the pivot failed for good", s.Name))
			return
		}
		d.compensate(now, errors.Wrapf(o.err, "step %q failed", s.Name))
	}
}

// answered records what an attempt's answer says of its step's effect:
// the doubt of a crash is settled, and, under the contract of idempotency
// keys, a later answer to the same key settles what an earlier cut-off
// attempt did (a fallback has another key: the action's unknown stays).
func (d *driver) answered(s *storage.Step, o *outcome) {
	delete(d.inDoubt, o.step)
	switch o.phase {
	case saga.PhaseAction:
		s.OutcomeUnknown = o.cut
	case saga.PhaseFallback:
		s.OutcomeUnknown = s.OutcomeUnknown || o.cut
	}
}

// failWhenDone ends the saga failed because of step i: at once, or, when
// attempts of other steps are in flight, once they have ended (they are
// recorded; no new attempt starts meanwhile).
func (d *driver) failWhenDone(now time.Time, i int, cause error) {
	if d.othersInFlight(i) {
		if d.failing == nil {
			d.failing = cause
		}
		return
	}
	d.fail(now, cause)
}

// turnedAround records a failed action or fallback of a parallel step that
// ended after the saga turned around: it is not retried, and it is
// compensated if it may have taken effect.
// Not inlined: a cold path, kept out of the frames of the hot ones.
//
//go:noinline
func (d *driver) turnedAround(now time.Time, o *outcome) {
	s := &d.rec.Steps[o.step]
	if o.blocked {
		s.Attempts-- // refused by the breaker: nothing was attempted
	} else {
		d.answered(s, o)
		d.log(now, storage.LogEntry{Event: storage.EventAttemptFailed, Step: s.Name, Phase: o.phase, Attempt: o.attempt,
			Duration: o.dur, Error: o.err.Error(), OutcomeUnknown: o.cut, Note: "not retried: the saga is turning around"})
		d.hooks = append(d.hooks, AttemptInfo{Definition: d.rec.Definition, Step: s.Name, Phase: o.phase, Attempt: o.attempt,
			Duration: o.dur, Err: o.err})
		s.Error = o.err.Error()
	}
	d.undoOrDrop(now, o.step)
}

// undoOrDrop decides, as the saga turns around, what becomes of step i,
// whose action (or fallback) did not succeed: compensated if it may have
// taken effect (in flight at a crash, or cut off), else failed.
// Compensations must tolerate an action that never happened.
// Not inlined: a cold path, kept out of the frames of the hot ones.
//
//go:noinline
func (d *driver) undoOrDrop(now time.Time, i int) {
	s := &d.rec.Steps[i]
	if s.Status == saga.StepRunning {
		s.ActionAttempts = actionAttempts(s)
	}
	var why string
	switch {
	case d.inDoubt[i]:
		why = "outcome unknown: the attempt was in flight at a crash"
	case s.OutcomeUnknown:
		why = "outcome unknown: the attempt was cut off, or its answer could not be used"
	}
	if why != "" && d.def.Steps[i].HasCompensation() {
		s.Status, s.Phase, s.Attempts, s.PhaseStarted, s.Next = saga.StepCompensating, saga.PhaseCompensation, 0, now, time.Time{}
		if s.Error != "" {
			why += " (" + s.Error + ")"
		}
		s.Error = why
		return
	}
	s.Status = saga.StepFailed
}

// failingCause is why a saga that a step's failure stopped fails: as the
// failure said, or, after a restart, as its record does.
// Not inlined: a cold path, kept out of the frames of the hot ones.
//
//go:noinline
func (d *driver) failingCause() error {
	if err := d.failing; err != nil {
		return err
	}
	r := d.rec
	for i := range r.Steps {
		s := &r.Steps[i]
		switch {
		case s.Status == saga.StepCompensating && s.GaveUp:
			return &compensationFailed{
				cause: errors.Newf("compensation of step %q failed after %s: %s", s.Name, plural(s.Attempts, "attempt"), s.Error),
				why:   decodeError(r.ErrorEnc, r.Error),
			}
		case s.Status == saga.StepFailed && r.Status == saga.StatusRunning:
			return errors.Newf("step %q after the pivot failed for good: %s", s.Name, s.Error)
		}
	}
	return errors.New("a step failed for good")
}

// pastPivot reports whether the saga's pivot step has succeeded.
func (d *driver) pastPivot() bool {
	p := d.def.PivotIndex()
	return p >= 0 && d.rec.Steps[p].Status == saga.StepSucceeded
}

// compensate turns the saga around: it stops going forward and undoes its
// succeeded steps (backward decides in what order), and those whose outcome
// is unknown.
func (d *driver) compensate(now time.Time, cause error) {
	r := d.rec
	r.Status, r.WakeAt = saga.StatusCompensating, time.Time{}
	d.statuses = append(d.statuses, r.Status)
	d.setError(cause)
	for i := range r.Steps {
		s := &r.Steps[i]
		if s.InFlight || s.Pending {
			continue // a parallel step's attempt: it ends first (see turnedAround)
		}
		s.Next = time.Time{}
		switch s.Status {
		case saga.StepPending:
			s.Status = saga.StepSkipped
		case saga.StepRunning, saga.StepFailed: // waiting for a retry, or failed for good just now
			// Its last attempt may have taken effect: it was in flight at a
			// crash, or cut off by a timeout or the deadline.
			d.undoOrDrop(now, i)
		}
	}
	d.log(now, storage.LogEntry{Event: storage.EventStatus, Status: r.Status, Error: r.Error})
}

// fail ends the saga in the failed status: an operator must act.
func (d *driver) fail(now time.Time, cause error) {
	d.failing = nil
	d.setError(cause)
	d.finish(now, saga.StatusFailed)
}

func (d *driver) finish(now time.Time, st saga.Status) {
	d.rec.Status, d.rec.WakeAt = st, time.Time{}
	for i := range d.rec.Steps {
		d.rec.Steps[i].Pending = false // an answer that comes now is ignored
	}
	d.statuses = append(d.statuses, st)
	d.finished = true
	d.log(now, storage.LogEntry{Event: storage.EventStatus, Status: st, Error: d.rec.Error})
	switch st {
	case saga.StatusCompleted:
		d.lifecycle(now, "saga.completed", "", func(b []byte) []byte {
			if len(d.rec.Data) == 0 {
				return b
			}
			b = append(b, `,"data":{`...)
			for i, k := range slices.Sorted(maps.Keys(d.rec.Data)) {
				if i > 0 {
					b = append(b, ',')
				}
				b = append(b, '"')
				b = append(b, k...) // step names need no escaping
				b = append(b, `":`...)
				b = append(b, d.rec.Data[k]...)
			}
			return append(b, '}')
		})
	default:
		d.lifecycle(now, "saga."+string(st), "", func(b []byte) []byte {
			if d.rec.Error == "" {
				return b
			}
			msg, _ := json.Marshal(d.rec.Error) // a string always marshals
			return appendRaw(b, "error", msg)
		})
	}
}

func (d *driver) setError(cause error) {
	d.rec.Error = cause.Error()
	d.rec.ErrorEnc = encodeError(cause)
}

// retryFailed restarts a failed saga at the compensations (or, past the
// pivot, the steps) that failed, with a fresh attempt budget.
func (d *driver) retryFailed(now time.Time) error {
	r := d.rec
	retried := false
	for i := range r.Steps {
		s := &r.Steps[i]
		switch {
		case s.Status == saga.StepCompensating:
			// Compensating again: the saga's error goes back to why it
			// compensated, not the compensation's failure.
			if r.Status != saga.StatusCompensating {
				r.Status = saga.StatusCompensating
				d.restoreCause()
			}
			s.Attempts, s.PhaseStarted, s.Next, s.GaveUp = 0, now, time.Time{}, false
		case s.Status == saga.StepFailed && d.pastPivot():
			// Going forward again: the failure is no longer the saga's
			// error (a saga that completes has none).
			r.Status, r.Error, r.ErrorEnc = saga.StatusRunning, "", nil
			s.Status, s.Phase, s.Attempts, s.PhaseStarted, s.Next = saga.StepRunning, saga.PhaseAction, 0, now, time.Time{}
		default:
			continue
		}
		retried = true
		d.log(now, storage.LogEntry{Event: storage.EventRetryRequested, Step: s.Name, Status: r.Status,
			Note: "an operator asked to retry " + s.Name})
	}
	if !retried {
		return errors.Wrap(ErrConflict, "no failed step or compensation to retry")
	}
	r.WakeAt, r.UpdatedAt = now, now
	return nil
}

// restoreCause puts back why the saga compensated as its error, in place
// of its compensation's failure. A failure stored by an older sagad carries
// no cause: its message is found in the log.
func (d *driver) restoreCause() {
	r := d.rec
	var cf *compensationFailed
	if errors.As(decodeError(r.ErrorEnc, r.Error), &cf) && cf.why != nil {
		d.setError(cf.why)
		return
	}
	entries, _ := d.e.sagas.LogList(context.Background(), r.ID)
	for i := len(entries) - 1; i >= 0; i-- {
		if e := entries[i]; e.Event == storage.EventStatus && e.Status == saga.StatusCompensating {
			r.Error, r.ErrorEnc = e.Error, nil
			return
		}
	}
}

func (d *driver) log(now time.Time, e storage.LogEntry) {
	e.At = now
	d.logs = append(d.logs, e)
}

// change numbers the pending log entries and returns what to commit: the
// record, those entries, the outbox events and whether the abort request
// is cleared.
func (d *driver) change() *storage.Transition {
	r := d.rec
	for i := range d.logs {
		r.LogSeq++
		d.logs[i].Seq = r.LogSeq
	}
	// The store encodes the change before it returns and keeps none of it:
	// one Transition serves every commit of this driver.
	d.tr = storage.Transition{Saga: r, Log: d.logs, Events: d.events, ClearAbort: d.clrAbort, Tx: d.tx}
	d.tx = nil // the store commits or rolls it back, whatever happens
	return &d.tr
}

// commit writes the saga, its new log entries and its outbox events in one
// transaction, then runs what follows a durable transition (committed).
func (d *driver) commit() error {
	if err := d.write(); err != nil {
		return err
	}
	d.committed()
	return nil
}

// write is commit without its aftermath: hooks run after d.mu is let go
// (see transition), so that a hook may call Abort.
func (d *driver) write() error {
	if err := d.e.sagas.SagaCommit(context.Background(), d.change()); err != nil {
		d.finished = false // a waiter must never see a final state that is not durable
		return err
	}
	d.claimed = true
	if d.tr.Aborted && d.rec.Status == saga.StatusRunning && !d.abort.Load() {
		// Another process recorded an abort request: act on it at the
		// next decision, as on one made here, and do not start the
		// attempt this commit recorded (see run).
		d.abort.Store(true)
		d.abortedRemotely = true
	}
	d.e.commitSucceeded(d.rec.ID)
	return nil
}

// committed runs what follows a durable transition: hooks and waiters.
func (d *driver) committed() {
	r := d.rec
	if len(d.spanned) > 0 {
		d.endAttempts()
	}
	if !d.untraced {
		d.traceCommitted()
	}
	d.logs = d.logs[:0]
	clear(d.events)
	d.events = d.events[:0]
	d.clrAbort = false
	if d.from != r.Status && !slices.Contains(d.statuses, r.Status) {
		d.statuses = append(d.statuses, r.Status) // set by retryFailed
	}
	for _, st := range d.statuses {
		if d.from != "" && d.from != st {
			d.e.statusHook(r.ID, r.Definition, d.from, st)
			if st == saga.StatusFailed {
				// Durable now, and a person has to act: say so, once.
				d.e.log.Warn("saga failed: it could not be compensated; retry it or resolve it by hand (sagad sagas retry|resolve)",
					"saga", r.ID.String(), "definition", r.Definition, "step", failedStep(r), "err", r.Error)
			}
		}
		d.from = st
	}
	d.statuses = d.statuses[:0]
	if r.Status == saga.StatusPaused {
		d.e.pauseDone(r.ID) // carried out, durably
	}
	if len(d.hooks) > 0 {
		d.attemptHooks()
	}
	d.hooks = d.hooks[:0]
	if len(d.waits) > 0 {
		d.waitHooks()
	}
}

// attemptHooks runs the hooks of the attempts the last commit recorded.
//
//go:noinline
func (d *driver) attemptHooks() {
	h := &d.e.opts.Hooks
	if h.AttemptFinished == nil && h.AttemptPending == nil {
		return
	}
	id := d.rec.ID.String()
	for _, a := range d.hooks {
		a.SagaID = id
		switch {
		case a.Pending && h.AttemptPending != nil:
			h.AttemptPending(a)
		case !a.Pending && h.AttemptFinished != nil:
			h.AttemptFinished(a)
		}
	}
}

// waitHooks runs Hooks.StepWaiting for the waits the last commit began.
//
//go:noinline
func (d *driver) waitHooks() {
	if h := d.e.opts.Hooks.StepWaiting; h != nil {
		id := d.rec.ID.String()
		for _, w := range d.waits {
			w.SagaID = id
			h(w)
		}
	}
	clear(d.waits)
	d.waits = d.waits[:0]
}

// waiting notes that step s waits for its next attempt until until, for
// Hooks.StepWaiting.
func (d *driver) waiting(s *storage.Step, until time.Time, reason string) {
	if d.e.opts.Hooks.StepWaiting != nil {
		d.waits = append(d.waits, WaitInfo{Definition: d.rec.Definition, Step: s.Name, Phase: s.Phase, Until: until, Reason: reason})
	}
}

// actionAttempts returns how many times a step's action was attempted.
func actionAttempts(s *storage.Step) int {
	if s.Phase == saga.PhaseAction {
		return s.Attempts
	}
	return s.ActionAttempts
}

// emit queues an event a step emitted for the next commit, with the trace
// context of the attempt's span sp, if any.
func (d *driver) emit(now time.Time, step string, ev saga.Event, sp trace.Span) {
	if sp != nil {
		ev.Headers = withTrace(ev.Headers, sp)
	}
	if ev.RoutingKey == "" {
		ev.RoutingKey = ev.Name
	}
	if ev.Exchange == "" {
		ev.Exchange = d.def.Events.Exchange
	}
	d.events = append(d.events, storage.OutboxEvent{SagaID: d.rec.ID, Definition: d.rec.Definition, Step: step,
		Name: ev.Name, Exchange: ev.Exchange, RoutingKey: ev.RoutingKey, Payload: ev.Payload, Headers: ev.Headers,
		CreatedAt: now})
}

// lifecycle queues a lifecycle event (name such as "saga.completed") if the
// definition asks for them. Its payload is a JSON object with the saga's
// id, definition, the event, the saga's status, the step if any, and what
// extra appends (each field with a leading comma). It is built by hand: it
// is written on the hot path, up to twice a transition.
func (d *driver) lifecycle(now time.Time, name, step string, extra func([]byte) []byte) {
	if d.def == nil || !d.def.Events.Lifecycle {
		return
	}
	r := d.rec
	// Names, definitions and steps match saga's name pattern, statuses are
	// fixed words and ids are ULIDs: none needs escaping.
	b := make([]byte, 0, 160)
	b = append(b, `{"saga_id":"`...)
	b = b[:len(b)+ulid.EncodedSize]
	_ = r.ID.MarshalTextTo(b[len(b)-ulid.EncodedSize:]) // fails only on a short buffer
	b = append(b, `","definition":"`...)
	b = append(b, r.Definition...)
	b = append(b, `","event":"`...)
	b = append(b, name...)
	b = append(b, `","status":"`...)
	b = append(b, r.Status...)
	b = append(b, '"')
	if step != "" {
		b = append(b, `,"step":"`...)
		b = append(b, step...)
		b = append(b, '"')
	}
	b = append(extra(b), '}')
	var headers map[string]string
	if sp := d.tracing(); sp != nil {
		headers = withTrace(nil, sp)
	}
	d.events = append(d.events, storage.OutboxEvent{SagaID: r.ID, Definition: r.Definition, Step: step,
		Name: name, Exchange: d.def.Events.Exchange, RoutingKey: r.Definition + "." + name, Payload: b,
		Headers: headers, CreatedAt: now})
}

// appendRaw appends `,"key":raw`, or nothing when raw is empty.
func appendRaw(b []byte, key string, raw json.RawMessage) []byte {
	if len(raw) == 0 {
		return b
	}
	b = append(b, ',', '"')
	b = append(b, key...)
	b = append(b, '"', ':')
	return append(b, raw...)
}

// failedStep names the step a failed saga is stuck at: the one whose
// compensation failed, else (past the pivot) the last one with an error.
func failedStep(r *storage.Saga) string {
	for _, comp := range []bool{true, false} {
		for i := len(r.Steps) - 1; i >= 0; i-- {
			if s := &r.Steps[i]; s.Error != "" && (!comp || s.Phase == saga.PhaseCompensation) {
				return s.Name
			}
		}
	}
	return ""
}
