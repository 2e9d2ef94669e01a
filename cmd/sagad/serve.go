package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/cockroachdb/errors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/storage"
	"github.com/sagad/sagad/transport/httpapi"
	"github.com/sagad/sagad/transport/rabbitmq"
)

// serveCommand implements 'sagad serve', the daemon.
type serveCommand struct {
	stdout, stderr io.Writer
	// ready, when set, receives the listening address once the daemon
	// serves (tests use it).
	ready func(addr string)
}

type serveConfig struct {
	db, listen, amqpURL, exchange, token, definitions string
	logLevel, logFormat                               string
	concurrency                                       int
	grace                                             time.Duration
	// noSync turns fsync off (sagad bench -nosync only; no flag of serve).
	noSync bool
}

func (c *serveCommand) flags(fs *flag.FlagSet) *serveConfig {
	cfg := &serveConfig{}
	fs.StringVar(&cfg.db, "db", "sagad.db", "database file (env SAGAD_DB)")
	fs.StringVar(&cfg.listen, "listen", "127.0.0.1:8080", "HTTP listen address (env SAGAD_LISTEN)")
	fs.StringVar(&cfg.amqpURL, "amqp-url", "", "RabbitMQ URL; turns the outbox relay on (env SAGAD_AMQP_URL)")
	fs.StringVar(&cfg.exchange, "exchange", "sagad.events", "exchange for events that name none (env SAGAD_EXCHANGE)")
	fs.StringVar(&cfg.token, "token", "", "bearer token required by the API (env SAGAD_TOKEN)")
	fs.StringVar(&cfg.definitions, "definitions", "", "directory of definition files NAME.json to register at start (env SAGAD_DEFINITIONS)")
	fs.IntVar(&cfg.concurrency, "concurrency", 1024, "sagas running steps at once (env SAGAD_CONCURRENCY)")
	fs.StringVar(&cfg.logLevel, "log-level", "info", "debug, info, warn or error (env SAGAD_LOG_LEVEL)")
	fs.StringVar(&cfg.logFormat, "log-format", "text", "text or json (env SAGAD_LOG_FORMAT)")
	fs.DurationVar(&cfg.grace, "shutdown-grace", 10*time.Second, "how long running attempts may finish at shutdown (env SAGAD_SHUTDOWN_GRACE)")
	return cfg
}

func (c *serveCommand) run(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	cfg := c.flags(fs)
	fs.Usage = func() {
		fmt.Fprint(c.stderr, `Usage: sagad [serve] [flags]

Runs the sagad daemon: the saga engine on a bbolt file, its HTTP API, and
(with --amqp-url) the outbox relay to RabbitMQ. Without a broker, events
wait in the outbox and show as pending in /metrics and /v1/outbox/stats.
SIGINT or SIGTERM shut it down gracefully: it stops accepting requests,
gives running attempts --shutdown-grace, and leaves the rest to recovery
at the next start.

Example:
  sagad serve --db /var/lib/sagad/sagad.db --listen 127.0.0.1:8080 --definitions ./definitions

Flags:
`)
		fs.PrintDefaults()
	}
	if code, ok := parse(fs, args, c.stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(c.stderr, "sagad serve: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	log, err := newLogger(c.stderr, cfg.logLevel, cfg.logFormat)
	if err != nil {
		fmt.Fprintf(c.stderr, "sagad serve: %v\n", err)
		return exitUsage
	}
	if cfg.token == "" && !loopback(cfg.listen) {
		fmt.Fprintf(c.stderr, "sagad serve: refusing to listen on %s without a token: anyone who can reach it could start and abort sagas.\n"+
			"Set --token (or SAGAD_TOKEN), or listen on a loopback address such as 127.0.0.1:8080.\n", cfg.listen)
		return exitUsage
	}
	if err := c.serve(ctx, cfg, log); err != nil {
		log.Error("sagad stopped", "err", err)
		if h := errors.FlattenHints(err); h != "" {
			fmt.Fprintf(c.stderr, "hint: %s\n", h)
		}
		return exitFailed
	}
	return exitOK
}

func (c *serveCommand) serve(ctx context.Context, cfg *serveConfig, log *slog.Logger) error {
	m := newMetrics()
	eng, err := engine.Open(cfg.db, engine.Options{Concurrency: cfg.concurrency, Logger: log, ShutdownGrace: cfg.grace,
		Hooks: m.engineHooks(), Storage: storage.Options{NoSync: cfg.noSync}})
	if err != nil {
		return err
	}
	defer eng.Close()
	defs := httpapi.NewDefinitions(eng, participantClient(cfg.concurrency))
	n, err := defs.Load()
	if err != nil {
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

	var relay *rabbitmq.Relay
	if cfg.amqpURL != "" {
		relay, err = rabbitmq.New(eng.DB(), rabbitmq.Config{URL: cfg.amqpURL, Exchange: cfg.exchange, Logger: log, Hooks: m.relayHooks()})
		if err != nil {
			return err
		}
	}
	m.watch(eng, relay)

	api, err := httpapi.New(httpapi.Config{Engine: eng, Definitions: defs, Token: cfg.token, Logger: log,
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
	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return errors.Wrapf(err, "sagad: listen on %s", cfg.listen)
	}
	// Requests' contexts end when shutdown begins, so that a start waiting
	// for its saga answers 202 with the id at once instead of being cut off.
	reqCtx, endRequests := context.WithCancel(context.Background())
	defer endRequests()
	srv := &http.Server{Handler: api, BaseContext: func(net.Listener) context.Context { return reqCtx },
		ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 30 * time.Second,
		WriteTimeout: 90 * time.Second, IdleTimeout: 120 * time.Second, MaxHeaderBytes: 64 << 10,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}

	runCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 3)
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
	}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errs <- errors.Wrap(err, "sagad: serve HTTP")
		}
	}()
	log.Info("sagad serving", "addr", ln.Addr().String(), "db", cfg.db, "relay", relay != nil, "auth", cfg.token != "")
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
	opts := &slog.HandlerOptions{Level: lv}
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
