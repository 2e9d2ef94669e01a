package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/errors"
	"github.com/sagad/sagad/client"
	"github.com/sagad/sagad/engine"
)

// TestServeCapsConnections floods a daemon's API with idle connections
// while one of its sagas is between two participant calls, the second to
// a participant not called before (so a new connection, a new descriptor).
// The daemon runs with an open-file limit of 128: uncapped, the flood
// takes every descriptor and the participant call fails with "too many
// open files". Capped, the daemon holds at most the cap of them, warns
// once, and the saga completes.
func TestServeCapsConnections(t *testing.T) {
	t.Parallel()
	const nofile, flood = 128, 200
	tests := []struct {
		name string
		args []string
		cap  int
	}{
		{"default: half the open-file limit", nil, nofile / 2},
		{"--max-connections", []string{"--max-connections", "20"}, 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := &participants{block: map[string]chan struct{}{"/hold": make(chan struct{})}, hit: make(chan string, 16)}
			first := httptest.NewServer(http.HandlerFunc(p.handler))
			defer first.Close()
			second := httptest.NewServer(http.HandlerFunc(p.handler))
			defer second.Close()
			release := sync.OnceFunc(func() { close(p.block["/hold"]) })
			defer release() // before the servers' Close, which waits for the held call
			d := startDaemonLimited(t, nofile, filepath.Join(t.TempDir(), "sagad.db"), tt.args...)
			if want := "max_connections=" + strconv.Itoa(tt.cap); !strings.Contains(d.output(), want) {
				t.Fatalf("the daemon's log does not say %s:\n%s", want, d.output())
			}
			c := d.client(t)
			ctx := context.Background()
			spec := fmt.Sprintf(`{"steps":[{"name":"hold","action":{"url":"%s/hold","timeout":"1m"}},
				{"name":"next","action":{"url":"%s/next"}}]}`, first.URL, second.URL)
			if _, err := c.PutDefinition(ctx, "flooded", []byte(spec)); err != nil {
				t.Fatal(err)
			}
			st, err := c.Start(ctx, "flooded", nil, client.StartOptions{})
			if err != nil {
				t.Fatal(err)
			}
			waitHit(t, p, "/hold", d)
			before := openFiles(t, d)

			conns := make([]net.Conn, 0, flood)
			defer func() {
				for _, conn := range conns {
					_ = conn.Close()
				}
			}()
			dialer := net.Dialer{Timeout: 5 * time.Second}
			for range flood {
				conn, err := dialer.Dial("tcp", d.addr)
				if err != nil {
					t.Fatalf("connection %d of the flood: %v", len(conns)+1, err)
				}
				conns = append(conns, conn)
			}
			d.waitLog(t, "API connection cap reached", 10*time.Second)
			if n := openFiles(t, d); n-before > tt.cap {
				t.Errorf("the daemon holds %d descriptors with %d idle connections waiting, %d before them: want at most %d more (the cap)",
					n, flood, before, tt.cap)
			}

			release() // the saga goes on to call the second participant
			waitHit(t, p, "/next", d)
			for _, conn := range conns {
				_ = conn.Close()
			}
			conns = conns[:0]
			s, err := c.Wait(ctx, st.ID)
			if err != nil || s.Status != "completed" {
				t.Fatalf("saga under the flood: %+v, %v; want completed\n%s", s, err, d.output())
			}
			if out := d.output(); strings.Count(out, "API connection cap reached") != 1 || strings.Contains(out, "too many open files") {
				t.Errorf("want one warning of the cap and no \"too many open files\" in the log:\n%s", out)
			}
		})
	}
}

// waitHit waits for the participant to be called at path.
func waitHit(t *testing.T, p *participants, path string, d *daemon) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case hit := <-p.hit:
			if hit == path {
				return
			}
		case <-deadline:
			t.Fatalf("%s was never called; daemon log:\n%s", path, d.output())
		}
	}
}

// openFiles counts the daemon's open descriptors.
func openFiles(t *testing.T, d *daemon) int {
	t.Helper()
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", d.cmd.Process.Pid))
	if err != nil {
		t.Skipf("cannot count the daemon's descriptors: %v", err)
	}
	return len(entries)
}

