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
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/errors"
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/sagad/sagad/client"
	"github.com/sagad/sagad/internal/cputime"
	"github.com/sagad/sagad/storage/postgres"
)

// benchCommand implements 'sagad bench': participant servers with trivial
// handlers, a daemon on a temporary file (or one already running), and n
// sagas of HTTP steps driven through the API at a given concurrency.
type benchCommand struct {
	stdout, stderr io.Writer
}

// benchOptions are the flags of 'sagad bench'.
type benchOptions struct {
	n, conc, steps         int
	fail                   float64
	dir, addr, token, db   string
	noSync                 bool
	cpuProfile, memProfile string
	trace                  string
}

// benchDefinition is the name of the definition the bench registers.
const benchDefinition = "sagad-bench"

func (c *benchCommand) run(ctx context.Context, args []string) int {
	var o benchOptions
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.IntVar(&o.n, "n", 10000, "sagas to run")
	fs.IntVar(&o.conc, "c", 64, "concurrent clients, each starting a saga and waiting for its end")
	fs.IntVar(&o.steps, "steps", 3, "HTTP steps per saga")
	fs.Float64Var(&o.fail, "fail", 0, "fraction of sagas whose last step fails (and are compensated)")
	fs.StringVar(&o.dir, "dir", "", "directory for the database file (default: a temporary one, removed afterwards)")
	fs.StringVar(&o.db, "db", "", "run the daemon on this PostgreSQL database (a postgres:// URL; the bench uses, and drops afterwards, a schema of its own) instead of a bbolt file")
	fs.StringVar(&o.addr, "addr", "", "URL of a running daemon to drive instead of starting one, such as http://127.0.0.1:8080")
	fs.StringVar(&o.token, "token", "", "bearer token for the daemon given by -addr")
	fs.BoolVar(&o.noSync, "nosync", false, "start the daemon with fsync off, to see what the run costs without the disk (not durable)")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of this process to this file")
	fs.StringVar(&o.memProfile, "memprofile", "", "write an allocation profile of this process to this file")
	fs.StringVar(&o.trace, "trace", "", "write an execution trace of this process to this file (go tool trace)")
	fs.Usage = func() {
		fmt.Fprint(c.stderr, `Usage: sagad bench [-n N] [-c C] [-fail F] [-steps S] [-addr URL [-token T]] [-nosync]

Starts participant servers (trivial handlers) and a sagad daemon on a
temporary database file (fsync on), all in this process, registers a
definition of S HTTP steps named sagad-bench, and drives N sagas through the
HTTP API from C concurrent clients, each starting a saga with ?wait and
waiting for its end. With -fail F, that fraction of sagas has its last step
answer 422, so those compensate. With -addr, it drives that daemon instead
of starting one (the daemon must reach this machine's 127.0.0.1). That
daemon keeps the sagad-bench definition and the sagas: do not point it at a
daemon whose file matters; if the bench is interrupted, the sagas left
running retry against participants that are gone.

It ends with one line on standard output:

  sagas_per_sec=N p50_ms=N p99_ms=N completed=N compensated=N

and, just before it on standard error, what the run cost, read from the
daemon's /metrics and this process:
  cpu_us_per_saga      CPU time of this process (daemon, participants and
                       clients) per saga; with -addr, daemon_cpu_us_per_saga
                       and bench_cpu_us_per_saga split it between the two
  cpu_util             CPU use of both over the run (200% is two cores busy)
  commits, writes_per_commit, pages_per_commit, commit_ms
                       how the committer grouped the transitions, and what a
                       commit cost (its syncs included)
  committer_busy       share of the run the committer spent committing

Goroutines carry a "role" profiler label (sagad, participants, clients), so
that 'go tool pprof -tags' on a -cpuprofile splits the daemon's share.

Example:
  sagad bench -n 20000 -c 64 -fail 0.1

Flags:
`)
		fs.PrintDefaults()
	}
	if code, ok := parse(fs, args, c.stderr); !ok {
		return code
	}
	if o.n < 1 || o.conc < 1 || o.steps < 1 || !(o.fail >= 0 && o.fail <= 1) || fs.NArg() > 0 {
		fmt.Fprintln(c.stderr, "sagad bench: -n, -c and -steps must be positive and -fail between 0 and 1")
		return exitUsage
	}
	if o.addr != "" && (o.noSync || o.dir != "") {
		fmt.Fprintln(c.stderr, "sagad bench: -nosync and -dir are for the daemon the bench starts, not for one given by -addr")
		return exitUsage
	}
	if o.addr == "" && o.token != "" {
		fmt.Fprintln(c.stderr, "sagad bench: -token is for the daemon given by -addr")
		return exitUsage
	}
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
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
	if o.trace != "" {
		f, err := os.Create(o.trace)
		if err != nil {
			fmt.Fprintf(c.stderr, "sagad bench: %v\n", err)
			return exitFailed
		}
		defer f.Close()
		if err := trace.Start(f); err != nil {
			fmt.Fprintf(c.stderr, "sagad bench: %v\n", err)
			return exitFailed
		}
		defer trace.Stop()
	}
	res, err := c.bench(ctx, &o)
	if err == nil && o.memProfile != "" {
		err = writeHeapProfile(o.memProfile)
	}
	if err != nil {
		fmt.Fprintf(c.stderr, "sagad bench: %v\n", err)
		return exitFailed
	}
	fmt.Fprintln(c.stderr, res.details())
	fmt.Fprintf(c.stdout, "sagas_per_sec=%.0f p50_ms=%.2f p99_ms=%.2f completed=%d compensated=%d\n",
		res.rate, res.p50, res.p99, res.completed, res.compensated)
	if res.completed+res.compensated != o.n {
		fmt.Fprintf(c.stderr, "sagad bench: %d sagas ended otherwise\n", o.n-res.completed-res.compensated)
		return exitFailed
	}
	return exitOK
}

