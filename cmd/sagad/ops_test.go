package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/sagad/sagad/client"
	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
	"github.com/sagad/sagad/storage/bolt"
	"github.com/sagad/sagad/transport/httpapi"
)

// opsFile builds a database with a completed, a compensated and a failed
// saga, and outbox events of which one is not_produced. It returns the
// path and the saga ids by status.
func opsFile(t *testing.T) (string, map[string]string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "sagad.db")
	eng, err := engine.Open(path, engine.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ok := func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
		return json.RawMessage(`{"ok":true}`), c.Emit(saga.Event{Name: c.Step + ".done", Payload: json.RawMessage(`{}`)})
	}
	fail := func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
		var in struct{ Mode string }
		_ = c.DecodeInput(&in)
		if in.Mode == "" {
			return nil, nil
		}
		return nil, saga.Permanent(errors.New("declined by the bank"))
	}
	comp := func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
		var in struct{ Mode string }
		_ = c.DecodeInput(&in)
		if in.Mode == "stuck" {
			return nil, errors.New("refund service down")
		}
		return nil, nil
	}
	def := &saga.Definition{Name: "order", Steps: []saga.Step{
		{Name: "reserve", Action: ok, Compensation: comp, CompensationRetry: saga.RetryPolicy{MaxAttempts: 2, InitialInterval: time.Millisecond}},
		{Name: "charge", Action: fail},
	}}
	if err := eng.Register(def); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = eng.Run(ctx) }()
	ids := map[string]string{}
	for _, mode := range []string{"", "declined", "stuck"} {
		st, err := eng.Start(ctx, "order", map[string]string{"mode": mode})
		if err != nil {
			t.Fatal(err)
		}
		s, err := eng.Wait(ctx, st.ID)
		if err != nil {
			t.Fatal(err)
		}
		ids[string(s.Status)] = s.ID
	}
	page, err := eng.OutboxList(ctx, engine.OutboxListOptions{})
	if err != nil || len(page.Events) != 3 {
		t.Fatalf("outbox %+v %v: want one event per reserve", page, err)
	}
	err = eng.Store().(*bolt.DB).Update(func(tx *bolt.Tx) error {
		_, err := tx.OutboxFailed(page.Events[0].ID, "NO_ROUTE", true, time.Now())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	ids["not_produced"] = page.Events[0].ID.String()
	cancel()
	<-done
	if err := eng.Close(); err != nil {
		t.Fatal(err)
	}
	if len(ids) != 4 {
		t.Fatalf("sagas ended %v; want completed, compensated and failed", ids)
	}
	return path, ids
}

func runCmd(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr strings.Builder
	code := run(context.Background(), args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// eachTarget runs fn, as parallel subtests, on a file of opsFile's aimed
// at offline and online: where holds the flags that aim a command at it.
func eachTarget(t *testing.T, fn func(t *testing.T, where []string, ids map[string]string)) {
	for _, mode := range []string{"offline", "online"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			path, ids := opsFile(t)
			fn(t, targetFlags(t, mode, path), ids)
		})
	}
}

// targetFlags returns the flags that aim a command at path: the file itself
// (mode "offline"), or the API served on it (mode "online").
func targetFlags(t *testing.T, mode, path string) []string {
	t.Helper()
	if mode == "online" {
		return []string{"--addr", serveFile(t, path)}
	}
	return []string{"--db", path}
}

// serveFile runs the API on the file in this process: the file is then
// locked, as it is when a daemon runs.
func serveFile(t *testing.T, path string) string {
	t.Helper()
	eng, err := engine.Open(path, engine.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	api, err := httpapi.New(httpapi.Config{Engine: eng, Definitions: httpapi.NewDefinitions(eng, nil)})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(api)
	t.Cleanup(func() {
		srv.Close()
		_ = eng.Close()
	})
	return srv.URL
}

func TestSagasCommands(t *testing.T) {
	t.Parallel()
	path, ids := opsFile(t)
	check := func(t *testing.T, where ...string) {
		t.Helper()
		code, out, errOut := runCmd(t, append([]string{"sagas", "list", "--json"}, where...)...)
		var page client.Page
		if code != exitOK || json.Unmarshal([]byte(out), &page) != nil || len(page.Sagas) != 3 {
			t.Fatalf("sagas list --json: exit %d, %s %s; want 3 sagas", code, out, errOut)
		}
		code, out, _ = runCmd(t, append([]string{"sagas", "list", "--status", "failed", "--json"}, where...)...)
		if code != exitOK || json.Unmarshal([]byte(out), &page) != nil || len(page.Sagas) != 1 || page.Sagas[0].ID != ids["failed"] {
			t.Fatalf("sagas list --status failed: exit %d, %s; want the failed saga", code, out)
		}
		code, out, _ = runCmd(t, append([]string{"sagas", "list", "--limit", "2"}, where...)...)
		if code != exitOK || !strings.Contains(out, "DEFINITION") || strings.Count(out, "order") != 2 {
			t.Fatalf("sagas list --limit 2: exit %d:\n%s", code, out)
		}
		// The failed saga is stuck in reserve's compensation.
		if !strings.Contains(out, "reserve (compensation)") {
			t.Fatalf("sagas list does not show where the failed saga is stuck:\n%s", out)
		}
		code, out, _ = runCmd(t, append([]string{"sagas", "show", ids["failed"]}, where...)...)
		for _, want := range []string{"status      failed", "refund service down", "timeline:", "attempt_failed reserve compensation #2", "compensation of step"} {
			if code != exitOK || !strings.Contains(out, want) {
				t.Fatalf("sagas show (failed): exit %d, want %q in:\n%s", code, want, out)
			}
		}
		code, out, _ = runCmd(t, append([]string{"sagas", "show", "--json", ids["compensated"]}, where...)...)
		var shown struct {
			client.Saga
			Log []client.LogEntry `json:"log"`
		}
		if code != exitOK || json.Unmarshal([]byte(out), &shown) != nil || shown.ID != ids["compensated"] || shown.Status != "compensated" || len(shown.Log) < 5 {
			t.Fatalf("sagas show --json: exit %d:\n%s", code, out)
		}
		if code, _, errOut := runCmd(t, append([]string{"sagas", "show", ulid.Make().String()}, where...)...); code != exitFailed || !strings.Contains(errOut, "not found") {
			t.Fatalf("sagas show of an unknown id: exit %d, %s", code, errOut)
		}
	}
	t.Run("offline", func(t *testing.T) { check(t, "--db", path) })
	url := serveFile(t, path)
	t.Run("online", func(t *testing.T) { check(t, "--addr", url) })
	t.Run("offline while a daemon holds the file", func(t *testing.T) {
		start := time.Now()
		code, _, errOut := runCmd(t, "sagas", "list", "--db", path)
		if code != exitFailed || !strings.Contains(errOut, "--addr") || time.Since(start) > 5*time.Second {
			t.Fatalf("exit %d after %s, stderr %q; want a prompt failure suggesting --addr", code, time.Since(start), errOut)
		}
	})
}

func TestOutboxCommands(t *testing.T) {
	t.Parallel()
	eachTarget(t, func(t *testing.T, where []string, ids map[string]string) {
		code, out, _ := runCmd(t, append([]string{"outbox", "list", "--status", "not_produced", "--json"}, where...)...)
		var page client.OutboxPage
		if code != exitOK || json.Unmarshal([]byte(out), &page) != nil || len(page.Events) != 1 || page.Events[0].ID != ids["not_produced"] || page.Events[0].LastError != "NO_ROUTE" {
			t.Fatalf("outbox list --status not_produced: exit %d:\n%s", code, out)
		}
		code, out, _ = runCmd(t, append([]string{"outbox", "stats"}, where...)...)
		if code != exitOK || !strings.Contains(out, "new           2") || !strings.Contains(out, "not_produced  1") {
			t.Fatalf("outbox stats: exit %d:\n%s", code, out)
		}
		code, out, errOut := runCmd(t, append([]string{"outbox", "requeue", ids["not_produced"]}, where...)...)
		if code != exitOK || !strings.Contains(out, "re-queued 1") {
			t.Fatalf("outbox requeue: exit %d: %s %s", code, out, errOut)
		}
		code, _, errOut = runCmd(t, append([]string{"outbox", "requeue", ids["not_produced"]}, where...)...)
		if code != exitFailed || !strings.Contains(errOut, "already waiting") {
			t.Fatalf("second requeue: exit %d: %s; want a conflict", code, errOut)
		}
		code, out, _ = runCmd(t, append([]string{"outbox", "stats", "--json"}, where...)...)
		var st client.OutboxStats
		if code != exitOK || json.Unmarshal([]byte(out), &st) != nil || st.Counts.New != 3 || st.Counts.NotProduced != 0 {
			t.Fatalf("outbox stats --json after requeue: exit %d:\n%s", code, out)
		}
		code, out, _ = runCmd(t, append([]string{"outbox", "requeue", "--all-not-produced"}, where...)...)
		if code != exitOK || !strings.Contains(out, "re-queued 0") {
			t.Fatalf("requeue --all-not-produced with none left: exit %d: %s", code, out)
		}
	})
}

func TestOutboxDiscard(t *testing.T) {
	t.Parallel()
	eachTarget(t, func(t *testing.T, where []string, ids map[string]string) {
		code, out, errOut := runCmd(t, append([]string{"outbox", "discard", ids["not_produced"]}, where...)...)
		if code != exitOK || !strings.Contains(out, "discarded "+ids["not_produced"]) {
			t.Fatalf("outbox discard: exit %d: %s %s", code, out, errOut)
		}
		if code, _, errOut = runCmd(t, append([]string{"outbox", "discard", ids["not_produced"]}, where...)...); code != exitFailed || !strings.Contains(errOut, "not found") {
			t.Fatalf("second discard: exit %d: %s; want not found", code, errOut)
		}
		code, out, _ = runCmd(t, append([]string{"outbox", "stats", "--json"}, where...)...)
		var st client.OutboxStats
		if code != exitOK || json.Unmarshal([]byte(out), &st) != nil || st.Counts.NotProduced != 0 || st.Counts.New != 2 {
			t.Fatalf("outbox stats after the discard: exit %d:\n%s", code, out)
		}
		code, out, _ = runCmd(t, append([]string{"outbox", "list", "--json"}, where...)...)
		var page client.OutboxPage
		if code != exitOK || json.Unmarshal([]byte(out), &page) != nil || len(page.Events) == 0 {
			t.Fatalf("outbox list: exit %d:\n%s", code, out)
		}
		if code, _, errOut = runCmd(t, append([]string{"outbox", "discard", page.Events[0].ID}, where...)...); code != exitFailed || !strings.Contains(errOut, "waiting to be published") {
			t.Fatalf("discard of a new event: exit %d: %s; want a conflict", code, errOut)
		}
	})
}

func TestOpsUsage(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"sagas"}, {"sagas", "frobnicate"}, {"sagas", "list", "--status", "bogus"}, {"sagas", "list", "--limit", "0"},
		{"sagas", "show"}, {"sagas", "show", "a", "b"}, {"outbox", "list", "--status", "bogus"},
		{"outbox", "requeue"}, {"outbox", "requeue", "x", "--all-not-produced"}, {"outbox", "nope"},
		{"outbox", "discard"}, {"outbox", "discard", "a", "b"},
	} {
		if code, _, _ := runCmd(t, args...); code != exitUsage {
			t.Errorf("%v: exit %d, want %d (usage)", args, code, exitUsage)
		}
	}
	for _, args := range [][]string{{"sagas", "list", "--help"}, {"sagas", "show", "--help"}, {"outbox", "stats", "--help"}} {
		code, _, errOut := runCmd(t, args...)
		if code != exitOK || !strings.Contains(errOut, "Example:") {
			t.Errorf("%v: exit %d, help %q; want 0 and an example", args, code, errOut)
		}
	}
}

