// Package storagetest is the conformance suite every sagad storage backend
// must pass: one call runs every contract of storage.Store against stores
// the backend makes.
//
//	func TestConformance(t *testing.T) {
//		storagetest.Run(t, storagetest.Harness{
//			Open:   func(t *testing.T) storage.Store { ... an empty store ... },
//			Reopen: func(t *testing.T, s storage.Store) storage.Store { ... close s, open its data again ... },
//		})
//	}
//
// It checks each method's contract, that a refused transition leaves
// nothing behind, cursor paging without gaps or repeats while sagas are
// created, due-time order, that concurrent creates with one idempotency key
// have exactly one winner, the outbox's per-saga order, re-queue, discard
// and prune, persistence across close and reopen, and many concurrent
// writers. It is for tests only.
package storagetest

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/errors"
	"github.com/oklog/ulid/v2"

	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
)

// Harness makes the stores the suite runs on.
type Harness struct {
	// Open returns a new, empty store. The suite closes it.
	Open func(t *testing.T) storage.Store
	// Reopen closes s and returns a store on the same data. Nil: the
	// persistence tests are skipped.
	Reopen func(t *testing.T, s storage.Store) storage.Store
	// ScanAll says the backend's OutboxScanNew returns every new event,
	// whatever after is (as the storage.OutboxStore contract allows a
	// backend that several processes write).
	ScanAll bool
}

// Run runs the suite; each contract is a parallel subtest on a store of
// its own.
func Run(t *testing.T, h Harness) {
	tests := []struct {
		name string
		fn   func(t *testing.T, h Harness)
	}{
		{"SagaCreateAndGet", testCreateAndGet},
		{"SagaCommit", testCommit},
		{"RefusedTransitionLeavesNothing", testRefused},
		{"IdempotencyKeyHasOneWinner", testIdempotency},
		{"ListPagesWithoutGapsOrRepeats", testPaging},
		{"DueOrder", testDue},
		{"UnfinishedParkedCountsAndPrune", testScans},
		{"AbortRequests", testAbort},
		{"OutboxOrderMarksRequeueDiscardPrune", testOutbox},
		{"BreakersAndDefinitions", testBreakersAndDefinitions},
		{"ConcurrentWriters", testConcurrentWriters},
		{"Persistence", testPersistence},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.fn(t, h)
		})
	}
}

var base = time.Date(2031, 2, 3, 4, 5, 6, 0, time.UTC)

