package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/cockroachdb/errors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage/bolt"
	"github.com/sagad/sagad/transport/httpapi"
	"github.com/sagad/sagad/transport/rabbitmq"
	"github.com/sagad/sagad/transport/webui"
)

// serveCommand implements 'sagad serve', the daemon.
type serveCommand struct {
	stdout, stderr io.Writer
	// ready, when set, receives the listening address once the daemon
	// serves (tests use it).
	ready func(addr string)
	// started is set once the daemon serves: a database file it created
	// holds what it did from then on, and stays.
	started atomic.Bool
}

type serveConfig struct {
	db, listen, amqpURL, exchange, token, definitions string
	// replyQueue is where participants answer commands (AMQP steps).
	replyQueue          string
	logLevel, logFormat string
	concurrency         int
	grace               time.Duration
	// retention is engine.Options' Retention: finished sagas (not failed
	// ones) are pruned once they have been finished this long; 0 keeps them.
	retention time.Duration
	// maxConnections caps the API's open connections. Zero: half the
	// open-file limit, at most 4096 (defaultMaxConnections).
	maxConnections int
	// stepLabels gives the step attempt series a step label.
	stepLabels bool
	// maxStepOutput and maxSagaData are engine.Options' MaxStepOutput and
	// MaxSagaData (zero: the engine's defaults; negative: no limit).
	maxStepOutput, maxSagaData byteSize
	// noSync turns fsync off (sagad bench -nosync only; no flag of serve).
	noSync bool
	// node names the process in a PostgreSQL schema's claims.
	node string
	// pprof serves net/http/pprof on the API listener.
	pprof bool
	// ui serves the web UI under /ui/ on the API listener.
	ui bool
}

func (c *serveCommand) flags(fs *flag.FlagSet) *serveConfig {
	cfg := &serveConfig{}
	fs.StringVar(&cfg.db, "db", "sagad.db", "database: a bbolt file, or a postgres:// URL (its schema parameter names the schema, default sagad) (env SAGAD_DB)")
	fs.StringVar(&cfg.node, "node", "", "on PostgreSQL, this process's name in the claims it holds; stable across restarts, it lets a restarted node take its sagas back at once. Never give two running nodes one name. Empty: host, pid and a random suffix (env SAGAD_NODE)")
	fs.StringVar(&cfg.listen, "listen", "127.0.0.1:8080", "HTTP listen address (env SAGAD_LISTEN)")
	fs.StringVar(&cfg.amqpURL, "amqp-url", "", "RabbitMQ URL; turns the outbox relay on (env SAGAD_AMQP_URL)")
	fs.StringVar(&cfg.exchange, "exchange", "sagad.events", "exchange for events that name none (env SAGAD_EXCHANGE)")
	fs.StringVar(&cfg.replyQueue, "reply-queue", "sagad.replies", "durable queue participants of AMQP steps reply to; with --amqp-url, sagad consumes it (env SAGAD_REPLY_QUEUE)")
	fs.StringVar(&cfg.token, "token", "", "bearer token required by the API, without whitespace (env SAGAD_TOKEN)")
	fs.StringVar(&cfg.definitions, "definitions", "", "directory of definition files NAME.json to register at start (env SAGAD_DEFINITIONS)")
	fs.IntVar(&cfg.concurrency, "concurrency", 1024, "sagas running steps at once (env SAGAD_CONCURRENCY)")
	fs.StringVar(&cfg.logLevel, "log-level", "info", "debug, info, warn or error (env SAGAD_LOG_LEVEL)")
	fs.StringVar(&cfg.logFormat, "log-format", "text", "text or json (env SAGAD_LOG_FORMAT)")
	fs.DurationVar(&cfg.grace, "shutdown-grace", 10*time.Second, "how long running attempts may finish at shutdown (env SAGAD_SHUTDOWN_GRACE)")
	fs.BoolVar(&cfg.ui, "ui", true, "serve the web UI under /ui/ on the API listener; it calls the API, with the token when there is one (env SAGAD_UI)")
	fs.BoolVar(&cfg.pprof, "pprof", false, "serve net/http/pprof under /debug/pprof/ on the API listener, behind the token (env SAGAD_PPROF)")
	fs.DurationVar(&cfg.retention, "retention", 0, "prune completed, compensated and resolved sagas finished this long ago, such as 720h; failed ones stay until resolved; 0 keeps everything (env SAGAD_RETENTION)")
	fs.IntVar(&cfg.maxConnections, "max-connections", defaultMaxConnections(),
		"API connections open at once, more wait; the default is half the open-file limit, at most 4096 (env SAGAD_MAX_CONNECTIONS)")
	fs.BoolVar(&cfg.stepLabels, "metrics-step-labels", false,
		"give the step attempt series of /metrics a step label, for the steps of registered definitions only (env SAGAD_METRICS_STEP_LABELS)")
	cfg.maxStepOutput, cfg.maxSagaData = engine.DefaultMaxStepOutput, engine.DefaultMaxSagaData
	fs.Var(&cfg.maxStepOutput, "max-step-output",
		"largest output of a step attempt, a `SIZE` in bytes or with KiB, MiB or GiB; negative: no limit (env SAGAD_MAX_STEP_OUTPUT)")
	fs.Var(&cfg.maxSagaData, "max-saga-data",
		"largest data of a saga, its steps' outputs together, a `SIZE` as for --max-step-output; negative: no limit (env SAGAD_MAX_SAGA_DATA)")
	return cfg
}

