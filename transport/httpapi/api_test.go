package httpapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/sagad/sagad/client"
	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/transport/httpapi"
)

// spec3 is a three-step definition (reserve, charge, ship) whose steps call
// base+"/<step>" and compensate with base+"/<step>/undo"; extra is added to
// every step's action (such as `,"timeout":"5s"`).
func spec3(base, extra string) string {
	return fmt.Sprintf(`{"steps":[
		{"name":"reserve","action":{"url":"%[1]s/reserve"%[2]s},"compensation":{"url":"%[1]s/reserve/undo"}},
		{"name":"charge","action":{"url":"%[1]s/charge"%[2]s},"compensation":{"url":"%[1]s/charge/undo"}},
		{"name":"ship","action":{"url":"%[1]s/ship"%[2]s},"compensation":{"url":"%[1]s/ship/undo"}}]}`, base, extra)
}

// asJSON encodes v for comparisons that must not depend on time zones or
// pointer identity.
func asJSON(tb testing.TB, v any) string {
	tb.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		tb.Fatalf("encode %T: %v", v, err)
	}
	return string(b)
}

func TestSuccessPath(t *testing.T) {
	t.Parallel()
	p := newParticipant(t)
	a := newAPI(t, nil)

	// Definitions: new, the same again (also with other whitespace), changed.
	spec := spec3(p.URL(), "")
	v1 := a.put(t, "order", spec, http.StatusCreated)
	again := a.put(t, "order", spec, http.StatusOK)
	if again.Version != v1.Version {
		t.Errorf("the same spec PUT again has version %s, want %s", again.Version, v1.Version)
	}
	if re := a.put(t, "order", "\n  "+strings.ReplaceAll(spec, "\t", "    ")+"\n", http.StatusOK); re.Version != v1.Version {
		t.Errorf("the spec with other whitespace has version %s, want %s", re.Version, v1.Version)
	}
	spec = spec3(p.URL(), `,"timeout":"5s"`)
	v2 := a.put(t, "order", spec, http.StatusCreated)
	if v2.Version == v1.Version {
		t.Fatalf("a changed spec kept version %s, want a new one", v1.Version)
	}
	got, err := a.c.Definition(ctx(t), "order")
	if err != nil {
		t.Fatalf("GET definition: %v", err)
	}
	if got.Version != v2.Version || string(got.Spec) != string(v2.Spec) {
		t.Errorf("GET /v1/definitions/order = version %s spec %s, want the latest: version %s spec %s",
			got.Version, got.Spec, v2.Version, v2.Spec)
	}
	if defs, err := a.c.Definitions(ctx(t)); err != nil || len(defs) != 1 || defs[0].Version != v2.Version {
		t.Errorf("GET /v1/definitions = %+v, %v; want only order at version %s", defs, err, v2.Version)
	}

	// Start and wait.
	var s client.Saga
	a.sendJSON(t, http.MethodPost, "/v1/sagas?wait=10s", `{"definition":"order","input":{"order":"A-1"}}`, http.StatusOK, &s)
	requireStatus(t, &s, "completed")
	if s.Definition != "order" || s.Version != v2.Version || string(s.Input) != `{"order":"A-1"}` {
		t.Errorf("saga definition %q version %q input %s, want order, %s, {\"order\":\"A-1\"}", s.Definition, s.Version, s.Input, v2.Version)
	}
	for _, name := range []string{"reserve", "charge", "ship"} {
		if want := fmt.Sprintf(`{"path":"/%s"}`, name); string(s.Data[name]) != want {
			t.Errorf("data[%s] = %s, want %s", name, s.Data[name], want)
		}
		if st := step(t, &s, name); st.Status != "succeeded" || st.Attempts != 1 || st.Phase != "action" {
			t.Errorf("step %s = %+v, want succeeded by its action in 1 attempt", name, st)
		}
	}
	if ship := p.callsTo("/ship"); len(ship) != 1 || len(ship[0].Body.Data) != 2 ||
		string(ship[0].Body.Data["charge"]) != `{"path":"/charge"}` || string(ship[0].Body.Input) != `{"order":"A-1"}` {
		t.Errorf("ship was called with %+v, want the input and the outputs of reserve and charge", ship)
	}

	// GET matches what the wait returned.
	g, err := a.c.Get(ctx(t), s.ID)
	if err != nil {
		t.Fatalf("GET saga: %v", err)
	}
	if asJSON(t, g) != asJSON(t, &s) {
		t.Errorf("GET /v1/sagas/%s =\n  %s\nwant what POST ?wait returned:\n  %s", s.ID, asJSON(t, g), asJSON(t, &s))
	}

	// The log: started, then each step's attempt started and succeeded, in order.
	entries, err := a.c.Log(ctx(t), s.ID)
	if err != nil {
		t.Fatalf("GET log: %v", err)
	}
	var attempts []string
	for i, e := range entries {
		if i > 0 && e.Seq <= entries[i-1].Seq {
			t.Errorf("log entry %d has seq %d after %d: want increasing", i, e.Seq, entries[i-1].Seq)
		}
		if strings.HasPrefix(e.Event, "attempt_") {
			attempts = append(attempts, fmt.Sprintf("%s %s %s %d", e.Event, e.Step, e.Phase, e.Attempt))
		}
	}
	want := []string{
		"attempt_started reserve action 1", "attempt_succeeded reserve action 1",
		"attempt_started charge action 1", "attempt_succeeded charge action 1",
		"attempt_started ship action 1", "attempt_succeeded ship action 1",
	}
	if !slices.Equal(attempts, want) {
		t.Errorf("log attempts:\n  %s\nwant:\n  %s", strings.Join(attempts, "\n  "), strings.Join(want, "\n  "))
	}
	if len(entries) == 0 || entries[0].Event != "saga_started" || entries[len(entries)-1].Status != "completed" {
		t.Errorf("log %+v: want saga_started first and the completed status last", entries)
	}

	// Without wait: 202, Location, {"id","status"} only.
	var started map[string]any
	resp := a.sendJSON(t, http.MethodPost, "/v1/sagas", `{"definition":"order"}`, http.StatusAccepted, &started)
	id, _ := started["id"].(string)
	if _, err := ulid.ParseStrict(id); err != nil || started["status"] != "running" || len(started) != 2 {
		t.Errorf("202 body %v: want exactly an id (a ULID) and status running", started)
	}
	if loc := resp.Header.Get("Location"); loc != "/v1/sagas/"+id {
		t.Errorf("202 Location %q, want /v1/sagas/%s", loc, id)
	}
	requireStatus(t, a.wait(t, id), "completed")
}

