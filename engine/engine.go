package engine

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/cockroachdb/errors"
	"github.com/oklog/ulid/v2"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagad/sagad/clock"
	"github.com/sagad/sagad/internal/dag"
	"github.com/sagad/sagad/internal/jsonw"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
	"github.com/sagad/sagad/storage/bolt"
)

// Options configures an Engine. The zero value is a sensible default.
type Options struct {
	// Concurrency caps how many sagas run steps at once, new and recovered
	// alike. Sagas waiting for a retry do not count. Zero: 1024.
	Concurrency int
	// Logger receives the engine's logs. Nil: slog.Default().
	Logger *slog.Logger
	// ShutdownGrace is how long running attempts may go on after Run's
	// context ends or Close is called, before their contexts are cancelled.
	// Attempts cut off are not recorded; the next Run re-runs them. Zero: 10s.
	ShutdownGrace time.Duration
	// Retention prunes completed, compensated and resolved sagas (and their
	// logs) once they have been finished this long. Failed sagas are never pruned.
	// Zero: keep everything.
	Retention time.Duration
	// Outbox configures the transactional outbox (compression, retention).
	Outbox OutboxOptions
	// Hooks are called after the changes they report are committed.
	Hooks Hooks
	// MaxStepOutput caps the output (JSON) of one action or fallback
	// attempt, in bytes. An attempt whose output is larger fails for good
	// (saga.ErrPermanent), and its step is compensated if the saga turns
	// around, since the participant acted. Zero: DefaultMaxStepOutput;
	// negative: no limit.
	MaxStepOutput int
	// Clock is the engine's time: retries, timeouts, deadlines, the
	// scheduler's waits and every time it records. Nil: the wall clock
	// (clock.Real). Tests move a clock.Fake instead of waiting. Open gives
	// the store the same clock (for its outbox ids); a store passed to New
	// keeps its own. Breakers and in-process pauses keep the wall clock (see
	// package clock).
	Clock clock.Clock
	// MaxSagaData caps the saga's data, the outputs of its steps together,
	// in bytes: the record is rewritten on every transition and the data is
	// handed to every later step. A step whose output would take the saga
	// past it fails as an over-sized output does. Zero: DefaultMaxSagaData;
	// negative: no limit.
	MaxSagaData int
	// TracerProvider traces sagas with OpenTelemetry: a span per saga and
	// per attempt (see TracerName). Nil: the global provider
	// (otel.GetTracerProvider), which records nothing unless the program
	// sets one.
	TracerProvider trace.TracerProvider
}

// Defaults of Options.
const (
	// DefaultMaxStepOutput is the default of Options.MaxStepOutput: 1 MiB.
	DefaultMaxStepOutput = 1 << 20
	// DefaultMaxSagaData is the default of Options.MaxSagaData: 4 MiB.
	DefaultMaxSagaData = 4 << 20
)

// Hooks let the embedding program observe the engine (metrics, tracing).
// Hooks run on the engine's goroutines: keep them fast and non-blocking.
// A hook may call the engine's methods, but must not wait for the saga it
// reports on to change (Wait, or Retry and Resolve, which wait for the
// saga's driver to let go): the driver waits for the hook.
type Hooks struct {
	// SagaStatusChanged is called when a saga enters a status, once it is
	// durable.
	SagaStatusChanged func(StatusChange)
	// AttemptFinished is called when an attempt's outcome is committed.
	AttemptFinished func(AttemptInfo)
	// AttemptPending is called when an attempt is committed as waiting
	// for its participant's answer (saga.ErrPending).
	AttemptPending func(AttemptInfo)
	// BreakerStateChanged is called when a circuit breaker changes state
	// ("closed", "half-open", "open").
	BreakerStateChanged func(name, from, to string)
	// StepWaiting is called when a step starts to wait for its next
	// attempt: a failed attempt's backoff, or its circuit breaker open.
	// (A wait for a participant's answer is AttemptPending.)
	StepWaiting func(WaitInfo)
	// SagaParked is called when a saga is parked: the version of its
	// definition it runs on is not registered.
	SagaParked func(ParkInfo)
}

// StatusChange describes a saga entering a status, for
// Hooks.SagaStatusChanged.
type StatusChange struct {
	SagaID     string
	Definition string
	// From is the status the saga left; empty for a new saga.
	From saga.Status
	To   saga.Status
}

// WaitInfo describes a step that waits for its next attempt, for
// Hooks.StepWaiting.
type WaitInfo struct {
	SagaID     string
	Definition string
	Step       string
	Phase      saga.Phase
	// Until is when the next attempt is due.
	Until time.Time
	// Reason is "retry" (the backoff after a failed attempt) or "breaker"
	// (the step's circuit breaker is open).
	Reason string
}

// ParkInfo describes a parked saga, for Hooks.SagaParked.
type ParkInfo struct {
	SagaID     string
	Definition string
	// Version is the definition version (fingerprint) the saga runs on,
	// which is not registered.
	Version string
	Reason  string
}

// AttemptInfo describes a finished attempt, for Hooks.AttemptFinished.
type AttemptInfo struct {
	SagaID     string
	Definition string
	Step       string
	Phase      saga.Phase
	Attempt    int
	Duration   time.Duration
	// Err is the attempt's error, nil on success.
	Err error
	// Retry is true when another attempt of the same phase was scheduled.
	Retry bool
	// Pending is true when the attempt waits for its answer (see
	// Hooks.AttemptPending); Err is then nil.
	Pending bool
}

