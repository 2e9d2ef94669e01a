package httpapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sagad/sagad/client"
	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/recovery"
	"github.com/sagad/sagad/storage/bolt"
	"github.com/sagad/sagad/transport/httpapi"
)

// patience bounds every wait for something the test expects to happen; it
// is a failure guard, never a way to let time pass.
const patience = 15 * time.Second

// api is one test's daemon: an engine on a temporary file, its HTTP API on
// a test server, and a client for it.
type api struct {
	server *httpapi.Server
	engine *engine.Engine
	ts     *httptest.Server
	c      *client.Client
	token  string
	path   string // the database file
	loaded int    // definition versions Definitions.Load registered
	stop   func() // shuts the daemon down and checks its file; also run at cleanup
}

// options configure newAPIWith.
type options struct {
	path       string                // database file; empty: a new one in the test's temporary directory
	engine     func(*engine.Options) // adjusts the engine's options
	server     func(*httpapi.Config) // adjusts the server's Config
	httpServer func(*http.Server)    // adjusts the test server's http.Server before it starts
	load       bool                  // register the stored definitions (Definitions.Load) before serving
}

// newAPI runs an engine and the API server until the test ends; configure,
// if not nil, adjusts the server's Config.
func newAPI(tb testing.TB, configure func(*httpapi.Config)) *api {
	tb.Helper()
	return newAPIWith(tb, options{server: configure})
}

// newAPIWith runs an engine and the API server until the test ends or stop
// is called. Then the engine is shut down, the file checked for
// consistency, and the test fails if the engine or the server logged an
// error (an unexpected 500, a failed commit).
func newAPIWith(tb testing.TB, o options) *api {
	tb.Helper()
	errs := &errorLog{}
	logger := slog.New(errs)
	path := o.path
	if path == "" {
		path = filepath.Join(tb.TempDir(), "sagad.db")
	}
	opts := engine.Options{Logger: logger}
	if o.engine != nil {
		o.engine(&opts)
	}
	// Consistency on a clean close does not need fsync; speed does.
	db, err := bolt.Open(path, &bolt.Options{NoSync: true, Clock: opts.Clock})
	if err != nil {
		tb.Fatalf("open store %s: %v", path, err)
	}
	eng, err := engine.New(db, opts)
	if err != nil {
		tb.Fatalf("open engine on %s: %v", path, err)
	}
	defs := httpapi.NewDefinitions(eng, nil)
	loaded := 0
	if o.load {
		if loaded, err = defs.Load(); err != nil {
			_ = eng.Close()
			tb.Fatalf("load stored definitions: %v", err)
		}
	}
	cfg := httpapi.Config{Engine: eng, Definitions: defs, Logger: logger}
	if o.server != nil {
		o.server(&cfg)
	}
	srv, err := httpapi.New(cfg)
	if err != nil {
		_ = eng.Close()
		tb.Fatalf("httpapi.New: %v", err)
	}
	ts := httptest.NewUnstartedServer(srv)
	if o.httpServer != nil {
		o.httpServer(ts.Config)
	}
	ts.Start()
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- eng.Run(runCtx) }()
	stop := sync.OnceFunc(func() {
		ts.Close()
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("engine Run returned %v, want nil after its context was cancelled", err)
		}
		if err := eng.Close(); err != nil {
			tb.Errorf("close engine: %v", err)
		}
		if err := recovery.CheckFile(path); err != nil {
			tb.Errorf("consistency check of %s: %v", path, err)
		}
		if msgs := errs.messages(); len(msgs) > 0 {
			tb.Errorf("the engine or the API logged %d errors, want none:\n  %s", len(msgs), strings.Join(msgs, "\n  "))
		}
	})
	tb.Cleanup(stop)
	c, err := client.New(ts.URL, cfg.Token, ts.Client())
	if err != nil {
		tb.Fatalf("client.New(%q): %v", ts.URL, err)
	}
	return &api{server: srv, engine: eng, ts: ts, c: c, token: cfg.Token, path: path, loaded: loaded, stop: stop}
}

// errorLog is a slog.Handler that keeps records at level Error and above.
type errorLog struct {
	mu   sync.Mutex
	msgs []string
}

