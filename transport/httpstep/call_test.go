package httpstep_test

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/errors"

	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/transport/httpstep"
)

// received is a request as a participant saw it.
type received struct {
	Method string
	Path   string
	Header http.Header
	Body   string
}

// participant is a real HTTP server that records every request and
// answers it with respond.
type participant struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []received
}

func newParticipant(t *testing.T, respond http.HandlerFunc) *participant {
	t.Helper()
	p := &participant{}
	p.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("participant: read request body: %v", err)
		}
		p.mu.Lock()
		p.reqs = append(p.reqs, received{Method: r.Method, Path: r.URL.Path, Header: r.Header.Clone(), Body: string(body)})
		p.mu.Unlock()
		respond(w, r)
	}))
	t.Cleanup(p.Close)
	return p
}

func (p *participant) requests() []received {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]received(nil), p.reqs...)
}

// only returns the one request the participant received.
func (p *participant) only(t *testing.T) received {
	t.Helper()
	reqs := p.requests()
	if len(reqs) != 1 {
		t.Fatalf("participant received %d requests, want 1", len(reqs))
	}
	return reqs[0]
}

// answer returns a handler that answers with status, headers and body.
func answer(status int, body string, headers ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i+1 < len(headers); i += 2 {
			w.Header().Set(headers[i], headers[i+1])
		}
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}
}

// define builds the definition of spec with client (nil: the default).
func define(t *testing.T, spec *httpstep.Spec, client *http.Client) *saga.Definition {
	t.Helper()
	d, err := spec.Definition("order", client)
	if err != nil {
		t.Fatalf("Definition: %v", err)
	}
	return d
}

// action returns the action of a one-step definition calling c.
func action(t *testing.T, c httpstep.CallSpec) saga.Func {
	t.Helper()
	return define(t, &httpstep.Spec{Steps: []httpstep.StepSpec{{Name: "reserve", Action: &c}}}, nil).Steps[0].Action
}

const sagaID = "01JABCDEFGHJKMNPQRSTVWXYZ0"

// newCall returns a Call as the engine builds it for an attempt of phase.
func newCall(phase saga.Phase, attempt int) *saga.Call {
	return &saga.Call{
		SagaID:         sagaID,
		Definition:     "order",
		Step:           "reserve",
		Phase:          phase,
		Attempt:        attempt,
		IdempotencyKey: sagaID + "/reserve/" + string(phase),
		Input:          json.RawMessage(`{"order": 1001, "item": "book"}`),
		Data:           map[string]json.RawMessage{"quote": json.RawMessage(`{"price":12}`)},
	}
}