// Engine runs sagas durably on a storage.Store. Its methods are safe for
// concurrent use.
type Engine struct {
	store  storage.Store
	sagas  storage.SagaStore // the saga side of store
	clock  clock.Clock
	opts   Options
	log    *slog.Logger
	tracer trace.Tracer
	// unsetTP is the global provider while no program has set one (see
	// tracerFor); nil when Options.TracerProvider is set.
	unsetTP trace.TracerProvider
	spans   spans // the saga spans open in this process

	mu     sync.Mutex
	defs   map[string]*versions
	graphs map[*saga.Definition]*dag.Graph // of every registered definition
	// pauses holds the sagas an operator asked to pause that are not
	// paused yet (their attempts in flight have not ended); the driver
	// that finds one pauses the saga. npauses is len(pauses), read on the
	// hot path without mu.
	pauses   map[ulid.ULID]bool
	npauses  atomic.Int64
	breakers map[string]*breaker
	active   map[ulid.ULID]*driver
	broken   map[ulid.ULID]bool // records that failed to load: not dispatched again until a restart
	waiters  map[ulid.ULID][]chan *Saga
	claimers map[ulid.ULID][]chan struct{} // closed when the saga's holder lets go
	failing  map[ulid.ULID]int             // consecutive failed commits, by saga
	nfailing atomic.Int64                  // len(failing), read without mu on the hot path
	// running is true between recovery and shutdown: new sagas start at once.
	// It is written under mu (with the active map) and read without it.
	running   atomic.Bool
	runCalled bool
	// stopping is set under mu once shutdown or Close has begun: no new
	// holder may join the drivers WaitGroup then.
	stopping bool

	closed   atomic.Bool
	sem      chan struct{}   // concurrency slots
	nudge    chan struct{}   // wake the scheduler for a time earlier than planned
	planned  atomic.Int64    // unix nanos the scheduler plans to wake at
	attempts context.Context // cancelled at hard stop; ancestor of every attempt's context
	// shards are children of attempts that attempt contexts hang off, so
	// that thousands of attempts do not contend on one parent's lock.
	shards    [64]context.Context
	cancelAt  context.CancelFunc
	stopRun   chan struct{} // closed by Close to end Run
	runDone   chan struct{} // closed when Run has returned
	recovered chan struct{} // closed when Run's recovery has dispatched every unfinished saga
	drivers   sync.WaitGroup
	bg        sync.WaitGroup // background writes (breaker state)

}

// versions holds the registered versions of one definition, by fingerprint.
type versions struct {
	latest *saga.Definition
	byFP   map[string]*saga.Definition
}

// Open opens (or creates) the engine's bbolt database at path, with the
// defaults of package storage/bolt and the engine's clock, and returns an
// engine on it (see New). It fails with a clear error if the file is locked
// by another process, corrupt, or not a sagad database (see storage/bolt's
// errors). To set the file's options (lock timeout, compression), open it
// with bolt.Open and pass it to New.
func Open(path string, opts Options) (*Engine, error) {
	db, err := bolt.Open(path, &bolt.Options{Clock: opts.Clock})
	if err != nil {
		return nil, errors.Wrap(err, "engine: open")
	}
	e, err := New(db, opts)
	if err != nil {
		_ = db.Close()
		return nil, err
	}
	return e, nil
}

// New returns an engine on store, which it owns from then on: Close closes
// it. The store comes configured: its options are its backend's.
func New(store storage.Store, opts Options) (*Engine, error) {
	if store == nil {
		return nil, errors.New("engine: new: a store is required")
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = 1024
	}
	if opts.ShutdownGrace <= 0 {
		opts.ShutdownGrace = 10 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.MaxStepOutput == 0 {
		opts.MaxStepOutput = DefaultMaxStepOutput
	}
	if opts.MaxSagaData == 0 {
		opts.MaxSagaData = DefaultMaxSagaData
	}
	opts.Outbox.setDefaults()
	actx, cancel := context.WithCancelCause(context.Background())
	e := &Engine{
		clock:     clock.Or(opts.Clock),
		store:     store,
		sagas:     store,
		opts:      opts,
		log:       opts.Logger,
		defs:      make(map[string]*versions),
		graphs:    make(map[*saga.Definition]*dag.Graph),
		pauses:    make(map[ulid.ULID]bool),
		breakers:  make(map[string]*breaker),
		active:    make(map[ulid.ULID]*driver),
		broken:    make(map[ulid.ULID]bool),
		waiters:   make(map[ulid.ULID][]chan *Saga),
		claimers:  make(map[ulid.ULID][]chan struct{}),
		failing:   make(map[ulid.ULID]int),
		sem:       make(chan struct{}, opts.Concurrency),
		nudge:     make(chan struct{}, 1),
		attempts:  actx,
		stopRun:   make(chan struct{}),
		runDone:   make(chan struct{}),
		recovered: make(chan struct{}),
	}
	e.tracer, e.unsetTP = tracerFor(opts.TracerProvider)
	var cancels [len(e.shards)]context.CancelFunc
	for i := range e.shards {
		e.shards[i], cancels[i] = context.WithCancel(actx)
	}
	e.cancelAt = func() {
		cancel(errShutdown)
		for _, c := range cancels {
			c()
		}
	}
	return e, nil
}

// Store returns the engine's store: its outbox for a relay, its stored
// definitions for the daemon. For an engine from Open it is a *bolt.DB,
// whose file tools (backup, check) need.
func (e *Engine) Store() storage.Store { return e.store }

// Register validates a definition and makes it available to Start. Register
// may be called before or during Run. Registering a definition whose
// fingerprint differs from the one already registered under its name adds a
// new version: new sagas use the latest one, existing sagas keep the
// version they started with. Sagas parked because their definition was
// missing are resumed when it is registered.
func (e *Engine) Register(def *saga.Definition) error {
	if err := def.Validate(); err != nil {
		return errors.Wrap(err, "engine: register")
	}
	fp := def.Fingerprint()
	e.mu.Lock()
	// Every breaker is checked before any is created, so that a refused
	// definition leaves none behind to constrain the next one.
	named := make(map[string]saga.BreakerPolicy)
	for _, s := range def.Steps {
		if s.Breaker.Name == "" {
			continue
		}
		p := s.Breaker.WithDefaults()
		err := e.breakerConflict(p)
		if q, ok := named[p.Name]; ok && err == nil && q != p {
			err = errors.Mark(errors.Newf("engine: breaker %q has other settings in an earlier step (%+v, not %+v)",
				p.Name, q, p), saga.ErrInvalidDefinition)
		}
		if err != nil {
			e.mu.Unlock()
			return errors.Wrapf(err, "engine: register %q: step %q", def.Name, s.Name)
		}
		named[p.Name] = p
	}
	for _, s := range def.Steps {
		if s.Breaker.Name != "" {
			e.breakerFor(s.Breaker)
		}
	}
	v := e.defs[def.Name]
	if v == nil {
		v = &versions{byFP: make(map[string]*saga.Definition)}
		e.defs[def.Name] = v
	}
	v.latest = def
	v.byFP[fp] = def
	e.graphs[def] = graphOf(def)
	// Sagas started before fingerprints covered policies recorded the
	// legacy one; they keep running on the definition, as they did before.
	legacy := def.LegacyFingerprint()
	if legacy != "" {
		v.byFP[legacy] = def
	}
	e.mu.Unlock()
	if e.running.Load() {
		e.resumeParked(def.Name, fp, legacy)
	}
	return nil
}

// definition returns the registered definition with that name and
// fingerprint (fp empty: the latest).
func (e *Engine) definition(name, fp string) *saga.Definition {
	def, _ := e.plan(name, fp)
	return def
}

// plan returns the registered definition with that name and fingerprint
// (fp empty: the latest) and the graph of its steps.
func (e *Engine) plan(name, fp string) (*saga.Definition, *dag.Graph) {
	e.mu.Lock()
	defer e.mu.Unlock()
	v := e.defs[name]
	if v == nil {
		return nil, nil
	}
	def := v.latest
	if fp != "" {
		def = v.byFP[fp]
	}
	return def, e.graphs[def]
}

// graphOf resolves the steps of a valid definition.
func graphOf(def *saga.Definition) *dag.Graph {
	names := make([]string, len(def.Steps))
	after := make([][]string, len(def.Steps))
	for i, s := range def.Steps {
		names[i], after[i] = s.Name, s.After
	}
	g, _ := dag.New(names, after) // Validate accepted it
	return g
}

// Definitions returns the latest registered version of every definition.
func (e *Engine) Definitions() []*saga.Definition {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]*saga.Definition, 0, len(e.defs))
	for _, v := range e.defs {
		out = append(out, v.latest)
	}
	return out
}

