package postgres

import (
	"context"
	"embed"
	"hash/fnv"
	"io/fs"
	"path"
	"strconv"
	"strings"

	"github.com/cockroachdb/errors"
	"github.com/jackc/pgx/v5"

	"github.com/sagad/sagad/storage"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// Migration is one numbered step of the schema.
type Migration struct {
	// Version numbers the migrations from 1, in the order they apply.
	Version int
	// Name is the migration's file name.
	Name string
	// SQL is the migration's text, for the schema it was asked for.
	SQL string
}

// Migrations returns the schema's migrations for the given schema (""
// means DefaultSchema), in order.
func Migrations(schema string) []Migration {
	if schema == "" {
		schema = DefaultSchema
	}
	names, err := fs.Glob(migrationFiles, "migrations/*.sql")
	if err != nil {
		panic(err) // the pattern is valid
	}
	out := make([]Migration, 0, len(names))
	for i, name := range names {
		b, err := migrationFiles.ReadFile(name)
		if err != nil {
			panic(err) // embedded
		}
		base := path.Base(name)
		v, err := strconv.Atoi(strings.SplitN(base, "_", 2)[0])
		if err != nil || v != i+1 {
			panic("postgres: migration " + base + " is out of sequence")
		}
		out = append(out, Migration{Version: v, Name: base, SQL: strings.ReplaceAll(string(b), "{schema}", quote(schema))})
	}
	return out
}

// SchemaVersion is the schema version this package reads and writes: the
// number of its migrations.
func SchemaVersion() int { return len(Migrations("")) }

func quote(schema string) string { return pgx.Identifier{schema}.Sanitize() }

// lockKey is the advisory lock that serialises migrations of one schema.
func lockKey(schema string) int64 {
	h := fnv.New64a()
	h.Write([]byte("sagad.migrate:" + schema))
	return int64(h.Sum64())
}

// Migrate applies the migrations the schema lacks, each in its own
// transaction, under an advisory lock, and returns the versions it applied.
// A schema newer than this package is refused with storage.ErrSchema.
func Migrate(ctx context.Context, conn *pgx.Conn, schema string) ([]int, error) {
	if schema == "" {
		schema = DefaultSchema
	}
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", lockKey(schema)); err != nil {
		return nil, errors.Wrapf(err, "postgres: lock schema %s for migration", schema)
	}
	defer func() {
		// A lost connection releases the lock with it.
		_, _ = conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", lockKey(schema))
	}()
	q := quote(schema)
	if _, err := conn.Exec(ctx, bootstrap(q)); err != nil {
		return nil, errors.Wrapf(err, "postgres: create schema %s", schema)
	}
	have, err := version(ctx, conn, schema)
	if err != nil {
		return nil, err
	}
	all := Migrations(schema)
	if have > len(all) {
		return nil, newerSchema(schema, have, len(all))
	}
	var applied []int
	for _, m := range all[have:] {
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, m.SQL); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "INSERT INTO "+q+".schema_migrations (version, name) VALUES ($1, $2)", m.Version, m.Name)
			return err
		})
		if err != nil {
			return applied, errors.Wrapf(err, "postgres: schema %s: migration %s", schema, m.Name)
		}
		applied = append(applied, m.Version)
	}
	return applied, nil
}

// bootstrap makes the schema and its table of applied migrations.
func bootstrap(q string) string {
	return "CREATE SCHEMA IF NOT EXISTS " + q + ";\nCREATE TABLE IF NOT EXISTS " + q +
		".schema_migrations (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());\n"
}

// Script returns the SQL that takes the schema from version from (0: a
// database without it) to SchemaVersion, as psql runs it: each migration in
// its own transaction, recorded in the schema's schema_migrations table as
// Migrate records it. It is for a DBA who applies migrations by hand.
func Script(schema string, from int) string {
	if schema == "" {
		schema = DefaultSchema
	}
	q := quote(schema)
	var b strings.Builder
	b.WriteString("-- sagad schema " + schema + ": migrations after version " + strconv.Itoa(from) + "\n")
	b.WriteString(bootstrap(q))
	for _, m := range Migrations(schema)[min(max(from, 0), SchemaVersion()):] {
		b.WriteString("\n-- " + m.Name + "\nBEGIN;\n")
		b.WriteString(m.SQL)
		b.WriteString("INSERT INTO " + q + ".schema_migrations (version, name) VALUES (" + strconv.Itoa(m.Version) + ", '" + m.Name + "');\nCOMMIT;\n")
	}
	return b.String()
}

// version reads the schema's applied version (0: none).
func version(ctx context.Context, conn interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, schema string) (int, error) {
	var v int
	err := conn.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM "+quote(schema)+".schema_migrations").Scan(&v)
	return v, errors.Wrapf(err, "postgres: read schema %s version", schema)
}

func newerSchema(schema string, have, know int) error {
	return errors.WithHint(errors.Wrapf(storage.ErrSchema, "postgres: schema %s is at version %d, this sagad knows versions up to %d", schema, have, know),
		"a newer sagad migrated this schema: run that release, or point this one at another schema")
}

// connect opens one connection to url and returns it with the schema to
// use: schema, else the URL's schema parameter, else DefaultSchema.
func connect(ctx context.Context, url, schema string) (*pgx.Conn, string, error) {
	url, schema = target(url, schema)
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return nil, "", errors.WithHint(errors.Wrap(err, "postgres: connect"), "is PostgreSQL running and the URL right?")
	}
	return conn, schema, nil
}

// MigrateURL connects to the database at url and migrates the schema
// (schema, else the URL's schema parameter, else DefaultSchema); it returns
// the schema and the versions it applied.
func MigrateURL(ctx context.Context, url, schema string) (string, []int, error) {
	conn, schema, err := connect(ctx, url, schema)
	if err != nil {
		return "", nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	applied, err := Migrate(ctx, conn, schema)
	return schema, applied, err
}

// PendingScript connects to the database at url and returns the schema
// (chosen as MigrateURL chooses it), its version, and the Script of the
// migrations it lacks.
func PendingScript(ctx context.Context, url, schema string) (string, int, string, error) {
	conn, schema, err := connect(ctx, url, schema)
	if err != nil {
		return "", 0, "", err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", quote(schema)+".schema_migrations").Scan(&exists); err != nil {
		return "", 0, "", errors.Wrapf(err, "postgres: read schema %s", schema)
	}
	have := 0
	if exists {
		if have, err = version(ctx, conn, schema); err != nil {
			return "", 0, "", err
		}
	}
	if have > SchemaVersion() {
		return schema, have, "", newerSchema(schema, have, SchemaVersion())
	}
	return schema, have, Script(schema, have), nil
}

// DropSchema drops a schema and everything in it (sagad's tables, and the
// application's, if it shares the schema): for a schema made for a run,
// such as sagad bench's. url chooses the database as Open does; its schema
// parameter, if any, is not the one dropped.
func DropSchema(ctx context.Context, url, schema string) error {
	conn, _, err := connect(ctx, url, "")
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+quote(schema)+" CASCADE")
	return errors.Wrapf(err, "postgres: drop schema %s", schema)
}
