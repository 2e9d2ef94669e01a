package storage

import (
	"math"
	"time"
)

// Backends store instants as int64 unix nanoseconds, which name the years
// 1677 to 2262 (time.Time.UnixNano wraps outside them).
var firstInstant, lastInstant = time.Unix(0, math.MinInt64), time.Unix(0, math.MaxInt64)

// UnixNano is t in unix nanoseconds, saturated at the ends of what can be
// stored: a wake-up or a deadline past 2262 (a Retry-After or a saga timeout
// of centuries) is the last instant there is, never wrapped into the past.
func UnixNano(t time.Time) int64 {
	switch {
	case t.After(lastInstant):
		return math.MaxInt64
	case t.Before(firstInstant):
		return math.MinInt64
	}
	return t.UnixNano()
}
