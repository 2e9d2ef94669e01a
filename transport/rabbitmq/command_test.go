package rabbitmq_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/errors"
	"github.com/oklog/ulid/v2"
	amqp "github.com/rabbitmq/amqp091-go"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/internal/brokertest"
	"github.com/sagad/sagad/internal/tcpproxy"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
	"github.com/sagad/sagad/transport/httpstep"
	"github.com/sagad/sagad/transport/rabbitmq"
)

// commandBody is what a participant reads from a command: the body an HTTP
// participant gets.
type commandBody struct {
	SagaID  string `json:"saga_id"`
	Step    string `json:"step"`
	Phase   string `json:"phase"`
	Attempt int    `json:"attempt"`
	Input   struct {
		Charge string `json:"charge"`
	} `json:"input"`
}

// participant is a service that takes commands from its queue and replies
// to them, through a real broker, as answer decides.
type participant struct {
	t     *testing.T
	queue string
	ch    *amqp.Channel
	mu    sync.Mutex
	got   []amqp.Delivery
	// answer is called for each command, in order, on the consumer's
	// goroutine.
	answer func(p *participant, d amqp.Delivery, c commandBody)
}

// newParticipant declares queue (deleted when the test ends) and consumes
// it until the test ends.
func newParticipant(t *testing.T, brokerURL, queue string, answer func(p *participant, d amqp.Delivery, c commandBody)) *participant {
	t.Helper()
	conn, err := amqp.Dial(brokerURL)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(queue, false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	ds, err := ch.Consume(queue, "", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	p := &participant{t: t, queue: queue, ch: ch, answer: answer}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for d := range ds {
			var c commandBody
			if err := json.Unmarshal(d.Body, &c); err != nil {
				t.Errorf("participant: command body %q: %v", d.Body, err)
				continue
			}
			p.mu.Lock()
			p.got = append(p.got, d)
			p.mu.Unlock()
			p.answer(p, d, c)
		}
	}()
	t.Cleanup(func() {
		_, _ = ch.QueueDelete(queue, false, false, false)
		_ = conn.Close()
		<-done
	})
	return p
}

// reply answers command d with status and body, to its reply_to.
func (p *participant) reply(d amqp.Delivery, status any, body string) {
	err := p.ch.PublishWithContext(context.Background(), "", d.ReplyTo, false, false, amqp.Publishing{
		CorrelationId: d.CorrelationId, ContentType: "application/json", Headers: amqp.Table{"status": status},
		Body: []byte(body)})
	if err != nil {
		p.t.Errorf("participant: reply to %s: %v", d.CorrelationId, err)
	}
}

// commands returns the commands received so far for saga id.
func (p *participant) commands(id string) []amqp.Delivery {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []amqp.Delivery
	for _, d := range p.got {
		if strings.HasPrefix(d.CorrelationId, id+"/") {
			out = append(out, d)
		}
	}
	return out
}

// orderSpec is a JSON definition of two steps whose participant is reached
// over AMQP on queue: reserve (with a compensation), then charge, which
// waits chargeTimeout for its reply and is tried up to 3 times.
func orderSpec(t *testing.T, name, queue, chargeTimeout string) *saga.Definition {
	t.Helper()
	return specDef(t, name, fmt.Sprintf(`{"steps": [
		{"name": "reserve", "action": {"amqp": {"exchange": "", "routing_key": %[1]q, "timeout": "20s"}},
		 "compensation": {"amqp": {"routing_key": %[1]q, "timeout": "20s"}}},
		{"name": "charge", "action": {"amqp": {"routing_key": %[1]q, "timeout": %[2]q},
		 "retry": {"max_attempts": 3, "initial_interval": "10ms"}}}]}`, queue, chargeTimeout))
}

// specDef is the definition of a JSON spec.
func specDef(tb testing.TB, name, spec string) *saga.Definition {
	tb.Helper()
	s, err := httpstep.Parse(name, []byte(spec))
	if err != nil {
		tb.Fatal(err)
	}
	def, err := s.Definition(name, nil)
	if err != nil {
		tb.Fatal(err)
	}
	return def
}

// shop answers as a participant of orderSpec: reserve succeeds, its
// compensation too, and charge as the saga's input says: "ok", "decline"
// (402), "flaky" (503, then 200), "twice" (200, sent twice), or "late"
// (attempt 1 gets no answer until attempt 2 comes; then both are answered).
func shop(held chan amqp.Delivery) func(p *participant, d amqp.Delivery, c commandBody) {
	return func(p *participant, d amqp.Delivery, c commandBody) {
		switch {
		case c.Step == "reserve" && c.Phase == "action":
			p.reply(d, int32(200), `{"hold": "`+c.SagaID+`"}`)
		case c.Step == "reserve":
			p.reply(d, int16(204), ``)
		case c.Input.Charge == "ok":
			p.reply(d, int64(200), `{"charged": true}`)
		case c.Input.Charge == "decline":
			p.reply(d, int32(402), `{"error": "card declined"}`)
		case c.Input.Charge == "flaky" && c.Attempt == 1:
			p.reply(d, "503", `busy`)
		case c.Input.Charge == "flaky":
			p.reply(d, 200.0, `{"charged": 2}`)
		case c.Input.Charge == "twice":
			p.reply(d, int32(200), `{"charged": true}`)
			p.reply(d, int32(200), `{"charged": "again"}`)
		case c.Input.Charge == "late" && c.Attempt == 1:
			held <- d
		case c.Input.Charge == "late":
			p.reply(<-held, int32(200), `{"charged": "late"}`)
			p.reply(d, int32(200), `{"charged": 2}`)
		}
	}
}

// replyCounter counts Replies' results and signals each.
type replyCounter struct {
	mu     sync.Mutex
	counts map[string]int
	ch     chan string
}

func newReplyCounter() *replyCounter {
	return &replyCounter{counts: map[string]int{}, ch: make(chan string, 1024)}
}

func (c *replyCounter) hook(result string) {
	c.mu.Lock()
	c.counts[result]++
	c.mu.Unlock()
	c.ch <- result
}

// await waits for a reply handled with result want.
func (c *replyCounter) await(t *testing.T, want string) {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case got := <-c.ch:
			if got == want {
				return
			}
		case <-timeout:
			t.Fatalf("no reply was %s", want)
		}
	}
}

