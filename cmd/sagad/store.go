package main

import (
	"context"
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

// openStore opens --db: a PostgreSQL database (migrated to this sagad's
// schema) or the bbolt file at that path, with the options bo.
func openStore(db string, bo bolt.Options, o engine.Options) (storage.Store, error) {
	if isPostgres(db) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return postgres.Open(ctx, db, &postgres.Options{Clock: o.Clock, Logger: o.Logger})
	}
	bo.Clock = o.Clock
	return bolt.Open(db, &bo)
}

// openEngine opens --db (see openStore) and returns an engine on it, which
// owns the store from then on.
func openEngine(db string, bo bolt.Options, o engine.Options) (*engine.Engine, error) {
	store, err := openStore(db, bo, o)
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
