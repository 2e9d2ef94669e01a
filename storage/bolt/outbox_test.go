package bolt_test

import (
	"bytes"
	crand "crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/errors"
	"github.com/oklog/ulid/v2"
	"go.etcd.io/bbolt"

	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
	"github.com/sagad/sagad/storage/bolt"
)

// wakeTimeout bounds the wait for a wake channel that must be closed. The
// close happens before Update returns, so reaching it means the feature is
// broken, not that the machine is slow.
const wakeTimeout = 5 * time.Second

// outboxEvent returns an event with every content field set.
func outboxEvent(sagaID ulid.ULID, name, payload string) *storage.OutboxEvent {
	return &storage.OutboxEvent{
		SagaID: sagaID, Definition: "order", Step: "charge", Name: name, Exchange: "payments",
		RoutingKey: "rk." + name, Payload: json.RawMessage(payload),
		Headers: map[string]string{"tenant": "acme", "trace": "t-1"}, CreatedAt: base,
	}
}

// simpleEvents returns n events named e0, e1, ... of one saga, created a
// millisecond apart from base.
func simpleEvents(n int) []*storage.OutboxEvent {
	sid := ids(1)[0]
	out := make([]*storage.OutboxEvent, n)
	for i := range out {
		out[i] = outboxEvent(sid, fmt.Sprintf("e%d", i), fmt.Sprintf(`{"n":%d}`, i))
		out[i].CreatedAt = base.Add(time.Duration(i) * time.Millisecond)
	}
	return out
}

// update runs fn in a write transaction and fails the test on error.
func update(t *testing.T, db *bolt.DB, what string, fn func(tx *bolt.Tx) error) {
	t.Helper()
	if err := db.Update(fn); err != nil {
		t.Fatalf("Update(%s): %v", what, err)
	}
}

// putEvents encodes evs (payloads longer than compressAbove compressed) and
// stores them in one Update, returning the ids OutboxPut assigned, in order.
func putEvents(t *testing.T, db *bolt.DB, compressAbove int, evs ...*storage.OutboxEvent) []ulid.ULID {
	t.Helper()
	encs := make([]*bolt.EncodedEvent, len(evs))
	for i, ev := range evs {
		encs[i] = bolt.EncodeEvent(ev, compressAbove)
	}
	var out []ulid.ULID
	update(t, db, "OutboxPut", func(tx *bolt.Tx) error {
		out = out[:0] // fn may run again in a retried group
		for _, e := range encs {
			id, err := tx.OutboxPut(e)
			if err != nil {
				return err
			}
			out = append(out, id)
		}
		return nil
	})
	return out
}

// getEvent reads one event and fails the test if it cannot.
func getEvent(t *testing.T, db *bolt.DB, id ulid.ULID) *storage.OutboxEvent {
	t.Helper()
	var ev *storage.OutboxEvent
	view(t, db, func(tx *bolt.Tx) error {
		var err error
		ev, err = tx.OutboxGet(id)
		return err
	})
	return ev
}

// scanIDs collects what OutboxScan reports for status s after after.
func scanIDs(tx *bolt.Tx, s storage.OutboxStatus, after ulid.ULID) []ulid.ULID {
	var out []ulid.ULID
	tx.OutboxScan(s, after, func(id ulid.ULID) bool { out = append(out, id); return true })
	return out
}

// requireCounts checks OutboxCounts against want, and against what the
// status index and the record bucket actually hold.
func requireCounts(t *testing.T, db *bolt.DB, want storage.OutboxCounts) {
	t.Helper()
	view(t, db, func(tx *bolt.Tx) error {
		if got := tx.OutboxCounts(); got != want {
			t.Errorf("OutboxCounts() = %+v, want %+v", got, want)
		}
		indexed := storage.OutboxCounts{
			New:         int64(len(scanIDs(tx, storage.OutboxNew, ulid.ULID{}))),
			Produced:    int64(len(scanIDs(tx, storage.OutboxProduced, ulid.ULID{}))),
			NotProduced: int64(len(scanIDs(tx, storage.OutboxNotProduced, ulid.ULID{}))),
		}
		if indexed != want {
			t.Errorf("status index holds %+v, want %+v", indexed, want)
		}
		records := int64(tx.Bolt().Bucket([]byte("outbox")).Stats().KeyN)
		if total := want.New + want.Produced + want.NotProduced; records != total {
			t.Errorf("outbox bucket holds %d records, want %d (one per indexed event)", records, total)
		}
		return nil
	})
}

// requireStatus checks an event's status and the time it reached it.
func requireStatus(t *testing.T, db *bolt.DB, id ulid.ULID, want storage.OutboxStatus, at time.Time) {
	t.Helper()
	ev := getEvent(t, db, id)
	if ev.Status != want || !ev.StatusAt.Equal(at) {
		t.Errorf("event %s: status %q at %v, want %q at %v", id, ev.Status, ev.StatusAt, want, at)
	}
}

// requireContent checks that got carries want's content fields.
func requireContent(t *testing.T, got, want *storage.OutboxEvent) {
	t.Helper()
	if got.SagaID != want.SagaID || got.Definition != want.Definition || got.Step != want.Step ||
		got.Name != want.Name || got.Exchange != want.Exchange || got.RoutingKey != want.RoutingKey {
		t.Errorf("event %s: identity fields\ngot  saga=%s def=%q step=%q name=%q exchange=%q rk=%q\nwant saga=%s def=%q step=%q name=%q exchange=%q rk=%q",
			got.ID, got.SagaID, got.Definition, got.Step, got.Name, got.Exchange, got.RoutingKey,
			want.SagaID, want.Definition, want.Step, want.Name, want.Exchange, want.RoutingKey)
	}
	if !bytes.Equal(got.Payload, want.Payload) {
		t.Errorf("event %s: payload %q (%d bytes), want %q (%d bytes)", got.ID, trim(got.Payload), len(got.Payload),
			trim(want.Payload), len(want.Payload))
	}
	if !maps.Equal(got.Headers, want.Headers) {
		t.Errorf("event %s: headers %v, want %v", got.ID, got.Headers, want.Headers)
	}
	if !got.CreatedAt.Equal(want.CreatedAt) || got.CreatedAt.IsZero() != want.CreatedAt.IsZero() {
		t.Errorf("event %s: created at %v, want %v", got.ID, got.CreatedAt, want.CreatedAt)
	}
}

