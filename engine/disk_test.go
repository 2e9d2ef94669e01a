package engine_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/errors"

	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/saga"
)

// mountTmpfs mounts a tmpfs of size bytes for the test and returns its
// directory. It needs root (CI runs as root); elsewhere the test is
// skipped, except under CI, where a skip would hide the test.
func mountTmpfs(t *testing.T, size int) string {
	t.Helper()
	dir := t.TempDir()
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d", size), "tmpfs", dir).CombinedOutput()
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("mount a tmpfs to fill: %v: %s (CI runs as root and must run this test)", err, out)
		}
		t.Skipf("cannot mount a tmpfs to fill (run as root): %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// fill writes a file in dir until the file system is full.
func fill(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 64<<10)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("fill: %v, want ENOSPC", err)
			}
			return path
		}
	}
}

// counter is a slog handler that counts records whose message contains
// its substring and signals the first one.
type counter struct {
	substr string
	n      atomic.Int64
	first  chan struct{}
}

func (c *counter) Enabled(context.Context, slog.Level) bool { return true }
func (c *counter) WithAttrs([]slog.Attr) slog.Handler       { return c }
func (c *counter) WithGroup(string) slog.Handler            { return c }
func (c *counter) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, c.substr) && c.n.Add(1) == 1 {
		close(c.first)
	}
	return nil
}

// A full disk fails commits; the engine must go on by itself once space is
// freed: every saga ends, every waiter is answered, no concurrency slot or
// driver is lost, and a Start while the disk is full answers at once.
func TestFullDiskDoesNotWedge(t *testing.T) {
	t.Parallel()
	dir := mountTmpfs(t, 32<<20)
	const sagas = 40
	gate := make(chan struct{})
	big := json.RawMessage(`"` + strings.Repeat("x", 32<<10) + `"`)
	step := func(name string, wait bool) saga.Step {
		return saga.Step{Name: name, Retry: fastRetry(3), Compensation: noop,
			Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
				if wait {
					<-gate
				}
				return big, nil
			}}
	}
	def := &saga.Definition{Name: "disk", Steps: []saga.Step{step("one", true), step("two", false), step("three", false)}}
	failures := &counter{substr: "not committed", first: make(chan struct{})}
	b := setup(t, setupOpts{path: filepath.Join(dir, "sagad.db"), defs: []*saga.Definition{def},
		opts: engine.Options{Concurrency: 2, Logger: slog.New(failures)}})

	ids := make([]string, sagas)
	for i := range ids {
		st, err := b.eng.Start(context.Background(), "disk", nil)
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = st.ID
	}
	type result struct {
		s   *engine.Saga
		err error
	}
	results := make(chan result, sagas)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, id := range ids {
		go func() {
			s, err := b.eng.Wait(ctx, id)
			results <- result{s, err}
		}()
	}

	filler := fill(t, dir)
	close(gate) // the first outputs arrive on a full disk
	select {
	case <-failures.first:
	case <-time.After(time.Minute):
		t.Fatal("no commit failed on the full disk: the test proves nothing")
	}
	// A Start on the full disk answers (with an error, or the saga if it
	// fit) rather than hanging on a lost slot.
	started := make(chan error, 1)
	go func() {
		_, err := b.eng.Start(context.Background(), "disk", nil, engine.WithIdempotencyKey("while-full"))
		started <- err
	}()
	select {
	case err := <-started:
		t.Logf("start on a full disk: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("Start hung for 10s on a full disk")
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	for range sagas {
		r := <-results
		if r.err != nil {
			t.Fatalf("a waiter was not answered after space was freed: %v", r.err)
		}
		if r.s.Status != saga.StatusCompleted {
			t.Errorf("saga %s ended %s (%v), want completed", r.s.ID, r.s.Status, r.s.Err)
		}
	}
	t.Logf("%d commits failed while the disk was full", failures.n.Load())
	// The slots and drivers are all back: a new saga runs through.
	if s := b.run(t, "disk", nil); s.Status != saga.StatusCompleted {
		t.Errorf("a saga after the disk was freed ended %s", s.Status)
	}
}
