package postgres

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/cockroachdb/errors"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/oklog/ulid/v2"

	"github.com/sagad/sagad/storage"
)

// Check verifies a schema's invariants that its constraints do not hold,
// reading it on one connection of its own (it takes part in nothing): the
// schema is at this package's version; every saga's record decodes and
// agrees with its row's columns (status, wake time, idempotency key,
// definition, fingerprint, parked, log sequence); every saga's log holds
// entries 1 to its log sequence, each of which decodes and carries its
// number; no finished saga is claimed or has an abort request; every
// outbox event that is not new says when it got its status; and, with
// validate, every stored definition parses. It returns the problems it
// found (nil when there are none). url and schema choose the schema as
// MigrateURL does.
func Check(ctx context.Context, url, schema string, validate func(name string, spec []byte) error) ([]storage.Problem, error) {
	conn, schema, err := connect(ctx, url, schema)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	q := quote(schema)
	var problems []storage.Problem
	add := func(kind, format string, args ...any) {
		problems = append(problems, storage.Problem{Kind: kind, Detail: fmt.Sprintf(format, args...)})
	}
	if err := checkVersion(ctx, conn, schema); err != nil {
		if errors.Is(err, storage.ErrSchema) {
			add("schema-version", "%v", err)
			return problems, nil
		}
		return nil, err
	}
	// Records against their rows.
	rows, err := conn.Query(ctx, "SELECT id, definition, fingerprint, status, wake_ns, idempotency_key, parked, log_seq, record FROM "+q+".sagas")
	if err != nil {
		return nil, errors.Wrapf(err, "postgres: check %s: sagas", schema)
	}
	for rows.Next() {
		var id pgtype.UUID
		var def, fp string
		var code int16
		var wake *int64
		var key *string
		var parked bool
		var logSeq int32
		var rec []byte
		if err := rows.Scan(&id, &def, &fp, &code, &wake, &key, &parked, &logSeq, &rec); err != nil {
			rows.Close()
			return nil, errors.Wrapf(err, "postgres: check %s: sagas", schema)
		}
		sid := ulid.ULID(id.Bytes)
		s, err := decodeSaga(sid, rec)
		if err != nil {
			add("saga-malformed", "saga %s: %v", sid, err)
			continue
		}
		st, known := statusOf[code]
		var w int64
		if wake != nil {
			w = *wake
		}
		var k string
		if key != nil {
			k = *key
		}
		switch {
		case !known:
			add("saga-malformed", "saga %s: unknown status code %d", sid, code)
		case st != s.Status:
			add("index-wrong-status", "saga %s: the row says %s, the record %s", sid, st, s.Status)
		case s.WakeAt.IsZero() != (w == 0) || (w != 0 && w != max(unixNano(s.WakeAt), 1)):
			add("saga-not-due", "saga %s: the row's wake time %d does not match the record's %v", sid, w, s.WakeAt)
		case k != s.IdempotencyKey:
			add("idem-missing", "saga %s: the row's idempotency key %q, the record's %q", sid, k, s.IdempotencyKey)
		case def != s.Definition || fp != s.Fingerprint || parked != (s.Parked != ""):
			add("saga-malformed", "saga %s: the row's definition, fingerprint or parked flag does not match the record", sid)
		case uint32(logSeq) != s.LogSeq:
			add("saga-malformed", "saga %s: the row's log sequence %d, the record's %d", sid, logSeq, s.LogSeq)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, errors.Wrapf(err, "postgres: check %s: sagas", schema)
	}
	// Log chains: entries 1 to log_seq, each decoding with its number.
	err = forEach(ctx, conn, "SELECT s.id, s.log_seq, count(l.seq), coalesce(min(l.seq), 1), coalesce(max(l.seq), 0) FROM "+q+".sagas s LEFT JOIN "+q+
		".saga_log l ON l.saga_id = s.id GROUP BY s.id, s.log_seq HAVING count(l.seq) <> s.log_seq OR coalesce(max(l.seq), 0) <> s.log_seq OR coalesce(min(l.seq), 1) <> 1",
		func(row pgx.Row) error {
			var id pgtype.UUID
			var seq int32
			var n, lo, hi int64
			if err := row.Scan(&id, &seq, &n, &lo, &hi); err != nil {
				return err
			}
			add("log-missing", "saga %s: log sequence %d, but %d entries numbered %d to %d", ulid.ULID(id.Bytes), seq, n, lo, hi)
			return nil
		})
	if err == nil {
		err = forEach(ctx, conn, "SELECT saga_id, seq, entry FROM "+q+".saga_log", func(row pgx.Row) error {
			var id pgtype.UUID
			var seq int32
			var entry []byte
			if err := row.Scan(&id, &seq, &entry); err != nil {
				return err
			}
			var e storage.LogEntry
			if err := json.Unmarshal(entry, &e); err != nil || e.Seq != uint32(seq) {
				add("log-undecodable", "saga %s: log entry %d does not decode as entry %d (%v)", ulid.ULID(id.Bytes), seq, seq, err)
			}
			return nil
		})
	}
	// Claims, abort requests and outbox statuses.
	if err == nil {
		err = forEach(ctx, conn, "SELECT id, owner FROM "+q+".sagas WHERE owner IS NOT NULL AND status NOT IN (1, 2)", func(row pgx.Row) error {
			var id pgtype.UUID
			var owner string
			if err := row.Scan(&id, &owner); err != nil {
				return err
			}
			add("claim-on-finished", "saga %s is finished but claimed by %s", ulid.ULID(id.Bytes), owner)
			return nil
		})
	}
	if err == nil {
		err = forEach(ctx, conn, "SELECT a.saga_id FROM "+q+".aborts a JOIN "+q+".sagas s ON s.id = a.saga_id WHERE s.status NOT IN (1, 2)", func(row pgx.Row) error {
			var id pgtype.UUID
			if err := row.Scan(&id); err != nil {
				return err
			}
			add("abort-unapplied", "saga %s is finished but has an abort request", ulid.ULID(id.Bytes))
			return nil
		})
	}
	if err == nil {
		err = forEach(ctx, conn, "SELECT id, status FROM "+q+".outbox WHERE status NOT IN (1, 2, 3) OR (status <> 1) = (status_ns IS NULL)", func(row pgx.Row) error {
			var id pgtype.UUID
			var code int16
			if err := row.Scan(&id, &code); err != nil {
				return err
			}
			add("outbox-index-bad-code", "outbox event %s: status %d without its time, or a time without a status", ulid.ULID(id.Bytes), code)
			return nil
		})
	}
	if err == nil && validate != nil {
		err = forEach(ctx, conn, "SELECT name, version, spec FROM "+q+".definitions", func(row pgx.Row) error {
			var name, version string
			var spec []byte
			if err := row.Scan(&name, &version, &spec); err != nil {
				return err
			}
			if err := validate(name, spec); err != nil {
				add("definition-invalid", "definition %s version %s: %v", name, version, err)
			}
			return nil
		})
	}
	if err != nil {
		return nil, errors.Wrapf(err, "postgres: check %s", schema)
	}
	return problems, nil
}

// forEach runs a query and calls fn with each row.
func forEach(ctx context.Context, conn *pgx.Conn, sql string, fn func(pgx.Row) error) error {
	rows, err := conn.Query(ctx, sql)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		if err := fn(rows); err != nil {
			return err
		}
	}
	return rows.Err()
}
