package engine_test

import (
	"context"
	"encoding/json"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/internal/tcpproxy"
	"github.com/sagad/sagad/saga"
)

// PostgreSQL goes away mid-run (every connection of two engines on one
// schema cut, new ones refused, for two seconds) and comes back: the
// engines retry from the stored state and every saga finishes, each step
// done once or, when its outcome was lost with the connection, again with
// its idempotency key.
func TestPostgresGoesAwayAndComesBack(t *testing.T) {
	t.Parallel()
	dbURL := postgresURL(t)
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	proxy, err := tcpproxy.Start(u.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(proxy.Close)
	via := *u
	via.Host = proxy.Addr()

	var mu sync.Mutex
	calls := map[string]int{} // idempotency key -> calls
	step := func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
		mu.Lock()
		calls[c.IdempotencyKey]++
		mu.Unlock()
		time.Sleep(time.Millisecond)
		return json.RawMessage(`{}`), nil
	}
	def := &saga.Definition{Name: "d", Steps: []saga.Step{
		{Name: "a", Action: step}, {Name: "b", Action: step}, {Name: "c", Action: step}}}
	a := setup(t, setupOpts{path: via.String(), defs: []*saga.Definition{def}})
	b := setup(t, setupOpts{path: via.String(), defs: []*saga.Definition{def}})

	const n = 200
	ids := make([]string, 0, n)
	for i := range n {
		eng := []*engine.Engine{a.eng, b.eng}[i%2]
		if i == n/2 {
			proxy.Cut()
			time.AfterFunc(2*time.Second, func() {
				if err := proxy.Restore(); err != nil {
					t.Error(err)
				}
			})
		}
		var st engine.Started
		var err error
		for try := 0; try < 100; try++ { // a start fails while PostgreSQL is away
			if st, err = eng.Start(context.Background(), "d", nil); err == nil {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("start %d: %v", i, err)
		}
		ids = append(ids, st.ID)
	}
	for i, id := range ids {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		s, err := []*engine.Engine{a.eng, b.eng}[i%2].Wait(ctx, id)
		cancel()
		if err != nil || s.Status != saga.StatusCompleted {
			t.Fatalf("saga %d: %+v, %v; want completed", i, s, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, id := range ids {
		for _, st := range []string{"a", "b", "c"} {
			if calls[id+"/"+st+"/action"] == 0 {
				t.Errorf("saga %s: step %s never called", id, st)
			}
		}
	}
}
