package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/cockroachdb/errors"

	"github.com/sagad/sagad/client"
	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
	"github.com/sagad/sagad/storage/bolt"
	"github.com/sagad/sagad/transport/httpapi"
)

// backend is what the operator commands act on: a database file (offline)
// or a running daemon (online). Both answer in the API's wire types.
type backend interface {
	List(ctx context.Context, o client.ListOptions) (*client.Page, error)
	Get(ctx context.Context, id string) (*client.Saga, error)
	Log(ctx context.Context, id string) ([]client.LogEntry, error)
	OutboxList(ctx context.Context, status, cursor string, limit int) (*client.OutboxPage, error)
	OutboxStats(ctx context.Context) (*client.OutboxStats, error)
	OutboxRequeue(ctx context.Context, id string) error
	OutboxDiscard(ctx context.Context, id string) error
	Abort(ctx context.Context, id string) error
	Retry(ctx context.Context, id string) error
	RetryWithInput(ctx context.Context, id string, input json.RawMessage) error
	Pause(ctx context.Context, id string) error
	Complete(ctx context.Context, id, step string, req client.CompleteRequest) (bool, error)
	Resume(ctx context.Context, id string) error
	Resolve(ctx context.Context, id, note, by string) error
	Definitions(ctx context.Context) ([]client.Definition, error)
	Definition(ctx context.Context, name string) (*client.Definition, error)
	PutDefinition(ctx context.Context, name string, spec []byte) (*client.Definition, error)
	// Wait returns the saga once it has ended (offline, the command drives
	// it meanwhile, as sagad recover would).
	Wait(ctx context.Context, id string) (*client.Saga, error)
	Close() error
	// Offline reports whether the backend is the file itself: changes are
	// recorded, and a daemon (or sagad recover) carries them out.
	Offline() bool
}

// target holds the flags every operator command takes.
type target struct {
	db, addr, token string
	json            bool
}

func (t *target) flags(fs *flag.FlagSet) {
	fs.StringVar(&t.db, "db", "sagad.db", "database file, used offline when --addr is not given (env SAGAD_DB)")
	fs.StringVar(&t.addr, "addr", "", "URL of a running daemon, such as http://127.0.0.1:8080 (env SAGAD_ADDR)")
	fs.StringVar(&t.token, "token", "", "the daemon's bearer token (env SAGAD_TOKEN)")
	fs.BoolVar(&t.json, "json", false, "print JSON for scripts")
}

// open connects to the daemon, or opens the file offline. A file held by a
// running daemon fails at once with a hint to use --addr.
func (t *target) open() (backend, error) {
	if t.addr != "" {
		c, err := client.New(t.addr, t.token, cliHTTPClient())
		if err != nil {
			return nil, err
		}
		return online{c}, nil
	}
	if isPostgres(t.db) {
		return nil, errors.WithHint(errors.New("operator commands reach a PostgreSQL database through a running sagad"),
			"give the address of any node with --addr http://HOST:PORT (and --token)")
	}
	if err := existingDB(t.db); err != nil {
		return nil, err
	}
	eng, err := openEngine(t.db, storeOptions{bolt: bolt.Options{LockTimeout: 500 * time.Millisecond}}, engine.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		if errors.Is(err, bolt.ErrLocked) {
			return nil, errors.WithHint(errors.Wrapf(err, "%s is held by a running process", t.db),
				"a daemon holds the file: talk to it with --addr http://HOST:PORT (and --token)")
		}
		return nil, err
	}
	// Declarative definitions are stored: register them, so that a saga
	// of the daemon's can be retried here.
	// A skipped version's sagas are reported as parked, like any saga whose
	// definition is not available.
	defs := httpapi.NewDefinitions(eng, participantClient(16))
	if _, err := defs.Load(); err != nil && !errors.Is(err, httpapi.ErrDefinitionSkipped) {
		_ = eng.Close()
		return nil, err
	}
	return offline{eng, defs}, nil
}