func TestCompensationRunsInReverse(t *testing.T) {
	t.Parallel()
	p := newParticipant(t)
	p.on("/ship", status(http.StatusUnprocessableEntity))
	a := newAPI(t, nil)
	a.put(t, "order", spec3(p.URL(), ""), http.StatusCreated)

	s := a.run(t, "order", nil)
	requireStatus(t, s, "compensated")
	want := []string{"/reserve", "/charge", "/ship", "/charge/undo", "/reserve/undo"}
	if got := p.paths(s.ID); !slices.Equal(got, want) {
		t.Errorf("calls %v, want %v: the succeeded steps undone last first, the failed step not undone", got, want)
	}
	for name, want := range map[string]string{"reserve": "compensated", "charge": "compensated", "ship": "failed"} {
		if st := step(t, s, name); st.Status != want {
			t.Errorf("step %s is %s, want %s", name, st.Status, want)
		}
	}
	if !strings.Contains(s.Error, "422") || !strings.Contains(s.Error, "ship") {
		t.Errorf("saga error %q: want it to name the step ship and its 422", s.Error)
	}
}

func TestRetryThenSuccess(t *testing.T) {
	t.Parallel()
	p := newParticipant(t)
	p.on("/charge", sequence(http.StatusServiceUnavailable, http.StatusServiceUnavailable, http.StatusOK))
	a := newAPI(t, nil)
	a.put(t, "order", fmt.Sprintf(`{"steps":[{"name":"charge","action":{"url":"%s/charge"},
		"retry":{"max_attempts":5,"initial_interval":"10ms","max_interval":"20ms"}}]}`, p.URL()), http.StatusCreated)

	s := a.run(t, "order", nil)
	requireStatus(t, s, "completed")
	if st := step(t, s, "charge"); st.Attempts != 3 {
		t.Errorf("charge attempts %d, want 3 (two 503s, then 200)", st.Attempts)
	}
	var attempts []string
	for _, c := range p.callsTo("/charge") {
		attempts = append(attempts, c.Attempt)
	}
	if !slices.Equal(attempts, []string{"1", "2", "3"}) {
		t.Errorf("charge called with X-Saga-Attempt %v, want [1 2 3]", attempts)
	}
	entries, err := a.c.Log(ctx(t), s.ID)
	if err != nil {
		t.Fatalf("GET log: %v", err)
	}
	failed := 0
	for _, e := range entries {
		if e.Event == "attempt_failed" {
			failed++
			if e.Next.IsZero() || !strings.Contains(e.Error, "503") {
				t.Errorf("failed attempt %+v: want the 503 and the time of the retry", e)
			}
		}
	}
	if failed != 2 {
		t.Errorf("log has %d failed attempts, want 2", failed)
	}
}

func TestPermanentClientErrorIsNotRetried(t *testing.T) {
	t.Parallel()
	p := newParticipant(t)
	p.on("/charge", status(http.StatusBadRequest))
	a := newAPI(t, nil)
	a.put(t, "order", fmt.Sprintf(`{"steps":[
		{"name":"reserve","action":{"url":"%[1]s/reserve"},"compensation":{"url":"%[1]s/reserve/undo"}},
		{"name":"charge","action":{"url":"%[1]s/charge"},"retry":{"max_attempts":5,"initial_interval":"10ms"}}]}`, p.URL()), http.StatusCreated)

	s := a.run(t, "order", nil)
	requireStatus(t, s, "compensated")
	if n := len(p.callsTo("/charge")); n != 1 {
		t.Errorf("charge called %d times, want once: a 400 is permanent", n)
	}
	if st := step(t, s, "charge"); st.Attempts != 1 || st.Status != "failed" {
		t.Errorf("charge = %+v, want failed after 1 attempt", st)
	}
	if got := p.paths(s.ID); !slices.Equal(got, []string{"/reserve", "/charge", "/reserve/undo"}) {
		t.Errorf("calls %v, want reserve, charge, then reserve's compensation", got)
	}
}

func TestAttemptTimeoutIsRetried(t *testing.T) {
	t.Parallel()
	p := newParticipant(t)
	g := p.gate() // never opened: the first call is held until the engine gives up on it
	p.on("/slow", g.hold(first, status(http.StatusOK)))
	a := newAPI(t, nil)
	a.put(t, "order", fmt.Sprintf(`{"steps":[{"name":"slow","action":{"url":"%s/slow","timeout":"100ms"},
		"retry":{"initial_interval":"10ms"}}]}`, p.URL()), http.StatusCreated)

	s := a.run(t, "order", nil)
	requireStatus(t, s, "completed")
	if st := step(t, s, "slow"); st.Attempts != 2 {
		t.Errorf("slow attempts %d, want 2 (a timeout, then an answer)", st.Attempts)
	}
	if calls := p.callsTo("/slow"); len(calls) != 2 || calls[0].Key != calls[1].Key {
		t.Errorf("slow calls %+v: want 2 with the same idempotency key", calls)
	}
	entries, err := a.c.Log(ctx(t), s.ID)
	if err != nil {
		t.Fatalf("GET log: %v", err)
	}
	i := slices.IndexFunc(entries, func(e client.LogEntry) bool { return e.Event == "attempt_failed" })
	if i < 0 || !strings.Contains(entries[i].Error, "no answer in time") {
		t.Fatalf("log %+v: want a failed attempt that says there was no answer in time", entries)
	}
	if d := entries[i].Duration; d < 100*time.Millisecond || d > 10*time.Second {
		t.Errorf("failed attempt took %v, want about its 100ms timeout", d)
	}
	// On the wire a duration is a Go duration string, as in definitions.
	var raw struct {
		Entries []map[string]any `json:"entries"`
	}
	a.sendJSON(t, http.MethodGet, "/v1/sagas/"+s.ID+"/log", "", http.StatusOK, &raw)
	if d, ok := raw.Entries[i]["duration"].(string); !ok || d != entries[i].Duration.String() {
		t.Errorf("log entry %d on the wire: duration %#v, want the string %q", i, raw.Entries[i]["duration"], entries[i].Duration.String())
	}
}

