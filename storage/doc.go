// Package storage is the seam between sagad and where it keeps sagas. Store
// (with SagaStore and OutboxStore) is what the engine, the relay and the
// daemon need of a backend, in terms of records (Saga, LogEntry,
// OutboxEvent, StoredDefinition): one atomic write per transition
// (Transition), reads, the due-time scan, idempotency keys, operators'
// requests, the outbox, breaker state and stored definitions.
//
// A backend lives in its own package and owns its format: package
// storage/bolt keeps everything in one bbolt file, with group commit.
// Package storage/storagetest is the conformance suite every backend
// passes.
//
// This package knows the records' shapes but not what they mean: it does
// not run steps, compute retries or decide transitions. That is the
// engine's job.
package storage
