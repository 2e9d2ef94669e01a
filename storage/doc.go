// Package storage is where sagas are kept. Store (with SagaStore and
// OutboxStore) is what the engine, the relay and the daemon need of a
// backend, in terms of records: one atomic write per transition, reads, the
// due-time scan, idempotency keys, operators' requests, the outbox, breaker
// state and stored definitions.
//
// DB is the bbolt backend: the saga records, their append-only step logs, a
// status index, a due-time index for durable retries, idempotency keys,
// abort requests, circuit-breaker state, the outbox and definitions in one
// file. It owns that file's format, and so its consistency check (Check),
// backup and compaction.
//
// Every write goes through one committer goroutine that groups the writes
// queued while the previous commit was syncing into one bbolt transaction
// (group commit): a saga transition costs one shared fsync, not one of its
// own. Reads use ordinary bbolt read transactions.
//
// The package knows the records' shapes but not what they mean: it does not
// run steps, compute retries or decide transitions. That is the engine's job.
package storage
