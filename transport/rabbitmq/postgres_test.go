package rabbitmq_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sagad/sagad/internal/brokertest"
	"github.com/sagad/sagad/internal/pgtest"
	"github.com/sagad/sagad/storage/postgres"
	"github.com/sagad/sagad/transport/rabbitmq"
)

// An application writes its own row and an event in one transaction of
// its own (postgres.DB.Add): a transaction rolled back emits nothing; a
// committed one is published once, with the id Add returned, in order
// within its stream.
func TestRelayPublishesApplicationEvents(t *testing.T) {
	t.Parallel()
	brokerURL := brokertest.URL(t)
	dbURL := pgtest.URL(t)
	schema := pgtest.Schema(t, dbURL)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	db, err := postgres.Open(ctx, dbURL, &postgres.Options{Schema: schema, PollInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	orders := pgx.Identifier{schema, "orders"}.Sanitize()
	if _, err := db.Pool().Exec(ctx, "CREATE TABLE "+orders+" (id text PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	exchange := brokertest.Name("test.app")
	sink := brokertest.NewSink(t, brokerURL, exchange, "#")
	relay, err := rabbitmq.New(db, rabbitmq.Config{URL: brokerURL, Exchange: exchange, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- relay.Run(ctx) }()

	order := func(id string, commit bool) []string {
		tx, err := db.Pool().Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = tx.Rollback(ctx) }()
		if _, err := tx.Exec(ctx, "INSERT INTO "+orders+" (id) VALUES ($1)", id); err != nil {
			t.Fatal(err)
		}
		payload, _ := json.Marshal(map[string]string{"order": id})
		ids, err := db.Add(ctx, tx,
			postgres.Event{Name: "order.created", Payload: payload, Stream: "order-" + id},
			postgres.Event{Name: "order.priced", Payload: payload, Stream: "order-" + id, Headers: map[string]string{"currency": "EUR"}})
		if err != nil {
			t.Fatal(err)
		}
		if commit {
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
		}
		return []string{ids[0].String(), ids[1].String()}
	}
	if _, err := db.Add(ctx, nil); err != nil {
		t.Fatalf("adding no events: %v", err)
	}
	rolledBack := order("A-1", false)
	committed := order("A-2", true)

	deadline := time.After(20 * time.Second)
	for {
		st, _, _, err := db.OutboxStats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.New == 0 && st.Produced == 2 {
			break
		}
		select {
		case <-deadline:
			t.Fatalf("outbox %+v after 20s, want the committed order's 2 events produced", st)
		case <-time.After(20 * time.Millisecond): // the relay's marks have no signal here
		}
	}
	sink.Marker(t, "marker-1")
	got := sink.Collect(t, "marker-1", 20*time.Second)
	if len(got) != 2 || got[0].MessageId != committed[0] || got[1].MessageId != committed[1] ||
		got[0].Type != "order.created" || got[1].Headers["currency"] != "EUR" {
		t.Fatalf("delivered %d messages (%v), want the committed order's two, in order, with ids %v", len(got), got, committed)
	}
	for _, d := range got {
		for _, id := range rolledBack {
			if d.MessageId == id {
				t.Fatalf("an event of a rolled-back transaction was published: %s", id)
			}
		}
		if d.Headers["x-saga-id"] != postgres.StreamID("order-A-2").String() {
			t.Errorf("x-saga-id %v, want the stream's id", d.Headers["x-saga-id"])
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
