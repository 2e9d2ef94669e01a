package engine

import (
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/sagad/sagad/saga"
)

// retryDelay returns the wait after the given number of failed attempts
// (failed >= 1), using backoff/v4's exponential policy with jitter. Nothing
// sleeps here: the engine stores now+delay as the saga's wake time.
func retryDelay(p saga.RetryPolicy, failed int) time.Duration {
	b := &backoff.ExponentialBackOff{
		InitialInterval:     p.InitialInterval,
		RandomizationFactor: p.Jitter,
		Multiplier:          p.Multiplier,
		MaxInterval:         p.MaxInterval,
		MaxElapsedTime:      0, // enforced by the engine from the stored phase start
		Stop:                backoff.Stop,
		Clock:               backoff.SystemClock,
	}
	b.Reset()
	// The interval saturates at MaxInterval long before 64 steps for any
	// multiplier > 1, so later attempts cost no more than that.
	n := min(failed, 64)
	d := p.InitialInterval
	for range n {
		d = b.NextBackOff()
	}
	return d
}

// exhausted reports whether a phase with the given attempts, started at
// phaseStart, may not be attempted again at next.
func exhausted(p saga.RetryPolicy, attempts int, phaseStart, next time.Time) bool {
	if p.MaxAttempts > 0 && attempts >= p.MaxAttempts {
		return true
	}
	return p.MaxElapsed > 0 && !phaseStart.IsZero() && next.Sub(phaseStart) > p.MaxElapsed
}
