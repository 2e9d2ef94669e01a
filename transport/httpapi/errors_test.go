package httpapi_test

import (
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/errors"
	"github.com/oklog/ulid/v2"

	"github.com/sagad/sagad/client"
	"github.com/sagad/sagad/transport/httpapi"
)

func TestErrorsAreProblems(t *testing.T) {
	t.Parallel()
	p := newParticipant(t)
	a := newAPI(t, func(c *httpapi.Config) { c.MaxBodyBytes = 1024 })
	a.put(t, "order", spec3(p.URL(), ""), http.StatusCreated)
	unknown := ulid.Make().String()
	big := `{"definition":"order","input":"` + strings.Repeat("x", 2048) + `"}`

	tests := []struct {
		name         string
		method, path string
		body         string
		headers      map[string]string
		status       int
		detail       []string // substrings of the problem's detail
		check        func(t *testing.T, resp *http.Response)
	}{
		{name: "malformed JSON", method: "POST", path: "/v1/sagas", body: `{"definition":"order",`,
			status: 400, detail: []string{"request body", "unexpected EOF"}},
		{name: "empty body", method: "POST", path: "/v1/sagas", body: "", status: 400, detail: []string{"request body", "EOF"}},
		{name: "data after the JSON value", method: "POST", path: "/v1/sagas", body: `{"definition":"order"} {}`,
			status: 400, detail: []string{"data after the JSON value"}},
		{name: "unknown field", method: "POST", path: "/v1/sagas", body: `{"definition":"order","inputs":{}}`,
			status: 400, detail: []string{`unknown field "inputs"`}},
		{name: "wrong field type", method: "POST", path: "/v1/sagas", body: `{"definition":42}`,
			status: 400, detail: []string{"definition", "number"}},
		{name: "missing definition", method: "POST", path: "/v1/sagas", body: `{"input":{}}`,
			status: 400, detail: []string{`"definition" is required`}},
		{name: "idempotency key too long", method: "POST", path: "/v1/sagas",
			body:   `{"definition":"order","idempotency_key":"` + strings.Repeat("k", 257) + `"}`,
			status: 400, detail: []string{"idempotency_key", "256"}},
		{name: "unknown definition", method: "POST", path: "/v1/sagas", body: `{"definition":"nope"}`,
			status: 422, detail: []string{"unknown definition", `"nope"`}},
		{name: "invalid duration in a definition", method: "PUT", path: "/v1/definitions/bad",
			body:   `{"steps":[{"name":"a","action":{"url":"http://127.0.0.1:1/a","timeout":"2x"}}]}`,
			status: 422, detail: []string{"steps[0].action.timeout", "2x"}},
		{name: "definition that is not JSON", method: "PUT", path: "/v1/definitions/bad", body: `{"steps":[`,
			status: 422},
		{name: "definition without steps", method: "PUT", path: "/v1/definitions/bad", body: `{"steps":[]}`,
			status: 422, detail: []string{"steps"}},
		{name: "invalid definition name", method: "PUT", path: "/v1/definitions/-bad",
			body:   `{"steps":[{"name":"a","action":{"url":"http://127.0.0.1:1/a"}}]}`,
			status: 422, detail: []string{`"-bad"`}},
		{name: "unknown saga", method: "GET", path: "/v1/sagas/" + unknown, status: 404, detail: []string{unknown, "not found"}},
		{name: "log of an unknown saga", method: "GET", path: "/v1/sagas/" + unknown + "/log", status: 404, detail: []string{unknown}},
		{name: "abort of an unknown saga", method: "POST", path: "/v1/sagas/" + unknown + "/abort", status: 404, detail: []string{unknown}},
		{name: "retry of an unknown saga", method: "POST", path: "/v1/sagas/" + unknown + "/retry", status: 404, detail: []string{unknown}},
		{name: "wait for an unknown saga", method: "GET", path: "/v1/sagas/" + unknown + "?wait=1s", status: 404, detail: []string{unknown}},
		{name: "malformed saga id", method: "GET", path: "/v1/sagas/not-a-ulid", status: 400, detail: []string{"invalid saga id", "not-a-ulid"}},
		{name: "malformed saga id in log", method: "GET", path: "/v1/sagas/not-a-ulid/log", status: 400, detail: []string{"invalid saga id"}},
		{name: "malformed saga id in abort", method: "POST", path: "/v1/sagas/not-a-ulid/abort", status: 400, detail: []string{"invalid saga id"}},
		{name: "retry with malformed JSON", method: "POST", path: "/v1/sagas/" + unknown + "/retry", body: `{"input":`,
			status: 400, detail: []string{"request body"}},
		{name: "retry with an unknown field", method: "POST", path: "/v1/sagas/" + unknown + "/retry", body: `{"inputs": {}}`,
			status: 400, detail: []string{`unknown field "inputs"`}},
		{name: "retry with a body without input", method: "POST", path: "/v1/sagas/" + unknown + "/retry", body: `{}`,
			status: 400, detail: []string{"input is missing"}},
		{name: "retry body too large", method: "POST", path: "/v1/sagas/" + unknown + "/retry", body: big, status: 413, detail: []string{"1024 bytes"}},
		{name: "malformed saga id in retry", method: "POST", path: "/v1/sagas/not-a-ulid/retry", status: 400, detail: []string{"invalid saga id"}},
		{name: "malformed cursor", method: "GET", path: "/v1/sagas?cursor=nope", status: 400, detail: []string{"cursor", "nope"}},
		{name: "start body too large", method: "POST", path: "/v1/sagas", body: big, status: 413, detail: []string{"1024 bytes"}},
		{name: "definition body too large", method: "PUT", path: "/v1/definitions/order", body: big, status: 413, detail: []string{"1024 bytes"}},
		{name: "unknown route", method: "GET", path: "/v1/nope", status: 404, detail: []string{"GET /v1/nope"}},
		{name: "unknown route under sagas", method: "GET", path: "/v1/sagas/" + unknown + "/nope", status: 404, detail: []string{"/nope"}},
		{name: "root", method: "GET", path: "/", status: 404, detail: []string{"no route"}},
		// net/http's ServeMux would redirect these to their clean form,
		// in HTML.
		{name: "empty segment", method: "GET", path: "/v1//sagas", status: 404,
			detail: []string{"GET /v1//sagas", "not canonical", "write it as /v1/sagas"}, check: noLocation},
		{name: "empty segment on a start", method: "POST", path: "/v1//sagas", body: `{"definition":"order"}`, status: 404,
			detail: []string{"POST /v1//sagas", "write it as /v1/sagas"}, check: noLocation},
		{name: "trailing empty segment", method: "GET", path: "/v1/sagas//", status: 404,
			detail: []string{"write it as /v1/sagas/"}, check: noLocation},
		{name: "dot segment", method: "GET", path: "/v1/./outbox/stats", status: 404,
			detail: []string{"write it as /v1/outbox/stats"}, check: noLocation},
		{name: "dot-dot segment", method: "GET", path: "/v1/outbox/../sagas/" + unknown, status: 404,
			detail: []string{"write it as /v1/sagas/" + unknown}, check: noLocation},
		{name: "empty segment on an unknown route", method: "GET", path: "//nope", status: 404,
			detail: []string{"write it as /nope"}, check: noLocation},
		{name: "wrong method", method: "DELETE", path: "/v1/sagas", status: 405, detail: []string{"DELETE", "/v1/sagas"},
			check: func(t *testing.T, resp *http.Response) {
				allow := resp.Header.Get("Allow")
				if !strings.Contains(allow, "GET") || !strings.Contains(allow, "POST") || strings.Contains(allow, "DELETE") {
					t.Errorf("Allow %q, want GET and POST, not DELETE", allow)
				}
			}},
		{name: "wrong method on a saga", method: "PUT", path: "/v1/sagas/" + unknown, status: 405, detail: []string{"PUT"},
			check: func(t *testing.T, resp *http.Response) {
				if allow := resp.Header.Get("Allow"); !strings.Contains(allow, "GET") || strings.Contains(allow, "PUT") {
					t.Errorf("Allow %q, want GET, not PUT", allow)
				}
			}},
		{name: "invalid wait on start", method: "POST", path: "/v1/sagas?wait=abc", body: `{"definition":"order"}`,
			status: 400, detail: []string{`wait "abc"`}},
		{name: "negative wait", method: "POST", path: "/v1/sagas?wait=-1s", body: `{"definition":"order"}`,
			status: 400, detail: []string{`wait "-1s"`}},
		{name: "invalid wait on get", method: "GET", path: "/v1/sagas/" + unknown + "?wait=abc", status: 400, detail: []string{`wait "abc"`}},
		{name: "limit zero", method: "GET", path: "/v1/sagas?limit=0", status: 400, detail: []string{`limit "0"`, "1 to 1000"}},
		{name: "limit too large", method: "GET", path: "/v1/sagas?limit=5000", status: 400, detail: []string{`limit "5000"`}},
		{name: "limit not a number", method: "GET", path: "/v1/sagas?limit=ten", status: 400, detail: []string{`limit "ten"`}},
		{name: "unknown status", method: "GET", path: "/v1/sagas?status=bogus", status: 400, detail: []string{`status "bogus"`}},
		{name: "text/plain body", method: "POST", path: "/v1/sagas", body: `{"definition":"order"}`,
			headers: map[string]string{"Content-Type": "text/plain"}, status: 415, detail: []string{`"text/plain"`}},
		{name: "unknown definition name", method: "GET", path: "/v1/definitions/nope", status: 404, detail: []string{"nope"}},
		{name: "unknown outbox status", method: "GET", path: "/v1/outbox?status=bogus", status: 400, detail: []string{`status "bogus"`}},
		{name: "outbox limit", method: "GET", path: "/v1/outbox?limit=0", status: 400, detail: []string{`limit "0"`}},
		{name: "requeue of an unknown event", method: "POST", path: "/v1/outbox/" + unknown + "/requeue", status: 404, detail: []string{unknown}},
		{name: "metrics not enabled", method: "GET", path: "/metrics", status: 404, detail: []string{"metrics"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			resp, body := a.send(t, tt.method, tt.path, tt.body, tt.headers)
			requireProblem(t, resp, body, tt.status, tt.detail...)
			if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
				t.Errorf("Cache-Control %q, want no-store", cc)
			}
			if tt.check != nil {
				tt.check(t, resp)
			}
		})
	}
}

