package clock_test

import (
	"context"
	"testing"
	"time"

	"github.com/cockroachdb/errors"

	"github.com/sagad/sagad/clock"
)

var start = time.Date(2032, 1, 1, 0, 0, 0, 0, time.UTC)

func TestFakeTimersFireInOrder(t *testing.T) {
	t.Parallel()
	f := clock.NewFake(start)
	late, early := f.NewTimer(2*time.Hour), f.NewTimer(time.Hour)
	fired := make(chan string, 2)
	f.AfterFunc(90*time.Minute, func() { fired <- "func" })
	stopped := f.NewTimer(time.Minute)
	if !stopped.Stop() {
		t.Error("Stop of an active timer = false")
	}
	f.Advance(30 * time.Minute)
	select {
	case <-early.C():
		t.Fatal("a timer fired early")
	default:
	}
	f.Advance(time.Hour) // to 1h30: early and the func
	if at := <-early.C(); !at.Equal(start.Add(time.Hour)) {
		t.Errorf("early fired at %v, want start+1h", at)
	}
	if got := <-fired; got != "func" {
		t.Errorf("AfterFunc: %q", got)
	}
	select {
	case <-late.C():
		t.Fatal("the 2h timer fired at 1h30")
	case <-stopped.C():
		t.Fatal("a stopped timer fired")
	default:
	}
	if late.Reset(time.Minute) != true {
		t.Error("Reset of an active timer = false")
	}
	f.Advance(time.Minute)
	if at := <-late.C(); !at.Equal(start.Add(91 * time.Minute)) {
		t.Errorf("reset timer fired at %v, want start+1h31", at)
	}
	if !f.Now().Equal(start.Add(91 * time.Minute)) {
		t.Errorf("Now = %v", f.Now())
	}
}

func TestFakeDeadline(t *testing.T) {
	t.Parallel()
	f := clock.NewFake(start)
	ctx, cancel := clock.WithTimeout(f, context.Background(), time.Minute)
	defer cancel()
	// The deadline is reported on the wall clock, as far away as the fake one.
	if d, ok := ctx.Deadline(); !ok || time.Until(d) < 50*time.Second || time.Until(d) > time.Minute {
		t.Errorf("Deadline = %v, %v; want a minute from now on the wall clock", d, ok)
	}
	f.BlockUntilWaiting(start.Add(time.Minute))
	f.Advance(time.Minute)
	<-ctx.Done()
	if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Errorf("Err = %v, want DeadlineExceeded", ctx.Err())
	}
	// A child made by the context package ends with the same error.
	parent, cancelP := f.WithDeadline(context.Background(), f.Now().Add(time.Second))
	defer cancelP()
	child, cancelC := context.WithCancel(parent)
	defer cancelC()
	f.Advance(time.Second)
	<-child.Done()
	if !errors.Is(child.Err(), context.DeadlineExceeded) {
		t.Errorf("child Err = %v, want DeadlineExceeded", child.Err())
	}
	// A deadline already passed is done at once.
	past, cancelPast := f.WithDeadline(context.Background(), f.Now().Add(-time.Second))
	defer cancelPast()
	if !errors.Is(past.Err(), context.DeadlineExceeded) {
		t.Errorf("a passed deadline: Err = %v right away, want DeadlineExceeded", past.Err())
	}
	if d, ok := past.Deadline(); !ok || time.Until(d) > 0 {
		t.Errorf("a passed deadline's Deadline = %v, %v; want a wall-clock instant in the past", d, ok)
	}
	ctx2, cancel2 := f.WithDeadline(context.Background(), f.Now().Add(time.Hour))
	cancel2()
	if !errors.Is(ctx2.Err(), context.Canceled) || f.Waiters() != 0 {
		t.Errorf("cancelled: Err = %v, %d waiters; want Canceled and none", ctx2.Err(), f.Waiters())
	}
}

// No time sent by a timer arrives after Stop or Reset returned.
func TestFakeStopLeavesNoStaleTime(t *testing.T) {
	t.Parallel()
	f := clock.NewFake(start)
	for i := range 2000 {
		tm := f.NewTimer(time.Second)
		done := make(chan struct{})
		go func() { f.Advance(time.Second); close(done) }()
		tm.Stop()
		<-done
		select {
		case <-tm.C():
			t.Fatalf("run %d: a time arrived after Stop returned", i)
		default:
		}
	}
}

func TestReal(t *testing.T) {
	t.Parallel()
	c := clock.Or(nil)
	if c != clock.Real || time.Since(c.Now()) > time.Minute {
		t.Fatal("Or(nil) is not the wall clock")
	}
	tm := c.NewTimer(time.Millisecond)
	<-tm.C()
	ctx, cancel := clock.WithTimeout(c, context.Background(), time.Millisecond)
	defer cancel()
	<-ctx.Done()
	if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Errorf("Err = %v", ctx.Err())
	}
}