func trim(b []byte) string {
	if len(b) > 40 {
		return string(b[:40]) + "..."
	}
	return string(b)
}

// eventIn stores one event and moves it to status s (produced at at, or
// failed for good at at), returning its id.
func eventIn(t *testing.T, db *bolt.DB, s storage.OutboxStatus, at time.Time) ulid.ULID {
	t.Helper()
	id := putEvents(t, db, 0, simpleEvents(1)...)[0]
	switch s {
	case storage.OutboxProduced:
		update(t, db, "OutboxProduced", func(tx *bolt.Tx) error {
			n, err := tx.OutboxProduced([]ulid.ULID{id}, at)
			if err == nil && n != 1 {
				err = errors.Newf("OutboxProduced marked %d events, want 1", n)
			}
			return err
		})
	case storage.OutboxNotProduced:
		update(t, db, "OutboxFailed", func(tx *bolt.Tx) error {
			_, err := tx.OutboxFailed(id, "broker said no", true, at)
			return err
		})
	}
	return id
}

func requireClosed(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(wakeTimeout):
		t.Fatalf("%s: OutboxWake channel still open after %s, want it closed by the commit", what, wakeTimeout)
	}
}

// requireOpen checks without waiting: DB.Update returns only after the
// commit has closed whatever it was going to close.
func requireOpen(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
		t.Fatalf("%s: OutboxWake channel closed, want it open (no outbox event was added or re-queued)", what)
	default:
	}
}

func requireIncreasing(t *testing.T, what string, got []ulid.ULID) {
	t.Helper()
	for i := 1; i < len(got); i++ {
		if got[i].Compare(got[i-1]) <= 0 {
			t.Fatalf("%s: id %d (%s) is not greater than id %d (%s)", what, i, got[i], i-1, got[i-1])
		}
	}
}

func TestOutboxRoundTrip(t *testing.T) {
	t.Parallel()
	sid := ids(1)[0]
	tests := []struct {
		name string
		ev   *storage.OutboxEvent
	}{
		{"every field", &storage.OutboxEvent{
			SagaID: sid, Definition: "order", Step: "charge", Name: "payment.charged", Exchange: "payments",
			RoutingKey: "payment.charged.eu", Payload: json.RawMessage(`{"amount":42,"currency":"EUR","tags":["a","b"]}`),
			Headers:   map[string]string{"tenant": "acme", "empty": "", "quote": `"q" \ nl` + "\n"},
			CreatedAt: time.Date(2026, 11, 23, 10, 0, 0, 123456789, time.UTC),
		}},
		{"lifecycle event without step, exchange or headers", &storage.OutboxEvent{
			SagaID: sid, Definition: "order", Name: "saga.completed", RoutingKey: "saga.completed",
			Payload: json.RawMessage(`null`), CreatedAt: base,
		}},
		{"zero created time stays zero", &storage.OutboxEvent{
			SagaID: sid, Definition: "d", Name: "n", RoutingKey: "n", Payload: json.RawMessage(`{}`),
		}},
		{"bytes that are not text", &storage.OutboxEvent{
			SagaID: sid, Definition: "\x00\xff", Step: "ß\u2028", Name: "n\x00", Exchange: "\xfe", RoutingKey: "\n",
			Headers: map[string]string{"\x00": "\xff", "": "empty name"}, Payload: json.RawMessage(`"é"`),
			CreatedAt: time.Unix(0, -1),
		}},
		{"fields OutboxPut assigns are ignored", &storage.OutboxEvent{
			ID: ulid.Make(), SagaID: sid, Definition: "order", Name: "n", RoutingKey: "k", Payload: json.RawMessage(`1`),
			CreatedAt: base, Status: storage.OutboxNotProduced, StatusAt: base, Attempts: 7, LastError: "old",
			Compressed: true,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			db, _ := openDB(t, nil)
			id := putEvents(t, db, 1<<20, tt.ev)[0]
			if id == tt.ev.ID || id == (ulid.ULID{}) {
				t.Fatalf("OutboxPut returned id %s, want a new one", id)
			}
			got := getEvent(t, db, id)
			if got.ID != id {
				t.Errorf("OutboxGet(%s).ID = %s", id, got.ID)
			}
			requireContent(t, got, tt.ev)
			if got.Status != storage.OutboxNew || !got.StatusAt.IsZero() || got.Attempts != 0 || got.LastError != "" ||
				got.Compressed {
				t.Errorf("fresh event: status=%q status_at=%v attempts=%d last_error=%q compressed=%v; want new, zero, 0, \"\", false",
					got.Status, got.StatusAt, got.Attempts, got.LastError, got.Compressed)
			}
			view(t, db, func(tx *bolt.Tx) error {
				if s, ok := tx.OutboxSaga(id); !ok || s != tt.ev.SagaID {
					t.Errorf("OutboxSaga(%s) = %s, %v; want %s, true", id, s, ok, tt.ev.SagaID)
				}
				return nil
			})
			requireCounts(t, db, storage.OutboxCounts{New: 1})
		})
	}
}

func TestOutboxGetUnknown(t *testing.T) {
	t.Parallel()
	db, _ := openDB(t, nil)
	putEvents(t, db, 0, simpleEvents(1)...)
	view(t, db, func(tx *bolt.Tx) error {
		ev, err := tx.OutboxGet(ulid.Make())
		if ev != nil {
			t.Errorf("OutboxGet(unknown) = %+v, want nil", ev)
		}
		requireIs(t, "OutboxGet(unknown)", err, storage.ErrEventNotFound)
		if s, ok := tx.OutboxSaga(ulid.Make()); ok {
			t.Errorf("OutboxSaga(unknown) = %s, true; want false", s)
		}
		return nil
	})
}

