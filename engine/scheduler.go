package engine

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/errors"
	"github.com/oklog/ulid/v2"

	"github.com/sagad/sagad/clock"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
)

// The scheduler is one goroutine that sleeps until the earliest wake time in
// the due index, dispatches the sagas that are due, and sleeps again. A saga
// waiting for a retry costs its stored record and nothing in memory.

func (e *Engine) isRunning() bool { return e.running.Load() }

// wakeAt tells the scheduler a saga is due at t.
func (e *Engine) wakeAt(t time.Time) {
	if planned := e.planned.Load(); planned != 0 && !t.Before(time.Unix(0, planned)) {
		return
	}
	select {
	case e.nudge <- struct{}{}:
	default:
	}
}

// schedule runs until ctx ends.
func (e *Engine) schedule(ctx context.Context) {
	timer := e.clock.NewTimer(time.Hour)
	defer timer.Stop()
	const batch = 1024
	for {
		// While scanning, planned is 0 so that every wakeAt nudges: a saga
		// released mid-scan may have been skipped as claimed.
		e.planned.Store(0)
		wake := e.sagas.SagaWake() // before the scan: a wake-up during it counts
		now := e.clock.Now()
		due, next, err := e.sagas.SagaDue(ctx, now, batch, e.claimed)
		if err != nil && ctx.Err() == nil {
			e.log.Error("scan for due sagas; trying again in a second", "err", err)
			next = now.Add(time.Second)
		}
		if len(due) == batch {
			next = now
		}
		for _, id := range due {
			if !e.dispatch(ctx, id, nil) {
				return
			}
		}
		var wait time.Duration
		if next.IsZero() {
			wait = time.Hour
			e.planned.Store(now.Add(wait).UnixNano())
		} else {
			wait = clock.Until(e.clock, next)
			e.planned.Store(next.UnixNano())
		}
		if !timer.Stop() {
			select {
			case <-timer.C():
			default:
			}
		}
		timer.Reset(max(wait, 0))
		select {
		case <-ctx.Done():
			return
		case <-e.nudge:
		case <-timer.C():
		case <-wake: // another process left work (nil: never)
		}
	}
}

// claimed reports whether a due saga is held. A driver dispatches it
// again as it lets go if it is due then; an operator's hold (Abort, Retry,
// Resolve) never read its wake time, so it is asked to.
func (e *Engine) claimed(id ulid.ULID) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	d, ok := e.active[id]
	if ok && d.op {
		d.redispatch = true
	}
	return ok
}

// dispatch takes a concurrency slot (waiting for one), claims the saga and
// drives it in a new goroutine. It returns false when ctx ended first.
func (e *Engine) dispatch(ctx context.Context, id ulid.ULID, rs *recoveryStats) bool {
	select {
	case e.sem <- struct{}{}:
	case <-ctx.Done():
		return false
	}
	d := &driver{e: e, rec: &storage.Saga{ID: id}, slot: true, rs: rs}
	e.mu.Lock()
	if holder, busy := e.active[id]; busy || !e.running.Load() || e.broken[id] {
		if busy {
			holder.redispatch = true // the holder dispatches it again when it lets go
		}
		e.mu.Unlock()
		<-e.sem
		return true
	}
	e.active[id] = d
	e.drivers.Add(1)
	e.mu.Unlock()
	if rs != nil {
		rs.loaded.Add(1)
	}
	go func() {
		ok, err := d.load(e.clock.Now())
		if rs != nil {
			rs.loaded.Done()
		}
		switch {
		case errors.Is(err, storage.ErrCorrupt):
			// An unreadable record must not take the engine down or be
			// dispatched in a loop: set it aside until a restart.
			e.mu.Lock()
			e.broken[id] = true
			e.mu.Unlock()
			e.log.Error("saga cannot be loaded; it is set aside until a restart (run 'sagad check')",
				"saga", id.String(), "err", err)
		case errors.Is(err, storage.ErrNotFound):
			// Deleted meanwhile (pruned): nothing to drive.
		case err != nil:
			// The store did not answer (a lost connection): load it
			// again after a pause, as after a failed commit.
			e.loadFailed(d, err)
		}
		if !ok {
			e.release(d)
			return
		}
		if err := d.transition(e.clock.Now()); err != nil {
			e.commitFailed(d, err)
			e.release(d)
			return
		}
		d.run()
	}()
	return true
}

