package client_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sagad/sagad/client"
)

// received is what a fake daemon saw of one request.
type received struct {
	pattern    string // the route that matched
	requestURI string // the request line's target, as sent
	value      string // the route's {name} or {id}, decoded by the server
}

// fakeDaemon serves the client's routes under prefix and records each
// request. Every route answers 200 with an empty JSON object.
func fakeDaemon(t *testing.T, prefix string) (string, func() []received) {
	t.Helper()
	var mu sync.Mutex
	var got []received
	mux := http.NewServeMux()
	for _, p := range []string{
		"PUT /v1/definitions/{name}", "GET /v1/definitions/{name}",
		"GET /v1/sagas/{id}", "GET /v1/sagas/{id}/log", "POST /v1/sagas/{id}/abort",
		"POST /v1/sagas/{id}/retry", "POST /v1/sagas/{id}/resolve", "POST /v1/outbox/{id}/requeue",
	} {
		mux.HandleFunc(p, func(w http.ResponseWriter, r *http.Request) {
			v := r.PathValue("name")
			if v == "" {
				v = r.PathValue("id")
			}
			mu.Lock()
			got = append(got, received{p, r.RequestURI, v})
			mu.Unlock()
			body := "{}"
			if p == "GET /v1/sagas/{id}/log" {
				body = `{"entries":[]}`
			}
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(body))
		})
	}
	var h http.Handler = mux
	if prefix != "" {
		h = http.StripPrefix(prefix, mux)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL + prefix, func() []received {
		mu.Lock()
		defer mu.Unlock()
		return append([]received(nil), got...)
	}
}

// TestPathSegmentsAreEscapedOnce: a definition name or a saga or event id
// that needs escaping reaches the server escaped once, as one path
// segment, and the server decodes it to what the caller passed.
func TestPathSegmentsAreEscapedOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tests := []struct {
		name    string
		call    func(c *client.Client, v string) error
		pattern string
		path    string // the request path for the value "a b/c%d?e"
	}{
		{"PutDefinition", func(c *client.Client, v string) error {
			_, err := c.PutDefinition(ctx, v, json.RawMessage(`{}`))
			return err
		}, "PUT /v1/definitions/{name}", "/v1/definitions/a%20b%2Fc%25d%3Fe"},
		{"Definition", func(c *client.Client, v string) error { _, err := c.Definition(ctx, v); return err },
			"GET /v1/definitions/{name}", "/v1/definitions/a%20b%2Fc%25d%3Fe"},
		{"Get", func(c *client.Client, v string) error { _, err := c.Get(ctx, v); return err },
			"GET /v1/sagas/{id}", "/v1/sagas/a%20b%2Fc%25d%3Fe"},
		{"Log", func(c *client.Client, v string) error { _, err := c.Log(ctx, v); return err },
			"GET /v1/sagas/{id}/log", "/v1/sagas/a%20b%2Fc%25d%3Fe/log"},
		{"Abort", func(c *client.Client, v string) error { return c.Abort(ctx, v) },
			"POST /v1/sagas/{id}/abort", "/v1/sagas/a%20b%2Fc%25d%3Fe/abort"},
		{"Retry", func(c *client.Client, v string) error { return c.Retry(ctx, v) },
			"POST /v1/sagas/{id}/retry", "/v1/sagas/a%20b%2Fc%25d%3Fe/retry"},
		{"Resolve", func(c *client.Client, v string) error { return c.Resolve(ctx, v, "note", "me") },
			"POST /v1/sagas/{id}/resolve", "/v1/sagas/a%20b%2Fc%25d%3Fe/resolve"},
		{"OutboxRequeue", func(c *client.Client, v string) error { return c.OutboxRequeue(ctx, v) },
			"POST /v1/outbox/{id}/requeue", "/v1/outbox/a%20b%2Fc%25d%3Fe/requeue"},
	}
	const value = "a b/c%d?e"
	for _, prefix := range []string{"", "/sagad"} {
		for _, tt := range tests {
			t.Run(tt.name+prefix, func(t *testing.T) {
				t.Parallel()
				base, got := fakeDaemon(t, prefix)
				c, err := client.New(base, "", nil)
				if err != nil {
					t.Fatal(err)
				}
				if err := tt.call(c, value); err != nil {
					t.Fatalf("%s(%q): %v", tt.name, value, err)
				}
				want := received{tt.pattern, prefix + tt.path, value}
				if g := got(); len(g) != 1 || g[0] != want {
					t.Errorf("%s(%q): the server received %+v, want %+v", tt.name, value, g, want)
				}
			})
		}
	}
}

// A log entry's duration is a Go duration string on the wire; nanoseconds,
// as older daemons sent, are read too.
func TestLogEntryDuration(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		in   string
		want time.Duration
	}{
		{`{"seq":1,"event":"attempt_failed","duration":"1.5s"}`, 1500 * time.Millisecond},
		{`{"seq":1,"event":"attempt_failed","duration":250000000}`, 250 * time.Millisecond},
		{`{"seq":1,"event":"saga_started"}`, 0},
	} {
		var e client.LogEntry
		if err := json.Unmarshal([]byte(tt.in), &e); err != nil || e.Duration != tt.want {
			t.Errorf("%s: duration %v (%v), want %v", tt.in, e.Duration, err, tt.want)
		}
	}
	b, err := json.Marshal(client.LogEntry{Seq: 1, Event: "attempt_failed", Duration: 1500 * time.Millisecond})
	if err != nil || !strings.Contains(string(b), `"duration":"1.5s"`) {
		t.Errorf("marshal: %s (%v), want the duration as \"1.5s\"", b, err)
	}
	var bad client.LogEntry
	if err := json.Unmarshal([]byte(`{"seq":3,"duration":"soon"}`), &bad); err == nil || !strings.Contains(err.Error(), "log entry 3") {
		t.Errorf("a malformed duration: %v, want an error naming the entry", err)
	}
}
