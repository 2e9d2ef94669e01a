package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sagad/sagad/client"
	"github.com/sagad/sagad/internal/brokertest"
	"github.com/sagad/sagad/internal/pgtest"
	"github.com/sagad/sagad/storage/postgres"
)

// call is one participant call the multi-node test saw.
type call struct {
	path, key  string
	start, end time.Time
}

// recorder is the multi-node test's participants: every call is recorded
// with when it started and ended; a charge for a declined card is refused
// (402), so its saga compensates.
type recorder struct {
	mu    sync.Mutex
	calls []call
}

func (p *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	body, _ := io.ReadAll(r.Body)
	var req struct {
		Input struct {
			Decline bool `json:"decline"`
		} `json:"input"`
	}
	_ = json.Unmarshal(body, &req)
	time.Sleep(2 * time.Millisecond) // long enough for calls to be in flight at a kill
	defer func() {
		p.mu.Lock()
		p.calls = append(p.calls, call{r.URL.Path, r.Header.Get("Idempotency-Key"), start, time.Now()})
		p.mu.Unlock()
	}()
	if r.URL.Path == "/charge" && req.Input.Decline {
		http.Error(w, `{"error":"declined"}`, http.StatusPaymentRequired)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprint(w, `{}`)
}

// Three sagad serve processes on one PostgreSQL schema share the sagas:
// sagas are started round-robin across the nodes while one node is killed
// with SIGKILL and restarted and another is killed for good. Every saga
// ends as its input says; calls with one idempotency key never overlap in
// time; compensations run in reverse order; every event reaches the broker,
// in order per saga. SAGAD_MULTINODE_SAGAS sets the number of sagas
// (default 300; the run is 3000).
func TestThreeNodes(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.URL(t)
	brokerURL := brokertest.URL(t)
	db := postgres.WithSchema(dbURL, pgtest.Schema(t, dbURL))
	exchange := brokertest.Name("test.nodes")
	sink := brokertest.NewSink(t, brokerURL, exchange, "#")
	n := 300
	if v, err := strconv.Atoi(os.Getenv("SAGAD_MULTINODE_SAGAS")); err == nil && v > 0 {
		n = v
	}
	p := &recorder{}
	srv := httptest.NewServer(p)
	defer srv.Close()

	args := func(node string) []string {
		return []string{"--node", node, "--amqp-url", brokerURL, "--exchange", exchange, "--concurrency", "64"}
	}
	nodes := []*daemon{startDaemon(t, db, args("n1")...)}
	ctx := context.Background()
	spec := fmt.Sprintf(`{"steps":[
		{"name":"reserve","action":{"url":"%[1]s/reserve"},"compensation":{"url":"%[1]s/release"}},
		{"name":"charge","action":{"url":"%[1]s/charge"},"compensation":{"url":"%[1]s/refund"}},
		{"name":"ship","action":{"url":"%[1]s/ship"}}],
		"events":{"lifecycle":true}}`, srv.URL)
	if _, err := nodes[0].client(t).PutDefinition(ctx, "order", []byte(spec)); err != nil {
		t.Fatal(err)
	}
	nodes = append(nodes, startDaemon(t, db, args("n2")...), startDaemon(t, db, args("n3")...))

	// Clients start sagas round-robin over the nodes that are up; a start
	// that fails on a killed node is made again on another with the same
	// idempotency key.
	var mu sync.Mutex
	up := []int{0, 1, 2}
	pick := func(i int) *client.Client {
		mu.Lock()
		defer mu.Unlock()
		return nodes[up[i%len(up)]].client(t)
	}
	ids := make([]string, n)
	var wg sync.WaitGroup
	next := make(chan int)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				input := map[string]any{"order": i, "decline": i%10 == 9}
				key := fmt.Sprintf("order-%d", i)
				for try := 0; ; try++ {
					res, err := pick(i+try).Start(ctx, "order", input, client.StartOptions{IdempotencyKey: key})
					if err == nil {
						ids[i] = res.ID
						break
					}
					if try == 50 {
						t.Errorf("start %s: %v", key, err)
						return
					}
				}
			}
		}()
	}
	kill := func(i int) {
		if err := nodes[i].cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-nodes[i].done
	}
	for i := range n {
		next <- i
		switch i {
		case n / 3: // n1 dies and comes back
			mu.Lock()
			up = []int{1, 2}
			mu.Unlock()
			kill(0)
			nodes[0] = startDaemon(t, db, args("n1")...)
			mu.Lock()
			up = []int{0, 1, 2}
			mu.Unlock()
		case 2 * n / 3: // n2 dies for good
			mu.Lock()
			up = []int{0, 2}
			mu.Unlock()
			kill(1)
		}
	}
	close(next)
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}

	// Every saga ends as its input says, whichever node is asked.
	for i, id := range ids {
		c := nodes[[]int{0, 2}[i%2]].client(t)
		wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		s, err := c.Wait(wctx, id)
		cancel()
		want := "completed"
		if i%10 == 9 {
			want = "compensated"
		}
		if err != nil || s.Status != want {
			t.Fatalf("saga %d (%s): %+v, %v; want %s\nn1:\n%s\nn3:\n%s", i, id, s, err, want, nodes[0].output(), nodes[2].output())
		}
	}

	// The kills cut attempts off: their sagas were taken over, and their
	// attempts run again as in doubt.
	inDoubt := 0
	for _, id := range ids {
		log, err := nodes[2].client(t).Log(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range log {
			if e.Event == "attempt_in_doubt" {
				inDoubt++
			}
		}
	}
	if inDoubt == 0 {
		t.Error("no saga has an attempt in doubt: the kills took no saga mid-attempt, and nothing was taken over")
	}
	t.Logf("%d sagas, %d attempts in doubt after the kills", n, inDoubt)

	// Calls with one key never overlap; compensations run in reverse order.
	p.mu.Lock()
	calls := slices.Clone(p.calls)
	p.mu.Unlock()
	byKey := map[string][]call{}
	for _, c := range calls {
		byKey[c.key] = append(byKey[c.key], c)
	}
	for key, cs := range byKey {
		slices.SortFunc(cs, func(a, b call) int { return a.start.Compare(b.start) })
		for i := 1; i < len(cs); i++ {
			if cs[i].start.Before(cs[i-1].end) {
				t.Errorf("calls with key %s overlap: %v-%v and %v-%v", key, cs[i-1].start, cs[i-1].end, cs[i].start, cs[i].end)
			}
		}
	}
	for i, id := range ids {
		if i%10 != 9 {
			continue
		}
		release, refund := byKey[id+"/reserve/compensation"], byKey[id+"/charge/compensation"]
		if len(release) == 0 {
			t.Errorf("saga %s: reserve never compensated", id)
			continue
		}
		for _, r := range refund { // a declined charge may have none
			if !r.end.Before(release[len(release)-1].start) {
				t.Errorf("saga %s: the refund did not end before the last release began", id)
			}
		}
	}

	// Every event reaches the broker, in order per saga (after removing
	// duplicates a crash may cause).
	// The relay (whichever node leads) has published everything first.
	deadline := time.Now().Add(60 * time.Second)
	for {
		st, err := nodes[2].client(t).OutboxStats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.Counts.New == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("outbox not drained after 60s: %+v", st.Counts)
		}
		time.Sleep(50 * time.Millisecond) // the relay's progress has no signal here
	}
	sink.Marker(t, "marker-1")
	got := sink.Collect(t, "marker-1", 60*time.Second)
	seen := map[string]bool{}
	bySaga := map[string][]string{}
	for _, d := range got {
		if seen[d.MessageId] {
			continue
		}
		seen[d.MessageId] = true
		sid, _ := d.Headers["x-saga-id"].(string)
		bySaga[sid] = append(bySaga[sid], d.Type)
	}
	for i, id := range ids {
		want := "saga.started step.succeeded step.succeeded step.succeeded saga.completed"
		if i%10 == 9 {
			want = "saga.started step.succeeded step.compensated saga.compensated"
		}
		if got := strings.Join(bySaga[id], " "); got != want {
			t.Errorf("saga %d (%s): events %q, want %q", i, id, got, want)
		}
	}
}
