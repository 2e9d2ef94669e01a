package bolt_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/cockroachdb/errors"
	"github.com/oklog/ulid/v2"
	"go.etcd.io/bbolt"

	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
	"github.com/sagad/sagad/storage/bolt"
)

// base is a fixed instant the tests build ids and wake times from.
var base = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// openDB opens a new database in a temporary directory with NoSync unless
// opts says otherwise, and closes it when the test ends.
func openDB(t *testing.T, opts *bolt.Options) (*bolt.DB, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "sagad.db")
	o := bolt.Options{NoSync: true}
	if opts != nil {
		o = *opts
	}
	db, err := bolt.Open(path, &o)
	if err != nil {
		t.Fatalf("Open(%s) = %v, want a new database", path, err)
	}
	t.Cleanup(func() {
		if err := db.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return db, path
}

// ids returns n ULIDs whose times increase by a millisecond from base, so
// they sort in creation order.
func ids(n int) []ulid.ULID {
	entropy := rand.New(rand.NewSource(1))
	out := make([]ulid.ULID, n)
	for i := range out {
		out[i] = ulid.MustNew(ulid.Timestamp(base.Add(time.Duration(i)*time.Millisecond)), entropy)
	}
	return out
}

func newSaga(id ulid.ULID, def string, st saga.Status, wake time.Time) *storage.Saga {
	return &storage.Saga{
		ID: id, Definition: def, Fingerprint: "fp-" + def, Status: st,
		Input: json.RawMessage(`{"n":1}`), CreatedAt: base, UpdatedAt: base, WakeAt: wake,
		Steps: []storage.Step{{Name: "a", Status: saga.StepPending}},
	}
}

func encode(t *testing.T, s *storage.Saga) *bolt.Encoded {
	t.Helper()
	e, err := bolt.EncodeSaga(s)
	if err != nil {
		t.Fatalf("EncodeSaga(%s): %v", s.ID, err)
	}
	return e
}

// put stores sagas in one Update.
func put(t *testing.T, db *bolt.DB, sagas ...*storage.Saga) {
	t.Helper()
	encs := make([]*bolt.Encoded, len(sagas))
	for i, s := range sagas {
		encs[i] = encode(t, s)
	}
	err := db.Update(func(tx *bolt.Tx) error {
		for _, e := range encs {
			if err := tx.SagaPut(e); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Update(SagaPut): %v", err)
	}
}

// view runs fn in a read transaction and fails the test on error.
func view(t *testing.T, db *bolt.DB, fn func(tx *bolt.Tx) error) {
	t.Helper()
	if err := db.View(fn); err != nil {
		t.Fatalf("View: %v", err)
	}
}

func requireIs(t *testing.T, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s = %v, want an error marked %q", what, err, target)
	}
}

func TestOpenCreatesAndReopens(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "sagad.db")
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("stat before Open: %v, want not-exist", err)
	}
	db, err := bolt.Open(path, nil) // nil options: the defaults, with fsync
	if err != nil {
		t.Fatalf("Open(new file): %v", err)
	}
	if db.Path() != path {
		t.Errorf("Path() = %q, want %q", db.Path(), path)
	}
	id := ids(1)[0]
	put(t, db, newSaga(id, "order", saga.StatusRunning, base))
	if err := db.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := db.Close(); err != nil {
		t.Errorf("second Close = %v, want nil", err)
	}
	if err := db.Update(func(*bolt.Tx) error { return nil }); !errors.Is(err, storage.ErrClosed) {
		t.Errorf("Update after Close = %v, want ErrClosed", err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("stat after Close: %v, want the file to exist", err)
	}

	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	db, err = bolt.Open(path, &bolt.Options{NoSync: true})
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	view(t, db, func(tx *bolt.Tx) error {
		s, err := tx.SagaGet(id)
		if err != nil {
			return err
		}
		if s.ID != id || s.Definition != "order" || s.Status != saga.StatusRunning || !s.WakeAt.Equal(base) {
			t.Errorf("SagaGet after reopen = %+v, want the saga written before", s)
		}
		if w, ok := tx.SagaWake(id); !ok || !w.Equal(base) {
			t.Errorf("SagaWake after reopen = %v, %v; want %v, true", w, ok, base)
		}
		return nil
	})
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	// Opening and reading wrote nothing.
	if after, err := os.ReadFile(path); err != nil || !bytes.Equal(before, after) {
		t.Errorf("opening and reading changed the file (%v)", err)
	}
}

func TestOpenLocked(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		opts    *bolt.Options
		atLeast time.Duration
	}{
		{"read-write", &bolt.Options{LockTimeout: 200 * time.Millisecond, NoSync: true}, 150 * time.Millisecond},
		{"read-only", &bolt.Options{LockTimeout: 200 * time.Millisecond, ReadOnly: true}, 150 * time.Millisecond},
		{"default timeout", nil, 900 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, path := openDB(t, nil)
			start := time.Now()
			db2, err := bolt.Open(path, tt.opts)
			took := time.Since(start)
			if err == nil {
				db2.Close()
				t.Fatalf("second Open of a held file succeeded, want ErrLocked")
			}
			requireIs(t, "second Open", err, bolt.ErrLocked)
			if errors.Is(err, storage.ErrCorrupt) {
				t.Errorf("second Open = %v, must not be marked ErrCorrupt", err)
			}
			if !strings.Contains(errors.FlattenHints(err), "another process") {
				t.Errorf("hint = %q, want it to mention another process", errors.FlattenHints(err))
			}
			if took > 5*time.Second || took < tt.atLeast {
				t.Errorf("second Open returned after %s, want between %s and 5s", took, tt.atLeast)
			}
		})
	}
}

func TestOpenReleasesLockOnClose(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "sagad.db")
	db, err := bolt.Open(path, &bolt.Options{NoSync: true})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if err := db.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	db, err = bolt.Open(path, &bolt.Options{NoSync: true, LockTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatalf("Open after Close = %v, want the lock released", err)
	}
	db.Close()
}

// writeFile writes a test fixture and returns its path.
func writeFile(t *testing.T, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// boltFile creates a bbolt file with fn run in an update, bypassing storage.
func boltFile(t *testing.T, path string, fn func(tx *bbolt.Tx) error) string {
	t.Helper()
	if path == "" {
		path = filepath.Join(t.TempDir(), "bolt.db")
	}
	b, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatalf("bbolt.Open: %v", err)
	}
	if fn != nil {
		if err := b.Update(fn); err != nil {
			t.Fatalf("bbolt update: %v", err)
		}
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// sagadFile creates a sagad file, closes it, then changes it with fn through
// bbolt directly.
func sagadFile(t *testing.T, fn func(tx *bbolt.Tx) error) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "sagad.db")
	db, err := bolt.Open(path, &bolt.Options{NoSync: true})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	return boltFile(t, path, fn)
}

