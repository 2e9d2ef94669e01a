package postgres

import (
	"context"
	"encoding/json"
	"time"

	"github.com/cockroachdb/errors"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/oklog/ulid/v2"

	"github.com/sagad/sagad/storage"
)

const eventColumns = "id, saga_id, status, status_ns, attempts, last_error, definition, step, name, exchange, routing_key, headers, payload, created_ns"

func scanEvent(row pgx.Row) (*storage.OutboxEvent, error) {
	var id, sid pgtype.UUID
	var code int16
	var statusNS *int64
	var headers []byte
	ev := new(storage.OutboxEvent)
	var created int64
	if err := row.Scan(&id, &sid, &code, &statusNS, &ev.Attempts, &ev.LastError, &ev.Definition, &ev.Step, &ev.Name,
		&ev.Exchange, &ev.RoutingKey, &headers, &ev.Payload, &created); err != nil {
		return nil, err
	}
	ev.ID, ev.SagaID, ev.Status = id.Bytes, sid.Bytes, outboxStatusOf[code]
	ev.CreatedAt = nanoTime(created)
	if statusNS != nil {
		ev.StatusAt = nanoTime(*statusNS)
	}
	if len(headers) > 0 {
		if err := json.Unmarshal(headers, &ev.Headers); err != nil {
			return nil, errors.Mark(errors.Wrapf(err, "postgres: outbox event %s: headers", ev.ID), storage.ErrCorrupt)
		}
	}
	return ev, nil
}

// OutboxStats implements storage.OutboxStore.
func (db *DB) OutboxStats(ctx context.Context) (storage.OutboxCounts, time.Time, time.Time, error) {
	var c storage.OutboxCounts
	var oldestNew, oldestNP *int64
	err := db.pool.QueryRow(ctx, "SELECT count(*) FILTER (WHERE status = 1), count(*) FILTER (WHERE status = 2), count(*) FILTER (WHERE status = 3),"+
		" min(created_ns) FILTER (WHERE status = 1), min(created_ns) FILTER (WHERE status = 3) FROM "+db.t("outbox")).
		Scan(&c.New, &c.Produced, &c.NotProduced, &oldestNew, &oldestNP)
	if err != nil {
		return c, time.Time{}, time.Time{}, db.read(err, "outbox stats")
	}
	at := func(n *int64) time.Time {
		if n == nil {
			return time.Time{}
		}
		return nanoTime(*n)
	}
	return c, at(oldestNew), at(oldestNP), nil
}

// OutboxList implements storage.OutboxStore.
func (db *DB) OutboxList(ctx context.Context, o storage.OutboxListOptions) ([]*storage.OutboxEvent, bool, error) {
	if o.Status == "" {
		o.Status = storage.OutboxNew
	}
	code, ok := outboxCodes[o.Status]
	if !ok {
		return nil, false, errors.Newf("postgres: unknown outbox status %q", o.Status)
	}
	if o.Limit <= 0 {
		o.Limit = 100
	}
	rows, err := db.pool.Query(ctx, "SELECT "+eventColumns+" FROM "+db.t("outbox")+" WHERE status = $1 AND id > $2 ORDER BY id LIMIT $3",
		code, uuid(o.After), o.Limit+1)
	if err != nil {
		return nil, false, db.read(err, "list outbox")
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (*storage.OutboxEvent, error) { return scanEvent(row) })
	if err != nil {
		return nil, false, db.read(err, "list outbox")
	}
	more := len(out) > o.Limit
	if more {
		out = out[:o.Limit]
	}
	return out, more, nil
}

// OutboxGet implements storage.OutboxStore.
func (db *DB) OutboxGet(ctx context.Context, id ulid.ULID) (*storage.OutboxEvent, error) {
	ev, err := scanEvent(db.pool.QueryRow(ctx, "SELECT "+eventColumns+" FROM "+db.t("outbox")+" WHERE id = $1", uuid(id)))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, errors.Wrapf(storage.ErrEventNotFound, "postgres: outbox event %s", id)
	}
	return ev, db.read(err, "outbox event %s", id)
}

