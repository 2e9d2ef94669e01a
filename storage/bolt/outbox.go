package bolt

import (
	"bytes"
	"compress/flate"
	crand "crypto/rand"
	"encoding/binary"
	"io"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/cockroachdb/errors"
	"github.com/oklog/ulid/v2"
	"github.com/sagad/sagad/storage"
	"go.etcd.io/bbolt"
)

// The outbox holds integration events until a relay has published them.
// Events are written by the same transaction as the saga transition that
// causes them, keyed by a ULID that is assigned inside that transaction, so
// key order is commit order: a relay that has read every key up to some id
// will never see a smaller one appear later.
//
//	outbox        id -> event record (below)
//	outbox_status status code + id -> unix nanos the event reached that status (empty for new)
//	meta          "outbox_counts" -> three uint64: new, produced, not_produced
//
// A record is immutable except for its attempt count and last error. Its
// status lives in the index only, so marking a batch produced touches a few
// index pages and never rewrites payloads.

var (
	outboxCodes    = map[storage.OutboxStatus]byte{storage.OutboxNew: 1, storage.OutboxProduced: 2, storage.OutboxNotProduced: 3}
	outboxStatusOf = invert(outboxCodes)

	bucketOutbox       = []byte("outbox")
	bucketOutboxStatus = []byte("outbox_status")
	keyOutboxCounts    = []byte("outbox_counts")
)

const (
	eventFormat         = 1
	eventFlagCompressed = 1
	// maxPayload bounds a decompressed payload: far above what Emit
	// accepts (saga.MaxEventSize), so only damage can reach it.
	maxPayload = 64 << 20
)

// EncodedEvent is an outbox event encoded for OutboxPut. Encode outside the
// write transaction; OutboxPut assigns its id.
type EncodedEvent struct {
	sagaID ulid.ULID
	value  []byte // record with a zero attempt count
}

var flaters = sync.Pool{New: func() any {
	w, _ := flate.NewWriter(nil, flate.BestSpeed)
	return w
}}

// EncodeEvent encodes ev's content for OutboxPut; ID, Status, StatusAt,
// Attempts and LastError are ignored. A payload longer than compressAbove
// bytes is stored compressed (compressAbove <= 0: never).
func EncodeEvent(ev *storage.OutboxEvent, compressAbove int) *EncodedEvent {
	payload, flags := []byte(ev.Payload), byte(0)
	if compressAbove > 0 && len(payload) > compressAbove {
		var buf bytes.Buffer
		w := flaters.Get().(*flate.Writer)
		w.Reset(&buf)
		_, _ = w.Write(payload) // writes to a bytes.Buffer cannot fail
		_ = w.Close()
		flaters.Put(w)
		if buf.Len() < len(payload) {
			payload, flags = buf.Bytes(), eventFlagCompressed
		}
	}
	b := make([]byte, 0, 64+len(ev.Definition)+len(ev.Step)+len(ev.Name)+len(ev.Exchange)+len(ev.RoutingKey)+len(payload))
	b = append(b, eventFormat, flags)
	b = append(b, ev.SagaID[:]...)
	b = appendBytes(b, ev.Definition)
	b = appendBytes(b, ev.Step)
	b = appendBytes(b, ev.Name)
	b = appendBytes(b, ev.Exchange)
	b = appendBytes(b, ev.RoutingKey)
	keys := slices.Sorted(maps.Keys(ev.Headers))
	b = binary.AppendUvarint(b, uint64(len(keys)))
	for _, k := range keys {
		b = appendBytes(b, k)
		b = appendBytes(b, ev.Headers[k])
	}
	b = appendTime(b, ev.CreatedAt)
	b = binary.AppendVarint(b, 0) // attempts
	b = appendBytes(b, "")        // last error
	b = appendBytes(b, payload)
	return &EncodedEvent{sagaID: ev.SagaID, value: b}
}

