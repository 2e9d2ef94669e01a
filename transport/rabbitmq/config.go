package rabbitmq

import (
	"log/slog"
	"net"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/cockroachdb/errors"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sagad/sagad/clock"
	"github.com/sagad/sagad/storage"
)

// Config configures a Relay. Zero fields take the documented defaults.
type Config struct {
	// URL is the broker's AMQP URL. Required, for example
	// amqp://guest:guest@127.0.0.1:5672/.
	URL string
	// Exchange receives events that name no exchange of their own. Zero:
	// "sagad.events".
	Exchange string
	// ExchangeKind is the kind of the exchanges the relay declares. Zero:
	// "topic".
	ExchangeKind string
	// NoDeclare stops the relay from declaring exchanges (durable, of
	// ExchangeKind) before it publishes to them: set it when they are
	// managed elsewhere.
	NoDeclare bool
	// AllowUnroutable publishes without the mandatory flag: a message no
	// queue is bound for is dropped by the broker and still counts as
	// produced. By default such a message is returned and retried, and ends
	// not_produced.
	AllowUnroutable bool
	// Window caps the messages published and not yet confirmed. Zero: 256.
	Window int
	// MaxAttempts is how often an event is published (nacked or returned
	// each time) before it is marked not_produced. Zero: 10.
	MaxAttempts int
	// RetryInitial and RetryMax bound the exponential backoff between a
	// failed publication of an event and the next. Zero: 200ms and 30s.
	RetryInitial, RetryMax time.Duration
	// ReconnectInitial and ReconnectMax bound the backoff between attempts
	// to reach the broker. Zero: 100ms and 10s.
	ReconnectInitial, ReconnectMax time.Duration
	// DrainTimeout is how long Run waits, once its context ends, for the
	// confirms of messages in flight. Zero: 5s. Unconfirmed messages stay
	// new and are published again by the next Run. A second after it, a
	// connection the broker no longer reads (it blocks publishers during a
	// memory or disk alarm) is closed hard, so Run returns even then.
	DrainTimeout time.Duration
	// Heartbeat is the AMQP heartbeat interval: a broker that stops
	// answering is noticed within about two. Zero: 10s.
	Heartbeat time.Duration
	// ConnectionName shows in the broker's management UI. Zero: "sagad relay" (and "sagad replies" for Replies).
	ConnectionName string
	// ReplyQueue is the durable queue participants answer commands on (a
	// saga.Command's message carries it as reply_to); Replies declares and
	// consumes it. Zero: "sagad.replies".
	ReplyQueue string
	// ReplyPrefetch caps the replies Replies has taken and not yet
	// acknowledged: it handles that many at once. Zero: 256.
	ReplyPrefetch int
	// Completer takes the answers Replies reads, and the failure of a
	// command the broker could not deliver (returned: no queue bound to its
	// routing key; its exchange missing), which fails the attempt at once.
	// *engine.Engine is one. Required by Replies; without it the relay
	// leaves an undeliverable command's attempt to its timeout.
	Completer Completer
	// Logger receives the relay's logs. Nil: slog.Default().
	Logger *slog.Logger
	// Hooks observe the relay (metrics).
	Hooks Hooks
	// Clock is the relay's time: retry backoff, polling, draining and the
	// times it records. Nil: the wall clock. Connection deadlines stay on
	// the wall clock.
	Clock clock.Clock
}

// Hooks let the embedding program observe the relay. They run on the
// relay's goroutine: keep them fast.
type Hooks struct {
	// Published is called with the number of events whose produced mark
	// has just been committed.
	Published func(n int)
	// Retried is called when a publication failed (nack, returned message,
	// exchange the broker refuses to declare) and the event will be
	// published again.
	Retried func(ev *storage.OutboxEvent, err error)
	// NotProduced is called when an event ran out of attempts.
	NotProduced func(ev *storage.OutboxEvent, err error)
	// Reply is called by Replies, on a goroutine of the reply's own, once
	// it has handled a reply: result is "applied" (it ended its attempt),
	// "ignored" (recorded and ignored: late, or delivered twice) or
	// "rejected" (malformed, or for no saga).
	Reply func(result string)
	// Connection is called when the relay connects (err nil) and when it
	// loses its connection or fails to connect (err set).
	Connection func(up bool, err error)
}

