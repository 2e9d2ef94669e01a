package httpstep

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cockroachdb/errors"

	"github.com/sagad/sagad/internal/dag"
	"github.com/sagad/sagad/saga"
)

// MaxSpecSize caps the JSON text Parse accepts.
const MaxSpecSize = 1 << 20

// Spec is a declarative saga definition, as JSON. Parse decodes and
// validates one; Definition turns it into a saga.Definition. Its JSON
// encoding (json.Marshal) is canonical: the definition's version is a hash
// of it.
type Spec struct {
	// Steps run in order. At least one.
	Steps []StepSpec `json:"steps"`
	// Timeout is the saga's deadline, measured from its start (see
	// saga.Definition.Timeout). Zero: none.
	Timeout Duration `json:"timeout,omitzero"`
	// Events turns on lifecycle events (see saga.Events). Nil: off.
	Events *EventsSpec `json:"events,omitempty"`
}

// StepSpec is one step of a Spec.
type StepSpec struct {
	// Name is unique within the spec; it matches
	// [A-Za-z0-9][A-Za-z0-9._-]{0,127}. The step's output is passed to
	// later steps under this name.
	Name string `json:"name"`
	// Action does the step's work. Required.
	Action *CallSpec `json:"action"`
	// Compensation undoes a succeeded action. Optional.
	Compensation *CallSpec `json:"compensation,omitempty"`
	// Fallback runs once when the action has failed for good. Optional; it
	// may not have a retry policy of its own.
	Fallback *CallSpec `json:"fallback,omitempty"`
	// Retry is the action's retry policy, the same as Action.Retry: give it
	// in one place or the other, not both. Nil: saga.RetryPolicy's defaults.
	Retry *RetrySpec `json:"retry,omitempty"`
	// CircuitBreaker names the breaker that guards the step's participant
	// (see saga.BreakerPolicy). Nil: none.
	CircuitBreaker *BreakerSpec `json:"circuit_breaker,omitempty"`
	// Pivot marks the point of no return (see saga.Step.Pivot).
	Pivot bool `json:"pivot,omitempty"`
	// After names the steps this one waits for (see saga.Step.After). Nil
	// (absent): the step before it; empty ([]): none, it starts with the
	// saga.
	After []string `json:"after,omitzero"`
}

// CallSpec is one call to a participant: a step's action, compensation or
// fallback, as an HTTP request (URL) or as a command message through the
// outbox and RabbitMQ (AMQP). Give one of the two.
type CallSpec struct {
	// URL is the participant's absolute http:// or https:// URL.
	URL string `json:"url,omitempty"`
	// AMQP sends the call as a command message instead, answered by a
	// reply message (see AMQPSpec). Method and Timeout do not apply: the
	// reply's timeout is AMQP.Timeout.
	AMQP *AMQPSpec `json:"amqp,omitempty"`
	// Method is POST (the default), PUT, PATCH or DELETE.
	Method string `json:"method,omitempty"`
	// Timeout bounds each attempt. Zero: 30s.
	Timeout Duration `json:"timeout,omitzero"`
	// Retry is this call's retry policy. Nil: saga.RetryPolicy's defaults
	// (3 attempts for an action, 10 for a compensation). Not allowed on a
	// fallback, which runs once.
	Retry *RetrySpec `json:"retry,omitempty"`
	// Headers are extra request headers. They may replace Accept and
	// User-Agent but not the headers of the protocol (Content-Type,
	// Idempotency-Key, X-Saga-*) nor those net/http manages (Host,
	// Content-Length, Transfer-Encoding, Connection and the like).
	Headers map[string]string `json:"headers,omitempty"`
}

