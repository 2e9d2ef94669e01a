package bolt

import (
	"bytes"
	"encoding/binary"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/errors"
	"go.etcd.io/bbolt"
	bberrors "go.etcd.io/bbolt/errors"

	"github.com/sagad/sagad/clock"
	"github.com/sagad/sagad/storage"
)

// SchemaVersion is the layout version this package reads and writes.
const SchemaVersion = 1

// magic is stored in the meta bucket to recognise sagad files.
const magic = "sagad"

var (
	bucketMeta     = []byte("meta")
	bucketSagas    = []byte("sagas")    // id -> header + JSON Saga
	bucketLog      = []byte("log")      // sequence -> previous sequence + saga id + JSON LogEntry
	bucketStatus   = []byte("status")   // status code + id -> nil
	bucketDue      = []byte("due")      // wake unix nanos + id -> nil
	bucketIdem     = []byte("idem")     // idempotency key -> id
	bucketAborts   = []byte("aborts")   // id -> request time (RFC 3339)
	bucketBreakers = []byte("breakers") // name -> gobreaker SharedState JSON
	allBuckets     = [][]byte{bucketMeta, bucketSagas, bucketLog, bucketStatus, bucketDue, bucketIdem, bucketAborts, bucketBreakers,
		bucketOutbox, bucketOutboxStatus, // outbox.go
		bucketDefinitions} // definitions.go
)

// Options configures Open. The zero value is a safe default.
type Options struct {
	// LockTimeout is how long Open waits for another process to release the
	// file. Zero: 1s. The wait ends with ErrLocked.
	LockTimeout time.Duration
	// ReadOnly opens the file for reading only; writes fail.
	ReadOnly bool
	// NoSync skips fsync on commit. A crash may then lose or corrupt recent
	// commits: for tests and benchmarks only.
	NoSync bool
	// MaxBatch caps the writes grouped into one commit. Zero: 4096.
	MaxBatch int
	// CommitMode selects how Update commits. Leave it zero (group commit);
	// the other modes exist so benchmarks can compare.
	CommitMode CommitMode
	// CompressAbove stores outbox payloads longer than this many bytes
	// DEFLATE-compressed; they are read back (and published) as emitted.
	// Zero: 4096. Negative: never.
	CompressAbove int
	// Clock stamps outbox events' ids (ULIDs, in commit order). Nil: the
	// wall clock. The commit counters (Stats) always measure wall time.
	Clock clock.Clock
}

// CommitMode selects how DB.Update commits. Only benchmarks change it.
type CommitMode int

// Commit modes.
const (
	// CommitGroup: one committer goroutine groups queued writes (the default).
	CommitGroup CommitMode = iota
	// CommitEach: every write is its own bbolt transaction and fsync.
	CommitEach
	// CommitBatch: writes go through bbolt's DB.Batch.
	CommitBatch
)

// DB is an open sagad database.
type DB struct {
	bolt *bbolt.DB
	path string
	mode CommitMode
	max  int

	compressAbove int // see Options.CompressAbove
	clock         clock.Clock

	reqs     chan *request
	stopOnce sync.Once
	stop     chan struct{}
	done     chan struct{}

	mu     sync.RWMutex // guards closed against Update
	closed bool

	commits, writes, commitNanos atomic.Int64

	ids      *eventIDs
	requeues atomic.Int64 // commits that re-queued or discarded events since Open
	wakeMu   sync.Mutex
	wake     chan struct{} // closed and replaced after a commit that touched the outbox
}

type request struct {
	fn  func(*Tx) error
	err chan error
}

// Open opens (creating if needed) the sagad database at path. It fails with
// ErrLocked if another process holds the file for longer than
// opts.LockTimeout, storage.ErrCorrupt if the file is not a readable bbolt
// file, ErrNotSagad if it is someone else's bbolt file, and
// storage.ErrSchema if its schema version is unknown. opts may be nil.
func Open(path string, opts *Options) (*DB, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.LockTimeout <= 0 {
		o.LockTimeout = time.Second
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = 4096
	}
	if o.CompressAbove == 0 {
		o.CompressAbove = 4096
	}
	bo := &bbolt.Options{
		Timeout:        o.LockTimeout,
		ReadOnly:       o.ReadOnly,
		NoSync:         o.NoSync,
		NoFreelistSync: true,
		FreelistType:   bbolt.FreelistMapType,
	}
	if err := precheck(path); err != nil {
		return nil, err
	}
	if err := scan(path); err != nil {
		return nil, err
	}
	b, err := bbolt.Open(path, 0o600, bo)
	if err != nil {
		return nil, classifyOpenError(path, err)
	}
	b.MaxBatchDelay = 200 * time.Microsecond
	db := &DB{bolt: b, path: path, mode: o.CommitMode, max: o.MaxBatch, compressAbove: o.CompressAbove, clock: clock.Or(o.Clock),
		reqs: make(chan *request, o.MaxBatch), stop: make(chan struct{}), done: make(chan struct{}),
		wake: make(chan struct{})}
	if err := db.init(o.ReadOnly); err != nil {
		_ = b.Close()
		return nil, err
	}
	go db.committer()
	return db, nil
}

