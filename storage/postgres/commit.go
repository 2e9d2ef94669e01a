package postgres

import (
	"context"
	crand "crypto/rand"
	"encoding/json"
	"strings"
	"sync"
	"time"

	"github.com/cockroachdb/errors"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/oklog/ulid/v2"

	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
)

// statements are the store's SQL for one schema.
type statements struct {
	create, commit string
}

// transitionSQL writes one transition as one statement: the saga row
// (inserted, or updated under the claim this process holds), its log
// entries and its outbox events, and the abort request it acted on, all
// conditional on the saga row's write, so that the transition is all or
// nothing within a shared batch. It returns the saga's id, whether this
// statement wrote it, whether an abort request is stored for it, and the
// epoch of the claim.
//
// Parameters beyond the row's: $23 the commit lets go of the claim, $24
// this process's name, $25 the epoch it holds the saga with (0: none; the
// commit then claims a saga no live process holds).
func transitionSQL(s string, create bool) string {
	var b strings.Builder
	if create {
		b.WriteString(`WITH s AS (
	INSERT INTO ` + s + `.sagas (id, definition, fingerprint, status, wake_ns, idempotency_key, parked, updated_ns, log_seq, record, owner, epoch)
	SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, CASE WHEN $23 THEN NULL ELSE $24::text END, 1
	WHERE $25::bigint IS NOT NULL -- a new saga has no earlier claim: $25 is only typed
	ON CONFLICT DO NOTHING`)
	} else {
		// A saga's definition and idempotency key never change: a
		// transition that says otherwise writes nothing.
		b.WriteString(`WITH s AS (
	UPDATE ` + s + `.sagas AS t SET fingerprint = $3, status = $4, wake_ns = $5, parked = $7, updated_ns = $8, log_seq = $9, record = $10,
		owner = CASE WHEN $23 THEN NULL ELSE $24::text END,
		epoch = CASE WHEN $25 = 0 AND t.owner IS DISTINCT FROM $24::text THEN t.epoch + 1 ELSE t.epoch END
	WHERE t.id = $1 AND t.definition = $2 AND t.idempotency_key IS NOT DISTINCT FROM $6::text
		AND CASE WHEN $25 > 0 THEN t.owner = $24::text AND t.epoch = $25
			ELSE t.owner IS NULL OR t.owner = $24::text OR ` + ownerDead(s, "t.owner") + ` END`)
	}
	b.WriteString(`
	RETURNING id, epoch
), l AS (
	INSERT INTO ` + s + `.saga_log (saga_id, seq, entry)
	SELECT s.id, u.seq, u.entry FROM s, unnest($11::integer[], $12::bytea[]) AS u(seq, entry)
), e AS (
	INSERT INTO ` + s + `.outbox (id, saga_id, definition, step, name, exchange, routing_key, headers, payload, created_ns)
	SELECT u.id, s.id, u.definition, u.step, u.name, u.exchange, u.routing_key, nullif(u.headers, '')::json, u.payload, u.created_ns
	FROM s, unnest($13::uuid[], $14::text[], $15::text[], $16::text[], $17::text[], $18::text[], $19::text[], $20::bytea[], $21::bigint[])
		WITH ORDINALITY AS u(id, definition, step, name, exchange, routing_key, headers, payload, created_ns, ord)
	ORDER BY u.ord
), a AS (
	DELETE FROM ` + s + `.aborts WHERE $22::boolean AND saga_id IN (SELECT id FROM s)
)
SELECT s.id, true, NOT $22 AND EXISTS (SELECT 1 FROM ` + s + `.aborts WHERE saga_id = s.id), s.epoch FROM s`)
	if create {
		// The saga that holds the key, when it is not this one. A holder
		// that committed after this statement began is not seen here: the
		// caller then reads it once the batch has committed.
		b.WriteString(`
UNION ALL
SELECT t.id, false, false, 0::bigint FROM ` + s + `.sagas t WHERE $6::text IS NOT NULL AND t.idempotency_key = $6 AND t.id <> $1 AND NOT EXISTS (SELECT 1 FROM s)`)
	}
	return b.String()
}

func newStatements(schema string) *statements {
	return &statements{create: transitionSQL(schema, true), commit: transitionSQL(schema, false)}
}

// request is a transition queued for the committer.
type request struct {
	create  bool
	id      ulid.ULID
	key     string
	args    []any
	ids     []pgtype.UUID // the events' ids, in args; the committer fills them
	events  int
	release bool // the commit lets go of the claim
	due     bool // the commit lets go of a saga that is due now
	// Set by the committer.
	err      error
	existing ulid.ULID
	aborted  bool
	epoch    int64
	norow    bool // a commit that found no row to write
	done     chan struct{}
}

