package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/sagad/sagad/internal/pgtest"
)

// The example runs as documented, on a schema of the test's own.
func TestExample(t *testing.T) {
	url := pgtest.URL(t)
	t.Setenv("SAGAD_POSTGRES_URL", url)
	var out bytes.Buffer
	if err := run([]string{"-schema", pgtest.Schema(t, url)}, &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "ada's balance: 40") {
		t.Fatalf("output:\n%s", out.String())
	}
}
