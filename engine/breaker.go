package engine

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	"github.com/cockroachdb/errors"
	"github.com/sony/gobreaker/v2"

	"github.com/sagad/sagad/clock"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
)

// breaker is a named circuit breaker shared by every step that names it.
type breaker struct {
	name   string
	policy saga.BreakerPolicy
	cb     *gobreaker.CircuitBreaker[json.RawMessage]

	mu        sync.Mutex
	state     gobreaker.State
	openUntil time.Time
	// persist serialises the writes of the state: each reads the state
	// when its turn comes, so the last write holds the latest state.
	persist sync.Mutex
	// wallClock is set when the engine runs on the wall clock too: its
	// times and the breaker's are the same then.
	wallClock bool
}

// BreakerState describes a circuit breaker.
type BreakerState struct {
	Name string
	// State is "closed", "half-open" or "open".
	State string
	// OpenUntil is when an open breaker lets trial requests through.
	OpenUntil time.Time
}

// breakerConflict reports a breaker already registered under p's name with
// other settings. p has its defaults.
func (e *Engine) breakerConflict(p saga.BreakerPolicy) error {
	if b, ok := e.breakers[p.Name]; ok && b.policy != p {
		return errors.Mark(errors.Newf("engine: breaker %q is already registered with other settings (%+v, not %+v)",
			p.Name, b.policy, p), saga.ErrInvalidDefinition)
	}
	return nil
}

// breakerFor returns the breaker named by p, creating it (and restoring its
// stored open state) on first use. The caller has checked breakerConflict.
func (e *Engine) breakerFor(p saga.BreakerPolicy) *breaker {
	p = p.WithDefaults()
	if b, ok := e.breakers[p.Name]; ok {
		return b
	}
	b := &breaker{name: p.Name, policy: p, state: gobreaker.StateClosed, wallClock: e.clock == clock.Real}
	st := gobreaker.Settings{
		Name:        p.Name,
		MaxRequests: p.HalfOpenRequests,
		Timeout:     p.OpenFor,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= p.Failures },
		// A participant that answers with a permanent error is up, and so
		// is one that took the call to answer later; a step that panicked
		// says nothing good about it.
		IsSuccessful: func(err error) bool {
			return err == nil || errors.Is(err, saga.ErrPending) || (saga.IsPermanent(err) && !errors.Is(err, errPanic))
		},
		// Our own cancellations (shutdown, abort) say nothing about the participant.
		IsExcluded: func(err error) bool {
			return errors.Is(err, context.Canceled) || errors.Is(err, errShutdown)
		},
		OnStateChange: func(name string, from, to gobreaker.State) { e.breakerChanged(b, from, to) },
	}
	stored, err := e.store.BreakerGet(context.Background(), p.Name)
	if err != nil {
		e.log.Error("read a circuit breaker's stored state; it starts closed", "breaker", p.Name, "err", err)
	}
	b.cb = restoreBreaker(st, stored, b, time.Now())
	e.breakers[p.Name] = b
	return b
}

// restoreBreaker builds the breaker and, when its stored state is open, puts
// it back in that state with its original expiry. gobreaker's distributed
// breaker knows how to inject a SharedState; it is used once, here, over an
// in-memory store, and the plain breaker it wraps serves every call after.
func restoreBreaker(st gobreaker.Settings, stored []byte, b *breaker, now time.Time) *gobreaker.CircuitBreaker[json.RawMessage] {
	var shared gobreaker.SharedState
	if stored == nil || json.Unmarshal(stored, &shared) != nil || shared.State != gobreaker.StateOpen ||
		!shared.Expiry.After(now) {
		return gobreaker.NewCircuitBreaker[json.RawMessage](st)
	}
	// With Interval zero gobreaker keeps one counting bucket; a state
	// without it would make the restored breaker index an empty slice.
	shared.Buckets = []gobreaker.Counts{{}}
	shared.Counts = gobreaker.Counts{}
	data, err := json.Marshal(shared)
	if err != nil {
		return gobreaker.NewCircuitBreaker[json.RawMessage](st)
	}
	store := &memStore{data: map[string][]byte{"gobreaker:state:" + st.Name: data}}
	dcb, err := gobreaker.NewDistributedCircuitBreaker[json.RawMessage](store, st)
	if err != nil {
		return gobreaker.NewCircuitBreaker[json.RawMessage](st)
	}
	if _, err := dcb.State(); err != nil {
		return gobreaker.NewCircuitBreaker[json.RawMessage](st)
	}
	b.state, b.openUntil = gobreaker.StateOpen, shared.Expiry
	return dcb.CircuitBreaker
}