// AMQPSpec sends a call as a command (saga.Command): the engine writes the
// message to the outbox in the commit that records the attempt's start; the
// relay publishes it (persistent, mandatory, confirmed) with the request
// body an HTTP call gets, the same headers (Idempotency-Key, X-Saga-Id,
// X-Saga-Definition, X-Saga-Step, X-Saga-Phase, X-Saga-Attempt, and the
// call's Headers), correlation_id "<saga id>/<step>/<phase>/<attempt>" and
// reply_to the relay's reply queue. The participant answers with a message
// to reply_to carrying the same correlation_id, a header "status" (an
// integer with an HTTP status's meaning) and a JSON body: the step's data,
// or {"error": "..."}. A command the broker returns (no queue bound) is a
// failed attempt.
type AMQPSpec struct {
	// Exchange is the exchange the command is published to; empty is the
	// broker's default exchange, which routes to the queue named by the
	// routing key.
	Exchange string `json:"exchange"`
	// RoutingKey routes the command. Required; at most 255 bytes.
	RoutingKey string `json:"routing_key"`
	// Timeout is how long an attempt waits for the reply; then it failed
	// with an unknown outcome and the retry policy applies. Zero: 30s.
	Timeout Duration `json:"timeout,omitzero"`
}

// RetrySpec is a retry policy; it maps field for field onto
// saga.RetryPolicy, whose documentation gives the defaults of zero fields.
// Jitter is always the default.
type RetrySpec struct {
	// MaxAttempts is the total number of attempts, the first included.
	// Zero: the default. Negative: unlimited.
	MaxAttempts int `json:"max_attempts,omitempty"`
	// InitialInterval is the wait before the second attempt.
	InitialInterval Duration `json:"initial_interval,omitzero"`
	// MaxInterval caps the wait between attempts; not below
	// InitialInterval.
	MaxInterval Duration `json:"max_interval,omitzero"`
	// Multiplier grows the interval after every attempt; zero or at least 1.
	Multiplier float64 `json:"multiplier,omitempty"`
	// MaxElapsed gives up on new attempts once this much time has passed
	// since the first attempt.
	MaxElapsed Duration `json:"max_elapsed,omitzero"`
}

// BreakerSpec configures a named circuit breaker; it maps onto
// saga.BreakerPolicy, whose documentation gives the defaults of zero fields.
// Every step, of any definition, that names the same breaker must give the
// same settings.
type BreakerSpec struct {
	// Name identifies the breaker. Required; it matches
	// [A-Za-z0-9][A-Za-z0-9._-]{0,127}.
	Name string `json:"name"`
	// Failures is the number of consecutive failed attempts that opens it.
	Failures uint32 `json:"failures,omitempty"`
	// OpenFor is how long it stays open before trial requests.
	OpenFor Duration `json:"open_for,omitzero"`
	// HalfOpenRequests is how many trial requests it lets through.
	HalfOpenRequests uint32 `json:"half_open_requests,omitempty"`
}

// EventsSpec configures lifecycle events; it maps onto saga.Events.
type EventsSpec struct {
	// Lifecycle writes an outbox event for every saga and step transition.
	Lifecycle bool `json:"lifecycle,omitempty"`
	// Exchange is the exchange they are published to. Empty: the relay's
	// default.
	Exchange string `json:"exchange,omitempty"`
}

// Duration is a time.Duration written in JSON as a Go duration string such
// as "2s", "150ms" or "1m30s". Numbers are rejected: a bare 2 could mean
// seconds or nanoseconds.
type Duration time.Duration

// MarshalJSON encodes d as a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return strconv.AppendQuote(nil, time.Duration(d).String()), nil
}

// UnmarshalJSON decodes a Go duration string. JSON null leaves d unchanged;
// anything else but a string that time.ParseDuration accepts is an error
// that quotes the value.
func (d *Duration) UnmarshalJSON(data []byte) error {
	data = bytes.TrimSpace(data)
	if string(data) == "null" {
		return nil
	}
	if len(data) == 0 || data[0] != '"' {
		return errors.Newf("invalid duration %s: must be a string such as \"2s\" or \"150ms\"", excerpt(data, 40))
	}
	var s string
	if err := json.Unmarshal(data, &s); err != nil {
		return errors.Wrap(err, "invalid duration")
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return errors.Newf("invalid duration %q (want a Go duration such as \"2s\" or \"150ms\")", s)
	}
	*d = Duration(v)
	return nil
}

