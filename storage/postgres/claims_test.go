package postgres_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/cockroachdb/errors"
	"github.com/oklog/ulid/v2"

	"github.com/sagad/sagad/internal/pgtest"
	"github.com/sagad/sagad/internal/tcpproxy"
	"github.com/sagad/sagad/storage"
	"github.com/sagad/sagad/storage/postgres"
)

// node opens a store on schema named name, with a short lease, closed when
// the test ends.
func node(t *testing.T, dbURL, schema, name string) *postgres.DB {
	t.Helper()
	db, err := postgres.Open(context.Background(), dbURL, &postgres.Options{Schema: schema, Node: name, MaxConns: 4,
		LeaseTTL: 400 * time.Millisecond, PollInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatalf("open %s: %v", name, err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// eventually polls cond: the stores act on leases that lapse on
// PostgreSQL's clock, which no event here announces.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(15 * time.Second)
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("%s: not after 15s", what)
		}
	}
}

func due(t *testing.T, db *postgres.DB, id ulid.ULID) bool {
	t.Helper()
	ids, _, err := db.SagaDue(context.Background(), time.Now(), 100, nil)
	if err != nil {
		t.Fatal(err)
	}
	return slices.Contains(ids, id)
}

// A saga is driven by one process at a time: another's claim is refused
// while the first holds it, granted once a commit lets go, and the first's
// later write is fenced off.
func TestClaimsAcrossProcesses(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.URL(t)
	schema := pgtest.Schema(t, dbURL)
	a, b := node(t, dbURL, schema, "a"), node(t, dbURL, schema, "b")
	ctx := context.Background()
	tr := newSaga()
	if _, err := a.SagaCreate(ctx, tr); err != nil {
		t.Fatal(err)
	}
	id := tr.Saga.ID
	if _, _, err := b.SagaClaim(ctx, id); !errors.Is(err, storage.ErrClaimed) {
		t.Fatalf("b claims a saga a drives: %v, want ErrClaimed", err)
	}
	if due(t, b, id) {
		t.Fatal("a saga a drives is due for b")
	}

	// a lets go: the saga waits for a retry that is due now.
	stale := *tr.Saga
	tr.Saga.WakeAt = time.Now().Add(-time.Second)
	tr.Saga.LogSeq++
	tr.Log = []storage.LogEntry{{Seq: tr.Saga.LogSeq, Event: storage.EventAttemptFailed}}
	if err := a.SagaCommit(ctx, tr); err != nil {
		t.Fatal(err)
	}
	if !due(t, b, id) {
		t.Fatal("a saga no one drives, due now, is not due for b")
	}
	rec, _, err := b.SagaClaim(ctx, id)
	if err != nil || rec.LogSeq != tr.Saga.LogSeq {
		t.Fatalf("b claims the released saga: %+v, %v", rec, err)
	}
	if err := a.SagaRelease(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.SagaClaim(ctx, id); !errors.Is(err, storage.ErrClaimed) {
		t.Fatalf("a claims a saga b drives: %v, want ErrClaimed", err)
	}

	// a writes what it decided before letting go: fenced.
	stale.LogSeq = tr.Saga.LogSeq + 1
	err = a.SagaCommit(ctx, &storage.Transition{Saga: &stale, Log: []storage.LogEntry{{Seq: stale.LogSeq, Event: storage.EventStatus}}})
	if !errors.Is(err, storage.ErrNotOwner) {
		t.Fatalf("a's write to b's saga: %v, want ErrNotOwner", err)
	}
	log, err := b.LogList(ctx, id)
	if err != nil || len(log) != 1 {
		t.Fatalf("log after the fenced write: %v, %v; want b's one entry", log, err)
	}
}

// A process cut off from PostgreSQL for longer than its lease loses its
// sagas to another, and writes nothing to them once it is back; its
// outbox lead passes on too.
func TestFencingAfterACut(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.URL(t)
	schema := pgtest.Schema(t, dbURL)
	proxy, viaURL := tcpproxy.ForURL(t, dbURL)
	a, b := node(t, viaURL, schema, "a"), node(t, dbURL, schema, "b")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	tr := newSaga()
	if _, err := a.SagaCreate(ctx, tr); err != nil {
		t.Fatal(err)
	}
	id := tr.Saga.ID
	leadA, err := a.OutboxLead(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tctx, tcancel := context.WithTimeout(ctx, 300*time.Millisecond)
	if _, err := b.OutboxLead(tctx); err == nil {
		t.Fatal("b leads the outbox while a does")
	}
	tcancel()

	proxy.Cut()
	<-leadA.Done() // a's lead ends with its connection
	eventually(t, "b finds a's saga orphaned", func() bool { return due(t, b, id) })
	rec, _, err := b.SagaClaim(ctx, id)
	if err != nil {
		t.Fatalf("b takes the orphan over: %v", err)
	}
	rec.LogSeq++
	if err := b.SagaCommit(ctx, &storage.Transition{Saga: rec, Log: []storage.LogEntry{{Seq: rec.LogSeq, Event: storage.EventInDoubt}}}); err != nil {
		t.Fatal(err)
	}
	leadB, err := b.OutboxLead(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := proxy.Restore(); err != nil {
		t.Fatal(err)
	}
	// a is back, with a transition it decided before the cut.
	tr.Saga.LogSeq++
	tr.Log = []storage.LogEntry{{Seq: tr.Saga.LogSeq, Event: storage.EventAttemptSucceeded}}
	eventually(t, "a's write is answered", func() bool {
		err = a.SagaCommit(ctx, tr)
		return err == nil || errors.Is(err, storage.ErrNotOwner)
	})
	if !errors.Is(err, storage.ErrNotOwner) {
		t.Fatalf("a's write after the takeover: %v, want ErrNotOwner", err)
	}
	log, err := b.LogList(ctx, id)
	if err != nil || len(log) != 1 || log[0].Event != storage.EventInDoubt {
		t.Fatalf("log after a's fenced write: %+v, %v; want b's entry only", log, err)
	}
	if leadB.Err() != nil {
		t.Fatal("b lost the lead when a came back")
	}
}
