package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/errors"

	"github.com/sagad/sagad/client"
	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage/bolt"
	"github.com/sagad/sagad/transport/httpapi"
)

// recoverCommand implements 'sagad recover'.
type recoverCommand struct {
	stdout, stderr io.Writer
}

func (c *recoverCommand) run(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("recover", flag.ContinueOnError)
	db := fs.String("db", "sagad.db", "database file (env SAGAD_DB)")
	addr := fs.String("addr", "", "a running daemon: wait until its own recovery has run and list what is unfinished (env SAGAD_ADDR)")
	token := fs.String("token", "", "the daemon's bearer token (env SAGAD_TOKEN)")
	timeout := fs.Duration("timeout", 5*time.Minute, "give up waiting for sagas after this long (a saga may wait for a retry)")
	asJSON := fs.Bool("json", false, "print the summary as JSON")
	// The daemon's data limits: steps re-run here must be held to them.
	limits := engine.Options{MaxStepOutput: engine.DefaultMaxStepOutput, MaxSagaData: engine.DefaultMaxSagaData}
	fs.Var((*byteSize)(&limits.MaxStepOutput), "max-step-output",
		"as for sagad serve: largest output of a step attempt, a `SIZE`; negative: no limit (env SAGAD_MAX_STEP_OUTPUT)")
	fs.Var((*byteSize)(&limits.MaxSagaData), "max-saga-data",
		"as for sagad serve: largest data of a saga, a `SIZE`; negative: no limit (env SAGAD_MAX_SAGA_DATA)")
	fs.Usage = func() {
		fmt.Fprint(c.stderr, `Usage: sagad recover [--db FILE] [--timeout 5m] [--json]

Opens the database offline (the daemon must be stopped) and drives every
unfinished saga whose definition is available to an end: forward where it
may, or through compensation, re-running attempts that were in flight at a
crash with their idempotency keys. Declarative definitions are stored in
the file, so the daemon's sagas can be recovered here. Sagas whose
definition is not available stay parked and are listed. A progress bar is
drawn on a terminal; a summary ends the run. Exits 1 if sagas were left
unfinished when the timeout passed, or parked. Give it the daemon's
--max-step-output and --max-saga-data (or the same SAGAD_* variables), so
that the steps it runs are held to the same limits.

A running daemon recovers its sagas itself at start-up: with --addr, recover
waits until the daemon is ready (its recovery has run) and lists the sagas
still unfinished.

Example:
  sagad recover --db /var/lib/sagad/sagad.db
  sagad recover --addr http://127.0.0.1:8080

Flags:
`)
		fs.PrintDefaults()
	}
	if code, ok := parse(fs, args, c.stderr); !ok {
		return code
	}
	if fs.NArg() > 0 || *timeout <= 0 {
		fmt.Fprintln(c.stderr, "sagad recover: --timeout must be positive, and no arguments are taken")
		return exitUsage
	}
	if *addr != "" {
		return c.online(ctx, *addr, *token, *timeout, *asJSON)
	}
	sum, err := c.recover(ctx, *db, *timeout, limits)
	if err != nil {
		return fail(c.stderr, "recover", err)
	}
	if *asJSON {
		printJSON(c.stdout, sum)
	} else {
		sum.print(c.stdout)
	}
	if len(sum.Unfinished) > 0 || len(sum.Parked) > 0 {
		return exitFailed
	}
	return exitOK
}

// recoverSummary is what recover found and did.
type recoverSummary struct {
	// Unfinished counts the sagas that were unfinished at the start.
	Found int `json:"found"`
	// Ended counts them by the status they ended in.
	Ended map[saga.Status]int `json:"ended"`
	// Parked lists sagas whose definition is not available.
	Parked []string `json:"parked"`
	// Unfinished lists sagas still going when the timeout passed.
	Unfinished []string `json:"unfinished"`
	Took       string   `json:"took"`
}

func (s *recoverSummary) print(w io.Writer) {
	var ended []string
	for _, st := range saga.Statuses {
		if n := s.Ended[st]; n > 0 {
			ended = append(ended, fmt.Sprintf("%d %s", n, st))
		}
	}
	if len(ended) == 0 {
		ended = []string{"none"}
	}
	fmt.Fprintf(w, "recover: %d unfinished sagas found; ended: %s; in %s\n", s.Found, strings.Join(ended, ", "), s.Took)
	if len(s.Parked) > 0 {
		fmt.Fprintf(w, "parked (their definition version is not available; register it, then run recover or sagad): %s\n", strings.Join(s.Parked, " "))
	}
	if len(s.Unfinished) > 0 {
		fmt.Fprintf(w, "still unfinished at the timeout (waiting for a retry?): %s\n", strings.Join(s.Unfinished, " "))
	}
	if s.Ended[saga.StatusFailed] > 0 {
		fmt.Fprintln(w, "failed sagas need an operator: sagad sagas list --status failed")
	}
}