// TestOutboxSameTransaction reads and changes events in the transaction
// that wrote them, as a group commit may do when an operator's request
// shares a commit with another writer.
func TestOutboxSameTransaction(t *testing.T) {
	t.Parallel()
	db, _ := openDB(t, nil)
	enc := bolt.EncodeEvent(simpleEvents(1)[0], 0)
	update(t, db, "put then read", func(tx *bolt.Tx) error {
		id, err := tx.OutboxPut(enc)
		if err != nil {
			return err
		}
		if _, err := tx.OutboxGet(id); err != nil {
			t.Errorf("OutboxGet of an event put in the same transaction: %v", err)
		}
		if n, err := tx.OutboxFailed(id, "x", false, base); err != nil || n != 1 {
			t.Errorf("OutboxFailed in the same transaction = %d, %v; want 1, nil", n, err)
		}
		if n, err := tx.OutboxProduced([]ulid.ULID{id}, base); err != nil || n != 1 {
			t.Errorf("OutboxProduced in the same transaction = %d, %v; want 1, nil", n, err)
		}
		if ok, err := tx.OutboxRequeue(id); err != nil || !ok {
			t.Errorf("OutboxRequeue = %v, %v; want true, nil", ok, err)
		}
		if _, err := tx.OutboxGet(id); err != nil {
			t.Errorf("OutboxGet of an event re-queued in the same transaction: %v", err)
		}
		if err := tx.OutboxDelete(id); err != nil {
			t.Errorf("OutboxDelete of an event re-queued in the same transaction: %v", err)
		}
		return nil
	})
	requireCounts(t, db, storage.OutboxCounts{})
}

// storedLen returns the length of an event's stored record.
func storedLen(t *testing.T, db *bolt.DB, id ulid.ULID) int {
	t.Helper()
	n := -1
	view(t, db, func(tx *bolt.Tx) error {
		n = len(tx.Bolt().Bucket([]byte("outbox")).Get(id[:]))
		return nil
	})
	return n
}

func TestOutboxCompression(t *testing.T) {
	t.Parallel()
	var items []string
	for i := range 100 {
		items = append(items, fmt.Sprintf(`{"sku":"item-%03d","qty":1,"warehouse":"north"}`, i))
	}
	big := "[" + strings.Join(items, ",") + "]" // repetitive JSON: compresses well
	random := make([]byte, 4096)
	if _, err := crand.Read(random); err != nil {
		t.Fatal(err)
	}
	// Raw random bytes in a string: deflate cannot shrink them. (The outbox
	// stores bytes; JSON validity is the saga package's business.)
	incompressible := `"` + string(random) + `"`
	// The same bytes as base64 text still shrink: 6 bits of entropy a byte.
	b64 := `"` + base64.StdEncoding.EncodeToString(random) + `"`
	tests := []struct {
		name          string
		payload       string
		compressAbove int
		want          bool
	}{
		{"above the threshold", big, 100, true},
		{"one byte above the threshold", big, len(big) - 1, true},
		{"equal to the threshold", big, len(big), false},
		{"below the threshold", `{"a":1}`, 100, false},
		{"threshold zero never compresses", big, 0, false},
		{"negative threshold never compresses", big, -1, false},
		{"incompressible random bytes", incompressible, 16, false},
		{"short payload that deflate would grow", `"k3Zq9"`, 1, false},
		{"base64 text of random bytes", b64, 16, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			db, _ := openDB(t, nil)
			ev := outboxEvent(ids(1)[0], "compressed", tt.payload)
			id := putEvents(t, db, tt.compressAbove, ev)[0]
			got := getEvent(t, db, id)
			if got.Compressed != tt.want {
				t.Errorf("Compressed = %v, want %v (payload %d bytes, threshold %d)", got.Compressed, tt.want,
					len(tt.payload), tt.compressAbove)
			}
			requireContent(t, got, ev)
			n := storedLen(t, db, id)
			if tt.want && n >= len(tt.payload) {
				t.Errorf("record is %d bytes for a %d-byte payload, want it smaller (compressed)", n, len(tt.payload))
			}
			if !tt.want && n <= len(tt.payload) {
				t.Errorf("record is %d bytes for a %d-byte payload, want the payload stored as is", n, len(tt.payload))
			}
		})
	}
}

func TestOutboxIDsIncrease(t *testing.T) {
	t.Parallel()
	db, path := openDB(t, nil)
	var all []ulid.ULID
	all = append(all, putEvents(t, db, 0, simpleEvents(50)...)...) // one transaction
	requireIncreasing(t, "ids within one transaction", all)
	for range 5 {
		all = append(all, putEvents(t, db, 0, simpleEvents(1)...)...) // one transaction each
	}
	requireIncreasing(t, "ids across transactions", all)

	// Concurrent writers share group commits; their ids still follow key order.
	errs := make(chan error, 8)
	for range 8 {
		go func() {
			enc := bolt.EncodeEvent(simpleEvents(1)[0], 0)
			errs <- db.Update(func(tx *bolt.Tx) error { _, err := tx.OutboxPut(enc); return err })
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Fatalf("concurrent OutboxPut: %v", err)
		}
	}
	view(t, db, func(tx *bolt.Tx) error {
		got := scanIDs(tx, storage.OutboxNew, ulid.ULID{})
		if len(got) != len(all)+8 || !slices.Equal(got[:len(all)], all) {
			t.Errorf("OutboxScan(new) = %d ids, want the %d put in order followed by 8 more", len(got), len(all))
		}
		return nil
	})

	// Move the newest event to an id far in the future, as if the clock had
	// stepped back since it was written; after a reopen, new ids must still
	// sort after it.
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	future := ulid.MustNew(ulid.Timestamp(time.Now().Add(50*365*24*time.Hour)), crand.Reader)
	boltFile(t, path, func(tx *bbolt.Tx) error {
		ob, idx := tx.Bucket([]byte("outbox")), tx.Bucket([]byte("outbox_status"))
		k, v := ob.Cursor().Last()
		k, v = slices.Clone(k), slices.Clone(v)
		if err := ob.Delete(k); err != nil {
			return err
		}
		if err := idx.Delete(append([]byte{1}, k...)); err != nil {
			return err
		}
		if err := ob.Put(future[:], v); err != nil {
			return err
		}
		return idx.Put(append([]byte{1}, future[:]...), []byte{})
	})
	db2, err := bolt.Open(path, &bolt.Options{NoSync: true})
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	t.Cleanup(func() { db2.Close() })
	if _, err := func() (*storage.OutboxEvent, error) {
		var ev *storage.OutboxEvent
		err := db2.View(func(tx *bolt.Tx) (err error) { ev, err = tx.OutboxGet(future); return err })
		return ev, err
	}(); err != nil {
		t.Fatalf("OutboxGet(moved event) after reopen: %v", err)
	}
	after := putEvents(t, db2, 0, simpleEvents(3)...)
	if after[0].Compare(future) <= 0 {
		t.Fatalf("first id after reopen %s (%v) is not after the newest stored %s (%v)", after[0],
			ulid.Time(after[0].Time()), future, ulid.Time(future.Time()))
	}
	requireIncreasing(t, "ids after reopen", after)
	requireCounts(t, db2, storage.OutboxCounts{New: int64(len(all) + 8 + 3)})
}

