package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/sagad/sagad/internal/pgtest"
)

var resultLine = regexp.MustCompile(`^sagas_per_sec=\d+ p50_ms=[\d.]+ p99_ms=[\d.]+ completed=(\d+) compensated=(\d+)\n$`)

// checkResult checks the result line: its counts must add up to n, with
// both outcomes present.
func checkResult(t *testing.T, stdout string, n int) (completed, compensated int) {
	t.Helper()
	m := resultLine.FindStringSubmatch(stdout)
	if m == nil {
		t.Fatalf("stdout %q is not the result line", stdout)
	}
	completed, _ = strconv.Atoi(m[1])
	compensated, _ = strconv.Atoi(m[2])
	if completed+compensated != n || completed == 0 || compensated == 0 {
		t.Errorf("completed=%d compensated=%d: want both, adding up to %d", completed, compensated, n)
	}
	return completed, compensated
}

// checkDetails checks the details line: cpu names the CPU fields, and the
// commits must have carried every saga's start and steps.
func checkDetails(t *testing.T, stderr, cpu string, n, steps int) {
	t.Helper()
	d := regexp.MustCompile(`(?m)^` + cpu + ` cpu_util=\d+% commits=(\d+) writes_per_commit=([\d.]+) ` +
		`pages_per_commit=([\d.]+) commit_ms=[\d.]+ committer_busy=\d+%$`).FindStringSubmatch(stderr)
	if d == nil {
		t.Fatalf("stderr %q has no details line", stderr)
	}
	commits, _ := strconv.Atoi(d[1])
	perCommit, _ := strconv.ParseFloat(d[2], 64)
	pages, _ := strconv.ParseFloat(d[3], 64)
	want := n * (steps + 1)
	if writes := float64(commits) * perCommit; commits == 0 || writes < float64(want)*0.95 || pages < 2 {
		t.Errorf("commits=%d writes_per_commit=%.1f pages_per_commit=%.1f: want at least %d writes, 2 pages a commit",
			commits, perCommit, pages, want)
	}
}

// TestBenchCommand runs a small 'sagad bench' with its own daemon.
func TestBenchCommand(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	code, stdout, stderr := runCmd(t, "bench", "-n", "60", "-c", "4", "-fail", "0.5", "-dir", dir,
		"-cpuprofile", dir+"/cpu.prof", "-memprofile", dir+"/mem.prof", "-trace", dir+"/trace.out")
	if code != exitOK {
		t.Fatalf("exit %d, stderr %s", code, stderr)
	}
	checkResult(t, stdout, 60)
	checkDetails(t, stderr, `cpu_us_per_saga=\d+`, 60, 3)
	for _, f := range []string{"cpu.prof", "mem.prof", "trace.out"} {
		if st, err := os.Stat(dir + "/" + f); err != nil || st.Size() == 0 {
			t.Errorf("%s: %v, want a profile", f, err)
		}
	}
}

// With -db a PostgreSQL URL the bench's daemon runs on a schema of its own,
// dropped afterwards.
func TestBenchOnPostgres(t *testing.T) {
	t.Parallel()
	url := pgtest.URL(t)
	code, stdout, stderr := runCmd(t, "bench", "-n", "60", "-c", "4", "-fail", "0.5", "-db", url)
	if code != exitOK {
		t.Fatalf("exit %d, stderr %s", code, stderr)
	}
	checkResult(t, stdout, 60)
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var left int
	if err := conn.QueryRow(context.Background(), "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'sagad_bench_%'").Scan(&left); err != nil || left != 0 {
		t.Errorf("%d bench schemas left (%v), want none", left, err)
	}
	if code, _, stderr := runCmd(t, "bench", "-n", "1", "-db", "/tmp/file.db"); code == exitOK || !strings.Contains(stderr, "postgres://") {
		t.Errorf("a -db that is no URL: exit %d, stderr %s", code, stderr)
	}
}

