package httpstep

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"maps"
	"math"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/errors"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagad/sagad/internal/jsonw"
	"github.com/sagad/sagad/saga"
)

const (
	// maxResponseSize caps a success response's body.
	maxResponseSize = 1 << 20
	// maxErrorExcerpt caps how much of an error response's body an error
	// message quotes.
	maxErrorExcerpt = 200
	// maxDrain is how much of an unread body is read and discarded so that
	// the connection can be reused.
	maxDrain = 64 << 10
	// eventsKey is the reserved top-level key of a response object that
	// carries integration events.
	eventsKey = "_events"
)

// defaultClient is the client a nil *http.Client stands for, shared by all
// definitions so that they share connection pools.
var defaultClient = sync.OnceValue(func() *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			Proxy: http.ProxyFromEnvironment,
			DialContext: (&net.Dialer{
				Timeout:   10 * time.Second,
				KeepAlive: 30 * time.Second,
			}).DialContext,
			ForceAttemptHTTP2:     true,
			MaxIdleConns:          256,
			MaxIdleConnsPerHost:   32,
			IdleConnTimeout:       90 * time.Second,
			TLSHandshakeTimeout:   10 * time.Second,
			ExpectContinueTimeout: time.Second,
		},
		// A redirect followed by net/http can turn a POST into a GET without
		// its body; the participant's URL should be the final one.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
})

// caller calls one participant; its call method is a saga.Func.
type caller struct {
	client  *http.Client
	method  string
	url     string
	shown   string // url with any password redacted, for messages
	timeout time.Duration
	headers http.Header // the spec's extra headers, canonical
}

func newCaller(c *CallSpec, client *http.Client) *caller {
	cl := &caller{
		client:  client,
		method:  c.Method,
		url:     c.URL,
		shown:   c.URL,
		timeout: c.timeout(),
		headers: make(http.Header, len(c.Headers)),
	}
	if cl.method == "" {
		cl.method = http.MethodPost
	}
	if u, err := url.Parse(c.URL); err == nil {
		cl.shown = u.Redacted()
	}
	for k, v := range c.Headers {
		cl.headers.Set(k, v)
	}
	return cl
}

// requestBody is the JSON body sent to a participant: {"saga_id",
// "definition", "step", "phase", "attempt", "input", "data"}, with data's
// members in key order. It is built by hand because it is built for every
// call: strings are escaped as encoding/json escapes them, and input and
// data (JSON the engine has checked, checked again here for a direct
// caller) are compacted but otherwise sent as they are.
func requestBody(sc *saga.Call) ([]byte, error) {
	n := 128 + len(sc.SagaID) + len(sc.Definition) + len(sc.Step) + len(sc.Input)
	for k, v := range sc.Data {
		n += len(k) + len(v) + 4
	}
	b := make([]byte, 0, n)
	b = append(b, `{"saga_id":`...)
	b = jsonw.AppendString(b, sc.SagaID)
	b = append(b, `,"definition":`...)
	b = jsonw.AppendString(b, sc.Definition)
	b = append(b, `,"step":`...)
	b = jsonw.AppendString(b, sc.Step)
	b = append(b, `,"phase":`...)
	b = jsonw.AppendString(b, string(sc.Phase))
	b = append(b, `,"attempt":`...)
	b = strconv.AppendInt(b, int64(sc.Attempt), 10)
	b = append(b, `,"input":`...)
	var err error
	if b, err = appendRaw(b, sc.Input); err != nil {
		return nil, errors.Wrap(err, "input")
	}
	b = append(b, `,"data":{`...)
	for i, k := range slices.Sorted(maps.Keys(sc.Data)) {
		if i > 0 {
			b = append(b, ',')
		}
		b = jsonw.AppendString(b, k)
		b = append(b, ':')
		if b, err = appendRaw(b, sc.Data[k]); err != nil {
			return nil, errors.Wrapf(err, "data %q", k)
		}
	}
	return append(b, "}}"...), nil
}

