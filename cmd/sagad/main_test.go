package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
	"github.com/sagad/sagad/storage/bolt"
	"github.com/sagad/sagad/storage/bolt/bolttest"
)

func TestCheckCommand(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "sagad.db")
	db, err := bolt.Open(path, &bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	var ids []ulid.ULID
	for range 3 {
		s := &storage.Saga{ID: ulid.Make(), Definition: "d", Status: saga.StatusRunning,
			Steps: []storage.Step{{Name: "a", Status: saga.StepPending}}}
		if _, err := db.SagaCreate(context.Background(), &storage.Transition{Saga: s}); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, s.ID)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		args   []string
		break_ bool
		code   int
		out    string
	}{
		{"sound file", []string{"check", "--db", path}, false, exitOK, ": ok"},
		{"sound file as JSON", []string{"check", "--db", path, "--json"}, false, exitOK, `"problems": []`},
		{"missing file", []string{"check", "--db", filepath.Join(t.TempDir(), "none", "x.db")}, false, exitFailed, ""},
		{"usage", []string{"check", "extra"}, false, exitUsage, ""},
		{"unknown command", []string{"frobnicate"}, false, exitUsage, ""},
		{"broken index", []string{"check", "--db", path}, true, exitFailed, "saga-not-indexed"},
	}
	for _, tt := range tests {
		if tt.break_ {
			if err := bolttest.Unindex(path, ids[1]); err != nil {
				t.Fatal(err)
			}
		}
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), tt.args, &stdout, &stderr)
		if code != tt.code || !strings.Contains(stdout.String(), tt.out) {
			t.Fatalf("%s: exit %d, stdout %q, stderr %q; want exit %d and %q", tt.name, code, stdout.String(), stderr.String(), tt.code, tt.out)
		}
		if tt.args[len(tt.args)-1] == "--json" && !json.Valid(stdout.Bytes()) {
			t.Fatalf("%s: --json output is not JSON: %s", tt.name, stdout.String())
		}
	}
}

func TestVersionCommand(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"version"}, {"--version"}} {
		var stdout, stderr bytes.Buffer
		if code := run(context.Background(), args, &stdout, &stderr); code != exitOK || !strings.HasPrefix(stdout.String(), "sagad ") ||
			!strings.Contains(stdout.String(), "go1.") {
			t.Errorf("%v: exit %d, %q, %q", args, code, stdout.String(), stderr.String())
		}
	}
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"version", "--json"}, &stdout, &stderr); code != exitOK || !json.Valid(stdout.Bytes()) ||
		!strings.Contains(stdout.String(), `"module": "github.com/sagad/sagad"`) {
		t.Errorf("version --json: exit %d, %q", code, stdout.String())
	}
	if code := run(context.Background(), []string{"version", "extra"}, &stdout, &stderr); code != exitUsage {
		t.Errorf("version extra: exit %d, want a usage error", code)
	}
}

func TestParseSince(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"90m", 90 * time.Minute, true},
		{"12h", 12 * time.Hour, true},
		{"7d", 7 * 24 * time.Hour, true},
		{"0d", 0, true},
		{"1.5d", 0, false},
		{"-1h", 0, false},
		{"d", 0, false},
		{"week", 0, false},
	}
	for _, tt := range tests {
		got, err := parseSince(tt.in)
		if (err == nil) != tt.ok || (tt.ok && got != tt.want) {
			t.Errorf("parseSince(%q) = %s, %v; want %s, ok %v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

// The completion script is valid bash, completes commands, subcommands and
// flags, and knows every command the usage lists.
func TestCompletion(t *testing.T) {
	t.Parallel()
	var script, stderr bytes.Buffer
	if code := run(context.Background(), []string{"completion", "bash"}, &script, &stderr); code != exitOK {
		t.Fatalf("completion bash: exit %d, %s", code, stderr.String())
	}
	var help bytes.Buffer
	usage(&help)
	for _, line := range strings.Split(help.String(), "\n") {
		if f := strings.Fields(line); len(f) > 1 && strings.HasPrefix(line, "  ") {
			if _, ok := completionWords[f[0]]; !ok {
				t.Errorf("command %q of the usage is not completed", f[0])
			}
		}
	}
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash to run the script with")
	}
	path := filepath.Join(t.TempDir(), "sagad.bash")
	if err := os.WriteFile(path, script.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bash, "-c", `source "$0"
COMP_WORDS=(sagad defi); COMP_CWORD=1; _sagad; echo "${COMPREPLY[@]}"
COMP_WORDS=(sagad outbox d); COMP_CWORD=2; _sagad; echo "${COMPREPLY[@]}"
COMP_WORDS=(sagad sagas list --cu); COMP_CWORD=3; _sagad; echo "${COMPREPLY[@]}"`, path).CombinedOutput()
	if err != nil || string(out) != "definitions\ndiscard\n--cursor\n" {
		t.Fatalf("completing: %v\n%s", err, out)
	}
	if code := run(context.Background(), []string{"completion", "fish"}, &script, &stderr); code != exitUsage {
		t.Errorf("completion fish: exit %d, want usage", code)
	}
}