// StartOption configures Start.
type StartOption func(*startOptions)

type startOptions struct {
	idemKey string
}

// WithIdempotencyKey makes Start idempotent: if a saga was already started
// with key and the same input, Start returns that saga (Started.Duplicate is
// true) and starts nothing; with another input, Start fails with
// ErrKeyReused (also marked ErrConflict). Inputs are compared as JSON
// values: spacing and the order of object members do not matter. Keys are
// global to the engine and kept until the saga is pruned. A key must be
// valid UTF-8 of at most MaxIdempotencyKey bytes.
//
// Keys are compared byte for byte.
func WithIdempotencyKey(key string) StartOption {
	return func(o *startOptions) { o.idemKey = key }
}

// MaxIdempotencyKey is the longest idempotency key Start accepts, in bytes.
const MaxIdempotencyKey = 256

// Started is what Start returns.
type Started struct {
	// ID is the saga's id.
	ID string
	// Duplicate is true when the idempotency key named an existing saga,
	// whose id is ID; nothing new was started.
	Duplicate bool
}

// Start starts a saga of the named definition with input (any value that
// encodes as JSON; json.RawMessage is stored as is). It returns once the
// saga is durably recorded; the saga then runs in the background. Before
// Run, or while every concurrency slot is busy, the saga is recorded as due
// and starts as soon as a slot frees.
func (e *Engine) Start(ctx context.Context, definition string, input any, opts ...StartOption) (Started, error) {
	if e.closed.Load() {
		return Started{}, ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return Started{}, errors.Wrap(err, "engine: start")
	}
	var so startOptions
	for _, o := range opts {
		o(&so)
	}
	def, g := e.plan(definition, "")
	if def == nil {
		return Started{}, errors.Wrapf(ErrUnknownDefinition, "engine: start %q", definition)
	}
	raw, err := encodeInput(input)
	if err != nil {
		return Started{}, errors.Wrapf(err, "engine: start %q", definition)
	}
	if err := checkKey(so.idemKey); err != nil {
		return Started{}, errors.Wrapf(err, "engine: start %q", definition)
	}
	if so.idemKey != "" {
		existing, found, err := e.sagas.IdemGet(ctx, so.idemKey)
		if err != nil {
			return Started{}, errors.Wrapf(err, "engine: start %q", definition)
		}
		if found {
			return e.duplicate(definition, so.idemKey, existing, raw)
		}
	}
	now := e.clock.Now()
	rec := newRecord(def, raw, so.idemKey, now)
	d := &driver{e: e, def: def, g: g, rec: rec}

	// Fast path: a free slot and a running engine start the saga in the
	// same commit that creates it. Otherwise the saga is created due now
	// and the scheduler dispatches it.
	// Either way the saga is held here until Start has reported it (the
	// status hook), so that no driver reports a later status first.
	fast := false
	e.mu.Lock()
	if e.stopping {
		e.mu.Unlock()
		return Started{}, ErrClosed
	}
	if e.running.Load() {
		select {
		case e.sem <- struct{}{}:
			fast, d.slot = true, true
		default:
		}
	}
	e.active[rec.ID] = d
	e.drivers.Add(1)
	e.mu.Unlock()
	if !fast {
		rec.WakeAt = now
	}
	// Once the saga is sure to be held (Close waits for its driver, then
	// ends the spans still open).
	d.startSpan(ctx)
	dup, err := d.create(now, fast)
	if err != nil || dup != (ulid.ULID{}) {
		d.duplicateSpan(dup, err)
		if err != nil {
			// The store may have written it all the same (a connection
			// lost after the commit): look again later, as after a failed
			// commit; a saga that is not there is left alone.
			d.reload = true
		}
		e.release(d)
		if err != nil {
			return Started{}, errors.Wrapf(err, "engine: start %q", definition)
		}
		return e.duplicate(definition, so.idemKey, dup, raw)
	}
	e.statusHook(rec.ID, def.Name, "", saga.StatusRunning)
	if fast {
		go d.run()
	} else {
		e.release(d) // the scheduler dispatches it: release wakes it for rec.WakeAt
	}
	return Started{ID: rec.ID.String()}, nil
}

// checkKey refuses an idempotency key that is not valid UTF-8 (two
// different invalid keys could name one saga once encoded) or too long.
func checkKey(key string) error {
	switch {
	case !utf8.ValidString(key):
		return errors.Wrapf(ErrInvalidInput, "idempotency key %q is not valid UTF-8", key)
	case len(key) > MaxIdempotencyKey:
		return errors.Wrapf(ErrInvalidInput, "idempotency key is %d bytes, longer than %d", len(key), MaxIdempotencyKey)
	}
	return nil
}

// duplicate answers a Start whose idempotency key names the saga id: the
// same saga if it was started with the same input, else ErrKeyReused.
func (e *Engine) duplicate(definition, key string, id ulid.ULID, input json.RawMessage) (Started, error) {
	rec, err := e.sagaGet(id)
	if err != nil {
		return Started{}, errors.Wrapf(err, "engine: start %q: idempotency key %q", definition, key)
	}
	if rec.Definition != definition || !jsonw.Equal(rec.Input, input) {
		what := "another input"
		if rec.Definition != definition {
			what = "definition " + strconv.Quote(rec.Definition)
		}
		return Started{}, errors.WithHint(errors.Mark(errors.Wrapf(ErrKeyReused,
			"engine: start %q: idempotency key %q names saga %s, started with %s", definition, key, id, what), ErrConflict),
			"use a new idempotency key for a new saga")
	}
	return Started{ID: id.String(), Duplicate: true}, nil
}