func (l *errorLog) Enabled(_ context.Context, lv slog.Level) bool { return lv >= slog.LevelError }
func (l *errorLog) WithAttrs([]slog.Attr) slog.Handler            { return l }
func (l *errorLog) WithGroup(string) slog.Handler                 { return l }

func (l *errorLog) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	l.mu.Lock()
	l.msgs = append(l.msgs, b.String())
	l.mu.Unlock()
	return nil
}

func (l *errorLog) messages() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.msgs...)
}

// ctx returns a context that ends with the test, bounded by patience.
func ctx(tb testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), patience)
	tb.Cleanup(cancel)
	return c
}

// send makes a raw request to the API and returns the answer with its body
// read. A non-empty body is sent as application/json unless headers say
// otherwise; the API's token is sent unless headers give an Authorization
// (an empty value sends none).
func (a *api) send(tb testing.TB, method, path, body string, headers map[string]string) (*http.Response, []byte) {
	tb.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx(tb), method, a.ts.URL+path, rd)
	if err != nil {
		tb.Fatalf("build %s %s: %v", method, path, err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if a.token != "" {
		req.Header.Set("Authorization", "Bearer "+a.token)
	}
	for k, v := range headers {
		if v == "" {
			req.Header.Del(k)
		} else {
			req.Header.Set(k, v)
		}
	}
	resp, err := a.ts.Client().Do(req)
	if err != nil {
		tb.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatalf("%s %s: read answer: %v", method, path, err)
	}
	return resp, data
}

// sendJSON is send that requires the status want and decodes the JSON
// answer into out (if not nil).
func (a *api) sendJSON(tb testing.TB, method, path, body string, want int, out any) *http.Response {
	tb.Helper()
	resp, data := a.send(tb, method, path, body, nil)
	if resp.StatusCode != want {
		tb.Fatalf("%s %s answered %d, want %d; body: %s", method, path, resp.StatusCode, want, data)
	}
	if ct := mediaType(resp); ct != "application/json" {
		tb.Fatalf("%s %s answered Content-Type %q, want application/json", method, path, resp.Header.Get("Content-Type"))
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			tb.Fatalf("%s %s: decode answer %s: %v", method, path, data, err)
		}
	}
	return resp
}

func mediaType(resp *http.Response) string {
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	return mt
}

// requireProblem checks that an answer is an RFC 9457 problem document with
// the HTTP status want, a type under httpapi.ProblemTypeBase, the status's
// title, the request's path as instance, and a detail that contains every
// one of details. The answer to a HEAD has no body: only its status and
// Content-Type are checked.
func requireProblem(tb testing.TB, resp *http.Response, body []byte, want int, details ...string) client.Problem {
	tb.Helper()
	what := resp.Request.Method + " " + resp.Request.URL.RequestURI()
	if resp.StatusCode != want {
		tb.Fatalf("%s answered %d, want %d; body: %s", what, resp.StatusCode, want, body)
	}
	if ct := mediaType(resp); ct != "application/problem+json" {
		tb.Fatalf("%s answered Content-Type %q, want application/problem+json", what, resp.Header.Get("Content-Type"))
	}
	if resp.Request.Method == http.MethodHead {
		return client.Problem{}
	}
	var p client.Problem
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		tb.Fatalf("%s: problem body %s does not decode as a problem document: %v", what, body, err)
	}
	if !strings.HasPrefix(p.Type, httpapi.ProblemTypeBase) || len(p.Type) == len(httpapi.ProblemTypeBase) {
		tb.Errorf("%s: problem type %q, want %s<kind>", what, p.Type, httpapi.ProblemTypeBase)
	}
	if p.Title != http.StatusText(want) {
		tb.Errorf("%s: problem title %q, want %q", what, p.Title, http.StatusText(want))
	}
	if p.Status != want {
		tb.Errorf("%s: problem status %d, want the HTTP status %d", what, p.Status, want)
	}
	if p.Instance != resp.Request.URL.Path {
		tb.Errorf("%s: problem instance %q, want the request path %q", what, p.Instance, resp.Request.URL.Path)
	}
	for _, d := range details {
		if !strings.Contains(p.Detail, d) {
			tb.Errorf("%s: problem detail %q does not contain %q", what, p.Detail, d)
		}
	}
	return p
}

