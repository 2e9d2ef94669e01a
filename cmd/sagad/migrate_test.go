package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/sagad/sagad/internal/pgtest"
	"github.com/sagad/sagad/storage/postgres"
)

func TestMigrateCommand(t *testing.T) {
	t.Parallel()
	url := pgtest.URL(t)
	schema := pgtest.Schema(t, url)
	db := withSchema(url, schema)
	ctx := context.Background()
	sagad := func(args ...string) (int, string, string) {
		var stdout, stderr bytes.Buffer
		code := run(ctx, args, &stdout, &stderr)
		return code, stdout.String(), stderr.String()
	}
	var versions []int
	for _, m := range postgres.Migrations(schema) {
		versions = append(versions, m.Version)
	}
	tests := []struct {
		name      string
		args      []string
		code      int
		out, errs string
	}{
		{"print on an empty schema", []string{"migrate", "--db", db, "--print"}, exitOK, "CREATE TABLE " + pgx.Identifier{schema}.Sanitize() + ".sagas", ""},
		{"apply", []string{"migrate", "--db", db}, exitOK, fmt.Sprint("applied ", versions), ""},
		{"apply again", []string{"migrate", "--db", db}, exitOK, "nothing to apply", ""},
		{"print when current", []string{"migrate", "--db", db, "--print", "--json"}, exitOK, fmt.Sprintf(`"version": %d`, postgres.SchemaVersion()), ""},
		{"a file", []string{"migrate", "--db", filepath.Join(t.TempDir(), "x.db")}, exitUsage, "", "must be a postgres:// URL"},
		{"compact", []string{"compact", "--db", db}, exitFailed, "", "works on a bbolt database file"},
		{"offline sagas list", []string{"sagas", "list", "--db", db}, exitFailed, "", "--addr"},
	}
	for _, tt := range tests {
		code, out, errs := sagad(tt.args...)
		if code != tt.code || !strings.Contains(out, tt.out) || !strings.Contains(errs, tt.errs) {
			t.Fatalf("%s: exit %d, stdout %q, stderr %q; want exit %d, %q, %q", tt.name, code, out, errs, tt.code, tt.out, tt.errs)
		}
	}
	if _, out, _ := sagad("migrate", "--db", db, "--print"); strings.Contains(out, "BEGIN") {
		t.Fatalf("print of a current schema has migrations to apply:\n%s", out)
	}

	// A schema a newer sagad migrated is refused, by migrate and by serve.
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "INSERT INTO "+pgx.Identifier{schema}.Sanitize()+".schema_migrations (version, name) VALUES ($1, 'future.sql')",
		postgres.SchemaVersion()+1); err != nil {
		t.Fatal(err)
	}
	if code, _, errs := sagad("migrate", "--db", db); code != exitFailed || !strings.Contains(errs, "newer sagad") {
		t.Fatalf("migrate of a newer schema: exit %d, stderr %q", code, errs)
	}
	if code, _, errs := sagad("serve", "--db", db, "--listen", "127.0.0.1:0"); code == exitOK || !strings.Contains(errs, "newer sagad") {
		t.Fatalf("serve on a newer schema: exit %d, stderr %q", code, errs)
	}
	var v map[string]any
	_, out, _ := sagad("migrate", "--db", db, "--print", "--json")
	if json.Unmarshal([]byte(out), &v) == nil {
		t.Fatalf("print of a newer schema printed %s", out)
	}
}