func TestRequest(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		call       httpstep.CallSpec
		sc         *saga.Call
		wantMethod string
		wantBody   string
		wantHeader map[string]string
	}{
		{
			name:       "defaults",
			sc:         newCall(saga.PhaseAction, 2),
			wantMethod: "POST",
			wantBody: `{"saga_id":"` + sagaID + `","definition":"order","step":"reserve","phase":"action","attempt":2,` +
				`"input":{"order":1001,"item":"book"},"data":{"quote":{"price":12}}}`,
			wantHeader: map[string]string{
				"Content-Type":      "application/json",
				"Accept":            "application/json",
				"User-Agent":        "sagad",
				"Idempotency-Key":   sagaID + "/reserve/action",
				"X-Saga-Id":         sagaID,
				"X-Saga-Definition": "order",
				"X-Saga-Step":       "reserve",
				"X-Saga-Phase":      "action",
				"X-Saga-Attempt":    "2",
			},
		},
		{
			name: "custom method and headers, no input or data",
			call: httpstep.CallSpec{Method: "PUT", Headers: map[string]string{
				"authorization": "Bearer t0ken", "User-Agent": "shop/1", "X-Tenant": "acme",
			}},
			sc: &saga.Call{SagaID: sagaID, Definition: "order", Step: "reserve", Phase: saga.PhaseCompensation,
				Attempt: 1, IdempotencyKey: sagaID + "/reserve/compensation"},
			wantMethod: "PUT",
			wantBody: `{"saga_id":"` + sagaID + `","definition":"order","step":"reserve","phase":"compensation","attempt":1,` +
				`"input":null,"data":{}}`,
			wantHeader: map[string]string{
				"Content-Type":    "application/json",
				"Accept":          "application/json",
				"User-Agent":      "shop/1",
				"Authorization":   "Bearer t0ken",
				"X-Tenant":        "acme",
				"Idempotency-Key": sagaID + "/reserve/compensation",
				"X-Saga-Phase":    "compensation",
				"X-Saga-Attempt":  "1",
			},
		},
		{
			// Raw JSON is compacted and otherwise sent as it is (encoding/json
			// would escape <, > and &: the same JSON).
			name: "data of several steps, in key order",
			sc: &saga.Call{SagaID: sagaID, Definition: "order", Step: "ship", Phase: saga.PhaseAction,
				Input: json.RawMessage(` "a\u00e9 <&>" `), Data: map[string]json.RawMessage{
					"reserve": json.RawMessage(`{"id": "r1"}`), "charge": json.RawMessage(`[1, 2]`), "audit": json.RawMessage(`null`)}},
			wantMethod: "POST",
			wantBody: `{"saga_id":"` + sagaID + `","definition":"order","step":"ship","phase":"action","attempt":0,` +
				`"input":"a\u00e9 <&>","data":{"audit":null,"charge":[1,2],"reserve":{"id":"r1"}}}`,
		},
		{name: "PATCH", call: httpstep.CallSpec{Method: "PATCH"}, sc: newCall(saga.PhaseAction, 1), wantMethod: "PATCH"},
		{name: "DELETE", call: httpstep.CallSpec{Method: "DELETE"}, sc: newCall(saga.PhaseAction, 1), wantMethod: "DELETE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := newParticipant(t, answer(200, `{"id": "r1"}`))
			tt.call.URL = p.URL + "/reserve"
			out, err := action(t, tt.call)(context.Background(), tt.sc)
			if err != nil {
				t.Fatalf("call: %v", err)
			}
			if string(out) != `{"id":"r1"}` {
				t.Errorf("output = %s, want {\"id\":\"r1\"}", out)
			}
			r := p.only(t)
			if r.Method != tt.wantMethod || r.Path != "/reserve" {
				t.Errorf("request = %s %s, want %s /reserve", r.Method, r.Path, tt.wantMethod)
			}
			if tt.wantBody != "" && r.Body != tt.wantBody {
				t.Errorf("body =\n%s\nwant\n%s", r.Body, tt.wantBody)
			}
			for k, want := range tt.wantHeader {
				if got := r.Header.Values(k); len(got) != 1 || got[0] != want {
					t.Errorf("header %s = %q, want [%q]", k, got, want)
				}
			}
		})
	}
}

