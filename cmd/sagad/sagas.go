package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/user"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/cockroachdb/errors"
	"github.com/sagad/sagad/client"
	"github.com/sagad/sagad/saga"
)

// sagasCommand implements 'sagad sagas list|show'.
type sagasCommand struct {
	stdin          io.Reader // --input -
	stdout, stderr io.Writer
}

func (c *sagasCommand) run(ctx context.Context, args []string) int {
	return runGroup(c.stderr, "sagas", []subcommand{
		{"list", "list sagas, newest first", func(a []string) int { return c.list(ctx, a) }},
		{"show", "show a saga, its data and its step log as a timeline", func(a []string) int { return c.show(ctx, a) }},
		{"retry", "retry a failed saga's failed compensation, retry a waiting saga now, or resume a parked saga", func(a []string) int { return c.control(ctx, "retry", a) }},
		{"abort", "compensate a running saga", func(a []string) int { return c.control(ctx, "abort", a) }},
		{"pause", "start no new attempt of a saga until it is resumed", func(a []string) int { return c.control(ctx, "pause", a) }},
		{"complete", "deliver a participant's answer to a call it answered 202", func(a []string) int { return c.complete(ctx, a) }},
		{"resume", "carry on with a paused saga", func(a []string) int { return c.control(ctx, "resume", a) }},
		{"resolve", "mark a failed saga, or one whose compensation waits for a retry, as handled by hand, with a note", func(a []string) int { return c.control(ctx, "resolve", a) }},
	}, args)
}

func (c *sagasCommand) list(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("sagas list", flag.ContinueOnError)
	var t target
	t.flags(fs)
	status := fs.String("status", "", "only sagas in this status: running, compensating, completed, compensated, failed or resolved")
	definition := fs.String("definition", "", "only sagas of this definition")
	var sinceV sinceFlag
	fs.Var(&sinceV, "since", "only sagas created within this long, such as 90m, 12h or 7d")
	since := (*time.Duration)(&sinceV)
	limit := fs.Int("limit", 50, "at most this many sagas")
	startAt := fs.String("cursor", "", "go on from where a listing stopped (the cursor it printed)")
	all := fs.Bool("all", false, "every matching saga, however many (--limit is then ignored)")
	fs.Usage = func() {
		fmt.Fprint(c.stderr, `Usage: sagad sagas list [--status S] [--definition D] [--since 7d] [--limit N | --all] [--cursor C] [--json]

Lists sagas, newest first, as a table (or a JSON object {"sagas": [...],
"next_cursor": "..."} with --json, as the HTTP API answers). A listing cut
off by --limit says so, with the cursor that goes on (--cursor). Times are
UTC.

Example:
  sagad sagas list --db /var/lib/sagad/sagad.db --status failed
  sagad sagas list --addr http://127.0.0.1:8080 --since 1h --json

Flags:
`)
		fs.PrintDefaults()
	}
	if code, ok := parse(fs, args, c.stderr); !ok {
		return code
	}
	if *status != "" && !saga.Status(*status).Valid() {
		fmt.Fprintf(c.stderr, "sagad sagas list: --status %q: want running, compensating, completed, compensated, failed or resolved\n", *status)
		return exitUsage
	}
	if *limit < 1 || fs.NArg() > 0 {
		fmt.Fprintln(c.stderr, "sagad sagas list: --limit must be positive, and no arguments are taken")
		return exitUsage
	}
	b, err := t.open()
	if err != nil {
		return fail(c.stderr, "sagas list", err)
	}
	defer b.Close()
	var out []client.Saga
	cutoff := time.Time{}
	if *since > 0 {
		cutoff = time.Now().Add(-*since)
	}
	next := "" // where the listing goes on, when --limit cut it off
	for cursor := *startAt; *all || len(out) < *limit; {
		n := 1000
		if !*all {
			n = min(*limit-len(out), 1000)
		}
		p, err := b.List(ctx, client.ListOptions{Status: *status, Definition: *definition, Cursor: cursor, Limit: n})
		if err != nil {
			return fail(c.stderr, "sagas list", err)
		}
		done := false
		for _, s := range p.Sagas {
			if !cutoff.IsZero() && s.CreatedAt.Before(cutoff) {
				done = true // newest first: the rest are older still
				break
			}
			out = append(out, s)
		}
		if cursor = p.NextCursor; done || cursor == "" {
			break
		}
		if !*all && len(out) >= *limit {
			next = cursor
		}
	}
	if out == nil {
		out = []client.Saga{}
	}
	if t.json {
		printJSON(c.stdout, client.Page{Sagas: out, NextCursor: next})
		return exitOK
	}
	if len(out) == 0 {
		fmt.Fprintln(c.stdout, "no sagas")
		return exitOK
	}
	tw := tabwriter.NewWriter(c.stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tDEFINITION\tSTATUS\tCREATED\tUPDATED\tSTEP\tERROR")
	for _, s := range out {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.ID, s.Definition, s.Status, utc(s.CreatedAt),
			utc(s.UpdatedAt), currentStep(&s), oneLine(s.Error, 60))
	}
	_ = tw.Flush()
	if next != "" {
		fmt.Fprintf(c.stdout, "(%d shown; more match: --cursor %s goes on, --all lists every one)\n", len(out), next)
	}
	return exitOK
}