// TestLimitListenerLogsOnceAndClears: a listener at its cap makes further
// accepts wait, warns once however many wait, and says when the open
// connections are back to half the cap, not before.
func TestLimitListenerLogsOnceAndClears(t *testing.T) {
	t.Parallel()
	const limit, clients = 4, 7
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	logs := &lineWriter{lines: make(chan string, 16)}
	ln := newLimitListener(tcp, limit, newTestLogger(logs))
	ln.quiet = 0
	defer ln.Close()
	accepted := make(chan net.Conn, clients)
	go func() {
		defer close(accepted)
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- conn
		}
	}()
	var dialed []net.Conn
	defer func() {
		for _, c := range dialed {
			_ = c.Close()
		}
	}()
	for range clients {
		c, err := net.Dial("tcp", tcp.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		dialed = append(dialed, c)
	}
	var served []net.Conn
	for range limit {
		served = append(served, <-accepted)
	}
	if line := <-logs.lines; !strings.Contains(line, "level=WARN") || !strings.Contains(line, "max_connections=4") {
		t.Fatalf("first log line %q, want the warning that the cap is reached", line)
	}
	select {
	case c := <-accepted:
		t.Fatalf("accepted %v beyond the cap of %d", c.RemoteAddr(), limit)
	default:
	}
	// Each close lets one waiting connection in: the cap stays reached,
	// and nothing more is logged.
	for i := range clients - limit {
		_ = served[i].Close()
		served = append(served, <-accepted)
	}
	// Closing the rest brings the open connections to half the cap: the
	// all-clear.
	for _, c := range served[clients-limit:] {
		_ = c.Close()
	}
	if line := <-logs.lines; !strings.Contains(line, "level=INFO") || !strings.Contains(line, "back under the cap") ||
		!strings.Contains(line, "open=2") {
		t.Fatalf("log line %q, want the all-clear once 2 connections are open", line)
	}
	select {
	case line := <-logs.lines:
		t.Errorf("unexpected log line %q: want one warning and one all-clear", line)
	default:
	}
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	for range accepted { // Close ends the Accept waiting for a connection
	}
}

// lineWriter sends each log line on a channel.
type lineWriter struct{ lines chan string }

func (w *lineWriter) Write(b []byte) (int, error) {
	w.lines <- strings.TrimSuffix(string(b), "\n")
	return len(b), nil
}

func newTestLogger(w *lineWriter) *slog.Logger {
	log, _ := newLogger(w, "info", "text")
	return log
}

// TestServeRefusesAMalformedAddressOrToken: a listen address without a port
// is refused as such (not as "open without a token"), and a token that no
// client could send is refused before anything is opened.
func TestServeRefusesAMalformedAddressOrToken(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, listen, token string
		want, not           string
	}{
		{"loopback without a port", "127.0.0.1", "", "missing port in address", "without a token"},
		{"any address without a port", "0.0.0.0", "", "missing port in address", "without a token"},
		{"too many colons", "::1:8080", "", "too many colons", "without a token"},
		{"token with a trailing newline", "127.0.0.1:0", "s3cret\n", `at its end ("\n" at byte 6)`, "s3cret"},
		{"token with a leading space", "0.0.0.0:0", " s3cret", `at its start (" " at byte 0)`, "s3cret"},
		{"token with a trailing carriage return", "127.0.0.1:0", "s3cret\r", "at its end", "s3cret"},
		{"token with a space inside", "127.0.0.1:0", "s3 cret", "inside it", "s3cret"},
		{"token with a tab inside", "127.0.0.1:0", "s3\tcret", "inside it", "s3cret"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			args := []string{"serve", "--db", filepath.Join(dir, "x.db"), "--listen", tt.listen}
			if tt.token != "" {
				args = append(args, "--token", tt.token)
			}
			// The context has ended: a serve that is not refused stops at
			// once instead of serving until the test times out.
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			var stdout, stderr strings.Builder
			code := run(ctx, args, &stdout, &stderr)
			errOut := stderr.String()
			if code != exitUsage || !strings.Contains(errOut, tt.want) || strings.Contains(errOut, tt.not) {
				t.Errorf("exit %d, stderr %q; want exit %d saying %q and not %q", code, errOut, exitUsage, tt.want, tt.not)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Errorf("a refused serve left %d files: want it to open nothing", len(entries))
			}
		})
	}
}

// TestServeRefusesATokenFromTheEnvironment: SAGAD_TOKEN with a trailing
// newline (an environment file written by echo) is refused too.
func TestServeRefusesATokenFromTheEnvironment(t *testing.T) {
	t.Setenv("SAGAD_TOKEN", "s3cret\n")
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // a serve that is not refused stops at once
	var stdout, stderr strings.Builder
	code := run(ctx, []string{"serve", "--db", filepath.Join(t.TempDir(), "x.db")}, &stdout, &stderr)
	errOut := stderr.String()
	if code != exitUsage || !strings.Contains(errOut, "SAGAD_TOKEN") || !strings.Contains(errOut, "at its end") {
		t.Errorf("exit %d, stderr %q; want exit %d refusing the token's whitespace", code, errOut, exitUsage)
	}
}