// encode turns a transition into a request; the committer assigns the
// events' ids.
func (db *DB) encode(t *storage.Transition, create bool) (*request, error) {
	s := t.Saga
	code, ok := statusCodes[s.Status]
	if !ok {
		return nil, errors.Newf("postgres: saga %s: unknown status %q", s.ID, s.Status)
	}
	rec, err := json.Marshal(s)
	if err != nil {
		return nil, errors.Wrapf(err, "postgres: saga %s: encode", s.ID)
	}
	var wake *int64
	if !s.WakeAt.IsZero() {
		w := max(unixNano(s.WakeAt), 1) // a wake-up before 1970 is due
		wake = &w
	}
	var key *string
	if s.IdempotencyKey != "" {
		key = &s.IdempotencyKey
	}
	seqs := make([]int32, len(t.Log))
	entries := make([][]byte, len(t.Log))
	for i := range t.Log {
		b, err := json.Marshal(&t.Log[i])
		if err != nil {
			return nil, errors.Wrapf(err, "postgres: saga %s: encode log entry", s.ID)
		}
		seqs[i], entries[i] = int32(t.Log[i].Seq), b
	}
	n := len(t.Events)
	ids := make([]pgtype.UUID, n)
	defs, stepNames, names, exchanges, keys, headers := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	payloads, created := make([][]byte, n), make([]int64, n)
	for i := range t.Events {
		ev := &t.Events[i]
		defs[i], stepNames[i], names[i], exchanges[i], keys[i] = ev.Definition, ev.Step, ev.Name, ev.Exchange, ev.RoutingKey
		if len(ev.Headers) > 0 {
			h, err := json.Marshal(ev.Headers)
			if err != nil {
				return nil, errors.Wrapf(err, "postgres: saga %s: encode event headers", s.ID)
			}
			headers[i] = string(h)
		}
		payloads[i] = ev.Payload
		if payloads[i] == nil {
			payloads[i] = []byte{}
		}
		created[i] = instant(ev.CreatedAt)
	}
	release := releases(s)
	args := []any{
		pgtype.UUID{Bytes: s.ID, Valid: true}, s.Definition, s.Fingerprint, code, wake, key, s.Parked != "",
		instant(s.UpdatedAt), int32(s.LogSeq), rec,
		seqs, entries,
		ids, defs, stepNames, names, exchanges, keys, headers, payloads, created,
		t.ClearAbort,
		release, db.node, db.claimed(s.ID),
	}
	// A saga let go that is due now: another node may take it at once.
	due := release && (s.Status == saga.StatusRunning || s.Status == saga.StatusCompensating) && s.Parked == "" &&
		!s.WakeAt.After(db.clock.Now())
	return &request{create: create, id: s.ID, key: s.IdempotencyKey, args: args, ids: ids, events: n, release: release, due: due,
		done: make(chan struct{})}, nil
}

// submit queues r for the committer and waits for its commit.
func (db *DB) submit(r *request) error {
	db.closeMu.RLock()
	if db.closed.Load() {
		db.closeMu.RUnlock()
		return errors.Wrap(storage.ErrClosed, "postgres")
	}
	db.reqs <- r
	db.closeMu.RUnlock()
	<-r.done
	return r.err
}

// eventIDs assigns outbox ids (the messages' ids), in increasing order
// within this process.
type eventIDs struct {
	mu      sync.Mutex
	entropy *ulid.MonotonicEntropy
	last    ulid.ULID
}

// assign gives the batch's events their ids.
func (g *eventIDs) assign(now time.Time, batch []*request) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, r := range batch {
		g.fillLocked(now, r.ids)
	}
}

// fill gives ids fresh event ids, in order.
func (g *eventIDs) fill(now time.Time, ids []pgtype.UUID) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.fillLocked(now, ids)
}

func (g *eventIDs) fillLocked(now time.Time, ids []pgtype.UUID) {
	for i := range ids {
		ids[i] = pgtype.UUID{Bytes: g.next(now), Valid: true}
	}
}

func (g *eventIDs) next(now time.Time) ulid.ULID {
	if g.entropy == nil {
		g.entropy = ulid.Monotonic(crand.Reader, 0)
	}
	ms := max(ulid.Timestamp(now), g.last.Time())
	id, err := ulid.New(ms, g.entropy)
	if err != nil { // the entropy ran out within one millisecond
		id, err = ulid.New(ms+1, g.entropy)
		if err != nil {
			panic(err)
		}
	}
	g.last = id
	return id
}

// committer commits queued transitions: everything queued while the
// previous batch ran goes in the next one. Several committers send batches
// at once, each on its own connection.
func (db *DB) committer() {
	defer db.committers.Done()
	batch := make([]*request, 0, db.max)
	for r := range db.reqs {
		batch = append(batch[:0], r)
	fill:
		for len(batch) < db.max {
			select {
			case r, ok := <-db.reqs:
				if !ok {
					break fill
				}
				batch = append(batch, r)
			default:
				break fill
			}
		}
		db.commit(batch)
	}
}

