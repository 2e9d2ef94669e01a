package main

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sagad/sagad/recovery"
)

// TestRun runs the whole example and checks its report. run itself fails
// when a saga ends otherwise than expected; the report lines pin the
// outcomes a reader sees.
func TestRun(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	path := filepath.Join(t.TempDir(), "order.db")

	var out bytes.Buffer
	if err := run(ctx, path, &out); err != nil {
		t.Fatalf("run: %v\noutput:\n%s", err, out.String())
	}
	report := normalize(out.String())
	for _, want := range []string{
		// (a)
		"charge succeeded 1 attempt",
		"shipped by swiftship, tracking number SWI-A-1001",
		// (b)
		`reason: step "charge" failed: payments: card declined (permanent: true)`,
		"reserve compensated 1 attempt; compensation: 1 attempt",
		"charge failed 1 attempt: payments: card declined",
		"ship skipped 0 attempts",
		"reserve compensation 1 attempt_succeeded",
		"status_changed → compensated",
		// (c)
		"charge succeeded 3 attempts",
		"payments: no answer: context deadline exceeded (retry in",
		"payments: connection reset before the reply (retry in",
		// (d)
		"ship succeeded 1 attempt, then the fallback",
		"shipped by postal, tracking number POS-D-1004",
		"circuit breaker payments: closed",
		"all 4 orders ended as expected",
	} {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q; report:\n%s", want, out.String())
		}
	}
	if strings.Contains(report, "UNEXPECTED") {
		t.Errorf("report has unexpected outcomes:\n%s", out.String())
	}
	if err := recovery.CheckFile(path); err != nil {
		t.Errorf("consistency check of the database after the run: %v", err)
	}

	// A second run on the same file finds its orders already started: the
	// idempotency keys are durable, and run says so instead of reporting
	// stale outcomes.
	out.Reset()
	err := run(ctx, path, &out)
	if err == nil || !strings.Contains(err.Error(), "was already started") {
		t.Errorf("second run on the same file: err = %v, want an error saying the order was already started", err)
	}
}

// normalize collapses the report's column padding to single spaces.
func normalize(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = strings.Join(strings.Fields(l), " ")
	}
	return strings.Join(lines, "\n")
}
