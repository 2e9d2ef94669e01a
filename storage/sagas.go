package storage

import (
	"context"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/sagad/sagad/saga"
)

// SagaStore is what the engine needs to keep sagas: one atomic write per
// transition, reads, the due-time scan, claims and the operators'
// requests.
//
// Claims let several processes share a store: a process drives a saga only
// while it holds the saga's claim, a lease the store renews while the
// process lives and lets go of when the saga no longer needs a driver. A
// store that one process uses (bbolt's) grants every claim.
type SagaStore interface {
	// SagaCreate writes a new saga with its first log entries and events,
	// and claims it for this process (see SagaClaim). If the saga's
	// idempotency key already names a saga, it writes nothing and returns
	// that saga's id.
	SagaCreate(ctx context.Context, t *Transition) (existing ulid.ULID, err error)
	// SagaCommit writes one transition of a saga: its record, the log
	// entries and outbox events it adds and the index changes they imply,
	// all or nothing, durable when it returns, and sets t.Aborted. It keeps
	// no reference to t (SagaCreate neither): the caller may reuse it.
	//
	// The write is fenced: it fails with ErrNotOwner, writing nothing, when
	// another process holds the saga's claim, even if this one held it
	// once. A commit that finishes the saga, makes it wait for a later
	// attempt (WakeAt set) or parks it lets go of the claim.
	SagaCommit(ctx context.Context, t *Transition) error
	// SagaClaim makes this process the saga's driver and reads it in one
	// go: the record, and whether an abort request is stored for it. A saga
	// another live process holds is ErrClaimed; a missing one ErrNotFound.
	SagaClaim(ctx context.Context, id ulid.ULID) (*Saga, bool, error)
	// SagaRelease lets go of the saga's claim, if this process holds it.
	SagaRelease(ctx context.Context, id ulid.ULID) error
	// SagaWake returns a channel closed once other processes may have left
	// work for this one (a saga due, a driver gone); take a new one after
	// each wake-up. Nil for a store that one process uses.
	SagaWake() <-chan struct{}
	// SagaGet reads a saga; a missing one is ErrNotFound.
	SagaGet(ctx context.Context, id ulid.ULID) (*Saga, error)
	// SagaStatus reads a saga's status only; a missing one is ErrNotFound.
	SagaStatus(ctx context.Context, id ulid.ULID) (saga.Status, error)
	// SagaList lists sagas newest first, and says whether more match.
	SagaList(ctx context.Context, o ListOptions) ([]*Saga, bool, error)
	// SagaUnfinished calls fn with every running or compensating saga's
	// id, status and wake time (zero: not waiting), until fn returns false.
	SagaUnfinished(ctx context.Context, fn func(id ulid.ULID, st saga.Status, wake time.Time) bool) error
	// SagaParked returns the unfinished sagas of a definition, parked
	// under one of the fingerprints.
	SagaParked(ctx context.Context, definition string, fingerprints ...string) ([]ulid.ULID, error)
	// SagaFinishedBefore returns up to limit sagas in the final status st
	// last updated before the given time, oldest first.
	SagaFinishedBefore(ctx context.Context, st saga.Status, before time.Time, limit int) ([]ulid.ULID, error)
	// SagaDelete deletes sagas with their logs, index entries and
	// idempotency keys, and returns how many it found.
	SagaDelete(ctx context.Context, ids []ulid.ULID) (int, error)
	// SagaDue returns up to limit sagas due at now, earliest first, skipping
	// those skip reports (nil: none), and the next wake time after now
	// (zero: none). Sagas another live process holds are not due; an
	// unfinished saga whose driver's claim lapsed (its process died) is.
	SagaDue(ctx context.Context, now time.Time, limit int, skip func(ulid.ULID) bool) (due []ulid.ULID, next time.Time, err error)
	// LogList returns a saga's log in order; a missing saga is ErrNotFound.
	LogList(ctx context.Context, id ulid.ULID) ([]LogEntry, error)
	// IdemGet returns the saga an idempotency key names.
	IdemGet(ctx context.Context, key string) (ulid.ULID, bool, error)
	// AbortPut records an abort request for a saga, in one transaction with
	// check, which sees the saga as stored and may refuse (its error is
	// returned and nothing is written) or return ErrNoWrite (nothing is
	// written and AbortPut returns nil). A missing saga is ErrNotFound.
	AbortPut(ctx context.Context, id ulid.ULID, at time.Time, check func(*Saga) error) error
	// AbortGet reports whether a saga has an abort request.
	AbortGet(ctx context.Context, id ulid.ULID) (bool, error)
	// SagaCounts returns how many sagas are in each status.
	SagaCounts(ctx context.Context) (map[saga.Status]int, error)
}

// Transition is one atomic change of a saga.
type Transition struct {
	// Saga is the record as it is after the change.
	Saga *Saga
	// Log holds the entries the change appends, their Seq set (the last is
	// Saga.LogSeq).
	Log []LogEntry
	// Events are the outbox events the change emits.
	Events []OutboxEvent
	// ClearAbort deletes the saga's abort request: the change acted on it.
	ClearAbort bool
	// Tx, when set, is a transaction a step opened on the store and
	// enlisted (saga.Call.Enlist): the change is written in it, and it is
	// committed, or rolled back if the write fails. A store that cannot
	// write in such a transaction fails the commit, and rolls it back.
	Tx saga.Tx
	// Aborted is set by SagaCommit: an abort request another process wrote
	// is stored for the saga, and reaches its driver so. A store that one
	// process uses leaves it false: that process's requests reach its
	// drivers directly.
	Aborted bool
}

// ListOptions filters SagaList.
type ListOptions struct {
	// Status keeps only sagas in this status (read through the status index).
	Status saga.Status
	// Definition keeps only sagas of this definition.
	Definition string
	// Before starts the listing after this id (exclusive): pass the last id of
	// the previous page. Zero starts at the newest saga.
	Before ulid.ULID
	// Limit caps the result. Zero: 100.
	Limit int
}

// TxAcceptor is a store that can write a transition in a transaction a
// step enlisted (saga.Call.Enlist, Transition.Tx). The engine fails for
// good an attempt whose transaction the store does not accept.
type TxAcceptor interface {
	AcceptsTx(tx saga.Tx) bool
}
