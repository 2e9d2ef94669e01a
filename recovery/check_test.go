package recovery_test

import (
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

	"github.com/sagad/sagad/recovery"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
)

var base = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// fixture is a database holding a few consistent sagas.
type fixture struct {
	db   *storage.DB
	path string
	// running has a wake time and an idempotency key, done is completed with
	// neither, undoing is compensating with a wake time.
	running, done, undoing ulid.ULID
	// ghost is an id no saga has.
	ghost ulid.ULID
}

const idemKey = "order-42"

func setup(t *testing.T) *fixture {
	t.Helper()
	path := filepath.Join(t.TempDir(), "sagad.db")
	db, err := storage.Open(path, &storage.Options{NoSync: true})
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
	var encs []*storage.Encoded
	for _, s := range []*storage.Saga{
		mk(f.running, saga.StatusRunning, base.Add(time.Second), idemKey),
		mk(f.done, saga.StatusCompleted, time.Time{}, ""),
		mk(f.undoing, saga.StatusCompensating, base.Add(2*time.Second), ""),
	} {
		e, err := storage.EncodeSaga(s)
		if err != nil {
			t.Fatal(err)
		}
		encs = append(encs, e)
	}
	logEntry := storage.EncodeLog(&storage.LogEntry{Seq: 1, At: base, Event: storage.EventStarted, Status: saga.StatusRunning})
	err = db.Update(func(tx *storage.Tx) error {
		for _, e := range encs {
			if err := tx.SagaPut(e, logEntry); err != nil {
				return err
			}
		}
		if err := tx.AbortPut(f.undoing, base); err != nil {
			return err
		}
		return tx.IdemPut(idemKey, f.running)
	})
	if err != nil {
		t.Fatalf("write fixture: %v", err)
	}
	return f
}

// close closes the fixture's database so CheckFile can open it.
func (f *fixture) close(t *testing.T) {
	t.Helper()
	if err := f.db.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

// check runs recovery.Check and turns a panic into a test failure: Check
// exists for damaged files and must report damage, not crash on it.
func check(t *testing.T, db *storage.DB) (problems []recovery.Problem, err error) {
	t.Helper()
	defer func() {
		if r := recover(); r != nil {
			t.Errorf("Check panicked: %v; want it to report the damage as a problem", r)
			problems, err = nil, errors.Newf("panic: %v", r)
		}
	}()
	return recovery.Check(db)
}

func hexID(id ulid.ULID) string { return hex.EncodeToString(id[:]) }

func statusKey(code byte, id ulid.ULID) []byte { return append([]byte{code}, id[:]...) }

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
	if err := recovery.CheckFile(f.path); err != nil {
		t.Fatalf("CheckFile(consistent) = %v, want nil", err)
	}
}

func TestCheckEmpty(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "sagad.db")
	db, err := storage.Open(path, &storage.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	if problems, err := check(t, db); err != nil || len(problems) != 0 {
		t.Errorf("Check(empty db) = %v, %v; want no problems", problems, err)
	}
	db.Close()
	if err := recovery.CheckFile(path); err != nil {
		t.Errorf("CheckFile(empty db) = %v, want nil", err)
	}
}

func TestCheckFindsDamage(t *testing.T) {
	t.Parallel()
	type want struct {
		kind string
		// id is the saga the detail must name (hex); nil for none.
		id func(f *fixture) ulid.ULID
	}
	running := func(f *fixture) ulid.ULID { return f.running }
	done := func(f *fixture) ulid.ULID { return f.done }
	undoing := func(f *fixture) ulid.ULID { return f.undoing }
	ghost := func(f *fixture) ulid.ULID { return f.ghost }

	tests := []struct {
		name   string
		damage func(f *fixture, tx *bbolt.Tx) error
		want   []want
	}{
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
				i := slices.IndexFunc(problems, func(p recovery.Problem) bool {
					return p.Kind == w.kind && strings.Contains(p.Detail, hexID(w.id(f)))
				})
				if i < 0 {
					t.Errorf("no %s problem names saga %s: %v", w.kind, hexID(w.id(f)), problems)
				}
			}

			f.close(t)
			err = recovery.CheckFile(f.path)
			if !errors.Is(err, recovery.ErrInconsistent) {
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
			if !slices.ContainsFunc(problems, func(p recovery.Problem) bool {
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
		err := recovery.CheckFile(filepath.Join(t.TempDir(), "nope.db"))
		if err == nil || errors.Is(err, recovery.ErrInconsistent) {
			t.Errorf("CheckFile(missing) = %v, want an open error that is not ErrInconsistent", err)
		}
	})
	t.Run("held by another opener", func(t *testing.T) {
		t.Parallel()
		f := setup(t)
		start := time.Now()
		err := recovery.CheckFile(f.path)
		if !errors.Is(err, storage.ErrLocked) {
			t.Errorf("CheckFile(open db) = %v, want ErrLocked", err)
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("CheckFile took %s, want it to give up within the lock timeout", took)
		}
	})
}
