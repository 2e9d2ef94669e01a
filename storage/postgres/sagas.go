package postgres

import (
	"context"
	"encoding/json"
	"strconv"
	"time"

	"github.com/cockroachdb/errors"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/oklog/ulid/v2"

	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
)

func uuid(id ulid.ULID) pgtype.UUID { return pgtype.UUID{Bytes: id, Valid: true} }

func uuids(ids []ulid.ULID) []pgtype.UUID {
	out := make([]pgtype.UUID, len(ids))
	for i, id := range ids {
		out[i] = uuid(id)
	}
	return out
}

func (db *DB) t(name string) string { return quote(db.schema) + "." + name }

// read wraps a read's error: a closed store is storage.ErrClosed.
func (db *DB) read(err error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	if db.closed.Load() {
		return errors.Wrap(storage.ErrClosed, "postgres")
	}
	return errors.Wrapf(err, "postgres: "+format, args...)
}

// SagaCreate implements storage.SagaStore.
func (db *DB) SagaCreate(ctx context.Context, t *storage.Transition) (ulid.ULID, error) {
	r, err := db.encode(t, true)
	if err != nil {
		return ulid.ULID{}, err
	}
	if err := db.submit(r); err != nil {
		return ulid.ULID{}, err
	}
	switch {
	case r.existing == pendingHolder && r.key != "":
		// The holder committed while the statement ran: it is there now.
		id, ok, err := db.IdemGet(ctx, r.key)
		if err != nil {
			return ulid.ULID{}, err
		}
		if !ok {
			return ulid.ULID{}, errors.Newf("postgres: saga %s: idempotency key %q was taken and then released", r.id, r.key)
		}
		return id, nil
	case r.existing == pendingHolder:
		return ulid.ULID{}, errors.Newf("postgres: saga %s already exists", r.id)
	}
	return r.existing, nil
}

// SagaCommit implements storage.SagaStore.
func (db *DB) SagaCommit(ctx context.Context, t *storage.Transition) error {
	t.Aborted = false
	r, err := db.encode(t, false)
	if err != nil {
		if t.Tx != nil {
			_ = t.Tx.Rollback(ctx)
		}
		return err
	}
	if t.Tx != nil {
		err = db.commitIn(ctx, t.Tx, r)
	} else {
		err = db.submit(r)
	}
	if err != nil {
		return err
	}
	if r.norow {
		var owner *string
		err := db.pool.QueryRow(ctx, "SELECT owner FROM "+db.t("sagas")+" WHERE id = $1", uuid(t.Saga.ID)).Scan(&owner)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			return errors.Wrapf(storage.ErrNotFound, "saga %s", t.Saga.ID)
		case err != nil:
			return db.read(err, "saga %s", t.Saga.ID)
		}
		return errors.Wrapf(storage.ErrNotOwner, "postgres: saga %s", t.Saga.ID)
	}
	t.Aborted = r.aborted
	return nil
}

func decodeSaga(id ulid.ULID, rec []byte) (*storage.Saga, error) {
	s := new(storage.Saga)
	if err := json.Unmarshal(rec, s); err != nil {
		return nil, errors.Mark(errors.Wrapf(err, "postgres: saga %s: decode", id), storage.ErrCorrupt)
	}
	s.ID = id
	return s, nil
}

// SagaGet implements storage.SagaStore.
func (db *DB) SagaGet(ctx context.Context, id ulid.ULID) (*storage.Saga, error) {
	var rec []byte
	err := db.pool.QueryRow(ctx, "SELECT record FROM "+db.t("sagas")+" WHERE id = $1", uuid(id)).Scan(&rec)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, errors.Wrapf(storage.ErrNotFound, "saga %s", id)
	}
	if err != nil {
		return nil, db.read(err, "saga %s", id)
	}
	return decodeSaga(id, rec)
}

// SagaStatus implements storage.SagaStore.
func (db *DB) SagaStatus(ctx context.Context, id ulid.ULID) (saga.Status, error) {
	var code int16
	err := db.pool.QueryRow(ctx, "SELECT status FROM "+db.t("sagas")+" WHERE id = $1", uuid(id)).Scan(&code)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", errors.Wrapf(storage.ErrNotFound, "saga %s", id)
	}
	if err != nil {
		return "", db.read(err, "saga %s", id)
	}
	st, ok := statusOf[code]
	if !ok {
		return "", errors.Mark(errors.Newf("postgres: saga %s: unknown status code %d", id, code), storage.ErrCorrupt)
	}
	return st, nil
}