// TestPhases calls a step's three functions as the engine would and checks
// that each reaches its own URL with its own phase and idempotency key.
func TestPhases(t *testing.T) {
	t.Parallel()
	p := newParticipant(t, answer(204, ""))
	def := define(t, &httpstep.Spec{Steps: []httpstep.StepSpec{{
		Name:         "reserve",
		Action:       &httpstep.CallSpec{URL: p.URL + "/reserve"},
		Fallback:     &httpstep.CallSpec{URL: p.URL + "/reserve-elsewhere"},
		Compensation: &httpstep.CallSpec{URL: p.URL + "/release", Method: "DELETE"},
	}}}, nil)
	st := def.Steps[0]
	for _, c := range []struct {
		f     saga.Func
		phase saga.Phase
	}{{st.Action, saga.PhaseAction}, {st.Fallback, saga.PhaseFallback}, {st.Compensation, saga.PhaseCompensation}} {
		out, err := c.f(context.Background(), newCall(c.phase, 1))
		if err != nil || out != nil {
			t.Fatalf("%s = %s, %v; want no output, no error", c.phase, out, err)
		}
	}
	reqs := p.requests()
	want := []string{
		"POST /reserve action " + sagaID + "/reserve/action",
		"POST /reserve-elsewhere fallback " + sagaID + "/reserve/fallback",
		"DELETE /release compensation " + sagaID + "/reserve/compensation",
	}
	var got []string
	for _, r := range reqs {
		got = append(got, r.Method+" "+r.Path+" "+r.Header.Get("X-Saga-Phase")+" "+r.Header.Get("Idempotency-Key"))
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("requests =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestResponses(t *testing.T) {
	t.Parallel()
	type delay struct{ min, max time.Duration }
	date := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	tests := []struct {
		name          string
		respond       http.HandlerFunc
		wantOut       string // "" for no output
		wantEvents    []saga.Event
		wantPermanent bool
		wantRetryable bool
		wantUnknown   bool     // the error is marked saga.OutcomeUnknown
		wantErr       []string // substrings of the error
		notErr        []string // not substrings of the error
		wantDelay     *delay   // the Retry-After delay, if any
	}{
		{name: "200 object", respond: answer(200, `{"id": "r1", "items": [1, 2]}`+"\n"), wantOut: `{"id":"r1","items":[1,2]}`},
		{name: "201 array", respond: answer(201, ` [1, 2] `), wantOut: `[1,2]`},
		{name: "200 string", respond: answer(200, `"ok"`), wantOut: `"ok"`},
		{name: "200 empty", respond: answer(200, ``)},
		{name: "200 whitespace", respond: answer(200, " \n")},
		{name: "204", respond: answer(204, ``)},
		{
			name: "events emitted and stripped",
			respond: answer(200, `{"id": "r1", "_events": [
				{"name": "stock.reserved", "routing_key": "stock.eu", "exchange": "inventory", "payload": {"id": "r1"}, "headers": {"tenant": "acme"}},
				{"name": "audit.logged", "payload": null}
			], "n": 2}`),
			wantOut: `{"id":"r1","n":2}`,
			wantEvents: []saga.Event{
				{Name: "stock.reserved", RoutingKey: "stock.eu", Exchange: "inventory", Payload: json.RawMessage(`{"id": "r1"}`), Headers: map[string]string{"tenant": "acme"}},
				{Name: "audit.logged", Payload: json.RawMessage(`null`)},
			},
		},
		{name: "events only", respond: answer(200, `{"_events": [{"name": "e", "payload": 1}]}`), wantOut: `{}`,
			wantEvents: []saga.Event{{Name: "e", Payload: json.RawMessage(`1`)}}},
		{name: "events under an escaped key", respond: answer(200, `{"\u005fevents": [{"name": "e", "payload": 1}], "s": "a\"b"}`),
			wantOut: `{"s":"a\"b"}`, wantEvents: []saga.Event{{Name: "e", Payload: json.RawMessage(`1`)}}},
		{name: "compact object passed through", respond: answer(200, `{"s":"a b","n":[1,{"x":null}]}`), wantOut: `{"s":"a b","n":[1,{"x":null}]}`},
		{name: "null events", respond: answer(200, `{"_events": null, "a": 1}`), wantOut: `{"a":1}`},
		{name: "_events below the top level is output", respond: answer(200, `{"a": {"_events": 1}}`), wantOut: `{"a":{"_events":1}}`},
		{name: "invalid event", respond: answer(200, `{"_events": [{"name": "ok", "payload": 1}, {"name": "bad name", "payload": 1}]}`),
			wantPermanent: true, wantUnknown: true, wantErr: []string{"_events[1]", `"bad name"`}},
		{name: "event without payload", respond: answer(200, `{"_events": [{"name": "e"}]}`),
			wantPermanent: true, wantUnknown: true, wantErr: []string{"_events[0]", "payload is empty"}},
		{name: "event with unknown field", respond: answer(200, `{"_events": [{"name": "e", "payload": 1, "routing": "x"}]}`),
			wantPermanent: true, wantUnknown: true, wantErr: []string{"_events[0]", `unknown field "routing"`}},
		{name: "event not an object", respond: answer(200, `{"_events": ["e"]}`),
			wantPermanent: true, wantUnknown: true, wantErr: []string{`_events[0] must be an object`}},
		{name: "events not an array", respond: answer(200, `{"_events": {"name": "e"}}`),
			wantPermanent: true, wantUnknown: true, wantErr: []string{"_events must be an array"}},
		{name: "events twice", respond: answer(200, `{"_events": [], "_events": []}`),
			wantPermanent: true, wantUnknown: true, wantErr: []string{"_events is given twice"}},
		{name: "invalid JSON", respond: answer(200, `{"id": r1}`),
			wantPermanent: true, wantUnknown: true, wantErr: []string{"POST ", "/step answered 200 OK with a body that is not valid JSON", `{\"id\": r1}`}},
		{name: "oversized body", respond: answer(200, `"`+strings.Repeat("a", 1<<20)+`"`),
			wantPermanent: true, wantUnknown: true, wantErr: []string{"response body exceeds 1048576 bytes"}},
		{name: "400", respond: answer(400, `{"error": "no such item"}`),
			wantPermanent: true, wantErr: []string{"POST ", "/step answered 400 Bad Request: ", `"{\"error\": \"no such item\"}"`}},
		{name: "404 empty", respond: answer(404, ``), wantPermanent: true, wantErr: []string{"/step answered 404 Not Found"}},
		{name: "409", respond: answer(409, `conflict`), wantPermanent: true, wantErr: []string{"answered 409 Conflict: \"conflict\""}},
		{name: "422 long body quoted to 200 bytes", respond: answer(422, strings.Repeat("x", 200)+strings.Repeat("y", 800)),
			wantPermanent: true, wantErr: []string{`: "` + strings.Repeat("x", 200) + `"`}, notErr: []string{strings.Repeat("x", 200) + "y"}},
		{name: "302 not followed", respond: answer(302, ``, "Location", "https://elsewhere.example/step"),
			wantPermanent: true, wantErr: []string{"answered 302 Found, redirecting to \"https://elsewhere.example/step\""}},
		{name: "408 with Retry-After seconds", respond: answer(408, ``, "Retry-After", "3"),
			wantRetryable: true, wantErr: []string{"answered 408 Request Timeout"}, wantDelay: &delay{3 * time.Second, 3 * time.Second}},
		{name: "425", respond: answer(425, `later`), wantRetryable: true, wantErr: []string{"answered 425 Too Early: \"later\""}},
		{name: "429 with Retry-After date", respond: answer(429, ``, "Retry-After", date.Format(http.TimeFormat)),
			wantRetryable: true, wantErr: []string{"answered 429 Too Many Requests"},
			wantDelay: &delay{time.Until(date) - 2*time.Second, time.Until(date) + time.Second}},
		{name: "500", respond: answer(500, `boom`), wantRetryable: true, wantErr: []string{"answered 500 Internal Server Error: \"boom\""}},
		{name: "503 with Retry-After seconds", respond: answer(503, ``, "Retry-After", "7"),
			wantRetryable: true, wantDelay: &delay{7 * time.Second, 7 * time.Second}},
		{name: "503 with Retry-After in the past", respond: answer(503, ``, "Retry-After", "Sun, 06 Nov 1994 08:49:37 GMT"),
			wantRetryable: true, wantDelay: &delay{0, 0}},
		{name: "503 with a bad Retry-After", respond: answer(503, ``, "Retry-After", "soon"), wantRetryable: true},
		{name: "404 Retry-After ignored", respond: answer(404, ``, "Retry-After", "3"), wantPermanent: true},
		{name: "body cut short", respond: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "100")
			w.WriteHeader(200)
			_, _ = io.WriteString(w, `{"id":`)
			// Returning now leaves 94 bytes unsent: net/http closes the
			// connection.
		}, wantRetryable: true, wantUnknown: true, wantErr: []string{"read response"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := newParticipant(t, tt.respond)
			sc := newCall(saga.PhaseAction, 1)
			out, err := action(t, httpstep.CallSpec{URL: p.URL + "/step"})(context.Background(), sc)
			events := sc.Emitted()
			if string(out) != tt.wantOut {
				t.Errorf("output = %q, want %q", out, tt.wantOut)
			}
			wantErr := tt.wantPermanent || tt.wantRetryable
			switch {
			case wantErr && err == nil:
				t.Fatalf("no error, want one (permanent: %v)", tt.wantPermanent)
			case !wantErr && err != nil:
				t.Fatalf("error %v, want none", err)
			case err != nil && saga.IsPermanent(err) != tt.wantPermanent:
				t.Errorf("error %q: permanent = %v, want %v", err, saga.IsPermanent(err), tt.wantPermanent)
			}
			if err != nil && saga.IsOutcomeUnknown(err) != tt.wantUnknown {
				t.Errorf("error %.300q: outcome unknown = %v, want %v", err, saga.IsOutcomeUnknown(err), tt.wantUnknown)
			}
			for _, s := range tt.wantErr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
			for _, s := range tt.notErr {
				if strings.Contains(err.Error(), s) {
					t.Errorf("error %.300q contains %.20q", err, s)
				}
			}
			d, ok := saga.RetryAfterDelay(err)
			switch {
			case tt.wantDelay == nil && ok:
				t.Errorf("error carries Retry-After %s, want none", d)
			case tt.wantDelay != nil && !ok:
				t.Errorf("error %q carries no Retry-After, want %s", err, tt.wantDelay.min)
			case tt.wantDelay != nil && (d < tt.wantDelay.min || d > tt.wantDelay.max):
				t.Errorf("Retry-After delay = %s, want %s to %s", d, tt.wantDelay.min, tt.wantDelay.max)
			}
			if err != nil && len(events) > 0 {
				t.Errorf("%d events emitted by a failed attempt", len(events))
			}
			if err == nil && !reflect.DeepEqual(normalize(events), normalize(tt.wantEvents)) {
				t.Errorf("events = %+v, want %+v", events, tt.wantEvents)
			}
		})
	}
}

