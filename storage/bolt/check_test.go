package bolt_test

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"math/rand"
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

// bigPayload is stored compressed.
var bigPayload = `{"items":"` + strings.Repeat("abc", 100) + `"}`

// fixture is a database holding a few consistent sagas.
type fixture struct {
	db   *bolt.DB
	path string
	// running has a wake time and an idempotency key, done is completed with
	// neither, undoing is compensating with a wake time.
	running, done, undoing ulid.ULID
	// ghost is an id no saga and no outbox event has.
	ghost ulid.ULID
	// The outbox holds one event in each status: evNew (new), evProduced
	// (produced, with a compressed payload) and evFailed (not_produced).
	evNew, evProduced, evFailed ulid.ULID
}

const idemKey = "order-42"

func setup(t *testing.T) *fixture {
	t.Helper()
	path := filepath.Join(t.TempDir(), "sagad.db")
	db, err := bolt.Open(path, &bolt.Options{NoSync: true})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			db.Close()
		}
	})
	entropy := rand.New(rand.NewSource(1))
	id := func(ms int) ulid.ULID {
		return ulid.MustNew(ulid.Timestamp(base.Add(time.Duration(ms)*time.Millisecond)), entropy)
	}
	f := &fixture{db: db, path: path, running: id(0), done: id(1), undoing: id(2), ghost: id(3)}

	mk := func(id ulid.ULID, st saga.Status, wake time.Time, key string) *storage.Saga {
		return &storage.Saga{
			ID: id, Definition: "order", Fingerprint: "fp", Status: st, IdempotencyKey: key,
			Input: json.RawMessage(`{"n":1}`), CreatedAt: base, UpdatedAt: base, WakeAt: wake,
			Steps: []storage.Step{{Name: "reserve", Status: saga.StepSucceeded}, {Name: "charge", Status: saga.StepPending}},
		}
	}
	var encs []*bolt.Encoded
	for _, s := range []*storage.Saga{
		mk(f.running, saga.StatusRunning, base.Add(time.Second), idemKey),
		mk(f.done, saga.StatusCompleted, time.Time{}, ""),
		mk(f.undoing, saga.StatusCompensating, base.Add(2*time.Second), ""),
	} {
		e, err := bolt.EncodeSaga(s)
		if err != nil {
			t.Fatal(err)
		}
		encs = append(encs, e)
	}
	logEntry := bolt.EncodeLog(&storage.LogEntry{Seq: 1, At: base, Event: storage.EventStarted, Status: saga.StatusRunning})
	err = db.Update(func(tx *bolt.Tx) error {
		for _, e := range encs {
			if err := tx.SagaPut(e, logEntry); err != nil {
				return err
			}
		}
		if err := tx.AbortPut(f.undoing, base); err != nil {
			return err
		}
		// A stored declarative definition, as the daemon keeps them.
		if _, err := tx.DefinitionPut("order", "v1", []byte(`{"steps":[{"name":"a","action":{"url":"http://127.0.0.1:1/a"}}]}`)); err != nil {
			return err
		}
		return tx.IdemPut(idemKey, f.running)
	})
	if err != nil {
		t.Fatalf("write fixture: %v", err)
	}
	f.putOutbox(t)
	return f
}

