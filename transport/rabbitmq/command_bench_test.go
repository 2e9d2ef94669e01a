package rabbitmq_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/internal/brokertest"
	"github.com/sagad/sagad/internal/sagaload"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/transport/rabbitmq"
)

// BenchmarkAMQPStep runs sagas of three AMQP steps, durably (fsync on),
// answered by a participant in the test through the same broker, at c=64
// and c=1024: each step is a command the relay publishes with confirms and
// a reply Replies records. It reports sagas/s and the Start-to-finished
// latency, and, measured in the same run, what a plain confirmed publisher
// reaches (BenchmarkRelay's raw rate) for as many messages as the sagas
// sent commands:
//
//	go test ./transport/rabbitmq -run '^$' -bench BenchmarkAMQPStep -benchtime 10000x
func BenchmarkAMQPStep(b *testing.B) {
	for _, c := range []int{64, 1024} {
		b.Run(fmt.Sprintf("c=%d", c), func(b *testing.B) { benchAMQPSteps(b, c) })
	}
}

func benchAMQPSteps(b *testing.B, conc int) {
	url := brokertest.URL(b)
	queue, replyQueue := brokertest.Name("bench.shop"), brokertest.Name("bench.replies")
	exchange := brokertest.Name("bench.raw")
	benchQueue(b, url, exchange, queue, "order.placed")
	brokertest.DeleteQueue(b, url, replyQueue)
	participate(b, url, queue)

	def := specDef(b, "shop", fmt.Sprintf(`{"steps": [
		{"name": "reserve", "action": {"amqp": {"routing_key": %[1]q}}},
		{"name": "charge", "action": {"amqp": {"routing_key": %[1]q}}},
		{"name": "ship", "action": {"amqp": {"routing_key": %[1]q}}}]}`, queue))
	eng, err := engine.Open(filepath.Join(b.TempDir(), "sagad.db"), engine.Options{Logger: quietLogger(), Concurrency: max(conc, 1024)})
	if err != nil {
		b.Fatal(err)
	}
	defer eng.Close()
	if err := eng.Register(def); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	cfg := rabbitmq.Config{URL: url, ReplyQueue: replyQueue, Completer: eng, Window: benchWindow, Logger: quietLogger()}
	relay, err := rabbitmq.New(eng.Store(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	replies, err := rabbitmq.NewReplies(cfg)
	if err != nil {
		b.Fatal(err)
	}
	for _, run := range []func(context.Context) error{eng.Run, relay.Run, replies.Run} {
		wg.Add(1)
		go func() { defer wg.Done(); _ = run(ctx) }()
	}
	b.ResetTimer()
	r := sagaload.Run(ctx, b, eng, conc, b.N, "shop", func(int) (any, saga.Status) { return nil, saga.StatusCompleted })
	b.StopTimer()
	// The raw rate, for as many messages as the sagas sent commands, to the
	// participant's queue (purged after: the participant ignores them).
	raw := rawPublish(b, url, exchange, 3*b.N, []byte(`{"order":"A-1042"}`))
	b.ReportMetric(0, "ns/op")
	sagas := float64(b.N) / r.Elapsed.Seconds()
	b.ReportMetric(sagas, "sagas/s")
	b.ReportMetric(3*sagas, "commands/s")
	b.ReportMetric(float64(r.Quantile(0.5))/1e6, "p50-ms")
	b.ReportMetric(float64(r.Quantile(0.99))/1e6, "p99-ms")
	b.ReportMetric(float64(r.CPU.Microseconds())/float64(b.N), "cpu-us/saga")
	b.ReportMetric(raw, "raw-msgs/s")
	b.ReportMetric(3*sagas/raw, "ratio")
}

// participate answers every command on queue at once, 200 with a small
// body, until the benchmark ends. Raw messages (no reply_to) are dropped.
func participate(b *testing.B, url, queue string) {
	conn, err := amqp.Dial(url)
	if err != nil {
		b.Fatal(err)
	}
	ch, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	if err := ch.Qos(1024, 0, false); err != nil {
		b.Fatal(err)
	}
	ds, err := ch.Consume(queue, "", false, false, false, false, nil)
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for d := range ds {
			if d.ReplyTo != "" {
				err := ch.Publish("", d.ReplyTo, false, false, amqp.Publishing{CorrelationId: d.CorrelationId,
					ContentType: "application/json", DeliveryMode: amqp.Persistent, Timestamp: time.Now(),
					Headers: amqp.Table{"status": int32(200)}, Body: []byte(`{"ok":true}`)})
				if err != nil {
					return
				}
			}
			_ = d.Ack(false)
		}
	}()
	b.Cleanup(func() {
		_ = conn.Close()
		<-done
	})
}