// decodeEvent decodes a stored record. It leaves Status and StatusAt to the
// caller, who reads them from the index.
func decodeEvent(key, v []byte) (*storage.OutboxEvent, error) {
	bad := func(err error) error {
		return errors.Mark(errors.Wrapf(err, "storage: outbox event %x: decode", key), storage.ErrCorrupt)
	}
	if len(key) != 16 || len(v) < 18 {
		return nil, bad(errors.Newf("record is %d bytes", len(v)))
	}
	if v[0] != eventFormat || v[1]&^eventFlagCompressed != 0 {
		return nil, bad(errors.Newf("unknown format %d or flags %d", v[0], v[1]))
	}
	ev := &storage.OutboxEvent{Compressed: v[1]&eventFlagCompressed != 0}
	copy(ev.ID[:], key)
	copy(ev.SagaID[:], v[2:18])
	r := reader{b: v[18:]}
	ev.Definition = r.string()
	ev.Step = r.string()
	ev.Name = r.string()
	ev.Exchange = r.string()
	ev.RoutingKey = r.string()
	if n := r.count(); n > 0 {
		ev.Headers = make(map[string]string, n)
		for range n {
			k := r.string()
			ev.Headers[k] = r.string()
		}
	}
	ev.CreatedAt = r.time()
	ev.Attempts = r.int()
	ev.LastError = r.string()
	payload := r.raw()
	if r.err == nil && len(r.b) != 0 {
		r.err = errors.Newf("%d bytes after the record", len(r.b))
	}
	if r.err != nil {
		return nil, bad(r.err)
	}
	if ev.Compressed {
		fr := flate.NewReader(bytes.NewReader(payload))
		out, err := io.ReadAll(io.LimitReader(fr, maxPayload+1))
		if err != nil {
			return nil, bad(errors.Wrap(err, "decompress payload"))
		}
		if len(out) > maxPayload {
			return nil, bad(errors.Newf("payload decompresses to more than %d bytes", maxPayload))
		}
		payload = out
	}
	ev.Payload = payload
	return ev, nil
}

// skipFixed returns a reader positioned at a record's creation time, past
// its saga id, names and headers.
func skipFixed(v []byte) (reader, error) {
	if len(v) < 18 {
		return reader{}, errors.Newf("record is %d bytes", len(v))
	}
	r := reader{b: v[18:]}
	for range 5 {
		r.raw()
	}
	for n := r.count(); n > 0 && r.err == nil; n-- {
		r.raw()
		r.raw()
	}
	return r, r.err
}

// eventTail splits a record around its mutable part: head is everything
// before the attempt count, rest the encoded payload after the last error.
func eventTail(v []byte) (head []byte, attempts int, lastErr string, rest []byte, err error) {
	r, err := skipFixed(v)
	if err != nil {
		return nil, 0, "", nil, err
	}
	r.time()
	head = v[:len(v)-len(r.b)]
	attempts = r.int()
	lastErr = r.string()
	if r.err != nil {
		return nil, 0, "", nil, r.err
	}
	return head, attempts, lastErr, r.b, nil
}

// rewriteTail rebuilds a record with a new attempt count and last error.
func rewriteTail(head []byte, attempts int, lastErr string, rest []byte) []byte {
	nv := make([]byte, 0, len(head)+len(lastErr)+len(rest)+12)
	nv = append(nv, head...)
	nv = binary.AppendVarint(nv, int64(attempts))
	nv = appendBytes(nv, lastErr)
	return append(nv, rest...)
}

func outboxKey(code byte, id ulid.ULID) []byte {
	k := make([]byte, 17)
	k[0] = code
	copy(k[1:], id[:])
	return k
}

// eventIDs hands out the outbox's ULIDs: monotonic, and never smaller than
// the last one stored, even if the clock steps back.
type eventIDs struct {
	mu      sync.Mutex
	entropy *ulid.LockedMonotonicReader
	last    ulid.ULID
}

func (g *eventIDs) next(now time.Time) ulid.ULID {
	g.mu.Lock()
	defer g.mu.Unlock()
	id, err := ulid.New(ulid.Timestamp(now), g.entropy)
	if err != nil || id.Compare(g.last) <= 0 {
		id = g.last
		for i := len(id) - 1; i >= 0; i-- {
			id[i]++
			if id[i] != 0 {
				break
			}
		}
	}
	g.last = id
	return id
}

func newEventIDs(tx *bbolt.Tx) *eventIDs {
	g := &eventIDs{entropy: &ulid.LockedMonotonicReader{MonotonicReader: ulid.Monotonic(crand.Reader, 0)}}
	if b := tx.Bucket(bucketOutbox); b != nil {
		if k, _ := b.Cursor().Last(); len(k) == 16 {
			copy(g.last[:], k)
		}
	}
	return g
}

