package rabbitmq_test

import (
	"bytes"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sagad/sagad/internal/brokertest"
	"github.com/sagad/sagad/recovery"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/transport/rabbitmq"
)

const (
	relaySoakEnv      = "SAGAD_RELAY_SOAK_CHILD"
	relaySoakPerCycle = 50
)

// TestRelayCrashSoak is TestRelayCrash at random instants, over and over
// (opt-in, SAGAD_SOAK=N): each child process runs sagas that emit events and
// the relay that publishes them, and is killed with SIGKILL after a random
// delay; the next one carries on with the same file. At the end every event
// must have arrived at least once, duplicates with their original id, and
// each saga's events in order once duplicates are dropped.
//
//	SAGAD_SOAK=100 go test ./transport/rabbitmq -run TestRelayCrashSoak -v
func TestRelayCrashSoak(t *testing.T) {
	cycles, _ := strconv.Atoi(os.Getenv("SAGAD_SOAK"))
	if cycles <= 0 || os.Getenv(relaySoakEnv) != "" {
		t.Skip("opt-in: SAGAD_SOAK=N kills and restarts the engine and relay N times at random instants")
	}
	brokerURL := brokertest.URL(t)
	exchange := brokertest.Name("test.soak")
	sink := brokertest.NewSink(t, brokerURL, exchange, "#")
	path := filepath.Join(t.TempDir(), "sagad.db")

	killed := 0
	for cycle := range cycles {
		cmd := exec.Command(os.Args[0], "-test.run", "^TestRelayCrashSoakChild$", "-test.v")
		cmd.Env = append(os.Environ(), relaySoakEnv+"=1", "SAGAD_CRASH_DB="+path,
			"SAGAD_CRASH_AMQP="+brokerURL, "SAGAD_CRASH_EXCHANGE="+exchange)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		// The random delay is the point of the test, not a wait for something.
		select {
		case err := <-exited:
			t.Fatalf("cycle %d: child ended by itself (%v):\n%s", cycle, err, out.String())
		case <-time.After(time.Duration(rand.Int64N(int64(300 * time.Millisecond)))):
		}
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-exited
		killed++
		if _, err := os.Stat(path); err == nil {
			if err := recovery.CheckFile(path); err != nil {
				t.Fatalf("cycle %d: consistency check after the kill: %v", cycle, err)
			}
		}
	}

	b := setup(t, setupOpts{path: path, defs: []*saga.Definition{seqDef(crashSteps)},
		cfg: rabbitmq.Config{URL: brokerURL, Exchange: exchange}})
	sagas, deliveries, events := checkRelayedAfterCrash(t, b, sink)
	t.Logf("%d cycles, %d killed; %d sagas, %d deliveries for %d events (%d duplicates)",
		cycles, killed, len(sagas), deliveries, events, deliveries-events)
}

// TestRelayCrashSoakChild is the process TestRelayCrashSoak kills: it opens
// the file (recovering what the last child left), runs the relay, and starts
// its share of sagas.
func TestRelayCrashSoakChild(t *testing.T) {
	if os.Getenv(relaySoakEnv) != "1" {
		t.Skip("run by TestRelayCrashSoak")
	}
	eng, ctx := runChildEngine(t)
	relay, err := rabbitmq.New(eng.Store(), rabbitmq.Config{URL: os.Getenv("SAGAD_CRASH_AMQP"),
		Exchange: os.Getenv("SAGAD_CRASH_EXCHANGE"), Window: 64, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = relay.Run(ctx) }()
	var wg sync.WaitGroup
	for range relaySoakPerCycle {
		wg.Go(func() {
			if _, err := eng.Start(ctx, "seq", keys("k", crashSteps)); err != nil {
				panic(err)
			}
		})
	}
	wg.Wait()
	select {} // until killed
}
