package bolt

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
)

// roundTrip encodes s, decodes it, and asserts nothing changed.
func roundTrip(t *testing.T, s *storage.Saga) {
	t.Helper()
	e, err := EncodeSaga(s)
	if err != nil {
		t.Fatal(err)
	}
	got, err := decodeSaga(s.ID[:], e.value)
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	if !reflect.DeepEqual(normalize(got), normalize(s)) {
		t.Fatalf("round trip changed the record:\ngot  %+v\nwant %+v", got, s)
	}
}

// normalize makes times comparable with DeepEqual (same instant, same
// location, no monotonic reading) and empty collections nil.
func normalize(s *storage.Saga) *storage.Saga {
	c := *s
	tm := func(t time.Time) time.Time {
		if t.IsZero() {
			return time.Time{}
		}
		return time.Unix(0, t.UnixNano()).UTC()
	}
	c.CreatedAt, c.UpdatedAt, c.Deadline, c.WakeAt = tm(c.CreatedAt), tm(c.UpdatedAt), tm(c.Deadline), tm(c.WakeAt)
	if len(c.Data) == 0 {
		c.Data = nil
	}
	if len(c.Input) == 0 {
		c.Input = nil
	}
	if len(c.ErrorEnc) == 0 {
		c.ErrorEnc = nil
	}
	c.Steps = append([]storage.Step(nil), s.Steps...)
	for i := range c.Steps {
		c.Steps[i].PhaseStarted = tm(c.Steps[i].PhaseStarted)
	}
	if len(c.Steps) == 0 {
		c.Steps = nil
	}
	return &c
}

func TestEncodeSagaRoundTrip(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 23, 10, 0, 0, 123456789, time.UTC)
	full := &storage.Saga{
		ID: ulid.Make(), Definition: "order", Fingerprint: "abc", Status: saga.StatusCompensating,
		Input: json.RawMessage(`{"a":[1,2,{"b":"c"}]}`),
		Data:  map[string]json.RawMessage{"reserve": json.RawMessage(`{"id":"r1"}`), "z": json.RawMessage(`"x"`)},
		Steps: []storage.Step{
			{Name: "reserve", Status: saga.StepSucceeded, Phase: saga.PhaseAction, Attempts: 2},
			{Name: "charge", Status: saga.StepCompensating, Phase: saga.PhaseCompensation, InFlight: true, Attempts: 1,
				PhaseStarted: now, ActionAttempts: 3, FallbackUsed: true, Error: "quote \" nl \n \xff"},
			{Name: "ship", Status: saga.StepSkipped},
			{Name: "notify", Status: saga.StepFailed, Phase: saga.PhaseAction, OutcomeUnknown: true},
		},
		IdempotencyKey: "order-42", Error: "boom", ErrorEnc: []byte{0, 1, 2, 255},
		CreatedAt: now, UpdatedAt: now.Add(time.Second), Deadline: now.Add(time.Hour), WakeAt: now.Add(time.Minute),
		Parked: "definition missing", LogSeq: 70000, PausedFrom: saga.StatusRunning,
		Trace: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", TraceState: "vendor=x",
	}
	for _, s := range []*storage.Saga{full, {ID: ulid.Make(), Status: saga.StatusRunning}} {
		roundTrip(t, s)
	}
	e, _ := EncodeSaga(full)
	if n := len(e.value); n > 300 {
		t.Fatalf("a record of three steps takes %d bytes; the compact format should stay well under 300", n)
	}
	for _, bad := range [][]byte{
		e.value[:headerLen],                                 // no body
		e.value[:len(e.value)-1],                            // truncated
		append(append([]byte{}, e.value...), 0),             // trailing byte
		append(append([]byte{}, e.value[:headerLen]...), 9), // unknown format
	} {
		if _, err := decodeSaga(full.ID[:], bad); err == nil {
			t.Fatalf("decoding %x succeeded, want ErrCorrupt", bad)
		}
	}
}

// TestFormat2 reads a record written before format 3 (no trace
// context), and an untraced saga is still written so: the release before
// format 3 reads it.
func TestFormat2(t *testing.T) {
	t.Parallel()
	s := &storage.Saga{ID: ulid.Make(), Definition: "order", Status: saga.StatusRunning, PausedFrom: saga.StatusCompensating,
		Steps: []storage.Step{{Name: "a", Status: saga.StepRunning, Phase: saga.PhaseAction, Next: time.Unix(5, 0)}}}
	e, err := EncodeSaga(s)
	if err != nil {
		t.Fatal(err)
	}
	v := e.value
	if v[headerLen] != 2 {
		t.Fatalf("an untraced saga is written as format %d, want 2", v[headerLen])
	}
	s.Trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	if e3, _ := EncodeSaga(s); e3.value[headerLen] != 3 {
		t.Fatalf("a traced saga is written as format %d, want 3", e3.value[headerLen])
	}
	got, err := decodeSaga(s.ID[:], v)
	if err != nil {
		t.Fatalf("decode a format 2 record: %v", err)
	}
	if got.PausedFrom != saga.StatusCompensating || got.Trace != "" || !got.Steps[0].Next.Equal(time.Unix(5, 0)) {
		t.Fatalf("format 2 record decoded as %+v", got)
	}
}

