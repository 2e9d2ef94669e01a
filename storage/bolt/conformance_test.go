package bolt_test

import (
	"path/filepath"
	"testing"

	"github.com/sagad/sagad/storage"
	"github.com/sagad/sagad/storage/bolt"
	"github.com/sagad/sagad/storage/storagetest"
)

// The bbolt backend passes the conformance suite every backend must pass.
func TestConformance(t *testing.T) {
	t.Parallel()
	open := func(t *testing.T, path string) storage.Store {
		t.Helper()
		db, err := bolt.Open(path, &bolt.Options{NoSync: true, CompressAbove: 64})
		if err != nil {
			t.Fatalf("open %s: %v", path, err)
		}
		return db
	}
	storagetest.Run(t, storagetest.Harness{
		Open: func(t *testing.T) storage.Store { return open(t, filepath.Join(t.TempDir(), "sagad.db")) },
		Reopen: func(t *testing.T, s storage.Store) storage.Store {
			path := s.(*bolt.DB).Path()
			if err := s.Close(); err != nil {
				t.Fatalf("close: %v", err)
			}
			return open(t, path)
		},
	})
}