// engineOptions are the engine's options of the configuration.
func (cfg *serveConfig) engineOptions(log *slog.Logger, hooks engine.Hooks) engine.Options {
	return engine.Options{Concurrency: cfg.concurrency, Logger: log, ShutdownGrace: cfg.grace, Hooks: hooks,
		MaxStepOutput: int(cfg.maxStepOutput), MaxSagaData: int(cfg.maxSagaData), Retention: cfg.retention}
}

func (c *serveCommand) run(ctx context.Context, args []string) int {
	cfg, code, ok := c.parse(args)
	if !ok {
		return code
	}
	log, err := newLogger(c.stderr, cfg.logLevel, cfg.logFormat)
	if err != nil {
		fmt.Fprintf(c.stderr, "sagad serve: %v\n", err)
		return exitUsage
	}
	// A database file this start creates is removed if the start fails
	// (a port in use, a bad definitions file): a failed start leaves
	// nothing behind.
	_, statErr := os.Stat(cfg.db)
	created := !isPostgres(cfg.db) && errors.Is(statErr, os.ErrNotExist)
	if err := c.serve(ctx, cfg, log); err != nil {
		if created && !c.started.Load() {
			_ = os.Remove(cfg.db)
		}
		log.Error("sagad stopped", "err", err)
		if h := errors.FlattenHints(err); h != "" {
			fmt.Fprintf(c.stderr, "hint: %s\n", h)
		}
		return exitFailed
	}
	return exitOK
}

