// Package storage keeps sagas in a bbolt file: the saga records, their
// append-only step logs, a status index, a due-time index for durable retries,
// idempotency keys, abort requests and circuit-breaker state.
//
// Every write goes through one committer goroutine that groups the writes
// queued while the previous commit was syncing into one bbolt transaction
// (group commit): a saga transition costs one shared fsync, not one of its
// own. Reads use ordinary bbolt read transactions.
//
// The package knows the records' shapes but not what they mean: it does not
// run steps, compute retries or decide transitions. That is the engine's job.
package storage