// damagedFile is a sagad file whose definitions bucket has its root page
// overwritten with garbage: bbolt's own page checks would panic on it, on a
// goroutine of bbolt's where nothing can recover.
func damagedFile(t *testing.T) string {
	t.Helper()
	var root uint64
	path := sagadFile(t, func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte("definitions"))
		for i := range 200 { // enough not to be an inline bucket
			if err := b.Put([]byte{byte(i), 1, 2, 3}, make([]byte, 100)); err != nil {
				return err
			}
		}
		return nil
	})
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	_ = db.View(func(tx *bbolt.Tx) error { root = uint64(tx.Bucket([]byte("definitions")).RootPage()); return nil })
	size := int64(db.Info().PageSize)
	if err := db.Close(); err != nil || root == 0 {
		t.Fatalf("root page %d: %v", root, err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	garbage := make([]byte, size)
	for i := range garbage {
		garbage[i] = byte(i*7 + 3)
	}
	if _, err := f.WriteAt(garbage, int64(root)*size); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestOpenRejects(t *testing.T) {
	t.Parallel()
	random := make([]byte, 64<<10)
	rand.New(rand.NewSource(7)).Read(random)
	sentinels := []error{bolt.ErrLocked, bolt.ErrNotSagad, storage.ErrSchema, storage.ErrCorrupt}

	tests := []struct {
		name     string
		file     func(t *testing.T) string
		readOnly bool
		want     error
		// msg is a substring of the error; empty means not checked.
		msg string
	}{
		{
			name: "someone else's bbolt file",
			file: func(t *testing.T) string {
				return boltFile(t, "", func(tx *bbolt.Tx) error { _, err := tx.CreateBucket([]byte("foo")); return err })
			},
			want: bolt.ErrNotSagad,
		},
		{
			name: "someone else's bbolt file, read-only",
			file: func(t *testing.T) string {
				return boltFile(t, "", func(tx *bbolt.Tx) error { _, err := tx.CreateBucket([]byte("foo")); return err })
			},
			readOnly: true,
			want:     bolt.ErrNotSagad,
		},
		{
			name: "someone else's bbolt file with a meta bucket",
			file: func(t *testing.T) string {
				return boltFile(t, "", func(tx *bbolt.Tx) error {
					b, err := tx.CreateBucket([]byte("meta"))
					if err != nil {
						return err
					}
					return b.Put([]byte("magic"), []byte("other"))
				})
			},
			want: bolt.ErrNotSagad,
		},
		{
			name:     "empty bbolt file, read-only",
			file:     func(t *testing.T) string { return boltFile(t, "", nil) },
			readOnly: true,
			want:     bolt.ErrNotSagad,
			msg:      "read-only",
		},
		{
			name: "random bytes",
			file: func(t *testing.T) string { return writeFile(t, "random.db", random) },
			want: storage.ErrCorrupt,
		},
		{
			name:     "random bytes, read-only",
			file:     func(t *testing.T) string { return writeFile(t, "random.db", random) },
			readOnly: true,
			want:     storage.ErrCorrupt,
		},
		{
			name: "text file",
			file: func(t *testing.T) string {
				return writeFile(t, "notes.txt", []byte(strings.Repeat("this is not a database\n", 400)))
			},
			want: storage.ErrCorrupt,
		},
		{
			name: "short text file",
			file: func(t *testing.T) string { return writeFile(t, "notes.txt", []byte("hello\n")) },
			want: storage.ErrCorrupt,
		},
		{
			name: "schema 99",
			file: func(t *testing.T) string {
				return sagadFile(t, func(tx *bbolt.Tx) error {
					return tx.Bucket([]byte("meta")).Put([]byte("schema"), binary.BigEndian.AppendUint32(nil, 99))
				})
			},
			want: storage.ErrSchema,
			msg:  "schema version 99",
		},
		{
			name: "schema 99, read-only",
			file: func(t *testing.T) string {
				return sagadFile(t, func(tx *bbolt.Tx) error {
					return tx.Bucket([]byte("meta")).Put([]byte("schema"), binary.BigEndian.AppendUint32(nil, 99))
				})
			},
			readOnly: true,
			want:     storage.ErrSchema,
		},
		{
			name: "schema missing",
			file: func(t *testing.T) string {
				return sagadFile(t, func(tx *bbolt.Tx) error { return tx.Bucket([]byte("meta")).Delete([]byte("schema")) })
			},
			want: storage.ErrCorrupt,
		},
		{
			name: "a damaged page",
			file: damagedFile,
			want: storage.ErrCorrupt,
			msg:  "damaged",
		},
		{
			name:     "a damaged page, read-only",
			file:     damagedFile,
			readOnly: true,
			want:     storage.ErrCorrupt,
			msg:      "damaged",
		},
		{
			name: "magic changed",
			file: func(t *testing.T) string {
				return sagadFile(t, func(tx *bbolt.Tx) error { return tx.Bucket([]byte("meta")).Put([]byte("magic"), []byte("sagae")) })
			},
			want: bolt.ErrNotSagad,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := tt.file(t)
			before, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			db, err := bolt.Open(path, &bolt.Options{ReadOnly: tt.readOnly, NoSync: true, LockTimeout: 200 * time.Millisecond})
			if err == nil {
				db.Close()
				t.Fatalf("Open succeeded, want an error marked %q", tt.want)
			}
			requireIs(t, "Open", err, tt.want)
			for _, s := range sentinels {
				if s != tt.want && errors.Is(err, s) {
					t.Errorf("Open = %v, must not also be marked %q", err, s)
				}
			}
			if tt.msg != "" && !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("Open = %q, want the message to contain %q", err, tt.msg)
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("Open = %q, want the message to name the file", err)
			}
			// A file sagad cannot use is left as it was.
			after, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(before, after) {
				t.Errorf("Open changed a file it rejected")
			}
		})
	}
}

func TestOpenMissingDirectory(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "no", "such", "dir", "sagad.db")
	db, err := bolt.Open(path, &bolt.Options{NoSync: true})
	if err == nil {
		db.Close()
		t.Fatalf("Open in a missing directory succeeded, want an error")
	}
	if !os.IsNotExist(errors.UnwrapAll(err)) {
		t.Errorf("Open = %v, want a not-exist cause", err)
	}
	if errors.Is(err, storage.ErrCorrupt) {
		t.Errorf("Open = %v, a missing directory must not be reported as corrupt", err)
	}
}