// putOutbox stores the fixture's outbox events through storage's API.
func (f *fixture) putOutbox(t *testing.T) {
	t.Helper()
	ev := func(name, payload string, compressAbove int) *bolt.EncodedEvent {
		return bolt.EncodeEvent(&storage.OutboxEvent{
			SagaID: f.running, Definition: "order", Step: "charge", Name: name, RoutingKey: "order." + name,
			Payload: json.RawMessage(payload), Headers: map[string]string{"tenant": "t1"}, CreatedAt: base,
		}, compressAbove)
	}
	err := f.db.Update(func(tx *bolt.Tx) error {
		var err error
		if f.evNew, err = tx.OutboxPut(ev("created", `{"n":1}`, 0)); err != nil {
			return err
		}
		if f.evProduced, err = tx.OutboxPut(ev("charged", bigPayload, 64)); err != nil {
			return err
		}
		f.evFailed, err = tx.OutboxPut(ev("shipped", `{"n":3}`, 0))
		return err
	})
	if err != nil {
		t.Fatalf("put outbox events: %v", err)
	}
	err = f.db.Update(func(tx *bolt.Tx) error {
		if n, err := tx.OutboxProduced([]ulid.ULID{f.evProduced}, base.Add(time.Minute)); err != nil || n != 1 {
			return errors.Newf("OutboxProduced = %d, %v; want 1 event marked", n, err)
		}
		if n, err := tx.OutboxFailed(f.evFailed, "broker down", true, base.Add(time.Minute)); err != nil || n != 1 {
			return errors.Newf("OutboxFailed = %d, %v; want attempt 1", n, err)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("move outbox events: %v", err)
	}
	// The fixture must really cover every status, or the clean check proves
	// less than it claims.
	err = f.db.View(func(tx *bolt.Tx) error {
		for id, want := range map[ulid.ULID]storage.OutboxStatus{
			f.evNew: storage.OutboxNew, f.evProduced: storage.OutboxProduced, f.evFailed: storage.OutboxNotProduced,
		} {
			got, err := tx.OutboxGet(id)
			if err != nil {
				return err
			}
			if got.Status != want {
				return errors.Newf("event %s is %s, want %s", id, got.Status, want)
			}
		}
		if c, want := tx.OutboxCounts(), (storage.OutboxCounts{New: 1, Produced: 1, NotProduced: 1}); c != want {
			return errors.Newf("OutboxCounts = %+v, want %+v", c, want)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("outbox fixture: %v", err)
	}
}

// close closes the fixture's database so CheckFile can open it.
func (f *fixture) close(t *testing.T) {
	t.Helper()
	if err := f.db.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

// check runs DB.Check and turns a panic into a test failure: Check
// exists for damaged files and must report damage, not crash on it.
func check(t *testing.T, db *bolt.DB) (problems []bolt.Problem, err error) {
	t.Helper()
	defer func() {
		if r := recover(); r != nil {
			t.Errorf("Check panicked: %v; want it to report the damage as a problem", r)
			problems, err = nil, errors.Newf("panic: %v", r)
		}
	}()
	// Stored definitions must be JSON objects with steps, a stand-in for the
	// daemon's parser (storage does not know their format).
	return db.Check(&bolt.CheckOptions{Definition: validDefinition})
}

func hexID(id ulid.ULID) string { return hex.EncodeToString(id[:]) }

func statusKey(code byte, id ulid.ULID) []byte { return append([]byte{code}, id[:]...) }

func outboxStatusKey(code byte, id ulid.ULID) []byte { return append([]byte{code}, id[:]...) }

// deflate compresses b as bolt.EncodeEvent does.
func deflate(b string) []byte {
	var buf bytes.Buffer
	w, _ := flate.NewWriter(&buf, flate.BestSpeed) // fails only for a bad level
	_, _ = w.Write([]byte(b))                      // writes to a bytes.Buffer cannot fail
	_ = w.Close()
	return buf.Bytes()
}

// stamp is an outbox status-index value: a unix-nano time.
func stamp(at time.Time) []byte { return binary.BigEndian.AppendUint64(nil, uint64(at.UnixNano())) }

// outboxCounts is a meta outbox_counts value.
func outboxCounts(c ...uint64) []byte {
	var b []byte
	for _, n := range c {
		b = binary.BigEndian.AppendUint64(b, n)
	}
	return b
}

// putRecord rewrites an outbox record as edit returns it.
func putRecord(tx *bbolt.Tx, id ulid.ULID, edit func(v []byte) []byte) error {
	b := tx.Bucket([]byte("outbox"))
	return b.Put(id[:], edit(slices.Clone(b.Get(id[:]))))
}

// logKey is the key of a saga's newest log record.
func logKey(tx *bbolt.Tx, id ulid.ULID) []byte {
	h, _ := bolt.DecodeHeader(tx.Bucket([]byte("sagas")).Get(id[:]))
	return binary.BigEndian.AppendUint64(nil, h.LogHead)
}

// putLog rewrites a saga's newest log record as edit returns it.
func putLog(tx *bbolt.Tx, id ulid.ULID, edit func(v []byte) []byte) error {
	b, k := tx.Bucket([]byte("log")), logKey(tx, id)
	return b.Put(k, edit(slices.Clone(b.Get(k))))
}

func dueKey(wake time.Time, id ulid.ULID) []byte {
	return append(binary.BigEndian.AppendUint64(nil, uint64(wake.UnixNano())), id[:]...)
}

func TestCheckConsistent(t *testing.T) {
	t.Parallel()
	f := setup(t)
	problems, err := check(t, f.db)
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	if len(problems) != 0 {
		t.Fatalf("Check found %v in a consistent database, want none", problems)
	}
	f.close(t)
	if err := bolt.CheckFile(f.path, nil); err != nil {
		t.Fatalf("CheckFile(consistent) = %v, want nil", err)
	}
}

func TestCheckEmpty(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "sagad.db")
	db, err := bolt.Open(path, &bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	if problems, err := check(t, db); err != nil || len(problems) != 0 {
		t.Errorf("Check(empty db) = %v, %v; want no problems", problems, err)
	}
	db.Close()
	if err := bolt.CheckFile(path, nil); err != nil {
		t.Errorf("CheckFile(empty db) = %v, want nil", err)
	}
}

// TestCheckWithoutOutbox checks a file written before the outbox existed:
// no outbox buckets and no counts is an empty outbox, not damage.
func TestCheckWithoutOutbox(t *testing.T) {
	t.Parallel()
	f := setup(t)
	err := f.db.Bolt().Update(func(tx *bbolt.Tx) error {
		for _, name := range []string{"outbox", "outbox_status"} {
			if err := tx.DeleteBucket([]byte(name)); err != nil {
				return err
			}
		}
		return tx.Bucket([]byte("meta")).Delete([]byte("outbox_counts"))
	})
	if err != nil {
		t.Fatalf("remove the outbox: %v", err)
	}
	if problems, err := check(t, f.db); err != nil || len(problems) != 0 {
		t.Errorf("Check(no outbox) = %v, %v; want no problems", problems, err)
	}
	f.close(t)
	// A read-only open does not create the missing buckets.
	if err := bolt.CheckFile(f.path, nil); err != nil {
		t.Errorf("CheckFile(no outbox) = %v, want nil", err)
	}
}

func TestCheckFindsDamage(t *testing.T) {
	t.Parallel()
	type want struct {
		kind string
		// id is the saga or outbox event the detail must name (hex); nil
		// for none.
		id func(f *fixture) ulid.ULID
	}
	running := func(f *fixture) ulid.ULID { return f.running }
	done := func(f *fixture) ulid.ULID { return f.done }
	undoing := func(f *fixture) ulid.ULID { return f.undoing }
	ghost := func(f *fixture) ulid.ULID { return f.ghost }
	evNew := func(f *fixture) ulid.ULID { return f.evNew }
	evProduced := func(f *fixture) ulid.ULID { return f.evProduced }
	evFailed := func(f *fixture) ulid.ULID { return f.evFailed }

	tests := []struct {
		name   string
		damage func(f *fixture, tx *bbolt.Tx) error
		want   []want
	}{
		{
			// engine.Log (sagad sagas show) fails with ErrCorrupt on it.
			name: "log entry that does not decode",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				return putLog(tx, f.done, func(v []byte) []byte { return append(v[:24], "\x00garbage{"...) })
			},
			want: []want{{"log-undecodable", done}},
		},
		{
			name: "one bad entry among good ones",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				return putLog(tx, f.running, func(v []byte) []byte {
					good := slices.Clone(v[24:])
					return slices.Concat(v, []byte("\n{\"seq\":\"two\"}\n"), good)
				})
			},
			want: []want{{"log-undecodable", running}},
		},
		{
			name: "every bad entry is a problem",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				return putLog(tx, f.undoing, func(v []byte) []byte { return append(v[:24], "{\n}"...) })
			},
			want: []want{{"log-undecodable", undoing}, {"log-undecodable", undoing}},
		},
		{
			name: "log record missing",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				return tx.Bucket([]byte("log")).Delete(logKey(tx, f.done))
			},
			want: []want{{"log-missing", done}},
		},
		{
			name: "log record of another saga",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				return putLog(tx, f.done, func(v []byte) []byte { copy(v[8:24], f.ghost[:]); return v })
			},
			want: []want{{"log-foreign", done}},
		},
		{
			name: "log record pointing forward",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				return putLog(tx, f.done, func(v []byte) []byte { binary.BigEndian.PutUint64(v, 1<<40); return v })
			},
			want: []want{{"log-cycle", done}},
		},
		{
			// Every command that opens the file loads the stored
			// definitions, and fails on this one.
			name: "stored definition that does not parse",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				return tx.Bucket([]byte("definitions")).Put([]byte("order\x00v2"), []byte(`{"steps":[{"name":"a"}]}`))
			},
			want: []want{{"definition-invalid", nil}},
		},
		{
			name: "status index entry deleted",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				return tx.Bucket([]byte("status")).Delete(statusKey(3, f.done))
			},
			want: []want{{"saga-not-indexed", done}},
		},
		{
			name: "status index entry for a missing saga",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				return tx.Bucket([]byte("status")).Put(statusKey(1, f.ghost), nil)
			},
			want: []want{{"index-missing-saga", ghost}},
		},
		{
			name: "second status index entry under another status",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				return tx.Bucket([]byte("status")).Put(statusKey(5, f.done), nil)
			},
			want: []want{{"index-wrong-status", done}},
		},
		{
			name: "saga's status changed without the index",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				b := tx.Bucket([]byte("sagas"))
				v := slices.Clone(b.Get(f.done[:]))
				v[0] = 1 // completed -> running
				return b.Put(f.done[:], v)
			},
			want: []want{{"saga-not-indexed", done}, {"index-wrong-status", done}},
		},
		{
			name: "stale due entry for a stored saga",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				return tx.Bucket([]byte("due")).Put(dueKey(base.Add(time.Hour), f.running), nil)
			},
			want: []want{{"due-stale", running}},
		},
		{
			name: "due entry for a finished saga",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				return tx.Bucket([]byte("due")).Put(dueKey(base, f.done), nil)
			},
			want: []want{{"due-stale", done}},
		},
		{
			name: "due entry for a missing saga",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				return tx.Bucket([]byte("due")).Put(dueKey(base, f.ghost), nil)
			},
			want: []want{{"due-stale", ghost}},
		},
		{
			name: "due entry deleted",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				return tx.Bucket([]byte("due")).Delete(dueKey(base.Add(2*time.Second), f.undoing))
			},
			want: []want{{"saga-not-due", undoing}},
		},
		{
			name: "saga's wake changed without the index",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				b := tx.Bucket([]byte("sagas"))
				v := slices.Clone(b.Get(f.undoing[:]))
				binary.BigEndian.PutUint64(v[1:], uint64(base.Add(time.Minute).UnixNano()))
				return b.Put(f.undoing[:], v)
			},
			want: []want{{"saga-not-due", undoing}, {"due-stale", undoing}},
		},
		{
			name: "idempotency key deleted",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				return tx.Bucket([]byte("idem")).Delete([]byte(idemKey))
			},
			want: []want{{"idem-missing", running}},
		},
		{
			name: "idempotency key names another saga",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				return tx.Bucket([]byte("idem")).Put([]byte(idemKey), f.done[:])
			},
			want: []want{{"idem-missing", running}},
		},
		{
			name: "idempotency key for a missing saga",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				return tx.Bucket([]byte("idem")).Put([]byte("other-key"), f.ghost[:])
			},
			want: []want{{"idem-dangling", ghost}},
		},
		{
			name: "malformed status key",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				return tx.Bucket([]byte("status")).Put([]byte{1, 2, 3}, nil)
			},
			want: []want{{"index-malformed", nil}},
		},
		{
			name: "malformed due key",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				return tx.Bucket([]byte("due")).Put([]byte{1, 2, 3}, nil)
			},
			want: []want{{"due-malformed", nil}},
		},
		{
			name: "saga record that is not JSON",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				b := tx.Bucket([]byte("sagas"))
				v := append(slices.Clone(b.Get(f.done[:])[:17]), "{not json"...)
				return b.Put(f.done[:], v)
			},
			want: []want{{"saga-malformed", done}},
		},
		{
			name: "truncated saga record without a wake time",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				return tx.Bucket([]byte("sagas")).Put(f.done[:], []byte{3, 0, 0})
			},
			want: []want{{"saga-malformed", done}},
		},
		{
			name: "saga key of the wrong length",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				b := tx.Bucket([]byte("sagas"))
				return b.Put([]byte("short"), slices.Clone(b.Get(f.done[:])))
			},
			want: []want{{"saga-malformed", nil}},
		},
		{
			name: "bucket missing",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				return tx.DeleteBucket([]byte("due"))
			},
			want: []want{{"bucket-missing", nil}},
		},
		{
			name: "outbox status entry deleted",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				return tx.Bucket([]byte("outbox_status")).Delete(outboxStatusKey(1, f.evNew))
			},
			want: []want{{"outbox-not-indexed", evNew}, {"outbox-counts", nil}},
		},
		{
			name: "outbox status entry for a missing event",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				return tx.Bucket([]byte("outbox_status")).Put(outboxStatusKey(2, f.ghost), stamp(base))
			},
			want: []want{{"outbox-index-missing-event", ghost}, {"outbox-counts", nil}},
		},
		{
			name: "outbox record deleted",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				return tx.Bucket([]byte("outbox")).Delete(f.evFailed[:])
			},
			want: []want{{"outbox-index-missing-event", evFailed}},
		},
		{
			name: "outbox event in two statuses",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				return tx.Bucket([]byte("outbox_status")).Put(outboxStatusKey(2, f.evNew), stamp(base))
			},
			want: []want{{"outbox-indexed-twice", evNew}, {"outbox-counts", nil}},
		},
		{
			name: "outbox event moved without the counts",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				idx := tx.Bucket([]byte("outbox_status"))
				if err := idx.Delete(outboxStatusKey(1, f.evNew)); err != nil {
					return err
				}
				return idx.Put(outboxStatusKey(3, f.evNew), stamp(base))
			},
			// One count is too high and another too low.
			want: []want{{"outbox-counts", nil}, {"outbox-counts", nil}},
		},
		{
			name: "outbox counts wrong",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				return tx.Bucket([]byte("meta")).Put([]byte("outbox_counts"), outboxCounts(1, 2, 1))
			},
			want: []want{{"outbox-counts", nil}},
		},
		{
			name: "outbox counts gone negative",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				return tx.Bucket([]byte("meta")).Put([]byte("outbox_counts"), outboxCounts(1, 1, 1<<64-1))
			},
			want: []want{{"outbox-counts", nil}},
		},
		{
			name: "outbox counts missing",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				return tx.Bucket([]byte("meta")).Delete([]byte("outbox_counts"))
			},
			want: []want{{"outbox-counts", nil}, {"outbox-counts", nil}, {"outbox-counts", nil}},
		},
		{
			name: "outbox counts of the wrong length",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				return tx.Bucket([]byte("meta")).Put([]byte("outbox_counts"), outboxCounts(1, 1))
			},
			want: []want{{"outbox-counts-malformed", nil}},
		},
		{
			name: "outbox record truncated",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				return putRecord(tx, f.evProduced, func(v []byte) []byte { return v[:len(v)-3] })
			},
			want: []want{{"outbox-malformed", evProduced}},
		},
		{
			name: "outbox record shorter than its header",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				return putRecord(tx, f.evNew, func(v []byte) []byte { return v[:5] })
			},
			want: []want{{"outbox-malformed", evNew}},
		},
		{
			name: "outbox record of an unknown format",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				return putRecord(tx, f.evFailed, func(v []byte) []byte { v[0] = 9; return v })
			},
			want: []want{{"outbox-malformed", evFailed}},
		},
		{
			name: "outbox record with bytes after it",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				return putRecord(tx, f.evNew, func(v []byte) []byte { return append(v, 0) })
			},
			want: []want{{"outbox-malformed", evNew}},
		},
		{
			name: "outbox record whose compressed payload is not deflate",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				// The record ends with the stored payload: the deflated
				// bytes after a one-byte length (they are shorter than 128).
				// 0xff opens a deflate block of the reserved type.
				comp := deflate(bigPayload)
				var found bool
				err := putRecord(tx, f.evProduced, func(v []byte) []byte {
					at := len(v) - len(comp)
					if found = len(comp) < 128 && at > 0 && bytes.Equal(v[at:], comp) && int(v[at-1]) == len(comp); found {
						copy(v[at:], bytes.Repeat([]byte{0xff}, len(comp)))
					}
					return v
				})
				if err == nil && !found {
					err = errors.New("the compressed payload is not at the end of the record")
				}
				return err
			},
			want: []want{{"outbox-malformed", evProduced}},
		},
		{
			name: "outbox key of the wrong length",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				b := tx.Bucket([]byte("outbox"))
				return b.Put([]byte("short"), slices.Clone(b.Get(f.evNew[:])))
			},
			want: []want{{"outbox-malformed", nil}},
		},
		{
			name: "malformed outbox status key",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				return tx.Bucket([]byte("outbox_status")).Put([]byte{1, 2, 3}, nil)
			},
			want: []want{{"outbox-index-malformed", nil}},
		},
		{
			name: "outbox status entry under an unknown code",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				return tx.Bucket([]byte("outbox_status")).Put(outboxStatusKey(7, f.evNew), nil)
			},
			want: []want{{"outbox-index-bad-code", evNew}},
		},
		{
			name: "outbox event only under an unknown code",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				idx := tx.Bucket([]byte("outbox_status"))
				if err := idx.Delete(outboxStatusKey(3, f.evFailed)); err != nil {
					return err
				}
				return idx.Put(outboxStatusKey(0, f.evFailed), stamp(base))
			},
			want: []want{{"outbox-index-bad-code", evFailed}, {"outbox-not-indexed", evFailed}, {"outbox-counts", nil}},
		},
		{
			name: "produced outbox entry without its time",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				return tx.Bucket([]byte("outbox_status")).Put(outboxStatusKey(2, f.evProduced), nil)
			},
			want: []want{{"outbox-index-bad-value", evProduced}},
		},
		{
			name: "new outbox entry with a value",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				return tx.Bucket([]byte("outbox_status")).Put(outboxStatusKey(1, f.evNew), stamp(base))
			},
			want: []want{{"outbox-index-bad-value", evNew}},
		},
		{
			name: "abort request left on a finished saga",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				return tx.Bucket([]byte("aborts")).Put(f.done[:], []byte(base.Format(time.RFC3339)))
			},
			want: []want{{"abort-unapplied", done}},
		},
		{
			name: "abort request for no saga",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				return tx.Bucket([]byte("aborts")).Put(f.ghost[:], []byte(base.Format(time.RFC3339)))
			},
			want: []want{{"abort-dangling", ghost}},
		},
		{
			name: "outbox buckets missing while the counts remain",
			damage: func(f *fixture, tx *bbolt.Tx) error {
				if err := tx.DeleteBucket([]byte("outbox")); err != nil {
					return err
				}
				return tx.DeleteBucket([]byte("outbox_status"))
			},
			want: []want{{"outbox-counts", nil}, {"outbox-counts", nil}, {"outbox-counts", nil}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := setup(t)
			if err := f.db.Bolt().Update(func(tx *bbolt.Tx) error { return tt.damage(f, tx) }); err != nil {
				t.Fatalf("break the database: %v", err)
			}
			problems, err := check(t, f.db)
			if err != nil {
				t.Fatalf("Check = %v, want the problems listed without an error", err)
			}
			var got, wantKinds []string
			for _, p := range problems {
				got = append(got, p.Kind)
			}
			for _, w := range tt.want {
				wantKinds = append(wantKinds, w.kind)
			}
			slices.Sort(got)
			slices.Sort(wantKinds)
			if !slices.Equal(got, wantKinds) {
				t.Fatalf("Check found %v, want exactly the kinds %v", problems, wantKinds)
			}
			for _, w := range tt.want {
				if w.id == nil {
					continue
				}
				i := slices.IndexFunc(problems, func(p bolt.Problem) bool {
					return p.Kind == w.kind && strings.Contains(p.Detail, hexID(w.id(f)))
				})
				if i < 0 {
					t.Errorf("no %s problem names %s: %v", w.kind, hexID(w.id(f)), problems)
				}
			}

			f.close(t)
			err = bolt.CheckFile(f.path, &bolt.CheckOptions{Definition: validDefinition})
			if !errors.Is(err, bolt.ErrInconsistent) {
				t.Fatalf("CheckFile = %v, want an error marked ErrInconsistent", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w.kind) {
					t.Errorf("CheckFile = %q, want it to list %s", err, w.kind)
				}
			}
			if !strings.Contains(err.Error(), f.path) {
				t.Errorf("CheckFile = %q, want it to name the file", err)
			}
		})
	}
}