// currentStep names the step a saga is at, or is stuck at, and its phase:
// a compensation in progress first, then a running step, then a failed one.
func currentStep(s *client.Saga) string {
	for _, want := range []string{"compensating", "running", "failed"} {
		for i := len(s.Steps) - 1; i >= 0; i-- {
			if st := s.Steps[i]; st.Status == want {
				return st.Name + " (" + st.Phase + ")"
			}
		}
	}
	return "-"
}

// oneLine shortens s to one line of at most n runes.
func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}

func (c *sagasCommand) show(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("sagas show", flag.ContinueOnError)
	var t target
	t.flags(fs)
	fs.Usage = func() {
		fmt.Fprint(c.stderr, `Usage: sagad sagas show [--db FILE | --addr URL] [--json] ID

Shows a saga: its status, input, data and steps, then its step log as a
timeline (each attempt: when, how long, outcome, error; the compensations
that ran; where it stands now). With --json it prints the saga object as the
HTTP API does, with its log under "log".

Example:
  sagad sagas show --db /var/lib/sagad/sagad.db 01J9Z3K8Q5W6X7Y8Z9A0B1C2D3

Flags:
`)
		fs.PrintDefaults()
	}
	if code, ok := parse(fs, args, c.stderr); !ok {
		return code
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(c.stderr, "sagad sagas show: give exactly one saga id")
		return exitUsage
	}
	id := fs.Arg(0)
	b, err := t.open()
	if err != nil {
		return fail(c.stderr, "sagas show", err)
	}
	defer b.Close()
	s, err := b.Get(ctx, id)
	if err != nil {
		return fail(c.stderr, "sagas show", err)
	}
	log, err := b.Log(ctx, id)
	if err != nil {
		return fail(c.stderr, "sagas show", err)
	}
	if t.json {
		printJSON(c.stdout, struct {
			*client.Saga
			Log []client.LogEntry `json:"log"`
		}{s, log})
		return exitOK
	}
	printSaga(c.stdout, s, log)
	return exitOK
}