func TestOutboxScan(t *testing.T) {
	t.Parallel()
	db, _ := openDB(t, nil)
	id := putEvents(t, db, 0, simpleEvents(8)...)
	at := time.Now().Add(time.Hour)
	update(t, db, "move", func(tx *bolt.Tx) error {
		if _, err := tx.OutboxProduced([]ulid.ULID{id[1], id[3], id[4]}, at); err != nil {
			return err
		}
		_, err := tx.OutboxFailed(id[6], "no route", true, at)
		return err
	})
	newIDs := []ulid.ULID{id[0], id[2], id[5], id[7]}
	produced := []ulid.ULID{id[1], id[3], id[4]}
	tests := []struct {
		name   string
		status storage.OutboxStatus
		after  ulid.ULID
		want   []ulid.ULID
	}{
		{"new from the start", storage.OutboxNew, ulid.ULID{}, newIDs},
		{"new after its first (exclusive)", storage.OutboxNew, id[0], newIDs[1:]},
		{"new after an id in another status", storage.OutboxNew, id[3], []ulid.ULID{id[5], id[7]}},
		{"new after its last", storage.OutboxNew, id[7], nil},
		{"new after an unknown later id", storage.OutboxNew, ulid.MustNew(ulid.MaxTime(), nil), nil},
		{"produced", storage.OutboxProduced, ulid.ULID{}, produced},
		{"produced after the first", storage.OutboxProduced, id[1], produced[1:]},
		{"not produced", storage.OutboxNotProduced, ulid.ULID{}, []ulid.ULID{id[6]}},
		{"not produced after it", storage.OutboxNotProduced, id[6], nil},
		{"unknown status", storage.OutboxStatus("lost"), ulid.ULID{}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			view(t, db, func(tx *bolt.Tx) error {
				if got := scanIDs(tx, tt.status, tt.after); !slices.Equal(got, tt.want) {
					t.Errorf("OutboxScan(%q, after %s) = %v, want %v", tt.status, tt.after, got, tt.want)
				}
				return nil
			})
		})
	}
	t.Run("stops when fn returns false", func(t *testing.T) {
		t.Parallel()
		view(t, db, func(tx *bolt.Tx) error {
			var got []ulid.ULID
			tx.OutboxScan(storage.OutboxNew, ulid.ULID{}, func(id ulid.ULID) bool {
				got = append(got, id)
				return len(got) < 2
			})
			if !slices.Equal(got, newIDs[:2]) {
				t.Errorf("OutboxScan stopping after 2 saw %v, want %v", got, newIDs[:2])
			}
			return nil
		})
	})
}

func TestOutboxProduced(t *testing.T) {
	t.Parallel()
	db, _ := openDB(t, nil)
	evs := simpleEvents(5)
	id := putEvents(t, db, 0, evs...)
	requireCounts(t, db, storage.OutboxCounts{New: 5})
	t1, t2 := time.Now().Add(time.Minute), time.Now().Add(2*time.Minute)

	steps := []struct {
		name   string
		ids    []ulid.ULID
		at     time.Time
		want   int
		counts storage.OutboxCounts
	}{
		{"two new and an unknown id", []ulid.ULID{id[0], id[1], ulid.Make()}, t1, 2, storage.OutboxCounts{New: 2, Produced: 2, NotProduced: 1}},
		{"already produced and a duplicate", []ulid.ULID{id[0], id[2], id[2]}, t2, 1, storage.OutboxCounts{New: 1, Produced: 3, NotProduced: 1}},
		{"nothing", nil, t2, 0, storage.OutboxCounts{New: 1, Produced: 3, NotProduced: 1}},
		{"not produced is skipped", []ulid.ULID{id[4]}, t2, 0, storage.OutboxCounts{New: 1, Produced: 3, NotProduced: 1}},
	}
	update(t, db, "fail id[4] for good", func(tx *bolt.Tx) error {
		_, err := tx.OutboxFailed(id[4], "gave up", true, t1)
		return err
	})
	requireCounts(t, db, storage.OutboxCounts{New: 4, NotProduced: 1})
	for _, st := range steps {
		var n int
		update(t, db, st.name, func(tx *bolt.Tx) (err error) {
			n, err = tx.OutboxProduced(st.ids, st.at)
			return err
		})
		if n != st.want {
			t.Errorf("%s: OutboxProduced = %d, want %d", st.name, n, st.want)
		}
		requireCounts(t, db, st.counts)
	}
	requireStatus(t, db, id[0], storage.OutboxProduced, t1) // not re-stamped by the second call
	requireStatus(t, db, id[1], storage.OutboxProduced, t1)
	requireStatus(t, db, id[2], storage.OutboxProduced, t2)
	requireStatus(t, db, id[3], storage.OutboxNew, time.Time{})
	requireStatus(t, db, id[4], storage.OutboxNotProduced, t1)
	for i := range 4 {
		requireContent(t, getEvent(t, db, id[i]), evs[i]) // the records are untouched
	}
}

