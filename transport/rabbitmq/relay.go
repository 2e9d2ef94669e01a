package rabbitmq

import (
	"context"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/cockroachdb/errors"
	"github.com/oklog/ulid/v2"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sagad/sagad/clock"
	"github.com/sagad/sagad/storage"
)

// perSaga caps the events of one saga held in memory; more are read again
// once these are out.
const perSaga = 16

// closeGrace bounds closing a connection: the broker's answer to
// connection.close, and how long after DrainTimeout a connection that a
// stuck write holds is closed hard when Run must return.
const closeGrace = time.Second

// pollEvery is how often the relay reads the whole new index again: the
// safety net under wake-ups, and how a store it cannot be woken by is read.
const pollEvery = 5 * time.Second

// Relay publishes a sagad database's outbox to RabbitMQ. Create it with New
// and start it with Run. Its methods are safe for concurrent use.
type Relay struct {
	db  storage.OutboxStore
	cfg Config
	log *slog.Logger

	// bg counts the goroutines that fail the attempts of undelivered
	// commands; Run waits for them.
	bg                              sync.WaitGroup
	running                         atomic.Bool
	connected                       atomic.Bool
	cur                             atomic.Pointer[session] // Run's session, for Stats
	published, retried, notProduced atomic.Int64
	inFlight, loaded, parkedN       atomic.Int64
}

// New returns a relay for a store's outbox (engine.Store() gives an
// engine's). It checks cfg and does not connect: Run does.
func New(db storage.OutboxStore, cfg Config) (*Relay, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Relay{db: db, cfg: cfg, log: cfg.Logger.With("component", "relay")}, nil
}

// Stats is a snapshot of a relay's state and counters since New.
type Stats struct {
	Connected bool `json:"connected"`
	// Blocked says the broker blocks the relay's connection (a memory or
	// disk alarm): no message is published until it lifts, and events wait
	// in the outbox.
	Blocked bool `json:"blocked"`
	// InFlight counts messages published and not yet confirmed.
	InFlight int `json:"in_flight"`
	// Loaded counts events read from the outbox and not yet marked.
	Loaded int `json:"loaded"`
	// ParkedSagas counts sagas whose events wait behind a not_produced one.
	ParkedSagas int   `json:"parked_sagas"`
	Published   int64 `json:"published"`
	Retried     int64 `json:"retried"`
	NotProduced int64 `json:"not_produced"`
}

// Stats returns the relay's counters.
func (r *Relay) Stats() Stats {
	s := r.cur.Load()
	return Stats{Connected: r.connected.Load(), Blocked: s != nil && s.blocked.Load(), InFlight: int(r.inFlight.Load()), Loaded: int(r.loaded.Load()),
		ParkedSagas: int(r.parkedN.Load()), Published: r.published.Load(), Retried: r.retried.Load(),
		NotProduced: r.notProduced.Load()}
}

// ErrRunning: Run was called on a relay that is already running.
var ErrRunning = errors.New("rabbitmq: relay already running")

type itemState int

const (
	stQueued   itemState = iota // waiting to be published
	stInFlight                  // published, not confirmed
	stFailing                   // failed; its attempt is being recorded
	stBackoff                   // failed; waiting for retryAt
	stMarking                   // confirmed; its produced mark is being recorded
)

type item struct {
	ev       *storage.OutboxEvent
	state    itemState
	tag      uint64
	returned string // why the broker returned it, before its confirm
	retryAt  time.Time
}

// sagaQueue holds the loaded, unconfirmed events of one saga in id order.
// Only its head is ever in flight: that is what keeps a saga's events in
// order when one fails.
type sagaQueue struct {
	items []*item
	// last is the id of the saga's newest loaded event; overflow says that
	// newer ones were skipped because the queue was full.
	last     ulid.ULID
	overflow bool
}

type failMark struct {
	it    *item
	err   error
	final bool
}

type markBatch struct {
	produced []*item
	failed   []failMark
}

func (b *markBatch) empty() bool { return len(b.produced) == 0 && len(b.failed) == 0 }

type markResult struct {
	batch    markBatch
	attempts []int
	err      error
}

// state is what Run's goroutine owns.
type state struct {
	// ctx is run's: it ends when the relay stops.
	ctx    context.Context
	items  map[ulid.ULID]*item
	sagas  map[ulid.ULID]*sagaQueue
	parked map[ulid.ULID]bool
	ready  []*item
	// backoff holds the events waiting for their retry time.
	backoff []*item
	// cursor is the newest id read from the new index; rescan, when set,
	// is where the next read starts instead (ids before the cursor that
	// were skipped: parked or overflowing sagas).
	cursor   ulid.ULID
	rescan   *ulid.ULID
	needLoad bool
	requeues int64
	pending  markBatch
	marking  bool
	// failing summarises failures in the log: per route, and the broker's
	// connection.
	failing failLog
}

