package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math"
	"text/tabwriter"
	"time"

	"github.com/sagad/sagad/client"
)

// outboxCommand implements 'sagad outbox list|stats|requeue|discard'.
type outboxCommand struct {
	stdout, stderr io.Writer
}

func (c *outboxCommand) run(ctx context.Context, args []string) int {
	return runGroup(c.stderr, "outbox", []subcommand{
		{"list", "list outbox events in one status (new by default)", func(a []string) int { return c.list(ctx, a) }},
		{"stats", "depth, age of the oldest pending event, counts by status", func(a []string) int { return c.stats(ctx, a) }},
		{"requeue", "publish a not_produced event again (ID, or --all-not-produced)", func(a []string) int { return c.requeue(ctx, a) }},
		{"discard", "delete a produced or not_produced event (ID); a not_produced one's saga goes on", func(a []string) int { return c.discard(ctx, a) }},
	}, args)
}

func (c *outboxCommand) list(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("outbox list", flag.ContinueOnError)
	var t target
	t.flags(fs)
	status := fs.String("status", "new", "new, produced or not_produced")
	limit := fs.Int("limit", 50, "at most this many events")
	startAt := fs.String("cursor", "", "go on from where a listing stopped (the cursor it printed)")
	all := fs.Bool("all", false, "every event in the status, however many (--limit is then ignored)")
	fs.Usage = func() {
		fmt.Fprint(c.stderr, `Usage: sagad outbox list [--status new|produced|not_produced] [--limit N | --all] [--cursor C] [--json]

Lists outbox events in one status, oldest first: their saga, name, routing
key, attempts and last error. A listing cut off by --limit says so, with the
cursor that goes on (--cursor; next_cursor with --json). Times are UTC.

Example:
  sagad outbox list --db /var/lib/sagad/sagad.db --status not_produced

Flags:
`)
		fs.PrintDefaults()
	}
	if code, ok := parse(fs, args, c.stderr); !ok {
		return code
	}
	switch *status {
	case "new", "produced", "not_produced":
	default:
		fmt.Fprintf(c.stderr, "sagad outbox list: --status %q: want new, produced or not_produced\n", *status)
		return exitUsage
	}
	if *limit < 1 || fs.NArg() > 0 {
		fmt.Fprintln(c.stderr, "sagad outbox list: --limit must be positive, and no arguments are taken")
		return exitUsage
	}
	b, err := t.open()
	if err != nil {
		return fail(c.stderr, "outbox list", err)
	}
	defer b.Close()
	n := *limit
	if *all {
		n = math.MaxInt
	}
	events, next, err := pageEvents(ctx, b, *status, *startAt, n)
	if err != nil {
		return fail(c.stderr, "outbox list", err)
	}
	if t.json {
		printJSON(c.stdout, client.OutboxPage{Events: events, NextCursor: next})
		return exitOK
	}
	if len(events) == 0 {
		fmt.Fprintf(c.stdout, "no %s events\n", *status)
		return exitOK
	}
	tw := tabwriter.NewWriter(c.stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSAGA\tNAME\tROUTING KEY\tCREATED\tATTEMPTS\tLAST ERROR")
	for _, ev := range events {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", ev.ID, ev.SagaID, ev.Name, ev.RoutingKey,
			utc(ev.CreatedAt), ev.Attempts, oneLine(ev.LastError, 60))
	}
	_ = tw.Flush()
	if next != "" {
		fmt.Fprintf(c.stdout, "(%d shown; more %s events: --cursor %s goes on, --all lists every one)\n", len(events), *status, next)
	}
	return exitOK
}

// listEvents pages through up to limit events in one status.
func listEvents(ctx context.Context, b backend, status string, limit int) ([]client.OutboxEvent, error) {
	out, _, err := pageEvents(ctx, b, status, "", limit)
	return out, err
}

// pageEvents pages through up to limit events in one status from cursor,
// and returns where the listing goes on ("" when it is whole).
func pageEvents(ctx context.Context, b backend, status, cursor string, limit int) ([]client.OutboxEvent, string, error) {
	out := []client.OutboxEvent{}
	for len(out) < limit {
		p, err := b.OutboxList(ctx, status, cursor, min(limit-len(out), 1000))
		if err != nil {
			return nil, "", err
		}
		out = append(out, p.Events...)
		if cursor = p.NextCursor; cursor == "" {
			return out, "", nil
		}
	}
	return out, cursor, nil
}

