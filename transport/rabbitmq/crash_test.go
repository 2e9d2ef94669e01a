package rabbitmq_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/internal/brokertest"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
	"github.com/sagad/sagad/transport/rabbitmq"
)

const (
	relayCrashEnv = "SAGAD_RELAY_CRASH_CHILD"
	crashSagas    = 200
	crashSteps    = 5
)

// The process dies (SIGKILL) while the relay is publishing: events acked by
// the broker may not be marked produced yet. After a restart on the same
// file every event arrives at least once, duplicates carry the id of the
// first delivery, and each saga's events still arrive in order once
// duplicates are dropped.
func TestRelayCrash(t *testing.T) {
	t.Parallel()
	brokerURL := brokertest.URL(t)
	exchange := brokertest.Name("test.crash")
	sink := brokertest.NewSink(t, brokerURL, exchange, "#")
	path := filepath.Join(t.TempDir(), "sagad.db")

	cmd := exec.Command(os.Args[0], "-test.run", "^TestRelayCrashChild$", "-test.v")
	cmd.Env = append(os.Environ(), relayCrashEnv+"=1", "SAGAD_CRASH_DB="+path,
		"SAGAD_CRASH_AMQP="+brokerURL, "SAGAD_CRASH_EXCHANGE="+exchange)
	killAt(t, cmd, "publishing")

	b := setup(t, setupOpts{path: path, defs: []*saga.Definition{seqDef(crashSteps)},
		cfg: rabbitmq.Config{URL: brokerURL, Exchange: exchange}})
	sagas, deliveries, events := checkRelayedAfterCrash(t, b, sink)
	if len(sagas) != crashSagas {
		t.Fatalf("child started %d sagas before it died, want %d (it starts them all before the relay)", len(sagas), crashSagas)
	}
	t.Logf("%d deliveries for %d events: %d duplicates, each with its original message id",
		deliveries, events, deliveries-events)
}

// killAt runs a crash test's child process and kills it (SIGKILL) when it
// prints a line that starts with at.
func killAt(t *testing.T, cmd *exec.Cmd, at string) {
	t.Helper()
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	killed := false
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), at) {
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			killed = true
			break
		}
	}
	_ = cmd.Wait()
	if !killed {
		t.Fatal("child ended before it was killed; see its output above")
	}
}

// checkRelayedAfterCrash runs every saga on b's file to its end and lets the
// relay drain, then checks what sink received: every produced event at least
// once, nothing else, and each saga's events (seqDef(crashSteps)) in order
// once duplicates are dropped. It returns the sagas and the number of
// deliveries and events.
func checkRelayedAfterCrash(t *testing.T, b *bundle, sink *brokertest.Sink) (sagas []string, deliveries, events int) {
	t.Helper()
	ctx := context.Background()
	for cursor := ""; ; {
		page, err := b.eng.List(ctx, engine.ListOptions{Cursor: cursor, Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range page.Sagas {
			sagas = append(sagas, s.ID)
		}
		if cursor = page.NextCursor; cursor == "" {
			break
		}
	}
	for _, id := range sagas {
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		got, err := b.eng.Wait(wctx, id)
		cancel()
		if err != nil || got.Status != saga.StatusCompleted {
			t.Fatalf("saga %s after the restart: %v %v", id, got, err)
		}
	}
	b.drained(t, 60*time.Second)
	sink.Marker(t, "marker")
	ds := sink.Collect(t, "marker", 60*time.Second)

	produced := map[string]bool{}
	for cursor := ""; ; {
		page, err := b.eng.OutboxList(ctx, engine.OutboxListOptions{Status: storage.OutboxProduced, Cursor: cursor, Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range page.Events {
			produced[ev.ID.String()] = true
		}
		if cursor = page.NextCursor; cursor == "" {
			break
		}
	}
	if len(produced) != len(sagas)*crashSteps {
		t.Fatalf("outbox holds %d produced events for %d sagas, want %d", len(produced), len(sagas), len(sagas)*crashSteps)
	}
	seen := map[string]int{}
	for _, d := range ds {
		if !produced[d.MessageId] {
			t.Errorf("delivered message %s is not an outbox event", d.MessageId)
		}
		seen[d.MessageId]++
	}
	for id := range produced {
		if seen[id] == 0 {
			t.Errorf("event %s was never delivered", id)
		}
	}
	got := seqOf(t, ds)
	want := make([]int, crashSteps)
	for i := range want {
		want[i] = i
	}
	for _, id := range sagas {
		if !slices.Equal(dedupe(got[id]), want) {
			t.Errorf("saga %s delivered %v, want %v in order once duplicates are dropped", id, got[id], want)
		}
	}
	return sagas, len(ds), len(produced)
}

// TestRelayCrashChild is the process TestRelayCrash kills. It starts every
// saga, then the relay, and prints "publishing" when the first produced
// marks are committed, while most events are still to go.
func TestRelayCrashChild(t *testing.T) {
	if os.Getenv(relayCrashEnv) != "1" {
		t.Skip("run by TestRelayCrash")
	}
	eng, ctx := runChildEngine(t)
	var wg sync.WaitGroup
	for range crashSagas {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := eng.Start(ctx, "seq", keys("k", crashSteps)); err != nil {
				panic(err)
			}
		}()
	}
	wg.Wait()
	var once sync.Once
	relay, err := rabbitmq.New(eng.Store(), rabbitmq.Config{URL: os.Getenv("SAGAD_CRASH_AMQP"), Exchange: os.Getenv("SAGAD_CRASH_EXCHANGE"),
		Window: 64, Logger: quietLogger(), Hooks: rabbitmq.Hooks{Published: func(n int) {
			once.Do(func() { fmt.Println("publishing") })
		}}})
	if err != nil {
		t.Fatal(err)
	}
	_ = relay.Run(ctx) // until killed
}

// runChildEngine opens the engine of a crash test's child process on the
// file in SAGAD_CRASH_DB, with seqDef(crashSteps), and runs it until the
// process is killed.
func runChildEngine(t *testing.T) (*engine.Engine, context.Context) {
	t.Helper()
	eng, err := engine.Open(os.Getenv("SAGAD_CRASH_DB"), engine.Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	if err := eng.Register(seqDef(crashSteps)); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	go func() { _ = eng.Run(ctx) }()
	return eng, ctx
}