func TestOpenReadOnly(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "sagad.db")
	db, err := bolt.Open(path, &bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	id := ids(1)[0]
	put(t, db, newSaga(id, "order", saga.StatusCompleted, time.Time{}))
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	ro1, err := bolt.Open(path, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("Open read-only: %v", err)
	}
	defer ro1.Close()
	// Read-only opens share the lock.
	ro2, err := bolt.Open(path, &bolt.Options{ReadOnly: true, LockTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatalf("second read-only Open = %v, want it to share the lock", err)
	}
	defer ro2.Close()
	view(t, ro2, func(tx *bolt.Tx) error {
		if !tx.SagaExists(id) {
			t.Errorf("SagaExists(%s) = false in read-only db, want true", id)
		}
		return nil
	})
	ran := false
	err = ro1.Update(func(tx *bolt.Tx) error {
		ran = true
		return tx.SagaPut(encode(t, newSaga(ids(2)[1], "order", saga.StatusRunning, time.Time{})))
	})
	if err == nil {
		t.Fatalf("Update on a read-only db succeeded, want an error")
	}
	if ran {
		t.Errorf("Update on a read-only db ran its function")
	}
}

func TestOpenEmptyFileReadOnly(t *testing.T) {
	t.Parallel()
	// A new, empty file created by bbolt: read-write Open makes it a sagad
	// file; read-only Open refuses it (above) and leaves it empty.
	path := boltFile(t, "", nil)
	db, err := bolt.Open(path, &bolt.Options{NoSync: true})
	if err != nil {
		t.Fatalf("Open(empty bbolt file) = %v, want it adopted", err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db, err = bolt.Open(path, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("read-only Open after adoption = %v, want success", err)
	}
	db.Close()
}

func TestEncodeSagaUnknownStatus(t *testing.T) {
	t.Parallel()
	for _, st := range []saga.Status{"", "done"} {
		if _, err := bolt.EncodeSaga(newSaga(ids(1)[0], "order", st, time.Time{})); err == nil {
			t.Errorf("EncodeSaga(status %q) = nil error, want unknown status", st)
		}
	}
}

var commitModes = []struct {
	name string
	mode bolt.CommitMode
}{
	{"group", bolt.CommitGroup},
	{"each", bolt.CommitEach},
	{"batch", bolt.CommitBatch},
}

func TestUpdateConcurrentWritesLand(t *testing.T) {
	t.Parallel()
	const goroutines, writes = 200, 20
	for _, cm := range commitModes {
		t.Run(cm.name, func(t *testing.T) {
			t.Parallel()
			db, _ := openDB(t, &bolt.Options{NoSync: true, CommitMode: cm.mode})
			var wg sync.WaitGroup
			errs := make(chan error, goroutines*writes)
			for g := range goroutines {
				wg.Go(func() {
					entropy := rand.New(rand.NewSource(int64(g)))
					for i := range writes {
						id := ulid.MustNew(ulid.Timestamp(base)+uint64(g), entropy)
						enc, err := bolt.EncodeSaga(newSaga(id, fmt.Sprintf("def%d", i%3), saga.StatusRunning, time.Time{}))
						if err != nil {
							errs <- err
							continue
						}
						errs <- db.Update(func(tx *bolt.Tx) error { return tx.SagaPut(enc) })
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Fatalf("concurrent Update: %v", err)
				}
			}
			view(t, db, func(tx *bolt.Tx) error {
				if got := tx.SagaCountByStatus()[saga.StatusRunning]; got != goroutines*writes {
					t.Errorf("running sagas in the status index = %d, want %d", got, goroutines*writes)
				}
				all, more, err := tx.SagaList(storage.ListOptions{Limit: goroutines*writes + 1})
				if err != nil {
					return err
				}
				if len(all) != goroutines*writes || more {
					t.Errorf("SagaList = %d sagas (more %v), want %d", len(all), more, goroutines*writes)
				}
				return nil
			})
		})
	}
}

// errFor returns an error unique to write i.
func errFor(i int) error { return errors.Newf("storage_test: write %d refused", i) }

// runMixedWrites runs n concurrent Updates; every fifth stores a saga and then
// fails. It checks that each failing write gets its own error and leaves no
// trace, and that every other write lands. It returns how often each write's
// function ran.
func runMixedWrites(t *testing.T, db *bolt.DB, start func(), n int) []int32 {
	t.Helper()
	all := ids(n)
	runs := make([]int32, n)
	results := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		enc := encode(t, newSaga(all[i], "order", saga.StatusRunning, base.Add(time.Duration(i)*time.Second)))
		wg.Go(func() {
			results[i] = db.Update(func(tx *bolt.Tx) error {
				atomic.AddInt32(&runs[i], 1)
				if err := tx.SagaPut(enc); err != nil {
					return err
				}
				if i%5 == 2 {
					return errFor(i)
				}
				return nil
			})
		})
	}
	start()
	wg.Wait()
	view(t, db, func(tx *bolt.Tx) error {
		for i, err := range results {
			fails := i%5 == 2
			switch {
			case fails && !errors.Is(err, errFor(i)):
				t.Errorf("write %d returned %v, want its own error %q", i, err, errFor(i))
			case fails && errors.Is(err, errFor(i-1)):
				t.Errorf("write %d returned %v, another write's error", i, err)
			case !fails && err != nil:
				t.Errorf("write %d returned %v, want nil: another write's failure must not fail it", i, err)
			}
			if got := tx.SagaExists(all[i]); got == fails {
				t.Errorf("write %d (fails %v): saga stored = %v, want %v", i, fails, got, !fails)
			}
			_, due := tx.SagaWake(all[i])
			if due == fails {
				t.Errorf("write %d (fails %v): SagaWake found = %v, want %v", i, fails, due, !fails)
			}
		}
		want := 0
		for i := range n {
			if i%5 != 2 {
				want++
			}
		}
		if got := tx.SagaCountByStatus()[saga.StatusRunning]; got != want {
			t.Errorf("status index holds %d running sagas, want %d (failed writes rolled back)", got, want)
		}
		dueN := 0
		tx.DueScan(base.Add(time.Hour), func(ulid.ULID, time.Time) bool { dueN++; return true })
		if dueN != want {
			t.Errorf("due index holds %d sagas, want %d (failed writes rolled back)", dueN, want)
		}
		return nil
	})
	return runs
}

func TestUpdateFailingWriteInGroup(t *testing.T) {
	t.Parallel()
	for _, cm := range commitModes {
		t.Run(cm.name, func(t *testing.T) {
			t.Parallel()
			db, _ := openDB(t, &bolt.Options{NoSync: true, CommitMode: cm.mode})
			runMixedWrites(t, db, func() {}, 100)
		})
	}
}

// TestGroupCommitRetriesWithoutFailedWrite holds the committer inside a
// transaction until every writer has queued, so all of them share the next
// group, and checks that the group is committed again without the writes
// that failed.
func TestGroupCommitRetriesWithoutFailedWrite(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "sagad.db")
		db, err := bolt.Open(path, &bolt.Options{NoSync: true})
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		gate, inside := make(chan struct{}), make(chan struct{})
		held := make(chan error, 1)
		go func() {
			held <- db.Update(func(*bolt.Tx) error { close(inside); <-gate; return nil })
		}()
		<-inside
		const n = 20
		runs := runMixedWrites(t, db, func() {
			synctest.Wait() // every writer is queued behind the held commit
			close(gate)
		}, n)
		if err := <-held; err != nil {
			t.Errorf("held Update: %v", err)
		}
		// The queue is FIFO but goroutines queue in any order; at least one
		// succeeding write must have shared a group with a failing one and
		// run again.
		var again int
		for i, r := range runs {
			switch {
			case r < 1:
				t.Errorf("write %d ran %d times, want at least once", i, r)
			case r > 1:
				again++
			}
		}
		if again == 0 {
			t.Errorf("no write ran twice: want the writes grouped into one commit that is retried without the failed ones (runs %v)", runs)
		}
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
	})
}

func TestCloseCommitsQueuedWrites(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "sagad.db")
	db, err := bolt.Open(path, &bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	const n = 300
	all := ids(n)
	results := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		enc := encode(t, newSaga(all[i], "order", saga.StatusRunning, time.Time{}))
		wg.Go(func() { results[i] = db.Update(func(tx *bolt.Tx) error { return tx.SagaPut(enc) }) })
	}
	if err := db.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	wg.Wait()
	db, err = bolt.Open(path, &bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	view(t, db, func(tx *bolt.Tx) error {
		for i, err := range results {
			switch {
			case err == nil && !tx.SagaExists(all[i]):
				t.Errorf("write %d returned nil before Close but is not stored", i)
			case err != nil && !errors.Is(err, storage.ErrClosed):
				t.Errorf("write %d returned %v, want nil or ErrClosed", i, err)
			case err != nil && tx.SagaExists(all[i]):
				t.Errorf("write %d returned %v but is stored", i, err)
			}
		}
		return nil
	})
}

// TestCloseCommitsQueuedWritesHeld queues writes behind a held commit, then
// closes: Close must commit every write that was queued before it, whichever
// of the queue and the stop signal the committer sees first.
func TestCloseCommitsQueuedWritesHeld(t *testing.T) {
	t.Parallel()
	for round := range 10 {
		synctest.Test(t, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "sagad.db")
			db, err := bolt.Open(path, &bolt.Options{NoSync: true})
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			gate, inside := make(chan struct{}), make(chan struct{})
			go func() { _ = db.Update(func(*bolt.Tx) error { close(inside); <-gate; return nil }) }()
			<-inside
			const n = 20
			all := ids(n)
			results := make([]error, n)
			var wg sync.WaitGroup
			for i := range n {
				enc := encode(t, newSaga(all[i], "order", saga.StatusRunning, time.Time{}))
				wg.Go(func() { results[i] = db.Update(func(tx *bolt.Tx) error { return tx.SagaPut(enc) }) })
			}
			synctest.Wait() // every write is queued
			closed := make(chan error, 1)
			go func() { closed <- db.Close() }()
			synctest.Wait() // Close refuses new writes and waits for the committer
			close(gate)
			wg.Wait()
			if err := <-closed; err != nil {
				t.Fatalf("Close: %v", err)
			}
			for i, err := range results {
				if err != nil {
					t.Errorf("round %d: write %d, queued before Close, returned %v; want nil", round, i, err)
				}
			}
			db, err = bolt.Open(path, &bolt.Options{NoSync: true})
			if err != nil {
				t.Fatal(err)
			}
			view(t, db, func(tx *bolt.Tx) error {
				if got := tx.SagaCountByStatus()[saga.StatusRunning]; got != n {
					t.Errorf("round %d: %d sagas stored after Close, want %d", round, got, n)
				}
				return nil
			})
			if err := db.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// indexState is what the status and due indexes say about sagas.
type indexState struct {
	byStatus map[saga.Status][]ulid.ULID
	due      []ulid.ULID
	dueWakes []time.Time
}

func readIndexes(tx *bolt.Tx) indexState {
	st := indexState{byStatus: map[saga.Status][]ulid.ULID{}}
	for _, s := range saga.Statuses {
		tx.SagaIDsByStatus(s, func(id ulid.ULID) bool { st.byStatus[s] = append(st.byStatus[s], id); return true })
	}
	tx.DueScan(time.Unix(0, 1<<62), func(id ulid.ULID, w time.Time) bool {
		st.due = append(st.due, id)
		st.dueWakes = append(st.dueWakes, w)
		return true
	})
	return st
}

func TestSagaPutKeepsIndexes(t *testing.T) {
	t.Parallel()
	db, _ := openDB(t, nil)
	id := ids(3)
	a, b, c := id[0], id[1], id[2]
	t1, t2, t3 := base.Add(time.Second), base.Add(2*time.Second), base.Add(3*time.Second)

	// Each step writes some sagas, then the whole index state is compared.
	steps := []struct {
		name     string
		put      []*storage.Saga
		byStatus map[saga.Status][]ulid.ULID
		due      []ulid.ULID
		wakes    []time.Time
	}{
		{
			name:     "create",
			put:      []*storage.Saga{newSaga(a, "d", saga.StatusRunning, t2), newSaga(b, "d", saga.StatusRunning, t1), newSaga(c, "d", saga.StatusRunning, time.Time{})},
			byStatus: map[saga.Status][]ulid.ULID{saga.StatusRunning: {a, b, c}},
			due:      []ulid.ULID{b, a}, wakes: []time.Time{t1, t2},
		},
		{
			name:     "same status and wake rewritten",
			put:      []*storage.Saga{newSaga(a, "d", saga.StatusRunning, t2)},
			byStatus: map[saga.Status][]ulid.ULID{saga.StatusRunning: {a, b, c}},
			due:      []ulid.ULID{b, a}, wakes: []time.Time{t1, t2},
		},
		{
			name:     "status changed, wake moved",
			put:      []*storage.Saga{newSaga(a, "d", saga.StatusCompensating, t3)},
			byStatus: map[saga.Status][]ulid.ULID{saga.StatusRunning: {b, c}, saga.StatusCompensating: {a}},
			due:      []ulid.ULID{b, a}, wakes: []time.Time{t1, t3},
		},
		{
			name:     "wake set on a saga that had none",
			put:      []*storage.Saga{newSaga(c, "d", saga.StatusRunning, t1)},
			byStatus: map[saga.Status][]ulid.ULID{saga.StatusRunning: {b, c}, saga.StatusCompensating: {a}},
			due:      []ulid.ULID{b, c, a}, wakes: []time.Time{t1, t1, t3},
		},
		{
			name:     "finished: wake cleared",
			put:      []*storage.Saga{newSaga(a, "d", saga.StatusCompensated, time.Time{}), newSaga(b, "d", saga.StatusCompleted, time.Time{})},
			byStatus: map[saga.Status][]ulid.ULID{saga.StatusRunning: {c}, saga.StatusCompensated: {a}, saga.StatusCompleted: {b}},
			due:      []ulid.ULID{c}, wakes: []time.Time{t1},
		},
		{
			name:     "failed",
			put:      []*storage.Saga{newSaga(c, "d", saga.StatusFailed, time.Time{})},
			byStatus: map[saga.Status][]ulid.ULID{saga.StatusFailed: {c}, saga.StatusCompensated: {a}, saga.StatusCompleted: {b}},
		},
	}
	for _, st := range steps {
		put(t, db, st.put...)
		view(t, db, func(tx *bolt.Tx) error {
			got := readIndexes(tx)
			for _, s := range saga.Statuses {
				if !slices.Equal(got.byStatus[s], st.byStatus[s]) {
					t.Errorf("%s: SagaIDsByStatus(%s) = %v, want %v", st.name, s, got.byStatus[s], st.byStatus[s])
				}
				if n := tx.SagaCountByStatus()[s]; n != len(st.byStatus[s]) {
					t.Errorf("%s: SagaCountByStatus()[%s] = %d, want %d", st.name, s, n, len(st.byStatus[s]))
				}
			}
			if !slices.Equal(got.due, st.due) || !slices.EqualFunc(got.dueWakes, st.wakes, time.Time.Equal) {
				t.Errorf("%s: due index = %v at %v, want %v at %v", st.name, got.due, got.dueWakes, st.due, st.wakes)
			}
			// Every saga's header wake agrees with its record.
			for _, id := range []ulid.ULID{a, b, c} {
				s, err := tx.SagaGet(id)
				if err != nil {
					return err
				}
				w, ok := tx.SagaWake(id)
				if !ok || !w.Equal(s.WakeAt) {
					t.Errorf("%s: SagaWake(%s) = %v, %v; want %v, true", st.name, id, w, ok, s.WakeAt)
				}
			}
			return nil
		})
	}
}

func TestDueQueries(t *testing.T) {
	t.Parallel()
	db, _ := openDB(t, nil)
	id := ids(3)
	t1, t2 := base.Add(time.Second), base.Add(2*time.Second)
	put(t, db, newSaga(id[0], "d", saga.StatusRunning, t2), newSaga(id[1], "d", saga.StatusRunning, t1),
		newSaga(id[2], "d", saga.StatusCompleted, time.Time{}))

	view(t, db, func(tx *bolt.Tx) error {
		if next, ok := tx.DueNext(); !ok || !next.Equal(t1) {
			t.Errorf("DueNext() = %v, %v; want %v, true", next, ok, t1)
		}
		afterTests := []struct {
			now  time.Time
			want time.Time
			ok   bool
		}{
			{base, t1, true},
			{t1.Add(-time.Nanosecond), t1, true},
			{t1, t2, true}, // strictly after now
			{t2.Add(-time.Nanosecond), t2, true},
			{t2, time.Time{}, false},
		}
		for _, at := range afterTests {
			got, ok := tx.DueAfter(at.now)
			if ok != at.ok || !got.Equal(at.want) {
				t.Errorf("DueAfter(%v) = %v, %v; want %v, %v", at.now, got, ok, at.want, at.ok)
			}
		}
		scanTests := []struct {
			now  time.Time
			want []ulid.ULID
		}{
			{t1.Add(-time.Nanosecond), nil},
			{t1, []ulid.ULID{id[1]}}, // due at exactly now
			{t2.Add(-time.Nanosecond), []ulid.ULID{id[1]}},
			{t2, []ulid.ULID{id[1], id[0]}},
			{t2.Add(time.Hour), []ulid.ULID{id[1], id[0]}},
		}
		for _, st := range scanTests {
			var got []ulid.ULID
			tx.DueScan(st.now, func(id ulid.ULID, _ time.Time) bool { got = append(got, id); return true })
			if !slices.Equal(got, st.want) {
				t.Errorf("DueScan(%v) = %v, want %v", st.now, got, st.want)
			}
		}
		// fn returning false stops the scan.
		n := 0
		tx.DueScan(t2, func(ulid.ULID, time.Time) bool { n++; return false })
		if n != 1 {
			t.Errorf("DueScan stopped after %d calls, want 1", n)
		}
		n = 0
		tx.SagaIDsByStatus(saga.StatusRunning, func(ulid.ULID) bool { n++; return false })
		if n != 1 {
			t.Errorf("SagaIDsByStatus stopped after %d calls, want 1", n)
		}
		if w, ok := tx.SagaWake(id[2]); !ok || !w.IsZero() {
			t.Errorf("SagaWake(no wake) = %v, %v; want zero, true", w, ok)
		}
		if _, ok := tx.SagaWake(ids(4)[3]); ok {
			t.Errorf("SagaWake(missing saga) found, want false")
		}
		return nil
	})

	empty, _ := openDB(t, nil)
	view(t, empty, func(tx *bolt.Tx) error {
		if _, ok := tx.DueNext(); ok {
			t.Errorf("DueNext() on an empty db found a time")
		}
		if _, ok := tx.DueAfter(base); ok {
			t.Errorf("DueAfter() on an empty db found a time")
		}
		return nil
	})
}

// TestTimesOutOfRange stores wake-ups and deadlines outside what int64
// nanoseconds name (1677 to 2262): they saturate, so that a wake-up centuries
// away is never stored as one in the past (and run at once), and one before
// 1970 is due.
func TestTimesOutOfRange(t *testing.T) {
	t.Parallel()
	db, _ := openDB(t, nil)
	last, first := time.Unix(0, math.MaxInt64), time.Unix(0, math.MinInt64)
	far := time.Date(2400, 1, 1, 0, 0, 0, 0, time.UTC)
	id := ids(4)
	farWake := newSaga(id[0], "d", saga.StatusRunning, far)
	farWake.Deadline = far.Add(time.Hour)
	tests := []struct {
		s                  *storage.Saga
		wantWake, wantDead time.Time
	}{
		{farWake, last, last},
		{newSaga(id[1], "d", saga.StatusRunning, time.Date(1500, 1, 1, 0, 0, 0, 0, time.UTC)), time.Unix(0, 1), time.Time{}},
		{newSaga(id[2], "d", saga.StatusRunning, time.Date(1960, 1, 1, 0, 0, 0, 0, time.UTC)), time.Unix(0, 1), time.Time{}},
		{newSaga(id[3], "d", saga.StatusRunning, base), base, time.Time{}},
	}
	tests[2].s.Deadline, tests[2].wantDead = time.Date(1600, 1, 1, 0, 0, 0, 0, time.UTC), first
	var sagas []*storage.Saga
	for _, tt := range tests {
		sagas = append(sagas, tt.s)
	}
	put(t, db, sagas...)

	view(t, db, func(tx *bolt.Tx) error {
		for _, tt := range tests {
			got, err := tx.SagaGet(tt.s.ID)
			if err != nil {
				t.Fatal(err)
			}
			if !got.WakeAt.Equal(tt.wantWake) || !got.Deadline.Equal(tt.wantDead) {
				t.Errorf("saga waking at %v, deadline %v: stored wake %v, deadline %v; want %v, %v",
					tt.s.WakeAt, tt.s.Deadline, got.WakeAt, got.Deadline, tt.wantWake, tt.wantDead)
			}
		}
		var due []ulid.ULID
		tx.DueScan(base, func(id ulid.ULID, _ time.Time) bool { due = append(due, id); return true })
		if want := []ulid.ULID{id[1], id[2], id[3]}; !slices.Equal(due, want) {
			t.Errorf("DueScan(%v) = %v, want %v (not the saga waking in 2400)", base, due, want)
		}
		if next, ok := tx.DueAfter(base); !ok || !next.Equal(last) {
			t.Errorf("DueAfter(%v) = %v, %v; want %v, true", base, next, ok, last)
		}
		if next, ok := tx.DueAfter(far); ok {
			t.Errorf("DueAfter(%v) = %v, want none", far, next)
		}
		var all []ulid.ULID
		tx.DueScan(far, func(id ulid.ULID, _ time.Time) bool { all = append(all, id); return true })
		if len(all) != 4 || all[3] != id[0] {
			t.Errorf("DueScan(%v) = %v, want all four, the saga waking in 2400 last", far, all)
		}
		return nil
	})
}

func logEntries(t *testing.T, seqs ...uint32) []bolt.EncodedLog {
	t.Helper()
	out := make([]bolt.EncodedLog, len(seqs))
	for i, s := range seqs {
		out[i] = bolt.EncodeLog(&storage.LogEntry{Seq: s, At: base, Event: storage.EventAttemptStarted, Note: fmt.Sprint(s)})
	}
	return out
}

func logSeqs(t *testing.T, tx *bolt.Tx, id ulid.ULID) []uint32 {
	t.Helper()
	entries, err := tx.LogList(id)
	if err != nil {
		t.Fatalf("LogList(%s): %v", id, err)
	}
	var out []uint32
	for _, e := range entries {
		if e.Note != fmt.Sprint(e.Seq) {
			t.Errorf("log entry %d has note %q, want the entry written with that seq", e.Seq, e.Note)
		}
		out = append(out, e.Seq)
	}
	return out
}

func TestSagaPutLog(t *testing.T) {
	t.Parallel()
	db, _ := openDB(t, nil)
	id := ids(4)
	sagas := make([]*bolt.Encoded, 3)
	for i := range sagas {
		e, err := bolt.EncodeSaga(newSaga(id[i], "d", saga.StatusRunning, time.Time{}))
		if err != nil {
			t.Fatal(err)
		}
		sagas[i] = e
	}
	// Interleave the sagas' entries in one transaction, then add more.
	err := db.Update(func(tx *bolt.Tx) error {
		if err := tx.SagaPut(sagas[1], logEntries(t, 1, 2)...); err != nil {
			return err
		}
		if err := tx.SagaPut(sagas[0], logEntries(t, 1, 2)...); err != nil {
			return err
		}
		if err := tx.SagaPut(sagas[2], logEntries(t, 1)...); err != nil {
			return err
		}
		return tx.SagaPut(sagas[1], logEntries(t, 3)...)
	})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error { return tx.SagaPut(sagas[1], logEntries(t, 256, 70000)...) })
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error { return tx.SagaPut(sagas[0]) }) // no new entries
	if err != nil {
		t.Fatal(err)
	}
	view(t, db, func(tx *bolt.Tx) error {
		tests := []struct {
			id   ulid.ULID
			want []uint32
		}{
			{id[0], []uint32{1, 2}},
			{id[1], []uint32{1, 2, 3, 256, 70000}},
			{id[2], []uint32{1}},
		}
		for _, tt := range tests {
			if got := logSeqs(t, tx, tt.id); !slices.Equal(got, tt.want) {
				t.Errorf("LogList(%s) seqs = %v, want %v", tt.id, got, tt.want)
			}
		}
		if _, err := tx.LogList(id[3]); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("LogList(unknown saga) = %v, want ErrNotFound", err)
		}
		return nil
	})
}