func encodeInput(input any) (json.RawMessage, error) {
	switch v := input.(type) {
	case nil:
		return nil, nil
	case json.RawMessage:
		if !json.Valid(v) {
			return nil, errors.Wrap(ErrInvalidInput, "input is not valid JSON")
		}
		// The caller may reuse its buffer once Start returns.
		return bytes.Clone(v), nil
	}
	raw, err := json.Marshal(input)
	if err != nil {
		return nil, errors.Mark(errors.Wrap(err, "encode input"), ErrInvalidInput)
	}
	return raw, nil
}

func newRecord(def *saga.Definition, input json.RawMessage, idemKey string, now time.Time) *storage.Saga {
	rec := &storage.Saga{
		ID:             ulid.Make(),
		Definition:     def.Name,
		Fingerprint:    def.Fingerprint(),
		Status:         saga.StatusRunning,
		Input:          input,
		IdempotencyKey: idemKey,
		CreatedAt:      now,
		UpdatedAt:      now,
		Steps:          make([]storage.Step, len(def.Steps)),
	}
	for i, s := range def.Steps {
		rec.Steps[i] = storage.Step{Name: s.Name, Status: saga.StepPending}
	}
	if def.Timeout > 0 {
		rec.Deadline = now.Add(def.Timeout)
	}
	return rec
}

// parseID parses a saga id.
func parseID(id string) (ulid.ULID, error) {
	u, err := ulid.ParseStrict(id)
	if err != nil {
		return u, errors.Wrapf(ErrInvalidID, "%q", id)
	}
	return u, nil
}

// Get returns a saga's current state.
func (e *Engine) Get(ctx context.Context, id string) (*Saga, error) {
	_, s, err := e.lookup(id)
	return s, err
}

// lookup parses id and reads the saga it names.
func (e *Engine) lookup(id string) (ulid.ULID, *Saga, error) {
	u, err := parseID(id)
	if err != nil {
		return u, nil, err
	}
	rec, err := e.sagaGet(u)
	if err != nil {
		return u, nil, errors.Wrap(err, "engine")
	}
	return u, e.view(rec), nil
}

// sagaGet reads a saga's record; a missing one is ErrNotFound.
func (e *Engine) sagaGet(id ulid.ULID) (*storage.Saga, error) {
	rec, err := e.sagas.SagaGet(context.Background(), id)
	switch {
	case errors.Is(err, storage.ErrNotFound):
		return nil, errors.Wrapf(ErrNotFound, "%s", id)
	case err != nil:
		return nil, errors.Wrapf(err, "get saga %s", id)
	}
	return rec, nil
}

// Wait blocks until the saga is finished (completed, compensated or failed)
// or ctx ends, and returns its state.
func (e *Engine) Wait(ctx context.Context, id string) (*Saga, error) {
	u, err := parseID(id)
	if err != nil {
		return nil, err
	}
	// Register first, then look: a saga finishing in between still
	// reaches the waiter.
	ch := make(chan *Saga, 1)
	// A saga a driver holds is not finished yet (drivers notify after they
	// let go), so only a saga nobody holds needs a look at the database.
	e.mu.Lock()
	e.waiters[u] = append(e.waiters[u], ch)
	_, held := e.active[u]
	e.mu.Unlock()
	defer e.unwait(u, ch)
	status := saga.StatusRunning
	if !held {
		status, err = e.sagas.SagaStatus(ctx, u)
		if errors.Is(err, storage.ErrNotFound) {
			return nil, errors.Wrapf(ErrNotFound, "engine: %s", id)
		}
		if err != nil {
			return nil, errors.Wrapf(err, "engine: wait for saga %s", id)
		}
	}
	if status.Finished() {
		return e.Get(ctx, id)
	}
	// A store that other processes share may have another one drive the
	// saga: nothing here would tell when it ends, so look now and then.
	var poll <-chan time.Time
	if e.sagas.SagaWake() != nil {
		t := time.NewTicker(waitPoll) // an in-process wait: the wall clock's
		defer t.Stop()
		poll = t.C
	}
	for {
		select {
		case s := <-ch:
			return s, nil
		case <-poll:
			if st, err := e.sagas.SagaStatus(ctx, u); err == nil && st.Finished() {
				return e.Get(ctx, id)
			}
		case <-ctx.Done():
			s, _ := e.Get(context.Background(), id)
			return s, errors.Wrapf(ctx.Err(), "engine: wait for saga %s", id)
		}
	}
}

// waitPoll is how often Wait looks at a saga another process may drive.
const waitPoll = 200 * time.Millisecond

func (e *Engine) unwait(id ulid.ULID, ch chan *Saga) {
	e.mu.Lock()
	defer e.mu.Unlock()
	ws := e.waiters[id]
	for i, w := range ws {
		if w == ch {
			ws = append(ws[:i], ws[i+1:]...)
			break
		}
	}
	if len(ws) == 0 {
		delete(e.waiters, id)
	} else {
		e.waiters[id] = ws
	}
}

// notifyFinished hands a finished saga to its waiters. The record is no
// longer changed by its driver, so the views may share its maps.
func (e *Engine) notifyFinished(r *storage.Saga) {
	e.mu.Lock()
	ws := e.waiters[r.ID]
	delete(e.waiters, r.ID)
	e.mu.Unlock()
	for _, ch := range ws {
		ch <- e.view(r)
	}
}

// ListOptions filters List.
type ListOptions struct {
	// Status keeps sagas in this status only.
	Status saga.Status
	// Definition keeps sagas of this definition only.
	Definition string
	// Cursor continues a listing: pass the previous page's NextCursor.
	Cursor string
	// Limit caps the page. Zero: 100; at most 1000.
	Limit int
	// IdempotencyKey keeps only the saga started with this key (a page of
	// one, or none); the other fields do not apply.
	IdempotencyKey string
}

// Page is one page of List.
type Page struct {
	Sagas []*Saga
	// NextCursor continues the listing; empty on the last page.
	NextCursor string
}

// List returns sagas, newest first, a page at a time. Listing by status
// reads the status index only.
func (e *Engine) List(ctx context.Context, o ListOptions) (*Page, error) {
	if o.Status != "" && !o.Status.Valid() {
		return nil, errors.Newf("engine: list: unknown status %q", o.Status)
	}
	if o.Limit <= 0 {
		o.Limit = 100
	}
	o.Limit = min(o.Limit, 1000)
	if o.IdempotencyKey != "" {
		return e.listKey(ctx, o.IdempotencyKey)
	}
	so := storage.ListOptions{Status: o.Status, Definition: o.Definition, Limit: o.Limit}
	if o.Cursor != "" {
		u, err := parseID(o.Cursor)
		if err != nil {
			return nil, errors.Wrap(err, "engine: list: cursor")
		}
		so.Before = u
	}
	recs, more, err := e.sagas.SagaList(ctx, so)
	if err != nil {
		return nil, errors.Wrap(err, "engine: list")
	}
	p := &Page{Sagas: make([]*Saga, len(recs))}
	for i, r := range recs {
		p.Sagas[i] = e.view(r)
	}
	if more && len(recs) > 0 {
		p.NextCursor = recs[len(recs)-1].ID.String()
	}
	return p, nil
}