// TestServeFlags checks that serve's flags and their environment reach
// the engine's options and the listener, and that malformed values are
// usage errors.
func TestServeFlags(t *testing.T) {
	tests := []struct {
		name            string
		args            []string
		env             map[string]string
		stepOutput      int
		sagaData        int
		maxConns        int // 0: defaultMaxConnections
		stepLabels      bool
		retention       time.Duration
		code            int
		wantErrContains string
	}{
		{name: "defaults", stepOutput: engine.DefaultMaxStepOutput, sagaData: engine.DefaultMaxSagaData},
		{name: "plain bytes", args: []string{"--max-step-output", "65536", "--max-saga-data", "1000000"},
			stepOutput: 65536, sagaData: 1000000},
		{name: "suffixes", args: []string{"--max-step-output", "256KiB", "--max-saga-data", "2MiB"},
			stepOutput: 256 << 10, sagaData: 2 << 20},
		{name: "no limit", args: []string{"--max-step-output", "-1", "--max-saga-data", "-1"}, stepOutput: -1, sagaData: -1},
		{name: "environment", env: map[string]string{"SAGAD_MAX_STEP_OUTPUT": "2KiB", "SAGAD_MAX_SAGA_DATA": "1GiB",
			"SAGAD_MAX_CONNECTIONS": "300", "SAGAD_METRICS_STEP_LABELS": "true"},
			stepOutput: 2 << 10, sagaData: 1 << 30, maxConns: 300, stepLabels: true},
		{name: "flags over the environment", args: []string{"--max-step-output", "3KiB", "--max-connections", "7"},
			env:        map[string]string{"SAGAD_MAX_STEP_OUTPUT": "2KiB", "SAGAD_MAX_CONNECTIONS": "300"},
			stepOutput: 3 << 10, sagaData: engine.DefaultMaxSagaData, maxConns: 7},
		{name: "retention", args: []string{"--retention", "720h"},
			stepOutput: engine.DefaultMaxStepOutput, sagaData: engine.DefaultMaxSagaData, retention: 720 * time.Hour},
		{name: "retention from the environment", env: map[string]string{"SAGAD_RETENTION": "48h"},
			stepOutput: engine.DefaultMaxStepOutput, sagaData: engine.DefaultMaxSagaData, retention: 48 * time.Hour},
		{name: "negative retention", args: []string{"--retention", "-1h"}, code: exitUsage, wantErrContains: "--retention"},
		{name: "step labels", args: []string{"--metrics-step-labels"},
			stepOutput: engine.DefaultMaxStepOutput, sagaData: engine.DefaultMaxSagaData, stepLabels: true},
		{name: "decimal unit", args: []string{"--max-step-output", "1MB"}, code: exitUsage, wantErrContains: "KiB, MiB or GiB"},
		{name: "not a size", env: map[string]string{"SAGAD_MAX_SAGA_DATA": "lots"}, code: exitUsage,
			wantErrContains: `SAGAD_MAX_SAGA_DATA="lots"`},
		{name: "too large", args: []string{"--max-saga-data", "9999999999GiB"}, code: exitUsage, wantErrContains: "too large"},
		{name: "no connections", args: []string{"--max-connections", "0"}, code: exitUsage, wantErrContains: "want at least 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, name := range []string{"SAGAD_MAX_STEP_OUTPUT", "SAGAD_MAX_SAGA_DATA", "SAGAD_MAX_CONNECTIONS", "SAGAD_METRICS_STEP_LABELS", "SAGAD_RETENTION"} {
				t.Setenv(name, tt.env[name])
				if _, ok := tt.env[name]; !ok {
					os.Unsetenv(name)
				}
			}
			var stderr strings.Builder
			cfg, code, ok := (&serveCommand{stdout: &stderr, stderr: &stderr}).parse(tt.args)
			if tt.code != exitOK {
				if ok || code != tt.code || !strings.Contains(stderr.String(), tt.wantErrContains) {
					t.Fatalf("parse: ok %v, exit %d, stderr %q; want exit %d saying %q", ok, code, stderr.String(), tt.code, tt.wantErrContains)
				}
				return
			}
			if !ok {
				t.Fatalf("parse: exit %d, stderr %q", code, stderr.String())
			}
			o := cfg.engineOptions(nil, engine.Hooks{})
			if o.MaxStepOutput != tt.stepOutput || o.MaxSagaData != tt.sagaData {
				t.Errorf("engine options MaxStepOutput %d, MaxSagaData %d; want %d, %d", o.MaxStepOutput, o.MaxSagaData, tt.stepOutput, tt.sagaData)
			}
			if want := orDefault(tt.maxConns, defaultMaxConnections()); cfg.maxConnections != want {
				t.Errorf("max connections %d, want %d", cfg.maxConnections, want)
			}
			if cfg.stepLabels != tt.stepLabels {
				t.Errorf("metrics step labels %v, want %v", cfg.stepLabels, tt.stepLabels)
			}
			if o.Retention != tt.retention {
				t.Errorf("retention %s, want %s", o.Retention, tt.retention)
			}
		})
	}
}

