package bolt

import (
	"context"
	"time"

	"github.com/cockroachdb/errors"
	"github.com/oklog/ulid/v2"
	"github.com/sagad/sagad/storage"
)

var _ storage.Store = (*DB)(nil)

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
func (db *DB) DefinitionGet(_ context.Context, name, version string) (sd *storage.StoredDefinition, ok bool, err error) {
	err = db.View(func(tx *Tx) error { sd, ok = tx.DefinitionGet(name, version); return nil })
	return sd, ok, err
}

// DefinitionList implements Store.
func (db *DB) DefinitionList(_ context.Context) (out []*storage.StoredDefinition, err error) {
	err = db.View(func(tx *Tx) error {
		tx.DefinitionList(func(sd *storage.StoredDefinition) bool { out = append(out, sd); return true })
		return nil
	})
	return out, err
}

// OutboxStats implements OutboxStore. It reads two counters and two index
// keys: cheap enough for every metrics scrape.
func (db *DB) OutboxStats(_ context.Context) (counts storage.OutboxCounts, oldestNew, oldestNotProduced time.Time, err error) {
	err = db.View(func(tx *Tx) error {
		counts = tx.OutboxCounts()
		oldestNew, _ = tx.OutboxOldest(storage.OutboxNew)
		oldestNotProduced, _ = tx.OutboxOldest(storage.OutboxNotProduced)
		return nil
	})
	return counts, oldestNew, oldestNotProduced, err
}

// OutboxList implements OutboxStore.
func (db *DB) OutboxList(_ context.Context, o storage.OutboxListOptions) (evs []*storage.OutboxEvent, more bool, err error) {
	err = db.View(func(tx *Tx) error {
		evs, more, err = tx.OutboxList(o)
		return err
	})
	return evs, more, err
}

// OutboxGet implements OutboxStore.
func (db *DB) OutboxGet(_ context.Context, id ulid.ULID) (ev *storage.OutboxEvent, err error) {
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
		tx.OutboxScan(storage.OutboxNotProduced, ulid.ULID{}, func(id ulid.ULID) bool {
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
		if ev.Status == storage.OutboxNew {
			return errors.Wrapf(storage.ErrEventPending, "storage: outbox event %s", id)
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
		tx.OutboxScan(storage.OutboxNotProduced, ulid.ULID{}, func(id ulid.ULID) bool {
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
func (db *DB) OutboxScanNew(_ context.Context, after ulid.ULID, fn func(id, saga ulid.ULID, event func() (*storage.OutboxEvent, error)) bool) error {
	return db.View(func(tx *Tx) error {
		var cur ulid.ULID
		event := func() (*storage.OutboxEvent, error) { return tx.OutboxGet(cur) } // one reader per scan
		tx.OutboxScan(storage.OutboxNew, after, func(id ulid.ULID) bool {
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

// OutboxLead implements OutboxStore: one process uses the file, and leads.
func (db *DB) OutboxLead(ctx context.Context) (context.Context, error) { return ctx, ctx.Err() }

// OutboxMark implements OutboxStore.
func (db *DB) OutboxMark(_ context.Context, produced []ulid.ULID, failed []storage.OutboxFailure, at time.Time) ([]int, error) {
	attempts := make([]int, len(failed))
	err := db.Update(func(tx *Tx) error {
		if _, err := tx.OutboxProduced(produced, at); err != nil {
			return err
		}
		for i, f := range failed {
			n, err := tx.OutboxFailed(f.ID, f.Error, f.Final, at)
			if errors.Is(err, storage.ErrEventNotFound) {
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