// TestBenchRemovesItsTemporaryFile runs a bench without -dir: its database
// goes in a temporary directory, removed afterwards.
func TestBenchRemovesItsTemporaryFile(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	if code, _, stderr := runCmd(t, "bench", "-n", "10", "-c", "2"); code != exitOK {
		t.Fatalf("exit %d, stderr %s", code, stderr)
	}
	if left, err := os.ReadDir(tmp); err != nil || len(left) != 0 {
		t.Errorf("temporary directory holds %v (%v) after the bench, want nothing", left, err)
	}
}

// TestBenchAgainstADaemon drives a sagad child process with -addr, then
// checks the daemon's metrics of the run.
func TestBenchAgainstADaemon(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, t.TempDir()+"/sagad.db", "--metrics-step-labels")
	url := "http://" + d.addr
	code, stdout, stderr := runCmd(t, "bench", "-n", "80", "-c", "8", "-fail", "0.5", "-steps", "2", "-addr", url)
	if code != exitOK {
		t.Fatalf("exit %d, stderr %s\ndaemon:\n%s", code, stderr, d.output())
	}
	completed, compensated := checkResult(t, stdout, 80)
	checkDetails(t, stderr, `daemon_cpu_us_per_saga=\d+ bench_cpu_us_per_saga=\d+`, 80, 2)

	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	// value returns the value of the series of name whose labels include
	// labels (name=value pairs), summed over the series that match.
	value := func(name string, labels ...string) float64 {
		var sum float64
		found := false
	series:
		for _, m := range families[name].GetMetric() {
			for i := 0; i < len(labels); i += 2 {
				ok := false
				for _, l := range m.GetLabel() {
					ok = ok || (l.GetName() == labels[i] && l.GetValue() == labels[i+1])
				}
				if !ok {
					continue series
				}
			}
			found = true
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				sum += float64(m.GetHistogram().GetSampleCount())
			}
		}
		if !found {
			t.Errorf("metrics: no %s%v", name, labels)
		}
		return sum
	}
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"sagad_sagas", []string{"status", "completed"}, float64(completed)},
		{"sagad_sagas", []string{"status", "compensated"}, float64(compensated)},
		{"sagad_saga_status_changes_total", []string{"definition", benchDefinition, "status", "compensated"}, float64(compensated)},
		// Both steps succeeded in every saga but the failed ones' last.
		{"sagad_step_attempts_total", []string{"step", "s0", "phase", "action", "outcome", "success"}, 80},
		{"sagad_step_attempts_total", []string{"step", "s1", "phase", "action", "outcome", "failure"}, float64(compensated)},
		{"sagad_step_attempts_total", []string{"step", "s0", "phase", "compensation", "outcome", "success"}, float64(compensated)},
		{"sagad_step_attempt_duration_seconds", []string{"step", "s1", "phase", "action"}, 80},
		{"sagad_outbox_events", []string{"status", "new"}, 0},
	} {
		if got := value(c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if w := value("sagad_storage_writes_total"); w < 80*3 {
		t.Errorf("sagad_storage_writes_total = %v, want at least %d", w, 80*3)
	}
	if c, p := value("sagad_storage_commits_total"), value("sagad_storage_pages_written_total"); c < 1 || p < 2*c {
		t.Errorf("commits %v, pages written %v: want commits, at least 2 pages each", c, p)
	}
}

// TestBenchInterrupted starts a bench whose context has already ended: it
// must fail cleanly, whether the daemon got ready first or not.
func TestBenchInterrupted(t *testing.T) {
	t.Parallel()
	for range 5 {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		var stdout, stderr strings.Builder
		code := (&benchCommand{stdout: &stdout, stderr: &stderr}).run(ctx, []string{"-n", "10", "-dir", t.TempDir()})
		if code != exitFailed || !strings.Contains(stderr.String(), "context canceled") || stdout.Len() != 0 {
			t.Fatalf("exit %d, stdout %q, stderr %q; want exit %d, no result, context canceled", code, stdout.String(), stderr.String(), exitFailed)
		}
	}
}

// fakeDaemon serves what the bench needs of a daemon, with start as its
// POST /v1/sagas.
func fakeDaemon(t *testing.T, start http.HandlerFunc) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {})
	mux.HandleFunc("PUT /v1/definitions/{name}", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `{"name":"sagad-bench","version":"v1"}`)
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		for _, name := range []string{"process_cpu_seconds_total", "sagad_storage_commits_total", "sagad_storage_writes_total",
			"sagad_storage_pages_written_total", "sagad_storage_commit_seconds_total"} {
			fmt.Fprintf(w, "# TYPE %s counter\n%s 1\n", name, name)
		}
	})
	mux.HandleFunc("POST /v1/sagas", start)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.URL
}