func TestFallback(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		fallback int
		want     string
	}{
		{"fallback succeeds", http.StatusOK, "completed"},
		{"fallback fails and is not retried", http.StatusServiceUnavailable, "compensated"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := newParticipant(t)
			p.on("/inv", status(http.StatusNotFound))
			p.on("/inv2", status(tt.fallback))
			a := newAPI(t, nil)
			a.put(t, "order", fmt.Sprintf(`{"steps":[{"name":"reserve","action":{"url":"%[1]s/inv"},
				"fallback":{"url":"%[1]s/inv2"},"retry":{"initial_interval":"10ms"}}]}`, p.URL()), http.StatusCreated)

			s := a.run(t, "order", nil)
			requireStatus(t, s, tt.want)
			if n := len(p.callsTo("/inv")); n != 1 {
				t.Errorf("action called %d times, want once (404 is permanent)", n)
			}
			fb := p.callsTo("/inv2")
			if len(fb) != 1 || fb[0].Key != s.ID+"/reserve/fallback" || fb[0].Phase != "fallback" {
				t.Errorf("fallback calls %+v, want one in phase fallback with key %s/reserve/fallback", fb, s.ID)
			}
			st := step(t, s, "reserve")
			if tt.want == "completed" {
				if !st.FallbackUsed || st.Phase != "fallback" || string(s.Data["reserve"]) != `{"path":"/inv2"}` {
					t.Errorf("step %+v data %s: want succeeded through the fallback, with its output", st, s.Data["reserve"])
				}
			} else if st.FallbackUsed {
				t.Errorf("step %+v: fallback_used is true, but the fallback failed", st)
			}
		})
	}
}

func TestSharedCircuitBreaker(t *testing.T) {
	t.Parallel()
	p := newParticipant(t)
	p.on("/inv", status(http.StatusInternalServerError))
	a := newAPI(t, nil)
	breaker := `"circuit_breaker":{"name":"inv","failures":2,"open_for":"1h"}`
	a.put(t, "plain", fmt.Sprintf(`{"steps":[{"name":"reserve","action":{"url":"%s/inv"},
		"retry":{"max_attempts":2,"initial_interval":"10ms"},%s}]}`, p.URL(), breaker), http.StatusCreated)
	a.put(t, "guarded", fmt.Sprintf(`{"steps":[{"name":"reserve","action":{"url":"%[1]s/inv"},
		"fallback":{"url":"%[1]s/inv-fallback"},%[2]s}]}`, p.URL(), breaker), http.StatusCreated)

	// Two failures through "plain" open the breaker.
	s := a.run(t, "plain", nil)
	requireStatus(t, s, "compensated")
	if n := len(p.callsTo("/inv")); n != 2 {
		t.Fatalf("inv called %d times by the first saga, want 2", n)
	}

	// "guarded" shares it: its step goes to the fallback without calling inv.
	g := a.run(t, "guarded", nil)
	requireStatus(t, g, "completed")
	if n := len(p.callsTo("/inv")); n != 2 {
		t.Errorf("inv called %d times in all, want still 2: the open breaker must keep the second saga off it", n)
	}
	if st := step(t, g, "reserve"); !st.FallbackUsed || len(p.callsTo("/inv-fallback")) != 1 {
		t.Errorf("step %+v, fallback calls %d: want the step done by its fallback, called once", st, len(p.callsTo("/inv-fallback")))
	}
	entries, err := a.c.Log(ctx(t), g.ID)
	if err != nil {
		t.Fatalf("GET log: %v", err)
	}
	if !slices.ContainsFunc(entries, func(e client.LogEntry) bool { return e.Event == "breaker_open" }) {
		t.Errorf("log of the guarded saga %+v: want a breaker_open entry", entries)
	}

	// A third definition may not give the shared breaker other settings.
	resp, body := a.send(t, http.MethodPut, "/v1/definitions/other", fmt.Sprintf(`{"steps":[{"name":"reserve",
		"action":{"url":"%s/inv"},"circuit_breaker":{"name":"inv","failures":3,"open_for":"1h"}}]}`, p.URL()), nil)
	requireProblem(t, resp, body, http.StatusUnprocessableEntity, `"inv"`)
}

func TestIdempotentStart(t *testing.T) {
	t.Parallel()
	p := newParticipant(t)
	a := newAPI(t, nil)
	a.put(t, "order", spec3(p.URL(), ""), http.StatusCreated)

	body := `{"definition":"order","idempotency_key":"order-A-1"}`
	var first client.Started
	resp := a.sendJSON(t, http.MethodPost, "/v1/sagas", body, http.StatusAccepted, &first)
	if resp.Header.Get(client.DuplicateHeader) != "" {
		t.Errorf("first start has header %s: %q, want none", client.DuplicateHeader, resp.Header.Get(client.DuplicateHeader))
	}
	var second client.Saga
	resp = a.sendJSON(t, http.MethodPost, "/v1/sagas", body, http.StatusOK, &second)
	if second.ID != first.ID || second.IdempotencyKey != "order-A-1" {
		t.Errorf("second start returned saga %s (key %q), want %s (key order-A-1)", second.ID, second.IdempotencyKey, first.ID)
	}
	if got := resp.Header.Get(client.DuplicateHeader); got != "true" {
		t.Errorf("second start: header %s = %q, want true", client.DuplicateHeader, got)
	}
	if loc := resp.Header.Get("Location"); loc != "/v1/sagas/"+first.ID {
		t.Errorf("second start: Location %q, want /v1/sagas/%s", loc, first.ID)
	}
	st, err := a.c.Start(ctx(t), "order", nil, client.StartOptions{IdempotencyKey: "order-A-1"})
	if err != nil || st.ID != first.ID || !st.Existing {
		t.Errorf("client Start with the same key = %+v, %v; want the existing saga %s", st, err, first.ID)
	}
	a.wait(t, first.ID)
	page, err := a.c.List(ctx(t), client.ListOptions{})
	if err != nil {
		t.Fatalf("list: %v", err)
	}
	if len(page.Sagas) != 1 || page.Sagas[0].ID != first.ID {
		t.Errorf("list has %d sagas, want only %s", len(page.Sagas), first.ID)
	}
	if n := len(p.callsTo("/reserve")); n != 1 {
		t.Errorf("reserve called %d times, want once: the duplicates started nothing", n)
	}
}