func TestSagaDelete(t *testing.T) {
	t.Parallel()
	db, _ := openDB(t, nil)
	id := ids(3)
	victim, before, after := id[1], id[0], id[2]
	sv := newSaga(victim, "d", saga.StatusRunning, base.Add(time.Second))
	sv.IdempotencyKey = "key-victim"
	sb := newSaga(before, "d", saga.StatusRunning, base.Add(time.Second))
	sb.IdempotencyKey = "key-before"
	sa := newSaga(after, "d", saga.StatusRunning, base.Add(2*time.Second))
	put(t, db, sb, sv, sa)
	err := db.Update(func(tx *bolt.Tx) error {
		for _, s := range []*storage.Saga{sb, sv, sa} {
			e, err := bolt.EncodeSaga(s)
			if err != nil {
				return err
			}
			if err := tx.SagaPut(e, logEntries(t, 1, 2, 3)...); err != nil {
				return err
			}
			if err := tx.AbortPut(s.ID, base); err != nil {
				return err
			}
		}
		if err := tx.IdemPut(sb.IdempotencyKey, before); err != nil {
			return err
		}
		return tx.IdemPut(sv.IdempotencyKey, victim)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error { return tx.SagaDelete(victim) }); err != nil {
		t.Fatalf("SagaDelete: %v", err)
	}
	err = db.Update(func(tx *bolt.Tx) error { return tx.SagaDelete(victim) })
	requireIs(t, "second SagaDelete", err, storage.ErrNotFound)

	view(t, db, func(tx *bolt.Tx) error {
		if tx.SagaExists(victim) {
			t.Errorf("SagaExists(deleted) = true")
		}
		if _, err := tx.SagaGet(victim); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("SagaGet(deleted) = %v, want ErrNotFound", err)
		}
		if _, ok := tx.SagaWake(victim); ok {
			t.Errorf("SagaWake(deleted) found")
		}
		got := readIndexes(tx)
		if want := []ulid.ULID{before, after}; !slices.Equal(got.byStatus[saga.StatusRunning], want) {
			t.Errorf("status index after delete = %v, want %v", got.byStatus[saga.StatusRunning], want)
		}
		if want := []ulid.ULID{before, after}; !slices.Equal(got.due, want) {
			t.Errorf("due index after delete = %v, want %v", got.due, want)
		}
		if _, ok := tx.IdemGet(sv.IdempotencyKey); ok {
			t.Errorf("IdemGet(deleted saga's key) found")
		}
		if got, ok := tx.IdemGet(sb.IdempotencyKey); !ok || got != before {
			t.Errorf("IdemGet(other saga's key) = %s, %v; want %s, true", got, ok, before)
		}
		if tx.AbortGet(victim) {
			t.Errorf("AbortGet(deleted) = true")
		}
		if !tx.AbortGet(before) || !tx.AbortGet(after) {
			t.Errorf("other sagas' abort requests were removed")
		}
		if _, err := tx.LogList(victim); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("LogList(deleted) = %v, want ErrNotFound", err)
		}
		deletedLogs := 0
		_ = tx.Bolt().Bucket([]byte("log")).ForEach(func(k, v []byte) error {
			if len(v) >= 24 && bytes.Equal(v[8:24], victim[:]) {
				deletedLogs++
			}
			return nil
		})
		if deletedLogs != 0 {
			t.Errorf("%d log entries of the deleted saga remain", deletedLogs)
		}
		for _, other := range []ulid.ULID{before, after} {
			if got := logSeqs(t, tx, other); !slices.Equal(got, []uint32{1, 2, 3}) {
				t.Errorf("LogList(%s) after deleting a neighbour = %v, want [1 2 3]", other, got)
			}
		}
		return nil
	})
}