// dispatchNow drives a saga as soon as a slot frees, if the engine runs.
func (e *Engine) dispatchNow(id ulid.ULID) {
	e.mu.Lock()
	if !e.running.Load() {
		e.mu.Unlock()
		return
	}
	e.drivers.Add(1) // under e.mu, so shutdown's Wait cannot start in between
	e.mu.Unlock()
	go func() {
		defer e.drivers.Done()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() {
			select {
			case <-e.stopRun:
				cancel()
			case <-ctx.Done():
			}
		}()
		e.dispatch(ctx, id, nil)
	}()
}

// release ends a driver's claim on its saga, then wakes whoever waits for
// it: after release, so a waiter may act on the saga at once (Retry). It is
// called exactly once per driver.
func (e *Engine) release(d *driver) {
	id, wake := d.rec.ID, d.rec.WakeAt
	if d.span != nil || len(d.spanned) > 0 {
		d.dropSpanned()
		d.letGo()
	}
	if d.claimed {
		// Before the saga leaves e.active: a new holder here must not
		// claim it and then lose the claim to this release. A no-op
		// unless the claim is still held: a commit after which the saga
		// needed no driver let go of it already.
		if err := e.sagas.SagaRelease(context.Background(), id); err != nil {
			e.log.Warn("saga's claim not let go; this process drives it again when it is due", "saga", id.String(), "err", err)
		}
	}
	e.mu.Lock()
	delete(e.active, id)
	// An abort request that came with the last commit, on a saga that now
	// waits: act on it now, not when the wait ends.
	redispatch := d.redispatch || (d.abort.Load() && !d.finished && d.rec.Status == saga.StatusRunning && !d.reload)
	// A pause asked for after the driver's last decision: a new driver
	// carries it out. One that is moot is forgotten.
	if e.pauses[id] && !d.op && !d.reload {
		if d.finished || d.rec.Status == saga.StatusPaused {
			delete(e.pauses, id)
			e.npauses.Add(-1)
		} else {
			redispatch = true
		}
	}
	_, waited := e.waiters[id]
	var claimers []chan struct{}
	if len(e.claimers) > 0 { // rare: an operator waits for some saga
		claimers = e.claimers[id]
		delete(e.claimers, id)
	}
	if !d.reload && e.nfailing.Load() > 0 {
		// Let go without a failed commit (a reload that found nothing to
		// write, a saga set aside): its failures are over.
		if _, ok := e.failing[id]; ok {
			delete(e.failing, id)
			e.nfailing.Add(-1)
		}
	}
	e.mu.Unlock()
	if d.slot {
		<-e.sem
	}
	for ; d.extra > 0; d.extra-- {
		<-e.sem
	}
	switch {
	case d.finished:
		e.notifyFinished(d.rec)
	case waited:
		// A holder that did not finish the saga (a dispatch that found it
		// finished, an operator's change) still owes its waiters a look.
		if rec, err := e.sagas.SagaGet(context.Background(), id); err == nil && rec.Status.Finished() {
			e.notifyFinished(rec)
		}
	}
	// Operators waiting for the saga go on only now: a Wait that begins
	// after their change (a Retry) must not be handed this driver's final
	// state.
	for _, ch := range claimers {
		close(ch)
	}
	switch {
	case d.reload:
		e.reloadLater(id)
	case redispatch:
		e.dispatchNow(id)
	}
	e.drivers.Done()
	if !wake.IsZero() {
		e.wakeAt(wake)
	}
}

// commitFailed handles a transition that could not be committed (a full
// disk, an I/O error): the saga on disk is as it was before it (an attempt
// may be recorded in flight). The driver forgets what it did not commit;
// when it is released, the saga is loaded again from disk after a pause,
// which treats such an attempt as in doubt, as recovery would. The caller
// still releases the driver, once.
func (e *Engine) commitFailed(d *driver, err error) {
	id := d.rec.ID
	n := e.failed(id)
	switch {
	case errors.Is(err, storage.ErrNotOwner):
		// Not a failure of the store: this process was cut off for
		// longer than its claim, and another took the saga over.
		e.log.Warn("saga taken over by another process; this one lets go of it", "saga", id.String())
	case n == 1:
		e.log.Error("saga transition not committed; retrying from the stored state until a commit succeeds",
			"saga", id.String(), "err", err)
	default:
		e.log.Debug("saga transition not committed again", "saga", id.String(), "failures", n, "err", err)
	}
	d.rec = &storage.Saga{ID: id} // what was not committed must not be used
	d.reload = true
}