func unavailable(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(http.StatusServiceUnavailable)
	fmt.Fprint(w, `{"title":"Service Unavailable","status":503,"detail":"shutting down"}`)
}

// TestBenchClientErrors drives a daemon whose starts fail in two ways (a
// problem answer, a dropped connection): the first error ends the run.
func TestBenchClientErrors(t *testing.T) {
	t.Parallel()
	var starts atomic.Int64
	url := fakeDaemon(t, func(w http.ResponseWriter, r *http.Request) {
		if starts.Add(1)%2 == 0 {
			unavailable(w)
			return
		}
		panic(http.ErrAbortHandler) // drops the connection
	})
	code, stdout, stderr := runCmd(t, "bench", "-n", "1000", "-c", "16", "-addr", url)
	if code != exitFailed || stdout != "" {
		t.Fatalf("exit %d, stdout %q, stderr %q; want exit %d and no result", code, stdout, stderr, exitFailed)
	}
	if n := starts.Load(); n >= 1000 {
		t.Errorf("%d starts: want the run to end at the first error, not to go through -n", n)
	}
}

// TestBenchStopsAtTheFirstError drives a daemon that fails the first start
// and holds every other one until the client gives up: the bench must end
// them, not wait for them.
func TestBenchStopsAtTheFirstError(t *testing.T) {
	t.Parallel()
	var starts atomic.Int64
	release := make(chan struct{})
	url := fakeDaemon(t, func(w http.ResponseWriter, r *http.Request) {
		if starts.Add(1) == 1 {
			unavailable(w)
			return
		}
		// With the body read, the server notices a client that hangs up.
		_, _ = io.Copy(io.Discard, r.Body)
		select {
		case <-r.Context().Done():
		case <-release:
		}
	})
	t.Cleanup(func() { close(release) }) // runs before the server's Close
	type result struct {
		code   int
		stderr string
	}
	done := make(chan result, 1)
	go func() {
		code, _, stderr := runCmd(t, "bench", "-n", "100", "-c", "8", "-addr", url)
		done <- result{code, stderr}
	}()
	select {
	case r := <-done:
		if r.code != exitFailed || !strings.Contains(r.stderr, "shutting down") {
			t.Errorf("exit %d, stderr %q; want exit %d with the first error", r.code, r.stderr, exitFailed)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the bench still waits for the held starts 20s after the first one failed")
	}
}

func TestBenchUsage(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"-c", "0"}, {"-n", "-1"}, {"-fail", "1.5"}, {"-steps", "0"}, {"extra"},
		{"-addr", "http://127.0.0.1:1", "-nosync"}, {"-addr", "http://127.0.0.1:1", "-dir", "/tmp"},
		{"-token", "t"}, {"-fail", "NaN"},
	} {
		if code, _, stderr := runCmd(t, append([]string{"bench"}, args...)...); code != exitUsage {
			t.Errorf("bench %v: exit %d, want %d (stderr %q)", args, code, exitUsage, stderr)
		}
	}
}