func TestSagaGetMissing(t *testing.T) {
	t.Parallel()
	db, _ := openDB(t, nil)
	view(t, db, func(tx *bolt.Tx) error {
		_, err := tx.SagaGet(ids(1)[0])
		requireIs(t, "SagaGet(missing)", err, storage.ErrNotFound)
		return nil
	})
}

func TestSmallRecords(t *testing.T) {
	t.Parallel()
	db, _ := openDB(t, nil)
	id := ids(2)
	state := []byte(`{"state":"open"}`)
	err := db.Update(func(tx *bolt.Tx) error {
		if err := tx.IdemPut("k1", id[0]); err != nil {
			return err
		}
		if err := tx.AbortPut(id[1], base); err != nil {
			return err
		}
		return tx.BreakerPut("payments", state)
	})
	if err != nil {
		t.Fatal(err)
	}
	var breaker []byte
	view(t, db, func(tx *bolt.Tx) error {
		if got, ok := tx.IdemGet("k1"); !ok || got != id[0] {
			t.Errorf("IdemGet(k1) = %s, %v; want %s, true", got, ok, id[0])
		}
		if _, ok := tx.IdemGet("k2"); ok {
			t.Errorf("IdemGet(unknown key) found")
		}
		if !tx.AbortGet(id[1]) || tx.AbortGet(id[0]) {
			t.Errorf("AbortGet = %v, %v; want true for the aborted saga only", tx.AbortGet(id[1]), tx.AbortGet(id[0]))
		}
		if tx.BreakerGet("other") != nil {
			t.Errorf("BreakerGet(unknown) != nil")
		}
		breaker = tx.BreakerGet("payments")
		return nil
	})
	// The returned state is a copy, valid after the transaction.
	if string(breaker) != string(state) {
		t.Errorf("BreakerGet(payments) = %q, want %q", breaker, state)
	}
	if err := db.Update(func(tx *bolt.Tx) error { return tx.AbortDelete(id[1]) }); err != nil {
		t.Fatal(err)
	}
	view(t, db, func(tx *bolt.Tx) error {
		if tx.AbortGet(id[1]) {
			t.Errorf("AbortGet after AbortDelete = true")
		}
		return nil
	})
}