func (s *state) rescanFrom(id ulid.ULID) {
	if s.rescan == nil || id.Compare(*s.rescan) < 0 {
		s.rescan = &id
	}
	s.needLoad = true
}

// session is one connection, its confirm-mode channel for publishing and a
// channel for declaring exchanges.
type session struct {
	conn     *amqp.Connection
	ch       *amqp.Channel
	confirms chan amqp.Confirmation
	returns  chan amqp.Return
	closed   chan *amqp.Error
	inflight map[uint64]*item
	// decl declares exchanges, so that one the broker refuses closes this
	// channel and not ch; nil until needed again after a refusal.
	decl     *amqp.Channel
	declared map[string]bool
	acked    bool // got at least one ack: the broker is healthy
	// blocked is set while the broker blocks the connection; unblocked
	// wakes Run when it lifts. Both are written by watchBlocked.
	blocked   atomic.Bool
	unblocked chan struct{}
}

// connGuard holds the network connection of Run's current session, so that
// Run returns when its context ends even while its goroutine is stuck in a
// write to a broker that stopped reading (a memory or disk alarm blocks a
// publishing connection; a publish then blocks once the socket buffers are
// full). DrainTimeout plus closeGrace after the context ends, the connection
// is closed hard: the write fails, and what was in flight stays new.
type connGuard struct {
	mu      sync.Mutex
	conn    net.Conn
	stopped bool
	timer   *time.Timer
}

// dial is an amqp.Config.Dial that keeps the connection it opens.
func (g *connGuard) dial(timeout time.Duration) func(network, addr string) (net.Conn, error) {
	dial := amqp.DefaultDial(timeout)
	return func(network, addr string) (net.Conn, error) {
		c, err := dial(network, addr)
		if err != nil {
			return nil, err
		}
		g.mu.Lock()
		defer g.mu.Unlock()
		if g.stopped {
			_ = c.Close()
			return nil, errors.New("rabbitmq: relay is stopping")
		}
		g.conn = c
		return c, nil
	}
}

// cutAfter closes the connection, and refuses new ones, after d.
func (g *connGuard) cutAfter(d time.Duration) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.timer == nil && !g.stopped {
		g.timer = time.AfterFunc(d, g.cut)
	}
}

func (g *connGuard) cut() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stopped {
		return
	}
	g.stopped = true
	if g.conn != nil {
		_ = g.conn.Close()
	}
}

// release is called when Run returns: nothing is cut after that.
func (g *connGuard) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.stopped = true
	if g.timer != nil {
		g.timer.Stop()
	}
	g.conn = nil
}

// Run publishes events until ctx ends, reconnecting whenever the broker goes
// away. When ctx ends it stops publishing, waits up to DrainTimeout for the
// confirms of messages in flight, records what was confirmed, and returns
// nil. It returns within about DrainTimeout and a second even if the broker
// stopped reading the connection (a memory or disk alarm): the connection is
// then closed hard, and what was not confirmed stays new. It returns an error
// only if the database fails.
//
// Where several processes share the store, one relay publishes at a time:
// Run waits until its process leads the outbox (storage.OutboxStore's
// OutboxLead), publishes while it leads, and waits again when the lead is
// lost.
func (r *Relay) Run(ctx context.Context) error {
	if !r.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer r.running.Store(false)
	defer r.bg.Wait()
	for {
		lctx, cancel := context.WithCancel(ctx) // ends the lead when run returns
		lead, err := r.db.OutboxLead(lctx)
		if err != nil {
			cancel()
			if ctx.Err() != nil {
				return nil
			}
			return errors.Wrap(err, "rabbitmq: lead the outbox")
		}
		err = r.run(lead)
		cancel()
		if err != nil || ctx.Err() != nil {
			return err
		}
		r.log.Warn("relay lost the outbox's lead; it publishes again once it leads")
	}
}

