package postgres

import (
	"context"
	"fmt"
	"hash/fnv"
	"log/slog"
	neturl "net/url"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/errors"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/oklog/ulid/v2"

	"github.com/sagad/sagad/clock"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
)

// DefaultSchema is the schema sagad's tables live in unless Options.Schema
// names another.
const DefaultSchema = "sagad"

// Options configures Open. The zero value is a sensible default.
type Options struct {
	// Schema holds sagad's tables. Empty: DefaultSchema.
	Schema string
	// MaxConns caps the connections the store opens. Zero: 16. Concurrent
	// sagas share them: their writes go to the committer, one connection.
	MaxConns int32
	// MaxBatch caps the transitions grouped into one commit. Zero: 1024.
	MaxBatch int
	// Committers is how many batches of transitions may commit at once,
	// each on its own connection, so that PostgreSQL runs them on several
	// cores. Zero: 2.
	Committers int
	// NoMigrate makes Open check the schema instead of applying missing
	// migrations: a schema that lacks some is refused (run Migrate, or
	// sagad migrate, first).
	NoMigrate bool
	// Node names this process in the claims it holds (see
	// storage.SagaStore). Empty: the host name, the process id and a
	// random suffix. Two processes must never share one.
	Node string
	// LeaseTTL is how long a claim lasts unless renewed; the store renews
	// its claims every third of it. Another process takes a dead one's
	// sagas over once their leases lapse, when it next polls. Zero: 3s.
	LeaseTTL time.Duration
	// PollInterval is how often the store looks for work other processes
	// left without a notification reaching it. Zero: 1s.
	PollInterval time.Duration
	// Clock stamps outbox events' ids. Nil: the wall clock. The commit
	// counters (Stats) measure wall time.
	Clock clock.Clock
	// Logger receives the store's logs (a lost notification connection).
	// Nil: slog.Default().
	Logger *slog.Logger
}

// DB is a storage.Store on PostgreSQL. Its methods are safe for
// concurrent use.
type DB struct {
	pool    *pgxpool.Pool
	schema  string
	sql     *statements
	clock   clock.Clock
	log     *slog.Logger
	max     int
	poll    time.Duration
	channel string // the schema's notification channel

	reqs       chan *request
	ctx        context.Context // ends at Close, once the committers are done
	cancel     context.CancelFunc
	committers sync.WaitGroup
	bg         sync.WaitGroup
	closeOnce  sync.Once
	closed     atomic.Bool
	closeMu    sync.RWMutex // held for reading while a request is queued

	ids eventIDs

	wakeMu   sync.Mutex
	wake     chan struct{} // the relay's
	sagaWake chan struct{} // the engine's scheduler's

	connCfg  *pgx.ConnConfig // for the connections outside the pool
	node     string
	ttl      time.Duration
	claimsMu sync.Mutex
	claims   map[ulid.ULID]int64 // the sagas this process holds, by epoch

	requeues    atomic.Int64
	commits     atomic.Int64
	writes      atomic.Int64
	commitNanos atomic.Int64
}

var _ storage.Store = (*DB)(nil)

// Open connects to the PostgreSQL database at url (a postgres:// URL or a
// key=value connection string; a URL's "schema" parameter, which is
// sagad's, names the schema unless opts does), applies the schema's missing migrations
// (see Options.NoMigrate) and returns a store on it. opts may be nil. A
// schema newer than this package is refused with storage.ErrSchema.
func Open(ctx context.Context, url string, opts *Options) (*DB, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.MaxConns <= 0 {
		o.MaxConns = 16
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = 1024
	}
	if o.Committers <= 0 {
		o.Committers = 2
	}
	if o.LeaseTTL <= 0 {
		o.LeaseTTL = 3 * time.Second
	}
	if o.Node == "" {
		host, _ := os.Hostname()
		o.Node = fmt.Sprintf("%s:%d:%s", host, os.Getpid(), ulid.Make().String()[20:])
	}
	if o.PollInterval <= 0 {
		o.PollInterval = time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	url, o.Schema = target(url, o.Schema)
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, errors.WithHint(errors.Wrap(err, "postgres: parse the database URL"),
			"give a URL such as postgres://user@host:5432/dbname")
	}
	cfg.MaxConns = o.MaxConns
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, errors.Wrap(err, "postgres: connect")
	}
	fail := func(err error) (*DB, error) {
		pool.Close()
		return nil, err
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return fail(errors.WithHint(errors.Wrapf(err, "postgres: connect to %s", redact(cfg.ConnConfig)),
			"is PostgreSQL running and the URL right?"))
	}
	if o.NoMigrate {
		err = checkVersion(ctx, conn.Conn(), o.Schema)
	} else {
		_, err = Migrate(ctx, conn.Conn(), o.Schema)
	}
	conn.Release()
	if err != nil {
		return fail(err)
	}
	bg, cancel := context.WithCancel(context.Background())
	db := &DB{
		pool: pool, schema: o.Schema, sql: newStatements(quote(o.Schema)), clock: clock.Or(o.Clock), log: o.Logger,
		max: o.MaxBatch, poll: o.PollInterval, channel: channel(o.Schema),
		reqs: make(chan *request, o.MaxBatch), ctx: bg, cancel: cancel, wake: make(chan struct{}), sagaWake: make(chan struct{}),
		node: o.Node, ttl: o.LeaseTTL, claims: make(map[ulid.ULID]int64), connCfg: cfg.ConnConfig.Copy(),
	}
	if err := db.readRequeues(ctx); err != nil {
		cancel()
		return fail(err)
	}
	if err := db.heartbeat(ctx); err != nil {
		cancel()
		return fail(errors.Wrap(err, "postgres: write this node's lease"))
	}
	// Event ids go on from the highest stored one, even with a clock that
	// went back: a saga's later event never sorts before its earlier one.
	var top pgtype.UUID
	err = pool.QueryRow(ctx, "SELECT id FROM "+quote(o.Schema)+".outbox ORDER BY id DESC LIMIT 1").Scan(&top)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		cancel()
		return fail(errors.Wrap(err, "postgres: read the outbox's newest id"))
	}
	db.ids.last = top.Bytes
	db.bg.Add(1)
	go db.renew()
	db.committers.Add(o.Committers)
	for range o.Committers {
		go db.committer()
	}
	db.bg.Add(1)
	go db.listen(cfg.ConnConfig.Copy())
	return db, nil
}

