package httpapi

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/http/pprof"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/cockroachdb/errors"
	"go.opentelemetry.io/otel/propagation"

	"github.com/sagad/sagad/client"
	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
)

// Config configures a Server. Zero fields take the documented defaults.
type Config struct {
	// Engine runs the sagas. Required.
	Engine *engine.Engine
	// Definitions stores and registers declarative definitions. Required.
	Definitions *Definitions
	// Token, when set, is required as a bearer token on every route but
	// /healthz, /readyz and /metrics.
	Token string
	// MaxBodyBytes caps request bodies. Zero: 1 MiB.
	MaxBodyBytes int64
	// MaxDefinitionBytes caps a definition's JSON text on
	// PUT /v1/definitions/{name}; a larger one is refused with a 413
	// problem (definition-too-large) that names the limit. MaxBodyBytes
	// applies as well. Zero: 256 KiB. A definition also has at most
	// saga.MaxSteps steps (a 422 problem).
	MaxDefinitionBytes int64
	// MaxWait caps the ?wait= of a request. Zero: 60s.
	MaxWait time.Duration
	// Metrics serves /metrics. Nil: /metrics is not found.
	Metrics http.Handler
	// Ready reports readiness for /readyz. Nil: ready.
	Ready func() error
	// Logger receives request errors. Nil: slog.Default().
	Logger *slog.Logger
	// BackupDir is where GET /v1/backup writes the temporary copy of the
	// database it sends; the copy is removed when the request ends. Empty:
	// os.TempDir().
	BackupDir string
	// BackupStallTimeout cuts off a GET /v1/backup whose client takes no
	// chunk (64 KiB) of the copy for this long; a client that keeps reading
	// is never cut off. Zero: 30s.
	BackupStallTimeout time.Duration
	// Pprof serves net/http/pprof under /debug/pprof/, behind the token like
	// the API. Off by default: profiles show what the process holds.
	Pprof bool
}

// Server is the daemon's HTTP API as an http.Handler.
type Server struct {
	cfg Config
	eng *engine.Engine
	log *slog.Logger
	mux *http.ServeMux
}

