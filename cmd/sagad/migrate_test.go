package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/oklog/ulid/v2"

	"github.com/sagad/sagad/client"
	"github.com/sagad/sagad/internal/pgtest"
	"github.com/sagad/sagad/storage/postgres"
)

func TestMigrateCommand(t *testing.T) {
	t.Parallel()
	url := pgtest.URL(t)
	schema := pgtest.Schema(t, url)
	db := postgres.WithSchema(url, schema)
	ctx := context.Background()
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
		code, out, errs := runCmd(t, tt.args...)
		if code != tt.code || !strings.Contains(out, tt.out) || !strings.Contains(errs, tt.errs) {
			t.Fatalf("%s: exit %d, stdout %q, stderr %q; want exit %d, %q, %q", tt.name, code, out, errs, tt.code, tt.out, tt.errs)
		}
	}
	if _, out, _ := runCmd(t, "migrate", "--db", db, "--print"); strings.Contains(out, "BEGIN") {
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
	if code, _, errs := runCmd(t, "migrate", "--db", db); code != exitFailed || !strings.Contains(errs, "newer sagad") {
		t.Fatalf("migrate of a newer schema: exit %d, stderr %q", code, errs)
	}
	if code, _, errs := runCmd(t, "serve", "--db", db, "--listen", "127.0.0.1:0"); code == exitOK || !strings.Contains(errs, "newer sagad") {
		t.Fatalf("serve on a newer schema: exit %d, stderr %q", code, errs)
	}
	var v map[string]any
	_, out, _ := runCmd(t, "migrate", "--db", db, "--print", "--json")
	if json.Unmarshal([]byte(out), &v) == nil {
		t.Fatalf("print of a newer schema printed %s", out)
	}
}

// sagad check on a PostgreSQL schema: sound after sagas ran; a log entry
// lost and a finished saga still claimed are reported.
func TestCheckOnPostgres(t *testing.T) {
	t.Parallel()
	url := pgtest.URL(t)
	schema := pgtest.Schema(t, url)
	db := postgres.WithSchema(url, schema)
	ctx := context.Background()
	p := &participants{hit: make(chan string, 64)}
	srv := httptest.NewServer(http.HandlerFunc(p.handler))
	defer srv.Close()
	d := startDaemon(t, db)
	c := d.client(t)
	spec := fmt.Sprintf(`{"steps":[{"name":"one","action":{"url":"%s/one"}},{"name":"two","action":{"url":"%s/two"}}]}`, srv.URL, srv.URL)
	if _, err := c.PutDefinition(ctx, "pair", []byte(spec)); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for range 3 {
		res, err := c.Start(ctx, "pair", nil, client.StartOptions{Wait: 10 * time.Second})
		if err != nil || res.Saga == nil || res.Saga.Status != "completed" {
			t.Fatalf("start: %+v, %v", res, err)
		}
		ids = append(ids, res.ID)
	}
	if code, out, errs := runCmd(t, "check", "--db", db); code != exitOK || !strings.Contains(out, ": ok") {
		t.Fatalf("check of a sound schema: exit %d, %q, %q", code, out, errs)
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	q := pgx.Identifier{schema}.Sanitize()
	if _, err := conn.Exec(ctx, "DELETE FROM "+q+".saga_log WHERE saga_id = $1 AND seq = 2", pgtype.UUID{Bytes: ulid.MustParse(ids[0]), Valid: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "UPDATE "+q+".sagas SET owner = 'ghost' WHERE id = $1", pgtype.UUID{Bytes: ulid.MustParse(ids[1]), Valid: true}); err != nil {
		t.Fatal(err)
	}
	code, out, _ := runCmd(t, "check", "--db", db, "--json")
	if code != exitFailed || !strings.Contains(out, "log-missing") || !strings.Contains(out, "claim-on-finished") || !json.Valid([]byte(out)) {
		t.Fatalf("check of a damaged schema: exit %d:\n%s", code, out)
	}
}