type benchResult struct {
	rate, p50, p99         float64
	completed, compensated int

	n        int
	elapsed  time.Duration
	remote   bool          // the daemon is another process
	benchCPU time.Duration // this process
	daemon   daemonCounters
}

// details is the line of what the run cost (see the usage).
func (r *benchResult) details() string {
	perSaga := func(d time.Duration) int64 { return d.Microseconds() / int64(r.n) }
	var b strings.Builder
	cpu := r.benchCPU
	if r.remote {
		cpu += r.daemon.cpu
		fmt.Fprintf(&b, "daemon_cpu_us_per_saga=%d bench_cpu_us_per_saga=%d", perSaga(r.daemon.cpu), perSaga(r.benchCPU))
	} else {
		fmt.Fprintf(&b, "cpu_us_per_saga=%d", perSaga(cpu))
	}
	d := r.daemon
	perCommit := func(v float64) float64 { return v / float64(max(d.commits, 1)) }
	fmt.Fprintf(&b, " cpu_util=%.0f%% commits=%d writes_per_commit=%.1f pages_per_commit=%.1f commit_ms=%.2f committer_busy=%.0f%%",
		100*cpu.Seconds()/r.elapsed.Seconds(), d.commits, perCommit(float64(d.writes)), perCommit(float64(d.pages)),
		perCommit(d.commitTime.Seconds()*1000), 100*d.commitTime.Seconds()/r.elapsed.Seconds())
	return b.String()
}