// New returns the API handler.
func New(cfg Config) (*Server, error) {
	if cfg.Engine == nil || cfg.Definitions == nil {
		return nil, errors.New("httpapi: Config.Engine and Config.Definitions are required")
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = 1 << 20
	}
	if cfg.MaxDefinitionBytes <= 0 {
		cfg.MaxDefinitionBytes = 256 << 10
	}
	if cfg.MaxWait <= 0 {
		cfg.MaxWait = 60 * time.Second
	}
	if cfg.BackupStallTimeout <= 0 {
		cfg.BackupStallTimeout = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Server{cfg: cfg, eng: cfg.Engine, log: cfg.Logger, mux: http.NewServeMux()}
	for _, rt := range s.routes() {
		h := rt.handler
		if strings.Contains(rt.pattern, " /v1/") { // not the probes' and scrapers' routes
			h = onlyQuery(rt.query, h)
		}
		if rt.auth {
			h = s.authenticate(h)
		}
		s.mux.HandleFunc(rt.pattern, h)
	}
	if cfg.Pprof {
		s.mux.HandleFunc("GET /debug/pprof/", s.authenticate(pprof.Index))
		s.mux.HandleFunc("GET /debug/pprof/cmdline", s.authenticate(pprof.Cmdline))
		s.mux.HandleFunc("GET /debug/pprof/profile", s.authenticate(pprof.Profile))
		s.mux.HandleFunc("GET /debug/pprof/symbol", s.authenticate(pprof.Symbol))
		s.mux.HandleFunc("GET /debug/pprof/trace", s.authenticate(pprof.Trace))
	}
	return s, nil
}

// route is one API route; Routes lists them for the OpenAPI test.
type route struct {
	pattern string // "METHOD /path/{param}"
	auth    bool
	handler http.HandlerFunc
	// query names the query parameters the route takes; any other is a
	// 400 that names it.
	query []string
}

func (s *Server) routes() []route {
	return []route{
		{"GET /healthz", false, s.healthz, nil},
		{"GET /readyz", false, s.readyz, nil},
		{"GET /metrics", false, s.metrics, nil},
		{"GET /v1/openapi.json", true, s.openapi, nil},
		{"PUT /v1/definitions/{name}", true, s.putDefinition, nil},
		{"GET /v1/definitions", true, s.listDefinitions, nil},
		{"GET /v1/definitions/{name}", true, s.getDefinition, nil},
		{"GET /v1/definitions/{name}/versions", true, s.definitionVersions, nil},
		{"POST /v1/sagas", true, s.startSaga, []string{"wait"}},
		{"GET /v1/sagas", true, s.listSagas, []string{"status", "definition", "cursor", "limit", "key"}},
		{"GET /v1/sagas/stats", true, s.sagaStats, nil},
		{"GET /v1/sagas/{id}", true, s.getSaga, []string{"wait"}},
		{"GET /v1/sagas/{id}/log", true, s.sagaLog, nil},
		{"POST /v1/sagas/{id}/abort", true, s.abortSaga, nil},
		{"POST /v1/sagas/{id}/retry", true, s.retrySaga, nil},
		{"POST /v1/sagas/{id}/resolve", true, s.resolveSaga, nil},
		{"POST /v1/sagas/{id}/pause", true, s.pauseSaga, nil},
		{"POST /v1/sagas/{id}/steps/{step}/complete", true, s.completeStep, nil},
		{"POST /v1/sagas/{id}/resume", true, s.resumeSaga, nil},
		{"GET /v1/outbox", true, s.listOutbox, []string{"status", "cursor", "limit"}},
		{"GET /v1/outbox/stats", true, s.outboxStats, nil},
		{"POST /v1/outbox/{id}/requeue", true, s.requeueEvent, nil},
		{"DELETE /v1/outbox/{id}", true, s.discardEvent, nil},
		{"GET /v1/backup", true, s.backup, nil},
		{"HEAD /v1/backup", true, s.backupSize, nil},
	}
}

// onlyQuery refuses, with a 400 that names them, the query parameters a
// route does not take: a misspelt ?limt=5 must not be ignored in silence.
func onlyQuery(allowed []string, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.URL.RawQuery != "" {
			var unknown []string
			for name := range r.URL.Query() {
				if !slices.Contains(allowed, name) {
					unknown = append(unknown, name)
				}
			}
			if len(unknown) > 0 {
				slices.Sort(unknown)
				takes := "takes no query parameters"
				if len(allowed) > 0 {
					takes = "takes " + strings.Join(allowed, ", ")
				}
				writeProblem(w, r, http.StatusBadRequest, "unknown-parameter",
					"unknown query parameter "+strings.Join(unknown, ", ")+": "+r.Method+" "+r.URL.Path+" "+takes)
				return
			}
		}
		h(w, r)
	}
}

// Routes returns the patterns the server serves ("METHOD /path").
func (s *Server) Routes() []string {
	var out []string
	for _, rt := range s.routes() {
		out = append(out, rt.pattern)
	}
	return out
}

// ServeHTTP serves the API. Unknown paths and methods are answered with
// problem documents too, and so are paths that are not canonical (an empty,
// "." or ".." segment, such as /v1//sagas): the API names each resource by
// one path, and net/http's ServeMux would answer them with an HTML redirect.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Body != nil {
		r.Body = http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes)
	}
	// The mux redirects such a path even when its clean form has a route,
	// and then reports that route's pattern: catch it first.
	if p := r.URL.EscapedPath(); r.Method != http.MethodConnect && cleanPath(p) != p {
		writeProblem(w, r, http.StatusNotFound, "not-found", "no route for "+r.Method+" "+p+
			": the path is not canonical (it has an empty, . or .. segment); write it as "+cleanPath(p))
		return
	}
	h, pattern := s.mux.Handler(r)
	if pattern != "" {
		s.mux.ServeHTTP(w, r) // sets the path values, which Handler does not
		return
	}
	// The mux answers 404, 405 (with Allow) or a redirect in plain text:
	// let it decide, then answer with a problem.
	rec := &headerRecorder{header: http.Header{}}
	h.ServeHTTP(rec, r)
	switch {
	case rec.status == http.StatusNotFound:
		writeProblem(w, r, http.StatusNotFound, "not-found", "no route for "+r.Method+" "+r.URL.Path)
	case rec.status == http.StatusMethodNotAllowed:
		w.Header().Set("Allow", rec.header.Get("Allow"))
		writeProblem(w, r, http.StatusMethodNotAllowed, "method-not-allowed",
			r.Method+" is not allowed on "+r.URL.Path+"; allowed: "+rec.header.Get("Allow"))
	case rec.status >= 300 && rec.status < 400:
		// A redirect the check above does not foresee (a pattern ending
		// in "/", should one be added): the same answer.
		writeProblem(w, r, http.StatusNotFound, "not-found", "no route for "+r.Method+" "+r.URL.Path+
			"; write it as "+rec.header.Get("Location"))
	default:
		status := rec.status
		if status < 400 {
			status = http.StatusNotFound
		}
		writeProblem(w, r, status, "no-route", "no route for "+r.Method+" "+r.URL.Path)
	}
}

