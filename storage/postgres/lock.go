package postgres

import (
	"context"
	"strconv"
	"time"

	"github.com/cockroachdb/errors"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// One engine drives a schema's sagas: the store holds a session-level
// advisory lock on the schema, on a connection of its own, for as long as
// it is open. A second Open of the schema fails with ErrLocked. If the
// lock's connection is lost, PostgreSQL releases the lock, so the store
// refuses writes (ErrLockLost) until it holds the lock again.

func (db *DB) lockKey() int64 { return lockKey("node:" + db.schema) }

// lockSchema takes the schema's lock on a new connection, waiting up to
// wait for a holder to let go (a process killed a moment ago holds it
// until PostgreSQL notices its connection is gone).
func (db *DB) lockSchema(ctx context.Context, cfg *pgx.ConnConfig, wait time.Duration) (*pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, errors.Wrap(err, "postgres: connect")
	}
	_, err = conn.Exec(ctx, "SELECT set_config('lock_timeout', $1, false)", strconv.FormatInt(max(wait.Milliseconds(), 1), 10))
	if err == nil {
		_, err = conn.Exec(ctx, "SELECT pg_advisory_lock($1)", db.lockKey())
	}
	if err != nil {
		_ = conn.Close(ctx)
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "55P03" { // lock_not_available
			return nil, errors.WithHint(errors.Wrapf(ErrLocked, "postgres: schema %s", db.schema),
				"another sagad (or engine) has this schema open: stop it, or give this one another schema")
		}
		return nil, errors.Wrapf(err, "postgres: lock schema %s", db.schema)
	}
	return conn, nil
}

// holdLock checks the lock's connection every PollInterval; when it is
// lost, writes stop until the lock is taken again.
func (db *DB) holdLock(conn *pgx.Conn, cfg *pgx.ConnConfig) {
	defer db.bg.Done()
	defer func() {
		if conn != nil {
			_ = conn.Close(context.WithoutCancel(db.ctx))
		}
	}()
	tick := time.NewTicker(db.poll)
	defer tick.Stop()
	for {
		select {
		case <-db.ctx.Done():
			return
		case <-tick.C:
		}
		ctx, cancel := context.WithTimeout(db.ctx, db.poll)
		if conn != nil {
			if err := conn.Ping(ctx); err != nil && db.ctx.Err() == nil {
				db.fenced.Store(true)
				db.log.Error("postgres: lost the connection that holds the schema's lock; writes wait until it is back", "schema", db.schema, "err", err)
				_ = conn.Close(ctx)
				conn = nil
			}
		}
		if conn == nil {
			c, err := db.lockSchema(ctx, cfg, time.Millisecond)
			switch {
			case err == nil:
				conn = c
				db.fenced.Store(false)
				db.log.Info("postgres: holds the schema's lock again; writes go on", "schema", db.schema)
			case errors.Is(err, ErrLocked):
				db.log.Error("postgres: another process took the schema while this one was cut off; this one writes nothing more", "schema", db.schema)
			}
		}
		cancel()
	}
}
