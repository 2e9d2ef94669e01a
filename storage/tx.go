package storage

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"time"

	"github.com/cockroachdb/errors"
	"github.com/oklog/ulid/v2"
	"go.etcd.io/bbolt"

	"github.com/sagad/sagad/saga"
)

// Tx is a read or write transaction. Byte slices it returns are copies.
type Tx struct {
	tx *bbolt.Tx
}

// Bolt returns the underlying bbolt transaction.
func (t *Tx) Bolt() *bbolt.Tx { return t.tx }

// SagaGet returns the saga with the given id, or ErrNotFound.
func (t *Tx) SagaGet(id ulid.ULID) (*Saga, error) {
	v := t.tx.Bucket(bucketSagas).Get(id[:])
	if v == nil {
		return nil, errors.Wrapf(ErrNotFound, "storage: saga %s", id)
	}
	return decodeSaga(id[:], v)
}

// SagaExists reports whether a saga with the given id is stored.
func (t *Tx) SagaExists(id ulid.ULID) bool {
	return t.tx.Bucket(bucketSagas).Get(id[:]) != nil
}

// SagaPut stores an encoded saga and keeps the status and due indexes in
// step with it.
func (t *Tx) SagaPut(e *Encoded) error {
	sagas := t.tx.Bucket(bucketSagas)
	oldStatus, oldWake := byte(0), int64(0)
	if old := sagas.Get(e.ID[:]); old != nil {
		if len(old) < headerLen {
			return errors.Mark(errors.Newf("storage: saga %s: stored record is %d bytes", e.ID, len(old)), ErrCorrupt)
		}
		oldStatus, oldWake = old[0], int64(binary.BigEndian.Uint64(old[1:]))
	}
	if oldStatus != e.status {
		idx := t.tx.Bucket(bucketStatus)
		if oldStatus != 0 {
			if err := idx.Delete(statusKey(oldStatus, e.ID)); err != nil {
				return errors.Wrapf(err, "storage: saga %s: status index", e.ID)
			}
		}
		if err := idx.Put(statusKey(e.status, e.ID), nil); err != nil {
			return errors.Wrapf(err, "storage: saga %s: status index", e.ID)
		}
	}
	if oldWake != e.wake {
		due := t.tx.Bucket(bucketDue)
		if oldWake != 0 {
			if err := due.Delete(dueKey(oldWake, e.ID)); err != nil {
				return errors.Wrapf(err, "storage: saga %s: due index", e.ID)
			}
		}
		if e.wake != 0 {
			if err := due.Put(dueKey(e.wake, e.ID), nil); err != nil {
				return errors.Wrapf(err, "storage: saga %s: due index", e.ID)
			}
		}
	}
	return errors.Wrapf(sagas.Put(e.ID[:], e.value), "storage: saga %s: put", e.ID)
}

// SagaDelete removes a saga, its log, its index entries, its idempotency key
// and any abort request.
func (t *Tx) SagaDelete(id ulid.ULID) error {
	sagas := t.tx.Bucket(bucketSagas)
	v := sagas.Get(id[:])
	if v == nil {
		return errors.Wrapf(ErrNotFound, "storage: saga %s", id)
	}
	s, err := decodeSaga(id[:], v)
	if err != nil {
		return err
	}
	if err := t.tx.Bucket(bucketStatus).Delete(statusKey(v[0], id)); err != nil {
		return err
	}
	if wake := int64(binary.BigEndian.Uint64(v[1:])); wake != 0 {
		if err := t.tx.Bucket(bucketDue).Delete(dueKey(wake, id)); err != nil {
			return err
		}
	}
	if s.IdempotencyKey != "" {
		if err := t.tx.Bucket(bucketIdem).Delete([]byte(s.IdempotencyKey)); err != nil {
			return err
		}
	}
	if err := t.tx.Bucket(bucketAborts).Delete(id[:]); err != nil {
		return err
	}
	c := t.tx.Bucket(bucketLog).Cursor()
	for k, _ := c.Seek(id[:]); k != nil && bytes.HasPrefix(k, id[:]); k, _ = c.Seek(id[:]) {
		if err := c.Delete(); err != nil {
			return err
		}
	}
	return sagas.Delete(id[:])
}

// SagaIDsByStatus calls fn with the id of every saga in status s, oldest
// first, until fn returns false. It reads the status index only.
func (t *Tx) SagaIDsByStatus(s saga.Status, fn func(id ulid.ULID) bool) {
	code := statusCodes[s]
	c := t.tx.Bucket(bucketStatus).Cursor()
	for k, _ := c.Seek([]byte{code}); k != nil && k[0] == code; k, _ = c.Next() {
		var id ulid.ULID
		copy(id[:], k[1:])
		if !fn(id) {
			return
		}
	}
}