// run publishes events until ctx ends (see Run).
func (r *Relay) run(ctx context.Context) error {
	st := &state{ctx: ctx, items: make(map[ulid.ULID]*item), sagas: make(map[ulid.ULID]*sagaQueue), parked: make(map[ulid.ULID]bool)}
	st.requeues = r.db.OutboxRequeues()
	if err := r.loadParked(st); err != nil {
		return err
	}
	st.needLoad = true

	marks := make(chan markBatch, 1)
	done := make(chan markResult, 1)
	markerDone := make(chan struct{})
	go r.marker(marks, done, markerDone)
	defer func() { close(marks); <-markerDone }()

	reconnect := r.cfg.reconnectBackOff()

	guard := &connGuard{}
	stopGuard := context.AfterFunc(ctx, func() { guard.cutAfter(r.cfg.DrainTimeout + closeGrace) })
	defer func() {
		stopGuard()
		guard.release()
	}()
	var s *session
	defer func() {
		if s != nil {
			// A broker that stopped answering must not hold up the return.
			_ = s.conn.CloseDeadline(time.Now().Add(closeGrace))
		}
		r.cur.Store(nil)
		r.connected.Store(false)
		r.inFlight.Store(0)
	}()
	wake := r.db.OutboxWake()
	poll := r.cfg.Clock.NewTimer(pollEvery)
	defer poll.Stop()
	timer := r.cfg.Clock.NewTimer(time.Hour)
	defer timer.Stop()
	var reconnectAt, drainBy time.Time
	draining := false
	var fatal error

	for {
		now := r.cfg.Clock.Now()
		if !draining && ctx.Err() != nil {
			// Seen here, not in the select, when a publish that the
			// guard cut was what held the goroutine.
			draining, drainBy = true, now.Add(r.cfg.DrainTimeout)
		}
		if s == nil && !draining && !now.Before(reconnectAt) {
			var err error
			if s, err = r.connect(guard); err != nil {
				s = nil
				reconnectAt = now.Add(reconnect.NextBackOff())
				if n, ok := st.failing.fail(brokerKey, now, err); ok && n.first {
					r.log.Warn("relay cannot reach the broker; events wait in the outbox", "err", err, "retry_in", clock.Until(r.cfg.Clock, reconnectAt).Round(time.Millisecond))
				} else if ok {
					r.log.Warn("relay still cannot reach the broker; events wait in the outbox",
						"attempts", n.count, "failing_for", n.since.Round(time.Second), "last_err", n.last)
				}
				r.hookConn(false, err)
			} else {
				r.cur.Store(s)
				r.connected.Store(true)
				if n, ok := st.failing.ok(brokerKey, now); ok {
					r.log.Info("relay connected", "exchange", r.cfg.Exchange, "failed_attempts", n.count, "after", n.since.Round(time.Millisecond))
				} else {
					r.log.Info("relay connected", "exchange", r.cfg.Exchange)
				}
				r.hookConn(true, nil)
				r.requeueInFlight(st, nil)
			}
		}
		if s != nil && !draining {
			if st.needLoad && len(st.items) < r.maxLoaded() {
				if err := r.load(st); err != nil {
					fatal = err
					draining = true
					drainBy = now
				}
			}
			if err := r.publish(st, s); err != nil {
				r.lost(st, s, err, ctx.Err() != nil)
				s = nil
				reconnectAt = now.Add(reconnect.NextBackOff())
			}
		}
		if !st.marking && !st.pending.empty() {
			marks <- st.pending
			st.pending, st.marking = markBatch{}, true
		}
		if draining && !st.marking && st.pending.empty() && (s == nil || len(s.inflight) == 0 || !now.Before(drainBy)) {
			if s != nil && len(s.inflight) > 0 {
				r.log.Warn("relay stopped with messages unconfirmed; they stay new and are published again", "count", len(s.inflight))
			}
			return fatal
		}
		r.inFlight.Store(int64(inflightLen(s)))
		r.loaded.Store(int64(len(st.items)))

		next := r.nextTimer(st, now, s == nil && !draining, reconnectAt, draining, drainBy)
		timer.Reset(max(next.Sub(now), 0))
		var confirms chan amqp.Confirmation
		var returns chan amqp.Return
		var closed chan *amqp.Error
		var unblocked chan struct{}
		if s != nil {
			confirms, returns, closed, unblocked = s.confirms, s.returns, s.closed, s.unblocked
		}
		ctxDone := ctx.Done()
		if draining {
			ctxDone = nil
		}
		select {
		case <-ctxDone:
			draining, drainBy = true, r.cfg.Clock.Now().Add(r.cfg.DrainTimeout)
		case c, ok := <-confirms:
			if !ok {
				r.lost(st, s, errors.New("rabbitmq: channel closed"), draining)
				s = nil
				reconnectAt = r.cfg.Clock.Now().Add(reconnect.NextBackOff())
				continue
			}
			if !r.confirmAll(st, s, c) {
				r.lost(st, s, errors.New("rabbitmq: channel closed"), draining)
				s = nil
				reconnectAt = r.cfg.Clock.Now().Add(reconnect.NextBackOff())
				continue
			}
			if s.acked {
				reconnect.Reset()
			}
		case ret := <-returns:
			r.returned(st, ret)
		case <-unblocked:
			// The loop's publish goes on where it paused.
		case err := <-closed:
			var cause error = errors.New("rabbitmq: channel closed")
			if err != nil {
				cause = err
			}
			r.lost(st, s, cause, draining)
			s = nil
			reconnectAt = r.cfg.Clock.Now().Add(reconnect.NextBackOff())
		case <-wake:
			wake = r.db.OutboxWake()
			st.needLoad = true
			r.checkRequeues(st)
		case <-poll.C():
			poll.Reset(pollEvery)
			// A safety net: read the whole new index again now and then,
			// so that nothing skipped can wait longer than this.
			st.rescanFrom(ulid.ULID{})
			r.checkRequeues(st)
		case res := <-done:
			st.marking = false
			if err := r.marked(st, res); err != nil {
				fatal = err
				draining = true
				drainBy = r.cfg.Clock.Now()
			}
		case <-timer.C():
			r.wakeRetries(st, r.cfg.Clock.Now())
		}
	}
}

