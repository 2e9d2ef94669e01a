package bolt

import (
	"encoding/binary"
	"encoding/json"
	"math"
	"slices"
	"strconv"
	"time"

	"github.com/cockroachdb/errors"

	"github.com/sagad/sagad/internal/jsonw"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
)

// A saga record is rewritten on every transition, and the pages holding the
// records of running sagas are what most commits write and sync. Records are
// therefore stored compactly: after the fixed header (records.go) comes a
// format byte and the fields below, with varints for numbers, one byte for
// enums and unix nanoseconds for times. The saga's input and its steps'
// outputs stay the JSON they are. Status and wake time live in the header
// only. Log entries, read by people, are JSON (appendLog). Format 2 added
// each step's Next and the saga's PausedFrom; format 3 the saga's trace
// context, and only a traced saga is written so. Older records are read
// with those empty.
const recordFormat = 3

var (
	stepStatusCodes = map[saga.StepStatus]byte{saga.StepPending: 1, saga.StepRunning: 2, saga.StepSucceeded: 3,
		saga.StepFailed: 4, saga.StepCompensating: 5, saga.StepCompensated: 6, saga.StepSkipped: 7}
	phaseCodes                      = map[saga.Phase]byte{"": 0, saga.PhaseAction: 1, saga.PhaseFallback: 2, saga.PhaseCompensation: 3}
	stepStatusOf, phaseOf, statusOf = invert(stepStatusCodes), invert(phaseCodes), invert(statusCodes)
)

func invert[K comparable](m map[K]byte) map[byte]K {
	out := make(map[byte]K, len(m))
	for k, v := range m {
		out[v] = k
	}
	return out
}

const (
	flagInFlight = 1 << iota
	flagFallbackUsed
	flagOutcomeUnknown
	flagGaveUp
	flagPending
)

