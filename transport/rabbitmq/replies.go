package rabbitmq

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"math"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/errors"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
)

// Completer takes a participant's answer to an attempt that waits for it
// (engine.Engine.Complete): true when the answer was used, false when it
// was recorded and ignored (late, or a second delivery). *engine.Engine is
// one.
type Completer interface {
	Complete(ctx context.Context, id, step string, phase saga.Phase, attempt int, res engine.Result) (bool, error)
}

// maxReplyExcerpt caps how much of a failure reply's body an error quotes.
const maxReplyExcerpt = 200

// isCommand reports whether an outbox event is a command to a step's
// participant (saga.Command), not an integration event.
func isCommand(ev *storage.OutboxEvent) bool {
	_, ok := ev.Headers[storage.HeaderCorrelationID]
	return ok
}

// undeliverable handles a command the broker could not deliver (returned,
// or its exchange is missing): publishing it again would not help, since
// a retry of the attempt sends a new one, so it is done with (marked
// produced), and its attempt fails now rather than at its timeout.
func (r *Relay) undeliverable(st *state, it *item, why string) {
	it.state, it.tag, it.returned = stMarking, 0, ""
	st.pending.produced = append(st.pending.produced, it)
	r.advance(st, it)
	ev := it.ev
	corr := ev.Headers[storage.HeaderCorrelationID]
	r.log.Warn("command not delivered; its attempt fails", "command", corr, "exchange", ev.Exchange, "routing_key", ev.RoutingKey, "reason", why)
	c := r.cfg.Completer
	if c == nil {
		return
	}
	id, step, phase, attempt, err := engine.ParseCorrelationID(corr)
	if err != nil {
		r.log.Error("relay: command with a malformed correlation id", "command", corr, "err", err)
		return
	}
	stop := st.ctx
	r.bg.Add(1)
	go func() {
		defer r.bg.Done()
		res := engine.Result{Err: errors.Newf("the broker did not deliver the command: %s", why)}
		for try := 1; ; try++ {
			// Each try waits for a busy saga a few seconds at most.
			_, err := c.Complete(stop, id, step, phase, attempt, res)
			if err == nil {
				return
			}
			if !errors.Is(err, engine.ErrConflict) || try == 3 || stop.Err() != nil {
				r.log.Warn("relay: could not fail the attempt of an undelivered command; it fails at its timeout", "command", corr, "err", err)
				return
			}
		}
	}()
}

// Replies consumes participants' replies to commands (saga.Command) from
// Config.ReplyQueue and hands each to Config.Completer. A reply is
// acknowledged only once its outcome is committed: a crash before that
// leaves it in the queue, to be delivered again, and a second delivery of
// an answer is recorded and ignored. Create it with NewReplies and start
// it with Run. Several processes that share a store may consume one queue;
// processes with stores of their own need queues of their own (a reply for
// a saga the store does not hold is rejected).
//
// A reply carries the command's correlation_id, a header "status" (an
// integer with the meaning of an HTTP status, as engine.StatusResult
// reads it: 2xx success, 4xx other than 408, 425 and 429 a permanent
// failure, the rest retried) and a JSON body:
// the step's data, or {"error": "..."} for a failure. A reply that is not
// such a message, or answers a saga that does not exist, is rejected
// without requeueing (dead-lettered if the queue has a dead-letter
// exchange) and logged.
type Replies struct {
	cfg     Config
	log     *slog.Logger
	running atomic.Bool
}

// NewReplies returns a consumer of cfg.ReplyQueue on cfg.URL that hands
// answers to cfg.Completer (required). It checks cfg and does not connect:
// Run does.
func NewReplies(cfg Config) (*Replies, error) {
	if cfg.ConnectionName == "" {
		cfg.ConnectionName = "sagad replies"
	}
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Completer == nil {
		return nil, errors.Mark(errors.New("rabbitmq: replies need a Completer (the engine)"), ErrInvalidConfig)
	}
	return &Replies{cfg: cfg, log: cfg.Logger.With("component", "replies")}, nil
}

