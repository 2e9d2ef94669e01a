// Package clock is sagad's time seam. The engine, the bbolt backend's
// outbox and the relay read the time, wait and set deadlines only through a
// Clock, so that a test can move time: Real is the wall clock and the
// default; Fake is a clock a test advances by hand, firing every timer and
// deadline that falls due.
//
// Some times stay on the wall clock: network deadlines (a broker
// connection's), the circuit breakers' (github.com/sony/gobreaker keeps its
// own time; a breaker opened under a fake clock stays open for its real
// OpenFor), and in-process pauses (a shutdown's grace, the pause before a
// saga whose commit failed is loaded again, an operator's wait for a
// driver). A fake deadline reports its Deadline on the wall clock, as far
// away as it is on the fake one, for code that sets network deadlines from
// it.
package clock

import (
	"context"
	"time"
)

// Clock tells the time and waits.
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// NewTimer returns a timer whose channel receives once, d from now.
	NewTimer(d time.Duration) Timer
	// AfterFunc calls f in its own goroutine d from now. The returned
	// timer's channel is nil.
	AfterFunc(d time.Duration, f func()) Timer
	// WithDeadline returns a copy of parent that ends at t by this clock,
	// with context.DeadlineExceeded, as context.WithDeadline does by the
	// wall clock.
	WithDeadline(parent context.Context, t time.Time) (context.Context, context.CancelFunc)
}

// Timer is a Clock's timer, as time.Timer.
type Timer interface {
	// C is the channel the time is sent on (nil for AfterFunc).
	C() <-chan time.Time
	// Stop stops the timer; it reports whether that prevented it firing.
	Stop() bool
	// Reset makes the timer fire d from now; it reports whether it was
	// active.
	Reset(d time.Duration) bool
}

// Real is the wall clock.
var Real Clock = realClock{}

// Or returns c, or Real when c is nil: a nil Clock in an Options means the
// wall clock.
func Or(c Clock) Clock {
	if c == nil {
		return Real
	}
	return c
}

// WithTimeout is WithDeadline d from c's now.
func WithTimeout(c Clock, parent context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	return c.WithDeadline(parent, c.Now().Add(d))
}

// Since returns the time elapsed since t by c.
func Since(c Clock, t time.Time) time.Duration { return c.Now().Sub(t) }

// Until returns the duration until t by c.
func Until(c Clock, t time.Time) time.Duration { return t.Sub(c.Now()) }

type realClock struct{}

func (realClock) Now() time.Time                            { return time.Now() }
func (realClock) NewTimer(d time.Duration) Timer            { return realTimer{time.NewTimer(d)} }
func (realClock) AfterFunc(d time.Duration, f func()) Timer { return realTimer{time.AfterFunc(d, f)} }
func (realClock) WithDeadline(parent context.Context, t time.Time) (context.Context, context.CancelFunc) {
	return context.WithDeadline(parent, t)
}

type realTimer struct{ t *time.Timer }

func (r realTimer) C() <-chan time.Time        { return r.t.C }
func (r realTimer) Stop() bool                 { return r.t.Stop() }
func (r realTimer) Reset(d time.Duration) bool { return r.t.Reset(d) }
