package main

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/sagad/sagad/client"
)

// otlpSpan is a span an OTLP receiver got.
type otlpSpan struct {
	service, name       string
	trace, span, parent string
	links               []string // "trace/span"
	attrs               map[string]string
	remoteParent        bool
}

// otlpReceiver is an OTLP/HTTP trace receiver: it decodes what exporters
// post to /v1/traces, as a collector does.
type otlpReceiver struct {
	mu    sync.Mutex
	spans []otlpSpan
	got   chan struct{}
}

func (o *otlpReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/v1/traces" || r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/x-protobuf" {
		http.Error(w, "want a POST of protobuf to /v1/traces", http.StatusNotFound)
		return
	}
	body, err := io.ReadAll(r.Body)
	var req collectortrace.ExportTraceServiceRequest
	if err == nil {
		err = proto.Unmarshal(body, &req)
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	o.mu.Lock()
	for _, rs := range req.ResourceSpans {
		var service string
		for _, kv := range rs.Resource.GetAttributes() {
			if kv.Key == "service.name" {
				service = kv.Value.GetStringValue()
			}
		}
		for _, ss := range rs.ScopeSpans {
			for _, sp := range ss.Spans {
				o.spans = append(o.spans, decodeSpan(service, sp))
			}
		}
	}
	o.mu.Unlock()
	select {
	case o.got <- struct{}{}:
	default:
	}
	out, _ := proto.Marshal(&collectortrace.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(out)
}

func decodeSpan(service string, sp *tracepb.Span) otlpSpan {
	s := otlpSpan{service: service, name: sp.Name, trace: hex.EncodeToString(sp.TraceId), span: hex.EncodeToString(sp.SpanId),
		parent: hex.EncodeToString(sp.ParentSpanId), attrs: map[string]string{},
		remoteParent: sp.Flags&uint32(tracepb.SpanFlags_SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK) != 0}
	for _, l := range sp.Links {
		s.links = append(s.links, hex.EncodeToString(l.TraceId)+"/"+hex.EncodeToString(l.SpanId))
	}
	for _, kv := range sp.Attributes {
		v := kv.Value
		switch {
		case v.GetStringValue() != "":
			s.attrs[kv.Key] = v.GetStringValue()
		case v.GetIntValue() != 0:
			s.attrs[kv.Key] = fmt.Sprint(v.GetIntValue())
		default:
			s.attrs[kv.Key] = fmt.Sprint(v.GetBoolValue())
		}
	}
	return s
}

// wait returns the spans once one named name has come, within 20 s.
func (o *otlpReceiver) wait(t *testing.T, name string) []otlpSpan {
	t.Helper()
	return o.waitFor(t, name, func(otlpSpan) bool { return true })
}

// waitFor returns the spans once one named name for which ok holds has
// come, within 20 s.
func (o *otlpReceiver) waitFor(t *testing.T, name string, ok func(otlpSpan) bool) []otlpSpan {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		o.mu.Lock()
		spans := append([]otlpSpan(nil), o.spans...)
		o.mu.Unlock()
		for _, s := range spans {
			if s.name == name && ok(s) {
				return spans
			}
		}
		select {
		case <-o.got:
		case <-deadline:
			t.Fatalf("no span %q exported within 20s; got %d spans", name, len(spans))
		}
	}
}

// TestDaemonTraces: sagad serve exports its spans over OTLP/HTTP to the
// endpoint the standard variables name. The saga's trace links to the
// caller's (the client sends its span as traceparent), participants get
// their attempt's traceparent, and a saga whose daemon is killed
// (SIGKILL) mid-call goes on in the same trace after the restart.
func TestDaemonTraces(t *testing.T) {
	t.Parallel()
	recv := &otlpReceiver{got: make(chan struct{}, 1)}
	collector := httptest.NewServer(recv)
	defer collector.Close()
	env := []string{"OTEL_EXPORTER_OTLP_ENDPOINT=" + collector.URL, "OTEL_SERVICE_NAME=sagad-traces-test", "OTEL_BSP_SCHEDULE_DELAY=50"}

	path := filepath.Join(t.TempDir(), "sagad.db")
	// The caller's span: the client sends it as traceparent.
	tp := sdktrace.NewTracerProvider()
	ctx, caller := tp.Tracer("caller").Start(context.Background(), "checkout")
	d, p, id := chargeInFlightWith(t, ctx, env, path)
	caller.End()
	d.waitLog(t, "tracing sagas with OpenTelemetry", 5*time.Second)
	// The reserve attempt's span is exported before the kill.
	recv.wait(t, "reserve action")
	if err := d.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-d.done
	close(p.block["/charge"])

	d2 := startDaemonEnv(t, 0, env, path)
	c2 := d2.client(t)
	wctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := c2.Wait(wctx, id)
	if err != nil || s.Status != "completed" {
		t.Fatalf("saga after the restart: %+v, %v; want completed", s, err)
	}
	// The saga's span ends after the commit that ends the saga: wait for
	// it, not for the last attempt's.
	spans := recv.waitFor(t, "saga order", func(s otlpSpan) bool { return s.attrs["sagad.status"] == "completed" })
	if s.TraceID == "" {
		t.Fatalf("the saga's view has no trace id")
	}
	byName := map[string][]otlpSpan{}
	for _, sp := range spans {
		if sp.trace != s.TraceID || sp.service != "sagad-traces-test" {
			t.Errorf("span %s in trace %s of %q; want every span in the saga's trace %s, of the service OTEL_SERVICE_NAME names",
				sp.name, sp.trace, sp.service, s.TraceID)
		}
		byName[sp.name] = append(byName[sp.name], sp)
	}
	reserve := byName["reserve action"][0]
	sagaSpanID := reserve.parent
	// The dead daemon's saga span never ended; the new daemon's is its child.
	resumed := byName["saga order"]
	if len(resumed) != 1 || resumed[0].parent != sagaSpanID || !resumed[0].remoteParent || resumed[0].attrs["sagad.resumed"] != "true" ||
		resumed[0].attrs["sagad.status"] != "completed" || resumed[0].attrs["sagad.saga.id"] != id {
		t.Fatalf("saga spans %+v; want one, resumed after the restart, a child of %s", resumed, sagaSpanID)
	}
	for _, name := range []string{"charge action", "ship action"} {
		if got := byName[name]; len(got) != 1 || got[0].parent != resumed[0].span || got[0].attrs["sagad.outcome"] != "succeeded" {
			t.Errorf("%s spans %+v; want one, succeeded, a child of the resumed saga span %s", name, got, resumed[0].span)
		}
	}
	if reserve.attrs["sagad.step"] != "reserve" || reserve.attrs["sagad.attempt"] != "1" ||
		reserve.attrs["sagad.idempotency_key"] != id+"/reserve/action" {
		t.Errorf("reserve attributes %v", reserve.attrs)
	}
	// The link to the caller is on the first saga span, which died with
	// the first daemon: the saga's trace is not the caller's.
	if s.TraceID == caller.SpanContext().TraceID().String() {
		t.Errorf("the saga runs in the caller's trace; want a trace of its own, linked")
	}
	// Participants saw their attempt's traceparent: twice for charge (the
	// call cut by the kill, then its re-run).
	p.mu.Lock()
	traces := append([]string(nil), p.traces...)
	p.mu.Unlock()
	want := map[string]string{
		"/reserve": "00-" + s.TraceID + "-" + reserve.span + "-01",
		"/ship":    "00-" + s.TraceID + "-" + byName["ship action"][0].span + "-01",
	}
	var charges int
	for _, l := range traces {
		path, tp, _ := strings.Cut(l, " ")
		if w, ok := want[path]; ok && tp != w {
			t.Errorf("%s got traceparent %q, want %q", path, tp, w)
		}
		if path == "/charge" {
			charges++
			if !strings.HasPrefix(tp, "00-"+s.TraceID+"-") {
				t.Errorf("charge got traceparent %q, want one in trace %s", tp, s.TraceID)
			}
		}
	}
	if charges != 2 {
		t.Errorf("charge called %d times, want 2 (before and after the kill): %v", charges, traces)
	}

	// A saga started and ended in one daemon: its span links to the caller.
	ctx, caller2 := tp.Tracer("caller").Start(context.Background(), "checkout")
	st2, err := c2.Start(ctx, "order", map[string]string{"order": "T-2"}, client.StartOptions{})
	caller2.End()
	if err != nil {
		t.Fatal(err)
	}
	s2, err := c2.Wait(wctx, st2.ID)
	if err != nil || s2.Status != "completed" {
		t.Fatalf("second saga: %+v, %v", s2, err)
	}
	link := caller2.SpanContext().TraceID().String() + "/" + caller2.SpanContext().SpanID().String()
	for _, sp := range recv.waitFor(t, "saga order", func(s otlpSpan) bool { return s.trace == s2.TraceID }) {
		if sp.name == "saga order" && sp.trace == s2.TraceID &&
			(len(sp.links) != 1 || sp.links[0] != link || sp.parent != "" || sp.attrs["sagad.status"] != "completed") {
			t.Errorf("saga span links %v, parent %q, status %q; want a root linked to the caller %s, completed", sp.links, sp.parent, sp.attrs["sagad.status"], link)
		}
	}
}

// TestTracerProviderFromEnv: tracing is on only when the environment asks
// for OTLP, and a request sagad cannot serve is refused with a hint.
func TestTracerProviderFromEnv(t *testing.T) {
	vars := []string{"OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
		"OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"}
	for _, tc := range []struct {
		name string
		env  map[string]string
		on   bool
		err  string
	}{
		{name: "nothing set", env: nil},
		{name: "endpoint", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, on: true},
		{name: "traces endpoint", env: map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, on: true},
		{name: "exporter otlp", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp"}, on: true},
		{name: "exporter none", env: map[string]string{"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}},
		{name: "sdk disabled", env: map[string]string{"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}},
		{name: "zipkin", env: map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}, err: `OTEL_TRACES_EXPORTER="zipkin"`},
		{name: "grpc", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, err: `OTEL_EXPORTER_OTLP_PROTOCOL="grpc"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, v := range vars {
				t.Setenv(v, tc.env[v])
			}
			tp, err := newTracerProvider(context.Background())
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want one naming %s", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (tp != nil) != tc.on {
				t.Fatalf("provider %v, want tracing on: %v", tp, tc.on)
			}
			if tp != nil {
				_ = tp.Shutdown(context.Background())
			}
		})
	}
}
