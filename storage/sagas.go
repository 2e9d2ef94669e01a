package storage

import (
	"context"
	"time"

	"github.com/cockroachdb/errors"
	"github.com/oklog/ulid/v2"

	"github.com/sagad/sagad/saga"
)

// This file is the saga side of the store as the engine sees it: methods in
// terms of records, each its own transaction, that a backend other than
// bbolt can implement (see SagaStore). The Tx methods they are built on are
// this backend's own.

// SagaStore is what the engine needs to keep sagas: one atomic write per
// transition, reads, the due-time scan and the operators' requests. DB
// implements it on bbolt.
type SagaStore interface {
	// SagaCreate writes a new saga with its first log entries and events.
	// If the saga's idempotency key already names a saga, it writes
	// nothing and returns that saga's id.
	SagaCreate(ctx context.Context, t *Transition) (existing ulid.ULID, err error)
	// SagaCommit writes one transition of a saga: its record, the log
	// entries and outbox events it adds and the index changes they imply,
	// all or nothing, durable when it returns. It keeps no reference to t
	// (SagaCreate neither): the caller may reuse it.
	SagaCommit(ctx context.Context, t *Transition) error
	// SagaGet reads a saga; a missing one is ErrNotFound.
	SagaGet(ctx context.Context, id ulid.ULID) (*Saga, error)
	// SagaStatus reads a saga's status only; a missing one is ErrNotFound.
	SagaStatus(ctx context.Context, id ulid.ULID) (saga.Status, error)
	// SagaList lists sagas newest first, and says whether more match.
	SagaList(ctx context.Context, o ListOptions) ([]*Saga, bool, error)
	// SagaUnfinished calls fn with every running or compensating saga's
	// id, status and wake time (zero: not waiting), until fn returns false.
	SagaUnfinished(ctx context.Context, fn func(id ulid.ULID, st saga.Status, wake time.Time) bool) error
	// SagaParked returns the unfinished sagas of a definition, parked
	// under one of the fingerprints.
	SagaParked(ctx context.Context, definition string, fingerprints ...string) ([]ulid.ULID, error)
	// SagaFinishedBefore returns up to limit sagas in the final status st
	// last updated before the given time, oldest first.
	SagaFinishedBefore(ctx context.Context, st saga.Status, before time.Time, limit int) ([]ulid.ULID, error)
	// SagaDelete deletes sagas with their logs, index entries and
	// idempotency keys, and returns how many it found.
	SagaDelete(ctx context.Context, ids []ulid.ULID) (int, error)
	// SagaDue returns up to limit sagas due at now, earliest first, skipping
	// those skip reports (nil: none), and the next wake time after now
	// (zero: none).
	SagaDue(ctx context.Context, now time.Time, limit int, skip func(ulid.ULID) bool) (due []ulid.ULID, next time.Time, err error)
	// LogList returns a saga's log in order; a missing saga is ErrNotFound.
	LogList(ctx context.Context, id ulid.ULID) ([]LogEntry, error)
	// IdemGet returns the saga an idempotency key names.
	IdemGet(ctx context.Context, key string) (ulid.ULID, bool, error)
	// AbortPut records an abort request for a saga, in one transaction with
	// check, which sees the saga as stored and may refuse (its error is
	// returned and nothing is written) or return ErrNoWrite (nothing is
	// written and AbortPut returns nil). A missing saga is ErrNotFound.
	AbortPut(ctx context.Context, id ulid.ULID, at time.Time, check func(*Saga) error) error
	// AbortGet reports whether a saga has an abort request.
	AbortGet(ctx context.Context, id ulid.ULID) (bool, error)
	// SagaCounts returns how many sagas are in each status.
	SagaCounts(ctx context.Context) (map[saga.Status]int, error)
}

var _ SagaStore = (*DB)(nil)

// Transition is one atomic change of a saga.
type Transition struct {
	// Saga is the record as it is after the change.
	Saga *Saga
	// Log holds the entries the change appends, their Seq set (the last is
	// Saga.LogSeq).
	Log []LogEntry
	// Events are the outbox events the change emits.
	Events []OutboxEvent
	// ClearAbort deletes the saga's abort request: the change acted on it.
	ClearAbort bool
}

// encoded is a transition ready for a write transaction: encoding runs on
// the caller's goroutine, outside the committer's.
type encoded struct {
	saga   *Encoded
	logs   []EncodedLog
	events []*EncodedEvent
	clear  bool
}

func (db *DB) encode(t *Transition) (*encoded, error) {
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
func (db *DB) SagaCreate(_ context.Context, t *Transition) (existing ulid.ULID, err error) {
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

// SagaCommit implements SagaStore.
func (db *DB) SagaCommit(_ context.Context, t *Transition) error {
	e, err := db.encode(t)
	if err != nil {
		return err
	}
	return db.Update(e.put)
}

// SagaGet implements SagaStore.
func (db *DB) SagaGet(_ context.Context, id ulid.ULID) (*Saga, error) {
	var rec *Saga
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
		err = errors.Wrapf(ErrNotFound, "saga %s", id)
	}
	return st, err
}

// SagaList implements SagaStore.
func (db *DB) SagaList(_ context.Context, o ListOptions) (recs []*Saga, more bool, err error) {
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
			case !errors.Is(err, ErrNotFound):
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
func (db *DB) LogList(_ context.Context, id ulid.ULID) ([]LogEntry, error) {
	var out []LogEntry
	err := db.View(func(tx *Tx) error {
		if !tx.SagaExists(id) {
			return errors.Wrapf(ErrNotFound, "saga %s", id)
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
func (db *DB) AbortPut(_ context.Context, id ulid.ULID, at time.Time, check func(*Saga) error) error {
	var refused error
	err := db.Update(func(tx *Tx) error {
		refused = nil
		rec, err := tx.SagaGet(id)
		if err == nil {
			err = check(rec)
		}
		switch {
		case errors.Is(err, ErrNoWrite):
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