// Run declares the reply queue (durable) and consumes it until ctx ends,
// reconnecting whenever the broker goes away. When ctx ends it stops
// consuming, lets the replies it holds finish (each acknowledged once
// committed) and returns nil; replies not acknowledged go back to the
// queue when the connection closes.
func (r *Replies) Run(ctx context.Context) error {
	if !r.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer r.running.Store(false)
	reconnect := r.cfg.reconnectBackOff()
	var fails failLog
	for {
		err := r.session(ctx, func() {
			reconnect.Reset()
			if n, ok := fails.ok(brokerKey, r.cfg.Clock.Now()); ok {
				r.log.Info("replies: consuming", "queue", r.cfg.ReplyQueue, "failed_attempts", n.count, "after", n.since.Round(time.Millisecond))
			} else {
				r.log.Info("replies: consuming", "queue", r.cfg.ReplyQueue)
			}
		})
		if ctx.Err() != nil {
			return nil
		}
		wait := reconnect.NextBackOff()
		if n, ok := fails.fail(brokerKey, r.cfg.Clock.Now(), err); ok && n.first {
			r.log.Warn("replies: cannot consume the reply queue; replies wait in it", "queue", r.cfg.ReplyQueue, "err", err, "retry_in", wait.Round(time.Millisecond))
		} else if ok {
			r.log.Warn("replies: still cannot consume the reply queue", "queue", r.cfg.ReplyQueue, "attempts", n.count,
				"failing_for", n.since.Round(time.Second), "last_err", n.last)
		}
		t := time.NewTimer(wait) // reconnecting to a real broker: the wall clock's
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// session consumes over one connection until ctx ends or the connection
// fails; it returns once every reply it took has been handled.
func (r *Replies) session(ctx context.Context, up func()) error {
	conn, err := r.cfg.dial(amqp.DefaultDial(dialTimeout))
	if err != nil {
		return err
	}
	defer func() { _ = conn.CloseDeadline(time.Now().Add(closeGrace)) }()
	ch, err := conn.Channel()
	if err != nil {
		return errors.Wrap(err, "rabbitmq: open channel")
	}
	if err := ch.Qos(r.cfg.ReplyPrefetch, 0, false); err != nil {
		return errors.Wrap(err, "rabbitmq: set prefetch")
	}
	// On a channel of its own: a refusal closes the channel.
	var decl *amqp.Channel
	if err := declareQueue(conn, &decl, r.cfg.ReplyQueue, r.cfg.NoDeclare); err != nil {
		return errors.Wrap(err, "rabbitmq: reply queue")
	}
	if decl != nil {
		_ = decl.Close()
	}
	const tag = "sagad-replies"
	deliveries, err := ch.Consume(r.cfg.ReplyQueue, tag, false, false, false, false, nil)
	if err != nil {
		return errors.Wrapf(err, "rabbitmq: consume queue %q", r.cfg.ReplyQueue)
	}
	closed := conn.NotifyClose(make(chan *amqp.Error, 1))
	up()
	// Handlers end with the session: what they hold and have not
	// acknowledged goes back to the queue when the connection closes.
	sctx, endSession := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		endSession()
		wg.Wait() // before the connection closes: acks go out
	}()
	for {
		select {
		case <-ctx.Done():
			_ = ch.Cancel(tag, false)
			return nil
		case err := <-closed:
			if err == nil {
				return errors.New("rabbitmq: connection closed")
			}
			return err
		case d, ok := <-deliveries:
			if !ok {
				return errors.New("rabbitmq: consumer cancelled by the broker")
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				r.handle(sctx, &d)
			}()
		}
	}
}

// replyTries bounds how often handle offers a reply to the Completer
// before it gives it back to the queue (to this process later, or to
// another that shares the store).
const replyTries = 10

// handle delivers one reply and acknowledges it once its outcome is
// committed. It returns when session ends, leaving the reply
// unacknowledged; a Complete already under way finishes first (an outcome
// committed and not acknowledged is delivered again, and ignored).
func (r *Replies) handle(session context.Context, d *amqp.Delivery) {
	ctx := context.WithoutCancel(session)
	reject := func(why string, err error) {
		r.hook("rejected")
		r.log.Warn("replies: reply rejected: "+why, "correlation_id", d.CorrelationId, "message_id", d.MessageId, "err", err)
		_ = d.Reject(false)
	}
	id, step, phase, attempt, err := engine.ParseCorrelationID(d.CorrelationId)
	if err != nil {
		reject("its correlation_id names no attempt", err)
		return
	}
	status, err := replyStatus(d.Headers["status"])
	if err != nil {
		reject("its status header is not an HTTP status", err)
		return
	}
	res := replyResult(status, d.Body)
	if testBeforeComplete != nil {
		testBeforeComplete(d.CorrelationId)
	}
	for try := 1; ; try++ {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		applied, err := r.cfg.Completer.Complete(cctx, id, step, phase, attempt, res)
		cancel()
		switch {
		case err == nil:
			if applied {
				r.hook("applied")
			} else {
				r.hook("ignored")
				r.log.Info("replies: reply recorded and ignored: its attempt no longer waits (late, or delivered twice)",
					"correlation_id", d.CorrelationId)
			}
			if err := d.Ack(false); err != nil {
				// The connection is gone: the reply is delivered again,
				// and then ignored.
				r.log.Debug("replies: ack failed", "correlation_id", d.CorrelationId, "err", err)
			}
			return
		case errors.Is(err, engine.ErrNotFound):
			reject("it answers a saga that does not exist", err)
			return
		case errors.Is(err, engine.ErrInvalidInput), errors.Is(err, engine.ErrInvalidID):
			reject("it does not fit the saga", err)
			return
		case errors.Is(err, engine.ErrClosed):
			// Left unacknowledged: it goes back to the queue when the
			// connection closes, for this process's next run or another.
			return
		}
		// ErrConflict: the attempt has not begun to wait yet, or another
		// process drives the saga. ErrUnknownDefinition: the saga's
		// version is not registered here (another process may have it).
		// Anything else: the store is failing. Try again shortly, holding
		// the reply, then give it back to the queue.
		wait := 100 * time.Millisecond
		if !errors.Is(err, engine.ErrConflict) {
			wait = time.Second
		}
		if try == replyTries {
			r.log.Warn("replies: could not record a reply; it goes back to the queue", "correlation_id", d.CorrelationId,
				"tries", try, "err", err)
			_ = d.Nack(false, true)
			return
		}
		if !errors.Is(err, engine.ErrConflict) && try == 1 {
			r.log.Warn("replies: could not record a reply; trying again", "correlation_id", d.CorrelationId, "err", err)
		}
		t := time.NewTimer(wait) // a pause before the next try: the wall clock's
		select {
		case <-t.C:
		case <-session.Done():
			t.Stop()
			return
		}
	}
}

func (r *Replies) hook(result string) {
	if h := r.cfg.Hooks.Reply; h != nil {
		h(result)
	}
}

// replyStatus reads a reply's status header: an integer from 100 to 599,
// as any AMQP integer type, an integral float or a decimal string.
func replyStatus(v any) (int, error) {
	var n int64
	switch rv := reflect.ValueOf(v); {
	case v == nil:
		return 0, errors.New("no status header: want an integer with an HTTP status's meaning, such as 200")
	case rv.CanInt():
		n = rv.Int()
	case rv.CanUint():
		n = int64(min(rv.Uint(), math.MaxInt64))
	case rv.CanFloat():
		f := rv.Float()
		if f != math.Trunc(f) || math.Abs(f) > 1e9 {
			return 0, errors.Newf("status %v is not an integer", f)
		}
		n = int64(f)
	case rv.Kind() == reflect.String:
		i, err := strconv.ParseInt(strings.TrimSpace(rv.String()), 10, 64)
		if err != nil {
			return 0, errors.Newf("status %q is not an integer", v)
		}
		n = i
	default:
		return 0, errors.Newf("status of type %T: want an integer", v)
	}
	if n < 100 || n > 599 {
		return 0, errors.Newf("status %d: want an HTTP status, 100 to 599", n)
	}
	return int(n), nil
}

// replyResult turns a reply into the engine's terms, as the answer to a
// synchronous HTTP call is: a 2xx body is the step's data; a failure's
// message is its {"error": ...}, or the start of its body.
func replyResult(status int, body []byte) engine.Result {
	body = bytes.TrimSpace(body)
	if status >= 200 && status <= 299 {
		if len(body) == 0 {
			return engine.Result{}
		}
		var buf bytes.Buffer
		if err := json.Compact(&buf, body); err != nil {
			// The participant says it acted, and its answer cannot be
			// used: asking again would get the same one.
			return engine.Result{Err: saga.Permanent(saga.OutcomeUnknown(errors.Newf(
				"the participant replied %d with a body that is not valid JSON: %q", status, excerptOf(body))))}
		}
		return engine.Result{Data: buf.Bytes()}
	}
	var e struct {
		Error string `json:"error"`
	}
	msg := ""
	if json.Unmarshal(body, &e) == nil && e.Error != "" {
		msg = e.Error
	} else if len(body) > 0 {
		msg = excerptOf(body)
	}
	return engine.StatusResult(status, nil, msg)
}

func excerptOf(b []byte) string {
	if len(b) > maxReplyExcerpt {
		b = b[:maxReplyExcerpt]
	}
	return strings.ToValidUTF8(string(b), "\uFFFD")
}

// testBeforeComplete, when a test sets it, runs before a reply is handed
// to the Completer.
var testBeforeComplete func(correlationID string)