// excerpt returns at most n bytes of b, for an error message.
func excerpt(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}

// Parse decodes and validates the definition named name from its JSON text.
// It rejects unknown fields, a field given twice, trailing data after the
// object and input larger than MaxSpecSize; a JSON null is the same as
// leaving the field out. It also builds the definition (see
// Spec.Definition) and validates it, so a spec Parse accepts is one the
// engine can register. Every error is marked saga.ErrInvalidDefinition and
// names the JSON path of the bad field, as in
//
//	httpstep: definition "order": steps[0].action.timeout: invalid duration "2x" (...)
func Parse(name string, data []byte) (*Spec, error) {
	s, err := decodeSpec(data)
	if err == nil {
		err = s.check()
	}
	if err != nil {
		return nil, errors.Mark(errors.Wrapf(err, "httpstep: definition %q", name), saga.ErrInvalidDefinition)
	}
	if _, err := s.build(name, nil); err != nil {
		return nil, err
	}
	return s, nil
}

// bad returns an error about the field at path p.
func bad(p, format string, args ...any) error {
	return errors.Newf("%s: %s", p, fmt.Sprintf(format, args...))
}

func decodeSpec(data []byte) (*Spec, error) {
	if len(data) > MaxSpecSize {
		return nil, errors.Newf("definition is %d bytes, at most %d", len(data), MaxSpecSize)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	var raw json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("definition is empty")
		}
		if se := (*json.SyntaxError)(nil); errors.As(err, &se) {
			return nil, errors.Wrapf(err, "definition is not valid JSON (at byte %d)", se.Offset)
		}
		return nil, errors.Wrap(err, "definition is not valid JSON")
	}
	end := dec.InputOffset()
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.Newf("trailing data after the definition, which ends at byte %d", end)
	}
	if isNull(raw) {
		return nil, bad("definition", "must be a JSON object, not null")
	}
	s := new(Spec)
	err := decodeObject("", raw, specFields, func(key, p string, v json.RawMessage) error {
		switch key {
		case "steps":
			return decodeArray(p, v, func(p string, v json.RawMessage) error {
				var st StepSpec
				if !isNull(v) {
					if err := decodeStep(p, v, &st); err != nil {
						return err
					}
				}
				s.Steps = append(s.Steps, st)
				return nil
			})
		case "timeout":
			return decodeDuration(p, v, &s.Timeout)
		case "events":
			s.Events = new(EventsSpec)
			return decodeObject(p, v, eventsFields, func(key, p string, v json.RawMessage) error {
				if key == "lifecycle" {
					return decodeBool(p, v, &s.Events.Lifecycle)
				}
				return decodeString(p, v, &s.Events.Exchange)
			})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

var (
	specFields    = []string{"steps", "timeout", "events"}
	eventsFields  = []string{"lifecycle", "exchange"}
	stepFields    = []string{"name", "action", "compensation", "fallback", "retry", "circuit_breaker", "pivot", "after"}
	callFields    = []string{"url", "amqp", "method", "timeout", "retry", "headers"}
	amqpFields    = []string{"exchange", "routing_key", "timeout"}
	retryFields   = []string{"max_attempts", "initial_interval", "max_interval", "multiplier", "max_elapsed"}
	breakerFields = []string{"name", "failures", "open_for", "half_open_requests"}
)

func decodeStep(p string, raw json.RawMessage, st *StepSpec) error {
	return decodeObject(p, raw, stepFields, func(key, p string, v json.RawMessage) error {
		switch key {
		case "name":
			return decodeString(p, v, &st.Name)
		case "action":
			return decodeCall(p, v, &st.Action)
		case "compensation":
			return decodeCall(p, v, &st.Compensation)
		case "fallback":
			return decodeCall(p, v, &st.Fallback)
		case "retry":
			return decodeRetry(p, v, &st.Retry)
		case "circuit_breaker":
			b := new(BreakerSpec)
			st.CircuitBreaker = b
			return decodeObject(p, v, breakerFields, func(key, p string, v json.RawMessage) error {
				switch key {
				case "name":
					return decodeString(p, v, &b.Name)
				case "failures":
					return decodeNumber(p, v, &b.Failures, "an integer from 0 to 4294967295")
				case "open_for":
					return decodeDuration(p, v, &b.OpenFor)
				default:
					return decodeNumber(p, v, &b.HalfOpenRequests, "an integer from 0 to 4294967295")
				}
			})
		case "after":
			if firstByte(v) != '[' {
				return bad(p, "must be an array of step names, not %s", excerpt(v, 40))
			}
			var raw []json.RawMessage
			if err := json.Unmarshal(v, &raw); err != nil {
				return errors.Wrapf(err, "%s", p)
			}
			st.After = make([]string, len(raw))
			for j, r := range raw {
				if err := decodeString(p+"["+strconv.Itoa(j)+"]", r, &st.After[j]); err != nil {
					return err
				}
			}
			return nil
		default:
			return decodeBool(p, v, &st.Pivot)
		}
	})
}

func decodeCall(p string, raw json.RawMessage, dst **CallSpec) error {
	c := new(CallSpec)
	*dst = c
	return decodeObject(p, raw, callFields, func(key, p string, v json.RawMessage) error {
		switch key {
		case "url":
			return decodeString(p, v, &c.URL)
		case "amqp":
			a := new(AMQPSpec)
			c.AMQP = a
			return decodeObject(p, v, amqpFields, func(key, p string, v json.RawMessage) error {
				switch key {
				case "exchange":
					return decodeString(p, v, &a.Exchange)
				case "routing_key":
					return decodeString(p, v, &a.RoutingKey)
				default:
					return decodeDuration(p, v, &a.Timeout)
				}
			})
		case "method":
			return decodeString(p, v, &c.Method)
		case "timeout":
			return decodeDuration(p, v, &c.Timeout)
		case "retry":
			return decodeRetry(p, v, &c.Retry)
		default:
			c.Headers = map[string]string{}
			return decodeObject(p, v, nil, func(key, p string, v json.RawMessage) error {
				var s string
				if err := decodeString(p, v, &s); err != nil {
					return err
				}
				c.Headers[key] = s
				return nil
			})
		}
	})
}

func decodeRetry(p string, raw json.RawMessage, dst **RetrySpec) error {
	r := new(RetrySpec)
	*dst = r
	return decodeObject(p, raw, retryFields, func(key, p string, v json.RawMessage) error {
		switch key {
		case "max_attempts":
			return decodeNumber(p, v, &r.MaxAttempts, "an integer")
		case "initial_interval":
			return decodeDuration(p, v, &r.InitialInterval)
		case "max_interval":
			return decodeDuration(p, v, &r.MaxInterval)
		case "multiplier":
			return decodeNumber(p, v, &r.Multiplier, "a number")
		default:
			return decodeDuration(p, v, &r.MaxElapsed)
		}
	})
}

func isNull(raw json.RawMessage) bool { return string(bytes.TrimSpace(raw)) == "null" }

// firstByte returns the first byte of a JSON value (raw comes from a
// json.Decoder, so it is valid and starts with no whitespace).
func firstByte(raw json.RawMessage) byte {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return 0
	}
	return raw[0]
}

var simpleKey = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// member returns the path of member key of the object at p.
func member(p, key string) string {
	if !simpleKey.MatchString(key) {
		return p + "[" + strconv.Quote(key) + "]"
	}
	if p == "" {
		return key
	}
	return p + "." + key
}

// decodeObject calls f for each member of the JSON object raw at path p
// whose value is not null, in order. known lists the accepted keys; nil
// accepts any. A key given twice is an error.
func decodeObject(p string, raw json.RawMessage, known []string, f func(key, p string, v json.RawMessage) error) error {
	if firstByte(raw) != '{' {
		where := p
		if where == "" {
			where = "definition"
		}
		return bad(where, "must be a JSON object, not %s", excerpt(raw, 40))
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if _, err := dec.Token(); err != nil {
		return errors.Wrapf(err, "%s", p)
	}
	seen := make(map[string]bool)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return errors.Wrapf(err, "%s", p)
		}
		key, _ := tok.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return errors.Wrapf(err, "%s", member(p, key))
		}
		mp := member(p, key)
		if seen[key] {
			return bad(mp, "given twice")
		}
		seen[key] = true
		if known != nil && !slices.Contains(known, key) {
			return bad(mp, "unknown field (known: %s)", strings.Join(known, ", "))
		}
		if isNull(v) {
			continue
		}
		if err := f(key, mp, v); err != nil {
			return err
		}
	}
	return nil
}

