package bolttest_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/cockroachdb/errors"
	"github.com/oklog/ulid/v2"

	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
	"github.com/sagad/sagad/storage/bolt"
	"github.com/sagad/sagad/storage/bolt/bolttest"
)

// file writes one running saga to a new file and returns its path and id.
func file(t *testing.T) (string, ulid.ULID) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "sagad.db")
	db, err := bolt.Open(path, &bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	id := ulid.Make()
	s := &storage.Saga{ID: id, Definition: "d", Status: saga.StatusRunning, Steps: []storage.Step{{Name: "a", Status: saga.StepPending}}}
	if _, err := db.SagaCreate(context.Background(), &storage.Transition{Saga: s}); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	return path, id
}

func TestTruncateSaga(t *testing.T) {
	path, id := file(t)
	if err := bolttest.TruncateSaga(path, ulid.Make(), 17); err == nil {
		t.Fatal("truncating an unknown saga succeeded")
	}
	if err := bolttest.TruncateSaga(path, id, 20); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.SagaGet(context.Background(), id); !errors.Is(err, storage.ErrCorrupt) {
		t.Fatalf("get of the cut record: %v, want ErrCorrupt", err)
	}
}

func TestUnindex(t *testing.T) {
	path, id := file(t)
	if err := bolttest.Unindex(path, id); err != nil {
		t.Fatal(err)
	}
	if err := bolttest.Unindex(path, id); err == nil {
		t.Fatal("a second Unindex found the entry again")
	}
	probs, err := checkFile(t, path)
	if err != nil {
		t.Fatal(err)
	}
	if len(probs) != 1 || probs[0].Kind != "saga-not-indexed" {
		t.Fatalf("check found %v, want one saga-not-indexed", probs)
	}
}

func checkFile(t *testing.T, path string) ([]bolt.Problem, error) {
	t.Helper()
	db, err := bolt.Open(path, &bolt.Options{ReadOnly: true})
	if err != nil {
		return nil, err
	}
	defer db.Close()
	return db.Check(nil)
}
