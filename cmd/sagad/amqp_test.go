package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sagad/sagad/client"
	"github.com/sagad/sagad/internal/brokertest"
)

// scrape returns the value of an unlabelled series, or of one with the
// given labels ({result="applied"}), in the daemon's /metrics.
func scrape(t *testing.T, addr, series string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindSubmatch(body)
	if m == nil {
		t.Fatalf("/metrics has no %s:\n%s", series, body)
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// The daemon with --amqp-url runs AMQP steps end to end: it sends the
// command through its relay with --reply-queue as reply_to, /metrics shows
// the step waiting, and the participant's reply, read by the daemon's
// reply consumer, finishes the saga.
func TestDaemonAMQPStep(t *testing.T) {
	t.Parallel()
	brokerURL := brokertest.URL(t)
	queue, replyQueue := brokertest.Name("test.daemon.shop"), brokertest.Name("test.daemon.replies")
	ch := brokertest.Channel(t, brokerURL)
	if _, err := ch.QueueDeclare(queue, false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	commands, err := ch.Consume(queue, "", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	brokertest.DeleteQueue(t, brokerURL, replyQueue)

	d := startDaemon(t, filepath.Join(t.TempDir(), "sagad.db"), "--amqp-url", brokerURL, "--reply-queue", replyQueue)
	c := d.client(t)
	ctx := context.Background()
	spec := fmt.Sprintf(`{"steps":[{"name":"reserve","action":{"amqp":{"exchange":"","routing_key":%q,"timeout":"1m"}}}]}`, queue)
	if _, err := c.PutDefinition(ctx, "shop", []byte(spec)); err != nil {
		t.Fatal(err)
	}
	res, err := c.Start(ctx, "shop", map[string]int{"sku": 7}, client.StartOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var cmd amqp.Delivery
	select {
	case cmd = <-commands:
	case <-time.After(20 * time.Second):
		t.Fatalf("no command came\n%s", d.output())
	}
	if cmd.ReplyTo != replyQueue || cmd.CorrelationId != res.ID+"/reserve/action/1" || cmd.Headers["X-Saga-Attempt"] != "1" {
		t.Fatalf("command reply_to %q correlation %q headers %v", cmd.ReplyTo, cmd.CorrelationId, cmd.Headers)
	}
	if n := scrape(t, d.addr, "sagad_steps_waiting"); n != 1 {
		t.Errorf("sagad_steps_waiting = %v while reserve waits, want 1", n)
	}
	if age := scrape(t, d.addr, "sagad_step_wait_oldest_seconds"); age <= 0 || age > 60 {
		t.Errorf("sagad_step_wait_oldest_seconds = %v, want the wait's age", age)
	}
	err = ch.PublishWithContext(ctx, "", cmd.ReplyTo, false, false, amqp.Publishing{CorrelationId: cmd.CorrelationId,
		Headers: amqp.Table{"status": int32(200)}, Body: []byte(`{"hold": 1}`)})
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	s, err := c.Wait(wctx, res.ID)
	cancel()
	if err != nil || s.Status != "completed" || string(s.Data["reserve"]) != `{"hold":1}` {
		t.Fatalf("after the reply: %+v (%v)\n%s", s, err, d.output())
	}
	if n := scrape(t, d.addr, `sagad_replies_total{result="applied"}`); n != 1 {
		t.Errorf(`sagad_replies_total{result="applied"} = %v, want 1`, n)
	}
}
