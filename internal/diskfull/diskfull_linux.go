package diskfull

import (
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"github.com/cockroachdb/errors"
)

// Mount mounts a tmpfs of size bytes on a new directory until the test
// ends, and returns the directory.
func Mount(t testing.TB, size int) string {
	t.Helper()
	dir := t.TempDir()
	opts := "size=" + strconv.Itoa(size)
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, opts); err != nil {
		msg := "this test fills a small file system and must mount one (run as root): mount tmpfs on " + dir + ": " + err.Error()
		if os.Getenv("SAGAD_REQUIRE_MOUNT") == "1" {
			t.Fatalf("SAGAD_REQUIRE_MOUNT=1: %s", msg)
		}
		t.Skip(msg)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount the test's tmpfs %s: %v", dir, err)
		}
	})
	return dir
}

// Fill writes a file in dir until the file system is full, and returns a
// function that removes it.
func Fill(t testing.TB, dir string) (free func()) {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 64<<10)
	for {
		if _, err = f.Write(chunk); err != nil {
			break
		}
	}
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("filling %s: %v, want ENOSPC", dir, err)
	}
	return func() {
		if err := os.Remove(path); err != nil {
			t.Errorf("free the full file system: %v", err)
		}
	}
}