// printSaga writes a saga and its timeline for people.
func printSaga(w io.Writer, s *client.Saga, log []client.LogEntry) {
	fmt.Fprintf(w, "saga        %s\n", s.ID)
	fmt.Fprintf(w, "definition  %s (version %s)\n", s.Definition, s.Version)
	fmt.Fprintf(w, "status      %s\n", s.Status)
	fmt.Fprintf(w, "created     %s   updated %s\n", s.CreatedAt.Local().Format(time.RFC3339), s.UpdatedAt.Local().Format(time.RFC3339))
	if s.Error != "" {
		fmt.Fprintf(w, "error       %s\n", s.Error)
	}
	if s.Parked != "" {
		fmt.Fprintf(w, "parked      %s\n", s.Parked)
	}
	if s.PausedFrom != "" {
		fmt.Fprintf(w, "paused      while %s; sagad sagas resume %s carries on\n", s.PausedFrom, s.ID)
	}
	if !s.Deadline.IsZero() {
		fmt.Fprintf(w, "deadline    %s\n", s.Deadline.Local().Format(time.RFC3339))
	}
	if !s.WakeAt.IsZero() {
		fmt.Fprintf(w, "next        attempt due %s\n", s.WakeAt.Local().Format(time.RFC3339))
	}
	if len(s.Input) > 0 {
		fmt.Fprintf(w, "input       %s\n", s.Input)
	}
	fmt.Fprintln(w, "\nsteps:")
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	for _, st := range s.Steps {
		attempts := plural(st.Attempts, "attempt")
		if st.CompensationAttempts > 0 {
			attempts += ", " + plural(st.CompensationAttempts, "compensation attempt")
		}
		if st.FallbackUsed {
			attempts += ", fallback used"
		}
		if st.Waiting {
			attempts += fmt.Sprintf(", waiting for its answer for %s (until %s)",
				time.Since(st.WaitingSince).Round(time.Second), st.WaitingUntil.UTC().Format("15:04:05Z"))
		}
		out := ""
		if raw, ok := s.Data[st.Name]; ok {
			out = oneLine(string(raw), 60)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", st.Name, st.Status, attempts, out, oneLine(st.Error, 80))
	}
	_ = tw.Flush()
	fmt.Fprintln(w, "\ntimeline:")
	tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	var start time.Time
	lanes := drawLanes(log)
	for i, e := range log {
		if i == 0 {
			start = e.At
		}
		what := e.Event
		if e.Step != "" {
			what += " " + e.Step
			if e.Phase != "" {
				what += " " + e.Phase
			}
			if e.Attempt > 0 {
				what += fmt.Sprintf(" #%d", e.Attempt)
			}
		}
		detail := []string{}
		if e.Duration > 0 {
			detail = append(detail, "took "+e.Duration.Round(time.Microsecond).String())
		}
		if e.Status != "" {
			detail = append(detail, "saga "+e.Status)
		}
		if e.Error != "" {
			detail = append(detail, "error: "+oneLine(e.Error, 100))
		}
		if !e.Next.IsZero() {
			detail = append(detail, "next attempt at "+e.Next.UTC().Format("15:04:05Z"))
		}
		if e.Note != "" {
			detail = append(detail, oneLine(e.Note, 100))
		}
		if lanes != nil {
			what = lanes[i] + " " + what
		}
		fmt.Fprintf(tw, "  %s\t+%s\t%s\t%s\n", e.At.UTC().Format("15:04:05.000Z"), e.At.Sub(start).Round(time.Microsecond), what, strings.Join(detail, "; "))
	}
	_ = tw.Flush()
}

// drawLanes draws what ran at the same time, when attempts of parallel
// steps overlapped: for each log entry, one column per attempt running
// then, ┬ where an attempt starts, │ while it runs, ┴ where it ends. It
// returns nil for a saga whose attempts never overlapped.
func drawLanes(log []client.LogEntry) []string {
	var open []string // lane -> the step and phase running in it; "" free
	out := make([]string, len(log))
	marks := make([]rune, 0, 8)
	widest := 0
	for i, e := range log {
		key := e.Step + "/" + e.Phase
		mark, at := ' ', -1
		switch e.Event {
		case "attempt_started":
			at = slices.Index(open, "")
			if at < 0 {
				at = len(open)
				open = append(open, "")
			}
			open[at], mark = key, '┬'
		case "attempt_succeeded", "attempt_failed", "attempt_in_doubt", "breaker_open":
			if at = slices.Index(open, key); at >= 0 {
				open[at], mark = "", '┴'
			}
		}
		marks = marks[:0]
		busy := 0
		for l, k := range open {
			switch {
			case l == at:
				marks = append(marks, mark)
			case k != "":
				marks = append(marks, '│')
			default:
				marks = append(marks, ' ')
			}
			if k != "" {
				busy++
			}
		}
		if at >= 0 && mark == '┴' {
			busy++
		}
		widest = max(widest, busy)
		out[i] = string(marks)
	}
	if widest <= 1 {
		return nil
	}
	for i := range out {
		out[i] += strings.Repeat(" ", len(open)-len([]rune(out[i])))
	}
	return out
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

var controlHelp = map[string]string{
	"retry": `Usage: sagad sagas retry [--db FILE | --addr URL] [--wait D] [--input FILE|-] ID

Retries a failed saga: the compensation (or, past the pivot, the step) that
failed runs again with a fresh attempt budget. Fix the cause first. A saga
waiting for a retry (of a step or a compensation, after a failure or a
participant's Retry-After) is retried now. A saga parked because its
definition version was not registered is resumed. Offline, the retry is
recorded and the daemon (or sagad recover) runs it. With --input, the JSON in
FILE (or on stdin, for -) replaces the saga's input for every attempt that
follows; its log records the old input and the new one.

Example:
  sagad sagas retry --addr http://127.0.0.1:8080 01J9Z3K8Q5W6X7Y8Z9A0B1C2D3
  echo '{"item": "book", "qty": 1}' | sagad sagas retry --db sagad.db --input - 01J9Z3K8Q5W6X7Y8Z9A0B1C2D3
`,
	"resolve": `Usage: sagad sagas resolve [--db FILE | --addr URL] --note "..." [--by NAME] ID

Marks a failed saga as handled by hand: an operator did what its failed
compensation could not (refunded by hand, released the stock in the admin
tool) and says so in the note. A compensating saga whose compensation waits
for a retry can be resolved the same way. The saga becomes resolved; the note, who and
when are kept in its step log. Nothing is undone or deleted.

Example:
  sagad sagas resolve --db /var/lib/sagad/sagad.db --note "refunded by hand, ticket OPS-17" 01J9Z3K8Q5W6X7Y8Z9A0B1C2D3
`,
	"pause": `Usage: sagad sagas pause [--db FILE | --addr URL] ID

Pauses a running or compensating saga, while a participant is repaired: no
new attempt starts; attempts already running finish and are recorded; then
its status is paused, and stays so across restarts. Retry times and the
deadline keep counting. Resume it with sagad sagas resume; abort works on a
paused saga. A pause waiting for attempts to end is lost if the daemon stops
first: pause again.

Example:
  sagad sagas pause --addr http://127.0.0.1:8080 01J9Z3K8Q5W6X7Y8Z9A0B1C2D3
`,
	"resume": `Usage: sagad sagas resume [--db FILE | --addr URL] [--wait D] ID

Resumes a paused saga where it stopped, in the status it had (a deadline
that passed meanwhile turns it around). Resuming a saga that is not paused
does nothing.

Example:
  sagad sagas resume --addr http://127.0.0.1:8080 01J9Z3K8Q5W6X7Y8Z9A0B1C2D3
`,
	"abort": `Usage: sagad sagas abort [--db FILE | --addr URL] [--wait D] ID

Asks a running saga to stop going forward and compensate the steps that
succeeded, in reverse order. Attempts in flight finish first; a saga past its
pivot step cannot be aborted. Offline, the request is recorded and the
daemon (or sagad recover) acts on it.

Example:
  sagad sagas abort --db /var/lib/sagad/sagad.db 01J9Z3K8Q5W6X7Y8Z9A0B1C2D3
`,
}

// control runs retry or abort on one saga and prints where it stands.
func (c *sagasCommand) control(ctx context.Context, verb string, args []string) int {
	fs := flag.NewFlagSet("sagas "+verb, flag.ContinueOnError)
	var t target
	t.flags(fs)
	var note, by, inputFile string
	var wait time.Duration
	if verb != "resolve" && verb != "pause" {
		fs.DurationVar(&wait, "wait", 0, "wait up to this long for the saga to end, and print how it ended (offline, the command drives it meanwhile); 0: do not wait")
	}
	if verb == "retry" {
		fs.StringVar(&inputFile, "input", "", "a JSON file (- for stdin) whose value replaces the saga's input for the attempts that follow")
	}
	if verb == "resolve" {
		fs.StringVar(&note, "note", "", "what was done by hand (required)")
		fs.StringVar(&by, "by", defaultOperator(), "who resolved it")
	}
	fs.Usage = func() {
		fmt.Fprint(c.stderr, controlHelp[verb]+"\nFlags:\n")
		fs.PrintDefaults()
	}
	if code, ok := parse(fs, args, c.stderr); !ok {
		return code
	}
	if fs.NArg() != 1 {
		fmt.Fprintf(c.stderr, "sagad sagas %s: give exactly one saga id\n", verb)
		return exitUsage
	}
	if verb == "resolve" && strings.TrimSpace(note) == "" {
		fmt.Fprintln(c.stderr, "sagad sagas resolve: --note is required: say what was done by hand")
		return exitUsage
	}
	id := fs.Arg(0)
	var input json.RawMessage
	if inputFile != "" {
		var err error
		if input, err = readJSONArg(c.stdin, "--input", inputFile); err != nil {
			return fail(c.stderr, "sagas "+verb, err)
		}
	}
	b, err := t.open()
	if err != nil {
		return fail(c.stderr, "sagas "+verb, err)
	}
	defer b.Close()
	op := b.Retry
	if input != nil {
		op = func(ctx context.Context, id string) error { return b.RetryWithInput(ctx, id, input) }
	}
	switch verb {
	case "abort":
		op = b.Abort
	case "pause":
		op = b.Pause
	case "resume":
		op = b.Resume
	case "resolve":
		op = func(ctx context.Context, id string) error { return b.Resolve(ctx, id, note, by) }
	}
	if err := op(ctx, id); err != nil {
		return fail(c.stderr, "sagas "+verb, err)
	}
	var s *client.Saga
	if wait > 0 {
		wctx, cancel := context.WithTimeout(ctx, wait)
		s, err = b.Wait(wctx, id)
		cancel()
		if err != nil {
			return fail(c.stderr, "sagas "+verb, errors.WithHint(errors.Wrapf(err, "saga %s did not end within %s", id, wait),
				"it goes on; see where it stands with sagad sagas show"))
		}
	} else if s, err = b.Get(ctx, id); err != nil {
		return fail(c.stderr, "sagas "+verb, err)
	}
	if t.json {
		printJSON(c.stdout, s)
		return exitOK
	}
	if wait > 0 {
		fmt.Fprintf(c.stdout, "%s: %s done; the saga ended %s\n", id, verb, s.Status)
		if s.Error != "" {
			fmt.Fprintf(c.stdout, "error: %s\n", s.Error)
		}
		return exitOK
	}
	fmt.Fprintf(c.stdout, "%s: %s requested; the saga is %s\n", id, verb, s.Status)
	if b.Offline() {
		fmt.Fprintln(c.stdout, "recorded in the file: sagad carries it out when it next runs on it (or run sagad recover)")
	}
	return exitOK
}

// complete delivers a participant's answer to a waiting attempt.
func (c *sagasCommand) complete(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("sagas complete", flag.ContinueOnError)
	var t target
	t.flags(fs)
	var req client.CompleteRequest
	var dataFile string
	fs.StringVar(&req.Phase, "phase", "action", "the call's phase (X-Saga-Phase): action, compensation or fallback")
	fs.IntVar(&req.Attempt, "attempt", 0, "the call's attempt (X-Saga-Attempt); required")
	fs.IntVar(&req.Status, "status", 200, "what the participant answers, as an HTTP status: 2xx success, 4xx (not 408, 425, 429) failed for good, the rest retried")
	fs.StringVar(&dataFile, "data", "", "a JSON file (- for stdin): the step's output, on success")
	fs.StringVar(&req.Error, "error", "", "why it failed")
	fs.Usage = func() {
		fmt.Fprint(c.stderr, `Usage: sagad sagas complete [--db FILE | --addr URL] --attempt N [--phase P] [--status S] [--data FILE|-] [--error MSG] ID STEP

Delivers the answer of a participant that answered a call 202 Accepted, as
it would with POST /v1/sagas/ID/steps/STEP/complete: the attempt that waits
for it ends, and the saga goes on. An answer for an attempt that no longer
waits is recorded in the saga's log and ignored.

Example:
  sagad sagas complete --addr http://127.0.0.1:8080 --attempt 1 --data approval.json 01J9Z3K8Q5W6X7Y8Z9A0B1C2D3 approve

Flags:
`)
		fs.PrintDefaults()
	}
	if code, ok := parse(fs, args, c.stderr); !ok {
		return code
	}
	if fs.NArg() != 2 || req.Attempt < 1 {
		fmt.Fprintln(c.stderr, "sagad sagas complete: give the saga id and the step, and --attempt")
		return exitUsage
	}
	if dataFile != "" {
		var err error
		if req.Data, err = readJSONArg(c.stdin, "--data", dataFile); err != nil {
			return fail(c.stderr, "sagas complete", err)
		}
	}
	b, err := t.open()
	if err != nil {
		return fail(c.stderr, "sagas complete", err)
	}
	defer b.Close()
	applied, err := b.Complete(ctx, fs.Arg(0), fs.Arg(1), req)
	if err != nil {
		return fail(c.stderr, "sagas complete", err)
	}
	if t.json {
		printJSON(c.stdout, client.Completed{Applied: applied})
		return exitOK
	}
	if applied {
		fmt.Fprintf(c.stdout, "%s: %s %s attempt %d answered %d\n", fs.Arg(0), fs.Arg(1), req.Phase, req.Attempt, req.Status)
	} else {
		fmt.Fprintf(c.stdout, "%s: no attempt of %s waits for this answer; it was recorded in the saga's log and ignored\n", fs.Arg(0), fs.Arg(1))
	}
	return exitOK
}

// readFileArg reads a file named on the command line, or stdin for "-".
func readFileArg(stdin io.Reader, name string) ([]byte, error) {
	if name == "-" {
		return io.ReadAll(stdin)
	}
	return os.ReadFile(name)
}

// readJSONArg reads the JSON value in the file a flag names (- for stdin):
// at most 1 MiB, the API's limit.
func readJSONArg(stdin io.Reader, flag, name string) (json.RawMessage, error) {
	data, err := readFileArg(io.LimitReader(stdin, 1<<20+1), name)
	if err != nil {
		return nil, errors.Wrapf(err, "%s %s", flag, name)
	}
	data = bytes.TrimSpace(data)
	if len(data) > 1<<20 {
		return nil, errors.Newf("%s %s: more than 1 MiB", flag, name)
	}
	if !json.Valid(data) {
		return nil, errors.Newf("%s %s: not a JSON value", flag, name)
	}
	return data, nil
}

// defaultOperator names the person running the command: user@host.
func defaultOperator() string {
	name := "unknown"
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = u.Username
	}
	if h, err := os.Hostname(); err == nil && h != "" {
		name += "@" + h
	}
	return name
}

// utc formats a table's time: UTC, to the second, with a Z.
func utc(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04:05Z")
}

// parseSince reads a --since value: a Go duration (90m, 1h30m) or a number
// of days (7d).
func parseSince(s string) (time.Duration, error) {
	if n, ok := strings.CutSuffix(s, "d"); ok {
		var days int
		if _, err := fmt.Sscanf(n, "%d", &days); err == nil && fmt.Sprint(days) == n && days >= 0 {
			return time.Duration(days) * 24 * time.Hour, nil
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, errors.Newf("%q is not a duration such as 90m, 12h or 7d", s)
	}
	return d, nil
}

// sinceFlag is a --since flag (see parseSince).
type sinceFlag time.Duration

func (f *sinceFlag) String() string { return time.Duration(*f).String() }

func (f *sinceFlag) Set(s string) error {
	d, err := parseSince(s)
	if err != nil {
		return err
	}
	*f = sinceFlag(d)
	return nil
}
