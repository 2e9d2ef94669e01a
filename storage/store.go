package storage

import (
	"context"
	"time"

	"github.com/oklog/ulid/v2"
)

// Store is a sagad backend: everything the engine, the relay and the
// daemon keep, in terms of records. Each method is its own transaction.
// storage/bolt implements it on bbolt, storage/postgres on PostgreSQL;
// storagetest checks an implementation.
//
// One engine drives a store's sagas: its in-process holds (a driver's claim,
// an abort's hold) are what keep two writers of one saga apart. Limits of
// zero or less mean 1000.
type Store interface {
	SagaStore
	OutboxStore
	// BreakerGet returns a circuit breaker's stored state (nil: none).
	BreakerGet(ctx context.Context, name string) ([]byte, error)
	// BreakerPut stores a circuit breaker's state.
	BreakerPut(ctx context.Context, name string, state []byte) error
	// DefinitionPut stores a version of a declarative definition, makes it
	// the latest (even when it was stored before), and reports whether it
	// was new.
	DefinitionPut(ctx context.Context, name, version string, spec []byte) (bool, error)
	// DefinitionGet reads one stored version; version "" reads the latest
	// (the one put last).
	DefinitionGet(ctx context.Context, name, version string) (*StoredDefinition, bool, error)
	// DefinitionList returns every stored version, each name's latest last.
	DefinitionList(ctx context.Context) ([]*StoredDefinition, error)
	// Stats counts the store's writes since it was opened.
	Stats() Stats
	// Close releases the store.
	Close() error
}

// OutboxStore is the outbox side of a backend, for the engine's operators'
// calls and the relay.
//
// The relay reads batches of new events in id order (OutboxScanNew),
// publishes each saga's events in that order, one saga's at a time, and
// records the outcomes (OutboxMark). One relay publishes a store's outbox
// at a time (OutboxLead): its claims on the events it read are in its own
// memory.
type OutboxStore interface {
	// OutboxStats returns the events by status and the creation times of
	// the oldest new and not_produced ones (zero: none).
	OutboxStats(ctx context.Context) (counts OutboxCounts, oldestNew, oldestNotProduced time.Time, err error)
	// OutboxList lists events in one status, oldest first.
	OutboxList(ctx context.Context, o OutboxListOptions) ([]*OutboxEvent, bool, error)
	// OutboxGet reads one event; a missing one is ErrEventNotFound.
	OutboxGet(ctx context.Context, id ulid.ULID) (*OutboxEvent, error)
	// OutboxRequeue makes an event that is not new new again, with a fresh
	// attempt budget; it reports false for an event already new, and
	// ErrEventNotFound for an unknown one.
	OutboxRequeue(ctx context.Context, id ulid.ULID) (bool, error)
	// OutboxRequeueAll re-queues up to limit not_produced events and
	// returns how many.
	OutboxRequeueAll(ctx context.Context, limit int) (int, error)
	// OutboxDiscard deletes an event that is not new; a new one is
	// ErrEventPending, an unknown one ErrEventNotFound.
	OutboxDiscard(ctx context.Context, id ulid.ULID) error
	// OutboxPrune deletes up to limit events produced before the given time
	// and says whether more remain.
	OutboxPrune(ctx context.Context, before time.Time, limit int) (int, bool, error)

	// The relay's side.

	// OutboxLead returns once this process leads the outbox: one relay
	// publishes a store's events at a time. The context it returns ends
	// when the lead is lost (or ctx ends); the relay then stops and asks
	// again. A store that one process uses leads at once.
	OutboxLead(ctx context.Context) (context.Context, error)

	// OutboxWake returns a channel closed once events may have been added
	// or re-queued since the call. Take a new one after each wake-up,
	// before reading the outbox. A backend that cannot tell (another
	// process writes) closes it on a timer: the relay then polls.
	OutboxWake() <-chan struct{}
	// OutboxRequeues counts the re-queues and discards of events that were
	// not produced; it grows before OutboxWake's channel closes. The relay
	// reads it to know when a saga parked behind a failed event may go on.
	OutboxRequeues() int64
	// OutboxNotProducedSagas returns the sagas that have a not_produced
	// event: their later events wait.
	OutboxNotProducedSagas(ctx context.Context) ([]ulid.ULID, error)
	// OutboxScanNew calls fn with every new event after the given id, in id
	// order, with its saga and a function that reads the whole event fn was
	// called for (call it only inside fn), until fn returns false. fn runs
	// inside the store's read: it must be quick.
	// Ids must grow in commit order (the bbolt backend assigns them in its
	// single writer): an event committed after a scan must not sort before
	// what the scan saw. A backend that cannot promise that (several
	// processes write it) returns every new event, whatever after is, in an
	// order that keeps each saga's events in the order they were written;
	// the relay skips the events it holds.
	OutboxScanNew(ctx context.Context, after ulid.ULID, fn func(id, saga ulid.ULID, event func() (*OutboxEvent, error)) bool) error
	// OutboxMark records the relay's outcomes in one transaction: events
	// produced, and failed attempts. It returns each failed event's
	// attempts so far, -1 for one that is gone (discarded meanwhile).
	OutboxMark(ctx context.Context, produced []ulid.ULID, failed []OutboxFailure, at time.Time) ([]int, error)
}

// OutboxFailure is a failed attempt to publish an event.
type OutboxFailure struct {
	ID    ulid.ULID
	Error string
	// Final makes the event not_produced: no more attempts.
	Final bool
}

// Stats counts the committer's work since Open.
type Stats struct {
	// Commits is the number of bbolt write transactions committed.
	Commits int64
	// Writes is the number of Update calls they carried; Writes/Commits is
	// the average group size.
	Writes int64
	// CommitTime is the total time spent committing, fsync included.
	CommitTime time.Duration
	// PagesWritten is bbolt's count of page writes since Open, by every
	// write transaction (the committer's, and Open's own), meta pages
	// included; a page with overflow pages counts once.
	// PagesWritten/Commits is what a commit costs the disk.
	PagesWritten int64
}
