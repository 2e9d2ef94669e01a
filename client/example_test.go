package client_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/sagad/sagad/client"
)

// Register a definition with a running daemon, start a saga and wait for
// its end.
func Example() {
	ctx := context.Background()
	c, err := client.New("http://127.0.0.1:8080", os.Getenv("SAGAD_TOKEN"), nil)
	if err != nil {
		log.Fatal(err)
	}
	spec, err := os.ReadFile("examples/definitions/order.json")
	if err != nil {
		log.Fatal(err)
	}
	if _, err := c.PutDefinition(ctx, "order", spec); err != nil {
		log.Fatal(err)
	}
	res, err := c.Start(ctx, "order", map[string]string{"order": "A-1042"},
		client.StartOptions{IdempotencyKey: "order-A-1042", Wait: 5 * time.Second})
	if err != nil {
		log.Fatal(err) // a *client.Problem when the daemon refused
	}
	s := res.Saga
	if s == nil { // not ended within Wait
		if s, err = c.Wait(ctx, res.ID); err != nil {
			log.Fatal(err)
		}
	}
	fmt.Println(s.ID, s.Status, s.Error)
}