// normalize makes events comparable with reflect.DeepEqual: nil and empty
// headers are the same, payloads are compared compacted.
func normalize(evs []saga.Event) []saga.Event {
	var out []saga.Event
	for _, ev := range evs {
		var b bytes.Buffer
		if err := json.Compact(&b, ev.Payload); err == nil {
			ev.Payload = b.Bytes()
		}
		if len(ev.Headers) == 0 {
			ev.Headers = nil
		}
		out = append(out, ev)
	}
	return out
}

func TestNoAnswer(t *testing.T) {
	t.Parallel()

	t.Run("attempt timeout", func(t *testing.T) {
		t.Parallel()
		release := make(chan struct{})
		p := newParticipant(t, func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done():
			case <-release:
			}
		})
		t.Cleanup(func() { close(release) }) // runs before the server closes
		f := action(t, httpstep.CallSpec{URL: p.URL + "/slow", Timeout: httpstep.Duration(50 * time.Millisecond)})
		// The parent's deadline only stops the test from hanging if the
		// call's own timeout is not applied.
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		start := time.Now()
		_, err := f(ctx, newCall(saga.PhaseAction, 1))
		if err == nil || saga.IsPermanent(err) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("error = %v, want a retryable context.DeadlineExceeded", err)
		}
		if elapsed := time.Since(start); elapsed > 10*time.Second {
			t.Errorf("the call gave up after %s, not after its 50ms timeout", elapsed)
		}
		if want := "httpstep: POST " + p.URL + "/slow: no answer in time (attempt timeout 50ms)"; !strings.HasPrefix(err.Error(), want) {
			t.Errorf("error %q does not start with %q", err, want)
		}
	})

	t.Run("connection refused", func(t *testing.T) {
		t.Parallel()
		srv := httptest.NewServer(http.NotFoundHandler())
		url := srv.URL + "/gone"
		srv.Close()
		_, err := action(t, httpstep.CallSpec{URL: url})(context.Background(), newCall(saga.PhaseAction, 1))
		if err == nil || saga.IsPermanent(err) {
			t.Fatalf("error = %v, want a retryable error", err)
		}
		if want := "httpstep: POST " + url + ": "; !strings.HasPrefix(err.Error(), want) || !strings.Contains(err.Error(), "connection refused") {
			t.Errorf("error %q does not start with %q and say connection refused", err, want)
		}
	})

	t.Run("cancelled", func(t *testing.T) {
		t.Parallel()
		p := newParticipant(t, answer(200, `{}`))
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := action(t, httpstep.CallSpec{URL: p.URL})(ctx, newCall(saga.PhaseAction, 1))
		if err == nil || saga.IsPermanent(err) || !errors.Is(err, context.Canceled) {
			t.Fatalf("error = %v, want a retryable context.Canceled (the engine's breaker ignores it)", err)
		}
	})

	t.Run("password redacted", func(t *testing.T) {
		t.Parallel()
		srv := httptest.NewServer(http.NotFoundHandler())
		url := strings.Replace(srv.URL, "http://", "http://user:secret@", 1)
		srv.Close()
		_, err := action(t, httpstep.CallSpec{URL: url})(context.Background(), newCall(saga.PhaseAction, 1))
		if err == nil || strings.Contains(err.Error(), "secret") {
			t.Fatalf("error = %v, want one without the password", err)
		}
	})
}

