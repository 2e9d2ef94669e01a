package storage

import (
	"context"
	"time"

	"github.com/cockroachdb/errors"
	"github.com/oklog/ulid/v2"
)

// Store is a sagad backend: everything the engine, the relay and the
// daemon keep, in terms of records. Each method is its own transaction. DB
// implements it on bbolt; storagetest checks an implementation.
//
// One engine drives a store's sagas: its in-process holds (a driver's claim,
// an abort's hold) are what keep two writers of one saga apart. Limits of
// zero or less mean 1000.
type Store interface {
	SagaStore
	OutboxStore
	// BreakerGet returns a circuit breaker's stored state (nil: none).
	BreakerGet(ctx context.Context, name string) ([]byte, error)
	// BreakerPut stores a circuit breaker's state.
	BreakerPut(ctx context.Context, name string, state []byte) error
	// DefinitionPut stores a version of a declarative definition, makes it
	// the latest (even when it was stored before), and reports whether it
	// was new.
	DefinitionPut(ctx context.Context, name, version string, spec []byte) (bool, error)
	// DefinitionGet reads one stored version; version "" reads the latest
	// (the one put last).
	DefinitionGet(ctx context.Context, name, version string) (*StoredDefinition, bool, error)
	// DefinitionList returns every stored version, each name's latest last.
	DefinitionList(ctx context.Context) ([]*StoredDefinition, error)
	// Stats counts the store's writes since it was opened.
	Stats() Stats
	// Close releases the store.
	Close() error
}

// OutboxStore is the outbox side of a backend, for the engine's operators'
// calls and the relay.
type OutboxStore interface {
	// OutboxStats returns the events by status and the creation times of
	// the oldest new and not_produced ones (zero: none).
	OutboxStats(ctx context.Context) (counts OutboxCounts, oldestNew, oldestNotProduced time.Time, err error)
	// OutboxList lists events in one status, oldest first.
	OutboxList(ctx context.Context, o OutboxListOptions) ([]*OutboxEvent, bool, error)
	// OutboxGet reads one event; a missing one is ErrEventNotFound.
	OutboxGet(ctx context.Context, id ulid.ULID) (*OutboxEvent, error)
	// OutboxRequeue makes an event that is not new new again, with a fresh
	// attempt budget; it reports false for an event already new, and
	// ErrEventNotFound for an unknown one.
	OutboxRequeue(ctx context.Context, id ulid.ULID) (bool, error)
	// OutboxRequeueAll re-queues up to limit not_produced events and
	// returns how many.
	OutboxRequeueAll(ctx context.Context, limit int) (int, error)
	// OutboxDiscard deletes an event that is not new; a new one is
	// ErrEventPending, an unknown one ErrEventNotFound.
	OutboxDiscard(ctx context.Context, id ulid.ULID) error
	// OutboxPrune deletes up to limit events produced before the given time
	// and says whether more remain.
	OutboxPrune(ctx context.Context, before time.Time, limit int) (int, bool, error)

	// The relay's side.

	// OutboxWake returns a channel closed once events may have been added
	// or re-queued since the call. Take a new one after each wake-up,
	// before reading the outbox. A backend that cannot tell (another
	// process writes) closes it on a timer: the relay then polls.
	OutboxWake() <-chan struct{}
	// OutboxRequeues counts the re-queues and discards of events that were
	// not produced; it grows before OutboxWake's channel closes. The relay
	// reads it to know when a saga parked behind a failed event may go on.
	OutboxRequeues() int64
	// OutboxNotProducedSagas returns the sagas that have a not_produced
	// event: their later events wait.
	OutboxNotProducedSagas(ctx context.Context) ([]ulid.ULID, error)
	// OutboxScanNew calls fn with every new event after the given id, in id
	// order, with its saga and a function that reads the whole event fn was
	// called for (call it only inside fn), until fn returns false. fn runs
	// inside the store's read: it must be quick.
	// Ids must grow in commit order (the bbolt backend assigns them in its
	// single writer): an event committed after a scan must not sort before
	// what the scan saw. A backend that cannot promise that (concurrent
	// transactions) must make the relay rescan; it does every 5s anyway.
	OutboxScanNew(ctx context.Context, after ulid.ULID, fn func(id, saga ulid.ULID, event func() (*OutboxEvent, error)) bool) error
	// OutboxMark records the relay's outcomes in one transaction: events
	// produced, and failed attempts. It returns each failed event's
	// attempts so far, -1 for one that is gone (discarded meanwhile).
	OutboxMark(ctx context.Context, produced []ulid.ULID, failed []OutboxFailure, at time.Time) ([]int, error)
}

// OutboxFailure is a failed attempt to publish an event.
type OutboxFailure struct {
	ID    ulid.ULID
	Error string
	// Final makes the event not_produced: no more attempts.
	Final bool
}

var _ Store = (*DB)(nil)

// BreakerGet implements Store.
func (db *DB) BreakerGet(_ context.Context, name string) (state []byte, err error) {
	err = db.View(func(tx *Tx) error { state = tx.BreakerGet(name); return nil })
	return state, err
}

// BreakerPut implements Store.
func (db *DB) BreakerPut(_ context.Context, name string, state []byte) error {
	return db.Update(func(tx *Tx) error { return tx.BreakerPut(name, state) })
}

// DefinitionPut implements Store.
func (db *DB) DefinitionPut(_ context.Context, name, version string, spec []byte) (created bool, err error) {
	err = db.Update(func(tx *Tx) error {
		created, err = tx.DefinitionPut(name, version, spec)
		return err
	})
	return created, err
}

