package client

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/cockroachdb/errors"
	"go.opentelemetry.io/otel/propagation"
)

// Client calls a sagad daemon's HTTP API. Its methods are safe for
// concurrent use. Failed calls return a *Problem (errors.As) when the
// daemon answered, and a wrapped transport error when it did not.
type Client struct {
	base  *url.URL
	token string
	http  *http.Client
}

// New returns a client for the daemon at baseURL (such as
// http://127.0.0.1:8080), sending token as a bearer token when it is not
// empty. httpClient nil: a client without an overall timeout; calls are
// bounded by their contexts. A client with a Timeout caps the waits that
// Start asks for below it, so that a started saga's id is never lost to
// the timeout.
func New(baseURL, token string, httpClient *http.Client) (*Client, error) {
	u, err := url.Parse(strings.TrimRight(baseURL, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, errors.Newf("client: base URL %q: want http://host:port or https://host:port", baseURL)
	}
	if httpClient == nil {
		httpClient = &http.Client{}
	}
	return &Client{base: u, token: token, http: httpClient}, nil
}

// DuplicateHeader is set to "true" on the answer to a start whose
// idempotency key named an existing saga.
const DuplicateHeader = "Sagad-Duplicate"

// StatusOf returns the HTTP status of a Problem error, or 0.
func StatusOf(err error) int {
	var p *Problem
	if errors.As(err, &p) {
		return p.Status
	}
	return 0
}

// do sends a request and decodes a 2xx answer into out (if not nil).
func (c *Client) do(ctx context.Context, method, path string, query url.Values, body any, out any) (int, error) {
	code, _, err := c.doH(ctx, method, path, query, body, out)
	return code, err
}

// doH is do that also returns the answer's headers. path is escaped
// already: its segments went through url.PathEscape, so that a name or id
// holding '/', '?', '%' or a space stays one segment.
func (c *Client) doH(ctx context.Context, method, path string, query url.Values, body any, out any) (int, http.Header, error) {
	u := *c.base
	// Path is the decoded form and RawPath the escaped one: appending the
	// escaped path to Path would have u.String() escape its '%' again.
	u.RawPath = c.base.EscapedPath() + path
	p, err := url.PathUnescape(u.RawPath)
	if err != nil {
		return 0, nil, errors.Wrapf(err, "client: %s %s", method, path)
	}
	u.Path = p
	u.RawQuery = query.Encode()
	var rd io.Reader
	if body != nil {
		b, ok := body.([]byte)
		if !ok {
			var err error
			if b, err = json.Marshal(body); err != nil {
				return 0, nil, errors.Wrapf(err, "client: %s %s: encode body", method, path)
			}
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return 0, nil, errors.Wrapf(err, "client: %s %s", method, path)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	// The caller's span, if ctx has one: a saga started so links to it.
	traceContext.Inject(ctx, propagation.HeaderCarrier(req.Header))
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, errors.Wrapf(err, "client: %s %s", method, path)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return resp.StatusCode, resp.Header, errors.Wrapf(err, "client: %s %s: read answer", method, path)
	}
	if resp.StatusCode >= 300 {
		p := &Problem{}
		if json.Unmarshal(data, p) != nil || p.Status == 0 {
			p = &Problem{Status: resp.StatusCode, Title: http.StatusText(resp.StatusCode), Detail: strings.TrimSpace(string(data))}
		}
		return resp.StatusCode, resp.Header, p
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			return resp.StatusCode, resp.Header, errors.Wrapf(err, "client: %s %s: decode answer", method, path)
		}
	}
	return resp.StatusCode, resp.Header, nil
}

// PutDefinition registers a declarative definition (its JSON). Registering
// a changed definition adds a version; running sagas keep theirs.
func (c *Client) PutDefinition(ctx context.Context, name string, spec []byte) (*Definition, error) {
	var d Definition
	_, err := c.do(ctx, http.MethodPut, "/v1/definitions/"+url.PathEscape(name), nil, spec, &d)
	return &d, err
}

// Definition returns the latest version of a definition.
func (c *Client) Definition(ctx context.Context, name string) (*Definition, error) {
	var d Definition
	_, err := c.do(ctx, http.MethodGet, "/v1/definitions/"+url.PathEscape(name), nil, nil, &d)
	return &d, err
}

// Definitions returns the latest version of every definition.
func (c *Client) Definitions(ctx context.Context) ([]Definition, error) {
	var out struct {
		Definitions []Definition `json:"definitions"`
	}
	_, err := c.do(ctx, http.MethodGet, "/v1/definitions", nil, nil, &out)
	return out.Definitions, err
}

// StartOptions are the optional parts of a start.
type StartOptions struct {
	// IdempotencyKey makes the start safe to repeat: a second start with
	// the same key, definition and input (compared as JSON values) returns
	// the first saga (StartResult.Existing); one with another definition
	// or input fails with a 409 Problem (type ending in
	// idempotency-key-reused). A key is valid UTF-8 of at most 256 bytes;
	// other keys fail with a 400 Problem.
	IdempotencyKey string
	// Wait, when positive, waits up to this long for the saga to end.
	Wait time.Duration
}

// StartResult is what a start returns.
type StartResult struct {
	ID     string
	Status string
	// Saga is the whole saga when the daemon returned it: it ended within
	// Wait, or the idempotency key named an existing saga (Existing).
	Saga     *Saga
	Existing bool
}

// Start starts a saga of definition with input (any JSON-encodable value,
// or json.RawMessage).
func (c *Client) Start(ctx context.Context, definition string, input any, o StartOptions) (*StartResult, error) {
	req := StartRequest{Definition: definition, IdempotencyKey: o.IdempotencyKey}
	if input != nil {
		raw, ok := input.(json.RawMessage)
		if !ok {
			var err error
			if raw, err = json.Marshal(input); err != nil {
				return nil, errors.Wrap(err, "client: start: encode input")
			}
		}
		req.Input = raw
	}
	q := url.Values{}
	if wait := o.Wait; wait > 0 {
		if t := c.http.Timeout; t > 0 {
			wait = min(wait, t*3/4)
		}
		q.Set("wait", wait.String())
	}
	var raw json.RawMessage
	code, h, err := c.doH(ctx, http.MethodPost, "/v1/sagas", q, req, &raw)
	if err != nil {
		return nil, err
	}
	if code == http.StatusAccepted {
		var st Started
		if err := json.Unmarshal(raw, &st); err != nil {
			return nil, errors.Wrap(err, "client: start: decode answer")
		}
		return &StartResult{ID: st.ID, Status: st.Status}, nil
	}
	var s Saga
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, errors.Wrap(err, "client: start: decode answer")
	}
	return &StartResult{ID: s.ID, Status: s.Status, Saga: &s, Existing: h.Get(DuplicateHeader) == "true"}, nil
}