func TestOutboxFailed(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		payload       string
		compressAbove int
	}{
		{"plain payload", `{"order":"o-1"}`, 0},
		{"compressed payload", `{"lines":"` + strings.Repeat("abc", 500) + `"}`, 64},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			db, _ := openDB(t, nil)
			ev := outboxEvent(ids(1)[0], "payment.charged", tt.payload)
			id := putEvents(t, db, tt.compressAbove, ev)[0]
			wantCompressed := tt.compressAbove > 0
			at := time.Now().Add(time.Hour)
			for attempt, msg := range []string{"connection reset", strings.Repeat("long error ", 100), ""} {
				var n int
				update(t, db, "OutboxFailed", func(tx *bolt.Tx) (err error) {
					n, err = tx.OutboxFailed(id, msg, false, at)
					return err
				})
				if n != attempt+1 {
					t.Errorf("OutboxFailed #%d = %d, want %d", attempt+1, n, attempt+1)
				}
				got := getEvent(t, db, id)
				requireContent(t, got, ev)
				if got.Attempts != attempt+1 || got.LastError != msg || got.Status != storage.OutboxNew ||
					!got.StatusAt.IsZero() || got.Compressed != wantCompressed {
					t.Errorf("after failure #%d: attempts=%d last_error=%q status=%q status_at=%v compressed=%v; want %d, %q, new, zero, %v",
						attempt+1, got.Attempts, trim([]byte(got.LastError)), got.Status, got.StatusAt, got.Compressed,
						attempt+1, trim([]byte(msg)), wantCompressed)
				}
				requireCounts(t, db, storage.OutboxCounts{New: 1})
			}
			var n int
			update(t, db, "final OutboxFailed", func(tx *bolt.Tx) (err error) {
				n, err = tx.OutboxFailed(id, "no route", true, at)
				return err
			})
			if n != 4 {
				t.Errorf("final OutboxFailed = %d, want 4", n)
			}
			got := getEvent(t, db, id)
			requireContent(t, got, ev)
			if got.Attempts != 4 || got.LastError != "no route" {
				t.Errorf("after the final failure: attempts=%d last_error=%q, want 4, \"no route\"", got.Attempts, got.LastError)
			}
			requireStatus(t, db, id, storage.OutboxNotProduced, at)
			requireCounts(t, db, storage.OutboxCounts{NotProduced: 1})

			// Only new events can fail.
			produced := eventIn(t, db, storage.OutboxProduced, at)
			for what, target := range map[string]ulid.ULID{"not produced": id, "produced": produced, "unknown": ulid.Make()} {
				err := db.Update(func(tx *bolt.Tx) error {
					_, err := tx.OutboxFailed(target, "again", false, at)
					return err
				})
				requireIs(t, "OutboxFailed("+what+")", err, storage.ErrEventNotFound)
			}
			if got := getEvent(t, db, id); got.Attempts != 4 || got.LastError != "no route" {
				t.Errorf("a refused OutboxFailed changed the event: attempts=%d last_error=%q", got.Attempts, got.LastError)
			}
			requireCounts(t, db, storage.OutboxCounts{Produced: 1, NotProduced: 1})
		})
	}
}

func TestOutboxRequeue(t *testing.T) {
	t.Parallel()
	at := time.Now().Add(time.Hour)
	tests := []struct {
		name        string
		from        storage.OutboxStatus
		failures    int // non-final failures before the event reaches from
		wantChanged bool
		before      storage.OutboxCounts
		after       storage.OutboxCounts
	}{
		{"not produced", storage.OutboxNotProduced, 2, true, storage.OutboxCounts{NotProduced: 1}, storage.OutboxCounts{New: 1}},
		{"produced", storage.OutboxProduced, 0, true, storage.OutboxCounts{Produced: 1}, storage.OutboxCounts{New: 1}},
		{"already new", storage.OutboxNew, 2, false, storage.OutboxCounts{New: 1}, storage.OutboxCounts{New: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			db, _ := openDB(t, nil)
			ev := simpleEvents(1)[0]
			id := putEvents(t, db, 0, ev)[0]
			for range tt.failures {
				update(t, db, "OutboxFailed", func(tx *bolt.Tx) error { _, err := tx.OutboxFailed(id, "nack", false, at); return err })
			}
			switch tt.from {
			case storage.OutboxNotProduced:
				update(t, db, "OutboxFailed", func(tx *bolt.Tx) error { _, err := tx.OutboxFailed(id, "gave up", true, at); return err })
			case storage.OutboxProduced:
				update(t, db, "OutboxProduced", func(tx *bolt.Tx) error { _, err := tx.OutboxProduced([]ulid.ULID{id}, at); return err })
			}
			requireCounts(t, db, tt.before)
			was := getEvent(t, db, id)
			requeues := db.OutboxRequeues()
			wake := db.OutboxWake()

			var changed bool
			update(t, db, "OutboxRequeue", func(tx *bolt.Tx) (err error) {
				changed, err = tx.OutboxRequeue(id)
				if got := db.OutboxRequeues(); got != requeues {
					t.Errorf("OutboxRequeues() = %d inside the transaction, want %d until it commits", got, requeues)
				}
				return err
			})
			if changed != tt.wantChanged {
				t.Errorf("OutboxRequeue = %v, want %v", changed, tt.wantChanged)
			}
			requireCounts(t, db, tt.after)
			got := getEvent(t, db, id)
			requireContent(t, got, ev)
			if !tt.wantChanged {
				if !equalEvents(got, was) {
					t.Errorf("OutboxRequeue of a new event changed it:\ngot  %+v\nwant %+v", got, was)
				}
				if n := db.OutboxRequeues(); n != requeues {
					t.Errorf("OutboxRequeues() = %d after a requeue that changed nothing, want %d", n, requeues)
				}
				requireOpen(t, wake, "requeue of a new event")
				return
			}
			if got.Status != storage.OutboxNew || !got.StatusAt.IsZero() || got.Attempts != 0 || got.LastError != was.LastError {
				t.Errorf("re-queued event: status=%q status_at=%v attempts=%d last_error=%q; want new, zero, 0, %q",
					got.Status, got.StatusAt, got.Attempts, got.LastError, was.LastError)
			}
			if n := db.OutboxRequeues(); n != requeues+1 {
				t.Errorf("OutboxRequeues() = %d after the commit, want %d", n, requeues+1)
			}
			requireClosed(t, wake, "requeue")
			view(t, db, func(tx *bolt.Tx) error {
				if got := scanIDs(tx, storage.OutboxNew, ulid.ULID{}); !slices.Equal(got, []ulid.ULID{id}) {
					t.Errorf("OutboxScan(new) = %v, want [%s]", got, id)
				}
				return nil
			})
		})
	}
	t.Run("unknown id", func(t *testing.T) {
		t.Parallel()
		db, _ := openDB(t, nil)
		putEvents(t, db, 0, simpleEvents(1)...)
		err := db.Update(func(tx *bolt.Tx) error { _, err := tx.OutboxRequeue(ulid.Make()); return err })
		requireIs(t, "OutboxRequeue(unknown)", err, storage.ErrEventNotFound)
		requireCounts(t, db, storage.OutboxCounts{New: 1})
	})
	t.Run("several in one commit count once", func(t *testing.T) {
		t.Parallel()
		db, _ := openDB(t, nil)
		a := eventIn(t, db, storage.OutboxNotProduced, at)
		b := eventIn(t, db, storage.OutboxProduced, at)
		before := db.OutboxRequeues()
		update(t, db, "two requeues", func(tx *bolt.Tx) error {
			for _, id := range []ulid.ULID{a, b} {
				if ok, err := tx.OutboxRequeue(id); err != nil || !ok {
					return errors.Newf("OutboxRequeue(%s) = %v, %v", id, ok, err)
				}
			}
			return nil
		})
		if n := db.OutboxRequeues(); n != before+1 {
			t.Errorf("OutboxRequeues() = %d after one commit with two requeues, want %d", n, before+1)
		}
		requireCounts(t, db, storage.OutboxCounts{New: 2})
	})
}