// TestCheckTruncatedRecords damages saga records so that they are shorter
// than their 9-byte header while index entries still point at them. Check
// must report the record as malformed (it may also report the index entry)
// instead of panicking.
func TestCheckTruncatedRecords(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		record func(f *fixture) (ulid.ULID, []byte)
	}{
		{
			// The due index names the saga; its record has no wake bytes.
			name:   "one byte, saga has a due entry",
			record: func(f *fixture) (ulid.ULID, []byte) { return f.undoing, []byte{2} },
		},
		{
			// The status index names the saga; its record is empty.
			name:   "empty, saga has a status entry",
			record: func(f *fixture) (ulid.ULID, []byte) { return f.done, []byte{} },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := setup(t)
			id, rec := tt.record(f)
			err := f.db.Bolt().Update(func(tx *bbolt.Tx) error { return tx.Bucket([]byte("sagas")).Put(id[:], rec) })
			if err != nil {
				t.Fatal(err)
			}
			problems, err := check(t, f.db)
			if err != nil {
				t.Fatalf("Check = %v, want the problems listed", err)
			}
			if !slices.ContainsFunc(problems, func(p bolt.Problem) bool {
				return p.Kind == "saga-malformed" && strings.Contains(p.Detail, hexID(id))
			}) {
				t.Errorf("Check found %v, want a saga-malformed problem naming %s", problems, hexID(id))
			}
		})
	}
}