// commit sends batch as one pipelined batch, one implicit transaction. If
// PostgreSQL refused it (an error of the server: the transaction rolled
// back), each transition is sent again on its own, so that one bad
// transition fails alone. Any other failure (a lost connection, a timeout)
// leaves the outcome unknown: each request fails, and the engine reloads
// what was stored.
func (db *DB) commit(batch []*request) {
	t0 := time.Now()
	db.ids.assign(db.clock.Now(), batch)
	err := db.send(batch)
	var refused *pgconn.PgError
	if err != nil && len(batch) > 1 && errors.As(err, &refused) {
		for _, r := range batch {
			r.err = db.send([]*request{r})
		}
	} else {
		for _, r := range batch {
			r.err = err
		}
	}
	db.commits.Add(1)
	db.writes.Add(int64(len(batch)))
	db.commitNanos.Add(int64(time.Since(t0)))
	woke := false
	for _, r := range batch {
		switch {
		case r.err != nil:
		case r.norow || r.release || r.existing != (ulid.ULID{}):
			db.setClaim(r.id, 0)
		default:
			db.setClaim(r.id, r.epoch)
		}
		if r.err == nil && r.events > 0 && !woke {
			db.wakeUp()
			woke = true
		}
		close(r.done)
	}
}

// send runs the requests in one batch and sets each one's outcome; the
// error is the batch's.
func (db *DB) send(reqs []*request) error {
	b := &pgx.Batch{}
	notify, due := false, false
	for _, r := range reqs {
		q := db.sql.commit
		if r.create {
			q = db.sql.create
		}
		b.Queue(q, r.args...)
		notify = notify || r.events > 0
		due = due || r.due
	}
	if notify {
		b.Queue("SELECT pg_notify($1, 'outbox')", db.channel)
	}
	if due {
		b.Queue("SELECT pg_notify($1, 'sagas')", db.channel)
	}
	ctx, cancel := context.WithTimeout(db.ctx, 30*time.Second)
	defer cancel()
	br := db.pool.SendBatch(ctx, b)
	var first error
	for _, r := range reqs {
		r.existing, r.aborted, r.epoch, r.norow = ulid.ULID{}, false, 0, false
		rows, err := br.Query()
		if err == nil {
			found := false
			for rows.Next() {
				var id pgtype.UUID
				var mine bool
				if err = rows.Scan(&id, &mine, &r.aborted, &r.epoch); err != nil {
					break
				}
				found = true
				if !mine {
					r.existing = ulid.ULID(id.Bytes)
				}
			}
			rows.Close()
			if err == nil {
				err = rows.Err()
			}
			if err == nil && !found {
				if r.create {
					r.existing = pendingHolder
				} else {
					r.norow = true // the saga is gone, or another process holds it
				}
			}
		}
		if err != nil && first == nil {
			first = db.wrap(err, r.id)
		}
	}
	for _, queued := range []bool{notify, due} { // the notifications queued above
		if !queued {
			continue
		}
		if _, err := br.Exec(); err != nil && first == nil {
			first = db.wrap(err, ulid.ULID{})
		}
	}
	if err := br.Close(); err != nil && first == nil {
		first = db.wrap(err, ulid.ULID{})
	}
	return first
}

// pendingHolder marks a create whose key is held by a saga its statement
// could not see; SagaCreate reads the holder once the batch committed.
var pendingHolder = ulid.ULID{0xff}

