package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/cockroachdb/errors"

	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/storage"
	"github.com/sagad/sagad/storage/bolt"
	"github.com/sagad/sagad/storage/postgres"
)

// isPostgres reports whether --db names a PostgreSQL database (a
// postgres:// URL) rather than a bbolt file.
func isPostgres(db string) bool {
	return strings.HasPrefix(db, "postgres://") || strings.HasPrefix(db, "postgresql://")
}

// storeOptions are the options of either backend; each takes its own.
type storeOptions struct {
	bolt bolt.Options
	// node names this process in a PostgreSQL schema's claims.
	node string
}

// openStore opens --db: a PostgreSQL database (migrated to this sagad's
// schema) or the bbolt file at that path.
func openStore(db string, so storeOptions, o engine.Options) (storage.Store, error) {
	if isPostgres(db) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return postgres.Open(ctx, db, &postgres.Options{Clock: o.Clock, Logger: o.Logger, Node: so.node})
	}
	bo := so.bolt
	bo.Clock = o.Clock
	return bolt.Open(db, &bo)
}

// openEngine opens --db (see openStore) and returns an engine on it, which
// owns the store from then on.
func openEngine(db string, so storeOptions, o engine.Options) (*engine.Engine, error) {
	store, err := openStore(db, so, o)
	if err != nil {
		return nil, err
	}
	eng, err := engine.New(store, o)
	if err != nil {
		_ = store.Close()
		return nil, err
	}
	return eng, nil
}

// fileOnly refuses a command that works on bbolt files when --db is a
// PostgreSQL URL.
func fileOnly(command, db, instead string) error {
	if !isPostgres(db) {
		return nil
	}
	return errors.WithHint(errors.Newf("sagad %s works on a bbolt database file, and --db is a PostgreSQL URL", command), instead)
}

// dropSchema drops a schema the bench made, saying so when it cannot.
func dropSchema(dbURL, schema string, stderr io.Writer) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := postgres.DropSchema(ctx, dbURL, schema); err != nil {
		fmt.Fprintf(stderr, "sagad bench: schema %s not dropped: %v\n", schema, err)
	}
}
