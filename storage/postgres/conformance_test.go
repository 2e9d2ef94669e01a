package postgres_test

import (
	"context"
	"testing"

	"github.com/sagad/sagad/internal/pgtest"
	"github.com/sagad/sagad/storage"
	"github.com/sagad/sagad/storage/postgres"
	"github.com/sagad/sagad/storage/storagetest"
)

// open opens a store on schema, closed when the test ends.
func open(t *testing.T, url, schema string) *postgres.DB {
	t.Helper()
	db, err := postgres.Open(context.Background(), url, &postgres.Options{Schema: schema, MaxConns: 4})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func TestConformance(t *testing.T) {
	url := pgtest.URL(t)
	storagetest.Run(t, storagetest.Harness{
		ScanAll: true,
		Open:    func(t *testing.T) storage.Store { return open(t, url, pgtest.Schema(t, url)) },
		Reopen: func(t *testing.T, s storage.Store) storage.Store {
			db := s.(*postgres.DB)
			if err := db.Close(); err != nil {
				t.Fatal(err)
			}
			return open(t, url, db.Schema())
		},
	})
}
