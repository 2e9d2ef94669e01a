package postgres

import (
	"context"
	"testing"
	"time"

	"github.com/cockroachdb/errors"
	"github.com/jackc/pgx/v5"
	"github.com/oklog/ulid/v2"

	"github.com/sagad/sagad/internal/pgtest"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
)

// waitFor polls cond (there is no event to wait on: the store notices a
// lost connection on its own timer) until it holds or 10 s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(10 * time.Second)
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("%s: not after 10s", what)
		}
	}
}

// One engine per schema: a second store on it is refused, and a store
// that lost the connection holding the lock writes nothing until it holds
// the lock again, also while another store has the schema.
func TestSchemaLock(t *testing.T) {
	url := pgtest.URL(t)
	schema := pgtest.Schema(t, url)
	ctx := context.Background()
	opts := &Options{Schema: schema, PollInterval: 20 * time.Millisecond, LockTimeout: 100 * time.Millisecond}
	a, err := Open(ctx, url, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if b, err := Open(ctx, url, opts); !errors.Is(err, ErrLocked) {
		if b != nil {
			b.Close()
		}
		t.Fatalf("second open of the schema: %v, want ErrLocked", err)
	}
	create := func(db *DB) error {
		s := &storage.Saga{ID: ulid.Make(), Definition: "d", Status: saga.StatusRunning, Steps: []storage.Step{{Name: "a", Status: saga.StepPending}}}
		_, err := db.SagaCreate(ctx, &storage.Transition{Saga: s})
		return err
	}
	if err := create(a); err != nil {
		t.Fatal(err)
	}

	// Another session queues for the lock, then the lock's connection is
	// cut: PostgreSQL hands the lock to the queued session, as it would to
	// another node, and the store, cut off, must write nothing.
	key := uint64(a.lockKey())
	classid, objid := int64(key>>32), int64(key&0xffffffff)
	other, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(ctx)
	queued := make(chan error, 1)
	go func() {
		_, err := other.Exec(ctx, "SELECT pg_advisory_lock($1)", a.lockKey())
		queued <- err
	}()
	admin, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	holders := func(granted bool) int {
		var n int
		err := admin.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted = $1
			AND classid = $2::bigint::oid AND objid = $3::bigint::oid AND objsubid = 1`, granted, classid, objid).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	waitFor(t, "another session waits for the lock", func() bool { return holders(false) == 1 })
	var killed int
	err = admin.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_locks
		WHERE locktype = 'advisory' AND granted AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND objsubid = 1`,
		classid, objid).Scan(&killed)
	if err != nil || killed != 1 {
		t.Fatalf("terminated %d lock holders (%v), want 1", killed, err)
	}
	if err := <-queued; err != nil {
		t.Fatalf("the other session's lock: %v", err)
	}
	waitFor(t, "writes refused after the lock was lost", func() bool { return errors.Is(create(a), ErrLockLost) })
	if b, err := Open(ctx, url, opts); !errors.Is(err, ErrLocked) {
		if b != nil {
			b.Close()
		}
		t.Fatalf("open while another session holds the schema: %v, want ErrLocked", err)
	}
	if err := create(a); !errors.Is(err, ErrLockLost) {
		t.Fatalf("a write of the cut-off store while another holds the schema: %v, want ErrLockLost", err)
	}
	// The other lets go: the store takes the lock back and writes again.
	if _, err := other.Exec(ctx, "SELECT pg_advisory_unlock($1)", a.lockKey()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "writes again once the lock is back", func() bool { return create(a) == nil })
}