// stall returns a handler that calls start, if any, and then waits without
// answering until the client goes away (it closes the connection when its
// call times out). The one-minute bound only keeps a broken test from
// hanging: nothing waits for it.
func stall(start http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if start != nil {
			start(w, r)
			w.(http.Flusher).Flush()
		}
		select {
		case <-r.Context().Done():
		case <-time.After(time.Minute):
		}
	}
}

// drop returns a handler that calls start, if any, and then takes the
// connection over and closes it, with a TCP reset if reset is set: the
// request was read, and no answer (or only part of one) goes back.
func drop(reset bool, start http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if start != nil {
			start(w, r)
			w.(http.Flusher).Flush()
		}
		conn, _, err := w.(http.Hijacker).Hijack()
		if err != nil {
			panic(err) // the test server is HTTP/1.1: it can always hijack
		}
		if tc, ok := conn.(*net.TCPConn); ok && reset {
			_ = tc.SetLinger(0) // close sends RST instead of FIN
		}
		_ = conn.Close()
	}
}

// partial starts a 2xx answer that promises 100 bytes and sends 6.
func partial(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Length", "100")
	w.WriteHeader(200)
	_, _ = io.WriteString(w, `{"id":`)
}

// roundTripFunc is a transport that reports nothing through httptrace.
type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestOutcomeUnknown checks how a call that got no usable answer is
// classified: marked saga.OutcomeUnknown when the participant may have
// acted (so the engine compensates the step if the saga turns around),
// permanent when asking again cannot help.
func TestOutcomeUnknown(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		respond       http.HandlerFunc // nil: nothing listens (connection refused)
		client        *http.Client     // nil: the default
		cancelled     bool             // the engine's context ended before the call
		timeout       time.Duration    // the attempt timeout; zero: 100ms
		wantUnknown   bool
		wantPermanent bool
		wantErr       string // a substring of the error
	}{
		{name: "attempt timeout before the answer", respond: stall(nil),
			wantUnknown: true, wantErr: "no answer in time (attempt timeout 100ms)"},
		{name: "attempt timeout in a 2xx body", respond: stall(partial),
			wantUnknown: true, wantErr: "answered 200 OK; read response: not in full in time (attempt timeout 100ms)"},
		{name: "connection closed after the request", respond: drop(false, nil),
			wantUnknown: true, wantErr: "request sent, no answer: EOF"},
		{name: "connection reset after the request", respond: drop(true, nil),
			wantUnknown: true, wantErr: "request sent, no answer: read tcp"},
		{name: "connection closed in a 2xx body", respond: drop(false, partial),
			wantUnknown: true, wantErr: "answered 200 OK; read response: unexpected EOF"},
		// The reset may reach the client before it reads the answer's start.
		{name: "connection reset in a 2xx body", respond: drop(true, partial),
			wantUnknown: true, wantErr: "connection reset by peer"},
		{name: "2xx not JSON", respond: answer(200, `<html>ok</html>`),
			wantUnknown: true, wantPermanent: true, wantErr: "answered 200 OK with a body that is not valid JSON"},
		// Time to read 1 MiB, even on a loaded machine under -race.
		{name: "2xx over 1 MiB", respond: answer(201, `[`+strings.Repeat(`1,`, 1<<19)+`1]`), timeout: 10 * time.Second,
			wantUnknown: true, wantPermanent: true, wantErr: "answered 201 Created; response body exceeds 1048576 bytes"},
		{name: "2xx with malformed _events", respond: answer(200, `{"_events": [{"name": "e", "payload": 1, "x": 2}]}`),
			wantUnknown: true, wantPermanent: true, wantErr: `_events[0]: json: unknown field "x"`},
		{name: "2xx with an invalid event", respond: answer(200, `{"_events": [{"name": "e"}]}`),
			wantUnknown: true, wantPermanent: true, wantErr: "payload is empty"},
		{name: "4xx is permanent and known", respond: answer(422, `no`), wantPermanent: true, wantErr: "answered 422"},
		{name: "5xx is retryable and known", respond: answer(503, ``), wantErr: "answered 503"},
		{name: "connection refused: not sent", wantErr: "connection refused"},
		{name: "context ended before the call: not sent", respond: answer(200, `{}`), cancelled: true,
			wantErr: "not sent: context canceled"},
		{name: "transport that reports no progress", respond: answer(200, `{}`),
			client: &http.Client{Transport: roundTripFunc(func(*http.Request) (*http.Response, error) {
				return nil, errors.New("test transport: connection lost")
			})},
			wantUnknown: true, wantErr: "request sent, no answer: test transport: connection lost"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var url string
			if tt.respond != nil {
				url = newParticipant(t, tt.respond).URL + "/step"
			} else {
				srv := httptest.NewServer(http.NotFoundHandler())
				url = srv.URL + "/step"
				srv.Close()
			}
			timeout := cmp.Or(tt.timeout, 100*time.Millisecond)
			spec := &httpstep.Spec{Steps: []httpstep.StepSpec{{Name: "reserve",
				Action: &httpstep.CallSpec{URL: url, Timeout: httpstep.Duration(timeout)}}}}
			f := define(t, spec, tt.client).Steps[0].Action
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if tt.cancelled {
				cancel()
			}
			_, err := f(ctx, newCall(saga.PhaseAction, 1))
			if err == nil {
				t.Fatalf("no error, want one containing %q", tt.wantErr)
			}
			if got := saga.IsOutcomeUnknown(err); got != tt.wantUnknown {
				t.Errorf("error %.300q: outcome unknown = %v, want %v", err, got, tt.wantUnknown)
			}
			if got := saga.IsPermanent(err); got != tt.wantPermanent {
				t.Errorf("error %.300q: permanent = %v, want %v", err, got, tt.wantPermanent)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %.300q does not contain %q", err, tt.wantErr)
			}
			if !strings.HasPrefix(err.Error(), "httpstep: POST ") {
				t.Errorf("error %.300q does not start with the method and URL", err)
			}
		})
	}
}

