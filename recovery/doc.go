// Package recovery is what an operator and a test use to tell whether a
// sagad database is sound after an incident: Check and CheckFile run the
// bbolt backend's own consistency check (bbolt's page check, then the
// engine's invariants: indexes, due times, idempotency keys, log chains,
// the outbox's counts, abort requests). The check itself lives with the
// format it checks, in package storage/bolt; this package gives it to the
// recovery CLI (sagad check) and to tests.
//
// The engine resumes unfinished sagas when it starts (engine.Run), and
// sagad recover drives a stopped daemon's sagas to an end; neither is here.
package recovery
