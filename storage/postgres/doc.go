// Package postgres is sagad's PostgreSQL backend: a storage.Store in one
// schema of a PostgreSQL database (default "sagad"), so that sagad can
// share a database with the application it serves.
//
// The schema comes from numbered SQL migrations embedded in the package and
// applied by Open (or Migrate) under an advisory lock; a schema newer than
// the package is refused with storage.ErrSchema.
//
// Writes of concurrent sagas are grouped, as the bbolt backend groups them:
// one committer sends every transition queued while the previous commit
// ran as one pipelined batch, which PostgreSQL runs as one implicit
// transaction (one round trip, one WAL flush). Each transition is one
// statement, so it is all or nothing on its own; a batch that fails is sent
// again one transition at a time, so that one bad transition fails alone.
//
// Other processes on the same schema wake this one through LISTEN/NOTIFY,
// with a poll every second that catches a lost notification.
package postgres