func TestInvalidInput(t *testing.T) {
	t.Parallel()
	p := newParticipant(t, answer(200, `{}`))
	for _, tt := range []struct {
		name    string
		edit    func(*saga.Call)
		wantErr string
	}{
		{"input", func(sc *saga.Call) { sc.Input = json.RawMessage(`{not json`) }, "encode request: input: invalid JSON"},
		{"data", func(sc *saga.Call) { sc.Data["quote"] = json.RawMessage(`[1,`) }, `encode request: data "quote": invalid JSON`},
	} {
		sc := newCall(saga.PhaseAction, 1)
		tt.edit(sc)
		_, err := action(t, httpstep.CallSpec{URL: p.URL})(context.Background(), sc)
		if err == nil || !saga.IsPermanent(err) || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("%s: error = %v, want a permanent error containing %q", tt.name, err, tt.wantErr)
		}
	}
	if n := len(p.requests()); n != 0 {
		t.Errorf("participant received %d requests, want none", n)
	}
}

// countingTransport is a real transport that counts the requests it sends.
type countingTransport struct{ n atomic.Int32 }

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.n.Add(1)
	return http.DefaultTransport.RoundTrip(r)
}

func TestClient(t *testing.T) {
	t.Parallel()
	p := newParticipant(t, answer(204, ``))
	ct := &countingTransport{}
	def := define(t, &httpstep.Spec{Steps: []httpstep.StepSpec{{Name: "a", Action: &httpstep.CallSpec{URL: p.URL}}}},
		&http.Client{Transport: ct})
	if _, err := def.Steps[0].Action(context.Background(), newCall(saga.PhaseAction, 1)); err != nil {
		t.Fatal(err)
	}
	if ct.n.Load() != 1 {
		t.Errorf("the given client sent %d requests, want 1", ct.n.Load())
	}
}

