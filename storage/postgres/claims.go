package postgres

import (
	"context"
	"time"

	"github.com/cockroachdb/errors"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/oklog/ulid/v2"

	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
)

// Claims (see storage.SagaStore): a saga row names its driver (owner), a
// node that lives while its row in nodes has a lease (lease_ns, on
// PostgreSQL's clock, so that the nodes' clocks do not matter) that has not
// lapsed. A node renews its lease every third of its length: one write per
// node, whatever number of sagas it drives. Each new claim raises the
// saga's epoch, and a node writes only with the epoch it claimed: one whose
// saga another node took writes nothing more to it.

// dbNow is PostgreSQL's clock in unix nanoseconds.
const dbNow = "(extract(epoch from clock_timestamp()) * 1000000000)::bigint"

// ownerDead is SQL that holds when the node in column col (a saga's owner)
// has no live lease.
func ownerDead(schema, col string) string {
	return "NOT EXISTS (SELECT 1 FROM " + schema + ".nodes n WHERE n.node = " + col + " AND n.lease_ns >= " + dbNow + ")"
}

// claimed returns the epoch this process holds the saga with (0: none).
func (db *DB) claimed(id ulid.ULID) int64 {
	db.claimsMu.Lock()
	defer db.claimsMu.Unlock()
	return db.claims[id]
}

// setClaim records the outcome of a write: held with epoch, or let go
// (epoch 0).
func (db *DB) setClaim(id ulid.ULID, epoch int64) {
	db.claimsMu.Lock()
	defer db.claimsMu.Unlock()
	if epoch == 0 {
		delete(db.claims, id)
	} else {
		db.claims[id] = epoch
	}
}

// releases reports whether a record as committed needs no driver: the
// commit lets go of its claim.
func releases(s *storage.Saga) bool {
	return s.Status.Finished() || s.Status == saga.StatusPaused || !s.WakeAt.IsZero() || s.Parked != ""
}

// stranded reports whether a saga a query found claimable needs a driver
// from this process: one this process holds a claim on is being driven
// (its row names this process, and the claim is in memory); one whose row
// names this process without a claim in memory was left behind (a release
// or a create whose answer was lost) and needs one.
func (db *DB) stranded(id ulid.ULID, mine *bool) bool {
	return mine == nil || !*mine || db.claimed(id) == 0
}

// SagaClaim implements storage.SagaStore.
func (db *DB) SagaClaim(ctx context.Context, id ulid.ULID) (*storage.Saga, bool, error) {
	var rec []byte
	var epoch int64
	var aborted bool
	err := db.pool.QueryRow(ctx, "UPDATE "+db.t("sagas")+" AS t SET owner = $2,"+
		" epoch = CASE WHEN t.owner IS NOT DISTINCT FROM $2 AND t.epoch > 0 THEN t.epoch ELSE t.epoch + 1 END"+
		" WHERE t.id = $1 AND t.status IN (1, 2) AND (t.owner IS NULL OR t.owner = $2 OR "+ownerDead(quote(db.schema), "t.owner")+")"+
		" RETURNING t.record, t.epoch, EXISTS (SELECT 1 FROM "+db.t("aborts")+" WHERE saga_id = $1)",
		uuid(id), db.node).Scan(&rec, &epoch, &aborted)
	if err == nil {
		db.setClaim(id, epoch)
		s, err := decodeSaga(id, rec)
		return s, aborted, err
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return nil, false, db.read(err, "saga %s: claim", id)
	}
	// Finished (no driver needed: its record is the answer), held by
	// another process, or missing.
	var code int16
	err = db.pool.QueryRow(ctx, "SELECT record, status, EXISTS (SELECT 1 FROM "+db.t("aborts")+" WHERE saga_id = $1) FROM "+
		db.t("sagas")+" WHERE id = $1", uuid(id)).Scan(&rec, &code, &aborted)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil, false, errors.Wrapf(storage.ErrNotFound, "saga %s", id)
	case err != nil:
		return nil, false, db.read(err, "saga %s: claim", id)
	case code == 1 || code == 2:
		db.setClaim(id, 0)
		return nil, false, errors.Wrapf(storage.ErrClaimed, "saga %s", id)
	}
	s, err := decodeSaga(id, rec)
	return s, aborted, err
}

// SagaRelease implements storage.SagaStore.
func (db *DB) SagaRelease(ctx context.Context, id ulid.ULID) error {
	epoch := db.claimed(id)
	if epoch == 0 {
		return nil
	}
	_, err := db.pool.Exec(ctx, "UPDATE "+db.t("sagas")+" SET owner = NULL WHERE id = $1 AND owner = $2 AND epoch = $3",
		uuid(id), db.node, epoch)
	if err == nil {
		db.setClaim(id, 0)
	}
	return db.read(err, "saga %s: release", id)
}

// SagaWake implements storage.SagaStore: the channel closes when another
// process notifies the schema, and every PollInterval.
func (db *DB) SagaWake() <-chan struct{} {
	db.wakeMu.Lock()
	defer db.wakeMu.Unlock()
	return db.sagaWake
}