func (c *benchCommand) bench(ctx context.Context, o *benchOptions) (*benchResult, error) {
	// Participants: every call answers {"ok":true}, but /last answers 422
	// to the sagas started with {"fail": true}.
	mux := http.NewServeMux()
	ok := func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"ok":true}`))
	}
	mux.HandleFunc("POST /ok", ok)
	mux.HandleFunc("POST /undo", ok)
	mux.HandleFunc("POST /last", func(w http.ResponseWriter, r *http.Request) {
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
	// Goroutines carry a "role" profiler label (participants, sagad,
	// clients), inherited by those they start, so that -cpuprofile splits
	// the daemon's CPU time from the harness's: go tool pprof -tags.
	pprof.Do(ctx, pprof.Labels("role", "participants"), func(context.Context) {
		go func() { _ = participants.Serve(pln) }()
	})
	defer participants.Close()
	base := "http://" + pln.Addr().String()

	url := o.addr
	if url == "" {
		addr, stop, err := c.startDaemon(ctx, o)
		if err != nil {
			return nil, err
		}
		defer stop()
		url = "http://" + addr
	}
	hc := &http.Client{Transport: &http.Transport{MaxIdleConns: o.conc * 2, MaxIdleConnsPerHost: o.conc * 2, IdleConnTimeout: time.Minute}}
	defer hc.CloseIdleConnections()
	cl, err := client.New(url, o.token, hc)
	if err != nil {
		return nil, err
	}
	var spec strings.Builder
	spec.WriteString(`{"steps":[`)
	for i := range o.steps {
		if i > 0 {
			spec.WriteString(",")
		}
		path := "/ok"
		if i == o.steps-1 {
			path = "/last"
		}
		fmt.Fprintf(&spec, `{"name":"s%d","action":{"url":"%s%s"},"compensation":{"url":"%s/undo"},"retry":{"max_attempts":3,"initial_interval":"10ms"}}`,
			i, base, path, base)
	}
	spec.WriteString(`]}`)
	if err := cl.Ready(ctx); err != nil {
		return nil, errors.Wrap(err, "daemon not ready")
	}
	if _, err := cl.PutDefinition(ctx, benchDefinition, []byte(spec.String())); err != nil {
		return nil, errors.Wrap(err, "register the definition")
	}

	d0, err := scrapeDaemon(ctx, hc, url)
	if err != nil {
		return nil, err
	}
	cpu0 := cputime.Process()
	lat := make([]time.Duration, o.n)
	var next, completed, compensated atomic.Int64
	// The first client error ends the run.
	runCtx, stopRun := context.WithCancelCause(ctx)
	defer stopRun(nil)
	var wg sync.WaitGroup
	start := time.Now()
	clients := pprof.WithLabels(ctx, pprof.Labels("role", "clients"))
	for range o.conc {
		wg.Go(func() {
			pprof.SetGoroutineLabels(clients)
			for {
				i := next.Add(1) - 1
				if i >= int64(o.n) || runCtx.Err() != nil {
					return
				}
				input := map[string]bool{"fail": rand.Float64() < o.fail}
				t0 := time.Now()
				res, err := cl.Start(runCtx, benchDefinition, input, client.StartOptions{Wait: time.Minute})
				if err == nil && res.Saga == nil {
					var s *client.Saga
					s, err = cl.Wait(runCtx, res.ID)
					res.Saga = s
				}
				if err != nil {
					stopRun(err) // only the first cause is kept
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
		})
	}
	wg.Wait()
	elapsed, benchCPU := time.Since(start), cputime.Process()-cpu0
	if err := context.Cause(runCtx); err != nil {
		return nil, err
	}
	d1, err := scrapeDaemon(ctx, hc, url)
	if err != nil {
		return nil, err
	}
	slices.Sort(lat)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	return &benchResult{rate: float64(o.n) / elapsed.Seconds(), p50: ms(lat[o.n/2]), p99: ms(lat[o.n*99/100]),
		completed: int(completed.Load()), compensated: int(compensated.Load()),
		n: o.n, elapsed: elapsed, remote: o.addr != "", benchCPU: benchCPU, daemon: d1.since(d0)}, nil
}

// startDaemon serves a fresh file in this process, and returns its address
// and a function that stops it.
func (c *benchCommand) startDaemon(ctx context.Context, o *benchOptions) (string, func(), error) {
	dir, cleanup := o.dir, func() {}
	if dir == "" {
		tmp, err := os.MkdirTemp("", "sagad-bench-")
		if err != nil {
			return "", nil, errors.Wrap(err, "temporary directory")
		}
		dir, cleanup = tmp, func() { _ = os.RemoveAll(tmp) }
	}
	cfg := &serveConfig{db: filepath.Join(dir, "bench.db"), listen: "127.0.0.1:0", concurrency: 4096,
		grace: 5 * time.Second, exchange: "sagad.events", noSync: o.noSync}
	if o.db != "" {
		if !isPostgres(o.db) {
			cleanup()
			return "", nil, errors.Newf("-db %q is not a postgres:// URL (without -db the bench uses a bbolt file)", o.db)
		}
		schema := "sagad_bench_" + strings.ToLower(ulid.Make().String())
		cfg.db = postgres.WithSchema(o.db, schema)
		files := cleanup
		cleanup = func() {
			files()
			dropSchema(o.db, schema, c.stderr)
		}
	}
	ready := make(chan string, 1)
	dctx, stopDaemon := context.WithCancel(ctx)
	srv := &serveCommand{stdout: io.Discard, stderr: c.stderr, ready: func(addr string) { ready <- addr }}
	served := make(chan error, 1)
	pprof.Do(ctx, pprof.Labels("role", "sagad"), func(context.Context) {
		go func() {
			served <- srv.serve(dctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
		}()
	})
	select {
	case addr := <-ready:
		return addr, func() { stopDaemon(); <-served; cleanup() }, nil
	case err := <-served:
		stopDaemon()
		cleanup()
		if err == nil { // interrupted before recovery ended
			err = errors.Wrap(context.Cause(ctx), "stopped before it was ready")
		}
		return "", nil, errors.Wrap(err, "daemon")
	}
}

// daemonCounters are what the bench reads from a daemon's /metrics.
type daemonCounters struct {
	cpu, commitTime        time.Duration
	commits, writes, pages int64
}

func (d daemonCounters) since(before daemonCounters) daemonCounters {
	return daemonCounters{cpu: d.cpu - before.cpu, commitTime: d.commitTime - before.commitTime,
		commits: d.commits - before.commits, writes: d.writes - before.writes, pages: d.pages - before.pages}
}

// scrapeDaemon reads the counters the bench reports from the daemon's
// /metrics (public, like health).
func scrapeDaemon(ctx context.Context, hc *http.Client, url string) (daemonCounters, error) {
	var d daemonCounters
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(url, "/")+"/metrics", nil)
	if err != nil {
		return d, errors.Wrap(err, "daemon metrics")
	}
	resp, err := hc.Do(req)
	if err != nil {
		return d, errors.Wrap(err, "daemon metrics")
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return d, errors.Newf("daemon metrics: %s", resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return d, errors.Wrap(err, "daemon metrics")
	}
	value := func(name string) (float64, error) {
		f := families[name]
		if f == nil || len(f.GetMetric()) != 1 {
			return 0, errors.Newf("daemon metrics: no %s (is it a sagad daemon of this version?)", name)
		}
		m := f.GetMetric()[0]
		switch {
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue(), nil
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue(), nil
		case m.GetUntyped() != nil:
			return m.GetUntyped().GetValue(), nil
		}
		return 0, errors.Newf("daemon metrics: %s is a %s, not a number", name, f.GetType())
	}
	seconds := func(v float64) time.Duration { return time.Duration(v * float64(time.Second)) }
	for _, f := range []struct {
		name string
		set  func(float64)
	}{
		{"process_cpu_seconds_total", func(v float64) { d.cpu = seconds(v) }},
		{"sagad_storage_commits_total", func(v float64) { d.commits = int64(v) }},
		{"sagad_storage_writes_total", func(v float64) { d.writes = int64(v) }},
		{"sagad_storage_pages_written_total", func(v float64) { d.pages = int64(v) }},
		{"sagad_storage_commit_seconds_total", func(v float64) { d.commitTime = seconds(v) }},
	} {
		v, err := value(f.name)
		if err != nil {
			return d, err
		}
		f.set(v)
	}
	return d, nil
}

// writeHeapProfile writes the allocation profile to path, after a
// collection so that it is up to date.
func writeHeapProfile(path string) error {
	runtime.GC()
	f, err := os.Create(path)
	if err != nil {
		return errors.Wrap(err, "memory profile")
	}
	if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
		_ = f.Close()
		return errors.Wrap(err, "memory profile")
	}
	return errors.Wrap(f.Close(), "memory profile")
}
