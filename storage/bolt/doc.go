// Package bolt is sagad's bbolt backend: a storage.Store in one file that
// holds the saga records, their append-only step logs, a status index, a
// due-time index for durable retries, idempotency keys, abort requests,
// circuit-breaker state, the outbox and stored definitions. It owns that
// file's format, and so its consistency check (DB.Check, CheckFile), backup
// (DB.Backup) and compaction (DB.CompactTo).
//
// Every write goes through one committer goroutine that groups the writes
// queued while the previous commit was syncing into one bbolt transaction
// (group commit): a saga transition costs one shared fsync, not one of its
// own. Reads use ordinary bbolt read transactions. One process opens a
// file at a time (ErrLocked otherwise).
//
// DB also offers the transactions its methods are built on (View, Update
// and Tx), for tools and tests that read or write records directly.
package bolt
