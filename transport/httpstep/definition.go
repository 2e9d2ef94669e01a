package httpstep

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"maps"
	"net/http"
	"time"

	"github.com/cockroachdb/errors"

	"github.com/sagad/sagad/saga"
)

// defaultCallTimeout bounds an attempt of a call that gives no timeout.
const defaultCallTimeout = 30 * time.Second

// Definition builds the saga.Definition, named name, that runs s: each
// step's action, compensation and fallback is a saga.Func that calls its
// participant with client, as the package documentation describes. A nil
// client means a shared default one (pooled keep-alive connections, dial
// and TLS handshake timeouts, no overall timeout since each attempt has its
// own, and no redirects followed).
//
// Its Version is the first 16 hex digits of the SHA-256 of s's canonical
// JSON (json.Marshal of s), so any change to a URL, header or policy is a
// new version, and sagas started under the old one keep running it while
// it stays registered.
//
// The definition copies what it needs: changing s afterwards does not
// change it. Errors are marked saga.ErrInvalidDefinition; the definition
// has passed saga.Definition.Validate.
func (s *Spec) Definition(name string, client *http.Client) (*saga.Definition, error) {
	if s == nil {
		return nil, errors.Mark(errors.Newf("httpstep: definition %q: spec is nil", name), saga.ErrInvalidDefinition)
	}
	if err := s.check(); err != nil {
		return nil, errors.Mark(errors.Wrapf(err, "httpstep: definition %q", name), saga.ErrInvalidDefinition)
	}
	return s.build(name, client)
}

// version returns the hash of s's canonical JSON.
func (s *Spec) version() (string, error) {
	canon, err := json.Marshal(s)
	if err != nil {
		return "", errors.Wrap(err, "encode canonical JSON")
	}
	sum := sha256.Sum256(canon)
	return hex.EncodeToString(sum[:8]), nil
}

// build turns a checked spec into a validated definition.
func (s *Spec) build(name string, client *http.Client) (*saga.Definition, error) {
	version, err := s.version()
	if err != nil {
		return nil, errors.Mark(errors.Wrapf(err, "httpstep: definition %q", name), saga.ErrInvalidDefinition)
	}
	if client == nil {
		client = defaultClient()
	}
	def := &saga.Definition{
		Name:    name,
		Steps:   make([]saga.Step, len(s.Steps)),
		Timeout: time.Duration(s.Timeout),
		Version: version,
	}
	if s.Events != nil {
		def.Events = saga.Events{Lifecycle: s.Events.Lifecycle, Exchange: s.Events.Exchange}
	}
	for i := range s.Steps {
		st := &s.Steps[i]
		step := saga.Step{
			Name:    st.Name,
			Timeout: st.Action.timeout(),
			Pivot:   st.Pivot,
			After:   st.After,
		}
		st.Action.bind(&step.Action, &step.Commands.Action, client)
		switch {
		case st.Retry != nil:
			step.Retry = st.Retry.policy()
		case st.Action.Retry != nil:
			step.Retry = st.Action.Retry.policy()
		}
		if c := st.Compensation; c != nil {
			c.bind(&step.Compensation, &step.Commands.Compensation, client)
			step.Timeout = max(step.Timeout, c.timeout())
			if c.Retry != nil {
				step.CompensationRetry = c.Retry.policy()
			}
		}
		if c := st.Fallback; c != nil {
			c.bind(&step.Fallback, &step.Commands.Fallback, client)
			step.Timeout = max(step.Timeout, c.timeout())
		}
		if st.CircuitBreaker != nil {
			step.Breaker = st.CircuitBreaker.policy()
		}
		def.Steps[i] = step
	}
	if err := def.Validate(); err != nil {
		return nil, err
	}
	return def, nil
}

// bind sets the phase's Func to the HTTP call, or its Command to the
// command c describes.
func (c *CallSpec) bind(f *saga.Func, cmd *saga.Command, client *http.Client) {
	if c.AMQP != nil {
		*cmd = newCommand(c)
		return
	}
	*f = newCaller(c, client).call
}

// timeout returns the call's per-attempt timeout, defaulted: for a
// command, how long it waits for the reply.
func (c *CallSpec) timeout() time.Duration {
	t := c.Timeout
	if c.AMQP != nil {
		t = c.AMQP.Timeout
	}
	if t == 0 {
		return defaultCallTimeout
	}
	return time.Duration(t)
}

// newCommand returns the command a call over AMQP sends: the request body
// of an HTTP call, to the spec's exchange and routing key, with its extra
// headers. The engine adds the attempt's identity.
func newCommand(c *CallSpec) saga.Command {
	exchange, key := c.AMQP.Exchange, c.AMQP.RoutingKey
	headers := maps.Clone(c.Headers)
	return func(sc *saga.Call) (saga.Event, error) {
		body, err := requestBody(sc)
		if err != nil {
			return saga.Event{}, saga.Permanent(errors.Wrapf(err, "httpstep: command to %q: encode body", key))
		}
		// The engine copies Headers into the message's own.
		return saga.Event{Name: "sagad." + string(sc.Phase), Exchange: exchange, RoutingKey: key, Payload: body,
			Headers: headers}, nil
	}
}

func (r *RetrySpec) policy() saga.RetryPolicy {
	return saga.RetryPolicy{
		MaxAttempts:     r.MaxAttempts,
		InitialInterval: time.Duration(r.InitialInterval),
		MaxInterval:     time.Duration(r.MaxInterval),
		Multiplier:      r.Multiplier,
		MaxElapsed:      time.Duration(r.MaxElapsed),
	}
}

func (b *BreakerSpec) policy() saga.BreakerPolicy {
	return saga.BreakerPolicy{
		Name:             b.Name,
		Failures:         b.Failures,
		OpenFor:          time.Duration(b.OpenFor),
		HalfOpenRequests: b.HalfOpenRequests,
	}
}