// target splits a database URL into what pgx connects to and the schema
// to use: schema, else the URL's "schema" parameter (sagad's, not
// PostgreSQL's, which would take it for a setting), else DefaultSchema.
func target(raw, schema string) (string, string) {
	if u, err := neturl.Parse(raw); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		if q := u.Query(); q.Has("schema") {
			if schema == "" {
				schema = q.Get("schema")
			}
			q.Del("schema")
			u.RawQuery = q.Encode()
			raw = u.String()
		}
	}
	if schema == "" {
		schema = DefaultSchema
	}
	return raw, schema
}

// WithSchema returns the postgres:// URL dbURL with its "schema" parameter
// set: the URL that names a schema for sagad (--db, Open).
func WithSchema(dbURL, schema string) string {
	u, err := neturl.Parse(dbURL)
	if err != nil {
		return dbURL
	}
	q := u.Query()
	q.Set("schema", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

// channel is the schema's notification channel: "sagad." and the schema, or
// a hash of it when that would pass PostgreSQL's 63-byte limit on names.
func channel(schema string) string {
	if len(schema) <= 57 {
		return "sagad." + schema
	}
	h := fnv.New64a()
	h.Write([]byte(schema))
	return fmt.Sprintf("sagad.%x", h.Sum64())
}

// checkVersion refuses a schema that is not at this package's version.
func checkVersion(ctx context.Context, conn *pgx.Conn, schema string) error {
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", quote(schema)+".schema_migrations").Scan(&exists); err != nil {
		return errors.Wrapf(err, "postgres: read schema %s", schema)
	}
	have := 0
	if exists {
		var err error
		if have, err = version(ctx, conn, schema); err != nil {
			return err
		}
	}
	switch know := SchemaVersion(); {
	case have > know:
		return newerSchema(schema, have, know)
	case have < know:
		return errors.WithHint(errors.Wrapf(storage.ErrSchema, "postgres: schema %s is at version %d, this sagad needs %d", schema, have, know),
			"apply the migrations: sagad migrate --db URL")
	}
	return nil
}

func redact(c *pgx.ConnConfig) string {
	return c.User + "@" + c.Host + "/" + c.Database
}

// Close stops the committer (queued writes are committed first) and closes
// the connections.
func (db *DB) Close() error {
	db.closeOnce.Do(func() {
		db.closeMu.Lock()
		db.closed.Store(true)
		close(db.reqs)
		db.closeMu.Unlock()
		db.committers.Wait() // they commit what was queued
		db.cancel()
		db.bg.Wait()
		db.releaseAll()
		db.pool.Close()
	})
	return nil
}

// Stats implements storage.Store. PagesWritten stays zero: PostgreSQL
// keeps that count.
func (db *DB) Stats() storage.Stats {
	return storage.Stats{Commits: db.commits.Load(), Writes: db.writes.Load(), CommitTime: time.Duration(db.commitNanos.Load())}
}

// Schema returns the schema the store uses.
func (db *DB) Schema() string { return db.schema }

// Pool returns the store's connection pool, for an application that runs
// its own queries on the same database.
func (db *DB) Pool() *pgxpool.Pool { return db.pool }

// statusCodes are the stored status codes, as the bbolt backend numbers
// them.
var statusCodes = map[saga.Status]int16{
	saga.StatusRunning:      1,
	saga.StatusCompensating: 2,
	saga.StatusCompleted:    3,
	saga.StatusCompensated:  4,
	saga.StatusFailed:       5,
	saga.StatusResolved:     6,
	saga.StatusPaused:       7,
}

var statusOf = func() map[int16]saga.Status {
	m := make(map[int16]saga.Status, len(statusCodes))
	for s, c := range statusCodes {
		m[c] = s
	}
	return m
}()

var outboxCodes = map[storage.OutboxStatus]int16{storage.OutboxNew: 1, storage.OutboxProduced: 2, storage.OutboxNotProduced: 3}

var outboxStatusOf = map[int16]storage.OutboxStatus{1: storage.OutboxNew, 2: storage.OutboxProduced, 3: storage.OutboxNotProduced}

// unixNano is storage.UnixNano: instants saturate at what can be stored.
func unixNano(t time.Time) int64 { return storage.UnixNano(t) }

// instant is a recorded time as stored: the zero time as 0, which
// nanoTime reads back as the zero time.
func instant(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return unixNano(t)
}

// idFloor is the lowest id of a ULID made at t or later: every id below it
// was made before t.
func idFloor(t time.Time) pgtype.UUID {
	var id ulid.ULID
	if err := id.SetTime(ulid.Timestamp(t)); err != nil {
		// Past ULIDs' range: every id is below the highest.
		return uuid(ulid.ULID{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	}
	return uuid(id)
}

// nanoTime is a stored instant; 0 is the zero time.
func nanoTime(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// orDefault is a limit, 1000 when it is zero or less.
func orDefault(limit int) int {
	if limit <= 0 {
		return 1000
	}
	return limit
}