// SagaList implements storage.SagaStore.
func (db *DB) SagaList(ctx context.Context, o storage.ListOptions) ([]*storage.Saga, bool, error) {
	if o.Limit <= 0 {
		o.Limit = 100
	}
	q := "SELECT id, record FROM " + db.t("sagas") + " WHERE true"
	var args []any
	if o.Status != "" {
		code, ok := statusCodes[o.Status]
		if !ok {
			return nil, false, errors.Newf("postgres: unknown saga status %q", o.Status)
		}
		args = append(args, code)
		q += " AND status = $1"
	}
	if o.Definition != "" {
		args = append(args, o.Definition)
		q += " AND definition = $" + strconv.Itoa(len(args))
	}
	if o.Before != (ulid.ULID{}) {
		args = append(args, uuid(o.Before))
		q += " AND id < $" + strconv.Itoa(len(args))
	}
	args = append(args, o.Limit+1)
	q += " ORDER BY id DESC LIMIT $" + strconv.Itoa(len(args))
	rows, err := db.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, false, db.read(err, "list sagas")
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (*storage.Saga, error) {
		var id pgtype.UUID
		var rec []byte
		if err := row.Scan(&id, &rec); err != nil {
			return nil, err
		}
		return decodeSaga(id.Bytes, rec)
	})
	if err != nil {
		return nil, false, db.read(err, "list sagas")
	}
	more := len(out) > o.Limit
	if more {
		out = out[:o.Limit]
	}
	return out, more, nil
}

// SagaUnfinished implements storage.SagaStore.
func (db *DB) SagaUnfinished(ctx context.Context, fn func(id ulid.ULID, st saga.Status, wake time.Time) bool) error {
	rows, err := db.pool.Query(ctx, "SELECT id, status, wake_ns FROM "+db.t("sagas")+" WHERE status IN (1, 2) ORDER BY status, id")
	if err != nil {
		return db.read(err, "unfinished sagas")
	}
	defer rows.Close()
	for rows.Next() {
		var id pgtype.UUID
		var code int16
		var wake *int64
		if err := rows.Scan(&id, &code, &wake); err != nil {
			return db.read(err, "unfinished sagas")
		}
		var at time.Time
		if wake != nil {
			at = time.Unix(0, *wake)
		}
		if !fn(id.Bytes, statusOf[code], at) {
			return nil
		}
	}
	return db.read(rows.Err(), "unfinished sagas")
}

func (db *DB) queryIDs(ctx context.Context, what, q string, args ...any) ([]ulid.ULID, error) {
	rows, err := db.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, db.read(err, "%s", what)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (ulid.ULID, error) {
		var id pgtype.UUID
		err := row.Scan(&id)
		return id.Bytes, err
	})
	return out, db.read(err, "%s", what)
}

// SagaParked implements storage.SagaStore.
func (db *DB) SagaParked(ctx context.Context, definition string, fingerprints ...string) ([]ulid.ULID, error) {
	return db.queryIDs(ctx, "parked sagas", "SELECT id FROM "+db.t("sagas")+
		" WHERE status IN (1, 2) AND parked AND definition = $1 AND fingerprint <> '' AND fingerprint = ANY($2) ORDER BY id",
		definition, fingerprints)
}

// SagaFinishedBefore implements storage.SagaStore.
func (db *DB) SagaFinishedBefore(ctx context.Context, st saga.Status, before time.Time, limit int) ([]ulid.ULID, error) {
	code, ok := statusCodes[st]
	if !ok {
		return nil, errors.Newf("postgres: unknown saga status %q", st)
	}
	return db.queryIDs(ctx, "finished sagas", "SELECT id FROM "+db.t("sagas")+
		" WHERE status = $1 AND updated_ns < $2 AND id < $4 ORDER BY id LIMIT $3", code, unixNano(before), orDefault(limit),
		idFloor(before.Add(time.Millisecond))) // made before it was last updated
}

// SagaDelete implements storage.SagaStore: its log and abort request go
// with it, and its idempotency key is free again.
func (db *DB) SagaDelete(ctx context.Context, ids []ulid.ULID) (int, error) {
	tag, err := db.pool.Exec(ctx, "DELETE FROM "+db.t("sagas")+" WHERE id = ANY($1)", uuids(ids))
	if err != nil {
		return 0, db.read(err, "delete sagas")
	}
	return int(tag.RowsAffected()), nil
}