// put registers a definition and returns it, requiring the status want
// (201 for a new version, 200 for one stored already).
func (a *api) put(tb testing.TB, name, spec string, want int) client.Definition {
	tb.Helper()
	var d client.Definition
	resp := a.sendJSON(tb, http.MethodPut, "/v1/definitions/"+name, spec, want, &d)
	if d.Name != name || d.Version == "" {
		tb.Fatalf("PUT definition %s answered %+v, want its name and a version", name, d)
	}
	if created := want == http.StatusCreated; d.Created != created {
		tb.Errorf("PUT definition %s answered created=%v with status %d", name, d.Created, want)
	}
	if loc := resp.Header.Get("Location"); want == http.StatusCreated && loc != "/v1/definitions/"+name {
		tb.Errorf("PUT definition %s: Location %q, want /v1/definitions/%s", name, loc, name)
	}
	return d
}

// run starts a saga of definition with input and waits (on the daemon) for
// it to end.
func (a *api) run(tb testing.TB, definition string, input any) *client.Saga {
	tb.Helper()
	st, err := a.c.Start(ctx(tb), definition, input, client.StartOptions{Wait: patience})
	if err != nil {
		tb.Fatalf("start a saga of %s: %v", definition, err)
	}
	if st.Saga == nil || !st.Saga.Finished() {
		tb.Fatalf("saga %s of %s did not end within %s: %+v", st.ID, definition, patience, st)
	}
	return st.Saga
}

// start starts a saga without waiting and returns its id.
func (a *api) start(tb testing.TB, definition string, input any) string {
	tb.Helper()
	st, err := a.c.Start(ctx(tb), definition, input, client.StartOptions{})
	if err != nil {
		tb.Fatalf("start a saga of %s: %v", definition, err)
	}
	return st.ID
}

// wait waits for a saga to end and returns it.
func (a *api) wait(tb testing.TB, id string) *client.Saga {
	tb.Helper()
	s, err := a.c.Wait(ctx(tb), id)
	if err != nil {
		tb.Fatalf("wait for saga %s: %v", id, err)
	}
	return s
}

// requireStatus fails unless the saga ended in status want.
func requireStatus(tb testing.TB, s *client.Saga, want string) {
	tb.Helper()
	if s.Status != want {
		tb.Fatalf("saga %s is %s, want %s; error %q; steps %+v", s.ID, s.Status, want, s.Error, s.Steps)
	}
}

// step returns the named step of a saga.
func step(tb testing.TB, s *client.Saga, name string) client.Step {
	tb.Helper()
	for _, st := range s.Steps {
		if st.Name == name {
			return st
		}
	}
	tb.Fatalf("saga %s has no step %q: %+v", s.ID, name, s.Steps)
	return client.Step{}
}

// call is one request a participant received.
type call struct {
	Path    string
	Key     string // Idempotency-Key
	SagaID  string // X-Saga-Id
	Def     string // X-Saga-Definition
	Step    string // X-Saga-Step
	Phase   string // X-Saga-Phase
	Attempt string // X-Saga-Attempt
	Body    stepRequest
}

// stepRequest is the body of a participant call (see package httpstep).
type stepRequest struct {
	SagaID     string                     `json:"saga_id"`
	Definition string                     `json:"definition"`
	Step       string                     `json:"step"`
	Phase      string                     `json:"phase"`
	Attempt    int                        `json:"attempt"`
	Input      json.RawMessage            `json:"input"`
	Data       map[string]json.RawMessage `json:"data"`
}

// reply answers the n-th call (from 1) to one path of a participant.
type reply func(n int, w http.ResponseWriter, r *http.Request)

// participant is a saga participant on a test server: it records every call
// and answers each path with its reply (by default 200 with
// {"path":"<path>"}).
type participant struct {
	tb      testing.TB
	srv     *httptest.Server
	mu      sync.Mutex
	calls   []call
	counts  map[string]int
	replies map[string]reply
	gates   []*gate
}