func (db *DB) wrap(err error, id ulid.ULID) error {
	if db.ctx.Err() != nil {
		return errors.Wrap(storage.ErrClosed, "postgres")
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "23505" && pe.ConstraintName == "sagas_pkey" {
		return errors.Newf("postgres: saga %s already exists", id)
	}
	if id != (ulid.ULID{}) {
		return errors.Wrapf(err, "postgres: saga %s: commit", id)
	}
	return errors.Wrap(err, "postgres: commit")
}

// wakeUp closes the current wake channel: the relay looks again.
func (db *DB) wakeUp() {
	db.wakeMu.Lock()
	close(db.wake)
	db.wake = make(chan struct{})
	db.wakeMu.Unlock()
}

// OutboxWake implements storage.OutboxStore: the channel closes after this
// process commits events, when another process's notification arrives,
// and at least every PollInterval.
func (db *DB) OutboxWake() <-chan struct{} {
	db.wakeMu.Lock()
	defer db.wakeMu.Unlock()
	return db.wake
}

// OutboxRequeues implements storage.OutboxStore: the schema's count of
// re-queues and discards, as this process last read or made it.
func (db *DB) OutboxRequeues() int64 { return db.requeues.Load() }

// readRequeues reads the stored re-queue count.
func (db *DB) readRequeues(ctx context.Context) error {
	var n int64
	err := db.pool.QueryRow(ctx, "SELECT value FROM "+quote(db.schema)+".counters WHERE name = 'outbox_requeues'").Scan(&n)
	if err != nil {
		return errors.Wrap(err, "postgres: read the outbox's re-queue count")
	}
	for {
		old := db.requeues.Load()
		if n <= old || db.requeues.CompareAndSwap(old, n) {
			return nil
		}
	}
}

// listen wakes this process when another one notifies the schema's
// channel, and polls every PollInterval in case a notification was lost
// (its connection dropped, or the process missed it while reconnecting).
func (db *DB) listen(cfg *pgx.ConnConfig) {
	defer db.bg.Done()
	notes := make(chan string, 16)
	db.bg.Add(1)
	go func() {
		defer db.bg.Done()
		for db.ctx.Err() == nil {
			err := db.listenOnce(cfg, notes)
			if db.ctx.Err() != nil {
				return
			}
			db.log.Warn("postgres: lost the notification connection; polling until it is back", "err", err)
			select {
			case <-db.ctx.Done():
				return
			case <-time.After(db.poll):
			}
		}
	}()
	tick := time.NewTicker(db.poll)
	defer tick.Stop()
	for {
		requeue, sagas := false, false
		select {
		case <-db.ctx.Done():
			return
		case note := <-notes:
			// "outbox": events were written; "requeue": an operator
			// re-queued or discarded some; "sagas": a saga no node
			// drives is due now.
			requeue, sagas = note == "requeue", note == "sagas"
		case <-tick.C:
			requeue, sagas = true, true
		}
		if requeue {
			ctx, cancel := context.WithTimeout(db.ctx, 5*time.Second)
			if err := db.readRequeues(ctx); err != nil && db.ctx.Err() == nil {
				db.log.Debug("postgres: poll", "err", err)
			}
			cancel()
		}
		db.wakeUp()
		if sagas {
			db.wakeSagas()
		}
	}
}

// wakeSagas closes the scheduler's wake channel.
func (db *DB) wakeSagas() {
	db.wakeMu.Lock()
	close(db.sagaWake)
	db.sagaWake = make(chan struct{})
	db.wakeMu.Unlock()
}

func (db *DB) listenOnce(cfg *pgx.ConnConfig, notes chan<- string) error {
	conn, err := pgx.ConnectConfig(db.ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(db.ctx))
	if _, err := conn.Exec(db.ctx, "LISTEN "+pgx.Identifier{db.channel}.Sanitize()); err != nil {
		return err
	}
	for {
		n, err := conn.WaitForNotification(db.ctx)
		if err != nil {
			return err
		}
		select {
		case notes <- n.Payload:
		default: // the poll catches what is dropped
		}
	}
}

// commitIn writes r in a step's own transaction (saga.Call.Enlist) and
// commits it, or rolls it back: the step's writes and its success are
// durable together or not at all. It takes no part in the committers'
// batches.
func (db *DB) commitIn(ctx context.Context, stx saga.Tx, r *request) error {
	tx, ok := stx.(pgx.Tx)
	if !ok {
		_ = stx.Rollback(ctx)
		return errors.Newf("postgres: saga %s: a step enlisted a %T, not a pgx.Tx of this database", r.id, stx)
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	fail := func(err error) error {
		_ = tx.Rollback(ctx)
		return db.wrap(err, r.id)
	}
	db.ids.assign(db.clock.Now(), []*request{r})
	found := false
	rows, err := tx.Query(ctx, db.sql.commit, r.args...)
	if err != nil {
		return fail(err)
	}
	for rows.Next() {
		var id pgtype.UUID
		var mine bool
		if err := rows.Scan(&id, &mine, &r.aborted, &r.epoch); err != nil {
			rows.Close()
			return fail(err)
		}
		found = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fail(err)
	}
	if !found {
		_ = tx.Rollback(ctx)
		r.norow = true
		db.setClaim(r.id, 0)
		return nil
	}
	if r.events > 0 {
		if _, err := tx.Exec(ctx, "SELECT pg_notify($1, 'outbox')", db.channel); err != nil {
			return fail(err)
		}
	}
	if r.due {
		if _, err := tx.Exec(ctx, "SELECT pg_notify($1, 'sagas')", db.channel); err != nil {
			return fail(err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return db.wrap(err, r.id)
	}
	db.commits.Add(1)
	db.writes.Add(1)
	if r.release {
		db.setClaim(r.id, 0)
	} else {
		db.setClaim(r.id, r.epoch)
	}
	if r.events > 0 {
		db.wakeUp()
	}
	return nil
}