// parse parses and checks serve's flags and their environment; when it
// returns false, it has printed why and the exit code is code.
func (c *serveCommand) parse(args []string) (cfg *serveConfig, code int, ok bool) {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	cfg = c.flags(fs)
	fs.Usage = func() {
		fmt.Fprint(c.stderr, `Usage: sagad [serve] [flags]

Runs the sagad daemon: the saga engine on a bbolt file, its HTTP API, and
(with --amqp-url) the outbox relay to RabbitMQ. Without a broker, events
wait in the outbox and show as pending in /metrics and /v1/outbox/stats.
SIGINT or SIGTERM shut it down gracefully: it stops accepting requests,
gives running attempts --shutdown-grace, and leaves the rest to recovery
at the next start.

The database file is created if it is missing, or made a database if it
is empty (with a warning: it may be a copy that failed).

Tracing: with OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_TRACES_EXPORTER=otlp)
set, every saga is a trace, exported over OTLP/HTTP; the standard OTEL_*
variables configure it (OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER, ...).

Limits:
  --max-connections caps the API's open connections. Further clients wait
  in the listen backlog, holding none of the daemon's file descriptors,
  which stay for participant calls and the database; the daemon warns once
  when the cap is reached, and says when it is clear again.
  --max-step-output fails a step attempt with a larger output for good
  (the saga compensates); --max-saga-data does the same for an output that
  would take the saga's data, its steps' outputs together, past it.
  /metrics counts step attempts by definition, phase and outcome, some 70
  series per definition. --metrics-step-labels adds a step label: some 70
  series per step, for the steps of the latest version of each registered
  definition (up to 100 each); other steps' attempts, those of sagas still
  on an older version, are counted with an empty step label, and a step a
  new version drops loses its series.

Example:
  sagad serve --db /var/lib/sagad/sagad.db --listen 127.0.0.1:8080 --definitions ./definitions

Flags:
`)
		fs.PrintDefaults()
	}
	if code, ok := parse(fs, args, c.stderr); !ok {
		return nil, code, false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(c.stderr, "sagad serve: unexpected argument %q\n", fs.Arg(0))
		return nil, exitUsage, false
	}
	// The address is checked first: a malformed one is not "open".
	if _, _, err := net.SplitHostPort(cfg.listen); err != nil {
		fmt.Fprintf(c.stderr, "sagad serve: --listen %q: %v\n"+
			"Give a host and a port, such as 127.0.0.1:8080 (or :8080 for every interface).\n", cfg.listen, errors.UnwrapAll(err))
		return nil, exitUsage, false
	}
	if err := checkToken(cfg.token); err != nil {
		fmt.Fprintf(c.stderr, "sagad serve: %v\n", err)
		if h := errors.FlattenHints(err); h != "" {
			fmt.Fprintf(c.stderr, "hint: %s\n", h)
		}
		return nil, exitUsage, false
	}
	if cfg.token == "" && !loopback(cfg.listen) {
		fmt.Fprintf(c.stderr, "sagad serve: refusing to listen on %s without a token: anyone who can reach it could start and abort sagas.\n"+
			"Set --token (or SAGAD_TOKEN), or listen on a loopback address such as 127.0.0.1:8080.\n", cfg.listen)
		return nil, exitUsage, false
	}
	if cfg.maxConnections < 1 {
		fmt.Fprintf(c.stderr, "sagad serve: --max-connections %d: want at least 1\n", cfg.maxConnections)
		return nil, exitUsage, false
	}
	if cfg.retention < 0 {
		fmt.Fprintf(c.stderr, "sagad serve: --retention %s: want a duration of 0 (keep everything) or more\n", cfg.retention)
		return nil, exitUsage, false
	}
	return cfg, exitOK, true
}

// checkToken refuses a token with whitespace or control characters. The
// API trims the token a client sends, so one with surrounding whitespace
// (a newline from a file, a space from a paste) could never match; inner
// whitespace is refused too, as a token no generator makes and no
// Authorization header carries safely.
func checkToken(token string) error {
	bad := func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }
	i := strings.IndexFunc(token, bad)
	if i < 0 {
		return nil
	}
	_, size := utf8.DecodeRuneInString(token[i:])
	where := "inside it"
	switch {
	case i == 0:
		where = "at its start"
	case strings.TrimLeftFunc(token[i:], bad) == "":
		where = "at its end"
	}
	return errors.WithHint(errors.Newf("the API token (--token or SAGAD_TOKEN) has whitespace or a control character %s (%q at byte %d): "+
		"no client could authenticate with it", where, token[i:i+size], i),
		"set the token without spaces or newlines, such as the output of 'openssl rand -hex 32'")
}