func inflightLen(s *session) int {
	if s == nil {
		return 0
	}
	return len(s.inflight)
}

func (r *Relay) maxLoaded() int { return max(4*r.cfg.Window, 1024) }

func (r *Relay) hookConn(up bool, err error) {
	if h := r.cfg.Hooks.Connection; h != nil {
		h(up, err)
	}
}

// nextTimer returns when the loop must wake up on its own.
func (r *Relay) nextTimer(st *state, now time.Time, reconnecting bool, reconnectAt time.Time, draining bool, drainBy time.Time) time.Time {
	next := now.Add(time.Hour)
	if reconnecting {
		next = reconnectAt
	}
	if draining && drainBy.Before(next) {
		next = drainBy
	}
	for _, it := range st.backoff {
		if it.retryAt.Before(next) {
			next = it.retryAt
		}
	}
	return next
}

// connect dials the broker, through guard, and opens a confirm-mode
// channel.
func (r *Relay) connect(guard *connGuard) (*session, error) {
	conn, err := r.cfg.dial(guard.dial(dialTimeout))
	if err != nil {
		return nil, err
	}
	s := &session{conn: conn, inflight: make(map[uint64]*item), declared: make(map[string]bool),
		unblocked: make(chan struct{}, 1)}
	// The watcher ends when the connection closes, which closes blocks.
	go r.watchBlocked(s, conn.NotifyBlocked(make(chan amqp.Blocking, 4)))
	fail := func(err error, what string) (*session, error) {
		_ = conn.CloseDeadline(time.Now().Add(closeGrace))
		return nil, errors.Wrapf(err, "rabbitmq: %s", what)
	}
	ch, err := conn.Channel()
	if err != nil {
		return fail(err, "open channel")
	}
	if err := ch.Confirm(false); err != nil {
		return fail(err, "confirm mode")
	}
	s.ch = ch
	s.confirms = ch.NotifyPublish(make(chan amqp.Confirmation, r.cfg.Window+1))
	s.returns = ch.NotifyReturn(make(chan amqp.Return, r.cfg.Window+1))
	s.closed = ch.NotifyClose(make(chan *amqp.Error, 1))
	if err := r.declare(s, r.cfg.Exchange, false); err != nil {
		// The default exchange: every event that names none needs it, so
		// the relay stays offline, retrying, until it can be declared.
		return fail(err, "declare exchange")
	}
	return s, nil
}

// watchBlocked follows the broker's connection.blocked and unblocked
// notifications on a goroutine of its own: Run's may be the one stuck
// writing to the blocked connection.
func (r *Relay) watchBlocked(s *session, blocks <-chan amqp.Blocking) {
	for b := range blocks {
		s.blocked.Store(b.Active)
		if b.Active {
			r.log.Warn("the broker blocks the relay's connection (memory or disk alarm); publishing pauses until it lifts, events wait in the outbox", "reason", b.Reason)
			continue
		}
		r.log.Info("the broker unblocked the relay's connection; publishing resumes")
		select {
		case s.unblocked <- struct{}{}:
		default:
		}
	}
}

// declare makes sure an exchange exists before the first publish to it in
// this session. It declares on a channel of its own: an exchange the broker
// refuses (it exists with another kind, or is missing under NoDeclare)
// closes that channel, reopened for the next declaration, and not the
// publishing one with the other sagas' messages in flight. Such a refusal
// is reported as refused(err).
// A command's exchange is the participant's: it is only checked
// (passively declared), and the default exchange ("") not at all.
//
// Before the first command it makes sure the reply queue exists (see
// replyQueue), so that no reply is dropped for want of it.
func (r *Relay) declare(s *session, name string, command bool) error {
	if command && !s.declared[replyQueueKey] {
		if err := r.replyQueue(s); err != nil {
			return err
		}
	}
	if s.declared[name] || command && name == "" {
		return nil
	}
	if err := r.declareChannel(s); err != nil {
		return err
	}
	var err error
	if r.cfg.NoDeclare || command {
		err = s.decl.ExchangeDeclarePassive(name, r.cfg.ExchangeKind, true, false, false, false, nil)
	} else {
		err = s.decl.ExchangeDeclare(name, r.cfg.ExchangeKind, true, false, false, false, nil)
	}
	if err != nil {
		// Either the broker closed the channel, or the connection is gone.
		s.decl = nil
		return errors.Wrapf(err, "exchange %q", name)
	}
	s.declared[name] = true
	return nil
}

