package httpapi

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"

	"github.com/cockroachdb/errors"

	"github.com/sagad/sagad/client"
	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/saga"
)

// ProblemTypeBase prefixes the type URI of every problem the API returns;
// the rest names the problem, for example "urn:sagad:problem:not-found".
const ProblemTypeBase = "urn:sagad:problem:"

// writeProblem answers with an RFC 9457 problem document.
func writeProblem(w http.ResponseWriter, r *http.Request, status int, kind, detail string) {
	p := client.Problem{Type: ProblemTypeBase + kind, Title: http.StatusText(status), Status: status, Detail: detail}
	if r != nil {
		p.Instance = r.URL.Path
	}
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(p)
}

// apiError is an error with the status and problem kind it answers with.
type apiError struct {
	status int
	kind   string
	err    error
}

func (e *apiError) Error() string { return e.err.Error() }

func badRequest(kind string, err error) error { return &apiError{http.StatusBadRequest, kind, err} }

// writeError answers with the problem that err stands for. Errors it does
// not know are logged and answered with a 500 that reveals nothing.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	var ae *apiError
	switch {
	case errors.As(err, &ae):
		writeProblem(w, r, ae.status, ae.kind, ae.err.Error())
	case errors.Is(err, engine.ErrNotFound):
		writeProblem(w, r, http.StatusNotFound, "saga-not-found", err.Error())
	case errors.Is(err, engine.ErrEventNotFound):
		writeProblem(w, r, http.StatusNotFound, "event-not-found", err.Error())
	case errors.Is(err, engine.ErrInvalidID):
		writeProblem(w, r, http.StatusBadRequest, "invalid-id", err.Error())
	case errors.Is(err, engine.ErrUnknownDefinition):
		writeProblem(w, r, http.StatusUnprocessableEntity, "unknown-definition", err.Error())
	case errors.Is(err, engine.ErrKeyReused):
		detail := err.Error()
		if hints := errors.GetAllHints(err); len(hints) > 0 {
			detail += "; " + strings.Join(hints, "; ")
		}
		writeProblem(w, r, http.StatusConflict, "idempotency-key-reused", detail)
	case errors.Is(err, engine.ErrConflict):
		writeProblem(w, r, http.StatusConflict, "conflict", err.Error())
	case errors.Is(err, engine.ErrInvalidInput):
		writeProblem(w, r, http.StatusBadRequest, "invalid-input", err.Error())
	case errors.Is(err, saga.ErrInvalidDefinition):
		writeProblem(w, r, http.StatusUnprocessableEntity, "invalid-definition", err.Error())
	case errors.Is(err, engine.ErrClosed), errors.Is(err, context.Canceled) && r.Context().Err() != nil:
		writeProblem(w, r, http.StatusServiceUnavailable, "shutting-down", "sagad is shutting down; try again")
	default:
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		writeProblem(w, r, http.StatusInternalServerError, "internal", "internal error; the daemon's log has the details")
	}
}

// writeJSON answers with v as JSON.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	if err := enc.Encode(v); err != nil {
		slog.Debug("write answer", "err", err)
	}
}
