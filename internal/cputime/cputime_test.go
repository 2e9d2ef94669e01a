package cputime_test

import (
	"testing"
	"time"

	"github.com/sagad/sagad/internal/cputime"
)

// TestProcessGrows burns CPU until Process has counted at least 20 ms more.
func TestProcessGrows(t *testing.T) {
	start := cputime.Process()
	x := 0
	for wall := time.Now(); cputime.Process()-start < 20*time.Millisecond; x++ {
		if time.Since(wall) > 10*time.Second {
			t.Fatalf("CPU time grew by %v in 10s of busy work", cputime.Process()-start)
		}
	}
	if x == 0 {
		t.Fatal("no work done")
	}
}