// replyQueue checks that the reply queue exists, as it is (with whatever
// arguments it was declared: a dead-letter exchange, a quorum queue), and
// declares it durable if it does not, unless Config.NoDeclare. A queue
// that is missing and cannot be declared does not stop commands: it is
// logged, once a session, and replies are dropped by the broker until it
// exists (their attempts time out and are retried).
func (r *Relay) replyQueue(s *session) error {
	err := declareQueue(s.conn, &s.decl, r.cfg.ReplyQueue, r.cfg.NoDeclare)
	switch {
	case err == nil:
	case refused(err):
		r.log.Warn("relay: the reply queue is missing and cannot be declared; replies to commands are dropped until it exists",
			"queue", r.cfg.ReplyQueue, "err", err)
	default:
		return err
	}
	s.declared[replyQueueKey] = true
	return nil
}

// declareQueue checks that queue exists (a passive declaration, which
// accepts it with any arguments), and declares it durable if it does not
// and declare allows. *ch is the channel to declare on, opened on conn
// when nil, and set to nil when the broker closed it.
func declareQueue(conn *amqp.Connection, ch **amqp.Channel, queue string, noDeclare bool) error {
	open := func() error {
		if *ch != nil {
			return nil
		}
		c, err := conn.Channel()
		if err != nil {
			return errors.Wrap(err, "rabbitmq: open a channel to declare queues")
		}
		*ch = c
		return nil
	}
	if err := open(); err != nil {
		return err
	}
	_, err := (*ch).QueueDeclarePassive(queue, true, false, false, false, nil)
	if err == nil {
		return nil
	}
	*ch = nil // a refusal closes the channel
	var ae *amqp.Error
	if noDeclare || !errors.As(err, &ae) || ae.Code != amqp.NotFound {
		return errors.Wrapf(err, "queue %q", queue)
	}
	if err := open(); err != nil {
		return err
	}
	if _, err := (*ch).QueueDeclare(queue, true, false, false, false, nil); err != nil {
		*ch = nil
		return errors.Wrapf(err, "declare queue %q", queue)
	}
	return nil
}

// replyQueueKey marks the reply queue in session.declared.
const replyQueueKey = "\x00reply queue"

// declareChannel opens the session's channel for declarations, if it has
// none (a refused declaration closes it).
func (r *Relay) declareChannel(s *session) error {
	if s.decl != nil {
		return nil
	}
	ch, err := s.conn.Channel()
	if err != nil {
		return errors.Wrap(err, "rabbitmq: open a channel to declare exchanges")
	}
	s.decl = ch
	return nil
}

// refused reports whether err is the broker refusing one request with a
// channel-level exception (PRECONDITION_FAILED, NOT_FOUND, ACCESS_REFUSED),
// as opposed to the connection failing.
func refused(err error) bool {
	var ae *amqp.Error
	return errors.As(err, &ae) && ae.Server && ae.Recover
}

// lost handles the end of a session: what was in flight is unconfirmed and
// will be published again, in order, on the next connection (or the next
// Run, when stopping).
func (r *Relay) lost(st *state, s *session, cause error, stopping bool) {
	// Confirms and returns the broker sent before the end still count.
	for {
		select {
		case ret, ok := <-s.returns:
			if ok {
				r.returned(st, ret)
				continue
			}
		default:
		}
		break
	}
	for drained := false; !drained; {
		select {
		case c, ok := <-s.confirms:
			if !ok {
				drained = true
				break
			}
			r.confirm(st, s, c)
		default:
			drained = true
		}
	}
	unconfirmed := len(s.inflight)
	r.requeueInFlight(st, s)
	_ = s.conn.CloseDeadline(time.Now().Add(closeGrace))
	r.cur.Store(nil)
	r.connected.Store(false)
	r.inFlight.Store(0)
	if stopping {
		r.log.Warn("relay stopping: its connection ended before the broker confirmed everything; unconfirmed messages stay new and are published again",
			"count", unconfirmed, "err", cause)
	} else {
		// The first failure of a run: the reconnection attempts that
		// follow are summarised.
		st.failing.fail(brokerKey, r.cfg.Clock.Now(), cause)
		r.log.Warn("relay lost the broker; reconnecting, events wait in the outbox", "err", cause)
	}
	r.hookConn(false, cause)
}

// requeueInFlight puts unconfirmed events back in line and rebuilds the
// ready list in outbox order.
func (r *Relay) requeueInFlight(st *state, s *session) {
	if s != nil {
		for _, it := range s.inflight {
			it.state, it.tag, it.returned = stQueued, 0, ""
		}
		clear(s.inflight)
	}
	st.ready = st.ready[:0]
	for _, q := range st.sagas {
		if h := q.items[0]; h.state == stQueued {
			st.ready = append(st.ready, h)
		}
	}
	slices.SortFunc(st.ready, func(a, b *item) int { return a.ev.ID.Compare(b.ev.ID) })
}