// orDefault returns v, or def if v is zero.
func orDefault(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

// TestServeHelpDocumentsTheLimits: the help names each limit's flag, its
// environment variable and its default.
func TestServeHelpDocumentsTheLimits(t *testing.T) {
	t.Parallel()
	code, _, help := runCmd(t, "serve", "--help")
	if code != exitOK {
		t.Fatalf("serve --help: exit %d", code)
	}
	for _, want := range []string{
		"-max-step-output", "SAGAD_MAX_STEP_OUTPUT", "(default 1MiB)", "negative: no limit",
		"-max-saga-data", "SAGAD_MAX_SAGA_DATA", "(default 4MiB)",
		"-max-connections", "SAGAD_MAX_CONNECTIONS", "half the open-file limit",
		"-metrics-step-labels", "SAGAD_METRICS_STEP_LABELS",
	} {
		if !strings.Contains(help, want) {
			t.Errorf("serve --help does not say %q:\n%s", want, help)
		}
	}
}

func TestParseByteSize(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		in   string
		want int
		err  bool
	}{
		{"0", 0, false}, {"1048576", 1 << 20, false}, {"1MiB", 1 << 20, false}, {"1 mib", 1 << 20, false},
		{"512KiB", 512 << 10, false}, {"3GiB", 3 << 30, false}, {"100B", 100, false}, {"-1", -1, false},
		{"", 0, true}, {"MiB", 0, true}, {"1.5MiB", 0, true}, {"1MB", 0, true}, {"1 K", 0, true},
		{"99999999999999999999", 0, true}, {"9999999999999GiB", 0, true},
	} {
		got, err := parseByteSize(tt.in)
		if (err != nil) != tt.err || got != tt.want {
			t.Errorf("parseByteSize(%q) = %d, %v; want %d (error %v)", tt.in, got, err, tt.want, tt.err)
		}
	}
}

// FuzzParseByteSize: what parses prints as a size that parses to the same
// value.
func FuzzParseByteSize(f *testing.F) {
	for _, s := range []string{"1MiB", "0", "-1", "4096", "3 gib", "12B"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := parseByteSize(s)
		if err != nil {
			return
		}
		b := byteSize(n)
		back, err := parseByteSize(b.String())
		if err != nil || back != n {
			t.Fatalf("%q parses to %d, printed %q, which parses to %d, %v", s, n, b.String(), back, err)
		}
	})
}

// TestServeWarnsOfAnEmptyFile: serve makes a database of an empty file,
// as of a missing one, and says so in a warning.
func TestServeWarnsOfAnEmptyFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "sagad.db")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, path)
	if out := d.output(); !strings.Contains(out, "level=WARN") || !strings.Contains(out, "database file was empty") {
		t.Errorf("no warning of the empty file in the log:\n%s", out)
	}
	if info, err := os.Stat(path); err != nil || info.Size() == 0 {
		t.Errorf("the file after serve: %v, %v; want a database", info, err)
	}
}