// open returns a store that is closed when the test ends.
func open(t *testing.T, h Harness) storage.Store {
	t.Helper()
	s := h.Open(t)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// newSaga returns a running saga record of two steps created at base+n.
func newSaga(n int, key string) *storage.Saga {
	created := base.Add(time.Duration(n) * time.Millisecond)
	return &storage.Saga{
		ID: ulid.MustNew(ulid.Timestamp(created), ulid.DefaultEntropy()), Definition: "order", Fingerprint: "v1",
		Status: saga.StatusRunning, Input: json.RawMessage(`{"n":` + fmt.Sprint(n) + `}`), IdempotencyKey: key,
		CreatedAt: created, UpdatedAt: created,
		Steps: []storage.Step{{Name: "reserve", Status: saga.StepPending}, {Name: "charge", Status: saga.StepPending}},
	}
}

// change returns a transition of r that appends log entries with the given
// events' names, and outbox events of the given names.
func change(r *storage.Saga, logs []storage.Event, events ...string) *storage.Transition {
	t := &storage.Transition{Saga: r}
	for _, ev := range logs {
		r.LogSeq++
		t.Log = append(t.Log, storage.LogEntry{Seq: r.LogSeq, At: r.UpdatedAt, Event: ev, Status: r.Status})
	}
	for _, name := range events {
		t.Events = append(t.Events, storage.OutboxEvent{SagaID: r.ID, Definition: r.Definition, Name: name,
			RoutingKey: "order." + name, Payload: json.RawMessage(`{"e":"` + name + `"}`), CreatedAt: r.UpdatedAt})
	}
	return t
}

func create(t *testing.T, s storage.Store, r *storage.Saga, events ...string) {
	t.Helper()
	existing, err := s.SagaCreate(context.Background(), change(r, []storage.Event{storage.EventStarted}, events...))
	if err != nil || existing != (ulid.ULID{}) {
		t.Fatalf("SagaCreate(%s) = %s, %v; want it created", r.ID, existing, err)
	}
}

func commit(t *testing.T, s storage.Store, tr *storage.Transition) {
	t.Helper()
	if err := s.SagaCommit(context.Background(), tr); err != nil {
		t.Fatalf("SagaCommit(%s): %v", tr.Saga.ID, err)
	}
}

func get(t *testing.T, s storage.Store, id ulid.ULID) *storage.Saga {
	t.Helper()
	r, err := s.SagaGet(context.Background(), id)
	if err != nil {
		t.Fatalf("SagaGet(%s): %v", id, err)
	}
	return r
}

func events(log []storage.LogEntry) []storage.Event {
	out := make([]storage.Event, len(log))
	for i, e := range log {
		out[i] = e.Event
	}
	return out
}

func testCreateAndGet(t *testing.T, h Harness) {
	s, ctx := open(t, h), context.Background()
	r := newSaga(1, "key-1")
	r.Data = map[string]json.RawMessage{"reserve": json.RawMessage(`{"sku":"A"}`)}
	r.Trace, r.TraceState = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "vendor=x"
	create(t, s, r, "saga.started")
	got := get(t, s, r.ID)
	if got.ID != r.ID || got.Definition != "order" || got.Fingerprint != "v1" || got.Status != saga.StatusRunning ||
		string(got.Input) != `{"n":1}` || string(got.Data["reserve"]) != `{"sku":"A"}` || len(got.Steps) != 2 ||
		got.IdempotencyKey != "key-1" || !got.CreatedAt.Equal(r.CreatedAt) || got.LogSeq != 1 ||
		got.Trace != r.Trace || got.TraceState != r.TraceState {
		t.Errorf("SagaGet = %+v, want the record as created (%+v)", got, r)
	}
	if st, err := s.SagaStatus(ctx, r.ID); err != nil || st != saga.StatusRunning {
		t.Errorf("SagaStatus = %s, %v; want running", st, err)
	}
	if log, err := s.LogList(ctx, r.ID); err != nil || !slices.Equal(events(log), []storage.Event{storage.EventStarted}) {
		t.Errorf("LogList = %v, %v; want the started entry", log, err)
	}
	if id, ok, err := s.IdemGet(ctx, "key-1"); err != nil || !ok || id != r.ID {
		t.Errorf("IdemGet = %s, %v, %v; want %s", id, ok, err, r.ID)
	}
	if _, ok, err := s.IdemGet(ctx, "key-2"); err != nil || ok {
		t.Errorf("IdemGet(unknown) = %v, %v; want not found", ok, err)
	}
	unknown := ulid.Make()
	if _, err := s.SagaGet(ctx, unknown); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("SagaGet(unknown) = %v, want ErrNotFound", err)
	}
	if _, err := s.SagaStatus(ctx, unknown); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("SagaStatus(unknown) = %v, want ErrNotFound", err)
	}
	if _, err := s.LogList(ctx, unknown); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("LogList(unknown) = %v, want ErrNotFound", err)
	}
}

func testCommit(t *testing.T, h Harness) {
	s, ctx := open(t, h), context.Background()
	r := newSaga(1, "")
	create(t, s, r)
	r.Status, r.Error = saga.StatusCompensating, "card declined"
	r.Steps[0].Status, r.Steps[0].Attempts = saga.StepCompensating, 2
	r.UpdatedAt = r.UpdatedAt.Add(time.Second)
	commit(t, s, change(r, []storage.Event{storage.EventAttemptFailed, storage.EventStatus}, "step.failed"))
	got := get(t, s, r.ID)
	if got.Status != saga.StatusCompensating || got.Error != "card declined" || got.Steps[0].Attempts != 2 ||
		got.LogSeq != 3 || !got.UpdatedAt.Equal(r.UpdatedAt) {
		t.Errorf("after a commit SagaGet = %+v, want the committed record", got)
	}
	log, err := s.LogList(ctx, r.ID)
	want := []storage.Event{storage.EventStarted, storage.EventAttemptFailed, storage.EventStatus}
	if err != nil || !slices.Equal(events(log), want) {
		t.Errorf("LogList = %v, %v; want %v in order", events(log), err, want)
	}
	for i, e := range log {
		if e.Seq != uint32(i+1) {
			t.Errorf("log entry %d has seq %d, want %d", i, e.Seq, i+1)
		}
	}
	if st, err := s.SagaStatus(ctx, r.ID); err != nil || st != saga.StatusCompensating {
		t.Errorf("SagaStatus = %s, %v; want compensating", st, err)
	}
}