// loadFailed handles a saga the store could not read for a reason other
// than damage (it did not answer): the saga is loaded again after a pause,
// as after a failed commit. The caller still releases the driver, once.
func (e *Engine) loadFailed(d *driver, err error) {
	id := d.rec.ID
	n := e.failed(id)
	if n == 1 {
		e.log.Error("saga not loaded; trying again until the store answers", "saga", id.String(), "err", err)
	} else {
		e.log.Debug("saga not loaded again", "saga", id.String(), "failures", n, "err", err)
	}
	d.rec = &storage.Saga{ID: id}
	d.reload = true
}

// failed counts a failure of a saga's write or load and returns how many
// in a row it has had.
func (e *Engine) failed(id ulid.ULID) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := e.failing[id] + 1
	e.failing[id] = n
	if n == 1 {
		e.nfailing.Add(1)
	}
	return n
}

// reloadLater dispatches a saga whose commit failed again after a pause
// that grows with its consecutive failures (from 100ms to 5s): the disk
// may be full for a while, and thousands of sagas must not spin on it.
func (e *Engine) reloadLater(id ulid.ULID) {
	e.mu.Lock()
	n := e.failing[id]
	e.mu.Unlock()
	pause := min(100*time.Millisecond<<min(max(n-1, 0), 6), 5*time.Second)
	time.AfterFunc(pause, func() { e.dispatchNow(id) }) // an in-process pause: the wall clock's

}

// commitSucceeded forgets a saga's failed commits, if it had any.
func (e *Engine) commitSucceeded(id ulid.ULID) {
	if e.nfailing.Load() == 0 {
		return
	}
	e.mu.Lock()
	n, ok := e.failing[id]
	if ok {
		delete(e.failing, id)
		e.nfailing.Add(-1)
	}
	e.mu.Unlock()
	if ok {
		e.log.Info("saga transition committed again", "saga", id.String(), "failures_before", n)
	}
}

// claimAndDrive changes a saga that no driver holds (fn), records the
// change, and hands the saga to the scheduler. A saga held by a driver is
// waited for up to claimWait (or ctx): an operator who sees a saga failed
// may act on it while its driver is still letting go.
func (e *Engine) claimAndDrive(ctx context.Context, id ulid.ULID, needDef bool, fn func(*driver) error) error {
	d := &driver{e: e, rec: &storage.Saga{ID: id}, op: true}
	if err := e.claim(ctx, d); err != nil {
		return err
	}
	defer e.release(d)
	rec, _, err := e.sagas.SagaClaim(ctx, id)
	switch {
	case errors.Is(err, storage.ErrNotFound):
		return errors.WithStack(ErrNotFound) // the caller names the saga
	case errors.Is(err, storage.ErrClaimed):
		return errors.WithHint(errors.Wrapf(ErrConflict, "saga %s is being driven by another process", id),
			"it is running an attempt there; wait for it to end, then try again")
	case err != nil:
		return errors.Wrapf(err, "get saga %s", id)
	}
	d.claimed = true
	d.rec = rec
	d.from = d.rec.Status
	d.def, d.g = e.plan(d.rec.Definition, d.rec.Fingerprint)
	if d.def == nil && needDef {
		return errors.Wrapf(ErrUnknownDefinition, "saga %s: definition %q version %s", id, d.rec.Definition, d.rec.Fingerprint)
	}
	d.mu.Lock()
	err = fn(d)
	if err == nil {
		err = errors.Wrapf(d.write(), "saga %s", id)
	}
	d.mu.Unlock()
	if errors.Is(err, errNoChange) {
		return nil
	}
	if err != nil {
		return err
	}
	d.committed()
	return nil
}

// testClaimBusy, when set by a test, is called when claim finds the saga
// held and starts to wait.
var testClaimBusy func(id string)

// claimWait is how long an operator's change waits for a driver to let go
// of the saga.
const claimWait = 5 * time.Second

// claim makes d the saga's holder, waiting for the current holder to let
// go for up to claimWait.
func (e *Engine) claim(ctx context.Context, d *driver) error {
	id := d.rec.ID
	var timeout <-chan time.Time
	for {
		e.mu.Lock()
		if e.stopping {
			e.mu.Unlock()
			return ErrClosed
		}
		if _, busy := e.active[id]; !busy {
			e.active[id] = d
			e.drivers.Add(1)
			e.mu.Unlock()
			return nil
		}
		ch := make(chan struct{})
		e.claimers[id] = append(e.claimers[id], ch)
		e.mu.Unlock()
		if testClaimBusy != nil {
			testClaimBusy(id.String())
		}
		if timeout == nil {
			t := time.NewTimer(claimWait) // how long a person's call waits: the wall clock's
			defer t.Stop()
			timeout = t.C
		}
		select {
		case <-ch:
		case <-timeout:
			return errors.WithHint(errors.Wrapf(ErrConflict, "saga %s is being driven", id),
				"it is running an attempt; wait for it to end, then try again")
		case <-ctx.Done():
			return errors.Wrapf(ctx.Err(), "saga %s: waiting for its driver", id)
		}
	}
}

