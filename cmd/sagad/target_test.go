package main

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/oklog/ulid/v2"
)

// TestOfflineCommandsRefuseAMissingFile runs every command that opens a
// database file on a path that does not exist (a typo): each must fail,
// say which path and what to do, and leave no file behind. Only sagad
// serve creates a database.
func TestOfflineCommandsRefuseAMissingFile(t *testing.T) {
	t.Parallel()
	for _, tt := range offlineCommands() {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			path := filepath.Join(dir, "typo.db")
			code, out, errOut := runCmd(t, tt.argsIn(dir, path)...)
			if code != exitFailed {
				t.Errorf("exit %d, want %d (failed)\nstdout: %s\nstderr: %s", code, exitFailed, out, errOut)
			}
			for _, want := range []string{path + " does not exist", "hint: is the path right", "sagad serve creates"} {
				if !strings.Contains(errOut, want) {
					t.Errorf("stderr %q does not say %q", errOut, want)
				}
			}
			if names := dirNames(t, dir); len(names) != 0 {
				t.Errorf("the command left %v in the directory, want nothing", names)
			}
		})
	}
}

// TestOfflineCommandsRefuseAnEmptyFile runs every command that opens a
// database file on an empty file (a copy that failed): each must fail as
// for a missing file, say the file is empty and what to do, and leave it
// empty, not make a database of it and report that it holds nothing.
func TestOfflineCommandsRefuseAnEmptyFile(t *testing.T) {
	t.Parallel()
	for _, tt := range offlineCommands() {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			path := filepath.Join(dir, "restored.db")
			if err := os.WriteFile(path, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			code, out, errOut := runCmd(t, tt.argsIn(dir, path)...)
			if code != exitFailed {
				t.Errorf("exit %d, want %d (failed)\nstdout: %s\nstderr: %s", code, exitFailed, out, errOut)
			}
			for _, want := range []string{path + " is empty (0 bytes)", "hint: is it a copy or a restore that failed", "sagad serve creates"} {
				if !strings.Contains(errOut, want) {
					t.Errorf("stderr %q does not say %q", errOut, want)
				}
			}
			if info, err := os.Stat(path); err != nil || info.Size() != 0 {
				t.Errorf("the empty file after the command: %v, %v; want it left empty", info, err)
			}
			if names := dirNames(t, dir); len(names) != 1 {
				t.Errorf("the directory holds %v, want the empty file only", names)
			}
		})
	}
}

// dirNames returns the names of the entries of dir.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	names := make([]string, len(entries))
	for i, e := range entries {
		names[i] = e.Name()
	}
	return names
}

// offlineCommand is a command that opens the database file given by --db.
type offlineCommand struct {
	name string
	args []string
}

// argsIn returns the command's arguments aimed at the file path, with the
// files it writes in dir.
func (c offlineCommand) argsIn(dir, path string) []string {
	args := append([]string{}, c.args...)
	for i, a := range args {
		if a == "copy.db" {
			args[i] = filepath.Join(dir, a)
		}
	}
	return append(args, "--db", path)
}

// offlineCommands are the commands that open a database file.
func offlineCommands() []offlineCommand {
	id := ulid.Make().String()
	return []offlineCommand{
		{"sagas list", []string{"sagas", "list"}},
		{"sagas list as JSON", []string{"sagas", "list", "--json"}},
		{"sagas show", []string{"sagas", "show", id}},
		{"sagas retry", []string{"sagas", "retry", id}},
		{"sagas abort", []string{"sagas", "abort", id}},
		{"sagas resolve", []string{"sagas", "resolve", id, "--note", "by hand"}},
		{"outbox list", []string{"outbox", "list"}},
		{"outbox stats", []string{"outbox", "stats"}},
		{"outbox requeue", []string{"outbox", "requeue", id}},
		{"outbox requeue all", []string{"outbox", "requeue", "--all-not-produced"}},
		{"recover", []string{"recover"}},
		{"check", []string{"check"}},
		{"backup", []string{"backup", "--to", "copy.db"}},
		{"compact", []string{"compact"}},
	}
}

