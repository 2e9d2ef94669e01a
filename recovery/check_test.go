package recovery_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/cockroachdb/errors"

	"github.com/sagad/sagad/recovery"
	"github.com/sagad/sagad/storage/bolt"
)

// Check runs the backend's check with the definition parser it is given;
// CheckFile checks the file's own invariants only.
func TestCheckValidatesDefinitionsWhenAsked(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "sagad.db")
	db, err := bolt.Open(path, &bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.DefinitionPut(context.Background(), "order", "v1", []byte(`{"steps":[]}`)); err != nil {
		t.Fatal(err)
	}
	refuse := func(name string, _ []byte) error { return errors.Newf("%s: no steps", name) }
	tests := []struct {
		name     string
		validate func(string, []byte) error
		want     int
	}{
		{"with the daemon's parser", refuse, 1},
		{"without a parser", nil, 0},
	}
	for _, tt := range tests {
		problems, err := recovery.Check(db, tt.validate)
		if err != nil || len(problems) != tt.want {
			t.Errorf("%s: Check = %v, %v; want %d problems", tt.name, problems, err, tt.want)
		}
		if tt.want == 1 && len(problems) == 1 && problems[0].Kind != "definition-invalid" {
			t.Errorf("%s: problem %+v, want definition-invalid", tt.name, problems[0])
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if err := recovery.CheckFile(path); err != nil {
		t.Errorf("CheckFile = %v, want nil (it does not parse definitions)", err)
	}
}
