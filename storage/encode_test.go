package storage

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/sagad/sagad/saga"
)

// checkParity asserts that the hand-written encoding of s is valid JSON
// and decodes to exactly what encoding/json's own encoding decodes to.
func checkParity(t *testing.T, s *Saga) {
	t.Helper()
	mine := appendSaga(nil, s)
	if !json.Valid(mine) {
		t.Fatalf("appendSaga wrote invalid JSON: %s", mine)
	}
	theirs, err := json.Marshal(s)
	if err != nil {
		t.Skip("encoding/json cannot encode this record either")
	}
	var a, b Saga
	if err := json.Unmarshal(mine, &a); err != nil {
		t.Fatalf("decode appendSaga output: %v\n%s", err, mine)
	}
	if err := json.Unmarshal(theirs, &b); err != nil {
		t.Fatalf("decode encoding/json output: %v", err)
	}
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("encodings differ:\nmine   %s\ntheirs %s", mine, theirs)
	}
}

func TestEncodeSagaParity(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 23, 10, 0, 0, 123456789, time.UTC)
	full := &Saga{
		ID: ulid.Make(), Definition: "order", Fingerprint: "abc", Status: saga.StatusCompensating,
		Input: json.RawMessage(`{"a":[1,2,{"b":"c"}]}`),
		Data:  map[string]json.RawMessage{"reserve": json.RawMessage(`{"id":"r1"}`), "z": json.RawMessage(`"x"`), "e": nil},
		Steps: []Step{
			{Name: "reserve", Status: saga.StepSucceeded, Phase: saga.PhaseAction, Attempts: 2},
			{Name: "charge", Status: saga.StepCompensating, Phase: saga.PhaseCompensation, InFlight: true, Attempts: 1,
				PhaseStarted: now, ActionAttempts: 3, FallbackUsed: true, Error: "quote \" backslash \\ tab \t nl \n <>& \x01 \u2028 é \xff"},
		},
		IdempotencyKey: "order-42", Error: "boom", ErrorEnc: []byte{0, 1, 2, 255},
		CreatedAt: now, UpdatedAt: now.Add(time.Second), Deadline: now.Add(time.Hour), WakeAt: now.Add(time.Minute),
		Parked: "definition missing", LogSeq: 70000,
	}
	for _, s := range []*Saga{full, {Status: saga.StatusRunning}, {Status: saga.StatusRunning, Steps: []Step{}}} {
		checkParity(t, s)
	}
	e := &LogEntry{Seq: 9, At: now, Event: EventAttemptFailed, Step: "s", Phase: saga.PhaseAction, Attempt: 2,
		Status: saga.StatusRunning, Duration: time.Millisecond, Error: "x\"y", Next: now.Add(time.Second), Note: "retry"}
	var a, b LogEntry
	theirs, _ := json.Marshal(e)
	if err := json.Unmarshal(appendLog(nil, e), &a); err != nil {
		t.Fatal(err)
	}
	_ = json.Unmarshal(theirs, &b)
	if a != b || a.Next.IsZero() {
		t.Fatalf("log entries differ: %+v vs %+v", a, b)
	}
}

// FuzzEncodeSaga holds the hand-written encoder to encoding/json's output
// for arbitrary strings and times.
func FuzzEncodeSaga(f *testing.F) {
	f.Add("order", "step", "err \"q\"", "key", int64(0), 3)
	f.Add("\xff\xfe", "<&>", "\u2028\x00", "", int64(-1), -2)
	f.Fuzz(func(t *testing.T, def, step, msg, key string, nanos int64, attempts int) {
		at := time.Unix(0, nanos).UTC()
		s := &Saga{Definition: def, Fingerprint: key, Status: saga.StatusFailed, Error: msg, IdempotencyKey: key,
			CreatedAt: at, UpdatedAt: at, WakeAt: at,
			Steps: []Step{{Name: step, Status: saga.StepFailed, Error: msg, Attempts: attempts, PhaseStarted: at}}}
		checkParity(t, s)
	})
}
