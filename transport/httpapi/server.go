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
	"os"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/cockroachdb/errors"

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
	// MaxWait caps the ?wait= of a request. Zero: 60s.
	MaxWait time.Duration
	// Metrics serves /metrics. Nil: /metrics is not found.
	Metrics http.Handler
	// Ready reports readiness for /readyz. Nil: ready.
	Ready func() error
	// Logger receives request errors. Nil: slog.Default().
	Logger *slog.Logger
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
	if cfg.MaxWait <= 0 {
		cfg.MaxWait = 60 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Server{cfg: cfg, eng: cfg.Engine, log: cfg.Logger, mux: http.NewServeMux()}
	for _, rt := range s.routes() {
		h := rt.handler
		if rt.auth {
			h = s.authenticate(h)
		}
		s.mux.HandleFunc(rt.pattern, h)
	}
	return s, nil
}

// route is one API route; Routes lists them for the OpenAPI test.
type route struct {
	pattern string // "METHOD /path/{param}"
	auth    bool
	handler http.HandlerFunc
}

func (s *Server) routes() []route {
	return []route{
		{"GET /healthz", false, s.healthz},
		{"GET /readyz", false, s.readyz},
		{"GET /metrics", false, s.metrics},
		{"GET /v1/openapi.json", true, s.openapi},
		{"PUT /v1/definitions/{name}", true, s.putDefinition},
		{"GET /v1/definitions", true, s.listDefinitions},
		{"GET /v1/definitions/{name}", true, s.getDefinition},
		{"POST /v1/sagas", true, s.startSaga},
		{"GET /v1/sagas", true, s.listSagas},
		{"GET /v1/sagas/{id}", true, s.getSaga},
		{"GET /v1/sagas/{id}/log", true, s.sagaLog},
		{"POST /v1/sagas/{id}/abort", true, s.abortSaga},
		{"POST /v1/sagas/{id}/retry", true, s.retrySaga},
		{"POST /v1/sagas/{id}/resolve", true, s.resolveSaga},
		{"GET /v1/outbox", true, s.listOutbox},
		{"GET /v1/outbox/stats", true, s.outboxStats},
		{"POST /v1/outbox/{id}/requeue", true, s.requeueEvent},
		{"GET /v1/backup", true, s.backup},
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
	if ct := r.Header.Get("Content-Type"); ct != "" {
		// Media types are case-insensitive (RFC 9110, section 8.3.1).
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) {
			return &apiError{http.StatusUnsupportedMediaType, "unsupported-media-type", errors.Newf("content type %q: send application/json", ct)}
		}
	}
	data, err := io.ReadAll(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return &apiError{http.StatusRequestEntityTooLarge, "body-too-large", errors.Newf("request body is larger than %d bytes", mbe.Limit)}
		}
		return badRequest("bad-body", errors.Wrap(err, "read request body"))
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequest("malformed-json", errors.Wrap(err, "request body"))
	}
	if dec.More() {
		return badRequest("malformed-json", errors.New("request body: data after the JSON value"))
	}
	return nil
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
	if err := readJSON(r, &req); err != nil {
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
		if len(req.IdempotencyKey) > 256 {
			s.writeError(w, r, badRequest("invalid-idempotency-key", errors.New("idempotency_key is longer than 256 bytes")))
			return
		}
		opts = append(opts, engine.WithIdempotencyKey(req.IdempotencyKey))
	}
	st, err := s.eng.Start(r.Context(), req.Definition, input, opts...)
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
		s.writeError(w, r, badRequest("invalid-status", errors.Newf("status %q: want running, compensating, completed, compensated, failed or resolved", status)))
		return
	}
	page, err := s.eng.List(r.Context(), engine.ListOptions{Status: status, Definition: q.Get("definition"),
		Cursor: q.Get("cursor"), Limit: limit})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := client.Page{Sagas: make([]client.Saga, len(page.Sagas)), NextCursor: page.NextCursor}
	for i, sg := range page.Sagas {
		out.Sagas[i] = *SagaJSON(sg)
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) sagaLog(w http.ResponseWriter, r *http.Request) {
	entries, err := s.eng.Log(r.Context(), r.PathValue("id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if entries == nil {
		entries = []storage.LogEntry{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"entries": entries})
}

func (s *Server) abortSaga(w http.ResponseWriter, r *http.Request) {
	s.control(w, r, s.eng.Abort)
}

func (s *Server) retrySaga(w http.ResponseWriter, r *http.Request) {
	s.control(w, r, s.eng.Retry)
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

// SagaJSON converts the engine's view of a saga to the wire format.
func SagaJSON(sg *engine.Saga) *client.Saga {
	out := &client.Saga{ID: sg.ID, Definition: sg.Definition, Version: sg.Fingerprint, Status: string(sg.Status),
		Input: sg.Input, Data: sg.Data, IdempotencyKey: sg.IdempotencyKey, CreatedAt: sg.CreatedAt,
		UpdatedAt: sg.UpdatedAt, Deadline: sg.Deadline, WakeAt: sg.WakeAt, Parked: sg.Parked,
		Steps: make([]client.Step, len(sg.Steps))}
	if sg.Err != nil {
		out.Error = sg.Err.Error()
	}
	for i, st := range sg.Steps {
		out.Steps[i] = client.Step{Name: st.Name, Status: string(st.Status), Phase: string(st.Phase), Attempts: st.Attempts,
			CompensationAttempts: st.CompensationAttempts, FallbackUsed: st.FallbackUsed, InFlight: st.InFlight, Error: st.Error}
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

// backup streams a consistent copy of the database file. The copy is
// taken to a temporary file inside one read transaction, at disk speed, and
// streamed after it has ended: a slow client must not hold a read
// transaction (which would stall writes that grow the file). The write
// deadline is lifted for the transfer of a large file.
func (s *Server) backup(w http.ResponseWriter, r *http.Request) {
	f, err := os.CreateTemp("", "sagad-backup-*.db")
	if err != nil {
		s.writeError(w, r, errors.Wrap(err, "backup: temporary file"))
		return
	}
	defer os.Remove(f.Name())
	defer f.Close()
	err = s.eng.DB().View(func(tx *storage.Tx) error {
		_, err := tx.Bolt().WriteTo(f)
		return err
	})
	if err != nil {
		s.writeError(w, r, errors.Wrap(err, "backup: copy"))
		return
	}
	size, err := f.Seek(0, io.SeekCurrent)
	if err == nil {
		_, err = f.Seek(0, io.SeekStart)
	}
	if err != nil {
		s.writeError(w, r, errors.Wrap(err, "backup: temporary file"))
		return
	}
	_ = http.NewResponseController(w).SetWriteDeadline(time.Time{})
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", `attachment; filename="sagad.db"`)
	w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	if _, err := io.Copy(w, f); err != nil {
		s.log.Warn("backup transfer ended early; the client sees a short body", "err", err)
	}
}
