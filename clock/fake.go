package clock

import (
	"context"
	"slices"
	"sync"
	"time"
)

// Fake is a clock that moves only when told (Advance, Set). Timers,
// AfterFunc calls and context deadlines fire when the fake time reaches
// them, in time order (those due at one instant in the order they were
// set). It is safe for concurrent use.
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

// Now implements Clock.
func (f *Fake) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

// Advance moves the time forward by d and fires what falls due.
func (f *Fake) Advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.moveTo(f.now.Add(d))
}

// Set moves the time to t (never backwards) and fires what falls due.
func (f *Fake) Set(t time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.moveTo(t)
}

// moveTo fires, in time order, every waiter due by t; f.mu is held. Firing
// never blocks: a timer's send is non-blocking on a buffered channel, an
// AfterFunc's function starts in its own goroutine.
func (f *Fake) moveTo(t time.Time) {
	if t.Before(f.now) {
		t = f.now
	}
	slices.SortStableFunc(f.waiters, func(a, b *fakeTimer) int { return a.at.Compare(b.at) })
	i := 0
	for ; i < len(f.waiters) && !f.waiters[i].at.After(t); i++ {
		w := f.waiters[i]
		w.active = false
		if w.at.After(f.now) {
			f.now = w.at
		}
		w.fire(f.now)
	}
	f.waiters = slices.Delete(f.waiters, 0, i)
	f.now = t
}

// Waiters returns how many timers, AfterFunc calls and deadlines wait.
func (f *Fake) Waiters() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.waiters)
}

// BlockUntilWaiting blocks until some timer, AfterFunc call or deadline
// waits for a time at or before t. It tells a test that advancing to t
// fires something; which waiter it is, the test must know by other means
// (a hook), since the code under test may keep timers of its own (an idle
// scheduler's, a prune loop's).
func (f *Fake) BlockUntilWaiting(t time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for !slices.ContainsFunc(f.waiters, func(w *fakeTimer) bool { return !w.at.After(t) }) {
		f.changed.Wait()
	}
}

// HasWaiter reports whether some timer, AfterFunc call or deadline waits
// for a time at or before t: BlockUntilWaiting without the wait.
func (f *Fake) HasWaiter(t time.Time) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.ContainsFunc(f.waiters, func(w *fakeTimer) bool { return !w.at.After(t) })
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
// context.DeadlineExceeded when the fake time reaches t (at once if it has),
// and its children see the same error. Its Deadline reports the wall-clock
// instant as far away as t is from the fake now, so that code that sets
// network deadlines from it (net.Dialer) gets a sensible one.
func (f *Fake) WithDeadline(parent context.Context, t time.Time) (context.Context, context.CancelFunc) {
	c := &deadlineCtx{parent: parent, f: f, deadline: t, done: make(chan struct{})}
	if parent.Err() != nil {
		c.cancel(parent.Err())
		return c, func() {}
	}
	stopParent := context.AfterFunc(parent, func() { c.cancel(parent.Err()) })
	f.mu.Lock()
	due := !t.After(f.now)
	f.mu.Unlock()
	if due {
		c.cancel(context.DeadlineExceeded)
	} else {
		timer := f.AfterFunc(t.Sub(f.Now()), func() { c.cancel(context.DeadlineExceeded) })
		c.mu.Lock()
		if c.err != nil {
			timer.Stop() // ended meanwhile
		}
		c.timer = timer
		c.mu.Unlock()
	}
	return c, func() {
		stopParent()
		c.cancel(context.Canceled)
	}
}

// deadlineCtx is a context that a Fake ends. It does not wrap a
// context.cancelCtx of its own, so that children created with the context
// package take its Err (DeadlineExceeded), not Canceled.
type deadlineCtx struct {
	parent   context.Context
	f        *Fake
	deadline time.Time
	done     chan struct{}
	timer    Timer

	mu  sync.Mutex
	err error
}

func (c *deadlineCtx) Deadline() (time.Time, bool) {
	wall := time.Now().Add(c.deadline.Sub(c.f.Now()))
	if d, ok := c.parent.Deadline(); ok && d.Before(wall) {
		return d, true
	}
	return wall, true
}

func (c *deadlineCtx) Done() <-chan struct{} { return c.done }

func (c *deadlineCtx) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func (c *deadlineCtx) Value(key any) any { return c.parent.Value(key) }

func (c *deadlineCtx) cancel(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	close(c.done)
	timer := c.timer
	c.mu.Unlock()
	if timer != nil {
		timer.Stop()
	}
}

type fakeTimer struct {
	f      *Fake
	c      chan time.Time
	fire   func(time.Time) // called with f.mu held; must not block
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
	f := t.f
	f.mu.Lock()
	defer f.mu.Unlock()
	was := t.active
	t.remove()
	t.at, t.active = f.now.Add(d), true
	f.waiters = append(f.waiters, t)
	f.changed.Broadcast()
	if d <= 0 {
		f.moveTo(f.now) // fire at once, as a timer of zero does
	}
	return was
}

// remove takes t out of the waiters and drops a time it sent that was not
// received, as time.Timer does since Go 1.23; f.mu is held, and fire sends
// under it, so no stale time can arrive after Stop or Reset.
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