func (c *outboxCommand) stats(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("outbox stats", flag.ContinueOnError)
	var t target
	t.flags(fs)
	fs.Usage = func() {
		fmt.Fprint(c.stderr, `Usage: sagad outbox stats [--json]

Prints the outbox's depth: events by status, and the age of the oldest event
not yet published (a growing age means the relay is behind or cannot reach
the broker) and of the oldest not_produced one.

Example:
  sagad outbox stats --addr http://127.0.0.1:8080

Flags:
`)
		fs.PrintDefaults()
	}
	if code, ok := parse(fs, args, c.stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintln(c.stderr, "sagad outbox stats: no arguments are taken")
		return exitUsage
	}
	b, err := t.open()
	if err != nil {
		return fail(c.stderr, "outbox stats", err)
	}
	defer b.Close()
	st, err := b.OutboxStats(ctx)
	if err != nil {
		return fail(c.stderr, "outbox stats", err)
	}
	if t.json {
		printJSON(c.stdout, st)
		return exitOK
	}
	age := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return time.Since(t).Round(time.Second).String()
	}
	fmt.Fprintf(c.stdout, "new           %d (oldest %s old)\n", st.Counts.New, age(st.OldestNew))
	fmt.Fprintf(c.stdout, "not_produced  %d (oldest %s old)\n", st.Counts.NotProduced, age(st.OldestNotProduced))
	fmt.Fprintf(c.stdout, "produced      %d\n", st.Counts.Produced)
	return exitOK
}

func (c *outboxCommand) requeue(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("outbox requeue", flag.ContinueOnError)
	var t target
	t.flags(fs)
	all := fs.Bool("all-not-produced", false, "re-queue every not_produced event")
	fs.Usage = func() {
		fmt.Fprint(c.stderr, `Usage: sagad outbox requeue ID | --all-not-produced

Makes a not_produced event (or a produced one, to publish it again) new
again with a fresh attempt budget: the relay publishes it, then the events
of its saga that waited behind it. Fix the cause first (bind a queue, create
the exchange), or it will end not_produced again.

Example:
  sagad outbox requeue --addr http://127.0.0.1:8080 --all-not-produced

Flags:
`)
		fs.PrintDefaults()
	}
	if code, ok := parse(fs, args, c.stderr); !ok {
		return code
	}
	if (fs.NArg() == 1) == *all || fs.NArg() > 1 {
		fmt.Fprintln(c.stderr, "sagad outbox requeue: give one event id, or --all-not-produced")
		return exitUsage
	}
	id := fs.Arg(0)
	b, err := t.open()
	if err != nil {
		return fail(c.stderr, "outbox requeue", err)
	}
	defer b.Close()
	ids := []string{id}
	if *all {
		events, err := listEvents(ctx, b, "not_produced", 1<<30)
		if err != nil {
			return fail(c.stderr, "outbox requeue", err)
		}
		ids = ids[:0]
		for _, ev := range events {
			ids = append(ids, ev.ID)
		}
	}
	for _, id := range ids {
		if err := b.OutboxRequeue(ctx, id); err != nil {
			return fail(c.stderr, "outbox requeue", err)
		}
	}
	if t.json {
		printJSON(c.stdout, map[string]any{"requeued": ids})
		return exitOK
	}
	fmt.Fprintf(c.stdout, "re-queued %d events\n", len(ids))
	return exitOK
}

func (c *outboxCommand) discard(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("outbox discard", flag.ContinueOnError)
	var t target
	t.flags(fs)
	fs.Usage = func() {
		fmt.Fprint(c.stderr, `Usage: sagad outbox discard ID

Deletes an event the relay is done with: a produced one, or a not_produced
one that will never be published (its saga's later events, which waited
behind it, go on). An event waiting to be published cannot be discarded.

Example:
  sagad outbox discard --addr http://127.0.0.1:8080 01J9Z3K8Q5W6X7Y8Z9A0B1C2D3

Flags:
`)
		fs.PrintDefaults()
	}
	if code, ok := parse(fs, args, c.stderr); !ok {
		return code
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(c.stderr, "sagad outbox discard: give one event id")
		return exitUsage
	}
	b, err := t.open()
	if err != nil {
		return fail(c.stderr, "outbox discard", err)
	}
	defer b.Close()
	if err := b.OutboxDiscard(ctx, fs.Arg(0)); err != nil {
		return fail(c.stderr, "outbox discard", err)
	}
	if t.json {
		printJSON(c.stdout, map[string]any{"discarded": fs.Arg(0)})
		return exitOK
	}
	fmt.Fprintf(c.stdout, "discarded %s\n", fs.Arg(0))
	return exitOK
}