// logEvents returns the events of the log entries of a saga's step.
func logEvents(t *testing.T, eng *engine.Engine, id, step string) []storage.LogEntry {
	t.Helper()
	log, err := eng.Log(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	var out []storage.LogEntry
	for _, e := range log {
		if e.Step == step {
			out = append(out, e)
		}
	}
	return out
}

func count(es []storage.LogEntry, ev storage.Event) int {
	n := 0
	for _, e := range es {
		if e.Event == ev {
			n++
		}
	}
	return n
}

// TestAMQPStep: steps whose participant is reached over RabbitMQ, from a
// JSON definition: success, a permanent failure (compensated, the
// compensation a command too), a retryable one, a second reply (recorded,
// ignored), a late reply after the attempt's timeout (recorded, ignored),
// replies for no saga or malformed (rejected), and a command no queue
// takes (returned by the broker: a failed attempt).
func TestAMQPStep(t *testing.T) {
	t.Parallel()
	brokerURL := brokertest.URL(t)
	queue := brokertest.Name("test.shop")
	replyQueue := brokertest.Name("test.replies")
	held := make(chan amqp.Delivery, 1)
	p := newParticipant(t, brokerURL, queue, shop(held))
	rc := newReplyCounter()
	lost := brokertest.Name("nobody")
	lostDef := specDef(t, "lost", `{"steps": [{"name": "send", "action": {"amqp": {"routing_key": "`+lost+`"},
		"retry": {"max_attempts": 2, "initial_interval": "10ms"}}}]}`)
	nowhereDef := specDef(t, "nowhere", `{"steps": [{"name": "send", "action": {"amqp": {"exchange": "`+brokertest.Name("nowhere")+`", "routing_key": "k"},
		"retry": {"max_attempts": 2, "initial_interval": "10ms"}}}]}`)
	b := setup(t, setupOpts{replies: true, defs: []*saga.Definition{orderSpec(t, "order", queue, "20s"), orderSpec(t, "order-late", queue, "300ms"), lostDef, nowhereDef},
		cfg: rabbitmq.Config{URL: brokerURL, ReplyQueue: replyQueue, Hooks: rabbitmq.Hooks{Reply: rc.hook}}})
	brokertest.DeleteQueue(t, brokerURL, replyQueue)

	run := func(t *testing.T, def, charge string) *engine.Saga {
		t.Helper()
		return b.run(t, def, map[string]string{"charge": charge})
	}

	t.Run("success", func(t *testing.T) {
		s := run(t, "order", "ok")
		if s.Status != saga.StatusCompleted || string(s.Data["reserve"]) != `{"hold":"`+s.ID+`"}` || string(s.Data["charge"]) != `{"charged":true}` {
			t.Fatalf("saga %s %s, data %s: want completed with the replies' data", s.ID, s.Status, s.Data)
		}
		cmds := p.commands(s.ID)
		if len(cmds) != 2 {
			log, _ := b.eng.Log(context.Background(), s.ID)
			t.Fatalf("participant got %v, want 2 commands; log %+v", correlations(cmds), log)
		}
		d := cmds[0]
		want := map[string]string{"Idempotency-Key": s.ID + "/reserve/action", "X-Saga-Id": s.ID, "X-Saga-Definition": "order",
			"X-Saga-Step": "reserve", "X-Saga-Phase": "action", "X-Saga-Attempt": "1"}
		for k, v := range want {
			if d.Headers[k] != v {
				t.Errorf("command header %s = %v, want %q", k, d.Headers[k], v)
			}
		}
		if _, ok := d.Headers[storage.HeaderCorrelationID]; ok {
			t.Errorf("command headers %v carry the outbox's correlation header", d.Headers)
		}
		if d.CorrelationId != s.ID+"/reserve/action/1" || d.ReplyTo != replyQueue || d.ContentType != "application/json" ||
			d.DeliveryMode != amqp.Persistent || d.Type != "sagad.action" {
			t.Errorf("command properties: correlation %q reply_to %q content type %q delivery mode %d type %q",
				d.CorrelationId, d.ReplyTo, d.ContentType, d.DeliveryMode, d.Type)
		}
		if _, err := ulid.ParseStrict(d.MessageId); err != nil {
			t.Errorf("message id %q is not the outbox event's id: %v", d.MessageId, err)
		}
	})

	t.Run("permanent failure", func(t *testing.T) {
		s := run(t, "order", "decline")
		if s.Status != saga.StatusCompensated || !strings.Contains(s.Steps[1].Error, "402: card declined") {
			t.Fatalf("saga %s %s, charge error %q: want compensated, the 402 as charge's error", s.ID, s.Status, s.Steps[1].Error)
		}
		cmds := p.commands(s.ID)
		if len(cmds) != 3 || cmds[2].CorrelationId != s.ID+"/reserve/compensation/1" {
			t.Fatalf("commands %v: want reserve, charge, then reserve's compensation", correlations(cmds))
		}
		if s.Steps[1].Attempts != 1 {
			t.Errorf("charge attempted %d times: a 402 is not retried", s.Steps[1].Attempts)
		}
	})

	t.Run("retryable failure", func(t *testing.T) {
		s := run(t, "order", "flaky")
		if s.Status != saga.StatusCompleted || s.Steps[1].Attempts != 2 || string(s.Data["charge"]) != `{"charged":2}` {
			t.Fatalf("saga %s %s, charge attempts %d, data %s: want completed on the second attempt", s.ID, s.Status, s.Steps[1].Attempts, s.Data["charge"])
		}
		es := logEvents(t, b.eng, s.ID, "charge")
		if count(es, storage.EventAttemptFailed) != 1 || !strings.Contains(es[2].Error, "503: busy") {
			t.Errorf("charge's log %+v: want one failed attempt, the 503", es)
		}
	})

	t.Run("second reply", func(t *testing.T) {
		// The two replies are handled at once: either may be the one
		// committed, and the other is recorded and ignored.
		s := run(t, "order", "twice")
		first := string(s.Data["charge"])
		if s.Status != saga.StatusCompleted || first != `{"charged":true}` && first != `{"charged":"again"}` {
			t.Fatalf("saga %s %s, charge %s: want completed with one of the replies", s.ID, s.Status, first)
		}
		rc.await(t, "ignored")
		if es := logEvents(t, b.eng, s.ID, "charge"); count(es, storage.EventAnswerIgnored) != 1 {
			t.Errorf("charge's log %+v: want the other reply recorded as ignored", es)
		}
		if s, _ := b.eng.Get(context.Background(), s.ID); string(s.Data["charge"]) != first {
			t.Errorf("after the second reply charge's data is %s, not %s", s.Data["charge"], first)
		}
	})

	t.Run("late reply", func(t *testing.T) {
		s := run(t, "order-late", "late")
		if s.Status != saga.StatusCompleted || s.Steps[1].Attempts != 2 || string(s.Data["charge"]) != `{"charged":2}` {
			t.Fatalf("saga %s %s, charge attempts %d, data %s: want completed by the second attempt's reply",
				s.ID, s.Status, s.Steps[1].Attempts, s.Data["charge"])
		}
		es := logEvents(t, b.eng, s.ID, "charge")
		for len(es) == 0 || count(es, storage.EventAnswerIgnored) == 0 {
			rc.await(t, "ignored")
			es = logEvents(t, b.eng, s.ID, "charge")
		}
		var ignored storage.LogEntry
		for _, e := range es {
			if e.Event == storage.EventAnswerIgnored {
				ignored = e
			}
		}
		if ignored.Attempt != 1 || count(es, storage.EventAttemptFailed) != 1 {
			t.Errorf("charge's log %+v: want attempt 1 timed out and its late reply recorded as ignored", es)
		}
	})

	t.Run("replies for nothing", func(t *testing.T) {
		ch := brokertest.Channel(t, brokerURL)
		for _, m := range []amqp.Publishing{
			{CorrelationId: ulid.Make().String() + "/reserve/action/1", Headers: amqp.Table{"status": int32(200)}, Body: []byte(`{}`)},
			{CorrelationId: "not an attempt", Headers: amqp.Table{"status": int32(200)}},
			{CorrelationId: ulid.Make().String() + "/reserve/action/1", Body: []byte(`{}`)},
			{CorrelationId: ulid.Make().String() + "/reserve/action/1", Headers: amqp.Table{"status": int32(700)}},
		} {
			if err := ch.PublishWithContext(context.Background(), "", replyQueue, false, false, m); err != nil {
				t.Fatal(err)
			}
			rc.await(t, "rejected")
		}
	})

	t.Run("missing exchange", func(t *testing.T) {
		s := b.run(t, "nowhere", nil)
		if s.Status != saga.StatusCompensated || s.Steps[0].Attempts != 2 || !strings.Contains(s.Steps[0].Error, "NOT_FOUND") {
			t.Fatalf("saga %s %s, attempts %d, error %q: want both attempts failed for the missing exchange", s.ID, s.Status, s.Steps[0].Attempts, s.Steps[0].Error)
		}
	})

	t.Run("returned command", func(t *testing.T) {
		s := b.run(t, "lost", nil)
		if s.Status != saga.StatusCompensated || s.Steps[0].Attempts != 2 || !strings.Contains(s.Steps[0].Error, "did not deliver the command") {
			t.Fatalf("saga %s %s, attempts %d, error %q: want both attempts failed by the broker's return", s.ID, s.Status, s.Steps[0].Attempts, s.Steps[0].Error)
		}
	})
}

func correlations(ds []amqp.Delivery) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.CorrelationId
	}
	return out
}