func TestSagaList(t *testing.T) {
	t.Parallel()
	db, _ := openDB(t, nil)
	const n = 25
	all := ids(n)
	statuses := []saga.Status{saga.StatusRunning, saga.StatusCompleted, saga.StatusCompensated}
	var recs []*storage.Saga
	for i, id := range all {
		recs = append(recs, newSaga(id, []string{"order", "refund"}[i%2], statuses[i%3], time.Time{}))
	}
	// Write in a scrambled order: the listing order must come from the ids.
	rand.New(rand.NewSource(3)).Shuffle(len(recs), func(i, j int) { recs[i], recs[j] = recs[j], recs[i] })
	put(t, db, recs...)

	// expected lists the ids matching a filter, newest first.
	expected := func(o storage.ListOptions) []ulid.ULID {
		var out []ulid.ULID
		for i := n - 1; i >= 0; i-- {
			if (o.Status == "" || statuses[i%3] == o.Status) && (o.Definition == "" || []string{"order", "refund"}[i%2] == o.Definition) {
				out = append(out, all[i])
			}
		}
		return out
	}

	tests := []struct {
		name  string
		opts  storage.ListOptions
		pages []int // expected page sizes
	}{
		{"all, 10 a page", storage.ListOptions{Limit: 10}, []int{10, 10, 5}},
		{"all, 5 a page (last page exactly full)", storage.ListOptions{Limit: 5}, []int{5, 5, 5, 5, 5}},
		{"all, default limit", storage.ListOptions{}, []int{25}},
		{"all, one page exactly", storage.ListOptions{Limit: 25}, []int{25}},
		{"status running", storage.ListOptions{Status: saga.StatusRunning, Limit: 4}, []int{4, 4, 1}},
		{"status completed", storage.ListOptions{Status: saga.StatusCompleted, Limit: 10}, []int{8}},
		{"status failed (none)", storage.ListOptions{Status: saga.StatusFailed, Limit: 10}, []int{0}},
		{"definition refund", storage.ListOptions{Definition: "refund", Limit: 5}, []int{5, 5, 2}},
		{"status and definition", storage.ListOptions{Status: saga.StatusCompensated, Definition: "order", Limit: 2}, []int{2, 2}},
		{"unknown definition", storage.ListOptions{Definition: "nope", Limit: 2}, []int{0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			want := expected(tt.opts)
			var got []ulid.ULID
			var sizes []int
			o := tt.opts
			for page := 0; ; page++ {
				if page > n {
					t.Fatalf("no end after %d pages", page)
				}
				var recs []*storage.Saga
				var more bool
				view(t, db, func(tx *bolt.Tx) error {
					var err error
					recs, more, err = tx.SagaList(o)
					return err
				})
				sizes = append(sizes, len(recs))
				for _, r := range recs {
					if o.Status != "" && r.Status != o.Status {
						t.Errorf("page %d: saga %s has status %s, want %s", page, r.ID, r.Status, o.Status)
					}
					if o.Definition != "" && r.Definition != o.Definition {
						t.Errorf("page %d: saga %s has definition %s, want %s", page, r.ID, r.Definition, o.Definition)
					}
					got = append(got, r.ID)
				}
				if !more {
					break
				}
				if len(recs) == 0 {
					t.Fatalf("page %d: empty page with more = true", page)
				}
				o.Before = recs[len(recs)-1].ID
			}
			if !slices.Equal(sizes, tt.pages) {
				t.Errorf("page sizes = %v, want %v", sizes, tt.pages)
			}
			if !slices.Equal(got, want) {
				t.Errorf("listed %d ids %v,\nwant %d ids newest first, no duplicates or gaps: %v", len(got), got, len(want), want)
			}
		})
	}

	t.Run("before an id that is not stored", func(t *testing.T) {
		t.Parallel()
		// Between all[9] and all[10]: all[9]'s millisecond with the largest
		// entropy.
		between := ulid.MustNew(all[9].Time(), bytes.NewReader(bytes.Repeat([]byte{0xff}, 10)))
		if between.Compare(all[9]) <= 0 || between.Compare(all[10]) >= 0 {
			t.Fatalf("fixture: %s is not between %s and %s", between, all[9], all[10])
		}
		view(t, db, func(tx *bolt.Tx) error {
			recs, more, err := tx.SagaList(storage.ListOptions{Before: between, Limit: 3})
			if err != nil {
				return err
			}
			var got []ulid.ULID
			for _, r := range recs {
				got = append(got, r.ID)
			}
			if want := []ulid.ULID{all[9], all[8], all[7]}; !slices.Equal(got, want) || !more {
				t.Errorf("SagaList(Before %s) = %v, more %v; want %v, more true", between, got, more, want)
			}
			recs, more, err = tx.SagaList(storage.ListOptions{Before: all[0], Limit: 3})
			if err != nil {
				return err
			}
			if len(recs) != 0 || more {
				t.Errorf("SagaList(Before oldest) = %d sagas, more %v; want none", len(recs), more)
			}
			return nil
		})
	})

	t.Run("unknown status", func(t *testing.T) {
		t.Parallel()
		view(t, db, func(tx *bolt.Tx) error {
			if _, _, err := tx.SagaList(storage.ListOptions{Status: "done"}); err == nil {
				t.Errorf("SagaList(status done) = nil error, want unknown status")
			}
			return nil
		})
	})
}