// Get returns a saga.
func (c *Client) Get(ctx context.Context, id string) (*Saga, error) {
	var s Saga
	_, err := c.do(ctx, http.MethodGet, "/v1/sagas/"+url.PathEscape(id), nil, nil, &s)
	return &s, err
}

// ListOptions filter List.
type ListOptions struct {
	Status     string
	Definition string
	Limit      int
	Cursor     string
}

// List returns a page of sagas, newest first. Its sagas have no Input and
// no Data: Get returns those.
func (c *Client) List(ctx context.Context, o ListOptions) (*Page, error) {
	q := url.Values{}
	for k, v := range map[string]string{"status": o.Status, "definition": o.Definition, "cursor": o.Cursor} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if o.Limit > 0 {
		q.Set("limit", strconv.Itoa(o.Limit))
	}
	var p Page
	_, err := c.do(ctx, http.MethodGet, "/v1/sagas", q, nil, &p)
	return &p, err
}

// Log returns a saga's step log, oldest first.
func (c *Client) Log(ctx context.Context, id string) ([]LogEntry, error) {
	var out struct {
		Entries []LogEntry `json:"entries"`
	}
	_, err := c.do(ctx, http.MethodGet, "/v1/sagas/"+url.PathEscape(id)+"/log", nil, nil, &out)
	return out.Entries, err
}

// Complete delivers a participant's answer to a call it answered 202
// Accepted. It reports whether the answer was used (false: no attempt
// waited for it any more; it was recorded and ignored).
func (c *Client) Complete(ctx context.Context, id, step string, req CompleteRequest) (bool, error) {
	var out Completed
	_, err := c.do(ctx, http.MethodPost, "/v1/sagas/"+url.PathEscape(id)+"/steps/"+url.PathEscape(step)+"/complete", nil, req, &out)
	return out.Applied, err
}

// Pause stops a running or compensating saga once its attempts in flight
// have ended; it starts none until Resume (see engine.Engine.Pause).
func (c *Client) Pause(ctx context.Context, id string) error {
	_, err := c.do(ctx, http.MethodPost, "/v1/sagas/"+url.PathEscape(id)+"/pause", nil, nil, nil)
	return err
}

// Resume ends a saga's pause: it goes on where it stopped.
func (c *Client) Resume(ctx context.Context, id string) error {
	_, err := c.do(ctx, http.MethodPost, "/v1/sagas/"+url.PathEscape(id)+"/resume", nil, nil, nil)
	return err
}

// Abort asks a running saga to compensate.
func (c *Client) Abort(ctx context.Context, id string) error {
	_, err := c.do(ctx, http.MethodPost, "/v1/sagas/"+url.PathEscape(id)+"/abort", nil, nil, nil)
	return err
}