// appendSaga appends the body of s (everything after the header).
func appendSaga(b []byte, s *storage.Saga) []byte {
	// An untraced saga is written as format 2, which the release before
	// format 3 reads: rolling back loses only the trace contexts.
	traced := s.Trace != "" || s.TraceState != ""
	if traced {
		b = append(b, recordFormat)
	} else {
		b = append(b, 2)
	}
	b = appendBytes(b, s.Definition)
	b = appendBytes(b, s.Fingerprint)
	b = appendBytes(b, s.Input)
	keys := make([]string, 0, len(s.Data))
	for k := range s.Data {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b = binary.AppendUvarint(b, uint64(len(keys)))
	for _, k := range keys {
		b = appendBytes(b, k)
		b = appendBytes(b, s.Data[k])
	}
	b = binary.AppendUvarint(b, uint64(len(s.Steps)))
	for i := range s.Steps {
		st := &s.Steps[i]
		var flags byte
		if st.InFlight {
			flags |= flagInFlight
		}
		if st.FallbackUsed {
			flags |= flagFallbackUsed
		}
		if st.OutcomeUnknown {
			flags |= flagOutcomeUnknown
		}
		if st.GaveUp {
			flags |= flagGaveUp
		}
		if st.Pending {
			flags |= flagPending
		}
		b = appendBytes(b, st.Name)
		b = append(b, stepStatusCodes[st.Status], phaseCodes[st.Phase], flags)
		b = binary.AppendVarint(b, int64(st.Attempts))
		b = appendTime(b, st.PhaseStarted)
		b = binary.AppendVarint(b, int64(st.ActionAttempts))
		b = appendBytes(b, st.Error)
		b = appendTime(b, st.Next)
	}
	b = appendBytes(b, s.IdempotencyKey)
	b = appendBytes(b, s.Error)
	b = appendBytes(b, s.ErrorEnc)
	b = appendTime(b, s.CreatedAt)
	b = appendTime(b, s.UpdatedAt)
	b = appendTime(b, s.Deadline)
	b = appendBytes(b, s.Parked)
	b = binary.AppendUvarint(b, uint64(s.LogSeq))
	b = append(b, statusCodes[s.PausedFrom])
	if !traced {
		return b
	}
	b = appendBytes(b, s.Trace)
	return appendBytes(b, s.TraceState)
}

func appendBytes[T ~string | ~[]byte](b []byte, v T) []byte {
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

// unixNano is storage.UnixNano: instants saturate at what can be stored.
func unixNano(t time.Time) int64 { return storage.UnixNano(t) }

// stamp is t as an index key's unsigned unix nanoseconds: saturated like
// unixNano, and at zero below so that keys sort as their instants do.
func stamp(t time.Time) uint64 { return uint64(max(unixNano(t), 0)) }

// wakeTime is a stored wake time: one before 1970 (which records written
// before wake times were saturated may hold) is due, as EncodeSaga stores it.
func wakeTime(n int64) time.Time { return time.Unix(0, max(n, 1)) }

// appendTime stores t as unix nanoseconds (see unixNano); the zero time as 0.
func appendTime(b []byte, t time.Time) []byte {
	if t.IsZero() {
		return binary.AppendVarint(b, 0)
	}
	return binary.AppendVarint(b, unixNano(t))
}

// decodeSaga decodes a stored record: key is the saga's id, v the value
// with its header.
func decodeSaga(key, v []byte) (*storage.Saga, error) {
	h, ok := DecodeHeader(v)
	if !ok || len(key) != 16 {
		return nil, errors.Mark(errors.Newf("storage: saga %x: record is %d bytes", key, len(v)), storage.ErrCorrupt)
	}
	s := &storage.Saga{}
	copy(s.ID[:], key)
	if s.Status, ok = statusOf[h.Status]; !ok {
		return nil, errors.Mark(errors.Newf("storage: saga %x: unknown status code %d", key, h.Status), storage.ErrCorrupt)
	}
	if h.Wake != 0 {
		s.WakeAt = wakeTime(h.Wake)
	}
	r := reader{b: v[headerLen:]}
	format := r.byte()
	if (format < 1 || format > recordFormat) && r.err == nil {
		return nil, errors.Mark(errors.Newf("storage: saga %x: unknown record format %d", key, format), storage.ErrCorrupt)
	}
	s.Definition = r.string()
	s.Fingerprint = r.string()
	s.Input = r.raw()
	if n := r.count(); n > 0 {
		s.Data = make(map[string]json.RawMessage, n)
		for range n {
			k := r.string()
			s.Data[k] = r.raw()
		}
	}
	if n := r.count(); r.err == nil {
		s.Steps = make([]storage.Step, n)
		for i := range s.Steps {
			st := &s.Steps[i]
			st.Name = r.string()
			sc, pc, flags := r.byte(), r.byte(), r.byte()
			var ok1, ok2 bool
			st.Status, ok1 = stepStatusOf[sc]
			st.Phase, ok2 = phaseOf[pc]
			if r.err == nil && (!ok1 || !ok2 || flags > flagInFlight|flagFallbackUsed|flagOutcomeUnknown|flagGaveUp|flagPending) {
				r.err = errors.Newf("step %d: status %d, phase %d, flags %d", i, sc, pc, flags)
			}
			st.InFlight, st.FallbackUsed = flags&flagInFlight != 0, flags&flagFallbackUsed != 0
			st.OutcomeUnknown = flags&flagOutcomeUnknown != 0
			st.GaveUp = flags&flagGaveUp != 0
			st.Pending = flags&flagPending != 0
			st.Attempts = r.int()
			st.PhaseStarted = r.time()
			st.ActionAttempts = r.int()
			st.Error = r.string()
			if format >= 2 {
				st.Next = r.time()
			}
		}
	}
	s.IdempotencyKey = r.string()
	s.Error = r.string()
	if enc := r.raw(); len(enc) > 0 {
		s.ErrorEnc = enc
	}
	s.CreatedAt = r.time()
	s.UpdatedAt = r.time()
	s.Deadline = r.time()
	s.Parked = r.string()
	if seq := r.uvarint(); seq > math.MaxUint32 && r.err == nil {
		r.err = errors.Newf("log sequence %d", seq)
	} else {
		s.LogSeq = uint32(seq)
	}
	if format >= 2 {
		if c := r.byte(); c != 0 {
			var ok bool
			if s.PausedFrom, ok = statusOf[c]; !ok && r.err == nil {
				r.err = errors.Newf("paused from status code %d", c)
			}
		}
	}
	if format >= 3 {
		s.Trace = r.string()
		s.TraceState = r.string()
	}
	if r.err == nil && len(r.b) != 0 {
		r.err = errors.Newf("%d bytes after the record", len(r.b))
	}
	if r.err != nil {
		return nil, errors.Mark(errors.Wrapf(r.err, "storage: saga %x: decode", key), storage.ErrCorrupt)
	}
	return s, nil
}

// reader decodes a record; the first error sticks and later reads return
// zero values.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail(what string) {
	if r.err == nil {
		r.err = errors.Newf("truncated or malformed %s", what)
	}
	r.b = nil
}

func (r *reader) byte() byte {
	if r.err != nil || len(r.b) == 0 {
		r.fail("byte")
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail("number")
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) varint() int64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.fail("number")
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) int() int {
	v := r.varint()
	if v < math.MinInt32 || v > math.MaxInt32 {
		r.fail("count")
		return 0
	}
	return int(v)
}

// count reads a collection length, which cannot exceed the bytes left.
func (r *reader) count() int {
	n := r.uvarint()
	if n > uint64(len(r.b)) {
		r.fail("length")
		return 0
	}
	return int(n)
}

// raw reads length-prefixed bytes (a copy: bbolt's memory is only valid in
// its transaction); nil for length 0.
func (r *reader) raw() []byte {
	n := r.count()
	if r.err != nil || n == 0 {
		return nil
	}
	v := slices.Clone(r.b[:n])
	r.b = r.b[n:]
	return v
}

func (r *reader) string() string {
	n := r.count()
	if r.err != nil || n == 0 {
		return ""
	}
	v := string(r.b[:n])
	r.b = r.b[n:]
	return v
}

func (r *reader) time() time.Time {
	if n := r.varint(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// appendLog appends e as JSON, as encoding/json would for its struct tags
// (FuzzEncodeLog holds the two together) without reflection's cost.
func appendLog(b []byte, e *storage.LogEntry) []byte {
	b = append(b, `{"seq":`...)
	b = strconv.AppendUint(b, uint64(e.Seq), 10)
	b = appendJSONTime(b, "at", e.At, false)
	b = appendStr(b, "event", string(e.Event), false)
	b = appendStr(b, "step", e.Step, true)
	b = appendStr(b, "phase", string(e.Phase), true)
	b = appendInt(b, "attempt", int64(e.Attempt))
	b = appendStr(b, "status", string(e.Status), true)
	b = appendInt(b, "duration", int64(e.Duration))
	b = appendStr(b, "error", e.Error, true)
	b = appendJSONTime(b, "next", e.Next, true)
	b = appendStr(b, "note", e.Note, true)
	if e.OutcomeUnknown {
		b = append(b, `,"outcome_unknown":true`...)
	}
	if c := e.InputChange; c != nil {
		if len(c.Input) > 0 {
			b = append(appendKey(b, "input"), c.Input...)
		}
		if len(c.PrevInput) > 0 {
			b = append(appendKey(b, "prev_input"), c.PrevInput...)
		}
	}
	return append(b, '}')
}

// appendStr appends ,"key":"value"; with omitEmpty an empty value is left
// out. The first field of an object follows '{' and gets no comma.
func appendStr(b []byte, key, v string, omitEmpty bool) []byte {
	if omitEmpty && v == "" {
		return b
	}
	b = appendKey(b, key)
	return jsonw.AppendString(b, v)
}

// appendInt appends ,"key":n, leaving out zero (omitempty).
func appendInt(b []byte, key string, n int64) []byte {
	if n == 0 {
		return b
	}
	b = appendKey(b, key)
	return strconv.AppendInt(b, n, 10)
}

func appendJSONTime(b []byte, key string, t time.Time, omitZero bool) []byte {
	if omitZero && t.IsZero() {
		return b
	}
	b = appendKey(b, key)
	b = append(b, '"')
	b = t.AppendFormat(b, time.RFC3339Nano)
	return append(b, '"')
}

func appendKey(b []byte, key string) []byte {
	if len(b) > 0 && b[len(b)-1] != '{' {
		b = append(b, ',')
	}
	b = append(b, '"')
	b = append(b, key...)
	return append(b, '"', ':')
}
