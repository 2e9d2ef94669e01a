package postgres

import (
	"context"
	"crypto/sha256"
	"encoding/json"

	"github.com/cockroachdb/errors"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/oklog/ulid/v2"

	"github.com/sagad/sagad/saga"
)

// Event is an integration event an application adds to the outbox in its
// own transaction (Add), outside any saga.
type Event struct {
	// Name is the event's type; the routing key unless RoutingKey is set.
	Name string
	// Exchange overrides the relay's exchange.
	Exchange   string
	RoutingKey string
	// Payload is the event's JSON body.
	Payload json.RawMessage
	Headers map[string]string
	// Stream orders events: the relay publishes the events of one stream
	// in the order they were added, as it publishes a saga's, and holds a
	// stream's later events while an earlier one could not be published.
	// Its id (a hash of the name) is the x-saga-id header of the message.
	// Empty: the event is a stream of its own.
	Stream string
}

// StreamID is the id under which the events of a stream are kept and
// published (the x-saga-id header).
func StreamID(stream string) ulid.ULID {
	sum := sha256.Sum256([]byte("sagad.stream:" + stream))
	return ulid.ULID(sum[:16])
}

// Add writes events to the outbox within tx, a transaction of the
// application's own on the same database: the relay (of whichever process
// leads the outbox) publishes them once tx commits, and never if it rolls
// back. It returns their ids, which are the messages' ids, so that
// consumers can remove duplicates. Invalid events (no name, a payload that
// is not JSON or is larger than saga.MaxEventSize) fail the call and write
// nothing.
func (db *DB) Add(ctx context.Context, tx pgx.Tx, events ...Event) ([]ulid.ULID, error) {
	if len(events) == 0 {
		return nil, nil
	}
	n := len(events)
	ids, streams := make([]pgtype.UUID, n), make([]pgtype.UUID, n)
	names, exchanges, keys, headers := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	payloads, created := make([][]byte, n), make([]int64, n)
	now := db.clock.Now()
	db.ids.fill(now, ids)
	for i, ev := range events {
		switch {
		case ev.Name == "":
			return nil, errors.Newf("postgres: add event %d: no name", i)
		case !json.Valid(ev.Payload):
			return nil, errors.Newf("postgres: add event %s: the payload is not JSON", ev.Name)
		case len(ev.Payload) > saga.MaxEventSize:
			return nil, errors.Newf("postgres: add event %s: the payload is %d bytes, more than %d", ev.Name, len(ev.Payload), saga.MaxEventSize)
		}
		streams[i] = ids[i] // its own stream
		if ev.Stream != "" {
			streams[i] = uuid(StreamID(ev.Stream))
		}
		names[i], exchanges[i], keys[i] = ev.Name, ev.Exchange, ev.RoutingKey
		if keys[i] == "" {
			keys[i] = ev.Name
		}
		if len(ev.Headers) > 0 {
			h, err := json.Marshal(ev.Headers)
			if err != nil {
				return nil, errors.Wrapf(err, "postgres: add event %s: headers", ev.Name)
			}
			headers[i] = string(h)
		}
		payloads[i], created[i] = ev.Payload, instant(now)
	}
	_, err := tx.Exec(ctx, "INSERT INTO "+db.t("outbox")+" (id, saga_id, definition, step, name, exchange, routing_key, headers, payload, created_ns)"+
		" SELECT u.id, u.saga_id, '', '', u.name, u.exchange, u.routing_key, nullif(u.headers, '')::json, u.payload, u.created_ns"+
		" FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bytea[], $8::bigint[])"+
		" WITH ORDINALITY AS u(id, saga_id, name, exchange, routing_key, headers, payload, created_ns, ord) ORDER BY u.ord",
		ids, streams, names, exchanges, keys, headers, payloads, created)
	if err == nil {
		_, err = tx.Exec(ctx, "SELECT pg_notify($1, 'outbox')", db.channel) // delivered at commit
	}
	if err != nil {
		return nil, errors.Wrap(err, "postgres: add events")
	}
	out := make([]ulid.ULID, n)
	for i, id := range ids {
		out[i] = id.Bytes
	}
	return out, nil
}

// Step makes a step whose function writes to the database in the same
// transaction that records the step's success: fn runs in a transaction
// the step opens on the store's pool, which the engine commits together
// with the step's success (saga.Call.Enlist) or rolls back if the attempt
// fails, times out, or the process dies first. Its writes take effect
// exactly once, however often the step is attempted. fn must not commit or
// roll back tx itself.
func (db *DB) Step(fn func(ctx context.Context, tx pgx.Tx, c *saga.Call) (json.RawMessage, error)) saga.Func {
	return func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
		tx, err := db.pool.Begin(ctx)
		if err != nil {
			return nil, errors.Wrapf(err, "postgres: saga %s: step %q: begin", c.SagaID, c.Step)
		}
		enlisted := false
		defer func() {
			if !enlisted { // fn failed or panicked: its writes go
				_ = tx.Rollback(context.WithoutCancel(ctx))
			}
		}()
		out, err := fn(ctx, tx, c)
		if err == nil {
			err = c.Enlist(tx)
		}
		if err != nil {
			return nil, err
		}
		enlisted = true
		return out, nil
	}
}

// AcceptsTx reports whether tx is a transaction this store can write a
// transition in (see storage.TxAcceptor): a pgx.Tx on its own database.
func (db *DB) AcceptsTx(tx saga.Tx) bool {
	ptx, ok := tx.(pgx.Tx)
	if !ok || ptx.Conn() == nil {
		return false
	}
	c := ptx.Conn().Config()
	return c.Host == db.connCfg.Host && c.Port == db.connCfg.Port && c.Database == db.connCfg.Database
}
