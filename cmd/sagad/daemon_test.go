package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sagad/sagad/client"
	"github.com/sagad/sagad/internal/brokertest"
	"github.com/sagad/sagad/internal/pgtest"
	"github.com/sagad/sagad/storage/postgres"
)

// The daemon tests run sagad as a child process: this test binary,
// re-executed with SAGAD_TEST_DAEMON=1, runs main's run() with the
// arguments in SAGAD_TEST_ARGS.
func TestMain(m *testing.M) {
	if os.Getenv("SAGAD_TEST_DAEMON") == "1" {
		ctx, stop := signalContext()
		defer stop()
		os.Exit(run(ctx, strings.Fields(os.Getenv("SAGAD_TEST_ARGS")), os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// daemon is a sagad child process.
type daemon struct {
	cmd  *exec.Cmd
	addr string
	done chan struct{}
	logs *strings.Builder
	mu   sync.Mutex
	// logged receives (without blocking) after each line of the log.
	logged chan struct{}
}

var addrLine = regexp.MustCompile(`msg="sagad ready" addr=(\S+)`)

// startDaemon runs 'sagad serve' on path with extra args and waits until it
// is ready (recovery done).
func startDaemon(t *testing.T, path string, args ...string) *daemon {
	t.Helper()
	return startDaemonLimited(t, 0, path, args...)
}

// startDaemonLimited is startDaemon with the daemon's open-file limit
// (soft and hard, so that Go cannot raise it) set to nofile, if not 0.
func startDaemonLimited(t *testing.T, nofile int, path string, args ...string) *daemon {
	t.Helper()
	return startDaemonEnv(t, nofile, nil, path, args...)
}

// startDaemonEnv is startDaemonLimited with more environment variables.
func startDaemonEnv(t *testing.T, nofile int, env []string, path string, args ...string) *daemon {
	t.Helper()
	all := append([]string{"serve", "--db", path, "--listen", "127.0.0.1:0", "--log-level", "info"}, args...)
	cmd := exec.Command(os.Args[0], "-test.run", "^$")
	if nofile > 0 {
		// The shell execs the daemon: its pid is the daemon's.
		cmd = exec.Command("sh", "-c", fmt.Sprintf(`ulimit -n %d && exec "$0" "$@"`, nofile), os.Args[0], "-test.run", "^$")
	}
	cmd.Env = append(os.Environ(), "SAGAD_TEST_DAEMON=1", "SAGAD_TEST_ARGS="+strings.Join(all, " "), "SAGAD_AMQP_URL=")
	cmd.Env = append(cmd.Env, env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &daemon{cmd: cmd, done: make(chan struct{}), logs: &strings.Builder{}, logged: make(chan struct{}, 1)}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			d.mu.Lock()
			d.logs.WriteString(sc.Text() + "\n")
			d.mu.Unlock()
			select {
			case d.logged <- struct{}{}:
			default:
			}
			if m := addrLine.FindStringSubmatch(sc.Text()); m != nil {
				addr <- m[1]
			}
		}
		_ = cmd.Wait()
		close(d.done)
	}()
	select {
	case d.addr = <-addr:
	case <-d.done:
		t.Fatalf("sagad exited before serving:\n%s", d.output())
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("sagad did not serve within 20s:\n%s", d.output())
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-d.done
	})
	return d
}

func (d *daemon) output() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.logs.String()
}

// waitLog waits until the daemon's log has a line containing want.
func (d *daemon) waitLog(t *testing.T, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	for !strings.Contains(d.output(), want) {
		select {
		case <-d.logged:
		case <-d.done:
			if !strings.Contains(d.output(), want) {
				t.Fatalf("sagad exited without logging %q:\n%s", want, d.output())
			}
		case <-deadline:
			t.Fatalf("sagad did not log %q within %s:\n%s", want, timeout, d.output())
		}
	}
}

func (d *daemon) client(t *testing.T) *client.Client {
	t.Helper()
	c, err := client.New("http://"+d.addr, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// participants records the calls sagad makes; the handler of a path may
// block until released.
type participants struct {
	mu     sync.Mutex
	calls  []string // "path key"
	traces []string // "path traceparent"
	block  map[string]chan struct{}
	hit    chan string
}

func (p *participants) handler(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	if !json.Valid(body) {
		http.Error(w, "bad body", http.StatusBadRequest)
		return
	}
	p.mu.Lock()
	p.calls = append(p.calls, r.URL.Path+" "+r.Header.Get("Idempotency-Key"))
	p.traces = append(p.traces, r.URL.Path+" "+r.Header.Get("Traceparent"))
	ch := p.block[r.URL.Path]
	p.mu.Unlock()
	select {
	case p.hit <- r.URL.Path:
	default:
	}
	if ch != nil {
		select {
		case <-ch:
		case <-r.Context().Done():
			return
		}
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"path":%q}`, r.URL.Path)
}

func (p *participants) callsTo(path string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, c := range p.calls {
		if strings.HasPrefix(c, path+" ") {
			out = append(out, strings.TrimPrefix(c, path+" "))
		}
	}
	return out
}

// chargeInFlight starts a daemon on path and an order saga (reserve,
// charge, ship; each with a compensation but ship) whose participant holds
// the charge call until p.block["/charge"] is closed. It returns once the
// charge call is in flight.
func chargeInFlight(t *testing.T, path string, args ...string) (d *daemon, p *participants, id string) {
	t.Helper()
	return chargeInFlightWith(t, context.Background(), nil, path, args...)
}

// chargeInFlightWith is chargeInFlight with the daemon's environment
// variables added to env, and the saga started with ctx.
func chargeInFlightWith(t *testing.T, ctx context.Context, env []string, path string, args ...string) (d *daemon, p *participants, id string) {
	t.Helper()
	p = &participants{block: map[string]chan struct{}{"/charge": make(chan struct{})}, hit: make(chan string, 16)}
	srv := httptest.NewServer(http.HandlerFunc(p.handler))
	t.Cleanup(srv.Close)
	d = startDaemonEnv(t, 0, env, path, args...)
	c := d.client(t)
	spec := fmt.Sprintf(`{"steps":[
		{"name":"reserve","action":{"url":"%[1]s/reserve"},"compensation":{"url":"%[1]s/release"}},
		{"name":"charge","action":{"url":"%[1]s/charge","timeout":"30s"},"compensation":{"url":"%[1]s/refund"}},
		{"name":"ship","action":{"url":"%[1]s/ship"}}]}`, srv.URL)
	if _, err := c.PutDefinition(ctx, "order", []byte(spec)); err != nil {
		t.Fatal(err)
	}
	st, err := c.Start(ctx, "order", map[string]string{"order": "A-1"}, client.StartOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for hit := ""; hit != "/charge"; {
		select {
		case hit = <-p.hit:
		case <-time.After(20 * time.Second):
			t.Fatalf("charge was never called; daemon log:\n%s", d.output())
		}
	}
	return d, p, st.ID
}

// killedWithChargeInFlight is chargeInFlight, then the daemon killed with
// SIGKILL and the charge call let through: the file holds the charge in
// doubt.
func killedWithChargeInFlight(t *testing.T, path string) (*participants, string) {
	t.Helper()
	d, p, id := chargeInFlight(t, path)
	if err := d.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-d.done
	close(p.block["/charge"])
	return p, id
}

// sagad is killed with SIGKILL while a step's call is in flight, then
// restarted on the same file: the saga finishes, and the participant saw the
// interrupted call again with the same idempotency key.
func TestDaemonSurvivesSIGKILL(t *testing.T) {
	t.Parallel()
	daemonSurvivesSIGKILL(t, filepath.Join(t.TempDir(), "sagad.db"))
}

// TestDaemonSurvivesSIGKILLOnPostgres is TestDaemonSurvivesSIGKILL with
// --db a PostgreSQL URL: the restarted daemon waits for the killed one's
// session to end, then recovers.
func TestDaemonSurvivesSIGKILLOnPostgres(t *testing.T) {
	t.Parallel()
	url := pgtest.URL(t)
	daemonSurvivesSIGKILL(t, postgres.WithSchema(url, pgtest.Schema(t, url)), "--node", "test-node")
}

// daemonSurvivesSIGKILL kills a daemon on path mid-call and restarts it
// with the same args.
func daemonSurvivesSIGKILL(t *testing.T, path string, args ...string) {
	d, p, id := chargeInFlight(t, path, args...)
	ctx := context.Background()
	if err := d.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-d.done
	close(p.block["/charge"]) // the restarted daemon's call goes through

	d2 := startDaemon(t, path, args...)
	s, err := d2.client(t).Wait(ctx, id)
	if err != nil {
		t.Fatalf("wait after restart: %v\n%s", err, d2.output())
	}
	if s.Status != "completed" {
		t.Fatalf("saga %s after restart: %+v", s.Status, s)
	}
	charges := p.callsTo("/charge")
	if len(charges) != 2 || charges[0] != charges[1] || charges[0] != id+"/charge/action" {
		t.Errorf("charge calls %q: want the interrupted call and its re-run, both with key %s/charge/action", charges, id)
	}
	if n := len(p.callsTo("/reserve")); n != 1 {
		t.Errorf("reserve called %d times, want once (its success was committed before the crash)", n)
	}
	if !strings.Contains(d2.output(), "in_doubt=1") {
		t.Errorf("the restarted daemon's recovery summary does not report the attempt in doubt:\n%s", d2.output())
	}
}

func TestServeRefusesOpenListenerWithoutToken(t *testing.T) {
	t.Parallel()
	var stdout, stderr strings.Builder
	code := run(context.Background(), []string{"serve", "--db", filepath.Join(t.TempDir(), "x.db"), "--listen", "0.0.0.0:0"}, &stdout, &stderr)
	if code != exitUsage || !strings.Contains(stderr.String(), "without a token") {
		t.Fatalf("exit %d, stderr %q; want a refusal naming the missing token", code, stderr.String())
	}
}

func TestServeSignalShutsDownGracefully(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "sagad.db")
	d := startDaemon(t, path)
	if err := d.client(t).Ready(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.done:
	case <-time.After(20 * time.Second):
		t.Fatalf("sagad did not stop on SIGTERM:\n%s", d.output())
	}
	if code := d.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0:\n%s", code, d.output())
	}
	if !strings.Contains(d.output(), "shutting down") {
		t.Errorf("no shutdown line in the log:\n%s", d.output())
	}
}

// With --amqp-url the daemon runs the outbox relay: lifecycle events of a
// saga reach the broker.
func TestDaemonRelaysEvents(t *testing.T) {
	t.Parallel()
	brokerURL := brokertest.URL(t)
	exchange := brokertest.Name("test.daemon")
	sink := brokertest.NewSink(t, brokerURL, exchange, "#")
	p := &participants{hit: make(chan string, 16)}
	srv := httptest.NewServer(http.HandlerFunc(p.handler))
	defer srv.Close()
	d := startDaemon(t, filepath.Join(t.TempDir(), "sagad.db"), "--amqp-url", brokerURL, "--exchange", exchange)
	c := d.client(t)
	ctx := context.Background()
	spec := fmt.Sprintf(`{"steps":[{"name":"one","action":{"url":"%s/one"}}],"events":{"lifecycle":true}}`, srv.URL)
	if _, err := c.PutDefinition(ctx, "relayed", []byte(spec)); err != nil {
		t.Fatal(err)
	}
	res, err := c.Start(ctx, "relayed", nil, client.StartOptions{Wait: 10 * time.Second})
	if err != nil || res.Saga == nil || res.Saga.Status != "completed" {
		t.Fatalf("start: %+v %v", res, err)
	}
	var got []string
	for len(got) < 3 {
		select {
		case m := <-sink.Deliveries:
			if m.Headers["x-saga-id"] == res.ID {
				got = append(got, m.Type)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("got events %v from the daemon's relay, want saga.started, step.succeeded, saga.completed\n%s", got, d.output())
		}
	}
	if strings.Join(got, " ") != "saga.started step.succeeded saga.completed" {
		t.Errorf("events %v, want saga.started step.succeeded saga.completed", got)
	}
}

// A start waiting for its saga when the daemon is told to stop answers at
// once with the saga's id (202), so the client never loses a saga it
// started.
func TestShutdownAnswersWaitingStarts(t *testing.T) {
	t.Parallel()
	p := &participants{block: map[string]chan struct{}{"/slow": make(chan struct{})}, hit: make(chan string, 16)}
	srv := httptest.NewServer(http.HandlerFunc(p.handler))
	defer srv.Close()
	defer close(p.block["/slow"])
	d := startDaemon(t, filepath.Join(t.TempDir(), "sagad.db"), "--shutdown-grace", "30s")
	c := d.client(t)
	ctx := context.Background()
	spec := fmt.Sprintf(`{"steps":[{"name":"slow","action":{"url":"%s/slow","timeout":"1m"}}]}`, srv.URL)
	if _, err := c.PutDefinition(ctx, "slow", []byte(spec)); err != nil {
		t.Fatal(err)
	}
	type result struct {
		res *client.StartResult
		err error
	}
	started := make(chan result, 1)
	go func() {
		res, err := c.Start(ctx, "slow", nil, client.StartOptions{Wait: time.Minute})
		started <- result{res, err}
	}()
	select {
	case <-p.hit:
	case <-time.After(20 * time.Second):
		t.Fatal("the step was never called")
	}
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-started:
		if r.err != nil || r.res.ID == "" || r.res.Saga != nil {
			t.Fatalf("start during shutdown: %+v, %v; want 202 with the saga's id", r.res, r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("the waiting start was not answered within 10s of SIGTERM (grace 30s)")
	}
}

func TestServeRejectsMalformedEnvironment(t *testing.T) {
	t.Setenv("SAGAD_CONCURRENCY", "lots")
	var stdout, stderr strings.Builder
	code := run(context.Background(), []string{"serve", "--db", filepath.Join(t.TempDir(), "x.db")}, &stdout, &stderr)
	if code != exitUsage || !strings.Contains(stderr.String(), `SAGAD_CONCURRENCY="lots"`) {
		t.Fatalf("exit %d, stderr %q; want a usage error naming SAGAD_CONCURRENCY", code, stderr.String())
	}
}

// A file left behind by a SIGKILLed daemon, with a saga in flight, is
// driven to the end by 'sagad recover', offline.
func TestRecoverAfterSIGKILL(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "sagad.db")
	p, id := killedWithChargeInFlight(t, path)

	code, out, errOut := runCmd(t, "recover", "--db", path)
	if code != exitOK || !strings.Contains(out, "1 unfinished sagas found; ended: 1 completed") {
		t.Fatalf("recover: exit %d, %s %s", code, out, errOut)
	}
	if charges := p.callsTo("/charge"); len(charges) != 2 || charges[0] != charges[1] {
		t.Errorf("charge calls %q: want the interrupted call re-run with the same idempotency key", charges)
	}
	code, out, _ = runCmd(t, "sagas", "show", id, "--db", path, "--json")
	if code != exitOK || !strings.Contains(out, `"status": "completed"`) {
		t.Fatalf("after recover: exit %d, %s", code, out)
	}
	code, out, _ = runCmd(t, "recover", "--db", path, "--json")
	if code != exitOK || !strings.Contains(out, `"found": 0`) {
		t.Fatalf("second recover: exit %d, %s; want nothing left to do", code, out)
	}
}

// Operator commands against a running daemon: a locked file is refused at
// once with a pointer to --addr, and an abort through --addr compensates a
// saga whose step is in flight.
func TestOperatorCommandsAgainstADaemon(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "sagad.db")
	d, p, id := chargeInFlight(t, path)
	addr := "http://" + d.addr
	c := d.client(t)
	ctx := context.Background()
	for _, args := range [][]string{{"sagas", "list"}, {"check"}, {"outbox", "stats"}, {"recover"}} {
		start := time.Now()
		code, _, errOut := runCmd(t, append(args, "--db", path)...)
		if code != exitFailed || !strings.Contains(errOut, "--addr") && !strings.Contains(errOut, "stop it") || time.Since(start) > 5*time.Second {
			t.Errorf("%v on a daemon's file: exit %d after %s, %q; want a prompt refusal that says what to do", args, code, time.Since(start), errOut)
		}
	}
	code, out, errOut := runCmd(t, "sagas", "abort", id, "--addr", addr)
	if code != exitOK || !strings.Contains(out, "abort requested") {
		t.Fatalf("abort through the daemon: exit %d, %s %s", code, out, errOut)
	}
	close(p.block["/charge"]) // the charge in flight finishes, then is compensated
	s, err := c.Wait(ctx, id)
	if err != nil || s.Status != "compensated" {
		t.Fatalf("aborted saga: %+v %v, want compensated", s, err)
	}
	if len(p.callsTo("/refund")) != 1 || len(p.callsTo("/release")) != 1 {
		t.Errorf("compensations called: refund %d, release %d; want one each", len(p.callsTo("/refund")), len(p.callsTo("/release")))
	}
}