// TestOfflineCommandsRefuseADirectory: --db naming a directory is refused
// with a hint, not reported as bbolt's open error.
func TestOfflineCommandsRefuseADirectory(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	code, _, errOut := runCmd(t, "sagas", "list", "--db", dir)
	if code != exitFailed || !strings.Contains(errOut, dir+" is a directory") || !strings.Contains(errOut, "hint:") {
		t.Errorf("sagas list --db DIR: exit %d, stderr %q; want exit %d saying it is a directory, with a hint", code, errOut, exitFailed)
	}
}

// TestBackupLeavesAnotherBackupsPartialFile: a backup whose TO.partial
// exists already (another backup is writing it, or one was interrupted)
// fails and leaves that file as it is, offline and online.
func TestBackupLeavesAnotherBackupsPartialFile(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"offline", "online"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			path, _ := opsFile(t)
			to := filepath.Join(t.TempDir(), "backup.db")
			other := []byte("another backup's bytes")
			if err := os.WriteFile(to+".partial", other, 0o600); err != nil {
				t.Fatal(err)
			}
			flags := targetFlags(t, mode, path)
			code, out, errOut := runCmd(t, append([]string{"backup", "--to", to}, flags...)...)
			if code != exitFailed || !strings.Contains(errOut, "another backup is writing this file") {
				t.Errorf("backup: exit %d, stdout %q, stderr %q; want exit %d and a hint about the other backup", code, out, errOut, exitFailed)
			}
			if got, err := os.ReadFile(to + ".partial"); err != nil || string(got) != string(other) {
				t.Errorf("the other backup's partial file: %q, %v; want it untouched: %q", got, err, other)
			}
			if _, err := os.Stat(to); err == nil {
				t.Errorf("%s was written; want no backup", to)
			}
			// Once the other backup's file is gone, the backup succeeds.
			if err := os.Remove(to + ".partial"); err != nil {
				t.Fatal(err)
			}
			if code, out, errOut := runCmd(t, append([]string{"backup", "--to", to}, flags...)...); code != exitOK {
				t.Fatalf("backup after removing the partial file: exit %d, %s %s", code, out, errOut)
			}
			if _, err := os.Stat(to + ".partial"); err == nil {
				t.Errorf("a successful backup left %s.partial", to)
			}
		})
	}
}

// TestCompactHelpTellsTheTruth: compact keeps no copy of the old file, so
// its help must not promise one.
func TestCompactHelpTellsTheTruth(t *testing.T) {
	t.Parallel()
	path, _ := opsFile(t)
	code, _, help := runCmd(t, "compact", "--help")
	if code != exitOK || strings.Contains(help, "before-compact") || !strings.Contains(help, "not kept") {
		t.Errorf("compact --help: exit %d, %q; want it to say the old file is not kept", code, help)
	}
	if code, out, errOut := runCmd(t, "compact", "--db", path); code != exitOK {
		t.Fatalf("compact: exit %d, %s %s", code, out, errOut)
	}
	entries, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() != filepath.Base(path) {
			t.Errorf("compact left %s beside the database", e.Name())
		}
	}
}

// An answer the CLI cannot use says what to do: a 401 asks for the token;
// an address that is not a sagad's says so.
func TestCLIExplainsAnswers(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, filepath.Join(t.TempDir(), "sagad.db"), "--token", "s3cret")
	other := httptest.NewServer(http.NotFoundHandler())
	defer other.Close()
	for _, tt := range []struct {
		addr, hint string
	}{
		{"http://" + d.addr, "pass --token or set SAGAD_TOKEN"},
		{other.URL, "is --addr (or SAGAD_ADDR) the address of a sagad daemon?"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), []string{"sagas", "list", "--addr", tt.addr}, &stdout, &stderr)
		if code != exitFailed || !strings.Contains(stderr.String(), tt.hint) {
			t.Errorf("sagas list --addr %s: exit %d, stderr %q; want the hint %q", tt.addr, code, stderr.String(), tt.hint)
		}
	}
}
