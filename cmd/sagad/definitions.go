package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/sagad/sagad/client"
	"github.com/sagad/sagad/transport/httpstep"
)

// definitionsCommand implements 'sagad definitions list|show|put'.
type definitionsCommand struct {
	stdout, stderr io.Writer
}

func (c *definitionsCommand) run(ctx context.Context, args []string) int {
	subs := []struct {
		name, help string
		run        func([]string) int
	}{
		{"list", "the stored definitions, each name's latest version", func(a []string) int { return c.list(ctx, a) }},
		{"show", "a definition's latest version, as JSON (NAME)", func(a []string) int { return c.show(ctx, a) }},
		{"put", "store and register a definition from a file (NAME FILE, or - for standard input)", func(a []string) int { return c.put(ctx, a) }},
		{"diagram", "a definition's latest version drawn as a Mermaid flowchart (NAME)", func(a []string) int { return c.diagram(ctx, a) }},
	}
	if len(args) > 0 {
		for _, s := range subs {
			if args[0] == s.name {
				return s.run(args[1:])
			}
		}
	}
	fmt.Fprintln(c.stderr, "Usage: sagad definitions <command> [--db FILE | --addr URL] [flags]\n\nCommands:")
	for _, s := range subs {
		fmt.Fprintf(c.stderr, "  %-7s %s\n", s.name, s.help)
	}
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
		return exitOK
	}
	return exitUsage
}

func (c *definitionsCommand) flags(name, usage string) (*flag.FlagSet, *target) {
	fs := flag.NewFlagSet("definitions "+name, flag.ContinueOnError)
	var t target
	t.flags(fs)
	fs.Usage = func() {
		fmt.Fprint(c.stderr, usage+"\nFlags:\n")
		fs.PrintDefaults()
	}
	return fs, &t
}

func (c *definitionsCommand) list(ctx context.Context, args []string) int {
	fs, t := c.flags("list", `Usage: sagad definitions list [--db FILE | --addr URL] [--json]

Lists the stored declarative definitions: each name with its latest version.

Example:
  sagad definitions list --addr http://127.0.0.1:8080
`)
	if code, ok := parse(fs, args, c.stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintln(c.stderr, "sagad definitions list: no arguments are taken")
		return exitUsage
	}
	b, err := t.open()
	if err != nil {
		return fail(c.stderr, "definitions list", err)
	}
	defer b.Close()
	defs, err := b.Definitions(ctx)
	if err != nil {
		return fail(c.stderr, "definitions list", err)
	}
	if t.json {
		if defs == nil {
			defs = []client.Definition{}
		}
		printJSON(c.stdout, map[string]any{"definitions": defs})
		return exitOK
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tVERSION\tSTEPS")
	for _, d := range defs {
		var spec struct {
			Steps []json.RawMessage `json:"steps"`
		}
		_ = json.Unmarshal(d.Spec, &spec)
		fmt.Fprintf(tw, "%s\t%s\t%d\n", d.Name, d.Version, len(spec.Steps))
	}
	_ = tw.Flush()
	return exitOK
}

func (c *definitionsCommand) show(ctx context.Context, args []string) int {
	fs, t := c.flags("show", `Usage: sagad definitions show [--db FILE | --addr URL] NAME

Prints a definition's latest version: its JSON, as stored.

Example:
  sagad definitions show --addr http://127.0.0.1:8080 order
`)
	if code, ok := parse(fs, args, c.stderr); !ok {
		return code
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(c.stderr, "sagad definitions show: give one definition name")
		return exitUsage
	}
	b, err := t.open()
	if err != nil {
		return fail(c.stderr, "definitions show", err)
	}
	defer b.Close()
	d, err := b.Definition(ctx, fs.Arg(0))
	if err != nil {
		return fail(c.stderr, "definitions show", err)
	}
	if t.json {
		printJSON(c.stdout, d)
		return exitOK
	}
	fmt.Fprintf(c.stdout, "# %s version %s\n", d.Name, d.Version)
	var spec any
	if json.Unmarshal(d.Spec, &spec) == nil {
		printJSON(c.stdout, spec)
	} else {
		fmt.Fprintln(c.stdout, string(d.Spec))
	}
	return exitOK
}

func (c *definitionsCommand) diagram(ctx context.Context, args []string) int {
	fs, t := c.flags("diagram", `Usage: sagad definitions diagram [--db FILE | --addr URL] NAME

Prints a definition's latest version as a Mermaid flowchart: steps as boxes
(the pivot a hexagon), the order they run in, fallbacks, circuit breakers,
and dashed arrows to compensations and between them, in the order they
run. Paste it into a `+"```mermaid"+` block of a Markdown file, or
https://mermaid.live.

Example:
  sagad definitions diagram --addr http://127.0.0.1:8080 order
`)
	if code, ok := parse(fs, args, c.stderr); !ok {
		return code
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(c.stderr, "sagad definitions diagram: give one definition name")
		return exitUsage
	}
	b, err := t.open()
	if err != nil {
		return fail(c.stderr, "definitions diagram", err)
	}
	defer b.Close()
	d, err := b.Definition(ctx, fs.Arg(0))
	if err != nil {
		return fail(c.stderr, "definitions diagram", err)
	}
	spec, err := httpstep.Parse(d.Name, d.Spec)
	if err != nil {
		return fail(c.stderr, "definitions diagram", err)
	}
	def, err := spec.Definition(d.Name, nil)
	if err != nil {
		return fail(c.stderr, "definitions diagram", err)
	}
	fmt.Fprint(c.stdout, def.Mermaid())
	return exitOK
}

func (c *definitionsCommand) put(ctx context.Context, args []string) int {
	fs, t := c.flags("put", `Usage: sagad definitions put [--db FILE | --addr URL] NAME FILE

Stores a definition (the JSON in FILE; - reads standard input) and
registers it: a new version when its content differs from the latest, which
new sagas then use; running sagas keep the version they started with.

Example:
  sagad definitions put --addr http://127.0.0.1:8080 order examples/definitions/order.json
`)
	if code, ok := parse(fs, args, c.stderr); !ok {
		return code
	}
	if fs.NArg() != 2 {
		fmt.Fprintln(c.stderr, "sagad definitions put: give a name and a file")
		return exitUsage
	}
	name, file := fs.Arg(0), fs.Arg(1)
	spec, err := readFileArg(os.Stdin, file)
	if err != nil {
		return fail(c.stderr, "definitions put", err)
	}
	b, err := t.open()
	if err != nil {
		return fail(c.stderr, "definitions put", err)
	}
	defer b.Close()
	d, err := b.PutDefinition(ctx, name, spec)
	if err != nil {
		return fail(c.stderr, "definitions put", err)
	}
	if t.json {
		printJSON(c.stdout, d)
		return exitOK
	}
	what := "already stored; it is the latest again"
	if d.Created {
		what = "stored and registered"
	}
	fmt.Fprintf(c.stdout, "%s version %s: %s\n", d.Name, d.Version, strings.TrimSpace(what))
	return exitOK
}
