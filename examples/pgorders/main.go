// Command pgorders shows sagad on PostgreSQL inside an application's own
// transactions:
//
//	go run ./examples/pgorders     # PostgreSQL at SAGAD_POSTGRES_URL, or postgres://postgres@127.0.0.1:5432/postgres
//
// An order service writes its order row and its order.created event in one
// transaction (postgres.DB.Add): the event is published if and only if the
// order exists. Then a payment saga debits the customer's balance in a step
// whose write commits together with the step's success (postgres.DB.Step),
// so the balance is debited exactly once however often the step runs; an
// order the balance cannot pay for is refused, and nothing is debited.
//
// Everything lives in a schema of its own (pgorders_example), dropped at
// exit unless -keep is given. With -amqp-url the outbox relay publishes the
// events to RabbitMQ. It exits with status 1 if an outcome is not the
// expected one, so it doubles as a smoke test.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/cockroachdb/errors"
	"github.com/jackc/pgx/v5"

	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage/postgres"
	"github.com/sagad/sagad/transport/rabbitmq"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "pgorders:", err)
		os.Exit(1)
	}
}

func run(args []string, out io.Writer) error {
	url := os.Getenv("SAGAD_POSTGRES_URL")
	if url == "" {
		url = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
	}
	fs := flag.NewFlagSet("pgorders", flag.ContinueOnError)
	schema := fs.String("schema", "pgorders_example", "schema for sagad's and the example's tables")
	keep := fs.Bool("keep", false, "keep the schema at exit")
	amqpURL := fs.String("amqp-url", "", "RabbitMQ URL: publish the outbox's events")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	db, err := postgres.Open(ctx, url, &postgres.Options{Schema: *schema})
	if err != nil {
		return err
	}
	defer db.Close()
	if !*keep {
		defer func() {
			_, _ = db.Pool().Exec(context.Background(), "DROP SCHEMA "+pgx.Identifier{*schema}.Sanitize()+" CASCADE")
		}()
	}
	orders, balances := pgx.Identifier{*schema, "orders"}.Sanitize(), pgx.Identifier{*schema, "balances"}.Sanitize()
	if _, err := db.Pool().Exec(ctx, "CREATE TABLE IF NOT EXISTS "+orders+" (id text PRIMARY KEY, customer text NOT NULL, total int NOT NULL);"+
		"CREATE TABLE IF NOT EXISTS "+balances+" (customer text PRIMARY KEY, amount int NOT NULL);"+
		"INSERT INTO "+balances+" VALUES ('ada', 100) ON CONFLICT (customer) DO UPDATE SET amount = 100"); err != nil {
		return errors.Wrap(err, "create the example's tables")
	}

	// The order service: its row and its event, in one transaction.
	placeOrder := func(id, customer string, total int) error {
		return pgx.BeginFunc(ctx, db.Pool(), func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "INSERT INTO "+orders+" VALUES ($1, $2, $3)", id, customer, total); err != nil {
				return err
			}
			payload, _ := json.Marshal(map[string]any{"order": id, "customer": customer, "total": total})
			_, err := db.Add(ctx, tx, postgres.Event{Name: "order.created", Payload: payload, Stream: "order-" + id})
			return err
		})
	}

	// The payment saga: the debit commits with the step's success.
	type order struct {
		ID       string `json:"id"`
		Customer string `json:"customer"`
		Total    int    `json:"total"`
	}
	debit := db.Step(func(ctx context.Context, tx pgx.Tx, c *saga.Call) (json.RawMessage, error) {
		var o order
		if err := c.DecodeInput(&o); err != nil {
			return nil, saga.Permanent(err)
		}
		tag, err := tx.Exec(ctx, "UPDATE "+balances+" SET amount = amount - $2 WHERE customer = $1 AND amount >= $2", o.Customer, o.Total)
		if err != nil {
			return nil, err
		}
		if tag.RowsAffected() == 0 {
			return nil, saga.Permanent(errors.Newf("customer %s cannot pay %d", o.Customer, o.Total))
		}
		return json.Marshal(map[string]int{"debited": o.Total})
	})
	eng, err := engine.New(db, engine.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return err
	}
	if err := eng.Register(&saga.Definition{Name: "pay", Events: saga.Events{Lifecycle: true}, Steps: []saga.Step{{Name: "debit", Action: debit}}}); err != nil {
		return err
	}
	go func() { _ = eng.Run(ctx) }()
	if *amqpURL != "" {
		relay, err := rabbitmq.New(db, rabbitmq.Config{URL: *amqpURL, Exchange: "pgorders.events"})
		if err != nil {
			return err
		}
		go func() { _ = relay.Run(ctx) }()
	}

	ok := true
	for _, o := range []order{{"A-1", "ada", 60}, {"A-2", "ada", 60}} {
		if err := placeOrder(o.ID, o.Customer, o.Total); err != nil {
			return err
		}
		st, err := eng.Start(ctx, "pay", o, engine.WithIdempotencyKey("pay-"+o.ID))
		if err != nil {
			return err
		}
		s, err := eng.Wait(ctx, st.ID)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "order %s (%d): payment saga %s", o.ID, o.Total, s.Status)
		if s.Err != nil {
			fmt.Fprintf(out, ": %v", s.Err)
		}
		fmt.Fprintln(out)
		want := saga.StatusCompleted
		if o.ID == "A-2" {
			want = saga.StatusCompensated
		}
		ok = ok && s.Status == want
	}
	var left int
	if err := db.Pool().QueryRow(ctx, "SELECT amount FROM "+balances+" WHERE customer = 'ada'").Scan(&left); err != nil {
		return err
	}
	counts, _, _, err := db.OutboxStats(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "ada's balance: %d (100, less the one order it could pay for)\n", left)
	fmt.Fprintf(out, "outbox: %d events new, %d published (2 order.created, and each saga's lifecycle)\n", counts.New, counts.Produced)
	if !ok || left != 40 {
		return errors.New("an outcome is not the expected one")
	}
	return nil
}
