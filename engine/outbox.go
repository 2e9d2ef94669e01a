package engine

import (
	"context"
	"time"

	"github.com/cockroachdb/errors"
	"github.com/oklog/ulid/v2"

	"github.com/sagad/sagad/storage"
)

// OutboxOptions configures the transactional outbox. The zero value is a
// sensible default.
type OutboxOptions struct {
	// Retention deletes produced events once they have been produced this
	// long. not_produced events are kept until an operator re-queues or
	// discards them. Zero: 24 hours. Negative: keep produced events.
	Retention time.Duration
}

func (o *OutboxOptions) setDefaults() {
	if o.Retention == 0 {
		o.Retention = 24 * time.Hour
	}
}

// ErrEventNotFound: no outbox event with that id.
var ErrEventNotFound = errors.New("engine: outbox event not found")

// OutboxStats describes the outbox.
type OutboxStats struct {
	// Counts are the events by status.
	Counts storage.OutboxCounts `json:"counts"`
	// OldestNew is when the oldest event not yet produced was created; zero
	// when there is none. Its age is how far the relay is behind.
	OldestNew time.Time `json:"oldest_new,omitzero"`
	// OldestNotProduced is when the oldest not_produced event was created.
	OldestNotProduced time.Time `json:"oldest_not_produced,omitzero"`
}

// OutboxStats returns the outbox's depth and age. It reads two counters and
// two index keys: cheap enough for every metrics scrape.
func (e *Engine) OutboxStats(ctx context.Context) (OutboxStats, error) {
	var st OutboxStats
	var err error
	st.Counts, st.OldestNew, st.OldestNotProduced, err = e.store.OutboxStats(ctx)
	return st, errors.Wrap(err, "engine: outbox stats")
}

// OutboxListOptions filters OutboxList.
type OutboxListOptions struct {
	// Status keeps events in this status. Empty: new.
	Status storage.OutboxStatus
	// Cursor continues a listing: pass the previous page's NextCursor.
	Cursor string
	// Limit caps the page. Zero: 100; at most 1000.
	Limit int
}

// OutboxPage is one page of OutboxList.
type OutboxPage struct {
	Events []*storage.OutboxEvent `json:"events"`
	// NextCursor fetches the next page; empty on the last one.
	NextCursor string `json:"next_cursor,omitempty"`
}

// OutboxList lists outbox events in one status, oldest first.
func (e *Engine) OutboxList(ctx context.Context, o OutboxListOptions) (*OutboxPage, error) {
	so := storage.OutboxListOptions{Status: o.Status, Limit: min(o.Limit, 1000)}
	if o.Cursor != "" {
		u, err := outboxID(o.Cursor)
		if err != nil {
			return nil, errors.Wrap(err, "engine: outbox list: cursor")
		}
		so.After = u
	}
	evs, more, err := e.store.OutboxList(ctx, so)
	if err != nil {
		return nil, errors.Wrap(err, "engine: outbox list")
	}
	page := OutboxPage{Events: evs}
	if more && len(evs) > 0 {
		page.NextCursor = evs[len(evs)-1].ID.String()
	}
	if page.Events == nil {
		page.Events = []*storage.OutboxEvent{}
	}
	return &page, nil
}

// outboxID parses an event id.
func outboxID(id string) (ulid.ULID, error) {
	u, err := ulid.ParseStrict(id)
	if err != nil {
		return u, errors.Wrapf(ErrInvalidID, "outbox event %q", id)
	}
	return u, nil
}

// notFound turns storage's not-found into the engine's.
func eventNotFound(err error, id string) error {
	if errors.Is(err, storage.ErrEventNotFound) {
		return errors.Wrapf(ErrEventNotFound, "engine: outbox event %s", id)
	}
	return errors.Wrapf(err, "engine: outbox event %s", id)
}

// OutboxGet returns one outbox event.
func (e *Engine) OutboxGet(ctx context.Context, id string) (*storage.OutboxEvent, error) {
	u, err := outboxID(id)
	if err != nil {
		return nil, err
	}
	ev, err := e.store.OutboxGet(ctx, u)
	if err != nil {
		return nil, eventNotFound(err, id)
	}
	return ev, nil
}

// OutboxRequeue makes a not_produced (or produced) event new again with a
// fresh attempt budget; the relay publishes it, and then its saga's later
// events. It fails with ErrConflict if the event is already new.
func (e *Engine) OutboxRequeue(ctx context.Context, id string) error {
	u, err := outboxID(id)
	if err != nil {
		return err
	}
	changed, err := e.store.OutboxRequeue(ctx, u)
	if err != nil {
		return eventNotFound(err, id)
	}
	if !changed {
		return errors.Wrapf(ErrConflict, "engine: outbox event %s is already waiting to be published", id)
	}
	return nil
}

// OutboxRequeueAll re-queues every not_produced event and returns how many.
func (e *Engine) OutboxRequeueAll(ctx context.Context) (int, error) {
	total := 0
	for {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		n, err := e.store.OutboxRequeueAll(ctx, 1000)
		if err != nil {
			return total, errors.Wrap(err, "engine: outbox re-queue")
		}
		total += n
		if n < 1000 {
			return total, nil
		}
	}
}

// OutboxDiscard deletes an event that is not new: an operator decided it
// must never be published. Its saga's later events go on.
func (e *Engine) OutboxDiscard(ctx context.Context, id string) error {
	u, err := outboxID(id)
	if err != nil {
		return err
	}
	err = e.store.OutboxDiscard(ctx, u)
	if errors.Is(err, storage.ErrEventPending) {
		return errors.Wrapf(ErrConflict, "engine: outbox event %s is waiting to be published; only produced or not_produced events can be discarded", id)
	}
	if err != nil {
		return eventNotFound(err, id)
	}
	return nil
}

// PruneOutbox deletes events produced before the given time and returns
// how many. The engine calls it on its own (OutboxOptions.Retention).
func (e *Engine) PruneOutbox(ctx context.Context, before time.Time) (int, error) {
	total := 0
	for {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		n, more, err := e.store.OutboxPrune(ctx, before, 1000)
		if err != nil {
			return total, errors.Wrap(err, "engine: prune outbox")
		}
		total += n
		if !more {
			return total, nil
		}
	}
}