func classifyOpenError(path string, err error) error {
	switch {
	case errors.Is(err, bberrors.ErrTimeout):
		locked := errors.Mark(errors.Newf("storage: open %s: the file is locked by another process", path), ErrLocked)
		return errors.WithHint(errors.Mark(locked, err),
			"another process (a running sagad?) holds this file; stop it or talk to it over HTTP")
	case errors.Is(err, bberrors.ErrInvalid), errors.Is(err, bberrors.ErrChecksum),
		errors.Is(err, bberrors.ErrVersionMismatch), errors.Is(err, bberrors.ErrInvalidMapping):
		return errors.WithHint(errors.Mark(errors.Wrapf(err, "storage: open %s", path), storage.ErrCorrupt),
			"restore the file from a backup; sagad never writes to a file it cannot read")
	case os.IsNotExist(err), os.IsPermission(err):
		return errors.Wrapf(err, "storage: open %s", path)
	}
	// bbolt reports some damage as plain errors or panics on read; treat
	// anything else at open as damage too, keeping the cause.
	return errors.Mark(errors.Wrapf(err, "storage: open %s", path), storage.ErrCorrupt)
}

// init checks the file's identity and schema and creates missing buckets.
func (db *DB) init(readOnly bool) error {
	check := func(tx *bbolt.Tx) (fresh bool, err error) {
		meta := tx.Bucket(bucketMeta)
		if meta == nil {
			empty := true
			_ = tx.ForEach(func([]byte, *bbolt.Bucket) error { empty = false; return nil })
			if !empty {
				return false, errors.WithHint(errors.Newf("storage: %s: %w", db.path, ErrNotSagad),
					"point --db at a sagad database or at a new file")
			}
			return true, nil
		}
		if !bytes.Equal(meta.Get([]byte("magic")), []byte(magic)) {
			return false, errors.Newf("storage: %s: %w", db.path, ErrNotSagad)
		}
		v := meta.Get([]byte("schema"))
		if len(v) != 4 {
			return false, errors.Newf("storage: %s: schema version missing: %w", db.path, storage.ErrCorrupt)
		}
		if got := binary.BigEndian.Uint32(v); got != SchemaVersion {
			return false, errors.WithHint(errors.Newf("storage: %s: schema version %d, this build reads %d: %w",
				db.path, got, SchemaVersion, storage.ErrSchema), "use the sagad release that wrote this file")
		}
		return false, nil
	}
	if readOnly {
		return db.bolt.View(func(tx *bbolt.Tx) error {
			fresh, err := check(tx)
			if err == nil && fresh {
				err = errors.Newf("storage: %s: empty database opened read-only: %w", db.path, ErrNotSagad)
			}
			db.ids = newEventIDs(tx)
			return err
		})
	}
	// Opening a file that needs nothing writes nothing: reading commands
	// leave a damaged file or a backup as they found it.
	ready := false
	if err := db.bolt.View(func(tx *bbolt.Tx) error {
		fresh, err := check(tx)
		if err != nil || fresh {
			return err
		}
		for _, name := range allBuckets {
			if tx.Bucket(name) == nil {
				return nil
			}
		}
		db.ids = newEventIDs(tx)
		ready = true
		return nil
	}); err != nil || ready {
		return err
	}
	return db.bolt.Update(func(tx *bbolt.Tx) error {
		fresh, err := check(tx)
		if err != nil {
			return err
		}
		for _, name := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return errors.Wrapf(err, "storage: create bucket %s", name)
			}
		}
		db.ids = newEventIDs(tx)
		if fresh {
			meta := tx.Bucket(bucketMeta)
			ver := binary.BigEndian.AppendUint32(nil, SchemaVersion)
			if err := meta.Put([]byte("magic"), []byte(magic)); err != nil {
				return err
			}
			return meta.Put([]byte("schema"), ver)
		}
		return nil
	})
}

// committed wakes outbox readers after t, a transaction that added,
// re-queued or discarded events, committed, and passes err through.
func (db *DB) committed(t *Tx, err error) error {
	if err != nil || t == nil {
		return err
	}
	if t.requeued {
		db.requeues.Add(1)
	}
	if t.outbox {
		db.wakeMu.Lock()
		close(db.wake)
		db.wake = make(chan struct{})
		db.wakeMu.Unlock()
	}
	return err
}

