package rabbitmq_test

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/recovery"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
	"github.com/sagad/sagad/transport/rabbitmq"
)

// bundle is an engine and a relay on a temporary file, running until the
// test ends; the file is then checked for consistency.
type bundle struct {
	eng       *engine.Engine
	relay     *rabbitmq.Relay
	replies   *rabbitmq.Replies
	path      string
	published chan struct{} // a value after each batch of produced marks
	stop      func()
}

type setupOpts struct {
	path    string
	cfg     rabbitmq.Config
	noRelay bool
	// replies runs a reply consumer with cfg beside the relay.
	replies bool
	defs    []*saga.Definition
	// outbox, when set, is what the relay reads the store through.
	outbox func(storage.Store) storage.OutboxStore
	// engine is the engine's options (its Logger is set when nil).
	engine engine.Options
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func setup(t *testing.T, so setupOpts) *bundle {
	t.Helper()
	if so.path == "" {
		so.path = filepath.Join(t.TempDir(), "sagad.db")
	}
	eo := so.engine
	if eo.Logger == nil {
		eo.Logger = quietLogger()
	}
	eng, err := engine.Open(so.path, eo)
	if err != nil {
		t.Fatalf("open engine: %v", err)
	}
	for _, d := range so.defs {
		if err := eng.Register(d); err != nil {
			t.Fatalf("register %s: %v", d.Name, err)
		}
	}
	b := &bundle{eng: eng, path: so.path, published: make(chan struct{}, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := eng.Run(ctx); err != nil {
			t.Errorf("engine run: %v", err)
		}
	}()
	if !so.noRelay {
		cfg := so.cfg
		if cfg.Logger == nil {
			cfg.Logger = quietLogger()
		}
		user := cfg.Hooks.Published
		cfg.Hooks.Published = func(n int) {
			if user != nil {
				user(n)
			}
			select {
			case b.published <- struct{}{}:
			default:
			}
		}
		if cfg.Completer == nil {
			cfg.Completer = eng
		}
		var store storage.OutboxStore = eng.Store()
		if so.outbox != nil {
			store = so.outbox(eng.Store())
		}
		b.relay, err = rabbitmq.New(store, cfg)
		if err != nil {
			t.Fatalf("new relay: %v", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := b.relay.Run(ctx); err != nil {
				t.Errorf("relay run: %v", err)
			}
		}()
		if so.replies {
			b.replies, err = rabbitmq.NewReplies(cfg)
			if err != nil {
				t.Fatalf("new replies: %v", err)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := b.replies.Run(ctx); err != nil {
					t.Errorf("replies run: %v", err)
				}
			}()
		}
	}
	var once sync.Once
	b.stop = func() {
		once.Do(func() {
			cancel()
			wg.Wait()
			if err := eng.Close(); err != nil {
				t.Errorf("close engine: %v", err)
			}
			if err := recovery.CheckFile(so.path); err != nil {
				t.Errorf("consistency check after test: %v", err)
			}
		})
	}
	t.Cleanup(b.stop)
	return b
}

// run starts a saga and waits for it to end.
func (b *bundle) run(t *testing.T, def string, input any) *engine.Saga {
	t.Helper()
	st, err := b.eng.Start(context.Background(), def, input)
	if err != nil {
		t.Fatalf("start %s: %v", def, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := b.eng.Wait(ctx, st.ID)
	if err != nil {
		got, _ := b.eng.Get(context.Background(), st.ID)
		log, _ := b.eng.Log(context.Background(), st.ID)
		t.Fatalf("wait %s: %v\nsaga: %+v\nlog: %+v", st.ID, err, got, log)
	}
	return s
}

// drained waits until the outbox holds no new event.
func (b *bundle) drained(t *testing.T, timeout time.Duration) {
	t.Helper()
	b.waitOutbox(t, timeout, "no new event", func(st engine.OutboxStats) bool { return st.Counts.New == 0 })
}

// waitOutbox waits until cond holds for the outbox's stats, looking again
// after each batch of produced marks.
func (b *bundle) waitOutbox(t *testing.T, timeout time.Duration, what string, cond func(engine.OutboxStats) bool) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		st, err := b.eng.OutboxStats(context.Background())
		if err != nil {
			t.Fatalf("outbox stats: %v", err)
		}
		if cond(st) {
			return
		}
		select {
		case <-b.published:
		case <-deadline:
			t.Fatalf("outbox: %s not reached after %s: %+v, relay %+v", what, timeout, st.Counts, b.relay.Stats())
		}
	}
}

// logRecorder is a slog handler that keeps every record, for tests that
// assert on what the relay logs.
type logRecorder struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *logRecorder) WithGroup(string) slog.Handler            { return l }
func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recs = append(l.recs, r.Clone())
	return nil
}

// lines returns the records whose message starts with prefix, each as its
// level and its attributes.
func (l *logRecorder) lines(prefix string) []logLine {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []logLine
	for _, r := range l.recs {
		if !strings.HasPrefix(r.Message, prefix) {
			continue
		}
		ln := logLine{level: r.Level, attrs: map[string]string{}}
		r.Attrs(func(a slog.Attr) bool {
			ln.attrs[a.Key] = a.Value.String()
			return true
		})
		out = append(out, ln)
	}
	return out
}

type logLine struct {
	level slog.Level
	attrs map[string]string
}