// heartbeat writes this node's lease.
func (db *DB) heartbeat(ctx context.Context) error {
	_, err := db.pool.Exec(ctx, "INSERT INTO "+db.t("nodes")+" (node, lease_ns) VALUES ($1, "+dbNow+" + $2)"+
		" ON CONFLICT (node) DO UPDATE SET lease_ns = EXCLUDED.lease_ns", db.node, db.ttl.Nanoseconds())
	return err
}

// renew extends this node's lease every third of its length. A renewal
// that fails is tried again at the next tick; a node that cannot renew for
// a whole lease is dead to the others, which take its sagas over, and its
// later writes to them fail (ErrNotOwner).
func (db *DB) renew() {
	defer db.bg.Done()
	tick := time.NewTicker(db.ttl / 3)
	defer tick.Stop()
	failing := false
	for {
		select {
		case <-db.ctx.Done():
			return
		case <-tick.C:
		}
		ctx, cancel := context.WithTimeout(db.ctx, db.ttl/3)
		err := db.heartbeat(ctx)
		cancel()
		switch {
		case err != nil && db.ctx.Err() == nil && !failing:
			failing = true
			db.log.Warn("postgres: cannot renew this node's lease; other nodes take its sagas over once it lapses", "node", db.node, "err", err)
		case err == nil && failing:
			failing = false
			db.log.Info("postgres: lease renewed again", "node", db.node)
		}
	}
}

// releaseAll ends this node's lease at Close, so that other nodes take its
// sagas over at once (they are orphans then) rather than when it lapses.
func (db *DB) releaseAll() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := db.pool.Exec(ctx, "DELETE FROM "+db.t("nodes")+" WHERE node = $1", db.node); err != nil {
		db.log.Debug("postgres: remove the node's lease at close", "err", err)
	}
	db.claimsMu.Lock()
	clear(db.claims)
	db.claimsMu.Unlock()
}

// orphans returns unfinished sagas that need a driver and have none: their
// owner died, or let go without making them wait (a node's shutdown), or
// is this process, which holds none of them (skip leaves out those it
// does hold).
func (db *DB) orphans(ctx context.Context, limit int, skip func(ulid.ULID) bool) ([]ulid.ULID, error) {
	rows, err := db.pool.Query(ctx, "SELECT id, owner = $2 FROM "+db.t("sagas")+" WHERE status IN (1, 2) AND wake_ns IS NULL AND NOT parked"+
		" AND (owner IS NULL OR owner = $2 OR "+ownerDead(quote(db.schema), "owner")+") ORDER BY id LIMIT $1", limit, db.node)
	if err != nil {
		return nil, db.read(err, "orphaned sagas")
	}
	var out []ulid.ULID
	var id pgtype.UUID
	var mine *bool
	_, err = pgx.ForEachRow(rows, []any{&id, &mine}, func() error {
		if db.stranded(id.Bytes, mine) && (skip == nil || !skip(id.Bytes)) {
			out = append(out, id.Bytes)
		}
		return nil
	})
	return out, db.read(err, "orphaned sagas")
}

// OutboxLead implements storage.OutboxStore: the lead is a session-level
// advisory lock on the schema's outbox, held on a connection of its own,
// which the store checks every PollInterval. When that connection is lost,
// PostgreSQL lets go of the lock (another process may take it), and the
// returned context ends.
func (db *DB) OutboxLead(ctx context.Context) (context.Context, error) {
	key := lockKey("relay:" + db.schema)
	for {
		conn, err := pgx.ConnectConfig(ctx, db.connCfg.Copy())
		if err == nil {
			if _, err = conn.Exec(ctx, "SELECT pg_advisory_lock($1)", key); err == nil {
				lead, cancel := context.WithCancel(ctx)
				db.bg.Add(1)
				go db.holdLead(lead, cancel, conn)
				return lead, nil
			}
			_ = conn.Close(context.WithoutCancel(ctx))
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		db.log.Warn("postgres: cannot ask for the outbox's lead; asking again", "err", err)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(db.poll): // an in-process pause: the wall clock's
		}
	}
}

// holdLead checks the lead's connection until lead ends or the connection
// is lost, then lets go.
func (db *DB) holdLead(lead context.Context, cancel context.CancelFunc, conn *pgx.Conn) {
	defer db.bg.Done()
	defer cancel()
	defer func() { _ = conn.Close(context.Background()) }() // closing the session releases the lock
	tick := time.NewTicker(db.poll)
	defer tick.Stop()
	for {
		select {
		case <-lead.Done():
			return
		case <-db.ctx.Done(): // the store closes
			return
		case <-tick.C:
		}
		ctx, stop := context.WithTimeout(lead, max(db.poll, time.Second))
		err := conn.Ping(ctx)
		stop()
		if err != nil && lead.Err() == nil {
			db.log.Warn("postgres: lost the connection that holds the outbox's lead; the relay stops until it leads again", "err", err)
			return
		}
	}
}