// TestSpecCopied checks that a definition does not see later changes to
// its spec.
func TestSpecCopied(t *testing.T) {
	t.Parallel()
	p := newParticipant(t, answer(204, ``))
	spec := &httpstep.Spec{Steps: []httpstep.StepSpec{{Name: "a", Action: &httpstep.CallSpec{
		URL: p.URL + "/a", Headers: map[string]string{"X-A": "1"},
	}}}}
	def := define(t, spec, nil)
	spec.Steps[0].Action.URL = p.URL + "/b"
	spec.Steps[0].Action.Headers["X-A"] = "2"
	if _, err := def.Steps[0].Action(context.Background(), newCall(saga.PhaseAction, 1)); err != nil {
		t.Fatal(err)
	}
	if r := p.only(t); r.Path != "/a" || r.Header.Get("X-A") != "1" {
		t.Errorf("request to %s with X-A %q, want /a with 1", r.Path, r.Header.Get("X-A"))
	}
}

// A 202 Accepted means the participant answers later: the call returns
// saga.ErrPending, whatever the body says.
func TestAcceptedIsPending(t *testing.T) {
	t.Parallel()
	url := newParticipant(t, answer(http.StatusAccepted, `{"ticket": 7}`)).URL + "/step"
	spec := &httpstep.Spec{Steps: []httpstep.StepSpec{{Name: "reserve", Action: &httpstep.CallSpec{URL: url}}}}
	f := define(t, spec, nil).Steps[0].Action
	out, err := f(context.Background(), newCall(saga.PhaseAction, 1))
	if !errors.Is(err, saga.ErrPending) || out != nil {
		t.Fatalf("202: output %s, error %v; want none and saga.ErrPending", out, err)
	}
}