func TestIdempotentStartConcurrent(t *testing.T) {
	t.Parallel()
	p := newParticipant(t)
	a := newAPI(t, nil)
	a.put(t, "order", spec3(p.URL(), ""), http.StatusCreated)

	const n = 16
	ids := make([]string, n)
	existing := make([]bool, n)
	var wg sync.WaitGroup
	var failed atomic.Int32
	for i := range n {
		wg.Go(func() {
			st, err := a.c.Start(ctx(t), "order", nil, client.StartOptions{IdempotencyKey: "same"})
			if err != nil {
				t.Errorf("start %d: %v", i, err)
				failed.Add(1)
				return
			}
			ids[i], existing[i] = st.ID, st.Existing
		})
	}
	wg.Wait()
	if failed.Load() > 0 {
		t.FailNow()
	}
	news := 0
	for i := range n {
		if ids[i] != ids[0] {
			t.Errorf("start %d returned %s, start 0 returned %s: want one saga", i, ids[i], ids[0])
		}
		if !existing[i] {
			news++
		}
	}
	if news != 1 {
		t.Errorf("%d of %d concurrent starts with one key created a saga, want exactly 1", news, n)
	}
	a.wait(t, ids[0])
	if page, err := a.c.List(ctx(t), client.ListOptions{}); err != nil || len(page.Sagas) != 1 {
		t.Errorf("list = %v, %v; want one saga", page, err)
	}
}

func TestAbort(t *testing.T) {
	t.Parallel()
	p := newParticipant(t)
	charge, undo := p.gate(), p.gate()
	p.on("/charge", charge.hold(nil, status(http.StatusOK)))
	p.on("/charge/undo", undo.hold(first, status(http.StatusOK)))
	a := newAPI(t, nil)
	a.put(t, "order", spec3(p.URL(), ""), http.StatusCreated)

	id := a.start(t, "order", nil)
	charge.waitEntered(t, "charge")
	var ab client.Started
	a.sendJSON(t, http.MethodPost, "/v1/sagas/"+id+"/abort", "", http.StatusAccepted, &ab)
	if ab.ID != id || ab.Status != "running" {
		t.Errorf("abort answered %+v, want id %s, status running (the attempt in flight finishes first)", ab, id)
	}
	charge.open()

	// While compensating, another abort changes nothing.
	undo.waitEntered(t, "charge's compensation")
	a.sendJSON(t, http.MethodPost, "/v1/sagas/"+id+"/abort", "", http.StatusAccepted, &ab)
	if ab.Status != "compensating" {
		t.Errorf("abort of a compensating saga answered status %q, want compensating", ab.Status)
	}
	undo.open()

	s := a.wait(t, id)
	requireStatus(t, s, "compensated")
	if !strings.Contains(s.Error, "abort") {
		t.Errorf("saga error %q: want it to say the saga was aborted", s.Error)
	}
	if got, want := p.paths(id), []string{"/reserve", "/charge", "/charge/undo", "/reserve/undo"}; !slices.Equal(got, want) {
		t.Errorf("calls %v, want %v: ship never runs, the succeeded steps are undone last first", got, want)
	}
	if st := step(t, s, "ship"); st.Status != "skipped" || st.Attempts != 0 {
		t.Errorf("ship = %+v, want skipped, never attempted", st)
	}

	// A finished saga cannot be aborted.
	resp, body := a.send(t, http.MethodPost, "/v1/sagas/"+id+"/abort", "", nil)
	requireProblem(t, resp, body, http.StatusConflict, "compensated")
	done := a.run(t, "order", nil)
	requireStatus(t, done, "completed")
	resp, body = a.send(t, http.MethodPost, "/v1/sagas/"+done.ID+"/abort", "", nil)
	requireProblem(t, resp, body, http.StatusConflict, "completed")
}