// equalEvents compares two decoded events field by field.
func equalEvents(a, b *storage.OutboxEvent) bool {
	return a.ID == b.ID && a.SagaID == b.SagaID && a.Definition == b.Definition && a.Step == b.Step &&
		a.Name == b.Name && a.Exchange == b.Exchange && a.RoutingKey == b.RoutingKey &&
		bytes.Equal(a.Payload, b.Payload) && maps.Equal(a.Headers, b.Headers) && a.CreatedAt.Equal(b.CreatedAt) &&
		a.Status == b.Status && a.StatusAt.Equal(b.StatusAt) && a.Attempts == b.Attempts &&
		a.LastError == b.LastError && a.Compressed == b.Compressed
}

func TestOutboxDelete(t *testing.T) {
	t.Parallel()
	at := time.Now().Add(time.Hour)
	for _, s := range storage.OutboxStatuses {
		t.Run(string(s), func(t *testing.T) {
			t.Parallel()
			db, _ := openDB(t, nil)
			keep := eventIn(t, db, storage.OutboxNew, at)
			id := eventIn(t, db, s, at)
			want := storage.OutboxCounts{New: 1}
			switch s {
			case storage.OutboxNew:
				want.New++
			case storage.OutboxProduced:
				want.Produced++
			case storage.OutboxNotProduced:
				want.NotProduced++
			}
			requireCounts(t, db, want)
			update(t, db, "OutboxDelete", func(tx *bolt.Tx) error { return tx.OutboxDelete(id) })
			requireCounts(t, db, storage.OutboxCounts{New: 1})
			view(t, db, func(tx *bolt.Tx) error {
				_, err := tx.OutboxGet(id)
				requireIs(t, "OutboxGet(deleted)", err, storage.ErrEventNotFound)
				if _, ok := tx.OutboxSaga(id); ok {
					t.Errorf("OutboxSaga(deleted) found it")
				}
				if got := scanIDs(tx, s, ulid.ULID{}); slices.Contains(got, id) {
					t.Errorf("OutboxScan(%q) still lists the deleted event", s)
				}
				return nil
			})
			getEvent(t, db, keep)
			err := db.Update(func(tx *bolt.Tx) error { return tx.OutboxDelete(id) })
			requireIs(t, "second OutboxDelete", err, storage.ErrEventNotFound)
		})
	}
	t.Run("unknown id", func(t *testing.T) {
		t.Parallel()
		db, _ := openDB(t, nil)
		putEvents(t, db, 0, simpleEvents(1)...)
		err := db.Update(func(tx *bolt.Tx) error { return tx.OutboxDelete(ulid.Make()) })
		requireIs(t, "OutboxDelete(unknown)", err, storage.ErrEventNotFound)
		requireCounts(t, db, storage.OutboxCounts{New: 1})
	})
}

func TestOutboxPrune(t *testing.T) {
	t.Parallel()
	// Ids carry the time they were put (now); events are produced later.
	now := time.Now()
	early, late, cut := now.Add(time.Hour), now.Add(3*time.Hour), now.Add(2*time.Hour)

	// setup stores: e0..e2 produced early, e3 produced late, e4 new, e5
	// failed for good early.
	setup := func(t *testing.T) (*bolt.DB, []ulid.ULID) {
		db, _ := openDB(t, nil)
		id := putEvents(t, db, 0, simpleEvents(6)...)
		update(t, db, "move", func(tx *bolt.Tx) error {
			if _, err := tx.OutboxProduced(id[:3], early); err != nil {
				return err
			}
			if _, err := tx.OutboxProduced(id[3:4], late); err != nil {
				return err
			}
			_, err := tx.OutboxFailed(id[5], "gave up", true, early)
			return err
		})
		return db, id
	}
	prune := func(t *testing.T, db *bolt.DB, before time.Time, limit int) (n int, more bool) {
		t.Helper()
		update(t, db, "OutboxPrune", func(tx *bolt.Tx) (err error) {
			n, more, err = tx.OutboxPrune(before, limit)
			return err
		})
		return n, more
	}
	type call struct {
		before   time.Time
		limit    int
		n        int
		more     bool
		produced int64
	}
	tests := []struct {
		name  string
		calls []call
		left  []int // produced events left, by index into the ids
	}{
		{"limit below the due count reports more", []call{
			{cut, 2, 2, true, 2}, {cut, 2, 1, false, 1}, {cut, 2, 0, false, 1},
		}, []int{3}},
		{"limit equal to the due count", []call{{cut, 3, 3, false, 1}}, []int{3}},
		{"large limit", []call{{cut, 100, 3, false, 1}}, []int{3}},
		{"cut-off before every production", []call{{now.Add(30 * time.Minute), 100, 0, false, 4}}, []int{0, 1, 2, 3}},
		{"cut-off equal to the production time is not before it", []call{{early, 100, 0, false, 4}}, []int{0, 1, 2, 3}},
		{"cut-off after every production", []call{{late.Add(time.Nanosecond), 100, 4, false, 0}}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			db, id := setup(t)
			for i, c := range tt.calls {
				n, more := prune(t, db, c.before, c.limit)
				if n != c.n || more != c.more {
					t.Errorf("call %d: OutboxPrune(%v, %d) = %d, %v; want %d, %v", i, c.before.Sub(now), c.limit, n, more, c.n, c.more)
				}
				requireCounts(t, db, storage.OutboxCounts{New: 1, Produced: c.produced, NotProduced: 1})
			}
			var want []ulid.ULID
			for _, i := range tt.left {
				want = append(want, id[i])
			}
			view(t, db, func(tx *bolt.Tx) error {
				if got := scanIDs(tx, storage.OutboxProduced, ulid.ULID{}); !slices.Equal(got, want) {
					t.Errorf("produced events left = %v, want %v", got, want)
				}
				for _, i := range []int{4, 5} { // new and not produced are never pruned
					if _, err := tx.OutboxGet(id[i]); err != nil {
						t.Errorf("OutboxGet(e%d) after pruning: %v", i, err)
					}
				}
				return nil
			})
		})
	}
}