// loadParked finds the sagas that have a not_produced event.
func (r *Relay) loadParked(st *state) error {
	clear(st.parked)
	sagas, err := r.db.OutboxNotProducedSagas(context.Background())
	for _, sid := range sagas {
		st.parked[sid] = true
	}
	r.parkedN.Store(int64(len(st.parked)))
	return errors.Wrap(err, "rabbitmq: read parked sagas")
}

// checkRequeues looks for re-queued or discarded events: their sagas may
// go on.
func (r *Relay) checkRequeues(st *state) {
	n := r.db.OutboxRequeues()
	if n == st.requeues {
		return
	}
	st.requeues = n
	if err := r.loadParked(st); err != nil {
		r.log.Error("relay: read parked sagas", "err", err)
		return
	}
	st.rescanFrom(ulid.ULID{})
}

// load reads new events into memory, from the cursor (or a rescan point).
func (r *Relay) load(st *state) error {
	limit := r.maxLoaded() - len(st.items)
	start, rescanning := st.cursor, false
	if st.rescan != nil {
		start, rescanning = *st.rescan, true
	}
	n := 0
	exhausted := true
	var last ulid.ULID
	err := r.db.OutboxScanNew(context.Background(), start, func(id, sid ulid.ULID, event func() (*storage.OutboxEvent, error)) bool {
		if n >= limit {
			exhausted = false
			return false
		}
		last = id
		if id.Compare(st.cursor) > 0 {
			st.cursor = id
		}
		if _, known := st.items[id]; known || st.parked[sid] {
			return true
		}
		q := st.sagas[sid]
		if q != nil && (q.overflow || len(q.items) >= perSaga) {
			// Once one event of the saga was skipped, so are all later
			// ones until the rescan that reads them in order.
			q.overflow = true
			return true
		}
		ev, err := event()
		if err != nil {
			r.log.Error("relay: unreadable outbox event; its saga's events are held until a restart", "event", id.String(), "saga", sid.String(), "err", err)
			st.parked[sid] = true
			return true
		}
		it := &item{ev: ev}
		st.items[id] = it
		if q == nil {
			q = &sagaQueue{}
			st.sagas[sid] = q
		}
		q.items = append(q.items, it)
		q.last = id
		if len(q.items) == 1 {
			st.ready = append(st.ready, it)
		}
		n++
		return true
	})
	if err != nil {
		return errors.Wrap(err, "rabbitmq: read outbox")
	}
	switch {
	case !rescanning:
		st.needLoad = !exhausted
	case exhausted || last.Compare(st.cursor) >= 0:
		st.rescan, st.needLoad = nil, !exhausted
	default:
		st.rescan = &last
	}
	return nil
}

// publish sends ready events while the window allows and the broker does
// not block the connection. An error means the session is lost.
func (r *Relay) publish(st *state, s *session) error {
	for len(st.ready) > 0 && len(s.inflight) < r.cfg.Window && !s.blocked.Load() {
		it := st.ready[0]
		st.ready = st.ready[1:]
		if it.state != stQueued || st.items[it.ev.ID] != it {
			continue
		}
		ev := it.ev
		corr, command := ev.Headers[storage.HeaderCorrelationID]
		exchange := ev.Exchange
		if exchange == "" && !command {
			exchange = r.cfg.Exchange
		}
		if err := r.declare(s, exchange, command); err != nil {
			switch {
			case refused(err) && command:
				// The participant's exchange does not exist: the
				// command's attempt failed.
				r.undeliverable(st, it, err.Error())
				continue
			case refused(err):
				// The event names an exchange that cannot be declared:
				// that is its failed attempt; the others go on.
				r.fail(st, it, err)
				continue
			}
			st.ready = append([]*item{it}, st.ready...)
			return err
		}
		headers := make(amqp.Table, len(ev.Headers)+3)
		for k, v := range ev.Headers {
			if k != storage.HeaderCorrelationID { // a command's is a property
				headers[k] = v
			}
		}
		msg := amqp.Publishing{
			Headers:      headers,
			ContentType:  "application/json",
			DeliveryMode: amqp.Persistent,
			MessageId:    ev.ID.String(),
			Timestamp:    ev.CreatedAt,
			Type:         ev.Name,
			AppId:        "sagad",
			Body:         ev.Payload,
		}
		if command {
			// The engine wrote the attempt's identity as headers (X-Saga-Id
			// and the rest); the correlation id is a property.
			msg.CorrelationId, msg.ReplyTo = corr, r.cfg.ReplyQueue
		} else {
			headers["x-saga-id"] = ev.SagaID.String()
			headers["x-saga-definition"] = ev.Definition
			if ev.Step != "" {
				headers["x-saga-step"] = ev.Step
			}
		}
		tag := s.ch.GetNextPublishSeqNo()
		err := s.ch.Publish(exchange, ev.RoutingKey, command || !r.cfg.AllowUnroutable, false, msg)
		if err != nil {
			st.ready = append([]*item{it}, st.ready...)
			return errors.Wrap(err, "rabbitmq: publish")
		}
		it.state, it.tag = stInFlight, tag
		s.inflight[tag] = it
		// Kept current here: a publish may block for long (an alarm).
		r.inFlight.Store(int64(len(s.inflight)))
	}
	return nil
}

