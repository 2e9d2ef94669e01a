package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sagad/sagad/client"
)

// soakCall is one call a participant received.
type soakCall struct {
	path, key string
	pos       int
}

// soakParticipants answer every call, except /ship for sagas with an odd
// n, which it declines (422) so that they compensate. They record each call
// by saga.
type soakParticipants struct {
	mu    sync.Mutex
	n     int
	calls map[string][]soakCall // saga id -> calls in arrival order
}

func (p *soakParticipants) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Input struct{ N int } `json:"input"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&body); err != nil {
		http.Error(w, "bad body", http.StatusBadRequest)
		return
	}
	p.mu.Lock()
	id := r.Header.Get("X-Saga-Id")
	p.calls[id] = append(p.calls[id], soakCall{path: r.URL.Path, key: r.Header.Get("Idempotency-Key"), pos: p.n})
	p.n++
	p.mu.Unlock()
	if r.URL.Path == "/ship" && body.Input.N%2 == 1 {
		http.Error(w, `{"error":"declined"}`, http.StatusUnprocessableEntity)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprint(w, `{"ok":true}`)
}

// TestDaemonCrashSoak kills 'sagad serve' with SIGKILL at random instants
// while clients start sagas of HTTP steps through the API, and restarts it
// on the same file, SAGAD_SOAK times (opt-in):
//
//	SAGAD_SOAK=50 go test ./cmd/sagad -run TestDaemonCrashSoak -v
//
// Every start carries an idempotency key, and a client that got no answer
// posts it again to the last daemon, which runs everything to its end. Then
// each key must name exactly one saga, ended as its input says, whose
// participants saw each call with its own stable idempotency key, steps in
// order, and compensations only for compensated sagas, in reverse order.
func TestDaemonCrashSoak(t *testing.T) {
	cycles, _ := strconv.Atoi(os.Getenv("SAGAD_SOAK"))
	if cycles <= 0 {
		t.Skip("opt-in: SAGAD_SOAK=N kills and restarts the daemon N times at random instants")
	}
	const perCycle = 40
	p := &soakParticipants{calls: map[string][]soakCall{}}
	srv := httptest.NewServer(p)
	defer srv.Close()
	path := filepath.Join(t.TempDir(), "sagad.db")
	spec := fmt.Sprintf(`{"steps":[
		{"name":"reserve","action":{"url":"%[1]s/reserve"},"compensation":{"url":"%[1]s/release"}},
		{"name":"charge","action":{"url":"%[1]s/charge"},"compensation":{"url":"%[1]s/refund"}},
		{"name":"ship","action":{"url":"%[1]s/ship"}}]}`, srv.URL)
	key := func(n int) string { return "soak-" + strconv.Itoa(n) }
	ctx := context.Background()

	attempted := 0
	killed := 0
	for cycle := range cycles {
		d := startDaemon(t, path)
		c := d.client(t)
		if cycle == 0 {
			if _, err := c.PutDefinition(ctx, "order", []byte(spec)); err != nil {
				t.Fatal(err)
			}
		}
		next := make(chan int)
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for n := range next {
					// Errors are expected once the daemon is killed; the
					// last daemon gets every key again.
					_, _ = c.Start(ctx, "order", map[string]int{"n": n}, client.StartOptions{IdempotencyKey: key(n)})
				}
			})
		}
		// The random delay is the point of the test, not a wait for something.
		stop := time.After(time.Duration(rand.Int64N(int64(150 * time.Millisecond))))
		feeding := true
		for n := cycle * perCycle; feeding && n < (cycle+1)*perCycle; n++ {
			select {
			case next <- n:
				attempted = n + 1
			case <-stop:
				feeding = false
			}
		}
		if feeding { // every start is sent; the kill comes at its time
			select {
			case <-stop:
			case <-d.done:
			}
		}
		select {
		case <-d.done:
			t.Fatalf("cycle %d: the daemon exited by itself:\n%s", cycle, d.output())
		default:
		}
		if err := d.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		killed++
		<-d.done
		close(next)
		wg.Wait()
	}

	d := startDaemon(t, path)
	c := d.client(t)
	ids := map[string]int{} // saga id -> n
	for n := range attempted {
		res, err := c.Start(ctx, "order", map[string]int{"n": n}, client.StartOptions{IdempotencyKey: key(n)})
		if err != nil {
			t.Fatalf("start %s again: %v\n%s", key(n), err, d.output())
		}
		if other, dup := ids[res.ID]; dup {
			t.Fatalf("keys %s and %s name the same saga %s", key(other), key(n), res.ID)
		}
		ids[res.ID] = n
	}
	inDoubt := 0
	for id, n := range ids {
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		s, err := c.Wait(wctx, id)
		cancel()
		if err != nil {
			t.Fatalf("wait for saga %s (%s): %v\n%s", id, key(n), err, d.output())
		}
		want := "completed"
		if n%2 == 1 {
			want = "compensated"
		}
		if s.Status != want {
			t.Errorf("saga %s (%s): %s (%s), want %s", id, key(n), s.Status, s.Error, want)
			continue
		}
		p.mu.Lock()
		calls := slices.Clone(p.calls[id])
		p.mu.Unlock()
		if checkSoakCalls(t, id, n, calls) {
			inDoubt++
		}
	}
	t.Logf("%d cycles, %d daemons killed; %d sagas, %d with a call repeated after a crash", cycles, killed, len(ids), inDoubt)
}

// checkSoakCalls checks what the participants saw of one finished saga, and
// reports whether a call was repeated (a re-run after a crash).
func checkSoakCalls(t *testing.T, id string, n int, calls []soakCall) (repeated bool) {
	t.Helper()
	step := map[string]string{"/reserve": "reserve/action", "/charge": "charge/action", "/ship": "ship/action",
		"/release": "reserve/compensation", "/refund": "charge/compensation"}
	first, last, count := map[string]int{}, map[string]int{}, map[string]int{}
	for _, c := range calls {
		if want := id + "/" + step[c.path]; c.key != want {
			t.Errorf("saga %s: %s called with key %q, want %q", id, c.path, c.key, want)
		}
		if _, ok := first[c.path]; !ok {
			first[c.path] = c.pos
		}
		last[c.path] = c.pos
		count[c.path]++
		repeated = repeated || count[c.path] > 1
	}
	// Each step starts only after the one before it succeeded, and never
	// runs again after the next one started.
	order := []string{"/reserve", "/charge", "/ship"}
	if n%2 == 1 {
		order = append(order, "/refund", "/release")
	}
	for i, path := range order {
		if count[path] == 0 {
			t.Errorf("saga %s (n=%d): %s never called", id, n, path)
			continue
		}
		if i > 0 && count[order[i-1]] > 0 && last[order[i-1]] > first[path] {
			t.Errorf("saga %s (n=%d): %s called after %s started", id, n, order[i-1], path)
		}
	}
	if n%2 == 0 && (count["/refund"] > 0 || count["/release"] > 0) {
		t.Errorf("saga %s completed but was compensated: %v", id, count)
	}
	return repeated
}
