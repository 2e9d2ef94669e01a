// Package engine runs sagas durably on a storage.Store: a bbolt file with
// Open, any backend (storage/bolt, storage/postgres) with New.
//
// An Engine is opened on a store, given definitions (Register), and run
// (Run). Start records a saga and returns; the engine drives it forward,
// each step once those it waits for have succeeded (saga.Step.After), and,
// when a step fails for good, compensates the steps that succeeded in
// reverse order. Wait returns a saga once it has finished.
//
// # Guarantees
//
//   - Every state change is committed before the side effect it leads to:
//     an attempt is recorded as started before its function runs, and its
//     outcome is recorded (together with the start of the next attempt, in
//     the same write) before anything else happens.
//   - Each transition is one atomic write of the store, and concurrent
//     sagas share commits: the backends group the writes queued while the
//     previous commit was syncing (group commit).
//   - Delivery to participants is at-least-once. An attempt that was in
//     flight when the process died is run again after restart, with the
//     same Call.IdempotencyKey and attempt number. Step functions must be
//     idempotent for their key.
//   - Retries are durable: the attempt count and the next attempt's time are
//     stored. A restart neither forgets a backoff nor retries early, and a
//     saga waiting for its next attempt holds no goroutine: one scheduler
//     sleeps until the earliest stored wake time.
//   - A saga is only ever driven by the definition version (fingerprint) it
//     started with. If that version is not registered, the saga is parked,
//     untouched, until it is.
//   - A saga that cannot be compensated (a compensation failed for good, or
//     a step after the pivot did) ends failed and stays listed until an
//     operator retries it (Retry) or deals with it by hand.
//
// The engine exposes hooks for metrics (Hooks) and does not import a metrics
// library. It traces sagas with OpenTelemetry (Options.TracerProvider): a
// saga is a trace, a span for the saga and a child span per attempt, which
// the step function runs in; the saga's trace context is stored with it,
// so a saga continues its trace after a restart. It knows nothing about HTTP or AMQP: the transport package and
// cmd/sagad build on it.
package engine