// noLocation fails if the answer redirects.
func noLocation(t *testing.T, resp *http.Response) {
	t.Helper()
	if loc := resp.Header.Get("Location"); loc != "" {
		t.Errorf("Location %q: want no redirect", loc)
	}
}

// The client turns problem answers into *client.Problem errors.
func TestClientReturnsProblems(t *testing.T) {
	t.Parallel()
	a := newAPI(t, nil)
	_, err := a.c.Start(ctx(t), "nope", nil, client.StartOptions{})
	var p *client.Problem
	if !errors.As(err, &p) || p.Status != http.StatusUnprocessableEntity || client.StatusOf(err) != http.StatusUnprocessableEntity {
		t.Errorf("start of an unknown definition: %v, want a *client.Problem with status 422", err)
	}
	if _, err := a.c.Get(ctx(t), ulid.Make().String()); client.StatusOf(err) != http.StatusNotFound {
		t.Errorf("get of an unknown saga: %v, want a 404 problem", err)
	}
}

func TestAuth(t *testing.T) {
	t.Parallel()
	a := newAPI(t, func(c *httpapi.Config) {
		c.Token = "s3cret"
		c.Metrics = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			fmt.Fprintln(w, "sagad_up 1")
		})
	})
	id := ulid.Make().String()
	public := map[string]bool{"GET /healthz": true, "GET /readyz": true, "GET /metrics": true}

	for _, pattern := range a.server.Routes() {
		method, path, _ := strings.Cut(pattern, " ")
		path = strings.NewReplacer("{id}", id, "{name}", "order").Replace(path)
		t.Run(pattern, func(t *testing.T) {
			t.Parallel()
			if public[pattern] {
				resp, body := a.send(t, method, path, "", map[string]string{"Authorization": ""})
				if resp.StatusCode != http.StatusOK {
					t.Errorf("%s without a token answered %d, want 200: %s", pattern, resp.StatusCode, body)
				}
				if pattern == "GET /metrics" && string(body) != "sagad_up 1\n" {
					t.Errorf("/metrics answered %q, want the Metrics handler's answer", body)
				}
				return
			}
			for _, tc := range []struct{ auth, detail string }{
				{"", "missing bearer token"},
				{"Bearer wrong", "invalid bearer token"},
				{"Bearer s3cret2", "invalid bearer token"},
				{"Bearer s3cre", "invalid bearer token"},
				{"Basic czNjcmV0", "invalid bearer token"},
				{"s3cret", "invalid bearer token"},
			} {
				resp, body := a.send(t, method, path, "", map[string]string{"Authorization": tc.auth})
				requireProblem(t, resp, body, http.StatusUnauthorized, tc.detail)
				if got := resp.Header.Get("WWW-Authenticate"); !strings.HasPrefix(got, "Bearer") {
					t.Errorf("%s with Authorization %q: WWW-Authenticate %q, want a Bearer challenge", pattern, tc.auth, got)
				}
			}
		})
	}

	// The right token passes.
	for _, path := range []string{"/v1/sagas", "/v1/definitions", "/v1/openapi.json", "/v1/outbox", "/v1/outbox/stats"} {
		resp, body := a.send(t, http.MethodGet, path, "", nil)
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s with the token answered %d, want 200: %s", path, resp.StatusCode, body)
		}
	}
	if _, err := a.c.List(ctx(t), client.ListOptions{}); err != nil {
		t.Errorf("client with the token: %v", err)
	}
	noToken, err := client.New(a.ts.URL, "", a.ts.Client())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := noToken.List(ctx(t), client.ListOptions{}); client.StatusOf(err) != http.StatusUnauthorized {
		t.Errorf("client without a token: %v, want a 401 problem", err)
	}
}