// SagaDue implements storage.SagaStore.
func (db *DB) SagaDue(ctx context.Context, now time.Time, limit int, skip func(ulid.ULID) bool) ([]ulid.ULID, time.Time, error) {
	limit = orDefault(limit)
	cut := unixNano(now)
	var due []ulid.ULID
	lastWake, lastID := int64(-1<<63), uuid(ulid.ULID{})
	for {
		rows, err := db.pool.Query(ctx, "SELECT id, wake_ns, owner = $5 FROM "+db.t("sagas")+
			" WHERE wake_ns IS NOT NULL AND wake_ns <= $1 AND (wake_ns, id) > ($2, $3)"+
			" AND (owner IS NULL OR owner = $5 OR "+ownerDead(quote(db.schema), "owner")+") ORDER BY wake_ns, id LIMIT $4",
			cut, lastWake, lastID, limit, db.node)
		if err != nil {
			return nil, time.Time{}, db.read(err, "due sagas")
		}
		n := 0
		for rows.Next() {
			var id pgtype.UUID
			var wake int64
			var mine *bool
			if err := rows.Scan(&id, &wake, &mine); err != nil {
				rows.Close()
				return nil, time.Time{}, db.read(err, "due sagas")
			}
			n++
			lastWake, lastID = wake, id
			if len(due) < limit && db.stranded(id.Bytes, mine) && (skip == nil || !skip(id.Bytes)) {
				due = append(due, id.Bytes)
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, time.Time{}, db.read(err, "due sagas")
		}
		if n < limit || len(due) >= limit {
			break
		}
	}
	if len(due) < limit {
		orphans, err := db.orphans(ctx, limit-len(due), skip)
		if err != nil {
			return nil, time.Time{}, err
		}
		due = append(due, orphans...)
	}
	var next *int64
	err := db.pool.QueryRow(ctx, "SELECT min(wake_ns) FROM "+db.t("sagas")+" WHERE wake_ns > $1", cut).Scan(&next)
	if err != nil {
		return nil, time.Time{}, db.read(err, "due sagas")
	}
	var at time.Time
	if next != nil {
		at = time.Unix(0, *next)
	}
	return due, at, nil
}

// LogList implements storage.SagaStore.
func (db *DB) LogList(ctx context.Context, id ulid.ULID) ([]storage.LogEntry, error) {
	rows, err := db.pool.Query(ctx, "SELECT s.id, l.entry FROM "+db.t("sagas")+" s LEFT JOIN "+db.t("saga_log")+
		" l ON l.saga_id = s.id WHERE s.id = $1 ORDER BY l.seq", uuid(id))
	if err != nil {
		return nil, db.read(err, "saga %s: log", id)
	}
	defer rows.Close()
	found := false
	var out []storage.LogEntry
	for rows.Next() {
		var sid pgtype.UUID
		var entry []byte
		if err := rows.Scan(&sid, &entry); err != nil {
			return nil, db.read(err, "saga %s: log", id)
		}
		found = true
		if entry == nil {
			continue // no entries
		}
		var e storage.LogEntry
		if err := json.Unmarshal(entry, &e); err != nil {
			return nil, errors.Mark(errors.Wrapf(err, "postgres: saga %s: decode log entry", id), storage.ErrCorrupt)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, db.read(err, "saga %s: log", id)
	}
	if !found {
		return nil, errors.Wrapf(storage.ErrNotFound, "saga %s", id)
	}
	return out, nil
}

// IdemGet implements storage.SagaStore.
func (db *DB) IdemGet(ctx context.Context, key string) (ulid.ULID, bool, error) {
	var id pgtype.UUID
	err := db.pool.QueryRow(ctx, "SELECT id FROM "+db.t("sagas")+" WHERE idempotency_key = $1", key).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return ulid.ULID{}, false, nil
	}
	if err != nil {
		return ulid.ULID{}, false, db.read(err, "idempotency key")
	}
	return id.Bytes, true, nil
}

// AbortPut implements storage.SagaStore: the check sees the saga locked
// for the transaction.
func (db *DB) AbortPut(ctx context.Context, id ulid.ULID, at time.Time, check func(*storage.Saga) error) error {
	var refused error
	err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		refused = nil
		var rec []byte
		err := tx.QueryRow(ctx, "SELECT record FROM "+db.t("sagas")+" WHERE id = $1 FOR UPDATE", uuid(id)).Scan(&rec)
		if errors.Is(err, pgx.ErrNoRows) {
			refused = errors.Wrapf(storage.ErrNotFound, "saga %s", id)
			return nil
		}
		if err != nil {
			return err
		}
		s, err := decodeSaga(id, rec)
		if err == nil {
			err = check(s)
		}
		switch {
		case errors.Is(err, storage.ErrNoWrite):
			return nil
		case err != nil:
			refused = err
			return nil
		}
		_, err = tx.Exec(ctx, "INSERT INTO "+db.t("aborts")+" (saga_id, requested_ns) VALUES ($1, $2) ON CONFLICT (saga_id) DO UPDATE SET requested_ns = EXCLUDED.requested_ns",
			uuid(id), instant(at))
		return err
	})
	if err != nil {
		return db.read(err, "saga %s: abort request", id)
	}
	return refused
}

// AbortGet implements storage.SagaStore.
func (db *DB) AbortGet(ctx context.Context, id ulid.ULID) (bool, error) {
	var ok bool
	err := db.pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM "+db.t("aborts")+" WHERE saga_id = $1)", uuid(id)).Scan(&ok)
	return ok, db.read(err, "saga %s: abort request", id)
}

// SagaCounts implements storage.SagaStore.
func (db *DB) SagaCounts(ctx context.Context) (map[saga.Status]int, error) {
	rows, err := db.pool.Query(ctx, "SELECT status, count(*) FROM "+db.t("sagas")+" GROUP BY status")
	if err != nil {
		return nil, db.read(err, "count sagas")
	}
	counts := make(map[saga.Status]int, len(statusCodes))
	for st := range statusCodes {
		counts[st] = 0
	}
	var code int16
	var n int64
	_, err = pgx.ForEachRow(rows, []any{&code, &n}, func() error { counts[statusOf[code]] = int(n); return nil })
	if err != nil {
		return nil, db.read(err, "count sagas")
	}
	return counts, nil
}