func (c *serveCommand) serve(ctx context.Context, cfg *serveConfig, log *slog.Logger) error {
	m := newMetrics(cfg.stepLabels)
	// An empty file is made a database, as a missing one is (an installer
	// may create it with the daemon's owner and mode), but loudly: it may
	// also be a restore that failed.
	empty := false
	if info, err := os.Stat(cfg.db); !isPostgres(cfg.db) && err == nil && info.Mode().IsRegular() && info.Size() == 0 {
		empty = true
	}
	tp, err := newTracerProvider(ctx)
	if err != nil {
		return err
	}
	if tp != nil {
		setGlobalTracing(tp)
		log.Info("tracing sagas with OpenTelemetry (OTLP/HTTP)", "endpoint", otlpEndpoint())
		defer func() {
			// After the engine's Close (deferred below), which ends the
			// spans of the sagas that go on after a restart.
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := tp.Shutdown(sctx); err != nil {
				log.Warn("opentelemetry: spans not exported at shutdown", "err", err)
			}
		}()
	}
	eo := cfg.engineOptions(log, m.engineHooks())
	if tp != nil {
		eo.TracerProvider = tp
	}
	eng, err := openEngine(cfg.db, storeOptions{bolt: bolt.Options{NoSync: cfg.noSync}, node: cfg.node}, eo)
	if err != nil {
		return err
	}
	defer eng.Close()
	if empty {
		log.Warn("the database file was empty (0 bytes): it now holds a new, empty database", "db", cfg.db,
			"hint", "if it was meant to be a copy or a restored backup, stop the daemon and copy it again")
	}
	defs := httpapi.NewDefinitions(eng, participantClient(cfg.concurrency))
	n, err := defs.Load()
	switch {
	case errors.Is(err, httpapi.ErrDefinitionSkipped):
		log.Error("stored definition versions that cannot be registered were skipped", "err", err.Error())
	case err != nil:
		return err
	}
	if cfg.definitions != "" {
		k, err := defs.LoadDir(cfg.definitions)
		if err != nil {
			return err
		}
		log.Info("definitions loaded from directory", "dir", cfg.definitions, "count", k)
	}
	log.Info("stored definitions registered", "versions", n)
	if eng.Store().SagaWake() != nil {
		// Other nodes share the store: what they put, this one registers
		// too, before it drives a saga of it.
		syncCtx, stopSync := context.WithCancel(ctx)
		defer stopSync()
		go syncDefinitions(syncCtx, defs, log)
	}

	var relay *rabbitmq.Relay
	var replies *rabbitmq.Replies
	if cfg.amqpURL != "" {
		rcfg := rabbitmq.Config{URL: cfg.amqpURL, Exchange: cfg.exchange, ReplyQueue: cfg.replyQueue, Completer: eng,
			Logger: log, Hooks: m.replyHooks(m.relayHooks())}
		if relay, err = rabbitmq.New(eng.Store(), rcfg); err != nil {
			return err
		}
		if replies, err = rabbitmq.NewReplies(rcfg); err != nil {
			return err
		}
	}
	if relay == nil {
		for _, def := range eng.Definitions() {
			if slices.ContainsFunc(def.Steps, func(st saga.Step) bool { return st.Commands.Any() }) {
				log.Warn("a definition has steps over AMQP and sagad runs without --amqp-url: their commands wait in the outbox, and their attempts time out",
					"definition", def.Name)
			}
		}
	}
	m.watch(eng, relay)

	api, err := httpapi.New(httpapi.Config{Engine: eng, Definitions: defs, Token: cfg.token, Logger: log, Pprof: cfg.pprof,
		Metrics: promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}),
		Ready: func() error {
			select {
			case <-eng.Recovered():
				return nil
			default:
				return errors.New("recovery is still running")
			}
		}})
	if err != nil {
		return err
	}
	tcp, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return errors.Wrapf(err, "sagad: listen on %s", cfg.listen)
	}
	maxConns := cfg.maxConnections
	if maxConns <= 0 {
		maxConns = defaultMaxConnections()
	}
	if limit := openFileLimit(); limit > 0 && uint64(maxConns) >= limit {
		log.Warn("--max-connections is not below the open-file limit: a flood of API clients can still starve participant calls",
			"max_connections", maxConns, "open_file_limit", limit)
	}
	ln := newLimitListener(tcp, maxConns, log)
	// Requests' contexts end when shutdown begins, so that a start waiting
	// for its saga answers 202 with the id at once instead of being cut off.
	reqCtx, endRequests := context.WithCancel(context.Background())
	defer endRequests()
	var handler http.Handler = api
	if cfg.ui {
		mux := http.NewServeMux()
		mux.Handle("/ui/", webui.Handler()) // ServeMux redirects /ui to /ui/
		mux.Handle("/", api)
		handler = mux
	}
	srv := &http.Server{Handler: handler, BaseContext: func(net.Listener) context.Context { return reqCtx },
		ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 30 * time.Second,
		WriteTimeout: 90 * time.Second, IdleTimeout: 120 * time.Second, MaxHeaderBytes: 64 << 10,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}

	runCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := eng.Run(runCtx); err != nil {
			errs <- errors.Wrap(err, "sagad: engine")
		}
	}()
	if relay != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := relay.Run(runCtx); err != nil {
				errs <- errors.Wrap(err, "sagad: relay")
			}
		}()
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := replies.Run(runCtx); err != nil {
				errs <- errors.Wrap(err, "sagad: replies")
			}
		}()
	}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errs <- errors.Wrap(err, "sagad: serve HTTP")
		}
	}()
	c.started.Store(true)
	log.Info("sagad serving", "addr", ln.Addr().String(), "db", cfg.db, "relay", relay != nil, "auth", cfg.token != "", "ui", cfg.ui,
		"max_connections", maxConns)
	var failed error
	select {
	case <-eng.Recovered():
		log.Info("sagad ready", "addr", ln.Addr().String())
		if c.ready != nil {
			c.ready(ln.Addr().String())
		}
	case <-ctx.Done():
	case failed = <-errs:
	}
	if failed == nil {
		select {
		case <-ctx.Done():
			log.Info("shutting down: no new requests; running attempts get the shutdown grace")
		case failed = <-errs:
		}
	}
	// Stop accepting requests, let those in progress finish (a waiting
	// start gives up its wait), then stop the engine and the relay.
	endRequests()
	shutCtx, shutCancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer shutCancel()
	if err := srv.Shutdown(shutCtx); err != nil {
		_ = srv.Close()
	}
	cancel()
	wg.Wait()
	return failed
}