func TestSagasRetryAndAbort(t *testing.T) {
	t.Parallel()
	path, ids := opsFile(t)
	// Offline: this file's definition is Go code, not stored, so a retry
	// cannot be carried out here; the refusal says what to do.
	code, _, errOut := runCmd(t, "sagas", "retry", ids["failed"], "--db", path)
	if code != exitFailed || !strings.Contains(errOut, "unknown definition") || !strings.Contains(errOut, "hint:") {
		t.Fatalf("offline retry without the definition: exit %d, %s", code, errOut)
	}
	code, _, errOut = runCmd(t, "sagas", "abort", ids["completed"], "--db", path)
	if code != exitFailed || !strings.Contains(errOut, "it is completed") {
		t.Fatalf("abort of a completed saga: exit %d, %s; want a conflict", code, errOut)
	}

	// Online, with the definition registered and its refund service fixed:
	// the failed saga's compensation is retried and the saga compensated.
	eng, err := engine.Open(path, engine.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	fixed := func(ctx context.Context, c *saga.Call) (json.RawMessage, error) { return nil, nil }
	// The same version: the fingerprint covers the steps' policies, not
	// their code.
	if err := eng.Register(&saga.Definition{Name: "order", Steps: []saga.Step{
		{Name: "reserve", Action: fixed, Compensation: fixed,
			CompensationRetry: saga.RetryPolicy{MaxAttempts: 2, InitialInterval: time.Millisecond}},
		{Name: "charge", Action: fixed}}}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = eng.Run(ctx) }()
	api, err := httpapi.New(httpapi.Config{Engine: eng, Definitions: httpapi.NewDefinitions(eng, nil)})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(api)
	defer func() { srv.Close(); cancel(); <-done; _ = eng.Close() }()

	code, out, errOut := runCmd(t, "sagas", "retry", ids["failed"], "--addr", srv.URL)
	if code != exitOK || !strings.Contains(out, "retry requested") {
		t.Fatalf("online retry: exit %d, %s %s", code, out, errOut)
	}
	s, err := eng.Wait(ctx, ids["failed"])
	if err != nil || s.Status != saga.StatusCompensated {
		t.Fatalf("retried saga ended %v (%v), want compensated", s, err)
	}
	code, _, errOut = runCmd(t, "sagas", "retry", ids["completed"], "--addr", srv.URL)
	if code != exitFailed || !strings.Contains(errOut, "409") {
		t.Fatalf("retry of a completed saga: exit %d, %s; want a 409", code, errOut)
	}
}

func TestBackupAndCompact(t *testing.T) {
	t.Parallel()
	path, ids := opsFile(t)
	dir := t.TempDir()
	same := func(t *testing.T, file string) {
		t.Helper()
		code, out, errOut := runCmd(t, "sagas", "list", "--json", "--db", file)
		var page client.Page
		if code != exitOK || json.Unmarshal([]byte(out), &page) != nil || len(page.Sagas) != 3 {
			t.Fatalf("sagas in %s: exit %d, %s %s; want the 3 sagas", file, code, out, errOut)
		}
		for _, s := range page.Sagas {
			if ids[s.Status] != s.ID {
				t.Errorf("%s holds saga %s as %s; the original has %s", file, s.ID, s.Status, ids[s.Status])
			}
		}
	}
	offlineCopy := filepath.Join(dir, "offline.db")
	if code, out, errOut := runCmd(t, "backup", "--db", path, "--to", offlineCopy); code != exitOK || !strings.Contains(out, "checked") {
		t.Fatalf("offline backup: exit %d, %s %s", code, out, errOut)
	}
	same(t, offlineCopy)
	if code, _, _ := runCmd(t, "backup", "--db", path, "--to", offlineCopy); code != exitFailed {
		t.Errorf("backup over an existing file: exit %d, want %d", code, exitFailed)
	}

	url := serveFile(t, path)
	onlineCopy := filepath.Join(dir, "online.db")
	if code, out, errOut := runCmd(t, "backup", "--addr", url, "--to", onlineCopy); code != exitOK {
		t.Fatalf("online backup: exit %d, %s %s", code, out, errOut)
	}
	same(t, onlineCopy)
	if code, out, errOut := runCmd(t, "check", "--addr", url); code != exitOK || !strings.Contains(out, ": ok") {
		t.Fatalf("online check: exit %d, %s %s", code, out, errOut)
	}
	if code, out, errOut := runCmd(t, "recover", "--addr", url); code != exitOK || !strings.Contains(out, "the daemon is ready") {
		t.Fatalf("online recover: exit %d, %s %s", code, out, errOut)
	}
	if code, _, errOut := runCmd(t, "compact", "--addr", url); code != exitUsage || !strings.Contains(errOut, "offline only") {
		t.Fatalf("online compact: exit %d, %s; want a usage error saying why", code, errOut)
	}
	// The daemon holds the file: compaction refuses at once.
	if code, _, errOut := runCmd(t, "compact", "--db", path); code != exitFailed || !strings.Contains(errOut, "stop the daemon") {
		t.Fatalf("compact of a live file: exit %d, %s", code, errOut)
	}

	// Fill the copy with events, then prune them: the file keeps its size
	// until it is compacted.
	db, err := bolt.Open(offlineCopy, &bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	payload := json.RawMessage(`"` + strings.Repeat("x", 2000) + `"`)
	for range 5 {
		err = db.Update(func(tx *bolt.Tx) error {
			var put []ulid.ULID
			for range 500 {
				id, err := tx.OutboxPut(bolt.EncodeEvent(&storage.OutboxEvent{SagaID: ulid.Make(), Name: "filler", RoutingKey: "f", Payload: payload}, 0))
				if err != nil {
					return err
				}
				put = append(put, id)
			}
			_, err := tx.OutboxProduced(put, time.Now().Add(-time.Hour))
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for more := true; more; {
			var err error
			if _, more, err = tx.OutboxPrune(time.Now(), 10000); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil || db.Close() != nil {
		t.Fatalf("prune the filler: %v", err)
	}
	if err := os.Chmod(offlineCopy, 0o640); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := runCmd(t, "compact", "--db", offlineCopy, "--json")
	var res struct{ BytesBefore, BytesAfter int64 }
	if code != exitOK || json.Unmarshal([]byte(strings.ReplaceAll(out, "bytes_", "Bytes")), &res) != nil || res.BytesAfter <= 0 || res.BytesAfter*2 > res.BytesBefore {
		t.Fatalf("compact: exit %d, %s %s; want the file at most half its size", code, out, errOut)
	}
	same(t, offlineCopy)
	if info, err := os.Stat(offlineCopy); err != nil || info.Mode().Perm() != 0o640 {
		t.Errorf("compacted file mode %v (%v), want the original's 0640", info.Mode(), err)
	}
}

func TestSagasResolve(t *testing.T) {
	t.Parallel()
	eachTarget(t, func(t *testing.T, where []string, ids map[string]string) {
		if code, _, _ := runCmd(t, append([]string{"sagas", "resolve", ids["failed"]}, where...)...); code != exitUsage {
			t.Fatalf("resolve without --note: exit %d, want usage", code)
		}
		code, out, errOut := runCmd(t, append([]string{"sagas", "resolve", ids["failed"], "--note", "refunded by hand, OPS-17", "--by", "alice"}, where...)...)
		if code != exitOK || !strings.Contains(out, "the saga is resolved") {
			t.Fatalf("resolve: exit %d, %s %s", code, out, errOut)
		}
		code, out, _ = runCmd(t, append([]string{"sagas", "show", ids["failed"]}, where...)...)
		if code != exitOK || !strings.Contains(out, "status      resolved") || !strings.Contains(out, "resolved by alice: refunded by hand, OPS-17") {
			t.Fatalf("show after resolve: exit %d:\n%s", code, out)
		}
		code, out, _ = runCmd(t, append([]string{"sagas", "list", "--status", "resolved", "--json"}, where...)...)
		var page client.Page
		if code != exitOK || json.Unmarshal([]byte(out), &page) != nil || len(page.Sagas) != 1 {
			t.Fatalf("list --status resolved: exit %d, %s", code, out)
		}
		if code, _, errOut := runCmd(t, append([]string{"sagas", "resolve", ids["completed"], "--note", "x"}, where...)...); code != exitFailed || !strings.Contains(errOut, "not failed") {
			t.Fatalf("resolve of a completed saga: exit %d, %s", code, errOut)
		}
	})
}

// A saga whose definition is Go code the file does not hold cannot be
// recovered offline: recover reports it parked and exits 1.
func TestRecoverReportsParkedSagas(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "sagad.db")
	failed := make(chan struct{}, 1)
	eng, err := engine.Open(path, engine.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Hooks: engine.Hooks{AttemptFinished: func(engine.AttemptInfo) { failed <- struct{}{} }}})
	if err != nil {
		t.Fatal(err)
	}
	def := &saga.Definition{Name: "code-only", Steps: []saga.Step{{Name: "a",
		Retry: saga.RetryPolicy{InitialInterval: time.Hour, MaxInterval: time.Hour},
		Action: func(ctx context.Context, c *saga.Call) (json.RawMessage, error) {
			return nil, errors.New("try again in an hour")
		}}}}
	if err := eng.Register(def); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = eng.Run(ctx) }()
	st, err := eng.Start(ctx, "code-only", nil)
	if err != nil {
		t.Fatal(err)
	}
	<-failed // the first attempt's failure is committed: the saga waits an hour
	cancel()
	<-done
	if err := eng.Close(); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := runCmd(t, "recover", "--db", path, "--timeout", "1s")
	if code != exitFailed || !strings.Contains(out, "parked") || !strings.Contains(out, st.ID) {
		t.Fatalf("recover: exit %d, %s %s; want the saga reported parked and exit 1", code, out, errOut)
	}
}

// --db on the command line wins over SAGAD_ADDR, and --addr over SAGAD_DB:
// a variable never redirects a command aimed elsewhere.
func TestTargetFlagsOverrideEnvironment(t *testing.T) {
	path, _ := opsFile(t)
	t.Setenv("SAGAD_ADDR", "http://127.0.0.1:1") // nothing listens there
	code, out, errOut := runCmd(t, "sagas", "list", "--json", "--db", path)
	var page client.Page
	if code != exitOK || json.Unmarshal([]byte(out), &page) != nil || len(page.Sagas) != 3 {
		t.Fatalf("--db with SAGAD_ADDR set: exit %d, %s %s; want the file's sagas", code, out, errOut)
	}
	t.Setenv("SAGAD_ADDR", "")
	t.Setenv("SAGAD_DB", path)
	code, out, _ = runCmd(t, "sagas", "list", "--json")
	if code != exitOK || json.Unmarshal([]byte(out), &page) != nil || len(page.Sagas) != 3 {
		t.Fatalf("SAGAD_DB alone: exit %d, %s; want the file's sagas", code, out)
	}
}

// recover --addr fails at once when nothing listens there, as every other
// command does, instead of waiting out its timeout.
func TestRecoverOnlineFailsWhenNothingListens(t *testing.T) {
	t.Parallel()
	start := time.Now()
	code, _, errOut := runCmd(t, "recover", "--addr", "http://127.0.0.1:1", "--timeout", "1m")
	if code != exitFailed || !strings.Contains(errOut, "nothing answers at http://127.0.0.1:1") || time.Since(start) > 10*time.Second {
		t.Fatalf("exit %d after %s, %q; want a prompt failure saying nothing answers", code, time.Since(start), errOut)
	}
}

// sagas retry --wait retries a saga waiting for its next attempt now and
// prints how it ended: online through the daemon, and offline, where the
// command drives the saga itself.
func TestRetryWait(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	calls := map[string]int{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		calls[r.Header.Get("Idempotency-Key")]++
		n := calls[r.Header.Get("Idempotency-Key")]
		mu.Unlock()
		if n == 1 {
			http.Error(w, `{"error":"busy"}`, http.StatusServiceUnavailable) // retried in an hour
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{}`)
	}))
	defer srv.Close()
	path := filepath.Join(t.TempDir(), "sagad.db")
	d := startDaemon(t, path)
	c := d.client(t)
	ctx := context.Background()
	spec := fmt.Sprintf(`{"steps":[{"name":"flaky","action":{"url":"%s/flaky"},"retry":{"max_attempts":3,"initial_interval":"1h","max_interval":"1h"}}]}`, srv.URL)
	if _, err := c.PutDefinition(ctx, "flaky", []byte(spec)); err != nil {
		t.Fatal(err)
	}
	waiting := func() string {
		t.Helper()
		res, err := c.Start(ctx, "flaky", nil, client.StartOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for range 200 { // the first attempt fails, then the saga waits an hour
			if s, err := c.Get(ctx, res.ID); err == nil && !s.WakeAt.IsZero() {
				return res.ID
			}
			time.Sleep(10 * time.Millisecond) // no signal tells a waiting saga from outside
		}
		t.Fatalf("saga %s never waited for its retry", res.ID)
		return ""
	}
	online, offline := waiting(), waiting()
	// Paused and resumed from the command line, it waits on as before.
	code, out, errOut := runCmd(t, "sagas", "pause", "--addr", "http://"+d.addr, online)
	if code != exitOK || !strings.Contains(out, "pause requested; the saga is paused") {
		t.Fatalf("sagas pause: exit %d: %s %s", code, out, errOut)
	}
	if code, out, errOut = runCmd(t, "sagas", "show", "--addr", "http://"+d.addr, online); code != exitOK ||
		!strings.Contains(out, "status      paused") || !strings.Contains(out, "paused      while running") {
		t.Fatalf("sagas show of a paused saga: exit %d: %s %s", code, out, errOut)
	}
	if code, out, errOut = runCmd(t, "sagas", "resume", "--addr", "http://"+d.addr, online); code != exitOK ||
		!strings.Contains(out, "resume requested; the saga is running") {
		t.Fatalf("sagas resume: exit %d: %s %s", code, out, errOut)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) { // until its driver has looked
		if s, err := c.Get(ctx, online); err == nil && s.WakeAt.After(time.Now()) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the resumed saga never waited for its retry again")
		}
	}
	input, bad := filepath.Join(t.TempDir(), "input.json"), filepath.Join(t.TempDir(), "bad.json")
	if err := os.WriteFile(input, []byte(`{"qty": 2}`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, []byte(`{"qty": `), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := runCmd(t, "sagas", "retry", "--input", bad, "--addr", "http://"+d.addr, online); code != exitFailed ||
		!strings.Contains(errOut, "not a JSON value") {
		t.Fatalf("retry --input with a file that is not JSON: exit %d: %s", code, errOut)
	}
	code, out, errOut = runCmd(t, "sagas", "retry", "--wait", "20s", "--input", input, "--addr", "http://"+d.addr, online)
	if code != exitOK || !strings.Contains(out, "ended completed") {
		t.Fatalf("online retry --wait: exit %d: %s %s", code, out, errOut)
	}
	if got, err := c.Get(ctx, online); err != nil || string(got.Input) != `{"qty":2}` {
		t.Fatalf("input after retry --input: %s (%v), want the file's", got.Input, err)
	}
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-d.done
	code, out, errOut = runCmd(t, "sagas", "retry", "--wait", "20s", "--db", path, "--json", "--input", input, offline)
	var s client.Saga
	var in struct{ Qty int }
	if code != exitOK || json.Unmarshal([]byte(out), &s) != nil || s.Status != "completed" || json.Unmarshal(s.Input, &in) != nil || in.Qty != 2 {
		t.Fatalf("offline retry --wait --input: exit %d: %s %s", code, out, errOut)
	}
}

// sagad definitions put, list and show, offline on a file and online
// through a daemon.
func TestDefinitionsCommand(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	spec := filepath.Join(dir, "order.json")
	if err := os.WriteFile(spec, []byte(`{"steps":[{"name":"reserve","action":{"url":"http://127.0.0.1:1/reserve"}},{"name":"ship","action":{"url":"http://127.0.0.1:1/ship"}}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "sagad.db")
	d := startDaemon(t, path)
	for _, where := range [][]string{{"--addr", "http://" + d.addr}} {
		code, out, errOut := runCmd(t, append([]string{"definitions", "put", "order", spec}, where...)...)
		if code != exitOK || !strings.Contains(out, "stored and registered") {
			t.Fatalf("definitions put: exit %d: %s %s", code, out, errOut)
		}
		if code, out, _ = runCmd(t, append([]string{"definitions", "put", "order", spec}, where...)...); code != exitOK || !strings.Contains(out, "already stored") {
			t.Fatalf("definitions put again: exit %d: %s", code, out)
		}
		if code, out, _ = runCmd(t, append([]string{"definitions", "list"}, where...)...); code != exitOK || !strings.Contains(out, "order") || !strings.Contains(out, "  2") {
			t.Fatalf("definitions list: exit %d:\n%s", code, out)
		}
		if code, out, _ = runCmd(t, append([]string{"definitions", "show", "order"}, where...)...); code != exitOK || !strings.Contains(out, `"name": "reserve"`) {
			t.Fatalf("definitions show: exit %d:\n%s", code, out)
		}
		if code, _, errOut = runCmd(t, append([]string{"definitions", "show", "nope"}, where...)...); code != exitFailed || !strings.Contains(errOut, "no definition named nope") {
			t.Fatalf("definitions show of an unknown name: exit %d: %s", code, errOut)
		}
		want := "flowchart LR\n  s0[\"reserve\"]\n  s1[\"ship\"]\n  s0 --> s1\n"
		if code, out, errOut = runCmd(t, append([]string{"definitions", "diagram", "order"}, where...)...); code != exitOK || out != want {
			t.Fatalf("definitions diagram: exit %d: %q %s, want %q", code, out, errOut, want)
		}
	}
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-d.done
	// Offline, on the file the daemon left: what it stored is there.
	code, out, errOut := runCmd(t, "definitions", "list", "--json", "--db", path)
	if code != exitOK || !strings.Contains(out, `"name": "order"`) {
		t.Fatalf("offline definitions list: exit %d: %s %s", code, out, errOut)
	}
	if code, out, errOut := runCmd(t, "definitions", "diagram", "order", "--db", path); code != exitOK || !strings.Contains(out, "s0 --> s1") {
		t.Fatalf("offline definitions diagram: exit %d: %s %s", code, out, errOut)
	}
	if code, _, _ := runCmd(t, "definitions", "put", "bad", filepath.Join(dir, "missing.json"), "--db", path); code != exitFailed {
		t.Fatalf("put of a missing file: exit %d", code)
	}
	for _, args := range [][]string{{"definitions"}, {"definitions", "frob"}, {"definitions", "show"}, {"definitions", "put", "x"}} {
		if code, _, _ := runCmd(t, args...); code != exitUsage {
			t.Errorf("%v: exit %d, want usage", args, code)
		}
	}
}

// A listing cut off by --limit says so and how to go on; --cursor goes on,
// --all lists everything; tables show times in UTC with a Z.
func TestListsSayTheyAreCutOff(t *testing.T) {
	t.Parallel()
	eachTarget(t, func(t *testing.T, where []string, _ map[string]string) {
		code, out, _ := runCmd(t, append([]string{"sagas", "list", "--limit", "1", "--json"}, where...)...)
		var page client.Page
		if code != exitOK || json.Unmarshal([]byte(out), &page) != nil || len(page.Sagas) != 1 || page.NextCursor == "" {
			t.Fatalf("sagas list --limit 1 --json: exit %d:\n%s", code, out)
		}
		seen := map[string]bool{page.Sagas[0].ID: true}
		for cursor := page.NextCursor; cursor != ""; {
			code, out, _ = runCmd(t, append([]string{"sagas", "list", "--limit", "1", "--json", "--cursor", cursor}, where...)...)
			page = client.Page{}
			if code != exitOK || json.Unmarshal([]byte(out), &page) != nil || len(page.Sagas) != 1 || seen[page.Sagas[0].ID] {
				t.Fatalf("sagas list --cursor %s: exit %d:\n%s", cursor, code, out)
			}
			seen[page.Sagas[0].ID], cursor = true, page.NextCursor
		}
		code, out, _ = runCmd(t, append([]string{"sagas", "list", "--all", "--json"}, where...)...)
		page = client.Page{}
		if code != exitOK || json.Unmarshal([]byte(out), &page) != nil || len(page.Sagas) != len(seen) || page.NextCursor != "" {
			t.Fatalf("sagas list --all: exit %d, want the %d sagas the pages had:\n%s", code, len(seen), out)
		}
		code, out, _ = runCmd(t, append([]string{"sagas", "list", "--limit", "1"}, where...)...)
		if code != exitOK || !strings.Contains(out, "more match: --cursor ") || !regexp.MustCompile(`\d\d:\d\d:\d\dZ`).MatchString(out) {
			t.Fatalf("sagas list --limit 1: exit %d, want a hint line and UTC times:\n%s", code, out)
		}
		code, out, _ = runCmd(t, append([]string{"outbox", "list", "--limit", "1"}, where...)...)
		if code != exitOK || !strings.Contains(out, "more new events: --cursor ") {
			t.Fatalf("outbox list --limit 1: exit %d, want a hint line:\n%s", code, out)
		}
	})
}

// sagad sagas complete delivers the answer of a participant that answered
// 202: online through the daemon, and offline, where an answer for an
// attempt that no longer waits is recorded and ignored.
func TestSagasComplete(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusAccepted) // it answers later
	}))
	defer srv.Close()
	path := filepath.Join(t.TempDir(), "sagad.db")
	d := startDaemon(t, path)
	c := d.client(t)
	ctx := context.Background()
	spec := fmt.Sprintf(`{"steps":[{"name":"approve","action":{"url":"%s/approve","timeout":"1h"}}]}`, srv.URL)
	if _, err := c.PutDefinition(ctx, "approval", []byte(spec)); err != nil {
		t.Fatal(err)
	}
	res, err := c.Start(ctx, "approval", nil, client.StartOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) { // no signal from outside
		s, err := c.Get(ctx, res.ID)
		if err == nil && len(s.Steps) == 1 && s.Steps[0].Waiting {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the saga never waited for its answer: %+v (%v)", s, err)
		}
	}
	code, out, errOut := runCmd(t, "sagas", "show", "--addr", "http://"+d.addr, res.ID)
	if code != exitOK || !strings.Contains(out, "waiting for its answer") {
		t.Fatalf("sagas show of a waiting saga: exit %d: %s %s", code, out, errOut)
	}
	data := filepath.Join(t.TempDir(), "approval.json")
	if err := os.WriteFile(data, []byte(`{"by": "ann"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errOut = runCmd(t, "sagas", "complete", "--addr", "http://"+d.addr, "--attempt", "1", "--data", data, res.ID, "approve")
	if code != exitOK || !strings.Contains(out, "approve action attempt 1 answered 200") {
		t.Fatalf("sagas complete: exit %d: %s %s", code, out, errOut)
	}
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	s, err := c.Wait(wctx, res.ID)
	cancel()
	if err != nil || s.Status != "completed" || string(s.Data["approve"]) != `{"by":"ann"}` {
		t.Fatalf("after complete: %+v (%v), want completed with the answer's data", s, err)
	}
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-d.done
	code, out, errOut = runCmd(t, "sagas", "complete", "--db", path, "--attempt", "1", "--json", res.ID, "approve")
	if code != exitOK || !strings.Contains(out, `"applied": false`) {
		t.Fatalf("offline complete of an answered attempt: exit %d: %s %s", code, out, errOut)
	}
	if code, _, errOut = runCmd(t, "sagas", "complete", "--db", path, res.ID, "approve"); code != exitUsage || !strings.Contains(errOut, "--attempt") {
		t.Fatalf("complete without --attempt: exit %d: %s", code, errOut)
	}
}