func (t *Tx) outboxCounts() storage.OutboxCounts {
	var c storage.OutboxCounts
	if m := t.tx.Bucket(bucketMeta); m != nil {
		if v := m.Get(keyOutboxCounts); len(v) == 24 {
			c.New = int64(binary.BigEndian.Uint64(v))
			c.Produced = int64(binary.BigEndian.Uint64(v[8:]))
			c.NotProduced = int64(binary.BigEndian.Uint64(v[16:]))
		}
	}
	c.New += t.counts[1]
	c.Produced += t.counts[2]
	c.NotProduced += t.counts[3]
	return c
}

// countAdd moves delta events into status to (and out of from, if set).
// The counts are written once, when the transaction ends (flush): a commit
// carrying hundreds of events rewrites them once.
func (t *Tx) countAdd(from, to byte, delta int64) error {
	if from != 0 && int(from) < len(t.counts) {
		t.counts[from] -= delta
	}
	if to != 0 && int(to) < len(t.counts) {
		t.counts[to] += delta
	}
	t.countsDirty = true
	return nil
}

// flush writes what the transaction left pending: the outbox counts. Every
// write path calls it after the last write function.
func (t *Tx) flush() error {
	if !t.countsDirty {
		return nil
	}
	c := t.outboxCounts()
	v := make([]byte, 24)
	binary.BigEndian.PutUint64(v, uint64(c.New))
	binary.BigEndian.PutUint64(v[8:], uint64(c.Produced))
	binary.BigEndian.PutUint64(v[16:], uint64(c.NotProduced))
	t.counts, t.countsDirty = [4]int64{}, false
	return errors.Wrap(t.tx.Bucket(bucketMeta).Put(keyOutboxCounts, v), "storage: outbox counts")
}

// OutboxPut adds an event to the outbox as new, and returns the id it
// assigned. The relay is woken when the transaction has committed.
func (t *Tx) OutboxPut(e *EncodedEvent) (ulid.ULID, error) {
	id := t.db.ids.next(t.db.clock.Now())
	if err := t.bucket(bucketOutbox).Put(id[:], e.value); err != nil {
		return id, errors.Wrapf(err, "storage: outbox event %s", id)
	}
	// Not nil: bbolt returns a nil value as nil (absent) until the commit.
	if err := t.bucket(bucketOutboxStatus).Put(outboxKey(outboxCodes[storage.OutboxNew], id), []byte{}); err != nil {
		return id, errors.Wrapf(err, "storage: outbox event %s: index", id)
	}
	t.outbox = true
	return id, t.countAdd(0, outboxCodes[storage.OutboxNew], 1)
}

// outboxStatus returns an event's status code and the time it reached it.
func (t *Tx) outboxStatus(id ulid.ULID) (byte, time.Time) {
	idx := t.tx.Bucket(bucketOutboxStatus)
	if idx == nil {
		return 0, time.Time{}
	}
	for code := byte(1); code <= 3; code++ {
		if v := idx.Get(outboxKey(code, id)); v != nil {
			var at time.Time
			if len(v) == 8 {
				at = time.Unix(0, int64(binary.BigEndian.Uint64(v)))
			}
			return code, at
		}
	}
	return 0, time.Time{}
}

// OutboxGet returns an event, or ErrEventNotFound.
func (t *Tx) OutboxGet(id ulid.ULID) (*storage.OutboxEvent, error) {
	b := t.tx.Bucket(bucketOutbox)
	var v []byte
	if b != nil {
		v = b.Get(id[:])
	}
	if v == nil {
		return nil, errors.Wrapf(storage.ErrEventNotFound, "storage: outbox event %s", id)
	}
	ev, err := decodeEvent(id[:], v)
	if err != nil {
		return nil, err
	}
	code, at := t.outboxStatus(id)
	if code == 0 {
		return nil, errors.Mark(errors.Newf("storage: outbox event %s is in no status index", id), storage.ErrCorrupt)
	}
	ev.Status, ev.StatusAt = outboxStatusOf[code], at
	return ev, nil
}

// OutboxScan calls fn, in id order, with the id of every event in status s
// whose id is greater than after, until fn returns false. It reads the
// status index only.
func (t *Tx) OutboxScan(s storage.OutboxStatus, after ulid.ULID, fn func(id ulid.ULID) bool) {
	idx := t.tx.Bucket(bucketOutboxStatus)
	code, ok := outboxCodes[s]
	if idx == nil || !ok {
		return
	}
	c := idx.Cursor()
	k, _ := c.Seek(outboxKey(code, after))
	for ; k != nil && k[0] == code; k, _ = c.Next() {
		var id ulid.ULID
		copy(id[:], k[1:])
		if id == after {
			continue
		}
		if !fn(id) {
			return
		}
	}
}