// cleanPath is the canonical form of an escaped request path, as ServeMux
// computes it before it redirects: path.Clean, keeping a trailing slash.
func cleanPath(p string) string {
	if p == "" {
		return "/"
	}
	if p[0] != '/' {
		p = "/" + p
	}
	np := path.Clean(p)
	if p[len(p)-1] == '/' && np != "/" {
		np += "/"
	}
	return np
}

// headerRecorder keeps the status and headers a handler writes.
type headerRecorder struct {
	header http.Header
	status int
}

func (h *headerRecorder) Header() http.Header         { return h.header }
func (h *headerRecorder) Write(b []byte) (int, error) { return len(b), nil }
func (h *headerRecorder) WriteHeader(code int)        { h.status = code }

func (s *Server) authenticate(next http.HandlerFunc) http.HandlerFunc {
	if s.cfg.Token == "" {
		return next
	}
	want := []byte(s.cfg.Token)
	return func(w http.ResponseWriter, r *http.Request) {
		header := r.Header.Get("Authorization")
		// The scheme is case-insensitive (RFC 9110, section 11.1).
		scheme, token, _ := strings.Cut(header, " ")
		if !strings.EqualFold(scheme, "Bearer") || subtle.ConstantTimeCompare([]byte(strings.TrimSpace(token)), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="sagad"`)
			detail := "missing bearer token: send Authorization: Bearer <token>"
			if header != "" {
				detail = "invalid bearer token"
			}
			writeProblem(w, r, http.StatusUnauthorized, "unauthorized", detail)
			return
		}
		next(w, r)
	}
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Ready != nil {
		if err := s.cfg.Ready(); err != nil {
			writeProblem(w, r, http.StatusServiceUnavailable, "not-ready", err.Error())
			return
		}
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

func (s *Server) metrics(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Metrics == nil {
		writeProblem(w, r, http.StatusNotFound, "not-found", "metrics are not enabled")
		return
	}
	s.cfg.Metrics.ServeHTTP(w, r)
}

// readJSON decodes a JSON request body into v, strictly.
func readJSON(r *http.Request, v any) error {
	_, err := readJSONBody(r, v)
	return err
}

// readJSONBody is readJSON that also returns the body as sent.
func readJSONBody(r *http.Request, v any) ([]byte, error) {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		// Media types are case-insensitive (RFC 9110, section 8.3.1).
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) {
			return nil, &apiError{http.StatusUnsupportedMediaType, "unsupported-media-type", errors.Newf("content type %q: send application/json", ct)}
		}
	}
	data, err := readBody(r)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return nil, badRequest("malformed-json", errors.Wrap(err, "request body"))
	}
	if dec.More() {
		return nil, badRequest("malformed-json", errors.New("request body: data after the JSON value"))
	}
	return data, nil
}

// readBody reads a raw request body within the size limit.
func readBody(r *http.Request) ([]byte, error) {
	data, err := io.ReadAll(r.Body)
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return nil, &apiError{http.StatusRequestEntityTooLarge, "body-too-large", errors.Newf("request body is larger than %d bytes", mbe.Limit)}
	}
	if err != nil {
		return nil, badRequest("bad-body", errors.Wrap(err, "read request body"))
	}
	return data, nil
}

// waitParam parses ?wait=, capped at MaxWait.
func (s *Server) waitParam(r *http.Request) (time.Duration, error) {
	v := r.URL.Query().Get("wait")
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return 0, badRequest("invalid-wait", errors.Newf("wait %q: want a duration such as 5s or 500ms", v))
	}
	return min(d, s.cfg.MaxWait), nil
}

// startSaga serves POST /v1/sagas.
func (s *Server) startSaga(w http.ResponseWriter, r *http.Request) {
	wait, err := s.waitParam(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var req client.StartRequest
	body, err := readJSONBody(r, &req)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if req.Definition == "" {
		s.writeError(w, r, badRequest("missing-definition", errors.New(`"definition" is required`)))
		return
	}
	input := req.Input
	if len(input) == 0 {
		input = json.RawMessage("null")
	}
	var opts []engine.StartOption
	if req.IdempotencyKey != "" {
		if err := checkIdempotencyKey(req.IdempotencyKey, body); err != nil {
			s.writeError(w, r, err)
			return
		}
		opts = append(opts, engine.WithIdempotencyKey(req.IdempotencyKey))
	}
	// The caller's trace (traceparent, tracestate): the saga's trace
	// links to it.
	ctx := traceContext.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
	st, err := s.eng.Start(ctx, req.Definition, input, opts...)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Location", "/v1/sagas/"+st.ID)
	if st.Duplicate {
		w.Header().Set(client.DuplicateHeader, "true")
		sg, err := s.eng.Get(r.Context(), st.ID)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, SagaJSON(sg))
		return
	}
	if wait > 0 {
		if sg := s.waitFor(r.Context(), st.ID, wait); sg != nil {
			writeJSON(w, http.StatusOK, SagaJSON(sg))
			return
		}
	}
	// Not ended within the wait, or the server is shutting down: the saga
	// is durable, so answer with its id.
	writeJSON(w, http.StatusAccepted, client.Started{ID: st.ID, Status: string(saga.StatusRunning)})
}

// checkIdempotencyKey refuses a key that is too long or is not valid
// UTF-8. encoding/json decodes invalid UTF-8, and an escaped lone surrogate
// (\ud800), as U+FFFD: two different keys would then name one saga, so the
// key is checked as the client wrote it in body.
func checkIdempotencyKey(key string, body []byte) error {
	if len(key) > engine.MaxIdempotencyKey {
		return badRequest("invalid-idempotency-key", errors.Newf("idempotency_key is %d bytes, longer than %d", len(key), engine.MaxIdempotencyKey))
	}
	if !strings.ContainsRune(key, utf8.RuneError) {
		return nil // nothing was replaced
	}
	var raw struct {
		Key json.RawMessage `json:"idempotency_key"`
	}
	if err := json.Unmarshal(body, &raw); err != nil || !validJSONText(raw.Key) {
		return badRequest("invalid-idempotency-key", errors.New("idempotency_key is not valid UTF-8 text (an invalid byte or a lone surrogate escape)"))
	}
	return nil
}

// validJSONText reports whether the JSON string literal s (quotes
// included, syntax already checked by the decoder) holds valid UTF-8 and
// escapes only whole characters: every \u surrogate escape is half of a pair.
func validJSONText(s []byte) bool {
	if !utf8.Valid(s) {
		return false
	}
	hex := func(b []byte) rune {
		n, err := strconv.ParseUint(string(b), 16, 16)
		if err != nil {
			return -1
		}
		return rune(n)
	}
	for i := 1; i < len(s)-1; i++ {
		if s[i] != '\\' {
			continue
		}
		i++
		if s[i] != 'u' || i+4 >= len(s) {
			continue
		}
		r1 := hex(s[i+1 : i+5])
		i += 4
		if !utf16.IsSurrogate(r1) {
			continue
		}
		// A pair is \uD8xx\uDCxx: the high half, then the low one.
		if i+6 >= len(s) || s[i+1] != '\\' || s[i+2] != 'u' {
			return false
		}
		if utf16.DecodeRune(r1, hex(s[i+3:i+7])) == utf8.RuneError {
			return false
		}
		i += 6
	}
	return true
}

// waitFor waits up to d for a saga to end; nil if it has not.
func (s *Server) waitFor(ctx context.Context, id string, d time.Duration) *engine.Saga {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	sg, err := s.eng.Wait(ctx, id)
	if err != nil {
		return nil
	}
	return sg
}

func (s *Server) getSaga(w http.ResponseWriter, r *http.Request) {
	wait, err := s.waitParam(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	id := r.PathValue("id")
	sg, err := s.eng.Get(r.Context(), id)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if wait > 0 && !sg.Status.Finished() {
		if done := s.waitFor(r.Context(), id, wait); done != nil {
			sg = done
		} else if sg, err = s.eng.Get(r.Context(), id); err != nil {
			s.writeError(w, r, err)
			return
		}
	}
	writeJSON(w, http.StatusOK, SagaJSON(sg))
}

// limitParam parses ?limit= (1 to 1000; 0 when absent).
func limitParam(r *http.Request) (int, error) {
	v := r.URL.Query().Get("limit")
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > 1000 {
		return 0, badRequest("invalid-limit", errors.Newf("limit %q: want a whole number from 1 to 1000", v))
	}
	return n, nil
}

func (s *Server) listSagas(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit, err := limitParam(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	status := saga.Status(q.Get("status"))
	if status != "" && !status.Valid() {
		s.writeError(w, r, badRequest("invalid-status", errors.Newf("status %q: want running, compensating, paused, completed, compensated, failed or resolved", status)))
		return
	}
	page, err := s.eng.List(r.Context(), engine.ListOptions{Status: status, Definition: q.Get("definition"),
		Cursor: q.Get("cursor"), Limit: limit, IdempotencyKey: q.Get("key")})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, PageJSON(page))
}

// sagaStats counts the stored sagas by status (every status, zeros too).
func (s *Server) sagaStats(w http.ResponseWriter, r *http.Request) {
	counts, err := s.eng.Counts(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := make(map[string]int, len(saga.Statuses))
	for _, st := range saga.Statuses {
		out[string(st)] = counts[st]
	}
	writeJSON(w, http.StatusOK, map[string]any{"counts": out})
}

// PageJSON converts a page of the engine's sagas to the wire format of a
// list: without the sagas' input and data. A page of a thousand sagas must
// not carry a thousand inputs and outputs; GET /v1/sagas/{id} has them.
func PageJSON(page *engine.Page) *client.Page {
	out := &client.Page{Sagas: make([]client.Saga, len(page.Sagas)), NextCursor: page.NextCursor}
	for i, sg := range page.Sagas {
		out.Sagas[i] = *SagaJSON(sg)
		out.Sagas[i].Input, out.Sagas[i].Data = nil, nil
	}
	return out
}

func (s *Server) sagaLog(w http.ResponseWriter, r *http.Request) {
	entries, err := s.eng.Log(r.Context(), r.PathValue("id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"entries": LogJSON(entries)})
}

// LogJSON converts a saga's step log to the wire format.
func LogJSON(entries []storage.LogEntry) []client.LogEntry {
	out := make([]client.LogEntry, len(entries))
	for i, e := range entries {
		out[i] = client.LogEntry{Seq: e.Seq, At: e.At, Event: string(e.Event), Step: e.Step, Phase: string(e.Phase),
			Attempt: e.Attempt, Status: string(e.Status), Duration: e.Duration, Error: e.Error, Next: e.Next, Note: e.Note,
			OutcomeUnknown: e.OutcomeUnknown}
		if c := e.InputChange; c != nil {
			out[i].Input, out[i].PrevInput = c.Input, c.PrevInput
		}
	}
	return out
}

// CompleteResult checks a completion and turns it into the engine's terms:
// its status is read by engine.StatusResult (2xx success, 4xx other than
// 408, 425 and 429 a failure for good, the rest retried).
func CompleteResult(req client.CompleteRequest) (saga.Phase, engine.Result, error) {
	phase := saga.Phase(req.Phase)
	switch {
	case phase != saga.PhaseAction && phase != saga.PhaseCompensation && phase != saga.PhaseFallback:
		return "", engine.Result{}, badRequest("invalid-phase", errors.Newf("phase %q: want action, compensation or fallback", req.Phase))
	case req.Attempt < 1:
		return "", engine.Result{}, badRequest("invalid-attempt", errors.Newf("attempt %d: want the call's X-Saga-Attempt, 1 or more", req.Attempt))
	case req.Status < 100 || req.Status > 599:
		return "", engine.Result{}, badRequest("invalid-status", errors.Newf("status %d: want an HTTP status, 100 to 599", req.Status))
	}
	return phase, engine.StatusResult(req.Status, req.Data, req.Error), nil
}

// completeStep delivers a participant's answer to a call it answered 202.
func (s *Server) completeStep(w http.ResponseWriter, r *http.Request) {
	var req client.CompleteRequest
	if err := readJSON(r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	phase, res, err := CompleteResult(req)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	applied, err := s.eng.Complete(r.Context(), r.PathValue("id"), r.PathValue("step"), phase, req.Attempt, res)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, client.Completed{Applied: applied})
}

func (s *Server) pauseSaga(w http.ResponseWriter, r *http.Request) {
	s.control(w, r, s.eng.Pause)
}

func (s *Server) resumeSaga(w http.ResponseWriter, r *http.Request) {
	s.control(w, r, s.eng.Resume)
}

func (s *Server) abortSaga(w http.ResponseWriter, r *http.Request) {
	s.control(w, r, s.eng.Abort)
}

func (s *Server) retrySaga(w http.ResponseWriter, r *http.Request) {
	data, err := readBody(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if len(bytes.TrimSpace(data)) == 0 {
		s.control(w, r, func(ctx context.Context, id string) error { return s.eng.Retry(ctx, id) })
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(data))
	var req client.RetryRequest
	if err := readJSON(r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if len(req.Input) == 0 || string(req.Input) == "null" {
		s.writeError(w, r, badRequest("invalid-input", errors.New("request body: input is missing; send {\"input\": ...} or no body")))
		return
	}
	s.control(w, r, func(ctx context.Context, id string) error {
		return s.eng.Retry(ctx, id, engine.RetryWithInput(req.Input))
	})
}

func (s *Server) resolveSaga(w http.ResponseWriter, r *http.Request) {
	var req client.ResolveRequest
	if err := readJSON(r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	s.control(w, r, func(ctx context.Context, id string) error { return s.eng.Resolve(ctx, id, req.Note, req.By) })
}

// control runs an operator action on a saga and answers with its state.
func (s *Server) control(w http.ResponseWriter, r *http.Request, fn func(context.Context, string) error) {
	id := r.PathValue("id")
	if err := fn(r.Context(), id); err != nil {
		s.writeError(w, r, err)
		return
	}
	sg, err := s.eng.Get(r.Context(), id)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusAccepted, client.Started{ID: sg.ID, Status: string(sg.Status)})
}

// traceContext reads the W3C traceparent and tracestate headers.
var traceContext propagation.TraceContext

// SagaJSON converts the engine's view of a saga to the wire format.
func SagaJSON(sg *engine.Saga) *client.Saga {
	out := &client.Saga{ID: sg.ID, Definition: sg.Definition, Version: sg.Fingerprint, Status: string(sg.Status),
		Input: sg.Input, Data: sg.Data, IdempotencyKey: sg.IdempotencyKey, CreatedAt: sg.CreatedAt,
		UpdatedAt: sg.UpdatedAt, Deadline: sg.Deadline, WakeAt: sg.WakeAt, Parked: sg.Parked, PausedFrom: string(sg.PausedFrom), TraceID: sg.TraceID,
		Steps: make([]client.Step, len(sg.Steps))}
	if sg.Err != nil {
		out.Error = sg.Err.Error()
	}
	for i, st := range sg.Steps {
		out.Steps[i] = client.Step{Name: st.Name, Status: string(st.Status), Phase: string(st.Phase), Attempts: st.Attempts,
			CompensationAttempts: st.CompensationAttempts, FallbackUsed: st.FallbackUsed, InFlight: st.InFlight, Error: st.Error,
			Waiting: st.Waiting, WaitingSince: st.WaitingSince, WaitingUntil: st.WaitingUntil}
	}
	return out
}

func (s *Server) listOutbox(w http.ResponseWriter, r *http.Request) {
	limit, err := limitParam(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	status := storage.OutboxStatus(r.URL.Query().Get("status"))
	switch status {
	case "", storage.OutboxNew, storage.OutboxProduced, storage.OutboxNotProduced:
	default:
		s.writeError(w, r, badRequest("invalid-status", errors.Newf("status %q: want new, produced or not_produced", status)))
		return
	}
	page, err := s.eng.OutboxList(r.Context(), engine.OutboxListOptions{Status: status, Cursor: r.URL.Query().Get("cursor"), Limit: limit})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, page)
}

func (s *Server) outboxStats(w http.ResponseWriter, r *http.Request) {
	st, err := s.eng.OutboxStats(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (s *Server) requeueEvent(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := s.eng.OutboxRequeue(r.Context(), id); err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]string{"id": id, "status": string(storage.OutboxNew)})
}

// discardEvent deletes an event the relay is done with (produced, or
// not_produced: its saga's later events then go on).
func (s *Server) discardEvent(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := s.eng.OutboxDiscard(r.Context(), id); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// backupChunk is how much of a backup is written at a time; each write
// must complete within Config.BackupStallTimeout.
const backupChunk = 64 << 10

// backup serves GET /v1/backup: a consistent copy of the database file.
//
// The copy is taken to a temporary file inside one read transaction, at
// disk speed, and streamed after the transaction has ended: a slow client
// must not hold a read transaction, which keeps bbolt from reusing the
// pages freed meanwhile and so grows the file. The server's write timeout
// cannot bound the transfer of a large file, so each chunk has its own
// deadline instead: a client that takes nothing for BackupStallTimeout is
// cut off, and the temporary file is always removed when the handler
// returns.
func (s *Server) backup(w http.ResponseWriter, r *http.Request) {
	sent, size, err := s.sendBackup(w)
	switch {
	case err == nil:
	case size < 0: // nothing was sent: answer with a problem
		s.writeError(w, r, err)
	case sent == size: // the client has it all; only the clean-up failed
		s.log.Warn("backup sent, but its temporary file could not be removed", "err", err)
	default: // logged once the temporary file is gone
		s.log.Warn("backup failed after its answer began; a short body tells the client", "sent", sent, "size", size, "err", err)
	}
}

// sendBackup copies the database to a temporary file, which it removes
// before it returns, and sends it. size is negative if no answer was sent.
func (s *Server) sendBackup(w http.ResponseWriter) (sent, size int64, err error) {
	size = -1
	files, ok := s.eng.Store().(fileStore)
	if !ok {
		return 0, size, errNoBackup
	}
	f, err := os.CreateTemp(s.cfg.BackupDir, "sagad-backup-*.db")
	if err != nil {
		return 0, size, errors.Wrap(err, "backup: temporary file")
	}
	defer func() {
		_ = f.Close()
		if rerr := os.Remove(f.Name()); rerr != nil && err == nil {
			err = errors.Wrap(rerr, "backup: remove the temporary file")
		}
	}()
	n, err := files.Backup(f)
	if err != nil {
		return 0, size, errors.Wrap(err, "backup: copy")
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return 0, size, errors.Wrap(err, "backup: temporary file")
	}
	size = n
	backupHeaders(w, size)
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	buf := make([]byte, backupChunk)
	for sent < size {
		k, rerr := io.ReadFull(f, buf[:min(int64(len(buf)), size-sent)])
		if rerr != nil {
			return sent, size, errors.Wrap(rerr, "backup: read the temporary file")
		}
		// Without deadlines (a writer that does not support them), the
		// server's write timeout bounds the transfer.
		if derr := rc.SetWriteDeadline(time.Now().Add(s.cfg.BackupStallTimeout)); derr != nil && !errors.Is(derr, http.ErrNotSupported) {
			return sent, size, errors.Wrap(derr, "backup: write deadline")
		}
		k, werr := w.Write(buf[:k])
		sent += int64(k)
		if werr != nil {
			return sent, size, errors.Wrapf(werr, "backup: send (the client must take %d bytes every %s)", backupChunk, s.cfg.BackupStallTimeout)
		}
	}
	return sent, size, nil
}

// fileStore is a store kept in one file that can be copied whole: the
// bbolt backend.
type fileStore interface {
	Backup(io.Writer) (int64, error)
	BackupSize() (int64, error)
}

// errNoBackup answers a backup of a store that is not one file.
var errNoBackup = &apiError{http.StatusNotImplemented, "backup-not-supported",
	errors.New("backup: this store is not a file; back up its database with its own tools")}

// backupSize serves HEAD /v1/backup: the headers of GET, Content-Length
// included, from the database's size; nothing is copied.
func (s *Server) backupSize(w http.ResponseWriter, r *http.Request) {
	files, ok := s.eng.Store().(fileStore)
	if !ok {
		s.writeError(w, r, errNoBackup)
		return
	}
	size, err := files.BackupSize()
	if err != nil {
		s.writeError(w, r, errors.Wrap(err, "backup: size"))
		return
	}
	backupHeaders(w, size)
	w.WriteHeader(http.StatusOK)
}

func backupHeaders(w http.ResponseWriter, size int64) {
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", `attachment; filename="sagad.db"`)
	w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	w.Header().Set("Cache-Control", "no-store")
}