// decodeArray calls f for each element of the JSON array raw at path p.
func decodeArray(p string, raw json.RawMessage, f func(p string, v json.RawMessage) error) error {
	if firstByte(raw) != '[' {
		return bad(p, "must be a JSON array, not %s", excerpt(raw, 40))
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if _, err := dec.Token(); err != nil {
		return errors.Wrapf(err, "%s", p)
	}
	for i := 0; dec.More(); i++ {
		ep := p + "[" + strconv.Itoa(i) + "]"
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return errors.Wrapf(err, "%s", ep)
		}
		if err := f(ep, v); err != nil {
			return err
		}
	}
	return nil
}

func decodeString(p string, raw json.RawMessage, dst *string) error {
	if firstByte(raw) != '"' {
		return bad(p, "must be a string, not %s", excerpt(raw, 40))
	}
	return errors.Wrapf(json.Unmarshal(raw, dst), "%s", p)
}

func decodeBool(p string, raw json.RawMessage, dst *bool) error {
	if b := firstByte(raw); b != 't' && b != 'f' {
		return bad(p, "must be true or false, not %s", excerpt(raw, 40))
	}
	return errors.Wrapf(json.Unmarshal(raw, dst), "%s", p)
}

func decodeNumber[T int | uint32 | float64](p string, raw json.RawMessage, dst *T, what string) error {
	if b := firstByte(raw); b != '-' && (b < '0' || b > '9') {
		return bad(p, "must be %s, not %s", what, excerpt(raw, 40))
	}
	if err := json.Unmarshal(raw, dst); err != nil {
		return bad(p, "must be %s, not %s", what, excerpt(raw, 40))
	}
	return nil
}