func TestRetryFailedSaga(t *testing.T) {
	t.Parallel()
	p := newParticipant(t)
	var fixed atomic.Bool
	p.on("/reserve/undo", func(n int, w http.ResponseWriter, r *http.Request) {
		if fixed.Load() {
			status(http.StatusOK)(n, w, r)
		} else {
			status(http.StatusInternalServerError)(n, w, r)
		}
	})
	p.on("/charge", status(http.StatusBadRequest))
	a := newAPI(t, nil)
	a.put(t, "order", fmt.Sprintf(`{"steps":[
		{"name":"reserve","action":{"url":"%[1]s/reserve"},
			"compensation":{"url":"%[1]s/reserve/undo","retry":{"max_attempts":2,"initial_interval":"10ms"}}},
		{"name":"charge","action":{"url":"%[1]s/charge"}}]}`, p.URL()), http.StatusCreated)

	s := a.run(t, "order", nil)
	requireStatus(t, s, "failed")
	if st := step(t, s, "reserve"); st.Status != "compensating" || st.CompensationAttempts != 2 {
		t.Errorf("reserve = %+v, want its compensation failed after 2 attempts", st)
	}

	// Retry while the participant is still broken: a fresh budget of 2, failed again.
	var rt client.Started
	a.sendJSON(t, http.MethodPost, "/v1/sagas/"+s.ID+"/retry", "", http.StatusAccepted, &rt)
	if rt.ID != s.ID || rt.Status != "compensating" {
		t.Errorf("retry answered %+v, want id %s, status compensating", rt, s.ID)
	}
	s = a.wait(t, s.ID)
	requireStatus(t, s, "failed")
	if n := len(p.callsTo("/reserve/undo")); n != 4 {
		t.Errorf("compensation called %d times, want 4 (2, then 2 after the retry)", n)
	}

	// Fixed: the retry, with a corrected input, compensates.
	fixed.Store(true)
	a.sendJSON(t, http.MethodPost, "/v1/sagas/"+s.ID+"/retry", `{"input": {"note": "corrected"}}`, http.StatusAccepted, &rt)
	s = a.wait(t, s.ID)
	requireStatus(t, s, "compensated")
	if string(s.Input) != `{"note":"corrected"}` {
		t.Errorf("input after the retry: %s, want the corrected one", s.Input)
	}
	entries, err := a.c.Log(ctx(t), s.ID)
	if err != nil {
		t.Fatal(err)
	}
	if i := slices.IndexFunc(entries, func(e client.LogEntry) bool { return e.Event == "input_replaced" }); i < 0 ||
		string(entries[i].Input) != `{"note":"corrected"}` || string(entries[i].PrevInput) != "null" {
		t.Errorf("log %+v: want an input_replaced entry with the new input", entries)
	}
	if st := step(t, s, "reserve"); st.Status != "compensated" {
		t.Errorf("reserve = %+v, want compensated", st)
	}
	if n := len(p.callsTo("/reserve/undo")); n != 5 {
		t.Errorf("compensation called %d times, want 5", n)
	}
	for _, c := range p.callsTo("/reserve/undo") {
		if c.Key != s.ID+"/reserve/compensation" {
			t.Errorf("compensation called with key %q, want %s/reserve/compensation on every attempt", c.Key, s.ID)
		}
	}

	// Nothing to retry in a finished saga that did not fail.
	resp, body := a.send(t, http.MethodPost, "/v1/sagas/"+s.ID+"/retry", "", nil)
	requireProblem(t, resp, body, http.StatusConflict, "compensated")
	p.on("/charge", status(http.StatusOK))
	done := a.run(t, "order", nil)
	requireStatus(t, done, "completed")
	resp, body = a.send(t, http.MethodPost, "/v1/sagas/"+done.ID+"/retry", "", nil)
	requireProblem(t, resp, body, http.StatusConflict, "completed")
}

func TestListPagination(t *testing.T) {
	t.Parallel()
	p := newParticipant(t)
	p.on("/bad", status(http.StatusBadRequest))
	a := newAPI(t, nil)
	a.put(t, "good", fmt.Sprintf(`{"steps":[{"name":"s","action":{"url":"%s/good"}}]}`, p.URL()), http.StatusCreated)
	a.put(t, "bad", fmt.Sprintf(`{"steps":[{"name":"s","action":{"url":"%s/bad"}}]}`, p.URL()), http.StatusCreated)

	// 25 sagas, one after the other: 15 completed (good), 10 compensated (bad).
	var started []string
	for i := range 25 {
		def := "good"
		if i%5 == 1 || i%5 == 3 {
			def = "bad"
		}
		started = append(started, a.run(t, def, map[string]int{"i": i}).ID)
	}
	newestFirst := slices.Clone(started)
	slices.Reverse(newestFirst)

	var listed []string
	cursor, pages := "", 0
	for {
		var page client.Page
		path := "/v1/sagas?limit=10"
		if cursor != "" {
			path += "&cursor=" + cursor
		}
		a.sendJSON(t, http.MethodGet, path, "", http.StatusOK, &page)
		pages++
		if want := min(10, 25-len(listed)); len(page.Sagas) != want {
			t.Fatalf("page %d has %d sagas, want %d", pages, len(page.Sagas), want)
		}
		for _, s := range page.Sagas {
			listed = append(listed, s.ID)
		}
		if page.NextCursor == "" {
			break
		}
		if pages == 3 {
			t.Fatalf("page 3 has next_cursor %q, want none: 25 sagas fit in 3 pages of 10", page.NextCursor)
		}
		cursor = page.NextCursor
	}
	if pages != 3 {
		t.Errorf("%d pages, want 3", pages)
	}
	if !slices.Equal(listed, newestFirst) {
		t.Errorf("listed\n  %v\nwant the 25 sagas newest first\n  %v", listed, newestFirst)
	}

	tests := []struct {
		query string
		want  func(i int) bool // which of the started sagas (by index) the query lists
	}{
		{"status=completed", func(i int) bool { return i%5 != 1 && i%5 != 3 }},
		{"status=compensated", func(i int) bool { return i%5 == 1 || i%5 == 3 }},
		{"definition=bad", func(i int) bool { return i%5 == 1 || i%5 == 3 }},
		{"definition=good&status=completed", func(i int) bool { return i%5 != 1 && i%5 != 3 }},
		{"definition=good&status=compensated", func(int) bool { return false }},
		{"status=running", func(int) bool { return false }},
		{"definition=nope", func(int) bool { return false }},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			var page client.Page
			a.sendJSON(t, http.MethodGet, "/v1/sagas?"+tt.query, "", http.StatusOK, &page)
			var got, want []string
			for _, s := range page.Sagas {
				got = append(got, s.ID)
			}
			for i := len(started) - 1; i >= 0; i-- {
				if tt.want(i) {
					want = append(want, started[i])
				}
			}
			if !slices.Equal(got, want) || page.NextCursor != "" {
				t.Errorf("GET /v1/sagas?%s = %v (next %q), want %v newest first on one page", tt.query, got, page.NextCursor, want)
			}
			if page.Sagas == nil {
				t.Errorf("GET /v1/sagas?%s: sagas is null, want an empty array", tt.query)
			}
		})
	}
}