// testRefused: a transition the backend refuses (here a record it cannot
// store) changes nothing: neither the record, nor its log, nor the outbox.
func testRefused(t *testing.T, h Harness) {
	s, ctx := open(t, h), context.Background()
	r := newSaga(1, "")
	create(t, s, r)
	bad := *r
	bad.Status = "bogus"
	bad.Steps = slices.Clone(r.Steps)
	if err := s.SagaCommit(ctx, change(&bad, []storage.Event{storage.EventStatus}, "never")); err == nil {
		t.Fatal("SagaCommit of a record with an unknown status succeeded, want an error")
	}
	if got := get(t, s, r.ID); got.Status != saga.StatusRunning || got.LogSeq != 1 {
		t.Errorf("after a refused commit SagaGet = %+v, want the record as before", got)
	}
	if log, err := s.LogList(ctx, r.ID); err != nil || len(log) != 1 {
		t.Errorf("after a refused commit LogList = %v, %v; want the one entry from before", log, err)
	}
	counts, _, _, err := s.OutboxStats(ctx)
	if err != nil || counts != (storage.OutboxCounts{}) {
		t.Errorf("after a refused commit the outbox holds %+v (%v), want nothing", counts, err)
	}
}

func testIdempotency(t *testing.T, h Harness) {
	s, ctx := open(t, h), context.Background()
	const racers = 16
	type result struct {
		id, existing ulid.ULID
		err          error
	}
	results := make(chan result, racers)
	var start sync.WaitGroup
	start.Add(1)
	for i := range racers {
		go func() {
			start.Wait()
			r := newSaga(i, "the-key")
			existing, err := s.SagaCreate(ctx, change(r, []storage.Event{storage.EventStarted}))
			results <- result{r.ID, existing, err}
		}()
	}
	start.Done()
	var winners []ulid.ULID
	var named []ulid.ULID
	for range racers {
		res := <-results
		if res.err != nil {
			t.Fatalf("SagaCreate: %v", res.err)
		}
		if res.existing == (ulid.ULID{}) {
			winners = append(winners, res.id)
		} else {
			named = append(named, res.existing)
		}
	}
	if len(winners) != 1 {
		t.Fatalf("%d creates with one key won, want exactly 1", len(winners))
	}
	for _, id := range named {
		if id != winners[0] {
			t.Errorf("a losing create was told the key names %s, want the winner %s", id, winners[0])
		}
	}
	if id, ok, err := s.IdemGet(ctx, "the-key"); err != nil || !ok || id != winners[0] {
		t.Errorf("IdemGet = %s, %v, %v; want the winner %s", id, ok, err, winners[0])
	}
	if counts, err := s.SagaCounts(ctx); err != nil || counts[saga.StatusRunning] != 1 {
		t.Errorf("SagaCounts = %v, %v; want the one winner", counts, err)
	}
}

func testPaging(t *testing.T, h Harness) {
	s, ctx := open(t, h), context.Background()
	const before, during = 50, 50
	want := map[ulid.ULID]bool{}
	for i := range before {
		r := newSaga(i, "")
		create(t, s, r)
		want[r.ID] = true
	}
	// Newer sagas are created while the pages are read.
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range during {
			r := newSaga(before+1000+i, "")
			if _, err := s.SagaCreate(ctx, change(r, []storage.Event{storage.EventStarted})); err != nil {
				t.Errorf("SagaCreate during the listing: %v", err)
				return
			}
		}
	}()
	seen := map[ulid.ULID]bool{}
	var cursor ulid.ULID
	var last ulid.ULID
	for page := 0; ; page++ {
		recs, more, err := s.SagaList(ctx, storage.ListOptions{Limit: 7, Before: cursor})
		if err != nil {
			t.Fatalf("SagaList: %v", err)
		}
		for _, r := range recs {
			if seen[r.ID] {
				t.Errorf("page %d repeats saga %s", page, r.ID)
			}
			if last != (ulid.ULID{}) && r.ID.Compare(last) >= 0 {
				t.Errorf("page %d: saga %s is not older than the one before it", page, r.ID)
			}
			seen[r.ID], last = true, r.ID
		}
		if !more || len(recs) == 0 {
			break
		}
		cursor = recs[len(recs)-1].ID
	}
	wg.Wait()
	for id := range want {
		if !seen[id] {
			t.Errorf("saga %s, created before the listing, is missing from its pages", id)
		}
	}
	recs, _, err := s.SagaList(ctx, storage.ListOptions{Status: saga.StatusCompleted})
	if err != nil || len(recs) != 0 {
		t.Errorf("SagaList(completed) = %d sagas, %v; want none", len(recs), err)
	}
	other := newSaga(5000, "")
	other.Definition = "refund"
	create(t, s, other)
	other.Status = saga.StatusCompleted
	commit(t, s, change(other, nil))
	for _, o := range []storage.ListOptions{{Definition: "refund"}, {Status: saga.StatusCompleted}} {
		recs, _, err := s.SagaList(ctx, o)
		if err != nil || len(recs) != 1 || recs[0].ID != other.ID {
			t.Errorf("SagaList(%+v) = %d sagas, %v; want only the refund saga", o, len(recs), err)
		}
	}
}

