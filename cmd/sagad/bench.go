package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/errors"

	"github.com/sagad/sagad/client"
)

// benchCommand implements 'sagad bench': a daemon on a temporary file,
// participant servers with trivial handlers, and n sagas of HTTP steps
// driven through the API at a given concurrency.
type benchCommand struct {
	stdout, stderr io.Writer
}

func (c *benchCommand) run(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	n := fs.Int("n", 10000, "sagas to run")
	conc := fs.Int("c", 64, "concurrent clients, each starting a saga and waiting for its end")
	steps := fs.Int("steps", 3, "HTTP steps per saga")
	fail := fs.Float64("fail", 0, "fraction of sagas whose last step fails (and are compensated)")
	dir := fs.String("dir", "", "directory for the database file (default: a temporary one, removed afterwards)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the run to this file")
	fs.Usage = func() {
		fmt.Fprint(c.stderr, `Usage: sagad bench [-n N] [-c C] [-fail F] [-steps S]

Starts participant servers (trivial handlers) and a sagad daemon on a
temporary database file (fsync on), registers a definition of S HTTP steps,
and drives N sagas through the HTTP API from C concurrent clients, each
starting a saga with ?wait and waiting for its end. With -fail F, that
fraction of sagas has its last step answer 422, so the others compensate.
It ends with one line:

  sagas_per_sec=N p50_ms=N p99_ms=N completed=N compensated=N

Example:
  sagad bench -n 20000 -c 64 -fail 0.1

Flags:
`)
		fs.PrintDefaults()
	}
	if code, ok := parse(fs, args, c.stderr); !ok {
		return code
	}
	if *n < 1 || *conc < 1 || *steps < 1 || *fail < 0 || *fail > 1 || fs.NArg() > 0 {
		fmt.Fprintln(c.stderr, "sagad bench: -n, -c and -steps must be positive and -fail between 0 and 1")
		return exitUsage
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintf(c.stderr, "sagad bench: %v\n", err)
			return exitFailed
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintf(c.stderr, "sagad bench: %v\n", err)
			return exitFailed
		}
		defer pprof.StopCPUProfile()
	}
	res, err := c.bench(ctx, *n, *conc, *steps, *fail, *dir)
	if err != nil {
		fmt.Fprintf(c.stderr, "sagad bench: %v\n", err)
		return exitFailed
	}
	fmt.Fprintf(c.stdout, "sagas_per_sec=%.0f p50_ms=%.2f p99_ms=%.2f completed=%d compensated=%d\n",
		res.rate, res.p50, res.p99, res.completed, res.compensated)
	if res.completed+res.compensated != *n {
		fmt.Fprintf(c.stderr, "sagad bench: %d sagas ended otherwise\n", *n-res.completed-res.compensated)
		return exitFailed
	}
	return exitOK
}

type benchResult struct {
	rate, p50, p99         float64
	completed, compensated int
}

func (c *benchCommand) bench(ctx context.Context, n, conc, steps int, fail float64, dir string) (*benchResult, error) {
	if dir == "" {
		tmp, err := os.MkdirTemp("", "sagad-bench-")
		if err != nil {
			return nil, errors.Wrap(err, "temporary directory")
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	}
	// Participants: every step answers {"ok":true}; /fail answers 422.
	var calls atomic.Int64
	mux := http.NewServeMux()
	ok := func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"ok":true}`))
	}
	mux.HandleFunc("POST /ok", ok)
	mux.HandleFunc("POST /undo", ok)
	mux.HandleFunc("POST /last", func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		var body struct {
			Input struct {
				Fail bool `json:"fail"`
			} `json:"input"`
		}
		_ = json.NewDecoder(r.Body).Decode(&body)
		if body.Input.Fail {
			http.Error(w, `{"error":"declined"}`, http.StatusUnprocessableEntity)
			return
		}
		_, _ = w.Write([]byte(`{"ok":true}`))
	})
	pln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, errors.Wrap(err, "participants: listen")
	}
	participants := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = participants.Serve(pln) }()
	defer participants.Close()
	base := "http://" + pln.Addr().String()

	// The daemon, in this process, on a fresh file.
	ready := make(chan string, 1)
	dctx, stopDaemon := context.WithCancel(ctx)
	defer stopDaemon()
	srv := &serveCommand{stdout: io.Discard, stderr: c.stderr, ready: func(addr string) { ready <- addr }}
	cfg := &serveConfig{db: filepath.Join(dir, "bench.db"), listen: "127.0.0.1:0", concurrency: 4096,
		grace: 5 * time.Second, exchange: "sagad.events"}
	served := make(chan error, 1)
	go func() {
		served <- srv.serve(dctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	}()
	var addr string
	select {
	case addr = <-ready:
	case err := <-served:
		return nil, errors.Wrap(err, "daemon")
	}
	defer func() { stopDaemon(); <-served }()

	hc := &http.Client{Transport: &http.Transport{MaxIdleConns: conc * 2, MaxIdleConnsPerHost: conc * 2, IdleConnTimeout: time.Minute}}
	cl, err := client.New("http://"+addr, "", hc)
	if err != nil {
		return nil, err
	}
	var spec strings.Builder
	spec.WriteString(`{"steps":[`)
	for i := range steps {
		if i > 0 {
			spec.WriteString(",")
		}
		path := "/ok"
		if i == steps-1 {
			path = "/last"
		}
		fmt.Fprintf(&spec, `{"name":"s%d","action":{"url":"%s%s"},"compensation":{"url":"%s/undo"},"retry":{"max_attempts":3,"initial_interval":"10ms"}}`,
			i, base, path, base)
	}
	spec.WriteString(`]}`)
	if _, err := cl.PutDefinition(ctx, "bench", []byte(spec.String())); err != nil {
		return nil, errors.Wrap(err, "register the definition")
	}
	if err := cl.Ready(ctx); err != nil {
		return nil, errors.Wrap(err, "daemon not ready")
	}

	lat := make([]time.Duration, n)
	var next, completed, compensated atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(n) || ctx.Err() != nil {
					return
				}
				input := map[string]bool{"fail": rand.Float64() < fail}
				t0 := time.Now()
				res, err := cl.Start(ctx, "bench", input, client.StartOptions{Wait: time.Minute})
				if err == nil && res.Saga == nil {
					var s *client.Saga
					s, err = cl.Wait(ctx, res.ID)
					res.Saga = s
				}
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				lat[i] = time.Since(t0)
				switch res.Saga.Status {
				case "completed":
					completed.Add(1)
				case "compensated":
					compensated.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err, _ := firstErr.Load().(error); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	slices.Sort(lat)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	return &benchResult{rate: float64(n) / elapsed.Seconds(), p50: ms(lat[n/2]), p99: ms(lat[n*99/100]),
		completed: int(completed.Load()), compensated: int(compensated.Load())}, nil
}