func TestEncodeLogParity(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 23, 10, 0, 0, 123456789, time.UTC)
	e := &storage.LogEntry{Seq: 9, At: now, Event: storage.EventAttemptFailed, Step: "s", Phase: saga.PhaseAction, Attempt: 2,
		Status: saga.StatusRunning, Duration: time.Millisecond, Error: "x\"y <&> \u2028 \xff", Next: now.Add(time.Second), Note: "retry",
		OutcomeUnknown: true}
	checkLogParity(t, e)
	checkLogParity(t, &storage.LogEntry{At: now})
	checkLogParity(t, &storage.LogEntry{At: now, Event: storage.EventInputReplaced,
		InputChange: &storage.InputChange{Input: json.RawMessage(`{"qty":2}`), PrevInput: json.RawMessage(`{"qty":-1}`)}})
}

func checkLogParity(t *testing.T, e *storage.LogEntry) {
	t.Helper()
	mine := appendLog(nil, e)
	theirs, err := json.Marshal(e)
	if err != nil {
		t.Skip("encoding/json cannot encode this entry either")
	}
	var a, b storage.LogEntry
	if err := json.Unmarshal(mine, &a); err != nil {
		t.Fatalf("appendLog wrote invalid JSON %s: %v", mine, err)
	}
	_ = json.Unmarshal(theirs, &b)
	if !a.At.Equal(b.At) || !a.Next.Equal(b.Next) {
		t.Fatalf("times differ: %s vs %s", mine, theirs)
	}
	a.At, b.At, a.Next, b.Next = time.Time{}, time.Time{}, time.Time{}, time.Time{}
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("log entries differ:\nmine   %s\ntheirs %s", mine, theirs)
	}
}

// FuzzEncodeSaga round-trips records with arbitrary strings and numbers.
func FuzzEncodeSaga(f *testing.F) {
	f.Add("order", "step", "err \"q\"", "key", int64(1), 3, []byte(`{"a":1}`))
	f.Add("\xff\xfe", "<&>", "\u2028\x00", "", int64(-1), -2, []byte(nil))
	f.Fuzz(func(t *testing.T, def, step, msg, key string, nanos int64, attempts int, input []byte) {
		if nanos == 0 || attempts < -1<<31 || attempts > 1<<31-1 {
			t.Skip() // 0 is the zero time; attempts are stored as 32-bit
		}
		at := time.Unix(0, nanos)
		s := &storage.Saga{ID: ulid.Make(), Definition: def, Fingerprint: key, Status: saga.StatusFailed, Error: msg,
			IdempotencyKey: key, Input: input, CreatedAt: at, UpdatedAt: at, Parked: msg,
			// A wake-up before 1970 is stored as the first instant after it: due.
			WakeAt: time.Unix(0, max(nanos, 1)),
			Data:   map[string]json.RawMessage{step: input, key: json.RawMessage(msg)},
			Steps:  []storage.Step{{Name: step, Status: saga.StepFailed, Error: msg, Attempts: attempts, PhaseStarted: at}}}
		if len(input) == 0 {
			s.Data[step] = nil
		}
		if len(msg) == 0 {
			s.Data[key] = nil
		}
		roundTrip(t, s)
	})
}

// FuzzDecodeSaga feeds arbitrary bytes to the record parser: it must fail
// cleanly, never panic, and what it accepts must encode back to itself.
func FuzzDecodeSaga(f *testing.F) {
	e, _ := EncodeSaga(&storage.Saga{Definition: "d", Status: saga.StatusRunning, Steps: []storage.Step{{Name: "a", Status: saga.StepPending}}})
	f.Add(e.value)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, v []byte) {
		id := ulid.Make()
		s, err := decodeSaga(id[:], v)
		if err != nil {
			return
		}
		again, err := EncodeSaga(s)
		if err != nil {
			t.Fatalf("re-encode an accepted record: %v", err)
		}
		s2, err := decodeSaga(id[:], again.value)
		if err != nil || !reflect.DeepEqual(normalize(s), normalize(s2)) {
			t.Fatalf("accepted record does not round-trip: %v", err)
		}
	})
}

// FuzzEncodeLog holds appendLog to encoding/json's output.
func FuzzEncodeLog(f *testing.F) {
	f.Add("step", "err \"q\"", int64(1))
	f.Add("\xff\xfe<&>", "\u2028\x00", int64(-1))
	f.Fuzz(func(t *testing.T, step, msg string, nanos int64) {
		at := time.Unix(0, nanos).UTC()
		checkLogParity(t, &storage.LogEntry{At: at, Step: step, Error: msg, Note: msg, Next: at, Event: storage.Event(step)})
	})
}