func TestOutboxOldest(t *testing.T) {
	t.Parallel()
	db, _ := openDB(t, nil)
	view(t, db, func(tx *bolt.Tx) error {
		for _, s := range storage.OutboxStatuses {
			if at, ok := tx.OutboxOldest(s); ok {
				t.Errorf("OutboxOldest(%q) on an empty outbox = %v, true; want false", s, at)
			}
		}
		return nil
	})
	evs := simpleEvents(3)
	// Key order, not creation time, decides which event is oldest: the
	// first put says it was created last.
	evs[0].CreatedAt = base.Add(time.Hour)
	id := putEvents(t, db, 0, evs...)
	update(t, db, "OutboxProduced", func(tx *bolt.Tx) error {
		_, err := tx.OutboxProduced(id[1:2], time.Now())
		return err
	})
	tests := []struct {
		status storage.OutboxStatus
		want   time.Time
		found  bool
	}{
		{storage.OutboxNew, evs[0].CreatedAt, true},
		{storage.OutboxProduced, evs[1].CreatedAt, true},
		{storage.OutboxNotProduced, time.Time{}, false},
		{storage.OutboxStatus("lost"), time.Time{}, false},
	}
	view(t, db, func(tx *bolt.Tx) error {
		for _, tt := range tests {
			at, ok := tx.OutboxOldest(tt.status)
			if ok != tt.found || !at.Equal(tt.want) {
				t.Errorf("OutboxOldest(%q) = %v, %v; want %v, %v", tt.status, at, ok, tt.want, tt.found)
			}
		}
		return nil
	})
	update(t, db, "delete the oldest new", func(tx *bolt.Tx) error { return tx.OutboxDelete(id[0]) })
	view(t, db, func(tx *bolt.Tx) error {
		if at, ok := tx.OutboxOldest(storage.OutboxNew); !ok || !at.Equal(evs[2].CreatedAt) {
			t.Errorf("OutboxOldest(new) after deleting e0 = %v, %v; want %v, true", at, ok, evs[2].CreatedAt)
		}
		return nil
	})
}

func TestOutboxSaga(t *testing.T) {
	t.Parallel()
	db, _ := openDB(t, nil)
	sagas := ids(3)
	evs := make([]*storage.OutboxEvent, len(sagas))
	for i, s := range sagas {
		evs[i] = outboxEvent(s, "e", `{}`)
	}
	id := putEvents(t, db, 0, evs...)
	view(t, db, func(tx *bolt.Tx) error {
		for i := range id {
			if got, ok := tx.OutboxSaga(id[i]); !ok || got != sagas[i] {
				t.Errorf("OutboxSaga(%s) = %s, %v; want %s, true", id[i], got, ok, sagas[i])
			}
		}
		if got, ok := tx.OutboxSaga(ulid.ULID{}); ok {
			t.Errorf("OutboxSaga(zero id) = %s, true; want false", got)
		}
		return nil
	})
}

func TestOutboxList(t *testing.T) {
	t.Parallel()
	db, _ := openDB(t, nil)
	evs := simpleEvents(105)
	id := putEvents(t, db, 0, evs...)
	at := time.Now().Add(time.Hour)
	update(t, db, "move", func(tx *bolt.Tx) error {
		if _, err := tx.OutboxProduced(id[100:103], at); err != nil {
			return err
		}
		_, err := tx.OutboxFailed(id[103], "gave up", true, at)
		return err
	})
	newIDs := append(slices.Clone(id[:100]), id[104])
	tests := []struct {
		name string
		opts storage.OutboxListOptions
		want []ulid.ULID
		more bool
	}{
		{"defaults: new, 100", storage.OutboxListOptions{}, newIDs[:100], true},
		{"limit", storage.OutboxListOptions{Status: storage.OutboxNew, Limit: 2}, newIDs[:2], true},
		{"after (exclusive)", storage.OutboxListOptions{After: newIDs[1], Limit: 2}, newIDs[2:4], true},
		{"last page", storage.OutboxListOptions{After: newIDs[98], Limit: 2}, newIDs[99:], false},
		{"limit equal to what is left", storage.OutboxListOptions{After: newIDs[97], Limit: 3}, newIDs[98:], false},
		{"after the last", storage.OutboxListOptions{After: newIDs[100]}, nil, false},
		{"negative limit means the default", storage.OutboxListOptions{Limit: -1}, newIDs[:100], true},
		{"produced", storage.OutboxListOptions{Status: storage.OutboxProduced}, id[100:103], false},
		{"produced, paged", storage.OutboxListOptions{Status: storage.OutboxProduced, After: id[100], Limit: 1}, id[101:102], true},
		{"not produced", storage.OutboxListOptions{Status: storage.OutboxNotProduced}, id[103:104], false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			view(t, db, func(tx *bolt.Tx) error {
				got, more, err := tx.OutboxList(tt.opts)
				if err != nil {
					t.Fatalf("OutboxList(%+v): %v", tt.opts, err)
				}
				gotIDs := make([]ulid.ULID, len(got))
				for i, ev := range got {
					gotIDs[i] = ev.ID
				}
				if !slices.Equal(gotIDs, tt.want) || more != tt.more {
					t.Errorf("OutboxList(%+v) = %d events, more=%v; want %d, more=%v\ngot  %v\nwant %v",
						tt.opts, len(got), more, len(tt.want), tt.more, gotIDs, tt.want)
				}
				wantStatus := cmpOr(tt.opts.Status, storage.OutboxNew)
				for _, ev := range got {
					i := slices.Index(id, ev.ID)
					requireContent(t, ev, evs[i])
					if ev.Status != wantStatus {
						t.Errorf("listed event %s has status %q, want %q", ev.ID, ev.Status, wantStatus)
					}
				}
				return nil
			})
		})
	}
	t.Run("unknown status", func(t *testing.T) {
		t.Parallel()
		view(t, db, func(tx *bolt.Tx) error {
			got, more, err := tx.OutboxList(storage.OutboxListOptions{Status: "lost"})
			if err == nil || got != nil || more {
				t.Errorf("OutboxList(status lost) = %d events, %v, %v; want an error", len(got), more, err)
			} else if !strings.Contains(err.Error(), `unknown outbox status "lost"`) {
				t.Errorf("OutboxList(status lost) = %v, want it to name the status", err)
			}
			return nil
		})
	})
}

func cmpOr(s, def storage.OutboxStatus) storage.OutboxStatus {
	if s == "" {
		return def
	}
	return s
}