// OutboxList returns events in one status, oldest first, and whether more
// follow.
func (t *Tx) OutboxList(o storage.OutboxListOptions) (out []*storage.OutboxEvent, more bool, err error) {
	if o.Status == "" {
		o.Status = storage.OutboxNew
	}
	if _, ok := outboxCodes[o.Status]; !ok {
		return nil, false, errors.Newf("storage: unknown outbox status %q", o.Status)
	}
	if o.Limit <= 0 {
		o.Limit = 100
	}
	t.OutboxScan(o.Status, o.After, func(id ulid.ULID) bool {
		if len(out) == o.Limit {
			more = true
			return false
		}
		var ev *storage.OutboxEvent
		if ev, err = t.OutboxGet(id); err != nil {
			return false
		}
		out = append(out, ev)
		return true
	})
	return out, more, err
}

// outboxMove moves an event from one status to another, stamping at.
func (t *Tx) outboxMove(id ulid.ULID, from, to byte, at time.Time) error {
	idx := t.bucket(bucketOutboxStatus)
	if err := idx.Delete(outboxKey(from, id)); err != nil {
		return errors.Wrapf(err, "storage: outbox event %s: index", id)
	}
	v := []byte{} // not nil: see OutboxPut
	if to != outboxCodes[storage.OutboxNew] {
		v = binary.BigEndian.AppendUint64(nil, stamp(at))
	}
	if err := idx.Put(outboxKey(to, id), v); err != nil {
		return errors.Wrapf(err, "storage: outbox event %s: index", id)
	}
	return t.countAdd(from, to, 1)
}

// OutboxProduced marks new events produced at at. Ids that are not new
// (discarded, or already marked) are skipped; it returns how many it marked.
func (t *Tx) OutboxProduced(ids []ulid.ULID, at time.Time) (int, error) {
	idx := t.bucket(bucketOutboxStatus)
	stamp := binary.BigEndian.AppendUint64(nil, stamp(at))
	newCode, prodCode := outboxCodes[storage.OutboxNew], outboxCodes[storage.OutboxProduced]
	n := 0
	for _, id := range ids {
		k := outboxKey(newCode, id)
		if idx.Get(k) == nil {
			continue
		}
		if err := idx.Delete(k); err != nil {
			return n, errors.Wrapf(err, "storage: outbox event %s: index", id)
		}
		k[0] = prodCode
		if err := idx.Put(k, stamp); err != nil {
			return n, errors.Wrapf(err, "storage: outbox event %s: index", id)
		}
		n++
	}
	if n == 0 {
		return 0, nil
	}
	return n, t.countAdd(newCode, prodCode, int64(n))
}

// OutboxFailed records a failed publication of a new event: its attempt
// count grows by one and msg becomes its last error. With final, the event
// becomes not_produced. It returns the new attempt count.
func (t *Tx) OutboxFailed(id ulid.ULID, msg string, final bool, at time.Time) (int, error) {
	b := t.bucket(bucketOutbox)
	v := b.Get(id[:])
	if code, _ := t.outboxStatus(id); v == nil || code != outboxCodes[storage.OutboxNew] {
		return 0, errors.Wrapf(storage.ErrEventNotFound, "storage: new outbox event %s", id)
	}
	head, attempts, _, rest, err := eventTail(v)
	if err != nil {
		return 0, errors.Mark(errors.Wrapf(err, "storage: outbox event %s: decode", id), storage.ErrCorrupt)
	}
	attempts++
	if err := b.Put(id[:], rewriteTail(head, attempts, msg, rest)); err != nil {
		return 0, errors.Wrapf(err, "storage: outbox event %s", id)
	}
	if final {
		return attempts, t.outboxMove(id, outboxCodes[storage.OutboxNew], outboxCodes[storage.OutboxNotProduced], at)
	}
	return attempts, nil
}

// OutboxRequeue makes a not_produced or produced event new again, with its
// attempt count reset (its last error is kept). It fails with
// ErrEventNotFound for an unknown id and returns false, changing nothing,
// for an event that is already new.
func (t *Tx) OutboxRequeue(id ulid.ULID) (bool, error) {
	b := t.bucket(bucketOutbox)
	v := b.Get(id[:])
	code, _ := t.outboxStatus(id)
	if v == nil || code == 0 {
		return false, errors.Wrapf(storage.ErrEventNotFound, "storage: outbox event %s", id)
	}
	if code == outboxCodes[storage.OutboxNew] {
		return false, nil
	}
	head, _, lastErr, rest, err := eventTail(v)
	if err != nil {
		return false, errors.Mark(errors.Wrapf(err, "storage: outbox event %s: decode", id), storage.ErrCorrupt)
	}
	if err := b.Put(id[:], rewriteTail(head, 0, lastErr, rest)); err != nil {
		return false, errors.Wrapf(err, "storage: outbox event %s", id)
	}
	t.outbox, t.requeued = true, true
	return true, t.outboxMove(id, code, outboxCodes[storage.OutboxNew], time.Time{})
}

