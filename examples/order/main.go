// Command order runs an order saga (reserve stock, charge the card, ship)
// on sagad, end to end, against in-memory stand-ins for an inventory, a
// payment service and two carriers. No broker or server is needed:
//
//	go run ./examples/order
//
// It runs four orders at once and prints what happened to each:
//
//	(a) an order that completes;
//	(b) an order whose card is declined (a permanent error): nothing is
//	    retried, the stock is released, and the saga's step log is printed
//	    as a timeline;
//	(c) an order whose payment service first times out, then drops its
//	    reply after charging: the charge is retried with backoff and, thanks
//	    to the idempotency key, the customer is charged once;
//	(d) an order to a country the primary carrier does not serve: the ship
//	    step falls back to a backup carrier.
//
// It exits with status 1 if any outcome is not the expected one, so it
// doubles as a smoke test. The database is ./order-example.db unless -db
// says otherwise; it is removed at exit unless -keep is given.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/cockroachdb/errors"

	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/steps"
	"github.com/sagad/sagad/storage"
)

func main() {
	dbPath := flag.String("db", "order-example.db", "database `file`")
	keep := flag.Bool("keep", false, "keep the database file at exit")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// Only remove a file this run created: a kept file from an earlier run
	// is the user's.
	_, statErr := os.Stat(*dbPath)
	created := errors.Is(statErr, os.ErrNotExist)

	err := run(ctx, *dbPath, os.Stdout)
	interrupted := ctx.Err() != nil
	stop()
	if created && !*keep {
		_ = os.Remove(*dbPath)
	} else if *keep {
		fmt.Printf("database kept at %s\n", *dbPath)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "order: %v\n", err)
		if h := errors.FlattenHints(err); h != "" {
			fmt.Fprintf(os.Stderr, "hint: %s\n", h)
		}
		if interrupted {
			os.Exit(130)
		}
		os.Exit(1)
	}
}

// Order is the saga's input.
type Order struct {
	ID       string `json:"id"`
	Customer string `json:"customer"`
	SKU      string `json:"sku"`
	Qty      int    `json:"qty"`
	Amount   int    `json:"amount_cents"`
	Card     string `json:"card"`
	Country  string `json:"country"`
}

// Reservation is the reserve step's output.
type Reservation struct {
	ID  string `json:"id"`
	SKU string `json:"sku"`
	Qty int    `json:"qty"`
}

// Charge is the charge step's output.
type Charge struct {
	ID     string `json:"id"`
	Order  string `json:"order"`
	Amount int    `json:"amount_cents"`
}

// Shipment is the ship step's output.
type Shipment struct {
	Carrier  string `json:"carrier"`
	Tracking string `json:"tracking"`
}

var errDeclined = errors.New("payments: card declined")

// inventory is an in-memory stock service. Reserve is idempotent by key and
// Release by reservation, so retries and re-runs after a crash are safe.
type inventory struct {
	mu       sync.Mutex
	stock    map[string]int
	byKey    map[string]Reservation
	released map[string]bool
}

func newInventory(stock map[string]int) *inventory {
	return &inventory{stock: stock, byKey: map[string]Reservation{}, released: map[string]bool{}}
}

func (inv *inventory) Reserve(key, sku string, qty int) (Reservation, error) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if r, ok := inv.byKey[key]; ok {
		return r, nil
	}
	if have := inv.stock[sku]; have < qty {
		return Reservation{}, saga.Permanent(errors.Newf("inventory: %d %s wanted, %d in stock", qty, sku, have))
	}
	inv.stock[sku] -= qty
	r := Reservation{ID: fmt.Sprintf("res-%d", len(inv.byKey)+1), SKU: sku, Qty: qty}
	inv.byKey[key] = r
	return r, nil
}

func (inv *inventory) Release(r Reservation) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if !inv.released[r.ID] {
		inv.released[r.ID] = true
		inv.stock[r.SKU] += r.Qty
	}
}

func (inv *inventory) Stock(sku string) int {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	return inv.stock[sku]
}

// fault is a failure the payment service is told to simulate.
type fault int

const (
	faultNone fault = iota
	// faultSlow: the service does not answer before the attempt times out.
	faultSlow
	// faultLostReply: the service charges the card, but the connection drops
	// before the reply arrives.
	faultLostReply
)

// payments is an in-memory payment service. Charge is idempotent by key: a
// retry of a charge that went through returns the same charge.
type payments struct {
	mu      sync.Mutex
	ledger  []Charge          // every charge made, in order
	byKey   map[string]Charge // the charge made for an idempotency key
	refunds map[string]bool
	faults  map[string][]fault // by order id, in the order they happen
}

func newPayments() *payments {
	return &payments{byKey: map[string]Charge{}, refunds: map[string]bool{}, faults: map[string][]fault{}}
}

