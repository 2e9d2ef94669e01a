package bolt

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/errors"
	"github.com/oklog/ulid/v2"
	"github.com/sagad/sagad/storage"
)

// normalizeEvent makes decoded events comparable with DeepEqual: times as
// UTC instants without a monotonic reading, empty collections nil.
func normalizeEvent(ev *storage.OutboxEvent) *storage.OutboxEvent {
	c := *ev
	tm := func(t time.Time) time.Time {
		if t.IsZero() {
			return time.Time{}
		}
		return time.Unix(0, t.UnixNano()).UTC()
	}
	c.CreatedAt, c.StatusAt = tm(c.CreatedAt), tm(c.StatusAt)
	if len(c.Payload) == 0 {
		c.Payload = nil
	}
	if len(c.Headers) == 0 {
		c.Headers = nil
	}
	return &c
}

// requireEventEqual fails unless got and want hold the same event.
func requireEventEqual(t *testing.T, what string, got, want *storage.OutboxEvent) {
	t.Helper()
	if g, w := normalizeEvent(got), normalizeEvent(want); !reflect.DeepEqual(g, w) {
		t.Fatalf("%s:\ngot  %+v\nwant %+v", what, g, w)
	}
}

// seedEvent is a stored-record seed with every field set.
func seedEvent() *storage.OutboxEvent {
	return &storage.OutboxEvent{
		SagaID: ulid.MustParse("01HZZZZZZZZZZZZZZZZZZZZZZZ"), Definition: "order", Step: "charge",
		Name: "payment.charged", Exchange: "payments", RoutingKey: "payment.charged.eu",
		Payload: json.RawMessage(`{"amount":42}`), Headers: map[string]string{"tenant": "acme", "empty": ""},
		CreatedAt: time.Unix(0, 1_700_000_000_123_456_789),
	}
}

// FuzzDecodeEvent feeds arbitrary bytes to the outbox record parser: it
// must fail cleanly (marked ErrCorrupt), never panic, agree with the
// partial readers (eventTail, decodeEventHead), and what it accepts must
// encode back to the same event.
func FuzzDecodeEvent(f *testing.F) {
	plain := EncodeEvent(seedEvent(), 0).value
	big := seedEvent()
	big.Payload = json.RawMessage(`"` + strings.Repeat("compress me ", 50) + `"`)
	compressed := EncodeEvent(big, 16).value
	if compressed[1]&eventFlagCompressed == 0 {
		f.Fatal("seed: the repetitive payload was not stored compressed")
	}
	head, _, _, rest, err := eventTail(plain)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(plain)
	f.Add(compressed)
	f.Add(rewriteTail(head, 3, "connection reset", rest)) // after OutboxFailed
	f.Add(EncodeEvent(&storage.OutboxEvent{}, 0).value)   // every field empty
	f.Add([]byte{})
	f.Add(make([]byte, 18))
	f.Add(plain[:len(plain)-1])
	f.Add(append(append([]byte{}, plain...), 0))
	f.Add(append([]byte{eventFormat, eventFlagCompressed}, plain[2:]...)) // flag set, payload not deflate
	f.Fuzz(func(t *testing.T, v []byte) {
		id := ulid.Make()
		ev, err := decodeEvent(id[:], v)
		if err != nil {
			if !errors.Is(err, storage.ErrCorrupt) {
				t.Fatalf("decodeEvent rejected %x with %v, want an error marked ErrCorrupt", v, err)
			}
			return
		}
		if ev.ID != id || ev.Status != "" || !ev.StatusAt.IsZero() {
			t.Fatalf("decodeEvent set id %s, status %q at %v; want %s and no status (the index holds it)",
				ev.ID, ev.Status, ev.StatusAt, id)
		}
		head, attempts, lastErr, rest, err := eventTail(v)
		if err != nil || attempts != ev.Attempts || lastErr != ev.LastError {
			t.Fatalf("eventTail = %d, %q, %v; decodeEvent read %d, %q", attempts, lastErr, err, ev.Attempts, ev.LastError)
		}
		if created, err := decodeEventHead(v); err != nil || !created.Equal(ev.CreatedAt) {
			t.Fatalf("decodeEventHead = %v, %v; decodeEvent read %v", created, err, ev.CreatedAt)
		}

		// OutboxFailed's rewrite changes the attempts and last error only.
		failed, err := decodeEvent(id[:], rewriteTail(head, 9, "nack", rest))
		if err != nil {
			t.Fatalf("decode after rewriteTail: %v", err)
		}
		want := *ev
		want.Attempts, want.LastError = 9, "nack"
		requireEventEqual(t, "rewriteTail changed more than the tail", failed, &want)

		// An accepted record encodes back to the same event (uncompressed).
		enc := EncodeEvent(ev, 0)
		head, _, _, rest, err = eventTail(enc.value)
		if err != nil {
			t.Fatalf("eventTail of a re-encoded record: %v", err)
		}
		again, err := decodeEvent(id[:], rewriteTail(head, ev.Attempts, ev.LastError, rest))
		if err != nil {
			t.Fatalf("decode a re-encoded accepted record: %v", err)
		}
		want = *ev
		want.Compressed = false
		requireEventEqual(t, "accepted record does not round-trip", again, &want)
	})
}