func TestCheckFileErrors(t *testing.T) {
	t.Parallel()
	t.Run("missing file", func(t *testing.T) {
		t.Parallel()
		// Read-only open does not create the file.
		err := bolt.CheckFile(filepath.Join(t.TempDir(), "nope.db"), nil)
		if err == nil || errors.Is(err, bolt.ErrInconsistent) {
			t.Errorf("CheckFile(missing) = %v, want an open error that is not ErrInconsistent", err)
		}
	})
	t.Run("held by another opener", func(t *testing.T) {
		t.Parallel()
		f := setup(t)
		start := time.Now()
		err := bolt.CheckFile(f.path, nil)
		if !errors.Is(err, bolt.ErrLocked) {
			t.Errorf("CheckFile(open db) = %v, want ErrLocked", err)
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("CheckFile took %s, want it to give up within the lock timeout", took)
		}
	})
}

// validDefinition stands in for the daemon's parser of stored definitions:
// an object whose steps each name an action.
func validDefinition(name string, spec []byte) error {
	var d struct {
		Steps []struct {
			Name   string          `json:"name"`
			Action json.RawMessage `json:"action"`
		} `json:"steps"`
	}
	if err := json.Unmarshal(spec, &d); err != nil {
		return err
	}
	for _, st := range d.Steps {
		if len(st.Action) == 0 {
			return errors.Newf("definition %s: step %q has no action", name, st.Name)
		}
	}
	return nil
}