func testDue(t *testing.T, h Harness) {
	s, ctx := open(t, h), context.Background()
	wakes := []time.Duration{3 * time.Second, time.Second, 5 * time.Second, 2 * time.Second}
	ids := make([]ulid.ULID, len(wakes))
	for i, d := range wakes {
		r := newSaga(i, "")
		r.WakeAt = base.Add(d)
		create(t, s, r)
		ids[i] = r.ID
	}
	// Due at base+3s: the sagas waking at 1s, 2s and 3s, earliest first.
	due, next, err := s.SagaDue(ctx, base.Add(3*time.Second), 10, nil)
	if want := []ulid.ULID{ids[1], ids[3], ids[0]}; err != nil || !slices.Equal(due, want) || !next.Equal(base.Add(5*time.Second)) {
		t.Errorf("SagaDue = %v, next %v, %v; want %v, next %v", due, next, err, want, base.Add(5*time.Second))
	}
	due, _, err = s.SagaDue(ctx, base.Add(3*time.Second), 2, func(id ulid.ULID) bool { return id == ids[1] })
	if want := []ulid.ULID{ids[3], ids[0]}; err != nil || !slices.Equal(due, want) {
		t.Errorf("SagaDue with a skip and a limit = %v, %v; want %v", due, err, want)
	}
	// A saga that no longer waits leaves the due index.
	r := get(t, s, ids[1])
	r.WakeAt = time.Time{}
	commit(t, s, change(r, nil))
	due, _, err = s.SagaDue(ctx, base.Add(3*time.Second), 10, nil)
	if want := []ulid.ULID{ids[3], ids[0]}; err != nil || !slices.Equal(due, want) {
		t.Errorf("SagaDue after a wake time was cleared = %v, %v; want %v", due, err, want)
	}
	if _, next, err = s.SagaDue(ctx, base.Add(time.Hour), 10, nil); err != nil || !next.IsZero() {
		t.Errorf("SagaDue past every wake time: next %v, %v; want none", next, err)
	}
}

