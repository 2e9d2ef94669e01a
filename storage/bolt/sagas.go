package bolt

import (
	"context"
	"time"

	"github.com/cockroachdb/errors"
	"github.com/oklog/ulid/v2"

	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
)

// This file is the saga side of the store as the engine sees it: methods in
// terms of records, each its own transaction, that a backend other than
// bbolt can implement (see SagaStore). The Tx methods they are built on are
// this backend's own.

var _ storage.SagaStore = (*DB)(nil)

// encoded is a transition ready for a write transaction: encoding runs on
// the caller's goroutine, outside the committer's.
type encoded struct {
	saga   *Encoded
	logs   []EncodedLog
	events []*EncodedEvent
	clear  bool
}

func (db *DB) encode(t *storage.Transition) (*encoded, error) {
	enc, err := EncodeSaga(t.Saga)
	if err != nil {
		return nil, err
	}
	e := &encoded{saga: enc, clear: t.ClearAbort}
	if len(t.Log) > 0 {
		e.logs = make([]EncodedLog, len(t.Log))
		for i := range t.Log {
			e.logs[i] = EncodeLog(&t.Log[i])
		}
	}
	if len(t.Events) > 0 {
		e.events = make([]*EncodedEvent, len(t.Events))
		for i := range t.Events {
			e.events[i] = EncodeEvent(&t.Events[i], db.compressAbove)
		}
	}
	return e, nil
}

func (e *encoded) put(tx *Tx) error {
	if e.clear {
		if err := tx.AbortDelete(e.saga.ID); err != nil {
			return err
		}
	}
	if err := tx.SagaPut(e.saga, e.logs...); err != nil {
		return err
	}
	for _, ev := range e.events {
		if _, err := tx.OutboxPut(ev); err != nil {
			return err
		}
	}
	return nil
}

// SagaCreate implements SagaStore.
func (db *DB) SagaCreate(_ context.Context, t *storage.Transition) (existing ulid.ULID, err error) {
	e, err := db.encode(t)
	if err != nil {
		return existing, err
	}
	key, id := t.Saga.IdempotencyKey, t.Saga.ID
	err = db.Update(func(tx *Tx) error {
		existing = ulid.ULID{}
		if key != "" {
			if old, ok := tx.IdemGet(key); ok {
				existing = old
				return nil
			}
			if err := tx.IdemPut(key, id); err != nil {
				return err
			}
		}
		return e.put(tx)
	})
	return existing, err
}

// SagaCommit implements SagaStore. One process uses the file: every
// commit is its own, and no other process writes abort requests
// (t.Aborted stays false; the engine's own reach its driver directly).
func (db *DB) SagaCommit(ctx context.Context, t *storage.Transition) error {
	t.Aborted = false
	if t.Tx != nil {
		_ = t.Tx.Rollback(ctx)
		return errors.Newf("storage: saga %s: a step's own transaction cannot be written in a bbolt file", t.Saga.ID)
	}
	e, err := db.encode(t)
	if err != nil {
		return err
	}
	return db.Update(e.put)
}

// SagaClaim implements SagaStore: one process uses the file, so every
// claim is granted; the record and its abort request come from one read.
func (db *DB) SagaClaim(_ context.Context, id ulid.ULID) (rec *storage.Saga, aborted bool, err error) {
	err = db.View(func(tx *Tx) error {
		if rec, err = tx.SagaGet(id); err != nil {
			return err
		}
		aborted = tx.AbortGet(id)
		return nil
	})
	return rec, aborted, err
}

// SagaRelease implements SagaStore: there is no claim to let go of.
func (db *DB) SagaRelease(context.Context, ulid.ULID) error { return nil }

// SagaWake implements SagaStore: no other process leaves work.
func (db *DB) SagaWake() <-chan struct{} { return nil }

// SagaGet implements SagaStore.
func (db *DB) SagaGet(_ context.Context, id ulid.ULID) (*storage.Saga, error) {
	var rec *storage.Saga
	err := db.View(func(tx *Tx) error {
		var err error
		rec, err = tx.SagaGet(id)
		return err
	})
	return rec, err
}

// SagaStatus implements SagaStore.
func (db *DB) SagaStatus(_ context.Context, id ulid.ULID) (saga.Status, error) {
	var st saga.Status
	var ok bool
	err := db.View(func(tx *Tx) error { st, ok = tx.SagaStatus(id); return nil })
	if err == nil && !ok {
		err = errors.Wrapf(storage.ErrNotFound, "saga %s", id)
	}
	return st, err
}

// SagaList implements SagaStore.
func (db *DB) SagaList(_ context.Context, o storage.ListOptions) (recs []*storage.Saga, more bool, err error) {
	err = db.View(func(tx *Tx) error {
		recs, more, err = tx.SagaList(o)
		return err
	})
	return recs, more, err
}

// unfinished are the statuses of sagas the engine still drives.
var unfinished = []saga.Status{saga.StatusRunning, saga.StatusCompensating}

