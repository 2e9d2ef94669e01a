package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/sagad/sagad/storage/postgres"
)

type migrateCommand struct {
	stdout, stderr io.Writer
}

func (c *migrateCommand) run(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("migrate", flag.ContinueOnError)
	db := fs.String("db", "", "PostgreSQL URL; its schema parameter names the schema, default sagad (env SAGAD_DB)")
	printSQL := fs.Bool("print", false, "print the SQL of the migrations the schema lacks instead of applying them")
	asJSON := fs.Bool("json", false, "print JSON for scripts")
	fs.Usage = func() {
		fmt.Fprint(c.stderr, `Usage: sagad migrate --db postgres://... [--print] [--json]

Applies the migrations a PostgreSQL schema lacks, each in its own
transaction, under an advisory lock: nodes that start at once, or run this
at once, apply each migration once. sagad serve does the same when it
starts. With --print, writes the SQL instead, for a DBA to read and apply
(it records itself as sagad would). A schema newer than this sagad is
refused. A bbolt file needs no migration.

Example:
  sagad migrate --db 'postgres://sagad@db.internal:5432/orders?schema=sagad'
  sagad migrate --db postgres://postgres@127.0.0.1:5432/postgres --print | psql postgres://postgres@127.0.0.1:5432/postgres

Flags:
`)
		fs.PrintDefaults()
	}
	if code, ok := parse(fs, args, c.stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(c.stderr, "sagad migrate: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	if !isPostgres(*db) {
		fmt.Fprintln(c.stderr, "sagad migrate: --db (or SAGAD_DB) must be a postgres:// URL; a bbolt file needs no migration")
		return exitUsage
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	if *printSQL {
		schema, have, script, err := postgres.PendingScript(ctx, *db, "")
		if err != nil {
			return fail(c.stderr, "migrate", err)
		}
		if *asJSON {
			printJSON(c.stdout, map[string]any{"schema": schema, "version": have, "target": postgres.SchemaVersion(), "sql": script})
			return exitOK
		}
		fmt.Fprint(c.stdout, script)
		return exitOK
	}
	schema, applied, err := postgres.MigrateURL(ctx, *db, "")
	if err != nil {
		return fail(c.stderr, "migrate", err)
	}
	if applied == nil {
		applied = []int{}
	}
	if *asJSON {
		printJSON(c.stdout, map[string]any{"schema": schema, "applied": applied, "version": postgres.SchemaVersion()})
		return exitOK
	}
	if len(applied) == 0 {
		fmt.Fprintf(c.stdout, "schema %s: at version %d, nothing to apply\n", schema, postgres.SchemaVersion())
		return exitOK
	}
	fmt.Fprintf(c.stdout, "schema %s: applied %v; now at version %d\n", schema, applied, postgres.SchemaVersion())
	return exitOK
}