func testScans(t *testing.T, h Harness) {
	s, ctx := open(t, h), context.Background()
	running := newSaga(1, "")
	running.WakeAt = base.Add(time.Minute)
	create(t, s, running)
	parked := newSaga(2, "")
	parked.Parked, parked.Fingerprint = "definition order version old is not registered", "old"
	create(t, s, parked)
	done := newSaga(3, "done-key")
	create(t, s, done)
	done.Status, done.UpdatedAt = saga.StatusCompleted, base.Add(time.Hour)
	commit(t, s, change(done, []storage.Event{storage.EventStatus}))

	seen := map[ulid.ULID]time.Time{}
	err := s.SagaUnfinished(ctx, func(id ulid.ULID, st saga.Status, wake time.Time) bool {
		seen[id] = wake
		return true
	})
	if err != nil || len(seen) != 2 || !seen[running.ID].Equal(running.WakeAt) || !seen[parked.ID].IsZero() {
		t.Errorf("SagaUnfinished = %v, %v; want the running saga with its wake time and the parked one", seen, err)
	}
	if ids, err := s.SagaParked(ctx, "order", "v1", "old"); err != nil || !slices.Equal(ids, []ulid.ULID{parked.ID}) {
		t.Errorf("SagaParked = %v, %v; want the parked saga", ids, err)
	}
	if ids, err := s.SagaParked(ctx, "order", "v1"); err != nil || len(ids) != 0 {
		t.Errorf("SagaParked under another fingerprint = %v, %v; want none", ids, err)
	}
	counts, err := s.SagaCounts(ctx)
	if err != nil || counts[saga.StatusRunning] != 2 || counts[saga.StatusCompleted] != 1 {
		t.Errorf("SagaCounts = %v, %v; want 2 running, 1 completed", counts, err)
	}
	if ids, err := s.SagaFinishedBefore(ctx, saga.StatusCompleted, base.Add(time.Minute), 10); err != nil || len(ids) != 0 {
		t.Errorf("SagaFinishedBefore an earlier time = %v, %v; want none", ids, err)
	}
	ids, err := s.SagaFinishedBefore(ctx, saga.StatusCompleted, base.Add(2*time.Hour), 10)
	if err != nil || !slices.Equal(ids, []ulid.ULID{done.ID}) {
		t.Fatalf("SagaFinishedBefore = %v, %v; want the completed saga", ids, err)
	}
	if n, err := s.SagaDelete(ctx, append(ids, ulid.Make())); err != nil || n != 1 {
		t.Errorf("SagaDelete = %d, %v; want 1 (an unknown id is not counted)", n, err)
	}
	// A deleted saga leaves nothing behind that the engine reads.
	if err := s.AbortPut(ctx, running.ID, base, func(*storage.Saga) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if n, err := s.SagaDelete(ctx, []ulid.ULID{running.ID}); err != nil || n != 1 {
		t.Fatalf("SagaDelete(running) = %d, %v", n, err)
	}
	if due, _, err := s.SagaDue(ctx, base.Add(time.Hour), 10, nil); err != nil || len(due) != 0 {
		t.Errorf("SagaDue after its saga was deleted = %v, %v; want none", due, err)
	}
	if ok, err := s.AbortGet(ctx, running.ID); err != nil || ok {
		t.Errorf("AbortGet after its saga was deleted = %v, %v; want none", ok, err)
	}
	if _, err := s.SagaGet(ctx, done.ID); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("SagaGet after SagaDelete = %v, want ErrNotFound", err)
	}
	if _, ok, err := s.IdemGet(ctx, "done-key"); err != nil || ok {
		t.Errorf("the idempotency key of a deleted saga: %v, %v; want it gone", ok, err)
	}
}

func testAbort(t *testing.T, h Harness) {
	s, ctx := open(t, h), context.Background()
	r := newSaga(1, "")
	create(t, s, r)
	refused := errors.New("storagetest: refused")
	if err := s.AbortPut(ctx, r.ID, base, func(got *storage.Saga) error {
		if got.ID != r.ID || got.Status != saga.StatusRunning {
			t.Errorf("AbortPut's check saw %+v, want the stored saga", got)
		}
		return refused
	}); !errors.Is(err, refused) {
		t.Errorf("AbortPut with a refusing check = %v, want the check's error", err)
	}
	if ok, err := s.AbortGet(ctx, r.ID); err != nil || ok {
		t.Errorf("AbortGet after a refused request = %v, %v; want none", ok, err)
	}
	if err := s.AbortPut(ctx, r.ID, base, func(*storage.Saga) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.AbortGet(ctx, r.ID); err != nil || !ok {
		t.Errorf("AbortGet = %v, %v; want the request", ok, err)
	}
	if err := s.AbortPut(ctx, ulid.Make(), base, func(*storage.Saga) error { return nil }); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("AbortPut of an unknown saga = %v, want ErrNotFound", err)
	}
	tr := change(r, []storage.Event{storage.EventStatus})
	tr.ClearAbort = true
	commit(t, s, tr)
	if ok, err := s.AbortGet(ctx, r.ID); err != nil || ok {
		t.Errorf("AbortGet after a commit that cleared it = %v, %v; want none", ok, err)
	}
}