// confirmAll handles c and every confirm already delivered after it, so
// the loop's bookkeeping runs once per burst. It returns false if the
// channel was closed.
func (r *Relay) confirmAll(st *state, s *session, c amqp.Confirmation) bool {
	r.drainReturns(st, s)
	r.confirm(st, s, c)
	for range r.cfg.Window {
		select {
		case c, ok := <-s.confirms:
			if !ok {
				return false
			}
			r.drainReturns(st, s)
			r.confirm(st, s, c)
		default:
			return true
		}
	}
	return true
}

// drainReturns takes every return already delivered: RabbitMQ sends a
// message's return before its ack, and amqp091-go hands them over in that
// order, so a confirm is only judged once the returns before it are read.
func (r *Relay) drainReturns(st *state, s *session) {
	for {
		select {
		case ret := <-s.returns:
			r.returned(st, ret)
		default:
			return
		}
	}
}

func (r *Relay) returned(st *state, ret amqp.Return) {
	id, err := ulid.ParseStrict(ret.MessageId)
	if err != nil {
		return
	}
	if it := st.items[id]; it != nil && it.state == stInFlight {
		it.returned = "returned by the broker: " + ret.ReplyText + " (exchange " + ret.Exchange + ", routing key " + ret.RoutingKey + ")"
	}
}

// confirm handles the broker's ack or nack of one message.
func (r *Relay) confirm(st *state, s *session, c amqp.Confirmation) {
	it := s.inflight[c.DeliveryTag]
	if it == nil {
		return
	}
	delete(s.inflight, c.DeliveryTag)
	switch {
	case !c.Ack:
		r.fail(st, it, errors.New("nacked by the broker"))
	case it.returned != "" && isCommand(it.ev):
		r.undeliverable(st, it, it.returned)
	case it.returned != "":
		r.fail(st, it, errors.New(it.returned))
	default:
		s.acked = true
		it.state = stMarking
		st.pending.produced = append(st.pending.produced, it)
		// The broker has it: the saga's next event may go now, before the
		// produced mark is durable. A crash in between publishes both
		// again, in order.
		r.advance(st, it)
	}
}

// advance removes a saga's confirmed head and readies the next event.
func (r *Relay) advance(st *state, it *item) {
	sid := it.ev.SagaID
	q := st.sagas[sid]
	if q == nil || len(q.items) == 0 || q.items[0] != it {
		return
	}
	q.items[0] = nil
	q.items = q.items[1:]
	if len(q.items) > 0 {
		if h := q.items[0]; h.state == stQueued {
			st.ready = append(st.ready, h)
		}
		return
	}
	delete(st.sagas, sid)
	if q.overflow {
		st.rescanFrom(q.last)
	}
}

// fail records a failed publication; the event's saga waits until the
// attempt is recorded.
func (r *Relay) fail(st *state, it *item, err error) {
	it.state, it.tag, it.returned = stFailing, 0, ""
	st.pending.failed = append(st.pending.failed, failMark{it: it, err: err, final: it.ev.Attempts+1 >= r.cfg.MaxAttempts})
}

// marker records produced marks and failed attempts, one transaction per
// batch, off the relay's goroutine.
func (r *Relay) marker(in <-chan markBatch, out chan<- markResult, done chan<- struct{}) {
	defer close(done)
	for b := range in {
		res := markResult{batch: b}
		ids := make([]ulid.ULID, len(b.produced))
		for i, it := range b.produced {
			ids[i] = it.ev.ID
		}
		failed := make([]storage.OutboxFailure, len(b.failed))
		for i, f := range b.failed {
			failed[i] = storage.OutboxFailure{ID: f.it.ev.ID, Error: f.err.Error(), Final: f.final}
		}
		res.attempts, res.err = r.db.OutboxMark(context.Background(), ids, failed, r.cfg.Clock.Now())
		out <- res
	}
}