// listKey is List of the saga an idempotency key names.
func (e *Engine) listKey(ctx context.Context, key string) (*Page, error) {
	id, ok, err := e.sagas.IdemGet(ctx, key)
	if err != nil {
		return nil, errors.Wrap(err, "engine: list: idempotency key")
	}
	p := &Page{}
	if !ok {
		return p, nil
	}
	r, err := e.sagas.SagaGet(ctx, id)
	switch {
	case errors.Is(err, storage.ErrNotFound):
		return p, nil // pruned meanwhile
	case err != nil:
		return nil, errors.Wrapf(err, "engine: list: saga %s", id)
	}
	p.Sagas = append(p.Sagas, e.view(r))
	return p, nil
}

// Counts returns how many stored sagas are in each status.
func (e *Engine) Counts(ctx context.Context) (map[saga.Status]int, error) {
	c, err := e.sagas.SagaCounts(ctx)
	return c, errors.Wrap(err, "engine: counts")
}

// VersionCounts counts the unfinished sagas of a definition (running,
// compensating, paused or failed) by the version (fingerprint) they run
// on. It reads them all.
func (e *Engine) VersionCounts(ctx context.Context, definition string) (map[string]int, error) {
	out := make(map[string]int)
	for _, st := range []saga.Status{saga.StatusRunning, saga.StatusCompensating, saga.StatusPaused, saga.StatusFailed} {
		err := e.eachListed(ctx, storage.ListOptions{Status: st, Definition: definition}, func(r *storage.Saga) { out[r.Fingerprint]++ })
		if err != nil {
			return nil, errors.Wrapf(err, "engine: count %s sagas of %s", st, definition)
		}
	}
	return out, nil
}

// eachListed calls fn with every saga SagaList lists with o, a thousand a
// read.
func (e *Engine) eachListed(ctx context.Context, o storage.ListOptions, fn func(*storage.Saga)) error {
	o.Limit = 1000
	for {
		recs, more, err := e.sagas.SagaList(ctx, o)
		if err != nil {
			return err
		}
		for _, r := range recs {
			fn(r)
		}
		if !more || len(recs) == 0 {
			return nil
		}
		o.Before = recs[len(recs)-1].ID
	}
}

// Log returns every entry of a saga's step log, in order.
func (e *Engine) Log(ctx context.Context, id string) ([]storage.LogEntry, error) {
	u, err := parseID(id)
	if err != nil {
		return nil, err
	}
	out, err := e.sagas.LogList(ctx, u)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, errors.Wrapf(ErrNotFound, "engine: %s", id)
	}
	return out, errors.Wrapf(err, "engine: log of saga %s", id)
}

// Abort asks a running saga to stop going forward and compensate. The
// request is durable when Abort returns; the saga acts on it at its next
// transition (an attempt in flight finishes first). Aborting a saga that is
// already compensating does nothing. Aborting a finished saga, or one past
// its pivot, fails with ErrConflict.
func (e *Engine) Abort(ctx context.Context, id string) error {
	u, s, err := e.lookup(id)
	if err != nil {
		return err
	}
	switch s.Status {
	case saga.StatusCompensating:
		return nil
	case saga.StatusRunning:
	case saga.StatusPaused:
		return e.abortPaused(ctx, u, id)
	default:
		return errors.Wrapf(ErrConflict, "engine: abort saga %s: it is %s", id, s.Status)
	}
	if def := e.definition(s.Definition, s.Fingerprint); def != nil {
		if p := def.PivotIndex(); p >= 0 && s.Steps[p].Status == saga.StepSucceeded {
			return errors.Wrapf(ErrConflict, "engine: abort saga %s: it is past its pivot step %q and can only go forward",
				id, def.Steps[p].Name)
		}
	}
	// Hold the saga while the request is written: its driver's transition
	// (see driver.mu) either sees the request or commits before it, and
	// then the status check below refuses a saga that has just finished.
	d, own, err := e.holdForAbort(ctx, u)
	if err != nil {
		return errors.Wrapf(err, "engine: abort saga %s", id)
	}
	now := e.clock.Now()
	compensating := false
	err = e.sagas.AbortPut(ctx, u, now, func(rec *storage.Saga) error {
		// Checked again in the write, under the hold: the saga may have
		// moved since, even past its pivot.
		compensating = rec.Status == saga.StatusCompensating
		switch rec.Status {
		case saga.StatusCompensating:
			return storage.ErrNoWrite
		case saga.StatusRunning:
			if def := e.definition(rec.Definition, rec.Fingerprint); def != nil {
				if p := def.PivotIndex(); p >= 0 && rec.Steps[p].Status == saga.StepSucceeded {
					return errors.Wrapf(ErrConflict, "it is past its pivot step %q and can only go forward", def.Steps[p].Name)
				}
			}
			return nil
		}
		return errors.Wrapf(ErrConflict, "it is %s", rec.Status)
	})
	if errors.Is(err, storage.ErrNotFound) {
		err = errors.Wrap(ErrNotFound, "pruned meanwhile")
	}
	if err == nil && !compensating && !own {
		d.abort.Store(true)
	}
	if own {
		e.release(d)
	} else {
		d.mu.Unlock()
	}
	if err != nil || compensating {
		return errors.Wrapf(err, "engine: abort saga %s", id)
	}
	// A saga waiting for a retry is woken to act on the abort now.
	e.dispatchNow(u)
	return nil
}

// abortPaused aborts a paused saga: it resumes, compensating. One paused
// while compensating resumes as it was.
func (e *Engine) abortPaused(ctx context.Context, u ulid.ULID, id string) error {
	err := e.claimAndDrive(ctx, u, true, func(d *driver) error {
		r, now := d.rec, e.clock.Now()
		switch {
		case r.Status == saga.StatusPaused && r.PausedFrom == saga.StatusCompensating:
			return errNoChange // being undone already; it stays paused
		case r.Status != saga.StatusPaused:
			return errors.WithHint(errors.Wrapf(ErrConflict, "it was paused, and is %s now", r.Status), "abort it again")
		case d.pastPivot():
			return errors.Wrapf(ErrConflict, "it is past its pivot step %q and can only go forward",
				d.def.Steps[d.def.PivotIndex()].Name)
		}
		r.Status, r.PausedFrom, r.UpdatedAt = saga.StatusRunning, "", now
		d.log(now, storage.LogEntry{Event: storage.EventUnpaused, Status: r.Status, Note: "resumed to be compensated: an operator aborted it"})
		d.compensate(now, ErrAborted)
		r.WakeAt = now // the scheduler drives it from here
		return nil
	})
	return errors.Wrapf(err, "engine: abort saga %s", id)
}