func (p *payments) Charge(ctx context.Context, key string, o Order) (Charge, error) {
	p.mu.Lock()
	f := faultNone
	if fs := p.faults[o.ID]; len(fs) > 0 {
		f, p.faults[o.ID] = fs[0], fs[1:]
	}
	p.mu.Unlock()
	if f == faultSlow {
		<-ctx.Done()
		return Charge{}, errors.Wrap(ctx.Err(), "payments: no answer")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.byKey[key]; ok {
		return c, nil
	}
	if strings.HasSuffix(o.Card, "0002") {
		return Charge{}, saga.Permanent(errDeclined)
	}
	c := Charge{ID: fmt.Sprintf("ch-%d", len(p.ledger)+1), Order: o.ID, Amount: o.Amount}
	p.ledger = append(p.ledger, c)
	p.byKey[key] = c
	if f == faultLostReply {
		return Charge{}, errors.New("payments: connection reset before the reply")
	}
	return c, nil
}

// inject makes the next calls for order fail with faults, in order.
func (p *payments) inject(order string, faults ...fault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.faults[order] = append(p.faults[order], faults...)
}

func (p *payments) Refund(c Charge) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refunds[c.ID] = true
}

// Charged returns the amount charged, less refunds, and the number of
// charges for an order.
func (p *payments) Charged(order string) (amount, charges int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.ledger {
		if c.Order == order && !p.refunds[c.ID] {
			amount += c.Amount
			charges++
		}
	}
	return amount, charges
}

// carrier is an in-memory shipping service that serves some countries.
type carrier struct {
	name   string
	refuse map[string]bool // countries it does not deliver to

	mu    sync.Mutex
	byKey map[string]Shipment
}

