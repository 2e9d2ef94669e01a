package httpstep

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
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
			Action:  newCaller(st.Action, client).call,
			Timeout: st.Action.timeout(),
			Pivot:   st.Pivot,
			After:   st.After,
		}
		switch {
		case st.Retry != nil:
			step.Retry = st.Retry.policy()
		case st.Action.Retry != nil:
			step.Retry = st.Action.Retry.policy()
		}
		if c := st.Compensation; c != nil {
			step.Compensation = newCaller(c, client).call
			step.Timeout = max(step.Timeout, c.timeout())
			if c.Retry != nil {
				step.CompensationRetry = c.Retry.policy()
			}
		}
		if c := st.Fallback; c != nil {
			step.Fallback = newCaller(c, client).call
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

// timeout returns the call's per-attempt timeout, defaulted.
func (c *CallSpec) timeout() time.Duration {
	if c.Timeout == 0 {
		return defaultCallTimeout
	}
	return time.Duration(c.Timeout)
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