// errNoChange is what a change passed to claimAndDrive returns when the
// saga is already as asked: nothing is written, and claimAndDrive returns
// nil.
var errNoChange = errors.New("no change")

// Pause stops a running or compensating saga: no attempt of it starts
// until Resume, and once the attempts already running have ended and been
// recorded, its status is paused (it stays so across restarts). Retry
// times and the deadline keep counting: a deadline that passed meanwhile
// turns the saga around when it resumes. Pausing a paused saga does
// nothing; a finished one is ErrConflict. A pause waiting for attempts to
// end is kept in memory: if the process stops before they end, the saga
// is not paused, and Pause must be called again.
func (e *Engine) Pause(ctx context.Context, id string) error {
	u, s, err := e.lookup(id)
	if err != nil {
		return err
	}
	switch s.Status {
	case saga.StatusPaused:
		return nil
	case saga.StatusRunning, saga.StatusCompensating:
	default:
		return errors.Wrapf(ErrConflict, "engine: pause saga %s: it is %s", id, s.Status)
	}
	// The request first: a driver of this process that holds the saga, or
	// takes it from here on, pauses it at its next decision.
	e.mu.Lock()
	if !e.pauses[u] {
		e.pauses[u] = true
		e.npauses.Add(1)
	}
	d := e.active[u]
	e.mu.Unlock()
	if d != nil && !d.op {
		return nil
	}
	err = e.claimAndDrive(ctx, u, false, func(d *driver) error {
		r, now := d.rec, e.clock.Now()
		switch r.Status {
		case saga.StatusPaused:
			return errNoChange
		case saga.StatusRunning, saga.StatusCompensating:
		default:
			return errors.Wrapf(ErrConflict, "it is %s", r.Status)
		}
		r.UpdatedAt = now
		d.enterPause(now)
		return nil
	})
	e.pauseDone(u) // carried out, moot, or refused (the caller hears why): nothing is left pending
	return errors.Wrapf(err, "engine: pause saga %s", id)
}

