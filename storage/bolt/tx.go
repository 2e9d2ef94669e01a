package bolt

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"slices"
	"time"

	"github.com/cockroachdb/errors"
	"github.com/oklog/ulid/v2"
	"go.etcd.io/bbolt"

	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
)

// Tx is a read or write transaction. Byte slices it returns are copies.
type Tx struct {
	tx *bbolt.Tx
	db *DB
	// outbox: this transaction added, re-queued or discarded outbox events;
	// requeued: it re-queued or discarded some. DB.committed reads them.
	outbox, requeued bool
	// counts are outbox count changes not yet written (flush), by status code.
	counts      [4]int64
	countsDirty bool
}

// fillPercent is how full bbolt packs the pages it splits. Keys in every
// bucket written on the hot path mostly arrive in increasing order (ULIDs
// and wake times sort by time), so the default of 0.5 would leave every
// page half empty and double the pages each commit writes and syncs.
const fillPercent = 0.95

// bucket returns a bucket handle for writing, packed densely.
func (t *Tx) bucket(name []byte) *bbolt.Bucket {
	b := t.tx.Bucket(name)
	b.FillPercent = fillPercent
	return b
}

// Bolt returns the underlying bbolt transaction.
func (t *Tx) Bolt() *bbolt.Tx { return t.tx }

// SagaGet returns the saga with the given id, or ErrNotFound.
func (t *Tx) SagaGet(id ulid.ULID) (*storage.Saga, error) {
	v := t.tx.Bucket(bucketSagas).Get(id[:])
	if v == nil {
		return nil, errors.Wrapf(storage.ErrNotFound, "storage: saga %s", id)
	}
	return decodeSaga(id[:], v)
}

// SagaExists reports whether a saga with the given id is stored.
func (t *Tx) SagaExists(id ulid.ULID) bool {
	return t.tx.Bucket(bucketSagas).Get(id[:]) != nil
}

// SagaPut stores an encoded saga, appends logs to its step log, and keeps
// the status and due indexes in step with it.
//
// The log bucket is keyed by one sequence for all sagas, so a commit only
// appends at its tail. Each log record holds the entries of one SagaPut and
// points at the saga's previous record; the saga's header points at its
// newest.
func (t *Tx) SagaPut(e *Encoded, logs ...EncodedLog) error {
	sagas := t.bucket(bucketSagas)
	var old Header
	if v := sagas.Get(e.ID[:]); v != nil {
		var ok bool
		if old, ok = DecodeHeader(v); !ok {
			return errors.Mark(errors.Newf("storage: saga %s: stored record is %d bytes", e.ID, len(v)), storage.ErrCorrupt)
		}
	}
	if old.Status != e.status {
		idx := t.bucket(bucketStatus)
		if old.Status != 0 {
			if err := idx.Delete(statusKey(old.Status, e.ID)); err != nil {
				return errors.Wrapf(err, "storage: saga %s: status index", e.ID)
			}
		}
		if err := idx.Put(statusKey(e.status, e.ID), nil); err != nil {
			return errors.Wrapf(err, "storage: saga %s: status index", e.ID)
		}
	}
	if old.Wake != e.wake {
		due := t.bucket(bucketDue)
		if old.Wake != 0 {
			if err := due.Delete(dueKey(old.Wake, e.ID)); err != nil {
				return errors.Wrapf(err, "storage: saga %s: due index", e.ID)
			}
		}
		if e.wake != 0 {
			if err := due.Put(dueKey(e.wake, e.ID), nil); err != nil {
				return errors.Wrapf(err, "storage: saga %s: due index", e.ID)
			}
		}
	}
	head := old.LogHead
	if len(logs) > 0 {
		// One value holds all the entries of this write, one JSON object a
		// line: a transition costs one log Put, not one per entry.
		n := logHeaderLen
		for _, l := range logs {
			n += len(l.value) - logHeaderLen + 1
		}
		v := make([]byte, logHeaderLen, n)
		binary.BigEndian.PutUint64(v, head)
		copy(v[8:logHeaderLen], e.ID[:])
		for i, l := range logs {
			if i > 0 {
				v = append(v, '\n')
			}
			v = append(v, l.value[logHeaderLen:]...)
		}
		lb := t.bucket(bucketLog)
		seq, err := lb.NextSequence()
		if err != nil {
			return errors.Wrapf(err, "storage: saga %s: log sequence", e.ID)
		}
		if err := lb.Put(binary.BigEndian.AppendUint64(nil, seq), v); err != nil {
			return errors.Wrapf(err, "storage: saga %s: append log", e.ID)
		}
		head = seq
	}
	binary.BigEndian.PutUint64(e.value[9:headerLen], head)
	return errors.Wrapf(sagas.Put(e.ID[:], e.value), "storage: saga %s: put", e.ID)
}