// requeued counts re-queues and discards in the schema and tells the
// relays; it runs in the transaction that made them.
func (db *DB) requeued(ctx context.Context, tx pgx.Tx, n int) error {
	var total int64
	if err := tx.QueryRow(ctx, "UPDATE "+db.t("counters")+" SET value = value + $1 WHERE name = 'outbox_requeues' RETURNING value", n).Scan(&total); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, "SELECT pg_notify($1, 'requeue')", db.channel); err != nil {
		return err
	}
	// Raised here, before the caller's commit is seen by the relay: a
	// failed commit only makes the relay look again for nothing.
	for {
		old := db.requeues.Load()
		if total <= old || db.requeues.CompareAndSwap(old, total) {
			return nil
		}
	}
}

// OutboxRequeue implements storage.OutboxStore.
func (db *DB) OutboxRequeue(ctx context.Context, id ulid.ULID) (bool, error) {
	changed := false
	err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		var code int16
		err := tx.QueryRow(ctx, "SELECT status FROM "+db.t("outbox")+" WHERE id = $1 FOR UPDATE", uuid(id)).Scan(&code)
		if errors.Is(err, pgx.ErrNoRows) {
			return errors.Wrapf(storage.ErrEventNotFound, "postgres: outbox event %s", id)
		}
		if err != nil || code == 1 {
			return err
		}
		if _, err := tx.Exec(ctx, "UPDATE "+db.t("outbox")+" SET status = 1, status_ns = NULL, attempts = 0 WHERE id = $1", uuid(id)); err != nil {
			return err
		}
		changed = true
		return db.requeued(ctx, tx, 1)
	})
	if err != nil && !errors.Is(err, storage.ErrEventNotFound) {
		return false, db.read(err, "requeue outbox event %s", id)
	}
	if changed && err == nil {
		db.wakeUp()
	}
	return changed && err == nil, err
}

// OutboxRequeueAll implements storage.OutboxStore.
func (db *DB) OutboxRequeueAll(ctx context.Context, limit int) (int, error) {
	n := 0
	err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, "UPDATE "+db.t("outbox")+" SET status = 1, status_ns = NULL, attempts = 0 WHERE id IN (SELECT id FROM "+
			db.t("outbox")+" WHERE status = 3 ORDER BY id LIMIT $1 FOR UPDATE)", orDefault(limit))
		if err != nil {
			return err
		}
		n = int(tag.RowsAffected())
		if n == 0 {
			return nil
		}
		return db.requeued(ctx, tx, n)
	})
	if err != nil {
		return 0, db.read(err, "requeue outbox events")
	}
	if n > 0 {
		db.wakeUp()
	}
	return n, nil
}

// OutboxDiscard implements storage.OutboxStore.
func (db *DB) OutboxDiscard(ctx context.Context, id ulid.ULID) error {
	woke := false
	err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		var code int16
		err := tx.QueryRow(ctx, "DELETE FROM "+db.t("outbox")+" WHERE id = $1 RETURNING status", uuid(id)).Scan(&code)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			return errors.Wrapf(storage.ErrEventNotFound, "postgres: outbox event %s", id)
		case err != nil:
			return err
		case code == 1:
			return errors.Wrapf(storage.ErrEventPending, "postgres: outbox event %s", id) // rolls the delete back
		case code == 3:
			// A parked saga may be free to go on.
			woke = true
			return db.requeued(ctx, tx, 1)
		}
		return nil
	})
	if errors.IsAny(err, storage.ErrEventNotFound, storage.ErrEventPending) {
		return err
	}
	if err == nil && woke {
		db.wakeUp()
	}
	return db.read(err, "discard outbox event %s", id)
}

// OutboxPrune implements storage.OutboxStore.
func (db *DB) OutboxPrune(ctx context.Context, before time.Time, limit int) (int, bool, error) {
	limit = orDefault(limit)
	tag, err := db.pool.Exec(ctx, "DELETE FROM "+db.t("outbox")+" WHERE id IN (SELECT id FROM "+db.t("outbox")+
		" WHERE status = 2 AND status_ns < $1 AND id < $3 ORDER BY id LIMIT $2)", unixNano(before), limit,
		idFloor(before.Add(time.Millisecond))) // made before it was produced
	if err != nil {
		return 0, false, db.read(err, "prune outbox")
	}
	n := int(tag.RowsAffected())
	if n < limit {
		return n, false, nil
	}
	var more bool
	err = db.pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM "+db.t("outbox")+" WHERE status = 2 AND status_ns < $1 AND id < $2)",
		unixNano(before), idFloor(before.Add(time.Millisecond))).Scan(&more)
	return n, more, db.read(err, "prune outbox")
}