// TestAMQPTraceContext: in a traced saga, each command carries the
// traceparent of its attempt's span as an AMQP header: the participant
// continues the saga's trace.
func TestAMQPTraceContext(t *testing.T) {
	t.Parallel()
	brokerURL := brokertest.URL(t)
	queue := brokertest.Name("test.shop")
	replyQueue := brokertest.Name("test.replies")
	p := newParticipant(t, brokerURL, queue, shop(nil))
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	b := setup(t, setupOpts{replies: true, defs: []*saga.Definition{orderSpec(t, "order", queue, "20s")},
		cfg: rabbitmq.Config{URL: brokerURL, ReplyQueue: replyQueue}, engine: engine.Options{TracerProvider: tp}})
	brokertest.DeleteQueue(t, brokerURL, replyQueue)
	s := b.run(t, "order", map[string]string{"charge": "ok"})
	if s.Status != saga.StatusCompleted || s.TraceID == "" {
		t.Fatalf("saga %s, trace %q: want completed, traced", s.Status, s.TraceID)
	}
	sent := map[string]tracetest.SpanStub{}
	for _, sp := range exp.GetSpans() {
		sent[sp.Name] = sp
	}
	cmds := p.commands(s.ID)
	if len(cmds) != 2 {
		t.Fatalf("participant got %d commands, want 2", len(cmds))
	}
	for i, step := range []string{"reserve", "charge"} {
		sp := sent[step+" action"]
		want := "00-" + s.TraceID + "-" + sp.SpanContext.SpanID().String() + "-01"
		if got := cmds[i].Headers["traceparent"]; got != want || sp.Parent.TraceID().String() != s.TraceID {
			t.Errorf("%s command: traceparent %v, want %s (its attempt's span)", step, got, want)
		}
		if o := attrValue(sp, "sagad.outcome"); o != "sent" {
			t.Errorf("%s attempt span outcome %q, want sent", step, o)
		}
	}
}

