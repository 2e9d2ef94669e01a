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
	if d, ok := ctx.Deadline(); !ok || !d.Equal(start.Add(time.Minute)) {
		t.Errorf("Deadline = %v, %v", d, ok)
	}
	f.BlockUntilWaiting(start.Add(time.Minute))
	f.Advance(time.Minute)
	<-ctx.Done()
	if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Errorf("Err = %v, want DeadlineExceeded", ctx.Err())
	}
	ctx2, cancel2 := f.WithDeadline(context.Background(), start.Add(time.Hour))
	cancel2()
	if !errors.Is(ctx2.Err(), context.Canceled) || f.Waiters() != 0 {
		t.Errorf("cancelled: Err = %v, %d waiters; want Canceled and none", ctx2.Err(), f.Waiters())
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
