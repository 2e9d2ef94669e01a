// Package diskfull gives tests a real full disk: a small tmpfs mounted for
// the test, and a file that fills it until writes fail with ENOSPC. It is
// for tests only.
//
// Mounting needs root (or CAP_SYS_ADMIN). Without it a test is skipped with
// a message that says so, except when SAGAD_REQUIRE_MOUNT=1 (as in CI,
// which runs as root): there a skip would hide a failure. Linux only.
package diskfull
