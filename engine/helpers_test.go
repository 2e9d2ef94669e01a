package engine_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/internal/pgtest"
	"github.com/sagad/sagad/recovery"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
	"github.com/sagad/sagad/storage/bolt"
	"github.com/sagad/sagad/storage/postgres"
)

// bundle is a per-test engine on a temporary file, running until the test
// ends, when the file is closed and checked for consistency.
type bundle struct {
	eng    *engine.Engine
	path   string
	ctx    context.Context
	cancel context.CancelFunc
}

type setupOpts struct {
	opts engine.Options
	// store configures the bbolt file (NoSync and the engine's clock are
	// set).
	store bolt.Options
	defs  []*saga.Definition
	noRun bool
	path  string
}

func setup(t *testing.T, so setupOpts) *bundle {
	t.Helper()
	path := so.path
	if path == "" {
		path = filepath.Join(t.TempDir(), "sagad.db")
	}
	eng := openStore(t, path, so.store, so.opts, so.defs...)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	if !so.noRun {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := eng.Run(ctx); err != nil {
				t.Errorf("run: %v", err)
			}
		}()
	}
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		if err := eng.Close(); err != nil {
			t.Errorf("close engine: %v", err)
		}
		if isPostgres(path) {
			return
		}
		if err := recovery.CheckFile(path); err != nil {
			t.Errorf("consistency check after test: %v", err)
		}
	})
	return &bundle{eng: eng, path: path, ctx: ctx}
}

// run starts a saga and waits for it to finish.
func (b *bundle) run(t *testing.T, def string, input any, opts ...engine.StartOption) *engine.Saga {
	t.Helper()
	st, err := b.eng.Start(context.Background(), def, input, opts...)
	if err != nil {
		t.Fatalf("start %s: %v", def, err)
	}
	return b.wait(t, st.ID)
}

func (b *bundle) wait(t *testing.T, id string) *engine.Saga {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := b.eng.Wait(ctx, id)
	if err != nil {
		t.Fatalf("wait for saga %s: %v", id, err)
	}
	return s
}

// recorder records the order of step calls.
type recorder struct {
	mu    sync.Mutex
	calls []string
	keys  map[string][]string
}

func (r *recorder) add(name string, c *saga.Call) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, name)
	if r.keys == nil {
		r.keys = map[string][]string{}
	}
	r.keys[name] = append(r.keys[name], c.IdempotencyKey)
}

func (r *recorder) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.calls...)
}

// ok returns a step function that records its call and succeeds with out.
func (r *recorder) ok(name string, out any) saga.Func {
	return func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
		r.add(name, c)
		if out == nil {
			return nil, nil
		}
		return json.Marshal(out)
	}
}

// fail returns a step function that records its call and fails with err.
func (r *recorder) fail(name string, err error) saga.Func {
	return func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
		r.add(name, c)
		return nil, err
	}
}

// fastRetry is a retry policy for tests: n attempts, 1ms apart, no jitter.
func fastRetry(n int) saga.RetryPolicy {
	return saga.RetryPolicy{MaxAttempts: n, InitialInterval: time.Millisecond, MaxInterval: time.Millisecond, Jitter: -1}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// setupNoCleanup opens an engine on path, registers def, runs it if run is
// set, and does not close it at the end: the test closes it (b.close) and
// reopens the file.
func setupNoCleanup(t *testing.T, path string, def *saga.Definition, run bool, hooks ...engine.Hooks) *bundle {
	t.Helper()
	var o engine.Options
	if len(hooks) > 0 {
		o.Hooks = hooks[0]
	}
	eng := openEngine(t, path, o, def)
	ctx, cancel := context.WithCancel(context.Background())
	b := &bundle{eng: eng, path: path, ctx: ctx, cancel: cancel}
	if run {
		go func() { _ = eng.Run(ctx) }()
	}
	return b
}

// openEngine opens an engine on path with the tests' defaults (a discarding
// logger unless o has one; no fsync: tests check logic, crash tests sync)
// and registers defs.
func openEngine(t *testing.T, path string, o engine.Options, defs ...*saga.Definition) *engine.Engine {
	t.Helper()
	return openStore(t, path, bolt.Options{}, o, defs...)
}

// openStore opens an engine on the bbolt file at path with the options bo
// (made NoSync, on the engine's clock), or on the PostgreSQL database when
// path is a postgres:// URL (bo is then not used).
func openStore(t *testing.T, path string, bo bolt.Options, o engine.Options, defs ...*saga.Definition) *engine.Engine {
	t.Helper()
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	bo.NoSync = true
	if bo.Clock == nil {
		bo.Clock = o.Clock
	}
	var db storage.Store
	var err error
	if isPostgres(path) {
		db, err = postgres.Open(context.Background(), path, &postgres.Options{Clock: o.Clock, Logger: o.Logger, MaxConns: 4})
	} else {
		db, err = bolt.Open(path, &bo)
	}
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	eng, err := engine.New(db, o)
	if err != nil {
		_ = db.Close()
		t.Fatalf("open engine: %v", err)
	}
	for _, d := range defs {
		if err := eng.Register(d); err != nil {
			t.Fatalf("register %s: %v", d.Name, err)
		}
	}
	return eng
}

// runEngine runs eng until stop, which cancels Run, waits for it and
// closes the engine.
func runEngine(t *testing.T, eng *engine.Engine) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- eng.Run(ctx) }()
	return func() {
		t.Helper()
		cancel()
		if err := <-runDone; err != nil {
			t.Fatalf("run: %v", err)
		}
		if err := eng.Close(); err != nil {
			t.Fatalf("close: %v", err)
		}
	}
}

func (b *bundle) close(t *testing.T) {
	t.Helper()
	if b.cancel != nil {
		b.cancel()
	}
	if err := b.eng.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
}

// onRetry returns hooks that signal ch each time a failed attempt's retry
// is committed (a saga then waits for its next attempt).
func onRetry(ch chan<- struct{}) engine.Hooks {
	return engine.Hooks{AttemptFinished: func(a engine.AttemptInfo) {
		if a.Retry {
			ch <- struct{}{}
		}
	}}
}

// isPostgres reports whether a test's database is a PostgreSQL URL rather
// than a bbolt file.
func isPostgres(path string) bool { return strings.HasPrefix(path, "postgres://") }

// postgresURL returns a URL of the test PostgreSQL with a schema of its own
// (dropped when the test ends), or skips the test as pgtest.URL does.
func postgresURL(t *testing.T) string {
	t.Helper()
	url := pgtest.URL(t)
	return postgres.WithSchema(url, pgtest.Schema(t, url))
}