// memStore is the SharedDataStore used to restore a breaker.
type memStore struct{ data map[string][]byte }

func (m *memStore) Lock(string) error   { return nil }
func (m *memStore) Unlock(string) error { return nil }
func (m *memStore) GetData(name string) ([]byte, error) {
	if v, ok := m.data[name]; ok {
		return v, nil
	}
	return nil, gobreaker.ErrNoSharedState
}
func (m *memStore) SetData(name string, v []byte) error { m.data[name] = v; return nil }

// breakerChanged runs inside gobreaker's lock: it must not call the breaker.
func (e *Engine) breakerChanged(b *breaker, from, to gobreaker.State) {
	now := time.Now() // breakers keep gobreaker's time: the wall clock
	b.mu.Lock()
	b.state = to
	if to == gobreaker.StateOpen {
		b.openUntil = now.Add(b.policy.OpenFor)
	} else {
		b.openUntil = time.Time{}
	}
	until := b.openUntil
	b.mu.Unlock()
	e.log.Warn("circuit breaker changed state", "breaker", b.name, "from", from.String(), "to", to.String(),
		"open_until", until)
	if h := e.opts.Hooks.BreakerStateChanged; h != nil {
		h(b.name, from.String(), to.String())
	}
	// Persist asynchronously: this runs on a step's goroutine under the
	// breaker's lock. Writes take turns and each reads the state when its
	// turn comes, so the last write always holds the latest state.
	e.bg.Add(1)
	go func() {
		defer e.bg.Done()
		b.persist.Lock()
		defer b.persist.Unlock()
		b.mu.Lock()
		shared := gobreaker.SharedState{State: b.state, Expiry: b.openUntil, Start: now, Buckets: []gobreaker.Counts{{}}}
		b.mu.Unlock()
		data, err := json.Marshal(shared)
		if err == nil {
			err = e.store.BreakerPut(context.Background(), b.name, data)
		}
		if err != nil && !errors.Is(err, storage.ErrClosed) {
			e.log.Error("persist circuit breaker state", "breaker", b.name, "err", err)
		}
	}()
}

// blocked reports whether the breaker refuses calls now, and until when.
// It reads the engine's own record of the breaker, never gobreaker: it is
// called while a driver holds its transition lock, and gobreaker moves an
// expired open breaker to half-open inside its own lock, running
// breakerChanged and the hook there. Past its time an open breaker lets the
// call through to gobreaker, which half-opens it then (outside any lock of
// the engine's); a half-open breaker refuses the surplus of trial requests
// with ErrTooManyRequests, which attempt reports as blocked.
//
// The breaker's times are the wall clock's (gobreaker keeps its own); the
// time it returns is now (the engine's clock) plus what is left of the
// wait.
func (b *breaker) blocked(now time.Time) (bool, time.Time) {
	wall := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state != gobreaker.StateOpen || !wall.Before(b.openUntil) {
		return false, time.Time{}
	}
	if b.wallClock {
		return true, b.openUntil
	}
	return true, now.Add(b.openUntil.Sub(wall))
}

// Breakers returns the state of every circuit breaker, by name.
func (e *Engine) Breakers() []BreakerState {
	e.mu.Lock()
	bs := make([]*breaker, 0, len(e.breakers))
	for _, b := range e.breakers {
		bs = append(bs, b)
	}
	e.mu.Unlock()
	// Read from the engine's own record of the breaker, never from
	// gobreaker: a BreakerStateChanged hook runs under gobreaker's lock and
	// may call Breakers. An open breaker past its time is half-open (gobreaker
	// moves it there on its next call).
	now := time.Now() // breakers keep the wall clock's time, as gobreaker does
	out := make([]BreakerState, 0, len(bs))
	for _, b := range bs {
		b.mu.Lock()
		st, until := b.state, b.openUntil
		b.mu.Unlock()
		if st == gobreaker.StateOpen && !now.Before(until) {
			st = gobreaker.StateHalfOpen
		}
		if st != gobreaker.StateOpen {
			until = time.Time{}
		}
		out = append(out, BreakerState{Name: b.name, State: st.String(), OpenUntil: until})
	}
	return out
}