// appendRaw appends raw JSON, compacted, or null when raw is empty.
func appendRaw(b, raw []byte) ([]byte, error) {
	if len(raw) == 0 {
		return append(b, "null"...), nil
	}
	buf := bytes.NewBuffer(b)
	if err := json.Compact(buf, raw); err != nil {
		return nil, errors.Wrap(err, "invalid JSON")
	}
	return buf.Bytes(), nil
}

// event is an entry of a response's "_events" array.
type event struct {
	Name       string            `json:"name"`
	RoutingKey string            `json:"routing_key"`
	Exchange   string            `json:"exchange"`
	Payload    json.RawMessage   `json:"payload"`
	Headers    map[string]string `json:"headers"`
}

// call runs one attempt: it sends the call to the participant and turns the
// answer into the step's output, events and error, as the package
// documentation describes.
// traceContext writes the W3C traceparent and tracestate headers.
var traceContext propagation.TraceContext

func (c *caller) call(ctx context.Context, sc *saga.Call) (json.RawMessage, error) {
	body, err := requestBody(sc)
	if err != nil {
		return nil, saga.Permanent(errors.Wrapf(err, "httpstep: %s %s: encode request", c.method, c.shown))
	}

	if err := ctx.Err(); err != nil {
		// The engine's context ended before the call began: nothing was
		// sent. Saying so here spares the classification below a guess.
		return nil, errors.Wrapf(err, "httpstep: %s %s: not sent", c.method, c.shown)
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var prog progress
	ctx = prog.trace(ctx)
	req, err := http.NewRequestWithContext(ctx, c.method, c.url, bytes.NewReader(body))
	if err != nil {
		return nil, saga.Permanent(errors.Wrapf(err, "httpstep: %s %s: build request", c.method, c.shown))
	}
	// Keys are written canonical, and the values share one backing array:
	// this runs for every call.
	vals := [...]string{"application/json", "sagad", "application/json", sc.IdempotencyKey,
		sc.SagaID, sc.Definition, sc.Step, string(sc.Phase), strconv.Itoa(sc.Attempt)}
	h := make(http.Header, len(c.headers)+len(vals))
	h["Accept"] = vals[0:1:1]
	h["User-Agent"] = vals[1:2:2]
	for k, v := range c.headers {
		h[k] = append([]string(nil), v...)
	}
	h["Content-Type"] = vals[2:3:3]
	if sc.IdempotencyKey != "" {
		h["Idempotency-Key"] = vals[3:4:4]
	}
	h["X-Saga-Id"] = vals[4:5:5]
	h["X-Saga-Definition"] = vals[5:6:6]
	h["X-Saga-Step"] = vals[6:7:7]
	h["X-Saga-Phase"] = vals[7:8:8]
	h["X-Saga-Attempt"] = vals[8:9:9]
	if trace.SpanContextFromContext(ctx).IsValid() {
		// The attempt's span (the engine traces the saga): the
		// participant continues the trace.
		traceContext.Inject(ctx, propagation.HeaderCarrier(h))
	}
	req.Header = h

	resp, err := c.client.Do(req)
	if err != nil {
		return nil, c.noAnswer(err, prog.mayHaveArrived())
	}
	defer func() {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxDrain))
		_ = resp.Body.Close()
	}()

	switch code := resp.StatusCode; {
	case code == http.StatusAccepted:
		// The participant answers later, through POST
		// /v1/sagas/{id}/steps/{step}/complete.
		return nil, saga.ErrPending
	case code >= 200 && code <= 299:
		return c.success(resp, sc)
	case code >= 500 || code == http.StatusRequestTimeout || code == http.StatusTooEarly || code == http.StatusTooManyRequests:
		err := c.statusError(resp)
		if d, ok := retryAfter(resp.Header.Get("Retry-After"), time.Now()); ok {
			err = saga.RetryAfter(err, d)
		}
		return nil, err
	default:
		return nil, saga.Permanent(c.statusError(resp))
	}
}