func decodeDuration(p string, raw json.RawMessage, dst *Duration) error {
	if err := dst.UnmarshalJSON(raw); err != nil {
		return errors.Wrapf(err, "%s", p)
	}
	return nil
}

// namePattern is saga's pattern for definition, step and breaker names.
// saga.Definition.Validate enforces it as well; checking it here too only
// lets the error name the JSON path.
var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// check validates what saga.Definition.Validate cannot see (URLs, methods,
// headers, the retry fields) and what it can, with JSON paths.
func (s *Spec) check() error {
	if len(s.Steps) == 0 {
		return bad("steps", "at least one step is required")
	}
	if s.Timeout < 0 {
		return bad("timeout", "must not be negative (%s)", time.Duration(s.Timeout))
	}
	if s.Events != nil && s.Events.Exchange != "" && !namePattern.MatchString(s.Events.Exchange) {
		return bad("events.exchange", "%q must match %s", s.Events.Exchange, namePattern)
	}
	names := make(map[string]int, len(s.Steps))
	breakers := make(map[string]int)
	for i := range s.Steps {
		st := &s.Steps[i]
		p := "steps[" + strconv.Itoa(i) + "]"
		if !namePattern.MatchString(st.Name) {
			return bad(p+".name", "%q must match %s", st.Name, namePattern)
		}
		if j, dup := names[st.Name]; dup {
			return bad(p+".name", "%q is already the name of steps[%d]", st.Name, j)
		}
		names[st.Name] = i
		if st.Action == nil {
			return bad(p+".action", "is required")
		}
		if st.Retry != nil && st.Action.Retry != nil {
			return bad(p+".retry", "the action's retry policy is also given as %s.action.retry: give it once", p)
		}
		if err := st.Action.check(p + ".action"); err != nil {
			return err
		}
		if st.Compensation != nil {
			if err := st.Compensation.check(p + ".compensation"); err != nil {
				return err
			}
		}
		if st.Fallback != nil {
			if st.Fallback.Retry != nil {
				return bad(p+".fallback.retry", "not allowed: a fallback runs once")
			}
			if err := st.Fallback.check(p + ".fallback"); err != nil {
				return err
			}
		}
		if st.Retry != nil {
			if err := st.Retry.check(p + ".retry"); err != nil {
				return err
			}
		}
		if err := st.checkWaits(p); err != nil {
			return err
		}
		if b := st.CircuitBreaker; b != nil {
			bp := p + ".circuit_breaker"
			if st.sendsCommands() {
				return bad(bp, "not allowed in a step with calls over AMQP: a breaker counts the answers of calls as they come, and a command's come later")
			}
			if b.Name == "" {
				return bad(bp+".name", "is required")
			}
			if !namePattern.MatchString(b.Name) {
				return bad(bp+".name", "%q must match %s", b.Name, namePattern)
			}
			if b.OpenFor < 0 {
				return bad(bp+".open_for", "must not be negative (%s)", time.Duration(b.OpenFor))
			}
			if j, ok := breakers[b.Name]; ok && b.policy().WithDefaults() != s.Steps[j].CircuitBreaker.policy().WithDefaults() {
				return bad(bp, "breaker %q is configured differently in steps[%d]", b.Name, j)
			} else if !ok {
				breakers[b.Name] = i
			}
		}
	}
	stepNames := make([]string, len(s.Steps))
	after := make([][]string, len(s.Steps))
	for i, st := range s.Steps {
		stepNames[i], after[i] = st.Name, st.After
	}
	if _, p := dag.New(stepNames, after); p != nil {
		path := "steps[" + strconv.Itoa(p.Step) + "].after"
		if p.Ref >= 0 {
			path += "[" + strconv.Itoa(p.Ref) + "]"
		}
		return bad(path, "%s", p.Msg)
	}
	return nil
}