func TestSagaListEmpty(t *testing.T) {
	t.Parallel()
	db, _ := openDB(t, nil)
	view(t, db, func(tx *bolt.Tx) error {
		for _, o := range []storage.ListOptions{{}, {Status: saga.StatusRunning}, {Before: ids(1)[0]}} {
			recs, more, err := tx.SagaList(o)
			if err != nil || len(recs) != 0 || more {
				t.Errorf("SagaList(%+v) on an empty db = %d, %v, %v; want none", o, len(recs), more, err)
			}
		}
		return nil
	})
}

func TestUpdateSync(t *testing.T) {
	t.Parallel()
	// With fsync on (the default), writes land and survive a reopen.
	path := filepath.Join(t.TempDir(), "sagad.db")
	db, err := bolt.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	all := ids(50)
	var wg sync.WaitGroup
	for _, id := range all {
		enc := encode(t, newSaga(id, "d", saga.StatusRunning, time.Time{}))
		wg.Go(func() {
			if err := db.Update(func(tx *bolt.Tx) error { return tx.SagaPut(enc) }); err != nil {
				t.Errorf("Update: %v", err)
			}
		})
	}
	wg.Wait()
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db, err = bolt.Open(path, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	view(t, db, func(tx *bolt.Tx) error {
		if got := tx.SagaCountByStatus()[saga.StatusRunning]; got != len(all) {
			t.Errorf("after reopen: %d running sagas, want %d", got, len(all))
		}
		return nil
	})
}

func TestOpenTruncatedFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "trunc.db")
	db, err := bolt.Open(path, &bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 300 {
		e, err := bolt.EncodeSaga(newSaga(ulid.Make(), fmt.Sprint("d", i), saga.StatusRunning, time.Time{}))
		if err != nil {
			t.Fatal(err)
		}
		if err := db.Update(func(tx *bolt.Tx) error { return tx.SagaPut(e, logEntries(t, 1, 2, 3)...) }); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, 8192); err != nil {
		t.Fatal(err)
	}
	for _, ro := range []bool{false, true} {
		_, err := bolt.Open(path, &bolt.Options{ReadOnly: ro})
		if !errors.Is(err, storage.ErrCorrupt) || !strings.Contains(err.Error(), "truncated") {
			t.Fatalf("open truncated file (read-only %v): %v, want ErrCorrupt saying it is truncated", ro, err)
		}
	}
}