// recoveryStats counts what recovery found, for its summary.
type recoveryStats struct {
	inDoubt atomic.Int64
	parked  atomic.Int64
	loaded  sync.WaitGroup // one per dispatched saga, done once it is loaded
}

// recover dispatches every unfinished saga that is not waiting for a
// retry; those waiting are in the due index and the scheduler wakes them.
// It reads the status index, never the finished sagas.
func (e *Engine) recover(ctx context.Context) error {
	start := e.clock.Now()
	counts := map[saga.Status]int{}
	var ids []ulid.ULID
	waiting := 0
	err := e.sagas.SagaUnfinished(ctx, func(id ulid.ULID, st saga.Status, wake time.Time) bool {
		// A record too short for its header (or missing) comes without a
		// wake time and is dispatched anyway: loading it fails, and the
		// saga is set aside and logged, not the engine stopped.
		if !wake.IsZero() {
			waiting++
			return true
		}
		counts[st]++
		ids = append(ids, id)
		return true
	})
	if err != nil {
		return errors.Wrap(err, "engine: recovery")
	}
	rs := &recoveryStats{}
	for _, id := range ids {
		if !e.dispatch(ctx, id, rs) {
			break
		}
	}
	rs.loaded.Wait() // the drivers count what they find in doubt or parked as they load

	e.log.Info("recovery: resumed unfinished sagas",
		"running", counts[saga.StatusRunning], "compensating", counts[saga.StatusCompensating],
		"waiting_for_retry", waiting, "in_doubt", rs.inDoubt.Load(), "parked", rs.parked.Load(),
		"took", clock.Since(e.clock, start).Round(time.Microsecond))
	return nil
}

// resumeParked dispatches the parked sagas of a definition version, by
// any of its fingerprints (empty ones match nothing).
func (e *Engine) resumeParked(name string, fps ...string) {
	ids, err := e.sagas.SagaParked(context.Background(), name, fps...)
	if err != nil {
		e.log.Error("look for parked sagas to resume", "definition", name, "err", err)
	}
	for _, id := range ids {
		e.dispatchNow(id)
	}
}

// pruneLoop prunes finished sagas and produced outbox events past their
// retention periods.
func (e *Engine) pruneLoop(ctx context.Context) {
	every := time.Hour
	for _, r := range []time.Duration{e.opts.Retention, e.opts.Outbox.Retention} {
		if r > 0 {
			every = min(every, max(r/10, time.Second))
		}
	}
	t := e.clock.NewTimer(every)
	defer t.Stop()
	for {
		if e.opts.Retention > 0 {
			if n, err := e.Prune(ctx, e.clock.Now().Add(-e.opts.Retention)); err != nil && ctx.Err() == nil {
				e.log.Error("prune finished sagas", "err", err)
			} else if n > 0 {
				e.log.Info("pruned finished sagas", "count", n)
			}
		}
		if e.opts.Outbox.Retention > 0 {
			if n, err := e.PruneOutbox(ctx, e.clock.Now().Add(-e.opts.Outbox.Retention)); err != nil && ctx.Err() == nil {
				e.log.Error("prune produced outbox events", "err", err)
			} else if n > 0 {
				e.log.Info("pruned produced outbox events", "count", n)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C():
			t.Reset(every)
		}
	}
}

// Prune deletes completed, compensated and resolved sagas (records, logs,
// index entries, idempotency keys) that finished before the given time.
// Failed sagas are kept. It returns how many sagas it deleted.
func (e *Engine) Prune(ctx context.Context, before time.Time) (int, error) {
	total := 0
	for _, st := range []saga.Status{saga.StatusCompleted, saga.StatusCompensated, saga.StatusResolved} {
		for {
			if err := ctx.Err(); err != nil {
				return total, err
			}
			batch, err := e.sagas.SagaFinishedBefore(ctx, st, before, 500)
			if err != nil {
				return total, errors.Wrap(err, "engine: prune")
			}
			if len(batch) == 0 {
				break
			}
			n, err := e.sagas.SagaDelete(ctx, batch)
			if err != nil {
				return total, errors.Wrap(err, "engine: prune")
			}
			total += n
			if len(batch) < 500 {
				break
			}
		}
	}
	return total, nil
}