// loopback reports whether a listen address only accepts local clients.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, errors.Newf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv, ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
		// A duration reads as in the API ("1.5s"), in JSON too (where
		// slog would write nanoseconds).
		if a.Value.Kind() == slog.KindDuration {
			return slog.String(a.Key, a.Value.Duration().String())
		}
		// An error is one line, its message; its stack traces and
		// wrapping chain (%+v) only when debugging.
		if err, ok := a.Value.Any().(error); ok && a.Value.Kind() == slog.KindAny {
			if lv <= slog.LevelDebug {
				return slog.String(a.Key, fmt.Sprintf("%+v", err))
			}
			return slog.String(a.Key, err.Error())
		}
		return a
	}}
	switch strings.ToLower(format) {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, errors.Newf("--log-format %q: want text or json", format)
}

// participantClient is the HTTP client of the daemon's HTTP steps. It keeps
// as many idle connections per participant as sagas may call it at once:
// with fewer, every burst closes and re-dials connections.
func participantClient(concurrency int) *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			ForceAttemptHTTP2:     true,
			MaxIdleConns:          max(concurrency, 256),
			MaxIdleConnsPerHost:   max(concurrency, 256),
			IdleConnTimeout:       90 * time.Second,
			TLSHandshakeTimeout:   10 * time.Second,
			ExpectContinueTimeout: time.Second,
		},
		// A redirect can turn a POST into a GET without its body: the
		// participant's URL must be the final one.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// definitionSync is how often a node on a shared store registers the
// definitions other nodes stored.
const definitionSync = time.Second

// syncDefinitions registers, every definitionSync until ctx ends, the
// definition versions other nodes stored.
func syncDefinitions(ctx context.Context, defs *httpapi.Definitions, log *slog.Logger) {
	tick := time.NewTicker(definitionSync)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if _, err := defs.Load(); err != nil && !errors.Is(err, httpapi.ErrDefinitionSkipped) {
			log.Warn("stored definitions not read; trying again", "err", err)
		}
	}
}