// pauseRequested reports whether an operator asked to pause the saga.
func (e *Engine) pauseRequested(id ulid.ULID) bool {
	if e.npauses.Load() == 0 {
		return false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.pauses[id]
}

// pauseDone forgets a pause request: carried out, called off, or moot.
func (e *Engine) pauseDone(id ulid.ULID) {
	if e.npauses.Load() == 0 {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.pauses[id] {
		delete(e.pauses, id)
		e.npauses.Add(-1)
	}
}

// Resume ends a pause: the saga goes on in the status it had when it was
// paused, at once. Resuming a saga that is not paused does nothing (and
// calls off a pause still waiting for attempts to end); a finished one is
// ErrConflict.
func (e *Engine) Resume(ctx context.Context, id string) error {
	u, _, err := e.lookup(id)
	if err != nil {
		return err
	}
	// Called off first; then, once a driver holding the saga has ended
	// its transition (it may have read the request before), the stored
	// status says whether there is a pause to end.
	e.pauseDone(u)
	e.mu.Lock()
	d := e.active[u]
	e.mu.Unlock()
	if d != nil {
		d.mu.Lock()
		//lint:ignore SA2001 an empty critical section: waiting for the driver's transition is the point
		d.mu.Unlock()
	}
	if _, s, err := e.lookup(id); err != nil {
		return err
	} else if s.Status == saga.StatusRunning || s.Status == saga.StatusCompensating {
		return nil // not paused, and now it will not be
	}
	err = e.claimAndDrive(ctx, u, false, func(d *driver) error {
		r, now := d.rec, e.clock.Now()
		switch r.Status {
		case saga.StatusRunning, saga.StatusCompensating:
			return errNoChange
		case saga.StatusPaused:
		default:
			return errors.Wrapf(ErrConflict, "it is %s", r.Status)
		}
		to := cmp.Or(r.PausedFrom, saga.StatusRunning)
		r.Status, r.PausedFrom, r.WakeAt, r.UpdatedAt = to, "", now, now
		d.log(now, storage.LogEntry{Event: storage.EventUnpaused, Status: to, Note: "resumed by an operator"})
		return nil
	})
	return errors.Wrapf(err, "engine: resume saga %s", id)
}

// testAbortHold, when set by a test, is called when Abort is about to wait
// for the transition lock of the driver that holds the saga.
var testAbortHold func(id string)

// holdForAbort holds a saga for Abort: it locks the transitions of the
// driver that holds the saga, or, when none does, claims the saga itself
// (own) so that no driver starts until the request is written. Release an
// owned driver with e.release, else unlock d.mu. A driver holds d.mu for
// one transition at most (a decision and its commit), so the wait is short
// and ctx is checked between tries only.
func (e *Engine) holdForAbort(ctx context.Context, id ulid.ULID) (d *driver, own bool, err error) {
	for {
		e.mu.Lock()
		if e.stopping {
			e.mu.Unlock()
			return nil, false, ErrClosed
		}
		d = e.active[id]
		if d == nil {
			d = &driver{e: e, rec: &storage.Saga{ID: id}, op: true}
			e.active[id] = d
			e.drivers.Add(1)
			e.mu.Unlock()
			return d, true, nil
		}
		e.mu.Unlock()
		if testAbortHold != nil {
			testAbortHold(id.String())
		}
		d.mu.Lock()
		e.mu.Lock()
		still := e.active[id] == d
		e.mu.Unlock()
		if still {
			return d, false, nil
		}
		d.mu.Unlock()
		if err := ctx.Err(); err != nil {
			return nil, false, err
		}
	}
}

// Retry restarts a saga an operator wants moved: a failed saga retries the
// compensation (or, past its pivot, the step) that failed, with a fresh
// attempt budget; a saga waiting for a retry (of a step or of a
// compensation) is retried now; a parked saga is resumed if its definition
// is now registered. Any other state fails with ErrConflict. A saga whose
// driver is letting go is waited for a few seconds.
func (e *Engine) Retry(ctx context.Context, id string, opts ...RetryOption) error {
	var ro retryOptions
	for _, o := range opts {
		o(&ro)
	}
	var input json.RawMessage
	if ro.set {
		var err error
		if input, err = encodeInput(ro.input); err != nil {
			return errors.Wrapf(err, "engine: retry saga %s: input", id)
		}
	}
	u, s, err := e.lookup(id)
	if err != nil {
		return err
	}
	now := e.clock.Now()
	if s.Status != saga.StatusFailed && s.Parked == "" && !waiting(s.Status, s.WakeAt, s.inFlight(), now) {
		return errors.Wrapf(ErrConflict, "engine: retry saga %s: it is %s, not failed, parked or waiting for a retry", id, s.Status)
	}
	if e.definition(s.Definition, s.Fingerprint) == nil {
		return errors.WithHint(errors.Wrapf(ErrUnknownDefinition, "engine: retry saga %s: definition %q version %s",
			id, s.Definition, s.Fingerprint), "register the definition the saga started with, then retry")
	}
	if s.Parked != "" {
		if ro.set {
			return errors.Wrapf(ErrConflict, "engine: retry saga %s: it is parked, and resumes as it was: retry it without an input", id)
		}
		e.dispatchNow(u)
		return nil
	}
	err = e.claimAndDrive(ctx, u, true, func(d *driver) error {
		// Checked again under the claim: a Resolve may have come between.
		r, now := d.rec, e.clock.Now()
		if ro.set && (r.Status == saga.StatusFailed || r.Parked == "" && waiting(r.Status, r.WakeAt, inFlight(r), now)) {
			d.log(now, storage.LogEntry{Event: storage.EventInputReplaced, InputChange: &storage.InputChange{PrevInput: r.Input, Input: input},
				Note: "an operator retried the saga with a new input; the attempts that follow get it"})
			r.Input = input
		}
		switch {
		case r.Status == saga.StatusFailed:
			return d.retryFailed(now)
		case r.Parked == "" && waiting(r.Status, r.WakeAt, inFlight(r), now):
			r.WakeAt, r.UpdatedAt = now, now
			for i := range r.Steps {
				if !r.Steps[i].Pending { // a wait for an answer goes on
					r.Steps[i].Next = time.Time{}
				}
			}
			d.log(now, storage.LogEntry{Event: storage.EventRetryRequested, Status: r.Status,
				Note: "an operator asked to retry now instead of waiting"})
			return nil
		}
		return errors.Wrapf(ErrConflict, "it is %s, not failed or waiting for a retry", r.Status)
	})
	return errors.Wrapf(err, "engine: retry saga %s", id)
}

// Result is a participant's answer to an attempt that waited for it: Err
// nil for success (with Data, the step's output), else the failure, with
// the same meaning as a step function's error (saga.Permanent: failed for
// good; saga.OutcomeUnknown; anything else: retried under the step's
// policy).
type Result struct {
	Data json.RawMessage
	Err  error
}

// Complete delivers the answer to an attempt whose step function returned
// saga.ErrPending: attempt number attempt of the step's phase (the
// saga.Call's Step, Phase and Attempt). The answer is recorded, and the saga
// goes on, as if the function had returned it. It reports whether the
// answer was used: one for an attempt that no longer waits (answered
// already, timed out, or never pending) is recorded in the saga's log and
// ignored, so that a second delivery of one answer changes nothing. Any
// goroutine, or process that opens the engine's store, may call it.
//
// An answer that comes while the attempt's function has not yet returned
// (a participant that calls back before its 202 is read) waits up to a few
// seconds for it; past that, Complete fails with ErrConflict: deliver it
// again.
func (e *Engine) Complete(ctx context.Context, id, step string, phase saga.Phase, attempt int, res Result) (bool, error) {
	u, _, err := e.lookup(id)
	if err != nil {
		return false, err
	}
	if len(res.Data) > 0 && res.Err == nil && !json.Valid(res.Data) {
		return false, errors.Wrapf(ErrInvalidInput, "engine: complete saga %s step %q: data is not valid JSON", id, step)
	}
	applied := false
	err = e.claimAndDrive(ctx, u, true, func(d *driver) error {
		r, now := d.rec, e.clock.Now()
		i := slices.IndexFunc(r.Steps, func(s storage.Step) bool { return s.Name == step })
		if i < 0 {
			return errors.Wrapf(ErrInvalidInput, "it has no step %q", step)
		}
		s := &r.Steps[i]
		if s.InFlight && s.Phase == phase && s.Attempts == attempt && !r.Status.Finished() {
			// Its function has not returned, in a process that has not
			// let go, or it was in flight at a crash and runs again
			// before it waits: the answer must not be lost.
			return errors.WithHint(errors.Wrapf(ErrConflict, "attempt %d of step %q is still running", attempt, step),
				"deliver the answer again in a moment")
		}
		if r.Status.Finished() || !s.Pending || s.Phase != phase || s.Attempts != attempt {
			why := "no attempt of the step waits for an answer"
			if r.Status.Finished() {
				why = "the saga is " + string(r.Status)
			} else if s.Pending {
				why = fmt.Sprintf("attempt %d of its %s waits, not this one", s.Attempts, s.Phase)
			}
			entry := storage.LogEntry{Event: storage.EventAnswerIgnored, Step: step, Phase: phase, Attempt: attempt,
				Note: "an answer for attempt " + strconv.Itoa(attempt) + " of the " + string(phase) + " came and was ignored: " + why}
			if res.Err != nil {
				entry.Error = res.Err.Error()
			}
			r.UpdatedAt = now
			d.log(now, entry)
			return nil
		}
		timeout := d.stepTimeout(i)
		started := s.Next.Add(-timeout)
		s.Pending, s.Next = false, time.Time{}
		o := &outcome{step: i, phase: phase, attempt: attempt, data: res.Data, err: res.Err,
			cut: res.Err != nil && saga.IsOutcomeUnknown(res.Err), started: started, dur: now.Sub(started)}
		applied = true
		if r.Status != saga.StatusPaused {
			d.outs = append(d.outs[:0], o)
			d.advance(now)
			return nil
		}
		// Paused: the answer is recorded as the saga would have recorded
		// it, and the saga stays paused, in the status that follows.
		r.Status, r.UpdatedAt = cmp.Or(r.PausedFrom, saga.StatusRunning), now
		d.apply(o, now)
		if r.Status == saga.StatusRunning || r.Status == saga.StatusCompensating {
			r.PausedFrom, r.Status, r.WakeAt = r.Status, saga.StatusPaused, time.Time{}
			d.statuses = d.statuses[:0] // it never left its pause
		}
		return nil
	})
	return applied, errors.Wrapf(err, "engine: complete saga %s step %q", id, step)
}

// RetryOption configures Retry.
type RetryOption func(*retryOptions)

type retryOptions struct {
	input any
	set   bool
}

// RetryWithInput replaces the saga's input, for every attempt after the
// retry, with input (any value that encodes as JSON, as for Start). The
// saga's log records the old input and the new one. Use it when a saga
// failed because of its input and a person corrected it.
func RetryWithInput(input any) RetryOption {
	return func(o *retryOptions) { o.input, o.set = input, true }
}

// waiting reports whether an unfinished saga waits for a later attempt
// (a retry's backoff, an open breaker) with no attempt in flight.
func waiting(st saga.Status, wake time.Time, inFlight bool, now time.Time) bool {
	return (st == saga.StatusRunning || st == saga.StatusCompensating) && wake.After(now) && !inFlight
}

// inFlight reports whether a stored saga has an attempt in flight.
func inFlight(r *storage.Saga) bool {
	return slices.ContainsFunc(r.Steps, func(s storage.Step) bool { return s.InFlight })
}

// inFlight reports whether the saga has an attempt in flight.
func (s *Saga) inFlight() bool {
	return slices.ContainsFunc(s.Steps, func(s Step) bool { return s.InFlight })
}

// Recovered returns a channel that is closed once Run's recovery has
// resumed every unfinished saga (and new sagas start at once): a daemon is
// ready then.
func (e *Engine) Recovered() <-chan struct{} { return e.recovered }

// HasDefinition reports whether the definition name is registered in the
// given version (a saga's Fingerprint): whether its sagas can be driven.
func (e *Engine) HasDefinition(name, version string) bool { return e.definition(name, version) != nil }

// Resolve marks a saga as handled by hand: an operator fixed what its
// failed compensation could not (a failed saga), or undid by hand what a
// compensation waiting for a retry would have undone (a compensating saga
// waiting for its next attempt), and says how in note. The saga becomes
// resolved; note, by (who) and the time are kept in its log, and nothing is
// undone or deleted. Any other state fails with ErrConflict. Its definition
// need not be registered.
func (e *Engine) Resolve(ctx context.Context, id, note, by string) error {
	u, s, err := e.lookup(id)
	if err != nil {
		return err
	}
	resolvable := func(st saga.Status, ok bool) error {
		if st == saga.StatusFailed || ok {
			return nil
		}
		return errors.Wrapf(ErrConflict, "it is %s, not failed or compensating and waiting for a retry", st)
	}
	if err := resolvable(s.Status, s.Status == saga.StatusCompensating && waiting(s.Status, s.WakeAt, s.inFlight(), e.clock.Now())); err != nil {
		return errors.Wrapf(err, "engine: resolve saga %s", id)
	}
	if strings.TrimSpace(note) == "" {
		return errors.Wrapf(ErrInvalidInput, "engine: resolve saga %s: a note saying what was done is required", id)
	}
	err = e.claimAndDrive(ctx, u, false, func(d *driver) error {
		r, now := d.rec, e.clock.Now()
		if err := resolvable(r.Status, r.Status == saga.StatusCompensating && waiting(r.Status, r.WakeAt, inFlight(r), now)); err != nil {
			return err
		}
		if by == "" {
			by = "an operator"
		}
		r.UpdatedAt = now // retention counts from here, not from the failure
		d.log(now, storage.LogEntry{Event: storage.EventResolved, Status: saga.StatusResolved, Note: "resolved by " + by + ": " + note})
		d.finish(now, saga.StatusResolved)
		return nil
	})
	return errors.Wrapf(err, "engine: resolve saga %s", id)
}

// Run recovers every unfinished saga, then runs new and due sagas until ctx
// ends or Close is called. It then stops starting attempts, gives running
// ones Options.ShutdownGrace to finish, and returns; whatever is left is
// recovered by the next Run. Run may be called once.
func (e *Engine) Run(ctx context.Context) error {
	e.mu.Lock()
	if e.runCalled {
		e.mu.Unlock()
		return ErrRunning
	}
	if e.closed.Load() {
		e.mu.Unlock()
		return ErrClosed
	}
	e.runCalled = true
	e.running.Store(true)
	e.mu.Unlock()
	defer close(e.runDone)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-e.stopRun:
			cancel()
		case <-ctx.Done():
		}
	}()

	if err := e.recover(ctx); err != nil {
		e.shutdown()
		return err
	}
	close(e.recovered)
	var bg sync.WaitGroup
	if e.opts.Retention > 0 || e.opts.Outbox.Retention > 0 {
		bg.Add(1)
		go func() { defer bg.Done(); e.pruneLoop(ctx) }()
	}
	e.schedule(ctx)
	bg.Wait()
	e.shutdown()
	return nil
}