func TestOutboxWake(t *testing.T) {
	t.Parallel()
	at := time.Now().Add(time.Hour)
	sagaEnc := encode(t, newSaga(ids(1)[0], "order", saga.StatusRunning, time.Time{}))
	enc := bolt.EncodeEvent(simpleEvents(1)[0], 0)
	tests := []struct {
		name         string
		from         storage.OutboxStatus // status of an event stored first; "" for none
		act          func(tx *bolt.Tx, id ulid.ULID) error
		wantClosed   bool
		wantRequeues int64
	}{
		{"put", "", func(tx *bolt.Tx, _ ulid.ULID) error { _, err := tx.OutboxPut(enc); return err }, true, 0},
		{"saga put only", "", func(tx *bolt.Tx, _ ulid.ULID) error { return tx.SagaPut(sagaEnc) }, false, 0},
		{"empty commit", storage.OutboxNew, func(*bolt.Tx, ulid.ULID) error { return nil }, false, 0},
		{"produced", storage.OutboxNew, func(tx *bolt.Tx, id ulid.ULID) error {
			_, err := tx.OutboxProduced([]ulid.ULID{id}, at)
			return err
		}, false, 0},
		{"failed", storage.OutboxNew, func(tx *bolt.Tx, id ulid.ULID) error {
			_, err := tx.OutboxFailed(id, "nack", false, at)
			return err
		}, false, 0},
		{"failed for good", storage.OutboxNew, func(tx *bolt.Tx, id ulid.ULID) error {
			_, err := tx.OutboxFailed(id, "nack", true, at)
			return err
		}, false, 0},
		{"requeue not produced", storage.OutboxNotProduced, func(tx *bolt.Tx, id ulid.ULID) error {
			_, err := tx.OutboxRequeue(id)
			return err
		}, true, 1},
		{"requeue produced", storage.OutboxProduced, func(tx *bolt.Tx, id ulid.ULID) error {
			_, err := tx.OutboxRequeue(id)
			return err
		}, true, 1},
		{"requeue new", storage.OutboxNew, func(tx *bolt.Tx, id ulid.ULID) error {
			_, err := tx.OutboxRequeue(id)
			return err
		}, false, 0},
		{"delete new", storage.OutboxNew, func(tx *bolt.Tx, id ulid.ULID) error { return tx.OutboxDelete(id) }, true, 1},
		{"delete not produced", storage.OutboxNotProduced, func(tx *bolt.Tx, id ulid.ULID) error { return tx.OutboxDelete(id) }, true, 1},
		{"delete produced", storage.OutboxProduced, func(tx *bolt.Tx, id ulid.ULID) error { return tx.OutboxDelete(id) }, false, 0},
		{"prune", storage.OutboxProduced, func(tx *bolt.Tx, _ ulid.ULID) error {
			_, _, err := tx.OutboxPrune(at.Add(time.Hour), 10)
			return err
		}, false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			db, _ := openDB(t, nil)
			var id ulid.ULID
			if tt.from != "" {
				id = eventIn(t, db, tt.from, at)
			}
			wake, requeues := db.OutboxWake(), db.OutboxRequeues()
			requireOpen(t, wake, "before the commit")
			update(t, db, tt.name, func(tx *bolt.Tx) error { return tt.act(tx, id) })
			if tt.wantClosed {
				requireClosed(t, wake, tt.name)
				next := db.OutboxWake()
				if next == wake {
					t.Fatalf("OutboxWake after a wake-up returned the closed channel, want a new one")
				}
				requireOpen(t, next, "the channel taken after the wake-up")
			} else {
				requireOpen(t, wake, tt.name)
			}
			if got := db.OutboxRequeues() - requeues; got != tt.wantRequeues {
				t.Errorf("OutboxRequeues() grew by %d, want %d", got, tt.wantRequeues)
			}
		})
	}
}

// TestOutboxWakeRolledBack: writes that roll back must neither wake the
// relay nor count as re-queues when a later, unrelated transaction commits.
func TestOutboxWakeRolledBack(t *testing.T) {
	t.Parallel()
	at := time.Now().Add(time.Hour)
	refused := errors.New("storage_test: refused on purpose")
	enc := bolt.EncodeEvent(simpleEvents(1)[0], 0)
	tests := []struct {
		name string
		from storage.OutboxStatus
		act  func(tx *bolt.Tx, id ulid.ULID) error
	}{
		{"put", "", func(tx *bolt.Tx, _ ulid.ULID) error { _, err := tx.OutboxPut(enc); return err }},
		{"requeue", storage.OutboxNotProduced, func(tx *bolt.Tx, id ulid.ULID) error { _, err := tx.OutboxRequeue(id); return err }},
		{"delete", storage.OutboxNotProduced, func(tx *bolt.Tx, id ulid.ULID) error { return tx.OutboxDelete(id) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			db, _ := openDB(t, nil)
			var id ulid.ULID
			if tt.from != "" {
				id = eventIn(t, db, tt.from, at)
			}
			wake, requeues := db.OutboxWake(), db.OutboxRequeues()
			err := db.Update(func(tx *bolt.Tx) error {
				if err := tt.act(tx, id); err != nil {
					return err
				}
				return refused
			})
			requireIs(t, "Update that fails after "+tt.name, err, refused)
			update(t, db, "unrelated commit", func(*bolt.Tx) error { return nil })
			requireOpen(t, wake, "unrelated commit after a rolled-back "+tt.name)
			if got := db.OutboxRequeues(); got != requeues {
				t.Errorf("OutboxRequeues() = %d after a rolled-back %s and an unrelated commit, want %d", got, tt.name, requeues)
			}
		})
	}
}

// TestOutboxCountsAcrossReopen: the counters are stored, not rebuilt.
func TestOutboxCountsAcrossReopen(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "sagad.db")
	db, err := bolt.Open(path, &bolt.Options{NoSync: true})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	at := time.Now().Add(time.Hour)
	eventIn(t, db, storage.OutboxNew, at)
	eventIn(t, db, storage.OutboxProduced, at)
	eventIn(t, db, storage.OutboxNotProduced, at)
	want := storage.OutboxCounts{New: 1, Produced: 1, NotProduced: 1}
	requireCounts(t, db, want)
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db, err = bolt.Open(path, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("reopen read-only: %v", err)
	}
	defer db.Close()
	requireCounts(t, db, want)
}