// noAnswer describes a call that got no answer. If the request may have
// reached the participant (sent is true), the error is marked
// saga.OutcomeUnknown: the participant may have acted, so the engine
// compensates the step if the saga turns around. Either way it is
// retryable: a call cut off by the engine's own context (shutdown, the
// saga's deadline) is handled by the engine before it looks at the error.
func (c *caller) noAnswer(err error, sent bool) error {
	// url.Error repeats the method and URL, unredacted on some paths.
	if ue := (*url.Error)(nil); errors.As(err, &ue) {
		err = ue.Err
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		err = errors.Wrapf(err, "httpstep: %s %s: no answer in time (attempt timeout %s)", c.method, c.shown, c.timeout)
	case sent:
		err = errors.Wrapf(err, "httpstep: %s %s: request sent, no answer", c.method, c.shown)
	default:
		err = errors.Wrapf(err, "httpstep: %s %s", c.method, c.shown)
	}
	if sent {
		return saga.OutcomeUnknown(err)
	}
	return err
}

// progress follows a request through net/http's client trace, to tell a
// request that cannot have reached the participant (no connection, a DNS
// failure) from one that may have. The hooks may run on the transport's
// goroutines.
type progress struct {
	asked atomic.Bool // a connection was asked for: the transport reports its progress
	wrote atomic.Bool // the request's headers were written to a connection
}

// trace returns ctx with hooks that record the request's progress in p.
func (p *progress) trace(ctx context.Context) context.Context {
	return httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		GetConn:      func(string) { p.asked.Store(true) },
		WroteHeaders: func() { p.wrote.Store(true) },
	})
}

// mayHaveArrived reports whether the participant may have received the
// request: its headers were written to a connection (the participant may
// start on them at once; HTTP/2 may report the body's end late), or the
// client's transport does not report its progress, so nothing is known.
func (p *progress) mayHaveArrived() bool {
	return p.wrote.Load() || !p.asked.Load()
}

// statusError describes a non-2xx answer, quoting the start of its body.
func (c *caller) statusError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorExcerpt))
	msg := strings.ToValidUTF8(string(b), "\uFFFD")
	switch {
	case resp.StatusCode >= 300 && resp.StatusCode <= 399:
		return errors.Newf("httpstep: %s %s answered %s, redirecting to %q: redirects are not followed, configure the final URL",
			c.method, c.shown, resp.Status, resp.Header.Get("Location"))
	case len(msg) == 0:
		return errors.Newf("httpstep: %s %s answered %s", c.method, c.shown, resp.Status)
	default:
		return errors.Newf("httpstep: %s %s answered %s: %q", c.method, c.shown, resp.Status, msg)
	}
}

// success turns a 2xx answer into the step's output and emits its events.
//
// The participant says it acted, so every failure here is marked
// saga.OutcomeUnknown: if the saga turns around, the step is compensated. A
// body that did not arrive in full (the attempt's timeout, a dropped
// connection) is retryable: the participant should give the same answer to
// the same idempotency key. A body that arrived and cannot be used (not
// JSON, too large, bad "_events") is also permanent: asking again would get
// the same answer.
func (c *caller) success(resp *http.Response, sc *saga.Call) (json.RawMessage, error) {
	unusable := func(err error) error { return saga.Permanent(saga.OutcomeUnknown(err)) }
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseSize+1))
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return nil, saga.OutcomeUnknown(errors.Wrapf(err, "httpstep: %s %s answered %s; read response: not in full in time (attempt timeout %s)",
				c.method, c.shown, resp.Status, c.timeout))
		}
		return nil, saga.OutcomeUnknown(errors.Wrapf(err, "httpstep: %s %s answered %s; read response", c.method, c.shown, resp.Status))
	}
	if len(body) > maxResponseSize {
		return nil, unusable(errors.Newf("httpstep: %s %s answered %s; response body exceeds %d bytes",
			c.method, c.shown, resp.Status, maxResponseSize))
	}
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return nil, nil
	}
	if !json.Valid(body) {
		return nil, unusable(errors.Newf("httpstep: %s %s answered %s with a body that is not valid JSON: %q",
			c.method, c.shown, resp.Status, strings.ToValidUTF8(excerpt(body, maxErrorExcerpt), "\uFFFD")))
	}
	out, events, err := splitEvents(body)
	if err != nil {
		return nil, unusable(errors.Wrapf(err, "httpstep: %s %s answered %s; response", c.method, c.shown, resp.Status))
	}
	// Validate them all first, so that a bad one emits none.
	for i := range events {
		if err := events[i].Validate(); err != nil {
			return nil, unusable(errors.Wrapf(err, "httpstep: %s %s answered %s; response: %s[%d]",
				c.method, c.shown, resp.Status, eventsKey, i))
		}
	}
	for i, ev := range events {
		if err := sc.Emit(ev); err != nil {
			return nil, unusable(errors.Wrapf(err, "httpstep: %s %s answered %s; response: %s[%d]",
				c.method, c.shown, resp.Status, eventsKey, i))
		}
	}
	return out, nil
}