// checkWaits refuses an AMQP call whose timeout is shorter than another
// of the step's calls': the engine has one timeout per step (the longest
// of its calls'), which an HTTP call shortens for itself, but which is
// how long a command waits for its reply.
func (st *StepSpec) checkWaits(p string) error {
	calls := []struct {
		name string
		c    *CallSpec
	}{{"action", st.Action}, {"compensation", st.Compensation}, {"fallback", st.Fallback}}
	longest, which := time.Duration(0), ""
	for _, c := range calls {
		if c.c != nil && c.c.timeout() > longest {
			longest, which = c.c.timeout(), c.name
		}
	}
	for _, c := range calls {
		if c.c != nil && c.c.AMQP != nil && c.c.timeout() < longest {
			return bad(p+"."+c.name+".amqp.timeout", "%s, but the step's %s takes up to %s: a command waits for the step's one timeout, the longest of its calls'; give its AMQP calls that timeout",
				c.c.timeout(), which, longest)
		}
	}
	return nil
}

// sendsCommands reports whether any of the step's calls is over AMQP.
func (st *StepSpec) sendsCommands() bool {
	for _, c := range []*CallSpec{st.Action, st.Compensation, st.Fallback} {
		if c != nil && c.AMQP != nil {
			return true
		}
	}
	return false
}

// reservedHeaders are the request headers a spec may not set: the
// protocol's own and those net/http manages.
var reservedHeaders = []string{
	"Content-Type", "Idempotency-Key", "Host", "Content-Length", "Transfer-Encoding",
	"Connection", "Keep-Alive", "Proxy-Connection", "Te", "Trailer", "Upgrade",
}