// existingDB refuses a database path that names no file, or an empty file
// (a copy that failed, most likely). Only sagad serve creates a database:
// an operator command given a mistyped --db (or run in the wrong
// directory, or on a failed copy) must say so, not make a new, empty
// database and report that it holds nothing.
//
// The check comes just before the open, so a file removed in between is
// still created by it; an operator's typo is what this is for.
func existingDB(path string) error {
	info, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return errors.WithHint(errors.Newf("database %s does not exist", path),
			"is the path right (--db or SAGAD_DB)? Only sagad serve creates a database; the other commands open an existing one")
	case err != nil:
		return errors.Wrapf(err, "database %s", path)
	case info.IsDir():
		return errors.WithHint(errors.Newf("database %s is a directory", path), "--db names the database file itself")
	case info.Size() == 0:
		// bbolt would make a database of it, and the command report
		// that it holds nothing.
		return errors.WithHint(errors.Newf("database %s is empty (0 bytes): it holds no database", path),
			"is it a copy or a restore that failed? Copy the database again (sagad backup writes a checked copy). "+
				"Only sagad serve creates a database, of a missing or empty file; the other commands open an existing one")
	}
	return nil
}

// online is a running daemon.
type online struct{ *client.Client }

func (online) Close() error { return nil }

func (online) Offline() bool { return false }

// offline is a database file opened by this process.
type offline struct {
	eng  *engine.Engine
	defs *httpapi.Definitions
}

func (o offline) Definitions(context.Context) ([]client.Definition, error) { return o.defs.List() }

func (o offline) Definition(_ context.Context, name string) (*client.Definition, error) {
	d, ok, err := o.defs.Get(name)
	if err == nil && !ok {
		err = errors.Newf("no definition named %s", name)
	}
	return d, err
}

func (o offline) PutDefinition(_ context.Context, name string, spec []byte) (*client.Definition, error) {
	return o.defs.Put(name, spec)
}

func (o offline) Close() error { return o.eng.Close() }

func (offline) Offline() bool { return true }

func (o offline) Abort(ctx context.Context, id string) error { return o.eng.Abort(ctx, id) }

func (o offline) Retry(ctx context.Context, id string) error { return o.eng.Retry(ctx, id) }

func (o offline) Pause(ctx context.Context, id string) error { return o.eng.Pause(ctx, id) }

func (o offline) Complete(ctx context.Context, id, step string, req client.CompleteRequest) (bool, error) {
	phase, res, err := httpapi.CompleteResult(req)
	if err != nil {
		return false, err
	}
	return o.eng.Complete(ctx, id, step, phase, req.Attempt, res)
}
func (o offline) Resume(ctx context.Context, id string) error { return o.eng.Resume(ctx, id) }

func (o offline) RetryWithInput(ctx context.Context, id string, input json.RawMessage) error {
	return o.eng.Retry(ctx, id, engine.RetryWithInput(input))
}

func (o offline) Resolve(ctx context.Context, id, note, by string) error {
	return o.eng.Resolve(ctx, id, note, by)
}

func (o offline) List(ctx context.Context, lo client.ListOptions) (*client.Page, error) {
	p, err := o.eng.List(ctx, engine.ListOptions{Status: saga.Status(lo.Status), Definition: lo.Definition,
		Cursor: lo.Cursor, Limit: lo.Limit})
	if err != nil {
		return nil, err
	}
	return httpapi.PageJSON(p), nil // the same as the API's lists
}

func (o offline) Wait(ctx context.Context, id string) (*client.Saga, error) {
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() { _ = o.eng.Run(rctx) }() // an offline engine drives nothing until it runs
	s, err := o.eng.Wait(ctx, id)
	if err != nil {
		return nil, err
	}
	return httpapi.SagaJSON(s), nil
}

func (o offline) Get(ctx context.Context, id string) (*client.Saga, error) {
	s, err := o.eng.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	return httpapi.SagaJSON(s), nil
}

