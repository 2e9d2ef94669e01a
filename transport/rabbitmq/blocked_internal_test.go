package rabbitmq

import (
	"log/slog"
	"testing"

	"github.com/oklog/ulid/v2"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sagad/sagad/storage"
)

// The broker's connection.blocked shows in Stats and pauses publishing;
// connection.unblocked wakes Run. (A real alarm is global to the broker, so
// the notifications are fed by hand here.)
func TestBlockedConnectionPausesPublishing(t *testing.T) {
	t.Parallel()
	r := &Relay{cfg: Config{Window: 8, Exchange: "x"}, log: slog.New(slog.DiscardHandler)}
	s := &session{inflight: make(map[uint64]*item), declared: map[string]bool{"x": true}, unblocked: make(chan struct{}, 1)}
	r.cur.Store(s)
	watch := func(b amqp.Blocking) {
		t.Helper()
		in := make(chan amqp.Blocking, 1)
		in <- b
		close(in)
		r.watchBlocked(s, in) // returns once in is drained and closed
	}

	watch(amqp.Blocking{Active: true, Reason: "low on memory"})
	if !r.Stats().Blocked {
		t.Fatal("Stats().Blocked is false after connection.blocked")
	}
	it := &item{ev: &storage.OutboxEvent{ID: ulid.Make(), SagaID: ulid.Make()}}
	st := &state{items: map[ulid.ULID]*item{it.ev.ID: it}, ready: []*item{it}}
	// The session has no channel: publishing anything would panic.
	if err := r.publish(st, s); err != nil {
		t.Fatalf("publish while blocked: %v", err)
	}
	if len(st.ready) != 1 || it.state != stQueued {
		t.Fatalf("publish while blocked took the event (ready %d, state %d), want it left queued", len(st.ready), it.state)
	}
	select {
	case <-s.unblocked:
		t.Fatal("Run was woken by connection.blocked")
	default:
	}

	watch(amqp.Blocking{Active: false})
	if r.Stats().Blocked {
		t.Fatal("Stats().Blocked is true after connection.unblocked")
	}
	select {
	case <-s.unblocked:
	default:
		t.Fatal("connection.unblocked did not wake Run")
	}
}