func testOutbox(t *testing.T, h Harness) {
	s, ctx := open(t, h), context.Background()
	a, b := newSaga(1, ""), newSaga(2, "")
	wake := s.OutboxWake()
	create(t, s, a, "a1")
	select {
	case <-wake:
	case <-time.After(10 * time.Second):
		t.Fatal("OutboxWake's channel was not closed after a commit that added an event")
	}
	create(t, s, b, "b1")
	commit(t, s, change(a, nil, "a2", "a3"))
	commit(t, s, change(b, nil, "b2"))

	type seen struct {
		id, saga ulid.ULID
		name     string
	}
	scan := func(after ulid.ULID) []seen {
		var out []seen
		err := s.OutboxScanNew(ctx, after, func(id, sid ulid.ULID, event func() (*storage.OutboxEvent, error)) bool {
			ev, err := event()
			if err != nil {
				t.Errorf("reading event %s: %v", id, err)
				return false
			}
			out = append(out, seen{id, sid, ev.Name})
			return true
		})
		if err != nil {
			t.Fatalf("OutboxScanNew: %v", err)
		}
		return out
	}
	all := scan(ulid.ULID{})
	var names []string
	for i, e := range all {
		names = append(names, e.name)
		if i > 0 && e.id.Compare(all[i-1].id) <= 0 {
			t.Errorf("OutboxScanNew: event %s is not after %s", e.id, all[i-1].id)
		}
	}
	if want := []string{"a1", "b1", "a2", "a3", "b2"}; !slices.Equal(names, want) {
		t.Fatalf("new events %v, want commit order %v", names, want)
	}
	if rest := scan(all[2].id); h.ScanAll && !slices.Equal(rest, all) {
		t.Errorf("OutboxScanNew (all new events) after the third event = %v, want %v", rest, all)
	} else if !h.ScanAll && (len(rest) != 2 || rest[0].name != "a3") {
		t.Errorf("OutboxScanNew after the third event = %v, want a3 and b2", rest)
	}
	calls := 0
	if err := s.OutboxScanNew(ctx, ulid.ULID{}, func(ulid.ULID, ulid.ULID, func() (*storage.OutboxEvent, error)) bool {
		calls++
		return false
	}); err != nil || calls != 1 {
		t.Errorf("OutboxScanNew whose fn returns false called it %d times (%v), want once", calls, err)
	}

	// a1 produced; b1 failed once, then for good; an event gone meanwhile is -1.
	attempts, err := s.OutboxMark(ctx, []ulid.ULID{all[0].id}, []storage.OutboxFailure{
		{ID: all[1].id, Error: "no route"}, {ID: ulid.Make(), Error: "gone"}}, base)
	if err != nil || !slices.Equal(attempts, []int{1, -1}) {
		t.Fatalf("OutboxMark = %v, %v; want [1 -1]", attempts, err)
	}
	if attempts, err = s.OutboxMark(ctx, nil, []storage.OutboxFailure{{ID: all[1].id, Error: "no route", Final: true}}, base); err != nil || !slices.Equal(attempts, []int{2}) {
		t.Fatalf("OutboxMark(final) = %v, %v; want [2]", attempts, err)
	}
	counts, oldestNew, oldestNP, err := s.OutboxStats(ctx)
	if err != nil || counts != (storage.OutboxCounts{New: 3, Produced: 1, NotProduced: 1}) || oldestNew.IsZero() || oldestNP.IsZero() {
		t.Errorf("OutboxStats = %+v, %v, %v, %v; want 3 new, 1 produced, 1 not_produced with their ages", counts, oldestNew, oldestNP, err)
	}
	if sagas, err := s.OutboxNotProducedSagas(ctx); err != nil || !slices.Equal(sagas, []ulid.ULID{b.ID}) {
		t.Errorf("OutboxNotProducedSagas = %v, %v; want saga b", sagas, err)
	}
	ev, err := s.OutboxGet(ctx, all[1].id)
	if err != nil || ev.Status != storage.OutboxNotProduced || ev.Attempts != 2 || ev.LastError != "no route" || ev.SagaID != b.ID {
		t.Errorf("OutboxGet = %+v, %v; want b1 not_produced after 2 attempts", ev, err)
	}
	if _, err := s.OutboxGet(ctx, ulid.Make()); !errors.Is(err, storage.ErrEventNotFound) {
		t.Errorf("OutboxGet(unknown) = %v, want ErrEventNotFound", err)
	}
	page, more, err := s.OutboxList(ctx, storage.OutboxListOptions{Status: storage.OutboxNew, Limit: 2})
	if err != nil || len(page) != 2 || !more || page[0].Name != "a2" {
		t.Errorf("OutboxList(new, 2) = %d events, more %v, %v; want a2 and a3 and more", len(page), more, err)
	}

	requeues := s.OutboxRequeues()
	if changed, err := s.OutboxRequeue(ctx, all[1].id); err != nil || !changed {
		t.Errorf("OutboxRequeue(not_produced) = %v, %v; want it new again", changed, err)
	}
	if ev, err := s.OutboxGet(ctx, all[1].id); err != nil || ev.Status != storage.OutboxNew || ev.Attempts != 0 {
		t.Errorf("after OutboxRequeue: %+v, %v; want new with a fresh attempt budget", ev, err)
	}
	if _, err := s.OutboxRequeue(ctx, ulid.Make()); !errors.Is(err, storage.ErrEventNotFound) {
		t.Errorf("OutboxRequeue(unknown) = %v, want ErrEventNotFound", err)
	}
	if err := s.OutboxDiscard(ctx, ulid.Make()); !errors.Is(err, storage.ErrEventNotFound) {
		t.Errorf("OutboxDiscard(unknown) = %v, want ErrEventNotFound", err)
	}
	if changed, err := s.OutboxRequeue(ctx, all[1].id); err != nil || changed {
		t.Errorf("OutboxRequeue(new) = %v, %v; want no change", changed, err)
	}
	if s.OutboxRequeues() <= requeues {
		t.Error("OutboxRequeues did not grow after a re-queue")
	}
	if err := s.OutboxDiscard(ctx, all[1].id); !errors.Is(err, storage.ErrEventPending) {
		t.Errorf("OutboxDiscard(new) = %v, want ErrEventPending", err)
	}
	if err := s.OutboxDiscard(ctx, all[0].id); err != nil {
		t.Errorf("OutboxDiscard(produced) = %v", err)
	}
	if _, err := s.OutboxMark(ctx, []ulid.ULID{all[2].id}, nil, base); err != nil {
		t.Fatal(err)
	}
	if n, _, err := s.OutboxPrune(ctx, base.Add(-time.Second), 10); err != nil || n != 0 {
		t.Errorf("OutboxPrune before the events were produced = %d, %v; want 0", n, err)
	}
	if n, more, err := s.OutboxPrune(ctx, base.Add(time.Second), 10); err != nil || n != 1 || more {
		t.Errorf("OutboxPrune = %d, %v, %v; want the one produced event", n, more, err)
	}
	counts, _, _, err = s.OutboxStats(ctx)
	if err != nil || counts != (storage.OutboxCounts{New: 3}) {
		t.Errorf("OutboxStats at the end = %+v, %v; want 3 new", counts, err)
	}
	// Every not_produced event re-queued at once; discarding one counts as
	// a re-queue too (its saga may go on).
	for _, e := range all[3:] {
		if _, err := s.OutboxMark(ctx, nil, []storage.OutboxFailure{{ID: e.id, Error: "x", Final: true}}, base); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := s.OutboxRequeueAll(ctx, 0); err != nil || n != 2 {
		t.Errorf("OutboxRequeueAll = %d, %v; want the 2 not_produced events", n, err)
	}
	if _, err := s.OutboxMark(ctx, nil, []storage.OutboxFailure{{ID: all[4].id, Error: "x", Final: true}}, base); err != nil {
		t.Fatal(err)
	}
	requeues = s.OutboxRequeues()
	if err := s.OutboxDiscard(ctx, all[4].id); err != nil || s.OutboxRequeues() <= requeues {
		t.Errorf("OutboxDiscard(not_produced) = %v, requeues %d -> %d; want it counted", err, requeues, s.OutboxRequeues())
	}
}

func testBreakersAndDefinitions(t *testing.T, h Harness) {
	s, ctx := open(t, h), context.Background()
	if st, err := s.BreakerGet(ctx, "pay"); err != nil || st != nil {
		t.Errorf("BreakerGet(unknown) = %q, %v; want nil", st, err)
	}
	if err := s.BreakerPut(ctx, "pay", []byte(`{"state":2}`)); err != nil {
		t.Fatal(err)
	}
	if st, err := s.BreakerGet(ctx, "pay"); err != nil || string(st) != `{"state":2}` {
		t.Errorf("BreakerGet = %q, %v", st, err)
	}
	for _, v := range []string{"v1", "v2"} {
		if created, err := s.DefinitionPut(ctx, "order", v, []byte(`{"steps":"`+v+`"}`)); err != nil || !created {
			t.Fatalf("DefinitionPut(%s) = %v, %v; want created", v, created, err)
		}
	}
	if created, err := s.DefinitionPut(ctx, "order", "v1", []byte(`{"steps":"v1"}`)); err != nil || created {
		t.Errorf("DefinitionPut of a stored version = %v, %v; want not created", created, err)
	}
	if sd, ok, err := s.DefinitionGet(ctx, "order", ""); err != nil || !ok || sd.Version != "v1" || !sd.Latest {
		t.Errorf("DefinitionGet(latest) = %+v, %v, %v; want v1, put last", sd, ok, err)
	}
	if sd, ok, err := s.DefinitionGet(ctx, "order", "v2"); err != nil || !ok || string(sd.Spec) != `{"steps":"v2"}` {
		t.Errorf("DefinitionGet(v2) = %+v, %v, %v", sd, ok, err)
	}
	list, err := s.DefinitionList(ctx)
	if err != nil || len(list) != 2 || list[len(list)-1].Version != "v1" || !list[len(list)-1].Latest {
		t.Errorf("DefinitionList = %v, %v; want both versions, the latest (v1) last", list, err)
	}
}

func testConcurrentWriters(t *testing.T, h Harness) {
	s, ctx := open(t, h), context.Background()
	const writers, commits = 8, 40
	var wg sync.WaitGroup
	ids := make([]ulid.ULID, writers)
	for w := range writers {
		r := newSaga(w, "")
		create(t, s, r)
		ids[w] = r.ID
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range commits {
				r.Steps[0].Attempts = i + 1
				if err := s.SagaCommit(ctx, change(r, []storage.Event{storage.EventAttemptFailed}, "tick")); err != nil {
					t.Errorf("writer %d, commit %d: %v", w, i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	for _, id := range ids {
		r := get(t, s, id)
		log, err := s.LogList(ctx, id)
		if r.Steps[0].Attempts != commits || r.LogSeq != commits+1 || err != nil || len(log) != commits+1 {
			t.Errorf("saga %s: attempts %d, log seq %d, %d entries (%v); want every commit", id, r.Steps[0].Attempts, r.LogSeq, len(log), err)
		}
	}
	counts, _, _, err := s.OutboxStats(ctx)
	if err != nil || counts.New != writers*commits {
		t.Errorf("outbox %+v, %v; want %d new events", counts, err, writers*commits)
	}
}

func testPersistence(t *testing.T, h Harness) {
	if h.Reopen == nil {
		t.Skip("the harness cannot reopen a store")
	}
	s, ctx := h.Open(t), context.Background()
	r := newSaga(1, "kept")
	r.WakeAt = base.Add(time.Minute)
	create(t, s, r, "e1")
	if err := s.AbortPut(ctx, r.ID, base, func(*storage.Saga) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if err := s.BreakerPut(ctx, "pay", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.DefinitionPut(ctx, "order", "v1", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	s = h.Reopen(t, s)
	t.Cleanup(func() { _ = s.Close() })
	if got := get(t, s, r.ID); got.Status != saga.StatusRunning || !got.WakeAt.Equal(r.WakeAt) {
		t.Errorf("after reopening SagaGet = %+v", got)
	}
	if id, ok, err := s.IdemGet(ctx, "kept"); err != nil || !ok || id != r.ID {
		t.Errorf("after reopening IdemGet = %s, %v, %v", id, ok, err)
	}
	if due, _, err := s.SagaDue(ctx, base.Add(time.Hour), 10, nil); err != nil || !slices.Equal(due, []ulid.ULID{r.ID}) {
		t.Errorf("after reopening SagaDue = %v, %v", due, err)
	}
	if ok, err := s.AbortGet(ctx, r.ID); err != nil || !ok {
		t.Errorf("after reopening AbortGet = %v, %v", ok, err)
	}
	if log, err := s.LogList(ctx, r.ID); err != nil || len(log) != 1 {
		t.Errorf("after reopening LogList = %v, %v", log, err)
	}
	if counts, _, _, err := s.OutboxStats(ctx); err != nil || counts.New != 1 {
		t.Errorf("after reopening OutboxStats = %+v, %v", counts, err)
	}
	if st, err := s.BreakerGet(ctx, "pay"); err != nil || st == nil {
		t.Errorf("after reopening BreakerGet = %q, %v", st, err)
	}
	if _, ok, err := s.DefinitionGet(ctx, "order", "v1"); err != nil || !ok {
		t.Errorf("after reopening DefinitionGet = %v, %v", ok, err)
	}
	// Events committed after the reopen sort after those before it.
	var before []ulid.ULID
	_ = s.OutboxScanNew(ctx, ulid.ULID{}, func(id, _ ulid.ULID, _ func() (*storage.OutboxEvent, error)) bool {
		before = append(before, id)
		return true
	})
	commit(t, s, change(r, nil, "e2"))
	var after []ulid.ULID
	_ = s.OutboxScanNew(ctx, before[len(before)-1], func(id, _ ulid.ULID, _ func() (*storage.OutboxEvent, error)) bool {
		after = append(after, id)
		return true
	})
	switch {
	case h.ScanAll && (len(after) != len(before)+1 || !slices.Equal(after[:len(before)], before)):
		t.Errorf("an event committed after reopening: new events %v, want %v and one more", after, before)
	case !h.ScanAll && len(after) != 1:
		t.Errorf("an event committed after reopening: %d new events after the old ones, want 1", len(after))
	}
}