func (o offline) Log(ctx context.Context, id string) ([]client.LogEntry, error) {
	entries, err := o.eng.Log(ctx, id)
	if err != nil {
		return nil, err
	}
	return httpapi.LogJSON(entries), nil
}

func (o offline) OutboxList(ctx context.Context, status, cursor string, limit int) (*client.OutboxPage, error) {
	p, err := o.eng.OutboxList(ctx, engine.OutboxListOptions{Status: storage.OutboxStatus(status), Cursor: cursor, Limit: limit})
	if err != nil {
		return nil, err
	}
	return convert[*client.OutboxPage](p)
}

func (o offline) OutboxStats(ctx context.Context) (*client.OutboxStats, error) {
	st, err := o.eng.OutboxStats(ctx)
	if err != nil {
		return nil, err
	}
	return convert[*client.OutboxStats](st)
}

func (o offline) OutboxDiscard(ctx context.Context, id string) error {
	return o.eng.OutboxDiscard(ctx, id)
}

func (o offline) OutboxRequeue(ctx context.Context, id string) error {
	return o.eng.OutboxRequeue(ctx, id)
}

// convert re-encodes a value as the API's wire type: the engine's types
// carry the same JSON.
func convert[T any](v any) (T, error) {
	var out T
	b, err := json.Marshal(v)
	if err == nil {
		err = json.Unmarshal(b, &out)
	}
	return out, errors.Wrap(err, "convert to the wire format")
}

// fail prints an operation's error (and its hint) and returns exitFailed.
func fail(w io.Writer, cmd string, err error) int {
	fmt.Fprintf(w, "sagad %s: %v\n", cmd, err)
	if h := errors.FlattenHints(err); h != "" {
		fmt.Fprintf(w, "hint: %s\n", h)
	} else if h := problemHint(err); h != "" {
		fmt.Fprintf(w, "hint: %s\n", h)
	}
	return exitFailed
}

// problemHint says what to do about an error answer of the daemon's.
func problemHint(err error) string {
	var p *client.Problem
	if !errors.As(err, &p) {
		return ""
	}
	switch {
	case p.Status == http.StatusUnauthorized:
		return "the daemon wants its token: pass --token or set SAGAD_TOKEN"
	case !strings.HasPrefix(p.Type, httpapi.ProblemTypeBase):
		return "the answer is not a sagad's: is --addr (or SAGAD_ADDR) the address of a sagad daemon?"
	}
	return ""
}

// printJSON writes v as indented JSON.
func printJSON(w io.Writer, v any) {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// cliHTTPClient talks to a daemon on an operator's behalf: a daemon that
// accepts connections and never answers is given up on, while a long
// answer (a backup) may take as long as it takes.
func cliHTTPClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
	}}
}

// subcommand is one command of a group such as 'sagad sagas'.
type subcommand struct {
	name, summary string
	run           func(args []string) int
}

// runGroup runs the subcommand args[0] names, or prints the group's help.
func runGroup(stderr io.Writer, group string, cmds []subcommand, args []string) int {
	var names []string
	for _, c := range cmds {
		names = append(names, c.name)
	}
	if len(args) > 0 && !slices.Contains([]string{"-h", "--help", "help"}, args[0]) {
		if i := slices.Index(names, args[0]); i >= 0 {
			return cmds[i].run(args[1:])
		}
		fmt.Fprintf(stderr, "sagad %s: unknown command %q (want %s)\n", group, args[0], strings.Join(names, ", "))
		return exitUsage
	}
	fmt.Fprintf(stderr, "Usage: sagad %s <command> [flags]\n\nCommands:\n", group)
	for _, c := range cmds {
		fmt.Fprintf(stderr, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(stderr, "\nEach works offline on a database file (--db) or online through a running\n"+
		"daemon (--addr, --token). Run 'sagad %s <command> --help' for its flags and an example.\n", group)
	if len(args) == 0 {
		return exitUsage
	}
	return exitOK
}