// TestStats checks the committer's counters: each Update is one write, a
// commit writes at least one data page and the meta page, and writes queued
// behind a commit share the next one.
func TestStats(t *testing.T) {
	t.Parallel()
	put := func(db *bolt.DB, i int) error {
		return db.Update(func(tx *bolt.Tx) error {
			return tx.Bolt().Bucket([]byte("meta")).Put(fmt.Appendf(nil, "k%03d", i), []byte("v"))
		})
	}
	db, _ := openDB(t, &bolt.Options{NoSync: true})
	s0 := db.Stats()
	for i := range 3 {
		if err := put(db, i); err != nil {
			t.Fatal(err)
		}
	}
	s1 := db.Stats()
	if c, w, p := s1.Commits-s0.Commits, s1.Writes-s0.Writes, s1.PagesWritten-s0.PagesWritten; c != 3 || w != 3 || p < 6 {
		t.Errorf("after 3 sequential writes: commits %d, writes %d, pages %d; want 3, 3, at least 6", c, w, p)
	}
	if s1.CommitTime <= s0.CommitTime {
		t.Errorf("commit time did not grow: %v then %v", s0.CommitTime, s1.CommitTime)
	}

	synctest.Test(t, func(t *testing.T) {
		db, err := bolt.Open(filepath.Join(t.TempDir(), "sagad.db"), &bolt.Options{NoSync: true})
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		// Hold the committer inside one write until 100 more are queued.
		gate, inside := make(chan struct{}), make(chan struct{})
		held := make(chan error, 1)
		go func() {
			held <- db.Update(func(*bolt.Tx) error { close(inside); <-gate; return nil })
		}()
		<-inside
		var wg sync.WaitGroup
		for i := range 100 {
			wg.Go(func() {
				if err := put(db, i); err != nil {
					t.Error(err)
				}
			})
		}
		synctest.Wait() // every writer is queued behind the held commit
		close(gate)
		wg.Wait()
		if err := <-held; err != nil {
			t.Fatal(err)
		}
		if st := db.Stats(); st.Commits != 2 || st.Writes != 101 {
			t.Errorf("a held write and 100 queued behind it: commits %d, writes %d; want 2 and 101", st.Commits, st.Writes)
		}
	})
}