// splitEvents returns the valid JSON body, compacted, without the
// top-level "_events" member of an object, and the events that member
// lists.
func splitEvents(body []byte) (json.RawMessage, []saga.Event, error) {
	if body[0] != '{' || !bytes.Contains(body, []byte(eventsKey)) && bytes.IndexByte(body, '\\') < 0 {
		// No "_events" member (the usual answer): the body, compacted, is
		// the output. A key may be spelt with escapes, so a backslash takes
		// the long way, which also rewrites the keys as encoding/json writes
		// them: the same JSON either way.
		b, err := compact(body)
		return b, nil, err
	}
	var out bytes.Buffer
	dec := json.NewDecoder(bytes.NewReader(body))
	if _, err := dec.Token(); err != nil {
		return nil, nil, errors.Wrap(err, "decode")
	}
	var raw json.RawMessage
	found := false
	out.WriteByte('{')
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, nil, errors.Wrap(err, "decode")
		}
		key, _ := tok.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, nil, errors.Wrapf(err, "decode %q", key)
		}
		if key == eventsKey {
			if found {
				return nil, nil, errors.Newf("%s is given twice", eventsKey)
			}
			found, raw = true, v
			continue
		}
		if out.Len() > 1 {
			out.WriteByte(',')
		}
		k, _ := json.Marshal(key)
		out.Write(k)
		out.WriteByte(':')
		if err := json.Compact(&out, v); err != nil {
			return nil, nil, errors.Wrapf(err, "compact %q", key)
		}
	}
	out.WriteByte('}')
	if !found || isNull(raw) {
		return out.Bytes(), nil, nil
	}
	if firstByte(raw) != '[' {
		return nil, nil, errors.Newf("%s must be an array of events, not %s", eventsKey, excerpt(raw, 40))
	}
	var elems []json.RawMessage
	if err := json.Unmarshal(raw, &elems); err != nil {
		return nil, nil, errors.Wrapf(err, "decode %s", eventsKey)
	}
	events := make([]saga.Event, 0, len(elems))
	for i, e := range elems {
		if firstByte(e) != '{' {
			return nil, nil, errors.Newf("%s[%d] must be an object, not %s", eventsKey, i, excerpt(e, 40))
		}
		d := json.NewDecoder(bytes.NewReader(e))
		d.DisallowUnknownFields()
		var ev event
		if err := d.Decode(&ev); err != nil {
			return nil, nil, errors.Wrapf(err, "%s[%d]", eventsKey, i)
		}
		events = append(events, saga.Event{
			Name:       ev.Name,
			RoutingKey: ev.RoutingKey,
			Exchange:   ev.Exchange,
			Payload:    ev.Payload,
			Headers:    ev.Headers,
		})
	}
	return out.Bytes(), events, nil
}

// compact returns body, which must be valid JSON, without insignificant
// space, as it is stored, in a slice of its own size.
func compact(body []byte) (json.RawMessage, error) {
	if !bytes.ContainsAny(body, " \t\r\n") {
		return bytes.Clone(body), nil
	}
	out := bytes.NewBuffer(make([]byte, 0, len(body)))
	if err := json.Compact(out, body); err != nil {
		return nil, errors.Wrap(err, "compact")
	}
	return out.Bytes(), nil
}

// retryAfter parses a Retry-After header value (delay seconds or an HTTP
// date) into a delay from now; a date in the past is no delay.
func retryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if strings.Trim(v, "0123456789") == "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil || n > uint64(math.MaxInt64/time.Second) {
			return time.Duration(math.MaxInt64), true
		}
		return time.Duration(n) * time.Second, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	return max(t.Sub(now), 0), true
}
