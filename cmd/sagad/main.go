// Command sagad is the sagad daemon and its operator tools.
//
//	sagad [serve]            run the daemon: the engine on a bbolt file, the
//	                         HTTP API, and (with --amqp-url) the outbox relay
//	sagad check --db FILE    verify a database file (bbolt's check plus the
//	                         engine's invariants); exit 1 if it finds problems
//	sagad bench              run sagas of HTTP steps through a daemon and
//	                         print the throughput and latency
//
// The flags of serve and of the operator commands have SAGAD_* environment
// variables; 'sagad <command> --help' lists them with an example.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/cockroachdb/errors"

	"github.com/sagad/sagad/recovery"
	"github.com/sagad/sagad/storage/bolt"
	"github.com/sagad/sagad/storage/postgres"
	"github.com/sagad/sagad/transport/httpstep"
)

// Exit codes.
const (
	exitOK     = 0
	exitFailed = 1 // the operation ran and failed (or found problems)
	exitUsage  = 2 // the command line is wrong
)

func main() {
	ctx, stop := signalContext()
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// signalContext is cancelled by SIGINT or SIGTERM.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
		usage(stderr)
		return exitOK
	}
	if len(args) > 0 && (args[0] == "--version" || args[0] == "-version" || args[0] == "version") {
		rest := args[1:]
		asJSON := len(rest) == 1 && (rest[0] == "--json" || rest[0] == "-json")
		if len(rest) > 0 && !asJSON {
			fmt.Fprintln(stderr, "sagad version: the only flag is --json")
			return exitUsage
		}
		printVersion(stdout, asJSON)
		return exitOK
	}
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return (&serveCommand{stdout: stdout, stderr: stderr}).run(ctx, args)
	}
	switch args[0] {
	case "serve":
		return (&serveCommand{stdout: stdout, stderr: stderr}).run(ctx, args[1:])
	case "check":
		return (&checkCommand{stdout: stdout, stderr: stderr}).run(ctx, args[1:])
	case "bench":
		return (&benchCommand{stdout: stdout, stderr: stderr}).run(ctx, args[1:])
	case "sagas":
		return (&sagasCommand{stdin: os.Stdin, stdout: stdout, stderr: stderr}).run(ctx, args[1:])
	case "outbox":
		return (&outboxCommand{stdout: stdout, stderr: stderr}).run(ctx, args[1:])
	case "backup":
		return (&backupCommand{stdout: stdout, stderr: stderr}).run(ctx, args[1:])
	case "compact":
		return (&compactCommand{stdout: stdout, stderr: stderr}).run(ctx, args[1:])
	case "recover":
		return (&recoverCommand{stdout: stdout, stderr: stderr}).run(ctx, args[1:])
	case "completion":
		return (&completionCommand{stdout: stdout, stderr: stderr}).run(args[1:])
	case "definitions":
		return (&definitionsCommand{stdout: stdout, stderr: stderr}).run(ctx, args[1:])
	case "migrate":
		return (&migrateCommand{stdout: stdout, stderr: stderr}).run(ctx, args[1:])
	}
	fmt.Fprintf(stderr, "sagad: unknown command %q\n\n", args[0])
	usage(stderr)
	return exitUsage
}

func usage(w io.Writer) {
	fmt.Fprint(w, `Usage: sagad <command> [flags]

Commands:
  serve    run the daemon (the default): engine, HTTP API, outbox relay
  check    verify a database file (bbolt's check plus the engine's invariants)
  bench    drive sagas of HTTP steps through a daemon and print throughput
  sagas    list and show sagas (offline with --db, online with --addr)
  outbox   list, count and re-queue outbox events
  backup   write a consistent, checked copy of the database (offline or online)
  compact  rewrite a stopped daemon's file to reclaim free space
  recover  drive every unfinished saga of a stopped daemon's file to an end
  definitions  list, show and put declarative definitions
  migrate  apply (or print) the migrations of a PostgreSQL schema
  version  print sagad's version, commit and Go version (also --version)
  completion  print a bash or zsh completion script

Run 'sagad <command> --help' for a command's flags and an example.
`)
}

// parse parses a subcommand's flags, which may come before or after its
// arguments, then applies the environment. fs.Args() holds the arguments.
func parse(fs *flag.FlagSet, args []string, stderr io.Writer) (int, bool) {
	fs.SetOutput(stderr)
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return exitOK, false
			}
			return exitUsage, false
		}
		if fs.NArg() == 0 {
			break
		}
		positional = append(positional, fs.Arg(0))
		args = fs.Args()[1:]
	}
	_ = fs.Parse(append([]string{"--"}, positional...)) // leaves the arguments in fs.Args()
	if err := envFlags(fs); err != nil {
		fmt.Fprintf(stderr, "sagad %s: %v\n", fs.Name(), err)
		return exitUsage, false
	}
	return 0, true
}

