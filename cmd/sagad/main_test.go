package main

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/oklog/ulid/v2"

	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
	"github.com/sagad/sagad/storage/bolt"
	"github.com/sagad/sagad/storage/bolt/bolttest"
)

func TestCheckCommand(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "sagad.db")
	db, err := bolt.Open(path, &bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	var ids []ulid.ULID
	for range 3 {
		s := &storage.Saga{ID: ulid.Make(), Definition: "d", Status: saga.StatusRunning,
			Steps: []storage.Step{{Name: "a", Status: saga.StepPending}}}
		if _, err := db.SagaCreate(context.Background(), &storage.Transition{Saga: s}); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, s.ID)
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
			if err := bolttest.Unindex(path, ids[1]); err != nil {
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