// DefinitionGet implements Store.
func (db *DB) DefinitionGet(_ context.Context, name, version string) (sd *StoredDefinition, ok bool, err error) {
	err = db.View(func(tx *Tx) error { sd, ok = tx.DefinitionGet(name, version); return nil })
	return sd, ok, err
}

// DefinitionList implements Store.
func (db *DB) DefinitionList(_ context.Context) (out []*StoredDefinition, err error) {
	err = db.View(func(tx *Tx) error {
		tx.DefinitionList(func(sd *StoredDefinition) bool { out = append(out, sd); return true })
		return nil
	})
	return out, err
}

// OutboxStats implements OutboxStore. It reads two counters and two index
// keys: cheap enough for every metrics scrape.
func (db *DB) OutboxStats(_ context.Context) (counts OutboxCounts, oldestNew, oldestNotProduced time.Time, err error) {
	err = db.View(func(tx *Tx) error {
		counts = tx.OutboxCounts()
		oldestNew, _ = tx.OutboxOldest(OutboxNew)
		oldestNotProduced, _ = tx.OutboxOldest(OutboxNotProduced)
		return nil
	})
	return counts, oldestNew, oldestNotProduced, err
}

// OutboxList implements OutboxStore.
func (db *DB) OutboxList(_ context.Context, o OutboxListOptions) (evs []*OutboxEvent, more bool, err error) {
	err = db.View(func(tx *Tx) error {
		evs, more, err = tx.OutboxList(o)
		return err
	})
	return evs, more, err
}

// OutboxGet implements OutboxStore.
func (db *DB) OutboxGet(_ context.Context, id ulid.ULID) (ev *OutboxEvent, err error) {
	err = db.View(func(tx *Tx) error {
		ev, err = tx.OutboxGet(id)
		return err
	})
	return ev, err
}

// OutboxRequeue implements OutboxStore.
func (db *DB) OutboxRequeue(_ context.Context, id ulid.ULID) (changed bool, err error) {
	err = db.Update(func(tx *Tx) error {
		changed, err = tx.OutboxRequeue(id)
		return err
	})
	return changed, err
}

// OutboxRequeueAll implements OutboxStore.
func (db *DB) OutboxRequeueAll(_ context.Context, limit int) (n int, err error) {
	limit = orDefault(limit)
	err = db.Update(func(tx *Tx) error {
		n = 0
		var ids []ulid.ULID
		tx.OutboxScan(OutboxNotProduced, ulid.ULID{}, func(id ulid.ULID) bool {
			ids = append(ids, id)
			return len(ids) < limit
		})
		for _, id := range ids {
			if _, err := tx.OutboxRequeue(id); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	return n, err
}

// OutboxDiscard implements OutboxStore.
func (db *DB) OutboxDiscard(_ context.Context, id ulid.ULID) error {
	return db.Update(func(tx *Tx) error {
		ev, err := tx.OutboxGet(id)
		if err != nil {
			return err
		}
		if ev.Status == OutboxNew {
			return errors.Wrapf(ErrEventPending, "storage: outbox event %s", id)
		}
		return tx.OutboxDelete(id)
	})
}

// OutboxPrune implements OutboxStore.
func (db *DB) OutboxPrune(_ context.Context, before time.Time, limit int) (n int, more bool, err error) {
	limit = orDefault(limit)
	err = db.Update(func(tx *Tx) error {
		n, more, err = tx.OutboxPrune(before, limit)
		return err
	})
	return n, more, err
}

// OutboxNotProducedSagas implements OutboxStore.
func (db *DB) OutboxNotProducedSagas(_ context.Context) (out []ulid.ULID, err error) {
	err = db.View(func(tx *Tx) error {
		seen := make(map[ulid.ULID]bool)
		tx.OutboxScan(OutboxNotProduced, ulid.ULID{}, func(id ulid.ULID) bool {
			if sid, ok := tx.OutboxSaga(id); ok && !seen[sid] {
				seen[sid] = true
				out = append(out, sid)
			}
			return true
		})
		return nil
	})
	return out, err
}

// OutboxScanNew implements OutboxStore.
func (db *DB) OutboxScanNew(_ context.Context, after ulid.ULID, fn func(id, saga ulid.ULID, event func() (*OutboxEvent, error)) bool) error {
	return db.View(func(tx *Tx) error {
		var cur ulid.ULID
		event := func() (*OutboxEvent, error) { return tx.OutboxGet(cur) } // one reader per scan
		tx.OutboxScan(OutboxNew, after, func(id ulid.ULID) bool {
			sid, ok := tx.OutboxSaga(id)
			if !ok {
				return true
			}
			cur = id
			return fn(id, sid, event)
		})
		return nil
	})
}

// OutboxMark implements OutboxStore.
func (db *DB) OutboxMark(_ context.Context, produced []ulid.ULID, failed []OutboxFailure, at time.Time) ([]int, error) {
	attempts := make([]int, len(failed))
	err := db.Update(func(tx *Tx) error {
		if _, err := tx.OutboxProduced(produced, at); err != nil {
			return err
		}
		for i, f := range failed {
			n, err := tx.OutboxFailed(f.ID, f.Error, f.Final, at)
			if errors.Is(err, ErrEventNotFound) {
				n = -1 // discarded meanwhile
			} else if err != nil {
				return err
			}
			attempts[i] = n
		}
		return nil
	})
	return attempts, err
}

// orDefault is a limit, 1000 when it is zero or less.
func orDefault(limit int) int {
	if limit <= 0 {
		return 1000
	}
	return limit
}