// Retry retries a failed saga's failed compensation, retries a saga that
// waits for a retry now, or resumes a parked saga (see engine.Engine.Retry).
func (c *Client) Retry(ctx context.Context, id string) error {
	_, err := c.do(ctx, http.MethodPost, "/v1/sagas/"+url.PathEscape(id)+"/retry", nil, nil, nil)
	return err
}

// RetryWithInput is Retry with a corrected input: it replaces the saga's
// input for every attempt that follows, and the saga's log records the old
// and the new one (see engine.RetryWithInput).
func (c *Client) RetryWithInput(ctx context.Context, id string, input json.RawMessage) error {
	_, err := c.do(ctx, http.MethodPost, "/v1/sagas/"+url.PathEscape(id)+"/retry", nil, RetryRequest{Input: input}, nil)
	return err
}

// Resolve marks a failed saga, or one whose compensation waits for a
// retry, as handled by hand, with a note saying how and who did it; both
// are kept in its log.
func (c *Client) Resolve(ctx context.Context, id, note, by string) error {
	_, err := c.do(ctx, http.MethodPost, "/v1/sagas/"+url.PathEscape(id)+"/resolve", nil, ResolveRequest{Note: note, By: by}, nil)
	return err
}

// Wait polls a saga until it has ended, using the daemon's wait support:
// each call waits up to 30s on the daemon.
func (c *Client) Wait(ctx context.Context, id string) (*Saga, error) {
	for {
		var s Saga
		wait := 30 * time.Second
		if t := c.http.Timeout; t > 0 {
			wait = min(wait, t*3/4)
		}
		_, err := c.do(ctx, http.MethodGet, "/v1/sagas/"+url.PathEscape(id), url.Values{"wait": {wait.String()}}, nil, &s)
		if err != nil || s.Finished() {
			return &s, err
		}
		if err := ctx.Err(); err != nil {
			return &s, err
		}
	}
}

// OutboxStats returns the outbox's depth and age.
func (c *Client) OutboxStats(ctx context.Context) (*OutboxStats, error) {
	var st OutboxStats
	_, err := c.do(ctx, http.MethodGet, "/v1/outbox/stats", nil, nil, &st)
	return &st, err
}

// OutboxList lists outbox events in one status (new when empty).
func (c *Client) OutboxList(ctx context.Context, status, cursor string, limit int) (*OutboxPage, error) {
	q := url.Values{}
	if status != "" {
		q.Set("status", status)
	}
	if cursor != "" {
		q.Set("cursor", cursor)
	}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	var p OutboxPage
	_, err := c.do(ctx, http.MethodGet, "/v1/outbox", q, nil, &p)
	return &p, err
}

// OutboxRequeue re-queues an outbox event that was not produced.
func (c *Client) OutboxRequeue(ctx context.Context, id string) error {
	_, err := c.do(ctx, http.MethodPost, "/v1/outbox/"+url.PathEscape(id)+"/requeue", nil, nil, nil)
	return err
}

// OutboxDiscard deletes an event the relay is done with (produced, or
// not_produced, whose saga's later events then go on). An event waiting to
// be published is a 409 Problem.
func (c *Client) OutboxDiscard(ctx context.Context, id string) error {
	_, err := c.do(ctx, http.MethodDelete, "/v1/outbox/"+url.PathEscape(id), nil, nil, nil)
	return err
}

// Ready reports whether the daemon is ready (recovery done, database open).
func (c *Client) Ready(ctx context.Context) error {
	_, err := c.do(ctx, http.MethodGet, "/readyz", nil, nil, nil)
	return err
}

// Backup writes a consistent copy of the daemon's database file to w and
// returns its size. The daemon cuts off a transfer that takes no data for
// its stall timeout (30s by default), so w must keep up; a transfer that
// ends short is an error.
// traceContext writes the W3C traceparent and tracestate headers.
var traceContext propagation.TraceContext

func (c *Client) Backup(ctx context.Context, w io.Writer) (int64, error) {
	u := *c.base
	u.Path += "/v1/backup"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return 0, errors.Wrap(err, "client: backup")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, errors.Wrap(err, "client: backup")
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		p := &Problem{}
		if json.Unmarshal(data, p) != nil || p.Status == 0 {
			p = &Problem{Status: resp.StatusCode, Title: http.StatusText(resp.StatusCode), Detail: strings.TrimSpace(string(data))}
		}
		return 0, p
	}
	n, err := io.Copy(w, resp.Body)
	if err == nil && resp.ContentLength >= 0 && n != resp.ContentLength {
		err = errors.Newf("got %d of %d bytes", n, resp.ContentLength)
	}
	return n, errors.Wrap(err, "client: backup")
}