// marked applies a recorded batch.
func (r *Relay) marked(st *state, res markResult) error {
	if res.err != nil {
		if errors.Is(res.err, storage.ErrClosed) {
			return errors.Wrap(res.err, "rabbitmq: record outbox marks")
		}
		r.log.Error("relay: recording outbox marks failed; trying again", "err", res.err)
		st.pending.produced = append(res.batch.produced, st.pending.produced...)
		st.pending.failed = append(res.batch.failed, st.pending.failed...)
		time.Sleep(100 * time.Millisecond) // a failing disk: do not spin (an in-process pause: the wall clock's)
		return nil
	}
	now := r.cfg.Clock.Now()
	for _, it := range res.batch.produced {
		delete(st.items, it.ev.ID)
		if len(st.failing.keys) > 0 {
			if n, ok := st.failing.ok(r.route(it.ev), now); ok {
				r.log.Info("outbox route recovered", "exchange", r.exchange(it.ev), "routing_key", it.ev.RoutingKey,
					"failed_attempts", n.count, "after", n.since.Round(time.Millisecond))
			}
		}
	}
	if n := len(res.batch.produced); n > 0 {
		r.published.Add(int64(n))
		if h := r.cfg.Hooks.Published; h != nil {
			h(n)
		}
		st.needLoad = true
	}
	parked := false
	defer func() {
		if parked {
			// An operator may have re-queued or discarded the event after
			// the marker committed it and before this ran: the stored
			// not_produced index is the truth.
			if err := r.loadParked(st); err != nil {
				r.log.Error("relay: read parked sagas", "err", err)
			}
			st.rescanFrom(ulid.ULID{})
		}
	}()
	for i, f := range res.batch.failed {
		it, n := f.it, res.attempts[i]
		if n < 0 { // discarded by an operator while failing
			r.drop(st, it)
			continue
		}
		it.ev.Attempts, it.ev.LastError = n, f.err.Error()
		note, logIt := st.failing.fail(r.route(it.ev), now, f.err)
		if f.final {
			// Logged for itself: it needs an operator.
			r.notProduced.Add(1)
			r.log.Warn("outbox event not produced after its attempts; its saga's later events wait until it is re-queued or discarded",
				"event", it.ev.ID.String(), "saga", it.ev.SagaID.String(), "name", it.ev.Name, "attempts", n, "err", f.err)
			r.park(st, it.ev.SagaID)
			parked = true
			if h := r.cfg.Hooks.NotProduced; h != nil {
				h(it.ev, f.err)
			}
			continue
		}
		r.retried.Add(1)
		it.state, it.retryAt = stBackoff, now.Add(r.retryDelay(n))
		st.backoff = append(st.backoff, it)
		switch {
		case logIt && note.first:
			r.log.Warn("outbox route failing; its events are retried with backoff", "exchange", r.exchange(it.ev), "routing_key", it.ev.RoutingKey,
				"event", it.ev.ID.String(), "attempt", n, "err", f.err, "retry_in", clock.Until(r.cfg.Clock, it.retryAt).Round(time.Millisecond))
		case logIt:
			r.log.Warn("outbox route still failing; its events are retried with backoff", "exchange", r.exchange(it.ev), "routing_key", it.ev.RoutingKey,
				"failures", note.count, "failing_for", note.since.Round(time.Second), "last_err", note.last)
		}
		if h := r.cfg.Hooks.Retried; h != nil {
			h(it.ev, f.err)
		}
	}
	return nil
}

// brokerKey is the broker's connection in state.failing.
const brokerKey = "\x00broker"

// exchange is the exchange an event is published to.
func (r *Relay) exchange(ev *storage.OutboxEvent) string {
	if ev.Exchange != "" || isCommand(ev) {
		return ev.Exchange
	}
	return r.cfg.Exchange
}

// route names an event's route in state.failing.
func (r *Relay) route(ev *storage.OutboxEvent) string { return r.exchange(ev) + "\x00" + ev.RoutingKey }

// drop forgets an event that is gone from the outbox; its saga goes on.
func (r *Relay) drop(st *state, it *item) {
	it.state = stMarking
	r.advance(st, it)
	delete(st.items, it.ev.ID)
}

// park forgets a saga's loaded events: they wait in the outbox until its
// not_produced event is re-queued or discarded.
func (r *Relay) park(st *state, sid ulid.ULID) {
	st.parked[sid] = true
	r.parkedN.Store(int64(len(st.parked)))
	if q := st.sagas[sid]; q != nil {
		for _, it := range q.items {
			delete(st.items, it.ev.ID)
		}
		delete(st.sagas, sid)
	}
}

// wakeRetries readies events whose backoff has passed.
func (r *Relay) wakeRetries(st *state, now time.Time) {
	st.backoff = slices.DeleteFunc(st.backoff, func(it *item) bool {
		if st.items[it.ev.ID] != it || it.state != stBackoff {
			return true // parked or gone meanwhile
		}
		if it.retryAt.After(now) {
			return false
		}
		it.state = stQueued
		st.ready = append(st.ready, it)
		return true
	})
}

// retryDelay is the backoff after the n-th failed publication.
func (r *Relay) retryDelay(n int) time.Duration {
	b := &backoff.ExponentialBackOff{InitialInterval: r.cfg.RetryInitial, RandomizationFactor: 0.5,
		Multiplier: 2, MaxInterval: r.cfg.RetryMax, Clock: backoff.SystemClock}
	b.Reset()
	d := b.NextBackOff()
	for i := 1; i < n; i++ {
		d = b.NextBackOff()
	}
	return d
}