// RFC 9110 section 11.1: the authentication scheme is case-insensitive.
func TestAuthSchemeIsCaseInsensitive(t *testing.T) {
	t.Parallel()
	a := newAPI(t, func(c *httpapi.Config) { c.Token = "s3cret" })
	for _, auth := range []string{"bearer s3cret", "BEARER s3cret"} {
		resp, body := a.send(t, http.MethodGet, "/v1/sagas", "", map[string]string{"Authorization": auth})
		if resp.StatusCode != http.StatusOK {
			t.Errorf("Authorization %q answered %d, want 200: %s", auth, resp.StatusCode, body)
		}
	}
}

// RFC 9110 section 8.3.1: media type names are case-insensitive.
func TestContentTypeIsCaseInsensitive(t *testing.T) {
	t.Parallel()
	p := newParticipant(t)
	a := newAPI(t, nil)
	a.put(t, "order", spec3(p.URL(), ""), http.StatusCreated)
	for _, ct := range []string{"Application/JSON", "application/json; charset=utf-8"} {
		resp, body := a.send(t, http.MethodPost, "/v1/sagas", `{"definition":"order"}`, map[string]string{"Content-Type": ct})
		if resp.StatusCode != http.StatusAccepted {
			t.Errorf("Content-Type %q answered %d, want 202: %s", ct, resp.StatusCode, body)
		}
	}
	resp, body := a.send(t, http.MethodPost, "/v1/sagas", `{"definition":"order"}`, map[string]string{"Content-Type": "application/jsonx"})
	requireProblem(t, resp, body, http.StatusUnsupportedMediaType, "application/jsonx")
}

