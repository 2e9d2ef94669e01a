package main

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/oklog/ulid/v2"
	"go.etcd.io/bbolt"

	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
)

func TestCheckCommand(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "sagad.db")
	db, err := storage.Open(path, &storage.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	var ids []storage.Encoded
	for range 3 {
		s := &storage.Saga{ID: ulid.Make(), Definition: "d", Status: saga.StatusRunning,
			Steps: []storage.Step{{Name: "a", Status: saga.StepPending}}}
		e, err := storage.EncodeSaga(s)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, *e)
		if err := db.Update(func(tx *storage.Tx) error { return tx.SagaPut(e) }); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		args   []string
		break_ bool
		code   int
		out    string
	}{
		{"sound file", []string{"check", "--db", path}, false, exitOK, ": ok"},
		{"sound file as JSON", []string{"check", "--db", path, "--json"}, false, exitOK, `"problems": []`},
		{"missing file", []string{"check", "--db", filepath.Join(t.TempDir(), "none", "x.db")}, false, exitFailed, ""},
		{"usage", []string{"check", "extra"}, false, exitUsage, ""},
		{"unknown command", []string{"frobnicate"}, false, exitUsage, ""},
		{"broken index", []string{"check", "--db", path}, true, exitFailed, "saga-not-indexed"},
	}
	for _, tt := range tests {
		if tt.break_ {
			b, err := bbolt.Open(path, 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			id := ids[1].ID
			err = b.Update(func(tx *bbolt.Tx) error {
				return tx.Bucket([]byte("status")).Delete(append([]byte{1}, id[:]...))
			})
			b.Close()
			if err != nil {
				t.Fatal(err)
			}
		}
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), tt.args, &stdout, &stderr)
		if code != tt.code || !strings.Contains(stdout.String(), tt.out) {
			t.Fatalf("%s: exit %d, stdout %q, stderr %q; want exit %d and %q", tt.name, code, stdout.String(), stderr.String(), tt.code, tt.out)
		}
		if tt.args[len(tt.args)-1] == "--json" && !json.Valid(stdout.Bytes()) {
			t.Fatalf("%s: --json output is not JSON: %s", tt.name, stdout.String())
		}
	}
}