func attrValue(s tracetest.SpanStub, key string) string {
	for _, kv := range s.Attributes {
		if string(kv.Key) == key {
			return kv.Value.String()
		}
	}
	return ""
}

// TestAMQPStepBrokerDown: while the broker cannot be reached, commands that
// fall due wait in the outbox, and their sagas wait; once it is back, the
// commands go out and the sagas finish.
func TestAMQPStepBrokerDown(t *testing.T) {
	t.Parallel()
	brokerURL := brokertest.URL(t)
	proxy, viaProxy := tcpproxy.ForURL(t, brokerURL)
	queue := brokertest.Name("test.shop")
	replyQueue := brokertest.Name("test.replies")
	p := newParticipant(t, brokerURL, queue, shop(nil))
	down := make(chan struct{}, 1)
	b := setup(t, setupOpts{replies: true, defs: []*saga.Definition{orderSpec(t, "order", queue, "20s")},
		cfg: rabbitmq.Config{URL: viaProxy, ReplyQueue: replyQueue, ReconnectInitial: 20 * time.Millisecond, ReconnectMax: 200 * time.Millisecond,
			Hooks: rabbitmq.Hooks{Connection: func(up bool, err error) {
				if !up {
					select {
					case down <- struct{}{}:
					default:
					}
				}
			}}}})
	brokertest.DeleteQueue(t, brokerURL, replyQueue)
	b.run(t, "order", map[string]string{"charge": "ok"}) // everything is up

	proxy.Cut()
	select {
	case <-down:
	case <-time.After(10 * time.Second):
		t.Fatal("relay did not notice the cut connection")
	}
	const n = 20
	ids := make([]string, n)
	for i := range ids {
		st, err := b.eng.Start(context.Background(), "order", map[string]string{"charge": "ok"})
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = st.ID
	}
	st, err := b.eng.OutboxStats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Counts.New != n {
		t.Errorf("with the broker down the outbox holds %d new events, want the %d sagas' first commands", st.Counts.New, n)
	}
	for _, id := range ids {
		if s, err := b.eng.Get(context.Background(), id); err != nil || s.Status != saga.StatusRunning || !s.Steps[0].Waiting {
			t.Fatalf("saga %s during the outage: %+v %v, want running, reserve waiting", id, s, err)
		}
	}
	if err := proxy.Restore(); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		s, err := b.eng.Wait(ctx, id)
		cancel()
		if err != nil || s.Status != saga.StatusCompleted {
			t.Fatalf("saga %s after the outage: %v %v", id, s, err)
		}
		if cmds := p.commands(id); len(cmds) != 2 {
			t.Errorf("saga %s: participant got %v, want one command per step", id, correlations(cmds))
		}
	}
}