// SagaCountByStatus returns how many sagas each status index holds.
func (t *Tx) SagaCountByStatus() map[saga.Status]int {
	out := make(map[saga.Status]int, len(statusCodes))
	for s := range statusCodes {
		n := 0
		t.SagaIDsByStatus(s, func(ulid.ULID) bool { n++; return true })
		out[s] = n
	}
	return out
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

// SagaList returns sagas newest first. It returns, as more, whether sagas
// beyond the limit match.
func (t *Tx) SagaList(o ListOptions) (out []*Saga, more bool, err error) {
	if o.Limit <= 0 {
		o.Limit = 100
	}
	var zero ulid.ULID
	sagas := t.tx.Bucket(bucketSagas)
	var c *bbolt.Cursor
	var prefix []byte
	if o.Status != "" {
		code, ok := statusCodes[o.Status]
		if !ok {
			return nil, false, errors.Newf("storage: unknown status %q", o.Status)
		}
		c, prefix = t.tx.Bucket(bucketStatus).Cursor(), []byte{code}
	} else {
		c = sagas.Cursor()
	}
	// Position on the first key strictly before o.Before (or the last key).
	seekEnd := append(append([]byte{}, prefix...), bytes.Repeat([]byte{0xff}, 16)...)
	if o.Before != zero {
		seekEnd = append(append([]byte{}, prefix...), o.Before[:]...)
	}
	k, _ := c.Seek(seekEnd)
	if k == nil {
		k, _ = c.Last()
	}
	for ; k != nil && bytes.Compare(k, seekEnd) >= 0; k, _ = c.Prev() {
	}
	for ; k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Prev() {
		id := k[len(prefix):]
		v := sagas.Get(id)
		if v == nil {
			return nil, false, errors.Mark(errors.Newf("storage: status index names missing saga %x", id), ErrCorrupt)
		}
		s, err := decodeSaga(id, v)
		if err != nil {
			return nil, false, err
		}
		if o.Definition != "" && s.Definition != o.Definition {
			continue
		}
		if len(out) == o.Limit {
			return out, true, nil
		}
		out = append(out, s)
	}
	return out, false, nil
}

// LogAppend appends entries to a saga's log.
func (t *Tx) LogAppend(id ulid.ULID, entries ...EncodedLog) error {
	b := t.tx.Bucket(bucketLog)
	for _, e := range entries {
		if err := b.Put(logKey(id, e.seq), e.value); err != nil {
			return errors.Wrapf(err, "storage: saga %s: append log", id)
		}
	}
	return nil
}

// LogList returns a saga's log in order.
func (t *Tx) LogList(id ulid.ULID) ([]LogEntry, error) {
	var out []LogEntry
	c := t.tx.Bucket(bucketLog).Cursor()
	for k, v := c.Seek(id[:]); k != nil && bytes.HasPrefix(k, id[:]); k, v = c.Next() {
		var e LogEntry
		if err := json.Unmarshal(v, &e); err != nil {
			return nil, errors.Mark(errors.Wrapf(err, "storage: saga %s: log entry %x", id, k[16:]), ErrCorrupt)
		}
		out = append(out, e)
	}
	return out, nil
}

// IdemGet returns the saga started with an idempotency key.
func (t *Tx) IdemGet(key string) (ulid.ULID, bool) {
	var id ulid.ULID
	v := t.tx.Bucket(bucketIdem).Get([]byte(key))
	if len(v) != 16 {
		return id, false
	}
	copy(id[:], v)
	return id, true
}

// IdemPut records that key started saga id.
func (t *Tx) IdemPut(key string, id ulid.ULID) error {
	return errors.Wrap(t.tx.Bucket(bucketIdem).Put([]byte(key), id[:]), "storage: idempotency key")
}

// AbortPut records an abort request for a saga.
func (t *Tx) AbortPut(id ulid.ULID, at time.Time) error {
	return errors.Wrap(t.tx.Bucket(bucketAborts).Put(id[:], []byte(at.UTC().Format(time.RFC3339Nano))), "storage: abort request")
}

// AbortGet reports whether an abort was requested for a saga.
func (t *Tx) AbortGet(id ulid.ULID) bool {
	return t.tx.Bucket(bucketAborts).Get(id[:]) != nil
}

// AbortDelete removes a saga's abort request.
func (t *Tx) AbortDelete(id ulid.ULID) error {
	return errors.Wrap(t.tx.Bucket(bucketAborts).Delete(id[:]), "storage: abort request")
}

// DueNext returns the earliest wake time in the due index.
func (t *Tx) DueNext() (time.Time, bool) {
	k, _ := t.tx.Bucket(bucketDue).Cursor().First()
	if k == nil {
		return time.Time{}, false
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(k))), true
}

// DueScan calls fn, earliest first, with each saga whose wake time is not
// after now, until fn returns false.
func (t *Tx) DueScan(now time.Time, fn func(id ulid.ULID, wake time.Time) bool) {
	limit := now.UnixNano()
	c := t.tx.Bucket(bucketDue).Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		w := int64(binary.BigEndian.Uint64(k))
		if w > limit {
			return
		}
		var id ulid.ULID
		copy(id[:], k[8:])
		if !fn(id, time.Unix(0, w)) {
			return
		}
	}
}

// BreakerPut stores a circuit breaker's shared state.
func (t *Tx) BreakerPut(name string, state []byte) error {
	return errors.Wrapf(t.tx.Bucket(bucketBreakers).Put([]byte(name), state), "storage: breaker %s", name)
}

// BreakerGet returns a circuit breaker's stored state, or nil.
func (t *Tx) BreakerGet(name string) []byte {
	v := t.tx.Bucket(bucketBreakers).Get([]byte(name))
	if v == nil {
		return nil
	}
	return append([]byte(nil), v...)
}

// SagaWake returns a saga's wake time from its record's header, without
// decoding the record.
func (t *Tx) SagaWake(id ulid.ULID) (time.Time, bool) {
	v := t.tx.Bucket(bucketSagas).Get(id[:])
	if len(v) < headerLen {
		return time.Time{}, false
	}
	if w := int64(binary.BigEndian.Uint64(v[1:])); w != 0 {
		return time.Unix(0, w), true
	}
	return time.Time{}, true
}

// DueAfter returns the earliest wake time in the due index that is after now.
func (t *Tx) DueAfter(now time.Time) (time.Time, bool) {
	k, _ := t.tx.Bucket(bucketDue).Cursor().Seek(binary.BigEndian.AppendUint64(nil, uint64(now.UnixNano()+1)))
	if k == nil {
		return time.Time{}, false
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(k))), true
}