// envFlags sets every flag that the command line did not give from its
// environment variable, named in its usage text as "(env SAGAD_X)", through
// the flag's own parser: a malformed value is an error, not a silent
// default.
func envFlags(fs *flag.FlagSet) error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	// --db and --addr choose the target together: one given on the
	// command line rules out the other's variable, so that SAGAD_ADDR
	// never redirects a command aimed at a file (or SAGAD_DB the reverse).
	if given["db"] || given["addr"] {
		given["db"], given["addr"] = true, true
	}
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		_, rest, ok := strings.Cut(f.Usage, "(env ")
		name, _, ok2 := strings.Cut(rest, ")")
		if err != nil || given[f.Name] || !ok || !ok2 {
			return
		}
		if v, set := os.LookupEnv(name); set {
			if serr := fs.Set(f.Name, v); serr != nil {
				err = errors.Newf("%s=%q (for --%s): %v", name, v, f.Name, serr)
			}
		}
	})
	return err
}

// checkCommand implements 'sagad check'.
type checkCommand struct {
	stdout, stderr io.Writer
}

func (c *checkCommand) run(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	var t target
	t.flags(fs)
	db, asJSON := &t.db, &t.json
	fs.Usage = func() {
		fmt.Fprint(c.stderr, `Usage: sagad check [--db FILE|URL | --addr URL] [--json]

Verifies a sagad database: bbolt's page-level check, then the engine's
invariants (every index entry names a saga with that status, every
unfinished saga is indexed, every log chain is whole, the outbox counters
agree with its index). Offline it reads the file; online (--addr) it checks
a consistent copy the daemon streams (as sagad backup does), while the
daemon goes on. On PostgreSQL (--db postgres://...) it checks the schema
while the nodes run: its version, records against their rows, log chains,
claims and abort requests of finished sagas, outbox statuses, definitions.
Exits 0 when the database is sound, 1 when it has problems or cannot be
read, 2 on a usage error.

Example:
  sagad check --db /var/lib/sagad/sagad.db
  sagad check --addr http://127.0.0.1:8080
  sagad check --db 'postgres://sagad@db:5432/orders?schema=sagad'
`)
		fs.PrintDefaults()
	}
	if code, ok := parse(fs, args, c.stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(c.stderr, "sagad check: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	file := *db
	if t.addr != "" {
		file = t.addr
	}
	if t.addr != "" {
		dir, err := os.MkdirTemp("", "sagad-check-")
		if err != nil {
			fmt.Fprintf(c.stderr, "sagad check: %v\n", err)
			return exitFailed
		}
		defer os.RemoveAll(dir)
		copyPath := filepath.Join(dir, "sagad.db")
		if err := (&backupCommand{}).copy(ctx, &t, copyPath); err != nil {
			return fail(c.stderr, "check", err)
		}
		*db = copyPath
	} else if !isPostgres(*db) {
		if err := existingDB(*db); err != nil {
			return fail(c.stderr, "check", err)
		}
	}
	validate := func(name string, spec []byte) error {
		_, err := httpstep.Parse(name, spec)
		return err
	}
	var problems []recovery.Problem
	if isPostgres(*db) {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
		defer cancel()
		var err error
		if problems, err = postgres.Check(cctx, *db, "", validate); err != nil {
			return fail(c.stderr, "check", err)
		}
	} else {
		d, err := bolt.Open(*db, &bolt.Options{ReadOnly: true, LockTimeout: 500 * time.Millisecond})
		if errors.Is(err, bolt.ErrLocked) {
			err = errors.WithHint(err, "a daemon holds the file: check it online with --addr http://HOST:PORT")
		}
		if err != nil {
			return fail(c.stderr, "check", err)
		}
		defer d.Close()
		if problems, err = recovery.Check(d, validate); err != nil {
			return fail(c.stderr, "check", err)
		}
	}
	if *asJSON {
		enc := json.NewEncoder(c.stdout)
		enc.SetIndent("", "  ")
		if problems == nil {
			problems = []recovery.Problem{}
		}
		_ = enc.Encode(map[string]any{"file": file, "problems": problems})
	} else if len(problems) == 0 {
		fmt.Fprintf(c.stdout, "%s: ok\n", file)
	} else {
		fmt.Fprintf(c.stdout, "%s: %d problems\n", file, len(problems))
		for _, p := range problems {
			fmt.Fprintf(c.stdout, "  %-20s %s\n", p.Kind, p.Detail)
		}
	}
	if len(problems) > 0 {
		return exitFailed
	}
	return exitOK
}