// dialTimeout bounds the TCP connection to the broker.
const dialTimeout = 5 * time.Second

// dial connects to the broker through dial (a net dialer), named and with
// the heartbeat the configuration gives.
func (c *Config) dial(dial func(network, addr string) (net.Conn, error)) (*amqp.Connection, error) {
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName(c.ConnectionName)
	conn, err := amqp.DialConfig(c.URL, amqp.Config{Heartbeat: c.Heartbeat, Locale: "en_US", Properties: props, Dial: dial})
	if err != nil {
		return nil, errors.Wrap(err, "rabbitmq: dial")
	}
	return conn, nil
}

// reconnectBackOff is the wait between attempts to reach the broker:
// ReconnectInitial, growing to ReconnectMax, for ever.
func (c *Config) reconnectBackOff() *backoff.ExponentialBackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval, b.MaxInterval = c.ReconnectInitial, c.ReconnectMax
	b.MaxElapsedTime = 0
	b.Reset()
	return b
}

func (c *Config) setDefaults() {
	c.Clock = clock.Or(c.Clock)
	if c.Exchange == "" {
		c.Exchange = "sagad.events"
	}
	if c.ExchangeKind == "" {
		c.ExchangeKind = "topic"
	}
	if c.Window <= 0 {
		c.Window = 256
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 10
	}
	if c.RetryInitial <= 0 {
		c.RetryInitial = 200 * time.Millisecond
	}
	if c.RetryMax <= 0 {
		c.RetryMax = 30 * time.Second
	}
	if c.ReconnectInitial <= 0 {
		c.ReconnectInitial = 100 * time.Millisecond
	}
	if c.ReconnectMax <= 0 {
		c.ReconnectMax = 10 * time.Second
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = 5 * time.Second
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = 10 * time.Second
	}
	if c.ReplyQueue == "" {
		c.ReplyQueue = "sagad.replies"
	}
	if c.ReplyPrefetch <= 0 {
		c.ReplyPrefetch = 256
	}
	if c.ConnectionName == "" {
		c.ConnectionName = "sagad relay"
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// ErrInvalidConfig marks the errors of Config.Validate.
var ErrInvalidConfig = errors.New("rabbitmq: invalid relay configuration")

// Validate reports what is wrong with c, after defaults.
func (c *Config) Validate() error {
	switch {
	case c.URL == "":
		return errors.Mark(errors.New("rabbitmq: URL is required (amqp://user:pass@host:5672/vhost)"), ErrInvalidConfig)
	case c.Window > 65535:
		return errors.Mark(errors.Newf("rabbitmq: window %d is larger than 65535", c.Window), ErrInvalidConfig)
	case c.ReplyPrefetch > 65535:
		return errors.Mark(errors.Newf("rabbitmq: reply prefetch %d is larger than 65535", c.ReplyPrefetch), ErrInvalidConfig)
	case len(c.ReplyQueue) > 255:
		return errors.Mark(errors.Newf("rabbitmq: reply queue name is %d bytes, at most 255", len(c.ReplyQueue)), ErrInvalidConfig)
	case c.RetryMax < c.RetryInitial:
		return errors.Mark(errors.Newf("rabbitmq: retry max %s is below retry initial %s", c.RetryMax, c.RetryInitial), ErrInvalidConfig)
	case c.ReconnectMax < c.ReconnectInitial:
		return errors.Mark(errors.Newf("rabbitmq: reconnect max %s is below reconnect initial %s", c.ReconnectMax, c.ReconnectInitial), ErrInvalidConfig)
	}
	switch c.ExchangeKind {
	case "topic", "direct", "fanout", "headers":
	default:
		return errors.Mark(errors.Newf("rabbitmq: exchange kind %q: want topic, direct, fanout or headers", c.ExchangeKind), ErrInvalidConfig)
	}
	return nil
}