// TestServeDataLimits runs sagas whose steps return 2000 bytes each through
// daemons with and without data limits: the flags reach the engine, whose
// limit fails the step whose output is too large.
func TestServeDataLimits(t *testing.T) {
	t.Parallel()
	big := fmt.Sprintf(`{"blob":%q}`, strings.Repeat("x", 1990)) // 2000 bytes
	participant := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, big)
	}))
	t.Cleanup(participant.Close)
	tests := []struct {
		name   string
		args   []string
		status string
		err    string // in the saga's or a step's error
	}{
		{"defaults", nil, "completed", ""},
		{"--max-step-output", []string{"--max-step-output", "1KiB"}, "compensated", "over the limit of 1024"},
		{"--max-saga-data", []string{"--max-saga-data", "3KiB"}, "compensated", "3072"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d := startDaemon(t, filepath.Join(t.TempDir(), "sagad.db"), tt.args...)
			c := d.client(t)
			ctx := context.Background()
			spec := fmt.Sprintf(`{"steps":[{"name":"one","action":{"url":"%[1]s/one"},"compensation":{"url":"%[1]s/undo"}},
				{"name":"two","action":{"url":"%[1]s/two"}}]}`, participant.URL)
			if _, err := c.PutDefinition(ctx, "big", []byte(spec)); err != nil {
				t.Fatal(err)
			}
			res, err := c.Start(ctx, "big", nil, client.StartOptions{Wait: 20 * time.Second})
			if err != nil || res.Saga == nil {
				t.Fatalf("start: %+v, %v\n%s", res, err, d.output())
			}
			s, err := c.Get(ctx, res.ID)
			if err != nil {
				t.Fatal(err)
			}
			errs := s.Error
			for _, st := range s.Steps {
				errs += " " + st.Error
			}
			if s.Status != tt.status || !strings.Contains(errs, tt.err) {
				t.Errorf("saga %s, errors %q; want %s with an error saying %q", s.Status, errs, tt.status, tt.err)
			}
		})
	}
}

// TestRecoverHoldsStepsToTheDataLimits: sagad recover re-runs steps under
// the limits it is given, as the daemon would: a charge whose output (19
// bytes) is over --max-step-output 10 fails, and the saga compensates.
func TestRecoverHoldsStepsToTheDataLimits(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "sagad.db")
	_, id := killedWithChargeInFlight(t, path)
	code, out, errOut := runCmd(t, "recover", "--db", path, "--max-step-output", "10")
	if code != exitOK || !strings.Contains(out, "ended: 1 compensated") {
		t.Fatalf("recover: exit %d, %s %s; want the saga compensated", code, out, errOut)
	}
	code, out, _ = runCmd(t, "sagas", "show", id, "--db", path, "--json")
	if code != exitOK || !strings.Contains(out, "over the limit of 10") {
		t.Errorf("after recover: exit %d, %s; want the charge failed for its output's size", code, out)
	}
}

// A start that fails (its port in use, a definitions directory that does
// not parse) exits non-zero with one line saying why, and leaves no
// database file it created behind.
func TestFailedStartLeavesNoFile(t *testing.T) {
	t.Parallel()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	dir := t.TempDir()
	bad := filepath.Join(dir, "defs")
	if err := os.MkdirAll(bad, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bad, "order.json"), []byte(`{"steps": [`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"port in use", []string{"--listen", busy.Addr().String()}, "address already in use"},
		{"bad definitions", []string{"--listen", "127.0.0.1:0", "--definitions", bad}, "order.json"},
	} {
		path := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "-")+".db")
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), append([]string{"serve", "--db", path}, tt.args...), &stdout, &stderr)
		if code != exitFailed || !strings.Contains(stderr.String(), tt.want) {
			t.Errorf("%s: exit %d, stderr %q; want a failure saying %q", tt.name, code, stderr.String(), tt.want)
		}
		if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: the database file the failed start created is still there (%v)", tt.name, err)
		}
	}
}

// TestLoggerErrorsAreOneLine: an error is logged as its message, in text and
// JSON; its stack traces only at debug level. A duration reads as in the
// API.
func TestLoggerErrorsAreOneLine(t *testing.T) {
	t.Parallel()
	err := errors.Wrap(errors.New("disk full"), "commit")
	tests := []struct {
		level, format string
		stack         bool
	}{
		{"info", "text", false},
		{"warn", "json", false},
		{"error", "text", false},
		{"debug", "text", true},
		{"debug", "json", true},
	}
	for _, tt := range tests {
		t.Run(tt.level+"/"+tt.format, func(t *testing.T) {
			var b strings.Builder
			log, lerr := newLogger(&b, tt.level, tt.format)
			if lerr != nil {
				t.Fatal(lerr)
			}
			log.Error("sagad stopped", "err", err, "count", 3, "after", 1500*time.Millisecond)
			out := b.String()
			if !strings.Contains(out, "commit: disk full") || !strings.Contains(out, "count") {
				t.Errorf("log %q: want the error's message and the other attributes", out)
			}
			if !strings.Contains(out, `after=1.5s`) && !strings.Contains(out, `"after":"1.5s"`) {
				t.Errorf("log %q: want the duration as 1.5s", out)
			}
			if got := strings.Contains(out, "stack trace"); got != tt.stack {
				t.Errorf("log %q: stack trace shown %v, want %v", out, got, tt.stack)
			}
			if !tt.stack && strings.Count(out, "\n") != 1 {
				t.Errorf("log %q: want one line", out)
			}
		})
	}
}
