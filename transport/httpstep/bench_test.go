package httpstep_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"
	"time"

	"github.com/sagad/sagad/internal/cputime"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/transport/httpstep"
)

// BenchmarkCall measures what one call to a participant costs on loopback,
// with 64 calls in flight, in CPU time (client and participant both in this
// process) and calls per second:
//
//	go test ./transport/httpstep -run '^$' -bench BenchmarkCall -benchtime 50000x
//
// net/http is the floor: a bare net/http client posting a body of the same
// size to the same trivial handler. httpstep is a step's action doing the
// same call through the participant protocol (request body, headers,
// response checks). The difference is what the protocol adds.
// net/http-h2c is the floor over cleartext HTTP/2 (one multiplexed
// connection instead of a connection per call in flight), to show whether
// another protocol would make calls cheaper.
func BenchmarkCall(b *testing.B) {
	srv, client := trivialParticipant(false)
	defer srv.Close()
	call := newCall(saga.PhaseAction, 0)
	body, err := json.Marshal(map[string]any{"saga_id": call.SagaID, "definition": call.Definition, "step": call.Step,
		"phase": call.Phase, "attempt": call.Attempt, "input": call.Input, "data": call.Data})
	if err != nil {
		b.Fatal(err)
	}
	bare := func(srv *httptest.Server, client *http.Client, proto int) func(context.Context) error {
		return func(ctx context.Context) error {
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/reserve", bytes.NewReader(body))
			if err != nil {
				return err
			}
			req.Header.Set("Content-Type", "application/json")
			resp, err := client.Do(req)
			if err != nil {
				return err
			}
			_, err = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			if err == nil && resp.ProtoMajor != proto {
				err = fmt.Errorf("answered over HTTP/%d, want HTTP/%d", resp.ProtoMajor, proto)
			}
			return err
		}
	}

	b.Run("net/http", func(b *testing.B) {
		parallel(b, bare(srv, client, 1))
	})
	b.Run("net/http-h2c", func(b *testing.B) {
		srv, client := trivialParticipant(true)
		defer srv.Close()
		parallel(b, bare(srv, client, 2))
	})
	b.Run("httpstep", func(b *testing.B) {
		spec := &httpstep.Spec{Steps: []httpstep.StepSpec{{Name: "reserve",
			Action: &httpstep.CallSpec{URL: srv.URL + "/reserve"}}}}
		def, err := spec.Definition("order", client)
		if err != nil {
			b.Fatal(err)
		}
		f := def.Steps[0].Action
		parallel(b, func(ctx context.Context) error {
			_, err := f(ctx, newCall(saga.PhaseAction, 0))
			return err
		})
	})
}

// trivialParticipant starts a trivial participant and returns it with a client
// for it; with h2c both speak cleartext HTTP/2 only.
func trivialParticipant(h2c bool) (*httptest.Server, *http.Client) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"ok":true}`))
	}))
	tr := &http.Transport{MaxIdleConns: 256, MaxIdleConnsPerHost: 256}
	if h2c {
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		srv.Config.Protocols, tr.Protocols = &p, &p
	}
	srv.Start()
	return srv, &http.Client{Transport: tr}
}

// parallel runs fn b.N times from 64 goroutines and reports the CPU time
// per call and the calls per second.
func parallel(b *testing.B, fn func(context.Context) error) {
	b.SetParallelism(max(1, 64/runtime.GOMAXPROCS(0)))
	ctx := context.Background()
	b.ResetTimer()
	cpu0, start := cputime.Process(), time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := fn(ctx); err != nil {
				b.Error(err)
				return
			}
		}
	})
	elapsed, cpu := time.Since(start), cputime.Process()-cpu0
	b.StopTimer()
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-us/call")
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "calls/s")
}