// SagaUnfinished implements SagaStore. It reads the status index and the
// records' headers, never the finished sagas.
func (db *DB) SagaUnfinished(_ context.Context, fn func(id ulid.ULID, st saga.Status, wake time.Time) bool) error {
	return db.View(func(tx *Tx) error {
		more := true
		for _, st := range unfinished {
			tx.SagaIDsByStatus(st, func(id ulid.ULID) bool {
				// A record too short for its header (or missing) is
				// reported without a wake time: loading it fails, and the
				// engine sets it aside.
				wake, _ := tx.SagaWake(id)
				more = fn(id, st, wake)
				return more
			})
			if !more {
				break
			}
		}
		return nil
	})
}

// SagaParked implements SagaStore.
func (db *DB) SagaParked(_ context.Context, definition string, fingerprints ...string) ([]ulid.ULID, error) {
	var ids []ulid.ULID
	err := db.View(func(tx *Tx) error {
		for _, st := range unfinished {
			tx.SagaIDsByStatus(st, func(id ulid.ULID) bool {
				r, err := tx.SagaGet(id)
				if err != nil || r.Parked == "" || r.Definition != definition || r.Fingerprint == "" {
					return true
				}
				for _, fp := range fingerprints {
					if fp == r.Fingerprint {
						ids = append(ids, id)
						break
					}
				}
				return true
			})
		}
		return nil
	})
	return ids, err
}

// SagaFinishedBefore implements SagaStore.
func (db *DB) SagaFinishedBefore(_ context.Context, st saga.Status, before time.Time, limit int) ([]ulid.ULID, error) {
	limit = orDefault(limit)
	var ids []ulid.ULID
	err := db.View(func(tx *Tx) error {
		tx.SagaIDsByStatus(st, func(id ulid.ULID) bool {
			// Ids sort by creation time and a saga finishes after it
			// starts: nothing created after the cut-off can be due.
			if ulid.Time(id.Time()).After(before) {
				return false
			}
			if r, err := tx.SagaGet(id); err == nil && r.UpdatedAt.Before(before) {
				ids = append(ids, id)
			}
			return len(ids) < limit
		})
		return nil
	})
	return ids, err
}

// SagaDelete implements SagaStore.
func (db *DB) SagaDelete(_ context.Context, ids []ulid.ULID) (int, error) {
	n := 0
	err := db.Update(func(tx *Tx) error {
		n = 0
		for _, id := range ids {
			switch err := tx.SagaDelete(id); {
			case err == nil:
				n++
			case !errors.Is(err, storage.ErrNotFound):
				return err
			}
		}
		return nil
	})
	return n, err
}

// SagaDue implements SagaStore.
func (db *DB) SagaDue(_ context.Context, now time.Time, limit int, skip func(ulid.ULID) bool) (due []ulid.ULID, next time.Time, err error) {
	limit = orDefault(limit)
	err = db.View(func(tx *Tx) error {
		tx.DueScan(now, func(id ulid.ULID, _ time.Time) bool {
			if skip == nil || !skip(id) {
				due = append(due, id)
			}
			return len(due) < limit
		})
		next, _ = tx.DueAfter(now)
		return nil
	})
	return due, next, err
}

// LogList implements SagaStore.
func (db *DB) LogList(_ context.Context, id ulid.ULID) ([]storage.LogEntry, error) {
	var out []storage.LogEntry
	err := db.View(func(tx *Tx) error {
		if !tx.SagaExists(id) {
			return errors.Wrapf(storage.ErrNotFound, "saga %s", id)
		}
		var err error
		out, err = tx.LogList(id)
		return err
	})
	return out, err
}

// IdemGet implements SagaStore.
func (db *DB) IdemGet(_ context.Context, key string) (id ulid.ULID, ok bool, err error) {
	err = db.View(func(tx *Tx) error { id, ok = tx.IdemGet(key); return nil })
	return id, ok, err
}

// AbortPut implements SagaStore. A refusal writes nothing and is returned
// without failing the group commit it shares (the others' writes stand).
func (db *DB) AbortPut(_ context.Context, id ulid.ULID, at time.Time, check func(*storage.Saga) error) error {
	var refused error
	err := db.Update(func(tx *Tx) error {
		refused = nil
		rec, err := tx.SagaGet(id)
		if err == nil {
			err = check(rec)
		}
		switch {
		case errors.Is(err, storage.ErrNoWrite):
			return nil
		case err != nil:
			refused = err
			return nil
		}
		return tx.AbortPut(id, at)
	})
	if err != nil {
		return err
	}
	return refused
}

// AbortGet implements SagaStore.
func (db *DB) AbortGet(_ context.Context, id ulid.ULID) (ok bool, err error) {
	err = db.View(func(tx *Tx) error { ok = tx.AbortGet(id); return nil })
	return ok, err
}

// SagaCounts implements SagaStore. It counts index keys without reading
// records.
func (db *DB) SagaCounts(_ context.Context) (counts map[saga.Status]int, err error) {
	err = db.View(func(tx *Tx) error { counts = tx.SagaCountByStatus(); return nil })
	return counts, err
}