func TestParticipantsSeeProtocolHeaders(t *testing.T) {
	t.Parallel()
	p := newParticipant(t)
	p.on("/charge", sequence(http.StatusServiceUnavailable, http.StatusOK))
	p.on("/ship", status(http.StatusNotFound))
	p.on("/ship-fallback", status(http.StatusConflict))
	a := newAPI(t, nil)
	a.put(t, "order", fmt.Sprintf(`{"steps":[
		{"name":"reserve","action":{"url":"%[1]s/reserve"},"compensation":{"url":"%[1]s/reserve/undo"}},
		{"name":"charge","action":{"url":"%[1]s/charge"},"compensation":{"url":"%[1]s/charge/undo"},
			"retry":{"initial_interval":"10ms"}},
		{"name":"ship","action":{"url":"%[1]s/ship"},"fallback":{"url":"%[1]s/ship-fallback"}}]}`, p.URL()), http.StatusCreated)

	s := a.run(t, "order", map[string]string{"order": "A-1"})
	requireStatus(t, s, "compensated")
	type seen struct{ path, step, phase, attempt string }
	want := []seen{
		{"/reserve", "reserve", "action", "1"},
		{"/charge", "charge", "action", "1"},
		{"/charge", "charge", "action", "2"},
		{"/ship", "ship", "action", "1"},
		{"/ship-fallback", "ship", "fallback", "1"},
		{"/charge/undo", "charge", "compensation", "1"},
		{"/reserve/undo", "reserve", "compensation", "1"},
	}
	p.mu.Lock()
	calls := slices.Clone(p.calls)
	p.mu.Unlock()
	if len(calls) != len(want) {
		t.Fatalf("participants saw %d calls %v, want %d", len(calls), p.paths(""), len(want))
	}
	for i, c := range calls {
		w := want[i]
		key := s.ID + "/" + w.step + "/" + w.phase
		if c.Path != w.path || c.Key != key || c.SagaID != s.ID || c.Def != "order" || c.Step != w.step ||
			c.Phase != w.phase || c.Attempt != w.attempt {
			t.Errorf("call %d: %s key %q X-Saga-Id %q X-Saga-Definition %q X-Saga-Step %q X-Saga-Phase %q X-Saga-Attempt %q\n"+
				"  want %s key %q X-Saga-Id %q, order, %s, %s, %s", i, c.Path, c.Key, c.SagaID, c.Def, c.Step, c.Phase, c.Attempt,
				w.path, key, s.ID, w.step, w.phase, w.attempt)
		}
		b := c.Body
		if b.SagaID != s.ID || b.Definition != "order" || b.Step != w.step || b.Phase != w.phase ||
			fmt.Sprint(b.Attempt) != w.attempt || string(b.Input) != `{"order":"A-1"}` || b.Data == nil {
			t.Errorf("call %d body %+v: want saga %s, order, step %s, phase %s, attempt %s, the input and data",
				i, b, s.ID, w.step, w.phase, w.attempt)
		}
	}
}

func TestRunningSagaKeepsItsDefinitionVersion(t *testing.T) {
	t.Parallel()
	p := newParticipant(t)
	g := p.gate()
	p.on("/first", g.hold(first, status(http.StatusOK)))
	a := newAPI(t, nil)
	spec := func(second string) string {
		return fmt.Sprintf(`{"steps":[{"name":"first","action":{"url":"%[1]s/first"}},
			{"name":"second","action":{"url":"%[1]s/%[2]s"}}]}`, p.URL(), second)
	}
	v1 := a.put(t, "order", spec("old"), http.StatusCreated)

	id := a.start(t, "order", nil)
	g.waitEntered(t, "the first step")
	v2 := a.put(t, "order", spec("new"), http.StatusCreated)
	if v2.Version == v1.Version {
		t.Fatalf("the changed definition kept version %s", v1.Version)
	}
	g.open()

	old := a.wait(t, id)
	requireStatus(t, old, "completed")
	if got := p.paths(id); !slices.Equal(got, []string{"/first", "/old"}) || old.Version != v1.Version {
		t.Errorf("the running saga (version %s) called %v, want version %s calling /first then the OLD /old", old.Version, got, v1.Version)
	}
	fresh := a.run(t, "order", nil)
	requireStatus(t, fresh, "completed")
	if got := p.paths(fresh.ID); !slices.Equal(got, []string{"/first", "/new"}) || fresh.Version != v2.Version {
		t.Errorf("a new saga (version %s) called %v, want version %s calling /first then /new", fresh.Version, got, v2.Version)
	}

	// PUT the old version again: stored already (200), and the latest again.
	if back := a.put(t, "order", spec("old"), http.StatusOK); back.Version != v1.Version {
		t.Errorf("the old spec PUT again has version %s, want %s", back.Version, v1.Version)
	}
	if d, err := a.c.Definition(ctx(t), "order"); err != nil || d.Version != v1.Version {
		t.Errorf("GET definition after the old spec was PUT again = %+v, %v; want version %s", d, err, v1.Version)
	}
	again := a.run(t, "order", nil)
	if got := p.paths(again.ID); !slices.Equal(got, []string{"/first", "/old"}) || again.Version != v1.Version {
		t.Errorf("a saga started after the old spec was PUT again (version %s) called %v, want version %s calling /old",
			again.Version, got, v1.Version)
	}
}