func (c *carrier) Ship(key string, o Order) (Shipment, error) {
	if c.refuse[o.Country] {
		return Shipment{}, saga.Permanent(errors.Newf("%s: no delivery to %s", c.name, o.Country))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, ok := c.byKey[key]; ok {
		return s, nil
	}
	s := Shipment{Carrier: c.name, Tracking: fmt.Sprintf("%s-%s", strings.ToUpper(c.name[:3]), o.ID)}
	c.byKey[key] = s
	return s, nil
}

// services are the participants of the order saga.
type services struct {
	inv             *inventory
	pay             *payments
	primary, backup *carrier
}

// orderSaga defines the order saga over svc.
func orderSaga(svc *services) *saga.Definition {
	// Fast enough for a demo; a real payment service would get seconds.
	retry := saga.RetryPolicy{MaxAttempts: 5, InitialInterval: 50 * time.Millisecond, MaxInterval: time.Second, Jitter: 0.2}
	none := struct{}{}
	return &saga.Definition{
		Name:    "order",
		Timeout: time.Minute,
		Steps: []saga.Step{
			{
				Name: "reserve",
				Action: steps.Typed(func(ctx context.Context, c *saga.Call, o Order) (Reservation, error) {
					return svc.inv.Reserve(c.IdempotencyKey, o.SKU, o.Qty)
				}),
				Compensation: steps.Typed(func(ctx context.Context, c *saga.Call, o Order) (struct{}, error) {
					var r Reservation
					if err := c.Output("reserve", &r); err != nil {
						return none, saga.Permanent(err)
					}
					svc.inv.Release(r)
					return none, nil
				}),
				Retry:   retry,
				Timeout: time.Second,
			},
			{
				Name: "charge",
				Action: steps.Typed(func(ctx context.Context, c *saga.Call, o Order) (Charge, error) {
					return svc.pay.Charge(ctx, c.IdempotencyKey, o)
				}),
				Compensation: steps.Typed(func(ctx context.Context, c *saga.Call, o Order) (struct{}, error) {
					var ch Charge
					if err := c.Output("charge", &ch); err != nil {
						return none, saga.Permanent(err)
					}
					svc.pay.Refund(ch)
					return none, nil
				}),
				Retry:   retry,
				Timeout: 300 * time.Millisecond,
				// Five timeouts or errors in a row, from any saga, and the
				// payment service is left alone for 10s.
				Breaker: saga.BreakerPolicy{Name: "payments", Failures: 5, OpenFor: 10 * time.Second},
			},
			{
				Name: "ship",
				Action: steps.Typed(func(ctx context.Context, c *saga.Call, o Order) (Shipment, error) {
					return svc.primary.Ship(c.IdempotencyKey, o)
				}),
				Fallback: steps.Typed(func(ctx context.Context, c *saga.Call, o Order) (Shipment, error) {
					return svc.backup.Ship(c.IdempotencyKey, o)
				}),
				Retry:   retry,
				Timeout: time.Second,
			},
		},
	}
}

// scenario is one order and what must become of it.
type scenario struct {
	label, title string
	order        Order
	faults       []fault
	timeline     bool
	// check returns what is not as expected, given the finished saga.
	check func(s *engine.Saga) []string
}

func scenarios(svc *services) []scenario {
	stock := func(sku string) int { return svc.inv.Stock(sku) }
	return []scenario{
		{
			label: "(a)", title: "an order that completes",
			order: Order{ID: "A-1001", Customer: "ada", SKU: "book", Qty: 2, Amount: 3998, Card: "4242424242424242", Country: "FR"},
			check: func(s *engine.Saga) []string {
				return expect(s, saga.StatusCompleted, "reserve succeeded 1", "charge succeeded 1", "ship succeeded 1").
					that(stock("book") == 8, "book stock is %d, want 8", stock("book")).
					charged(svc.pay, "A-1001", 3998, 1)
			},
		},
		{
			label: "(b)", title: "the card is declined: nothing is retried, the stock is released", timeline: true,
			order: Order{ID: "B-1002", Customer: "bob", SKU: "lamp", Qty: 1, Amount: 2500, Card: "4000000000000002", Country: "DE"},
			check: func(s *engine.Saga) []string {
				return expect(s, saga.StatusCompensated, "reserve compensated 1", "charge failed 1", "ship skipped 0").
					that(saga.IsPermanent(s.Err), "saga error %v is not marked permanent", s.Err).
					that(errors.Is(s.Err, errDeclined), "saga error %v is not %v", s.Err, errDeclined).
					that(stock("lamp") == 5, "lamp stock is %d, want 5 (released)", stock("lamp")).
					charged(svc.pay, "B-1002", 0, 0)
			},
		},
		{
			label: "(c)", title: "the payment service times out, then loses its reply: retried, charged once", timeline: true,
			order:  Order{ID: "C-1003", Customer: "cy", SKU: "mug", Qty: 3, Amount: 1797, Card: "5555555555554444", Country: "IT"},
			faults: []fault{faultSlow, faultLostReply},
			check: func(s *engine.Saga) []string {
				return expect(s, saga.StatusCompleted, "reserve succeeded 1", "charge succeeded 3", "ship succeeded 1").
					charged(svc.pay, "C-1003", 1797, 1)
			},
		},
		{
			label: "(d)", title: "the primary carrier does not deliver to Iceland: the backup carrier ships",
			order: Order{ID: "D-1004", Customer: "dag", SKU: "kite", Qty: 1, Amount: 4200, Card: "4242424242424242", Country: "IS"},
			check: func(s *engine.Saga) []string {
				var sh Shipment
				_ = json.Unmarshal(s.Data["ship"], &sh)
				return expect(s, saga.StatusCompleted, "reserve succeeded 1", "charge succeeded 1", "ship succeeded 1").
					that(len(s.Steps) == 3 && s.Steps[2].FallbackUsed, "ship did not use its fallback").
					that(sh.Carrier == svc.backup.name, "shipped by %q, want %q", sh.Carrier, svc.backup.name).
					charged(svc.pay, "D-1004", 4200, 1)
			},
		},
	}
}

// run opens an engine on dbPath, runs every scenario, writes a report to out,
// and returns an error if any outcome is not the expected one.
func run(ctx context.Context, dbPath string, out io.Writer) (err error) {
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	eng, err := engine.Open(dbPath, engine.Options{Logger: logger, ShutdownGrace: 2 * time.Second})
	if err != nil {
		return err
	}
	svc := &services{
		inv:     newInventory(map[string]int{"book": 10, "lamp": 5, "mug": 6, "kite": 2}),
		pay:     newPayments(),
		primary: &carrier{name: "swiftship", refuse: map[string]bool{"IS": true}, byKey: map[string]Shipment{}},
		backup:  &carrier{name: "postal", byKey: map[string]Shipment{}},
	}
	if err := eng.Register(orderSaga(svc)); err != nil {
		return errors.CombineErrors(err, eng.Close())
	}

	runCtx, stopRun := context.WithCancel(ctx)
	runDone := make(chan error, 1)
	go func() { runDone <- eng.Run(runCtx) }()
	defer func() {
		stopRun()
		err = errors.CombineErrors(err, <-runDone)
		err = errors.CombineErrors(err, eng.Close())
	}()

	// Start every order at once; they run concurrently.
	all := scenarios(svc)
	ids := make([]string, len(all))
	for i, sc := range all {
		svc.pay.inject(sc.order.ID, sc.faults...)
		st, err := eng.Start(ctx, "order", sc.order, engine.WithIdempotencyKey("order/"+sc.order.ID))
		if err != nil {
			return errors.Wrapf(err, "start order %s", sc.order.ID)
		}
		if st.Duplicate {
			return errors.WithHint(errors.Newf("order %s was already started in %s (saga %s)", sc.order.ID, dbPath, st.ID),
				"the file was kept from an earlier run: remove it or pass another -db")
		}
		ids[i] = st.ID
	}

	var failed []string
	for i, sc := range all {
		s, err := eng.Wait(ctx, ids[i])
		if err != nil {
			return errors.Wrapf(err, "order %s", sc.order.ID)
		}
		fmt.Fprintf(out, "%s %s\n", sc.label, sc.title)
		summarize(out, s)
		if sc.timeline {
			log, err := eng.Log(ctx, s.ID)
			if err != nil {
				return err
			}
			printTimeline(out, log)
		}
		if problems := sc.check(s); len(problems) > 0 {
			for _, p := range problems {
				fmt.Fprintf(out, "    UNEXPECTED: %s\n", p)
				failed = append(failed, sc.label+" "+p)
			}
		} else {
			fmt.Fprintln(out, "    as expected")
		}
		fmt.Fprintln(out)
	}
	for _, b := range eng.Breakers() {
		fmt.Fprintf(out, "circuit breaker %s: %s\n", b.Name, b.State)
	}
	if len(failed) > 0 {
		return errors.Newf("%d unexpected outcome(s):\n  %s", len(failed), strings.Join(failed, "\n  "))
	}
	fmt.Fprintf(out, "all %d orders ended as expected\n", len(all))
	return nil
}

// summarize prints a saga's status and, per step, its status and attempts.
func summarize(out io.Writer, s *engine.Saga) {
	fmt.Fprintf(out, "    saga %s: %s\n", s.ID, s.Status)
	if s.Err != nil {
		fmt.Fprintf(out, "    reason: %v (permanent: %v)\n", s.Err, saga.IsPermanent(s.Err))
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	for _, st := range s.Steps {
		detail := plural(st.Attempts, "attempt")
		if st.FallbackUsed {
			detail += ", then the fallback"
		}
		if st.CompensationAttempts > 0 {
			detail += "; compensation: " + plural(st.CompensationAttempts, "attempt")
		}
		if st.Status == saga.StepFailed && st.Error != "" {
			detail += ": " + st.Error
		}
		fmt.Fprintf(tw, "      %s\t%s\t%s\n", st.Name, st.Status, detail)
	}
	_ = tw.Flush()
	var sh Shipment
	if json.Unmarshal(s.Data["ship"], &sh) == nil {
		fmt.Fprintf(out, "    shipped by %s, tracking number %s\n", sh.Carrier, sh.Tracking)
	}
}

// printTimeline prints a saga's step log, times relative to its start.
func printTimeline(out io.Writer, log []storage.LogEntry) {
	if len(log) == 0 {
		return
	}
	fmt.Fprintln(out, "    step log:")
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "      TIME\tSTEP\tPHASE\tATTEMPT\tEVENT\tERROR")
	t0 := log[0].At
	ms := func(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d.Microseconds())/1000) }
	for _, e := range log {
		attempt := ""
		if e.Attempt > 0 {
			attempt = fmt.Sprint(e.Attempt)
		}
		event := string(e.Event)
		if e.Event == storage.EventStatus || e.Event == storage.EventStarted {
			event += " → " + string(e.Status)
		}
		detail := e.Error
		// A failed attempt that will be retried carries the stored time of
		// the next one.
		if !e.Next.IsZero() {
			detail += " (retry in " + ms(e.Next.Sub(e.At)) + ")"
		}
		fmt.Fprintf(tw, "      +%s\t%s\t%s\t%s\t%s\t%s\n",
			ms(e.At.Sub(t0)), dash(e.Step), dash(string(e.Phase)), dash(attempt), event, detail)
	}
	_ = tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// problems collects what is not as expected about a saga.
type problems []string

// expect checks a saga's status and its steps, each given as
// "<name> <status> <action attempts>".
func expect(s *engine.Saga, status saga.Status, stepWants ...string) problems {
	var p problems
	p = p.that(s.Status == status, "status %s, want %s (reason: %v)", s.Status, status, s.Err)
	p = p.that(len(s.Steps) == len(stepWants), "%d steps, want %d", len(s.Steps), len(stepWants))
	for i, want := range stepWants {
		if i >= len(s.Steps) {
			break
		}
		st := s.Steps[i]
		got := fmt.Sprintf("%s %s %d", st.Name, st.Status, st.Attempts)
		p = p.that(got == want, "step %q is %q, want %q", st.Name, got, want)
	}
	return p
}

func (p problems) that(ok bool, format string, args ...any) problems {
	if !ok {
		p = append(p, fmt.Sprintf(format, args...))
	}
	return p
}

func (p problems) charged(pay *payments, order string, amount, charges int) problems {
	a, n := pay.Charged(order)
	return p.that(a == amount && n == charges, "order %s: %d charge(s) totalling %d cents, want %d totalling %d",
		order, n, a, charges, amount)
}