// OutboxNotProducedSagas implements storage.OutboxStore.
func (db *DB) OutboxNotProducedSagas(ctx context.Context) ([]ulid.ULID, error) {
	return db.queryIDs(ctx, "parked sagas of the outbox", "SELECT DISTINCT saga_id FROM "+db.t("outbox")+" WHERE status = 3")
}

// scanPage is how many new events one query of a scan lists.
const scanPage = 1024

// scanChunk is how many events one read of a scan fetches.
const scanChunk = 64

// OutboxScanNew implements storage.OutboxStore. Several processes write
// the outbox, each with its own clock and in its own transactions, so ids
// follow neither commit order nor one saga's order: the scan returns every
// new event, whatever after is, in the order they were written (seq), which
// keeps each saga's events in order (its next transition is written only
// once the previous one committed). The relay skips the events it holds.
// It lists a page of events at a time, then reads those fn asks for, a
// chunk at a time, so fn runs outside any query.
func (db *DB) OutboxScanNew(ctx context.Context, _ ulid.ULID, fn func(id, saga ulid.ULID, event func() (*storage.OutboxEvent, error)) bool) error {
	type pair struct {
		id, saga ulid.ULID
		seq      int64
	}
	cache := make(map[ulid.ULID]*storage.OutboxEvent)
	var from int64
	for {
		rows, err := db.pool.Query(ctx, "SELECT id, saga_id, seq FROM "+db.t("outbox")+" WHERE status = 1 AND seq > $1 ORDER BY seq LIMIT $2",
			from, scanPage)
		if err != nil {
			return db.read(err, "scan outbox")
		}
		list, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (pair, error) {
			var id, sid pgtype.UUID
			var seq int64
			err := row.Scan(&id, &sid, &seq)
			return pair{id.Bytes, sid.Bytes, seq}, err
		})
		if err != nil {
			return db.read(err, "scan outbox")
		}
		for i, p := range list {
			event := func() (*storage.OutboxEvent, error) {
				if ev, ok := cache[p.id]; ok {
					return ev, nil
				}
				chunk := make([]ulid.ULID, 0, scanChunk)
				for _, q := range list[i:min(i+scanChunk, len(list))] {
					chunk = append(chunk, q.id)
				}
				rows, err := db.pool.Query(ctx, "SELECT "+eventColumns+" FROM "+db.t("outbox")+" WHERE id = ANY($1)", uuids(chunk))
				if err != nil {
					return nil, db.read(err, "read outbox events")
				}
				evs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (*storage.OutboxEvent, error) { return scanEvent(row) })
				if err != nil {
					return nil, db.read(err, "read outbox events")
				}
				clear(cache)
				for _, ev := range evs {
					cache[ev.ID] = ev
				}
				if ev, ok := cache[p.id]; ok {
					return ev, nil
				}
				return nil, errors.Wrapf(storage.ErrEventNotFound, "postgres: outbox event %s", p.id)
			}
			if !fn(p.id, p.saga, event) {
				return nil
			}
		}
		if len(list) < scanPage {
			return nil
		}
		from = list[len(list)-1].seq
	}
}

// OutboxMark implements storage.OutboxStore.
func (db *DB) OutboxMark(ctx context.Context, produced []ulid.ULID, failed []storage.OutboxFailure, at time.Time) ([]int, error) {
	attempts := make([]int, len(failed))
	err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		if len(produced) > 0 {
			b.Queue("UPDATE "+db.t("outbox")+" SET status = 2, status_ns = $2 WHERE id = ANY($1) AND status = 1", uuids(produced), instant(at))
		}
		for _, f := range failed {
			b.Queue("UPDATE "+db.t("outbox")+" SET attempts = attempts + 1, last_error = $2,"+
				" status = CASE WHEN $3 THEN 3 ELSE status END, status_ns = CASE WHEN $3 THEN $4 ELSE status_ns END"+
				" WHERE id = $1 AND status = 1 RETURNING attempts", uuid(f.ID), f.Error, f.Final, instant(at))
		}
		br := tx.SendBatch(ctx, b)
		defer br.Close()
		if len(produced) > 0 {
			if _, err := br.Exec(); err != nil {
				return err
			}
		}
		for i := range failed {
			var n int
			err := br.QueryRow().Scan(&n)
			switch {
			case errors.Is(err, pgx.ErrNoRows):
				n = -1 // discarded, or no longer new
			case err != nil:
				return err
			}
			attempts[i] = n
		}
		return br.Close()
	})
	return attempts, db.read(err, "mark outbox events")
}