// recover drives the file's unfinished sagas to an end, with the data
// limits of limits.
func (c *recoverCommand) recover(ctx context.Context, path string, timeout time.Duration, limits engine.Options) (*recoverSummary, error) {
	start := time.Now()
	var finished atomic.Int64
	changed := make(chan struct{}, 1)
	if err := fileOnly("recover", path, "on PostgreSQL, sagad serve recovers the database's unfinished sagas when it starts"); err != nil {
		return nil, err
	}
	if err := existingDB(path); err != nil {
		return nil, err
	}
	eng, err := openEngine(path, storeOptions{bolt: bolt.Options{LockTimeout: 500 * time.Millisecond}}, engine.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		MaxStepOutput: limits.MaxStepOutput, MaxSagaData: limits.MaxSagaData,
		Hooks: engine.Hooks{SagaStatusChanged: func(c engine.StatusChange) {
			if c.To.Finished() {
				finished.Add(1)
				select {
				case changed <- struct{}{}:
				default:
				}
			}
		}}})
	if err != nil {
		if errors.Is(err, bolt.ErrLocked) {
			return nil, errors.WithHint(err, "a running daemon holds the file and recovers its sagas itself: stop it to recover offline")
		}
		return nil, err
	}
	defer eng.Close()
	// A skipped version's sagas are reported as parked, like any saga whose
	// definition is not available.
	if _, err := httpapi.NewDefinitions(eng, nil).Load(); err != nil && !errors.Is(err, httpapi.ErrDefinitionSkipped) {
		return nil, err
	}
	var ids []string
	for _, st := range []saga.Status{saga.StatusRunning, saga.StatusCompensating} {
		for cursor := ""; ; {
			p, err := eng.List(ctx, engine.ListOptions{Status: st, Cursor: cursor, Limit: 1000})
			if err != nil {
				return nil, err
			}
			for _, s := range p.Sagas {
				ids = append(ids, s.ID)
			}
			if cursor = p.NextCursor; cursor == "" {
				break
			}
		}
	}
	sum := &recoverSummary{Found: len(ids), Ended: map[saga.Status]int{}, Parked: []string{}, Unfinished: []string{}}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- eng.Run(runCtx) }()
	defer func() { stop(); <-done }()
	select {
	case <-eng.Recovered():
	case err := <-done:
		return nil, errors.Wrap(err, "recovery")
	}
	// A saga whose definition version is not available here cannot be
	// driven, whether it is parked already or waits for a retry.
	cannot := map[string]bool{}
	for _, id := range ids {
		s, err := eng.Get(ctx, id)
		if err != nil {
			return nil, err
		}
		if s.Parked != "" || !eng.HasDefinition(s.Definition, s.Fingerprint) {
			cannot[id] = true
		}
	}
	parked := len(cannot)
	want := int64(len(ids) - parked)
	bar := newProgress(c.stderr, int(want))
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
wait:
	for finished.Load() < want {
		bar.set(int(finished.Load()))
		select {
		case <-changed:
		case <-deadline.C:
			break wait
		case <-ctx.Done():
			break wait
		}
	}
	bar.set(int(min(finished.Load(), want)))
	bar.done()
	for _, id := range ids {
		s, err := eng.Get(ctx, id)
		switch {
		case err != nil:
			return nil, err
		case cannot[id]:
			sum.Parked = append(sum.Parked, id)
		case s.Status.Finished():
			sum.Ended[s.Status]++
		default:
			sum.Unfinished = append(sum.Unfinished, id)
		}
	}
	sum.Took = time.Since(start).Round(time.Millisecond).String()
	return sum, nil
}

// progress draws a bar on a terminal and nothing elsewhere.
type progress struct {
	w     io.Writer
	total int
	on    bool
}

func newProgress(w io.Writer, total int) *progress {
	f, ok := w.(*os.File)
	on := false
	if ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			on = true
		}
	}
	return &progress{w: w, total: total, on: on && total > 0}
}

func (p *progress) set(n int) {
	if !p.on {
		return
	}
	const width = 30
	filled := width * n / p.total
	fmt.Fprintf(p.w, "\rrecovering [%s%s] %d/%d sagas", strings.Repeat("#", filled), strings.Repeat(".", width-filled), n, p.total)
}

func (p *progress) done() {
	if p.on {
		fmt.Fprintln(p.w)
	}
}

// online waits for a daemon's own recovery and reports what is unfinished.
func (c *recoverCommand) online(ctx context.Context, addr, token string, timeout time.Duration, asJSON bool) int {
	cl, err := client.New(addr, token, cliHTTPClient())
	if err != nil {
		return fail(c.stderr, "recover", err)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		err := cl.Ready(ctx)
		if err == nil {
			break
		}
		// 503: recovery still runs (the daemon listens while it
		// recovers). No answer at all: nothing listens there, as for every
		// other command. Anything else is an answer that will not change.
		switch code := client.StatusOf(err); {
		case code == 0:
			return fail(c.stderr, "recover", errors.WithHint(err, "nothing answers at "+addr+": is the daemon running, and is --addr right?"))
		case code != http.StatusServiceUnavailable:
			return fail(c.stderr, "recover", err)
		}
		select {
		case <-ctx.Done():
			return fail(c.stderr, "recover", errors.Wrap(err, "the daemon did not become ready"))
		case <-tick.C: // a remote daemon has no signal to wait on
		}
	}
	unfinished := map[string][]string{}
	for _, st := range []string{"running", "compensating"} {
		for cursor := ""; ; {
			p, err := cl.List(ctx, client.ListOptions{Status: st, Cursor: cursor, Limit: 1000})
			if err != nil {
				return fail(c.stderr, "recover", err)
			}
			for _, s := range p.Sagas {
				unfinished[st] = append(unfinished[st], s.ID)
			}
			if cursor = p.NextCursor; cursor == "" {
				break
			}
		}
	}
	if asJSON {
		printJSON(c.stdout, map[string]any{"ready": true, "unfinished": unfinished})
		return exitOK
	}
	fmt.Fprintf(c.stdout, "recover: the daemon is ready (its recovery has run); %d running and %d compensating sagas are being driven\n",
		len(unfinished["running"]), len(unfinished["compensating"]))
	return exitOK
}