func TestAbortWakesSagaWaitingForRetry(t *testing.T) {
	t.Parallel()
	p := newParticipant(t)
	p.on("/charge", status(http.StatusServiceUnavailable))
	retrying := make(chan engine.AttemptInfo, 8)
	a := newAPIWith(t, options{engine: func(o *engine.Options) {
		o.Hooks.AttemptFinished = func(info engine.AttemptInfo) {
			if info.Retry {
				retrying <- info
			}
		}
	}})
	a.put(t, "order", fmt.Sprintf(`{"steps":[
		{"name":"reserve","action":{"url":"%[1]s/reserve"},"compensation":{"url":"%[1]s/reserve/undo"}},
		{"name":"charge","action":{"url":"%[1]s/charge"},"retry":{"initial_interval":"1h","max_interval":"1h"}}]}`, p.URL()), http.StatusCreated)

	id := a.start(t, "order", nil)
	select {
	case info := <-retrying:
		if info.Step != "charge" {
			t.Fatalf("retry scheduled for %+v, want charge", info)
		}
	case <-time.After(patience):
		t.Fatalf("charge's failed attempt was not committed with a retry within %s", patience)
	}
	s, err := a.c.Get(ctx(t), id)
	if err != nil {
		t.Fatalf("GET saga: %v", err)
	}
	if s.Status != "running" || time.Until(s.WakeAt) < 30*time.Minute {
		t.Fatalf("saga %s wake_at %s: want running, waiting about an hour for the retry", s.Status, s.WakeAt)
	}
	a.sendJSON(t, http.MethodPost, "/v1/sagas/"+id+"/abort", "", http.StatusAccepted, nil)
	s = a.wait(t, id) // within patience: the abort must not wait for the hour to pass
	requireStatus(t, s, "compensated")
	if got := p.paths(id); !slices.Equal(got, []string{"/reserve", "/charge", "/reserve/undo"}) {
		t.Errorf("calls %v, want reserve, one charge, reserve's compensation", got)
	}
	if st := step(t, s, "charge"); st.Status != "failed" || st.Attempts != 1 {
		t.Errorf("charge = %+v, want failed after its one attempt", st)
	}
}

func TestWaitIsCappedByMaxWait(t *testing.T) {
	t.Parallel()
	p := newParticipant(t)
	g := p.gate()
	p.on("/reserve", g.hold(nil, status(http.StatusOK)))
	const maxWait = 100 * time.Millisecond
	a := newAPI(t, func(c *httpapi.Config) { c.MaxWait = maxWait })
	a.put(t, "order", spec3(p.URL(), ""), http.StatusCreated)

	// A start asking to wait an hour answers 202 once MaxWait is over.
	began := time.Now()
	var st client.Started
	a.sendJSON(t, http.MethodPost, "/v1/sagas?wait=1h", `{"definition":"order"}`, http.StatusAccepted, &st)
	if took := time.Since(began); took < maxWait || st.Status != "running" {
		t.Errorf("start with wait=1h answered %+v after %s, want running after MaxWait (%s)", st, took, maxWait)
	}
	g.waitEntered(t, "reserve")

	// So does a GET: 200 with the saga as it is.
	began = time.Now()
	var s client.Saga
	a.sendJSON(t, http.MethodGet, "/v1/sagas/"+st.ID+"?wait=1h", "", http.StatusOK, &s)
	if took := time.Since(began); took < maxWait || s.Status != "running" || !step(t, &s, "reserve").InFlight {
		t.Errorf("GET with wait=1h answered %s (steps %+v) after %s, want running with reserve in flight after MaxWait (%s)",
			s.Status, s.Steps, took, maxWait)
	}
	g.open()
	requireStatus(t, a.wait(t, st.ID), "completed")
}

// A query parameter a route does not take is refused, named, as a
// problem: a misspelt one must not be ignored in silence.
func TestUnknownQueryParameters(t *testing.T) {
	t.Parallel()
	a := newAPI(t, nil)
	for _, tt := range []struct {
		method, path, want string
	}{
		{"GET", "/v1/sagas?limt=5", "unknown query parameter limt: GET /v1/sagas takes status, definition, cursor, limit"},
		{"GET", "/v1/sagas/01J9Z3K8Q5W6X7Y8Z9A0B1C2D3/log?wait=1s", "unknown query parameter wait"},
		{"POST", "/v1/sagas?wiat=5s&x=1", "unknown query parameter wiat, x"},
	} {
		resp, body := a.send(t, tt.method, tt.path, `{}`, nil)
		if resp.StatusCode != http.StatusBadRequest || resp.Header.Get("Content-Type") != "application/problem+json" || !strings.Contains(string(body), tt.want) {
			t.Errorf("%s %s: %d %s %s; want a 400 problem saying %q", tt.method, tt.path, resp.StatusCode, resp.Header.Get("Content-Type"), body, tt.want)
		}
	}
	if resp, body := a.send(t, "GET", "/v1/sagas?limit=5&status=running", "", nil); resp.StatusCode != http.StatusOK {
		t.Errorf("known parameters: %d %s", resp.StatusCode, body)
	}
}

// With Config.Pprof the profiles are served behind the token; without it
// there are none.
func TestPprof(t *testing.T) {
	t.Parallel()
	on := newAPI(t, func(c *httpapi.Config) { c.Pprof, c.Token = true, "s3cret" })
	if resp, body := on.send(t, "GET", "/debug/pprof/", "", nil); resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "goroutine") {
		t.Errorf("GET /debug/pprof/ with the token: %d %.200s", resp.StatusCode, body)
	}
	if resp, _ := on.send(t, "GET", "/debug/pprof/", "", map[string]string{"Authorization": ""}); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("GET /debug/pprof/ without the token: %d, want 401", resp.StatusCode)
	}
	off := newAPI(t, nil)
	if resp, _ := off.send(t, "GET", "/debug/pprof/", "", nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /debug/pprof/ without Pprof: %d, want 404", resp.StatusCode)
	}
}

