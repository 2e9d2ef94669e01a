package engine_test

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/errors"

	"github.com/sagad/sagad/recovery"
	"github.com/sagad/sagad/saga"
)

// The crash soak is TestCrash at random instants, many times over: a child
// process starts sagas on the file and is killed with SIGKILL after a random
// delay (while it opens the file, recovers, starts sagas or runs them), then
// the next child does the same on the same file. At the end the parent runs
// every saga to its end and checks them all as TestCrash does. It is opt-in:
//
//	SAGAD_SOAK=50 go test ./engine -run TestCrashSoak -v
const (
	soakEnvCycles = "SAGAD_SOAK"
	soakEnvFrom   = "SAGAD_SOAK_FROM"
	soakPerCycle  = 60
)

func TestCrashSoak(t *testing.T) {
	if os.Getenv(crashEnvChild) != "" {
		t.Skip("in the child process")
	}
	cycles, _ := strconv.Atoi(os.Getenv(soakEnvCycles))
	if cycles <= 0 {
		t.Skipf("opt-in: %s=N kills and restarts the engine N times at random instants", soakEnvCycles)
	}
	dir := t.TempDir()
	dbPath, jpath := filepath.Join(dir, "sagad.db"), filepath.Join(dir, "journal")
	j, err := openJournal(jpath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = j.f.Close() })

	killed := 0
	for cycle := range cycles {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashSoakChild$", "-test.count=1", "-test.v", "-test.timeout=60s")
		cmd.Env = append(os.Environ(), crashEnvChild+"=1", crashEnvDB+"="+dbPath, crashEnvJournal+"="+jpath,
			soakEnvFrom+"="+strconv.Itoa(cycle*soakPerCycle), "GORACE=halt_on_error=1")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// The random delay is the point of the test, not a wait for something.
		delay := time.Duration(rand.Int64N(int64(150 * time.Millisecond)))
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		var err error
		select {
		case err = <-exited:
		case <-time.After(delay):
			_ = cmd.Process.Signal(syscall.SIGKILL)
			err = <-exited
		}
		var ee *exec.ExitError
		switch {
		case err == nil:
			// The child finished its sagas before its time was up.
		case errors.As(err, &ee) && ee.Sys().(syscall.WaitStatus).Signal() == syscall.SIGKILL:
			killed++
		default:
			t.Fatalf("cycle %d: child: %v; output:\n%s", cycle, err, out.String())
		}
		if bytes.Contains(out.Bytes(), []byte("DATA RACE")) {
			t.Fatalf("cycle %d: child reported a data race:\n%s", cycle, out.String())
		}
		if st, err := os.Stat(dbPath); errors.Is(err, os.ErrNotExist) || (err == nil && st.Size() == 0) {
			// Killed before it created the file, or before it wrote the
			// first page: the next open makes a database of it.
		} else if err := recovery.CheckFile(dbPath); err != nil {
			t.Fatalf("cycle %d: consistency check after the child ended (killed after %s): %v", cycle, delay, err)
		}
		if err := j.write("restart"); err != nil {
			t.Fatal(err)
		}
	}

	b := setup(t, setupOpts{path: dbPath, defs: []*saga.Definition{crashDefinition(j, nil)}})
	run := checkCrashedFile(t, b, jpath)
	t.Logf("%d cycles, %d killed; %d sagas, %d with attempts in doubt, %d journal lines",
		cycles, killed, len(run.ids), len(run.inDoubt), len(run.lines))
}

// TestCrashSoakChild is the child half of TestCrashSoak: it opens the file
// (recovering what earlier children left), starts its share of sagas and
// waits for them, until it is killed.
func TestCrashSoakChild(t *testing.T) {
	if os.Getenv(crashEnvChild) == "" || os.Getenv(soakEnvFrom) == "" {
		t.Skip("the child process of TestCrashSoak")
	}
	from, err := strconv.Atoi(os.Getenv(soakEnvFrom))
	if err != nil {
		t.Fatal(err)
	}
	j, err := openJournal(os.Getenv(crashEnvJournal))
	if err != nil {
		t.Fatal(err)
	}
	eng, ctx, stop := runChildEngine(t, os.Getenv(crashEnvDB), crashDefinition(j, nil))
	defer stop()

	next := make(chan int)
	go func() {
		defer close(next)
		for n := from; n < from+soakPerCycle; n++ {
			next <- n
		}
	}()
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for n := range next {
				st, err := eng.Start(ctx, crashDefName, map[string]int{"n": n})
				if err != nil {
					t.Errorf("start saga %d: %v", n, err)
					return
				}
				if err := j.write("started", st.ID, n); err != nil {
					t.Error(err)
					return
				}
				wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
				_, err = eng.Wait(wctx, st.ID)
				wcancel()
				if err != nil {
					t.Errorf("wait for saga %s: %v", st.ID, err)
				}
			}
		})
	}
	wg.Wait()
}