// OutboxWake returns a channel that is closed once a transaction that adds
// or re-queues outbox events has committed after the call. Take a new
// channel after each wake-up, before reading the outbox.
func (db *DB) OutboxWake() <-chan struct{} {
	db.wakeMu.Lock()
	defer db.wakeMu.Unlock()
	return db.wake
}

// OutboxRequeues counts the commits that re-queued events, or discarded
// events that were not produced, through this DB since Open. It grows
// before OutboxWake's channel is closed. A relay that parks a saga behind a failed
// event reads it to know when to look again.
func (db *DB) OutboxRequeues() int64 { return db.requeues.Load() }

// Path returns the file's path.
func (db *DB) Path() string { return db.path }

// Bolt returns the underlying bbolt database, for read-only tools (check,
// backup). Writing through it bypasses the committer: do not.
func (db *DB) Bolt() *bbolt.DB { return db.bolt }

// Close waits for queued writes to commit and closes the file.
func (db *DB) Close() error {
	db.mu.Lock()
	if db.closed {
		db.mu.Unlock()
		return nil
	}
	db.closed = true
	db.mu.Unlock()
	db.stopOnce.Do(func() { close(db.stop) })
	<-db.done
	return errors.Wrapf(db.bolt.Close(), "storage: close %s", db.path)
}

// View runs fn in a read-only transaction. Values fn reads are valid only
// inside it.
func (db *DB) View(fn func(*Tx) error) error {
	return db.bolt.View(func(tx *bbolt.Tx) error { return fn(&Tx{tx: tx, db: db}) })
}

// Update runs fn in a write transaction shared with other writers queued at
// the same time (group commit) and returns once the transaction is durable.
// fn may run more than once if another writer in its group fails, so it must
// only write values it computed before the call.
func (db *DB) Update(fn func(*Tx) error) error {
	if db.mode != CommitGroup {
		db.mu.RLock()
		defer db.mu.RUnlock()
		if db.closed {
			return storage.ErrClosed
		}
	}
	// t is the transaction of fn's last run: the one that counts.
	var t *Tx
	run := func(tx *bbolt.Tx) error {
		t = &Tx{tx: tx, db: db}
		if err := fn(t); err != nil {
			return err
		}
		return t.flush()
	}
	switch db.mode {
	case CommitEach:
		err := db.bolt.Update(run)
		return db.committed(t, err)
	case CommitBatch:
		err := db.bolt.Batch(run)
		return db.committed(t, err)
	}
	r := &request{fn: fn, err: make(chan error, 1)}
	db.mu.RLock()
	if db.closed {
		db.mu.RUnlock()
		return storage.ErrClosed
	}
	db.reqs <- r
	db.mu.RUnlock()
	return <-r.err
}

// committer is the single writer: it takes every queued request and commits
// them in one transaction.
func (db *DB) committer() {
	defer close(db.done)
	batch := make([]*request, 0, db.max)
	for {
		var r *request
		select {
		case r = <-db.reqs:
		case <-db.stop:
			// Update refuses new requests once closed is set; drain the rest.
			for {
				select {
				case r := <-db.reqs:
					db.commit([]*request{r})
				default:
					return
				}
			}
		}
		batch = append(batch[:0], r)
	more:
		for len(batch) < db.max {
			select {
			case r := <-db.reqs:
				batch = append(batch, r)
			default:
				break more
			}
		}
		db.commit(batch)
	}
}

// Stats returns the committer's counters.
func (db *DB) Stats() storage.Stats {
	bs := db.bolt.Stats()
	return storage.Stats{Commits: db.commits.Load(), Writes: db.writes.Load(), CommitTime: time.Duration(db.commitNanos.Load()),
		PagesWritten: bs.TxStats.GetWrite()}
}

// commit runs batch in one transaction. If one request fails, the
// transaction is rolled back, that request gets its error and the others are
// committed again without it.
func (db *DB) commit(batch []*request) {
	t0 := time.Now()
	db.commits.Add(1)
	db.writes.Add(int64(len(batch)))
	defer func() { db.commitNanos.Add(int64(time.Since(t0))) }()
	for len(batch) > 0 {
		failed := -1
		var ferr error
		var t *Tx
		err := db.bolt.Update(func(tx *bbolt.Tx) error {
			t = &Tx{tx: tx, db: db}
			for i, r := range batch {
				if err := r.fn(t); err != nil {
					failed, ferr = i, err
					return err
				}
			}
			return t.flush()
		})
		if failed < 0 {
			err = db.committed(t, err)
			for _, r := range batch {
				r.err <- errors.Wrap(err, "storage: commit")
			}
			return
		}
		batch[failed].err <- ferr
		batch = append(batch[:failed:failed], batch[failed+1:]...)
	}
}