// TestPauseAndResume: POST /pause on a saga that waits for a retry pauses
// it; GET shows it paused and from what; /resume carries on; both answer
// 409 on a finished saga.
func TestPauseAndResume(t *testing.T) {
	t.Parallel()
	p := newParticipant(t)
	var fixed atomic.Bool
	p.on("/charge", func(n int, w http.ResponseWriter, r *http.Request) {
		if fixed.Load() {
			status(http.StatusOK)(n, w, r)
		} else {
			status(http.StatusServiceUnavailable)(n, w, r)
		}
	})
	retried := make(chan struct{}, 4)
	a := newAPIWith(t, options{engine: func(o *engine.Options) {
		o.Hooks.AttemptFinished = func(ai engine.AttemptInfo) {
			if ai.Retry {
				retried <- struct{}{}
			}
		}
	}})
	a.put(t, "order", fmt.Sprintf(`{"steps":[{"name":"charge","action":{"url":"%s/charge"},
		"retry":{"max_attempts":3,"initial_interval":"1h","max_interval":"1h"}}]}`, p.URL()), http.StatusCreated)
	id := a.start(t, "order", nil)
	<-retried // it waits an hour for its next attempt
	var rt client.Started
	a.sendJSON(t, http.MethodPost, "/v1/sagas/"+id+"/pause", "", http.StatusAccepted, &rt)
	if rt.Status != "paused" {
		t.Errorf("pause answered %+v, want status paused", rt)
	}
	a.sendJSON(t, http.MethodPost, "/v1/sagas/"+id+"/pause", "", http.StatusAccepted, &rt) // idempotent
	var s client.Saga
	a.sendJSON(t, http.MethodGet, "/v1/sagas/"+id, "", http.StatusOK, &s)
	if s.Status != "paused" || s.PausedFrom != "running" || s.Finished() {
		t.Fatalf("paused saga %+v: want paused from running, not finished", s)
	}
	var page client.Page
	a.sendJSON(t, http.MethodGet, "/v1/sagas?status=paused", "", http.StatusOK, &page)
	if len(page.Sagas) != 1 || page.Sagas[0].ID != id {
		t.Errorf("list of paused sagas %+v, want this one", page.Sagas)
	}
	fixed.Store(true)
	a.sendJSON(t, http.MethodPost, "/v1/sagas/"+id+"/resume", "", http.StatusAccepted, &rt)
	if rt.Status != "running" {
		t.Errorf("resume answered %+v, want status running", rt)
	}
	// Resumed, it waits for its retry time again (once its driver has
	// looked: nothing signals that from outside); an operator's retry runs
	// it now.
	for deadline := time.Now().Add(10 * time.Second); !s.WakeAt.After(time.Now()); time.Sleep(5 * time.Millisecond) {
		a.sendJSON(t, http.MethodGet, "/v1/sagas/"+id, "", http.StatusOK, &s)
		if time.Now().After(deadline) {
			t.Fatalf("resumed saga %+v never waited for its retry time again", s)
		}
	}
	a.sendJSON(t, http.MethodPost, "/v1/sagas/"+id+"/retry", "", http.StatusAccepted, &rt)
	requireStatus(t, a.wait(t, id), "completed")
	for _, op := range []string{"pause", "resume"} {
		resp, body := a.send(t, http.MethodPost, "/v1/sagas/"+id+"/"+op, "", nil)
		requireProblem(t, resp, body, http.StatusConflict, "completed")
	}
}

// TestAcceptedThenCompleted: a participant answers 202 and calls back
// later; in the second saga its callback reaches sagad before sagad has
// read the 202. Both complete with the data of the callback; a repeated
// callback is ignored; bad callbacks are 400 problems.
func TestAcceptedThenCompleted(t *testing.T) {
	t.Parallel()
	var a *api
	received := make(chan struct{}, 4) // a callback reached the API
	a = newAPIWith(t, options{httpServer: func(s *http.Server) {
		next := s.Handler
		s.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasSuffix(r.URL.Path, "/complete") {
				select {
				case received <- struct{}{}:
				default:
				}
			}
			next.ServeHTTP(w, r)
		})
	}})
	p := newParticipant(t)
	callbacks := make(chan error, 4)
	early := atomic.Bool{}
	p.on("/approve", func(n int, w http.ResponseWriter, r *http.Request) {
		attempt, _ := strconv.Atoi(r.Header.Get("X-Saga-Attempt"))
		id, phase := r.Header.Get("X-Saga-Id"), r.Header.Get("X-Saga-Phase")
		go func() {
			_, err := a.c.Complete(context.Background(), id, "approve",
				client.CompleteRequest{Phase: phase, Attempt: attempt, Status: 200, Data: json.RawMessage(`{"approved_by":"ann"}`)})
			callbacks <- err
		}()
		if early.Load() {
			<-received // the callback is at sagad before the 202 leaves
		}
		w.WriteHeader(http.StatusAccepted)
	})
	a.put(t, "approval", fmt.Sprintf(`{"steps":[{"name":"approve","action":{"url":"%s/approve","timeout":"1m"}}]}`, p.URL()), http.StatusCreated)
	for _, first := range []bool{false, true} {
		for len(received) > 0 {
			<-received
		}
		early.Store(first)
		s := a.run(t, "approval", nil)
		requireStatus(t, s, "completed")
		if string(s.Data["approve"]) != `{"approved_by":"ann"}` {
			t.Errorf("data %s, want the callback's", s.Data["approve"])
		}
		if err := <-callbacks; err != nil {
			t.Errorf("callback (early %v): %v", first, err)
		}
		applied, err := a.c.Complete(ctx(t), s.ID, "approve", client.CompleteRequest{Phase: "action", Attempt: 1, Status: 200})
		if err != nil || applied {
			t.Errorf("repeated callback: applied %v, %v; want ignored", applied, err)
		}
	}
	unknown := ulid.Make().String()
	for _, tt := range []struct{ body, detail string }{
		{`{"phase":"action","attempt":1}`, "status 0"},
		{`{"phase":"undo","attempt":1,"status":200}`, "phase"},
		{`{"phase":"action","attempt":0,"status":200}`, "attempt 0"},
		{`{"phase":"action","attempt":1,"status":200,"extra":1}`, "unknown field"},
	} {
		resp, body := a.send(t, http.MethodPost, "/v1/sagas/"+unknown+"/steps/approve/complete", tt.body, nil)
		requireProblem(t, resp, body, http.StatusBadRequest, tt.detail)
	}
	resp, body := a.send(t, http.MethodPost, "/v1/sagas/"+unknown+"/steps/approve/complete", `{"phase":"action","attempt":1,"status":200}`, nil)
	requireProblem(t, resp, body, http.StatusNotFound, unknown)
}
