package main

import (
	"testing"

	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/sagatest"
)

// TestExplore crashes the order saga's engine at every durable point,
// before and after the write, for an order that completes, one whose card
// is declined and one the backup carrier ships, and checks every run: the
// explorer's properties, and the participants' books afterwards (charged
// once or not at all, stock taken or given back).
func TestExplore(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		order Order
		want  saga.Status
		// points are the saga's durable points: its creation, each
		// outcome with the next attempt's start, its end.
		points int
		// stock is the SKU's stock after the saga (10 before).
		stock, charged, charges int
	}{
		{name: "completes", want: saga.StatusCompleted, points: 4, stock: 8, charged: 3998, charges: 1,
			order: Order{ID: "A-1001", Customer: "ada", SKU: "book", Qty: 2, Amount: 3998, Card: "4242424242424242", Country: "FR"}},
		{name: "card declined", want: saga.StatusCompensated, points: 4, stock: 10,
			order: Order{ID: "B-1002", Customer: "bob", SKU: "book", Qty: 1, Amount: 2500, Card: "4000000000000002", Country: "DE"}},
		// The primary carrier's refusal is a point of its own.
		{name: "backup carrier", want: saga.StatusCompleted, points: 5, stock: 9, charged: 4200, charges: 1,
			order: Order{ID: "D-1004", Customer: "dag", SKU: "book", Qty: 1, Amount: 4200, Card: "4242424242424242", Country: "IS"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var runs []*services // one per run, in the report's order
			r := sagatest.Explore(t, sagatest.Exploration{
				Definition: func() *saga.Definition {
					// As run builds them: fresh participants for every run.
					svc := &services{
						inv:     newInventory(map[string]int{"book": 10}),
						pay:     newPayments(),
						primary: &carrier{name: "swiftship", refuse: map[string]bool{"IS": true}, byKey: map[string]Shipment{}},
						backup:  &carrier{name: "postal", byKey: map[string]Shipment{}},
					}
					runs = append(runs, svc)
					return orderSaga(svc)
				},
				Input: tc.order,
			})
			if r.Reference.Status != tc.want {
				t.Fatalf("the run without a crash ended %s, want %s", r.Reference.Status, tc.want)
			}
			if len(r.Points) != tc.points || len(r.Runs) != 2*tc.points {
				t.Errorf("%d points and %d runs with a crash, want %d and %d; points: %v",
					len(r.Points), len(r.Runs), tc.points, 2*tc.points, r.Points)
			}
			all := append([]sagatest.Run{r.Reference}, r.Runs...)
			if len(runs) != len(all) {
				t.Fatalf("%d definitions for %d runs", len(runs), len(all))
			}
			for i, run := range all {
				if !run.Crashed && run.Kind != "" {
					t.Errorf("%s: the run did not crash", run)
				}
				svc := runs[i]
				stock, charged, charges := tc.stock, tc.charged, tc.charges
				if run.Status == "" { // crashed before the saga was created
					stock, charged, charges = 10, 0, 0
				}
				if got := svc.inv.Stock("book"); got != stock {
					t.Errorf("%s: book stock %d, want %d", run, got, stock)
				}
				if a, n := svc.pay.Charged(tc.order.ID); a != charged || n != charges {
					t.Errorf("%s: %d charges totalling %d cents, want %d totalling %d", run, n, a, charges, charged)
				}
			}
		})
	}
}