func TestReadyz(t *testing.T) {
	t.Parallel()
	var notReady atomic.Pointer[string]
	a := newAPI(t, func(c *httpapi.Config) {
		c.Token = "s3cret" // readiness needs none
		c.Ready = func() error {
			if msg := notReady.Load(); msg != nil {
				return errors.New(*msg)
			}
			return nil
		}
	})
	msg := "recovery is still running"
	notReady.Store(&msg)
	resp, body := a.send(t, http.MethodGet, "/readyz", "", map[string]string{"Authorization": ""})
	requireProblem(t, resp, body, http.StatusServiceUnavailable, msg)
	if err := a.c.Ready(ctx(t)); client.StatusOf(err) != http.StatusServiceUnavailable {
		t.Errorf("client Ready while not ready: %v, want a 503 problem", err)
	}

	notReady.Store(nil)
	var ok map[string]string
	a.sendJSON(t, http.MethodGet, "/readyz", "", http.StatusOK, &ok)
	if ok["status"] != "ready" {
		t.Errorf("/readyz answered %v, want status ready", ok)
	}
	if err := a.c.Ready(ctx(t)); err != nil {
		t.Errorf("client Ready when ready: %v", err)
	}
	var health map[string]string
	a.sendJSON(t, http.MethodGet, "/healthz", "", http.StatusOK, &health)
	if health["status"] != "ok" {
		t.Errorf("/healthz answered %v, want status ok", health)
	}
}