const amqpCrashEnv = "SAGAD_AMQP_CRASH_CHILD"

// The process dies (SIGKILL) at two points of a command's life, and
// restarts on the same file: after commands were recorded and before any
// was published, and after a participant's reply arrived and before its
// outcome was committed. Every saga finishes with one attempt per step:
// no command or reply was lost, and each command that went out twice went
// with the same message id and idempotency key.
func TestAMQPCrash(t *testing.T) {
	t.Parallel()
	for _, point := range []string{"recorded", "replied"} {
		t.Run(point, func(t *testing.T) {
			t.Parallel()
			brokerURL := brokertest.URL(t)
			queue := brokertest.Name("test.shop")
			replyQueue := brokertest.Name("test.replies")
			p := newParticipant(t, brokerURL, queue, shop(nil))
			brokertest.DeleteQueue(t, brokerURL, replyQueue)
			path := filepath.Join(t.TempDir(), "sagad.db")

			cmd := exec.Command(os.Args[0], "-test.run", "^TestAMQPCrashChild$", "-test.v")
			cmd.Env = append(os.Environ(), amqpCrashEnv+"="+point, "SAGAD_CRASH_DB="+path, "SAGAD_CRASH_AMQP="+brokerURL,
				"SAGAD_CRASH_QUEUE="+queue, "SAGAD_CRASH_REPLIES="+replyQueue)
			killAt(t, cmd, point)
			if point == "recorded" && len(p.commands("")) != 0 {
				t.Fatalf("the participant got %d commands from a child that ran no relay", len(p.commands("")))
			}

			b := setup(t, setupOpts{path: path, replies: true, defs: []*saga.Definition{orderSpec(t, "order", queue, "20s")},
				cfg: rabbitmq.Config{URL: brokerURL, ReplyQueue: replyQueue}})
			page, err := b.eng.List(context.Background(), engine.ListOptions{Limit: 1000})
			if err != nil {
				t.Fatal(err)
			}
			if len(page.Sagas) != amqpCrashSagas {
				t.Fatalf("%d sagas after the restart, want the %d the child started", len(page.Sagas), amqpCrashSagas)
			}
			dups := 0
			for _, sg := range page.Sagas {
				ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
				s, err := b.eng.Wait(ctx, sg.ID)
				cancel()
				if err != nil || s.Status != saga.StatusCompleted {
					t.Fatalf("saga %s after the restart: %+v %v", sg.ID, s, err)
				}
				for _, st := range s.Steps {
					if st.Attempts != 1 {
						t.Errorf("saga %s step %s took %d attempts, want 1: an answer was lost and the wait timed out", s.ID, st.Name, st.Attempts)
					}
				}
				first := map[string]amqp.Delivery{}
				for _, d := range p.commands(s.ID) {
					f, seen := first[d.CorrelationId]
					if !seen {
						first[d.CorrelationId] = d
						continue
					}
					dups++
					if d.MessageId != f.MessageId || d.Headers["Idempotency-Key"] != f.Headers["Idempotency-Key"] {
						t.Errorf("command %s went out again as message %s key %v, first as %s key %v", d.CorrelationId,
							d.MessageId, d.Headers["Idempotency-Key"], f.MessageId, f.Headers["Idempotency-Key"])
					}
				}
				if len(first) != 2 {
					t.Errorf("saga %s: commands %v, want reserve's and charge's", s.ID, correlations(p.commands(s.ID)))
				}
			}
			if point == "replied" && dups != 0 {
				t.Errorf("%d commands went out again after the restart, want none: every one was marked published before the crash", dups)
			}
			t.Logf("%d sagas finished after the crash; %d commands went out twice", len(page.Sagas), dups)
		})
	}
}