// FuzzEncodeEvent round-trips events with arbitrary fields through
// EncodeEvent and decodeEvent, with and without compression, and through
// the rewrite OutboxFailed does.
func FuzzEncodeEvent(f *testing.F) {
	f.Add([]byte("0123456789abcdef"), "order", "charge", "payment.charged", "payments", "rk", "tenant", "acme",
		[]byte(`{"a":1}`), int64(1), 0)
	f.Add([]byte{0xff}, "\xff\xfe", "", "saga.completed", "", "\x00", "", "", []byte(nil), int64(-1), -1)
	f.Add([]byte{}, "d", "s", "n", "x", "k", "h", "v", []byte(`"`+strings.Repeat("ab", 400)+`"`),
		time.Now().UnixNano(), 16)
	f.Add([]byte{}, "d", "s", "n", "x", "k", "h", "v", []byte(`"short"`), int64(5), 1)
	f.Fuzz(func(t *testing.T, sid []byte, def, step, name, exchange, rk, hk, hv string, payload []byte,
		nanos int64, compressAbove int) {
		if nanos == 0 {
			t.Skip() // 0 is stored for the zero time
		}
		var sagaID ulid.ULID
		copy(sagaID[:], sid)
		var headers map[string]string
		if hk != "" || hv != "" {
			headers = map[string]string{hk: hv, hk + "-2": hv + hv}
		}
		ev := &storage.OutboxEvent{
			SagaID: sagaID, Definition: def, Step: step, Name: name, Exchange: exchange, RoutingKey: rk,
			Payload: payload, Headers: headers, CreatedAt: time.Unix(0, nanos),
			// Assigned by storage, ignored by EncodeEvent:
			ID: ulid.Make(), Status: storage.OutboxProduced, StatusAt: time.Unix(0, nanos), Attempts: 5, LastError: hv,
			Compressed: true,
		}
		enc := EncodeEvent(ev, compressAbove)
		if enc.sagaID != sagaID {
			t.Fatalf("EncodedEvent saga id %s, want %s", enc.sagaID, sagaID)
		}
		id := ulid.Make()
		got, err := decodeEvent(id[:], enc.value)
		if err != nil {
			t.Fatalf("decode an encoded event: %v", err)
		}
		if got.Compressed && (compressAbove <= 0 || len(payload) <= compressAbove) {
			t.Fatalf("payload of %d bytes compressed with threshold %d", len(payload), compressAbove)
		}
		want := &storage.OutboxEvent{
			ID: id, SagaID: sagaID, Definition: def, Step: step, Name: name, Exchange: exchange, RoutingKey: rk,
			Payload: payload, Headers: headers, CreatedAt: ev.CreatedAt, Compressed: got.Compressed,
		}
		requireEventEqual(t, "round trip", got, want)

		head, attempts, lastErr, rest, err := eventTail(enc.value)
		if err != nil || attempts != 0 || lastErr != "" {
			t.Fatalf("eventTail of a new record = %d, %q, %v; want 0, \"\", nil", attempts, lastErr, err)
		}
		failed, err := decodeEvent(id[:], rewriteTail(head, 3, hv, rest))
		if err != nil {
			t.Fatalf("decode after rewriteTail: %v", err)
		}
		want.Attempts, want.LastError = 3, hv
		requireEventEqual(t, "after rewriteTail", failed, want)
	})
}