// shutdown stops new attempts, waits ShutdownGrace for running ones, then
// cancels them and waits for every driver to exit.
func (e *Engine) shutdown() {
	e.mu.Lock()
	e.running.Store(false)
	e.stopping = true
	e.mu.Unlock()
	done := make(chan struct{})
	go func() { e.drivers.Wait(); close(done) }()
	// The grace is a real wait for real work, not part of the sagas'
	// time: it runs on the wall clock even under a fake one.
	t := time.NewTimer(e.opts.ShutdownGrace)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		e.log.Warn("shutdown grace over: cancelling running attempts; recovery will re-run them")
		e.cancelAt()
		<-done
	}
}

// Close stops Run (see Run for how), waits for it to return, and closes the
// database. Calling Close alone is enough to shut an engine down; cancelling
// Run's context first is not needed.
func (e *Engine) Close() error {
	if !e.closed.CompareAndSwap(false, true) {
		return nil
	}
	close(e.stopRun)
	e.mu.Lock()
	ran := e.runCalled
	e.stopping = true
	e.mu.Unlock()
	if ran {
		<-e.runDone
	}
	e.cancelAt()
	e.drivers.Wait()
	e.bg.Wait()
	e.spans.endAll()
	return e.store.Close()
}

func (e *Engine) statusHook(id ulid.ULID, def string, from, to saga.Status) {
	if h := e.opts.Hooks.SagaStatusChanged; h != nil {
		h(StatusChange{SagaID: id.String(), Definition: def, From: from, To: to})
	}
}

// safeCall runs a step function, turning a panic into a permanent error so
// one bad step cannot take the engine down.
func safeCall(ctx context.Context, f saga.Func, c *saga.Call) (out json.RawMessage, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = saga.Permanent(errors.Mark(errors.Newf("step %q %s panicked: %v\n%s", c.Step, c.Phase, r, debug.Stack()), errPanic))
		}
	}()
	return f(ctx, c)
}