// logWalk calls fn with the key and value of each of a saga's log entries,
// newest first.
func (t *Tx) logWalk(id ulid.ULID, head uint64, fn func(key, v []byte) error) error {
	lb := t.tx.Bucket(bucketLog)
	for seen := 0; head != 0; seen++ {
		k := binary.BigEndian.AppendUint64(nil, head)
		v := lb.Get(k)
		if len(v) < logHeaderLen || !bytes.Equal(v[8:logHeaderLen], id[:]) {
			return errors.Mark(errors.Newf("storage: saga %s: log entry %d is missing or belongs to another saga", id, head), storage.ErrCorrupt)
		}
		if err := fn(k, v); err != nil {
			return err
		}
		next := binary.BigEndian.Uint64(v)
		if next >= head {
			return errors.Mark(errors.Newf("storage: saga %s: log entry %d points forward to %d", id, head, next), storage.ErrCorrupt)
		}
		head = next
	}
	return nil
}

// SagaDelete removes a saga, its log, its index entries, its idempotency key
// and any abort request.
func (t *Tx) SagaDelete(id ulid.ULID) error {
	sagas := t.tx.Bucket(bucketSagas)
	v := sagas.Get(id[:])
	if v == nil {
		return errors.Wrapf(storage.ErrNotFound, "storage: saga %s", id)
	}
	s, err := decodeSaga(id[:], v)
	if err != nil {
		return err
	}
	h, _ := DecodeHeader(v)
	if err := t.tx.Bucket(bucketStatus).Delete(statusKey(h.Status, id)); err != nil {
		return err
	}
	if h.Wake != 0 {
		if err := t.tx.Bucket(bucketDue).Delete(dueKey(h.Wake, id)); err != nil {
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
	var keys [][]byte
	if err := t.logWalk(id, h.LogHead, func(k, _ []byte) error { keys = append(keys, k); return nil }); err != nil {
		return err
	}
	lb := t.tx.Bucket(bucketLog)
	for _, k := range keys {
		if err := lb.Delete(k); err != nil {
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

// SagaList returns sagas newest first. It returns, as more, whether sagas
// beyond the limit match.
func (t *Tx) SagaList(o storage.ListOptions) (out []*storage.Saga, more bool, err error) {
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
			return nil, false, errors.Mark(errors.Newf("storage: status index names missing saga %x", id), storage.ErrCorrupt)
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

// LogList returns a saga's log in order, oldest first.
func (t *Tx) LogList(id ulid.ULID) ([]storage.LogEntry, error) {
	h, ok := DecodeHeader(t.tx.Bucket(bucketSagas).Get(id[:]))
	if !ok {
		return nil, errors.Wrapf(storage.ErrNotFound, "storage: saga %s", id)
	}
	var out []storage.LogEntry
	err := t.logWalk(id, h.LogHead, func(k, v []byte) error {
		entries, errs := DecodeLogRecord(v)
		if len(errs) > 0 {
			return errors.Wrapf(errs[0], "storage: saga %s: log record %x", id, k)
		}
		for i := len(entries) - 1; i >= 0; i-- { // newest first, reversed below
			out = append(out, entries[i])
		}
		return nil
	})
	slices.Reverse(out)
	return out, err
}

// DecodeLogRecord decodes the entries of one stored log record (a value of
// the log bucket, which logWalk has checked belongs to its saga), oldest
// first. Each line that does not decode is left out and gives an error of
// its own, marked ErrCorrupt, for tools that report every one (sagad check).
func DecodeLogRecord(v []byte) ([]storage.LogEntry, []error) {
	if len(v) < logHeaderLen {
		return nil, []error{errors.Mark(errors.Newf("log record is %d bytes", len(v)), storage.ErrCorrupt)}
	}
	lines := bytes.Split(v[logHeaderLen:], []byte{'\n'})
	entries := make([]storage.LogEntry, 0, len(lines))
	var errs []error
	for i, line := range lines {
		var e storage.LogEntry
		if err := json.Unmarshal(line, &e); err != nil {
			errs = append(errs, errors.Mark(errors.Wrapf(err, "line %d of %d", i+1, len(lines)), storage.ErrCorrupt))
			continue
		}
		entries = append(entries, e)
	}
	return entries, errs
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
	limit := unixNano(now)
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
	h, ok := DecodeHeader(t.tx.Bucket(bucketSagas).Get(id[:]))
	if !ok {
		return time.Time{}, false
	}
	if h.Wake != 0 {
		return wakeTime(h.Wake), true
	}
	return time.Time{}, true
}

// DueAfter returns the earliest wake time in the due index that is after now.
func (t *Tx) DueAfter(now time.Time) (time.Time, bool) {
	k, _ := t.tx.Bucket(bucketDue).Cursor().Seek(binary.BigEndian.AppendUint64(nil, stamp(now)+1))
	if k == nil {
		return time.Time{}, false
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(k))), true
}

// SagaStatus returns a saga's status from its record's header, without
// decoding the record.
func (t *Tx) SagaStatus(id ulid.ULID) (saga.Status, bool) {
	v := t.tx.Bucket(bucketSagas).Get(id[:])
	if len(v) < headerLen {
		return "", false
	}
	for s, c := range statusCodes {
		if c == v[0] {
			return s, true
		}
	}
	return "", false
}