// OutboxDelete removes an event in any status. It fails with
// ErrEventNotFound for an unknown id.
func (t *Tx) OutboxDelete(id ulid.ULID) error {
	b := t.bucket(bucketOutbox)
	code, _ := t.outboxStatus(id)
	if b.Get(id[:]) == nil || code == 0 {
		return errors.Wrapf(storage.ErrEventNotFound, "storage: outbox event %s", id)
	}
	if err := b.Delete(id[:]); err != nil {
		return errors.Wrapf(err, "storage: outbox event %s", id)
	}
	if err := t.bucket(bucketOutboxStatus).Delete(outboxKey(code, id)); err != nil {
		return errors.Wrapf(err, "storage: outbox event %s: index", id)
	}
	if code != outboxCodes[storage.OutboxProduced] {
		// A parked saga may be free to go on.
		t.outbox, t.requeued = true, true
	}
	return t.countAdd(code, 0, 1)
}

// OutboxPrune deletes up to limit produced events that were produced
// before before, oldest first. It returns how many it deleted and whether
// more may be due. A limit of zero or less means 1000.
func (t *Tx) OutboxPrune(before time.Time, limit int) (int, bool, error) {
	if limit <= 0 {
		limit = 1000
	}
	idx := t.bucket(bucketOutboxStatus)
	b := t.bucket(bucketOutbox)
	code := outboxCodes[storage.OutboxProduced]
	cut := stamp(before)
	var keys [][]byte
	c := idx.Cursor()
	more := false
	for k, v := c.Seek([]byte{code}); k != nil && k[0] == code; k, v = c.Next() {
		var id ulid.ULID
		copy(id[:], k[1:])
		// An event is produced after it was created: once ids are newer
		// than the cut-off, no later event can be due.
		if ulid.Time(id.Time()).After(before) {
			break
		}
		if len(v) == 8 && binary.BigEndian.Uint64(v) >= cut {
			continue
		}
		if len(keys) == limit {
			more = true
			break
		}
		keys = append(keys, slices.Clone(k))
	}
	for _, k := range keys {
		if err := idx.Delete(k); err != nil {
			return 0, false, errors.Wrap(err, "storage: prune outbox")
		}
		if err := b.Delete(k[1:]); err != nil {
			return 0, false, errors.Wrap(err, "storage: prune outbox")
		}
	}
	if len(keys) == 0 {
		return 0, more, nil
	}
	return len(keys), more, t.countAdd(code, 0, int64(len(keys)))
}

// OutboxCounts returns the stored counts of events by status.
func (t *Tx) OutboxCounts() storage.OutboxCounts { return t.outboxCounts() }

// OutboxOldest returns the creation time of the oldest event in status s.
func (t *Tx) OutboxOldest(s storage.OutboxStatus) (time.Time, bool) {
	var at time.Time
	found := false
	t.OutboxScan(s, ulid.ULID{}, func(id ulid.ULID) bool {
		found = true
		if v := t.tx.Bucket(bucketOutbox).Get(id[:]); v != nil {
			if created, err := decodeEventHead(v); err == nil && !created.IsZero() {
				at = created
				return false
			}
		}
		at = ulid.Time(id.Time())
		return false
	})
	return at, found
}

// decodeEventHead returns a record's creation time without its payload.
func decodeEventHead(v []byte) (time.Time, error) {
	r, err := skipFixed(v)
	if err != nil {
		return time.Time{}, err
	}
	return r.time(), r.err
}

// OutboxSaga returns the saga id of a stored event without decoding it.
func (t *Tx) OutboxSaga(id ulid.ULID) (ulid.ULID, bool) {
	var s ulid.ULID
	b := t.tx.Bucket(bucketOutbox)
	if b == nil {
		return s, false
	}
	v := b.Get(id[:])
	if len(v) < 18 {
		return s, false
	}
	copy(s[:], v[2:18])
	return s, true
}