// newParticipant starts a participant that is closed when the test ends,
// after its gates are opened.
func newParticipant(tb testing.TB) *participant {
	p := &participant{tb: tb, counts: map[string]int{}, replies: map[string]reply{}}
	p.srv = httptest.NewServer(http.HandlerFunc(p.serve))
	tb.Cleanup(func() {
		p.mu.Lock()
		gates := p.gates
		p.mu.Unlock()
		for _, g := range gates {
			g.open()
		}
		p.srv.Close()
	})
	return p
}

// URL returns the participant's base URL.
func (p *participant) URL() string { return p.srv.URL }

// on sets the reply for a path.
func (p *participant) on(path string, r reply) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.replies[path] = r
}

func (p *participant) serve(w http.ResponseWriter, r *http.Request) {
	data, err := io.ReadAll(r.Body)
	var body stepRequest
	if err == nil {
		err = json.Unmarshal(data, &body)
	}
	if err != nil {
		p.tb.Errorf("participant %s: request body %q is not a step request: %v", r.URL.Path, data, err)
		http.Error(w, "bad body", http.StatusBadRequest)
		return
	}
	c := call{Path: r.URL.Path, Key: r.Header.Get("Idempotency-Key"), SagaID: r.Header.Get("X-Saga-Id"),
		Def: r.Header.Get("X-Saga-Definition"), Step: r.Header.Get("X-Saga-Step"),
		Phase: r.Header.Get("X-Saga-Phase"), Attempt: r.Header.Get("X-Saga-Attempt"), Body: body}
	p.mu.Lock()
	p.calls = append(p.calls, c)
	p.counts[c.Path]++
	n, rep := p.counts[c.Path], p.replies[c.Path]
	p.mu.Unlock()
	if rep == nil {
		rep = status(http.StatusOK)
	}
	rep(n, w, r)
}

// callsTo returns the calls to path, in order.
func (p *participant) callsTo(path string) []call {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []call
	for _, c := range p.calls {
		if c.Path == path {
			out = append(out, c)
		}
	}
	return out
}

// paths returns the paths of the calls made with saga id (all calls when
// id is empty), in order.
func (p *participant) paths(id string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, c := range p.calls {
		if id == "" || c.SagaID == id {
			out = append(out, c.Path)
		}
	}
	return out
}

// status answers every call with code; a 2xx carries {"path":"<path>"}.
func status(code int) reply {
	return func(_ int, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		if code >= 200 && code <= 299 {
			fmt.Fprintf(w, `{"path":%q}`, r.URL.Path)
		} else {
			fmt.Fprintf(w, `{"error":"answered %d"}`, code)
		}
	}
}

// sequence answers the n-th call with codes[n-1], and later calls with the
// last code.
func sequence(codes ...int) reply {
	return func(n int, w http.ResponseWriter, r *http.Request) {
		status(codes[min(n, len(codes))-1])(n, w, r)
	}
}

// gate holds calls until it is opened.
type gate struct {
	entered chan int // receives the call number of each call that reaches the gate
	release chan struct{}
	once    sync.Once
}

// gate returns a gate that the participant opens when the test ends.
func (p *participant) gate() *gate {
	g := &gate{entered: make(chan int, 64), release: make(chan struct{})}
	p.mu.Lock()
	p.gates = append(p.gates, g)
	p.mu.Unlock()
	return g
}

func (g *gate) open() { g.once.Do(func() { close(g.release) }) }

// hold returns a reply that holds calls accepted by which (all calls when
// nil) until the gate opens, then answers with then. A held call whose
// request ends (the caller gave up) is answered with nothing.
func (g *gate) hold(which func(n int) bool, then reply) reply {
	return func(n int, w http.ResponseWriter, r *http.Request) {
		if which == nil || which(n) {
			g.entered <- n
			select {
			case <-g.release:
			case <-r.Context().Done():
				return
			}
		}
		then(n, w, r)
	}
}

// waitEntered waits until a call reaches the gate.
func (g *gate) waitEntered(tb testing.TB, what string) {
	tb.Helper()
	select {
	case <-g.entered:
	case <-time.After(patience):
		tb.Fatalf("%s was not called within %s", what, patience)
	}
}

// first selects the first call.
func first(n int) bool { return n == 1 }