func (c *CallSpec) check(p string) error {
	if c.AMQP != nil {
		return c.checkAMQP(p)
	}
	if c.URL == "" {
		return bad(p+".url", "is required (or amqp)")
	}
	if u, err := url.Parse(c.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Opaque != "" {
		return bad(p+".url", "must be an absolute http or https URL (got %q)", c.URL)
	}
	switch c.Method {
	case "", http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete:
	default:
		return bad(p+".method", "%q is not one of POST, PUT, PATCH, DELETE", c.Method)
	}
	if c.Timeout < 0 {
		return bad(p+".timeout", "must not be negative (%s)", time.Duration(c.Timeout))
	}
	if c.Retry != nil {
		if err := c.Retry.check(p + ".retry"); err != nil {
			return err
		}
	}
	return c.checkHeaders(p)
}

// checkAMQP checks a call sent as a command.
func (c *CallSpec) checkAMQP(p string) error {
	a := c.AMQP
	switch {
	case c.URL != "":
		return bad(p+".amqp", "give url or amqp, not both")
	case c.Method != "":
		return bad(p+".method", "not allowed with amqp")
	case c.Timeout != 0:
		return bad(p+".timeout", "not allowed with amqp: give it as %s.amqp.timeout", p)
	case a.Exchange != "" && !namePattern.MatchString(a.Exchange):
		return bad(p+".amqp.exchange", "%q must be empty (the default exchange) or match %s", a.Exchange, namePattern)
	case a.RoutingKey == "":
		return bad(p+".amqp.routing_key", "is required")
	case len(a.RoutingKey) > 255:
		return bad(p+".amqp.routing_key", "is %d bytes, at most 255", len(a.RoutingKey))
	case a.Timeout < 0:
		return bad(p+".amqp.timeout", "must not be negative (%s)", time.Duration(a.Timeout))
	}
	if c.Retry != nil {
		if err := c.Retry.check(p + ".retry"); err != nil {
			return err
		}
	}
	return c.checkHeaders(p)
}

// checkHeaders checks the call's extra headers.
func (c *CallSpec) checkHeaders(p string) error {
	keys := slices.Sorted(func(yield func(string) bool) {
		for k := range c.Headers {
			if !yield(k) {
				return
			}
		}
	})
	canon := make(map[string]string, len(keys))
	for _, k := range keys {
		hp := member(p+".headers", k)
		if !validHeaderName(k) {
			return bad(hp, "%q is not a valid header name", k)
		}
		ck := http.CanonicalHeaderKey(k)
		if slices.Contains(reservedHeaders, ck) || strings.HasPrefix(ck, "X-Saga-") {
			return bad(hp, "%s is reserved: sagad or net/http sets it", ck)
		}
		if other, dup := canon[ck]; dup {
			return bad(hp, "names the same header as %q", other)
		}
		canon[ck] = k
		if !validHeaderValue(c.Headers[k]) {
			return bad(hp, "value contains a control character")
		}
	}
	return nil
}

func (r *RetrySpec) check(p string) error {
	switch {
	case r.InitialInterval < 0:
		return bad(p+".initial_interval", "must not be negative (%s)", time.Duration(r.InitialInterval))
	case r.MaxInterval < 0:
		return bad(p+".max_interval", "must not be negative (%s)", time.Duration(r.MaxInterval))
	case r.MaxInterval != 0 && r.MaxInterval < r.InitialInterval:
		return bad(p+".max_interval", "%s is below initial_interval %s", time.Duration(r.MaxInterval), time.Duration(r.InitialInterval))
	case r.Multiplier != 0 && (r.Multiplier < 1 || math.IsInf(r.Multiplier, 0) || math.IsNaN(r.Multiplier)):
		return bad(p+".multiplier", "%v is not zero or a finite number >= 1", r.Multiplier)
	case r.MaxElapsed < 0:
		return bad(p+".max_elapsed", "must not be negative (%s)", time.Duration(r.MaxElapsed))
	}
	return nil
}

// validHeaderName reports whether s is an RFC 9110 token.
func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// validHeaderValue reports whether s has no control characters but tabs.
func validHeaderValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}
