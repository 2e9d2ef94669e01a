// Package pgtest gives tests a real PostgreSQL: it finds the server, skips
// (or, in CI, fails) when none answers, and hands out throwaway schemas. It
// is for tests only.
package pgtest

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/oklog/ulid/v2"
	"github.com/sagad/sagad/storage/postgres"
)

// DefaultURL is where PostgreSQL is looked for when SAGAD_POSTGRES_URL is
// unset.
const DefaultURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// URL returns the server's URL. If no server answers there, the test is
// skipped with a message that says how to start one, or fails when
// SAGAD_REQUIRE_POSTGRES=1 (as in CI, where a skip would hide a failure).
func URL(t testing.TB) string {
	t.Helper()
	u := os.Getenv("SAGAD_POSTGRES_URL")
	if u == "" {
		u = DefaultURL
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		msg := fmt.Sprintf("no PostgreSQL answers at %s (%v): start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`, or set SAGAD_POSTGRES_URL", redact(u), err)
		if os.Getenv("SAGAD_REQUIRE_POSTGRES") == "1" {
			t.Fatalf("SAGAD_REQUIRE_POSTGRES=1: %s", msg)
		}
		t.Skip(msg)
	}
	_ = conn.Close(ctx)
	return u
}

func redact(u string) string {
	cfg, err := pgx.ParseConfig(u)
	if err != nil {
		return "the configured URL"
	}
	return fmt.Sprintf("%s@%s:%d/%s", cfg.User, cfg.Host, cfg.Port, cfg.Database)
}

// Schema returns the name of a schema no one uses yet, which is dropped
// (with everything in it) when the test ends.
func Schema(t testing.TB, url string) string {
	t.Helper()
	name := "sagad_test_" + strings.ToLower(ulid.Make().String())
	t.Cleanup(func() { Drop(t, url, name) })
	return name
}

// Drop drops a schema and everything in it.
func Drop(t testing.TB, url, schema string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := postgres.DropSchema(ctx, url, schema); err != nil {
		t.Errorf("drop schema %s: %v", schema, err)
	}
}