const amqpCrashSagas = 20

// TestAMQPCrashChild is the process TestAMQPCrash kills. "recorded": it
// runs no relay, and says so once every saga's first command is recorded.
// "replied": it runs the relay and Replies, and says so when the first
// reply arrives, which it then holds, with every later one, unrecorded.
func TestAMQPCrashChild(t *testing.T) {
	point := os.Getenv(amqpCrashEnv)
	if point == "" {
		t.Skip("run by TestAMQPCrash")
	}
	pending := make(chan engine.AttemptInfo, amqpCrashSagas)
	eng, err := engine.Open(os.Getenv("SAGAD_CRASH_DB"), engine.Options{Logger: quietLogger(),
		Hooks: engine.Hooks{AttemptPending: func(a engine.AttemptInfo) { pending <- a }}})
	if err != nil {
		t.Fatal(err)
	}
	if err := eng.Register(orderSpec(t, "order", os.Getenv("SAGAD_CRASH_QUEUE"), "20s")); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	go func() { _ = eng.Run(ctx) }()
	for range amqpCrashSagas {
		if _, err := eng.Start(ctx, "order", map[string]string{"charge": "ok"}); err != nil {
			t.Fatal(err)
		}
	}
	if point == "replied" {
		// Once a reply is held, the child dies as soon as every command is
		// marked published, so that none goes out again after the
		// restart: only the held replies, delivered again, can finish
		// the sagas.
		published := make(chan struct{}, 1)
		var once sync.Once
		rabbitmq.SetBeforeComplete(func(string) {
			once.Do(func() {
				for {
					st, err := eng.OutboxStats(ctx)
					if err != nil {
						panic(err)
					}
					if st.Counts.New == 0 {
						break
					}
					<-published
				}
				fmt.Println("replied")
			})
			select {} // until killed
		})
		cfg := rabbitmq.Config{URL: os.Getenv("SAGAD_CRASH_AMQP"), ReplyQueue: os.Getenv("SAGAD_CRASH_REPLIES"), Completer: eng, Logger: quietLogger(),
			Hooks: rabbitmq.Hooks{Published: func(int) {
				select {
				case published <- struct{}{}:
				default:
				}
			}}}
		relay, err := rabbitmq.New(eng.Store(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		replies, err := rabbitmq.NewReplies(cfg)
		if err != nil {
			t.Fatal(err)
		}
		go func() { _ = relay.Run(ctx) }()
		go func() { _ = replies.Run(ctx) }()
	}
	if point == "recorded" {
		for range amqpCrashSagas {
			<-pending
		}
		fmt.Println("recorded")
	}
	select {} // until killed
}

// A reply queue an operator declared with arguments of its own (a
// dead-letter exchange, the quorum type) is used as it is: neither the
// relay nor Replies declares it again with other arguments.
func TestAMQPReplyQueueWithArguments(t *testing.T) {
	t.Parallel()
	brokerURL := brokertest.URL(t)
	queue, replyQueue := brokertest.Name("test.shop"), brokertest.Name("test.replies")
	ch := brokertest.Channel(t, brokerURL)
	if _, err := ch.QueueDeclare(replyQueue, true, false, false, false, amqp.Table{
		"x-queue-type": "quorum", "x-dead-letter-exchange": "amq.fanout"}); err != nil {
		t.Fatal(err)
	}
	brokertest.DeleteQueue(t, brokerURL, replyQueue)
	newParticipant(t, brokerURL, queue, shop(nil))
	b := setup(t, setupOpts{replies: true, defs: []*saga.Definition{orderSpec(t, "order", queue, "20s")},
		cfg: rabbitmq.Config{URL: brokerURL, ReplyQueue: replyQueue}})
	if s := b.run(t, "order", map[string]string{"charge": "ok"}); s.Status != saga.StatusCompleted || s.Steps[0].Attempts != 1 {
		t.Fatalf("saga %s %s, reserve attempts %d: want completed at once", s.ID, s.Status, s.Steps[0].Attempts)
	}
}

// stuckCompleter refuses every answer as a saga another process holds.
type stuckCompleter struct{ calls chan bool }

func (c *stuckCompleter) Complete(_ context.Context, id, _ string, _ saga.Phase, _ int, _ engine.Result) (bool, error) {
	c.calls <- true
	return false, errors.Wrapf(engine.ErrConflict, "saga %s is being driven by another process", id)
}

// A reply that cannot be recorded is held for a few tries, then given
// back to the queue, and delivered again; Run returns at once when it is
// stopped, even while a reply is held.
func TestRepliesGiveBackWhatTheyCannotRecord(t *testing.T) {
	t.Parallel()
	brokerURL := brokertest.URL(t)
	replyQueue := brokertest.Name("test.replies")
	brokertest.DeleteQueue(t, brokerURL, replyQueue)
	c := &stuckCompleter{calls: make(chan bool, 64)}
	rec := &logRecorder{}
	r, err := rabbitmq.NewReplies(rabbitmq.Config{URL: brokerURL, ReplyQueue: replyQueue, Completer: c, Logger: slog.New(rec)})
	if err != nil {
		t.Fatal(err)
	}
	// The reply waits in the queue before Replies runs.
	ch := brokertest.Channel(t, brokerURL)
	if _, err := ch.QueueDeclare(replyQueue, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	err = ch.PublishWithContext(ctx, "", replyQueue, false, false, amqp.Publishing{
		CorrelationId: ulid.Make().String() + "/reserve/action/1", Headers: amqp.Table{"status": int32(200)}})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	// Ten tries, given back, then offered again.
	for i := range 11 {
		select {
		case <-c.calls:
		case <-time.After(10 * time.Second):
			t.Fatalf("the reply was offered %d times, want it offered again after %d", i, 10)
		}
	}
	// The eleventh offer is a new delivery: the first was given back.
	if back := rec.lines("replies: could not record a reply; it goes back to the queue"); len(back) != 1 {
		t.Errorf("%d lines saying the reply went back to the queue after its tries, want 1", len(back))
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("Run did not return while a reply was held")
	}
}
