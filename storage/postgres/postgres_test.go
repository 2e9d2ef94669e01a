package postgres_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/sagad/sagad/internal/pgtest"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
	"github.com/sagad/sagad/storage/postgres"
)

func newSaga(ev ...storage.OutboxEvent) *storage.Transition {
	s := &storage.Saga{ID: ulid.Make(), Definition: "d", Status: saga.StatusRunning,
		Steps: []storage.Step{{Name: "a", Status: saga.StepPending}}}
	for i := range ev {
		ev[i].SagaID = s.ID
	}
	return &storage.Transition{Saga: s, Events: ev}
}

// An event is in the outbox for the relay as soon as the commit that wrote
// it returns: the next scan sees it (after the earlier ones), every time.
func TestScanSeesWhatWasCommitted(t *testing.T) {
	t.Parallel()
	url := pgtest.URL(t)
	db := open(t, url, pgtest.Schema(t, url))
	ctx := context.Background()
	tr := newSaga()
	if _, err := db.SagaCreate(ctx, tr); err != nil {
		t.Fatal(err)
	}
	for i := range 300 {
		tr.Events = []storage.OutboxEvent{{SagaID: tr.Saga.ID, Name: "e", RoutingKey: "e", Payload: []byte(`{}`)}}
		tr.Saga.LogSeq++
		tr.Log = []storage.LogEntry{{Seq: tr.Saga.LogSeq, Event: storage.EventStatus}}
		if err := db.SagaCommit(ctx, tr); err != nil {
			t.Fatal(err)
		}
		var seen []ulid.ULID
		if err := db.OutboxScanNew(ctx, ulid.ULID{}, func(id, _ ulid.ULID, _ func() (*storage.OutboxEvent, error)) bool {
			seen = append(seen, id)
			return true
		}); err != nil {
			t.Fatal(err)
		}
		if len(seen) != i+1 {
			t.Fatalf("commit %d: the scan after it saw %d new events, want %d", i, len(seen), i+1)
		}
	}
}

// What the bbolt backend reads back, this one does too: a zero time is
// zero, and every status has a count.
func TestZeroTimesAndCounts(t *testing.T) {
	t.Parallel()
	url := pgtest.URL(t)
	db := open(t, url, pgtest.Schema(t, url))
	ctx := context.Background()
	tr := newSaga(storage.OutboxEvent{Name: "e", RoutingKey: "e", Payload: []byte(`{}`)})
	if _, err := db.SagaCreate(ctx, tr); err != nil {
		t.Fatal(err)
	}
	evs, _, err := db.OutboxList(ctx, storage.OutboxListOptions{})
	if err != nil || len(evs) != 1 {
		t.Fatalf("outbox: %v, %v", evs, err)
	}
	if !evs[0].CreatedAt.IsZero() || !evs[0].StatusAt.IsZero() {
		t.Errorf("an event created at the zero time reads back created %v, status at %v", evs[0].CreatedAt, evs[0].StatusAt)
	}
	if _, oldest, _, err := db.OutboxStats(ctx); err != nil || !oldest.IsZero() {
		t.Errorf("oldest new event at %v (%v), want the zero time", oldest, err)
	}
	counts, err := db.SagaCounts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range saga.Statuses {
		if n, ok := counts[st]; !ok || (st == saga.StatusRunning) != (n == 1) {
			t.Errorf("count of %s: %d (present %v)", st, n, ok)
		}
	}
}

// A schema name up to PostgreSQL's limit works, notifications included; an
// empty schema parameter in the URL means the default.
func TestSchemaNames(t *testing.T) {
	t.Parallel()
	url := pgtest.URL(t)
	long := pgtest.Schema(t, url) + strings.Repeat("x", 63-len("sagad_test_")-26)
	t.Cleanup(func() { pgtest.Drop(t, url, long) })
	db := open(t, url, long)
	if _, err := db.SagaCreate(context.Background(), newSaga(storage.OutboxEvent{Name: "e", RoutingKey: "e", Payload: []byte(`{}`)})); err != nil {
		t.Fatalf("a saga with an event in schema %q (%d bytes): %v", long, len(long), err)
	}
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := postgres.Open(ctx, url+sep+"schema=", &postgres.Options{Schema: pgtest.Schema(t, url)})
	if err != nil {
		t.Fatalf("open with an empty schema parameter: %v", err)
	}
	d.Close()
}
