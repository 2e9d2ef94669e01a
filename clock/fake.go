package clock

import (
	"context"
	"slices"
	"sync"
	"time"
)

// Fake is a clock that moves only when told (Advance, Set). Timers,
// AfterFunc calls and context deadlines fire, in time order, when the fake
// time reaches them. It is safe for concurrent use.
type Fake struct {
	mu      sync.Mutex
	changed *sync.Cond // broadcast when a timer is set
	now     time.Time
	waiters []*fakeTimer
}

// NewFake returns a fake clock at t.
func NewFake(t time.Time) *Fake {
	f := &Fake{now: t}
	f.changed = sync.NewCond(&f.mu)
	return f
}

// BlockUntilWaiting blocks until a timer, AfterFunc call or deadline waits
// for the time at or before t: a test knows then that the code under test
// set it, and that advancing to t fires it.
func (f *Fake) BlockUntilWaiting(t time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for !slices.ContainsFunc(f.waiters, func(w *fakeTimer) bool { return !w.at.After(t) }) {
		f.changed.Wait()
	}
}

// Now implements Clock.
func (f *Fake) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

// Advance moves the time forward by d and fires what falls due.
func (f *Fake) Advance(d time.Duration) { f.Set(f.Now().Add(d)) }

// Set moves the time to t (never backwards) and fires what falls due, in
// time order.
func (f *Fake) Set(t time.Time) {
	for {
		f.mu.Lock()
		if t.Before(f.now) {
			t = f.now
		}
		slices.SortFunc(f.waiters, func(a, b *fakeTimer) int { return a.at.Compare(b.at) })
		if len(f.waiters) == 0 || f.waiters[0].at.After(t) {
			f.now = t
			f.mu.Unlock()
			return
		}
		w := f.waiters[0]
		f.waiters = f.waiters[1:]
		w.active = false
		if w.at.After(f.now) {
			f.now = w.at
		}
		at := f.now
		f.mu.Unlock()
		w.fire(at)
	}
}

// Waiters returns how many timers, AfterFunc calls and deadlines wait: a
// test can tell that the code under test has set its timer before it
// advances the time.
func (f *Fake) Waiters() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.waiters)
}

// NewTimer implements Clock.
func (f *Fake) NewTimer(d time.Duration) Timer {
	c := make(chan time.Time, 1)
	t := &fakeTimer{f: f, c: c, fire: func(at time.Time) {
		select {
		case c <- at:
		default:
		}
	}}
	t.Reset(d)
	return t
}

// AfterFunc implements Clock.
func (f *Fake) AfterFunc(d time.Duration, fn func()) Timer {
	t := &fakeTimer{f: f, fire: func(time.Time) { go fn() }}
	t.Reset(d)
	return t
}

// WithDeadline implements Clock: the context ends with
// context.DeadlineExceeded when the fake time reaches t.
func (f *Fake) WithDeadline(parent context.Context, t time.Time) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(parent)
	dc := &deadlineCtx{Context: ctx, deadline: t}
	timer := f.AfterFunc(t.Sub(f.Now()), func() { cancel(context.DeadlineExceeded) })
	return dc, func() { timer.Stop(); cancel(context.Canceled) }
}

// deadlineCtx reports its fake deadline and DeadlineExceeded as its error
// once that deadline cancelled it.
type deadlineCtx struct {
	context.Context
	deadline time.Time
}

func (c *deadlineCtx) Deadline() (time.Time, bool) {
	if d, ok := c.Context.Deadline(); ok && d.Before(c.deadline) {
		return d, true
	}
	return c.deadline, true
}

func (c *deadlineCtx) Err() error {
	if err := c.Context.Err(); err != nil {
		if cause := context.Cause(c.Context); cause == context.DeadlineExceeded {
			return cause
		}
		return err
	}
	return nil
}

type fakeTimer struct {
	f      *Fake
	c      chan time.Time
	fire   func(time.Time)
	at     time.Time
	active bool
}

func (t *fakeTimer) C() <-chan time.Time { return t.c }

func (t *fakeTimer) Stop() bool {
	t.f.mu.Lock()
	defer t.f.mu.Unlock()
	was := t.active
	t.remove()
	return was
}

func (t *fakeTimer) Reset(d time.Duration) bool {
	t.f.mu.Lock()
	was := t.active
	t.remove()
	t.at, t.active = t.f.now.Add(d), true
	t.f.waiters = append(t.f.waiters, t)
	due := d <= 0
	t.f.changed.Broadcast()
	t.f.mu.Unlock()
	if due {
		t.f.Set(t.f.Now()) // fire at once, as a timer of zero does
	}
	return was
}

// remove takes t out of the waiters, and drops a time it sent that was not
// received, as time.Timer does since Go 1.23; f.mu is held.
func (t *fakeTimer) remove() {
	t.active = false
	if t.c != nil {
		select {
		case <-t.c:
		default:
		}
	}
	if i := slices.Index(t.f.waiters, t); i >= 0 {
		t.f.waiters = slices.Delete(t.f.waiters, i, i+1)
	}
}
