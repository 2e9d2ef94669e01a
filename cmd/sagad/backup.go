package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/cockroachdb/errors"
	"go.etcd.io/bbolt"

	"github.com/sagad/sagad/client"
	"github.com/sagad/sagad/recovery"
	"github.com/sagad/sagad/storage"
)

// backupCommand implements 'sagad backup --to FILE'.
type backupCommand struct {
	stdout, stderr io.Writer
}

func (c *backupCommand) run(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("backup", flag.ContinueOnError)
	var t target
	t.flags(fs)
	to := fs.String("to", "", "the backup file to write (must not exist)")
	fs.Usage = func() {
		fmt.Fprint(c.stderr, `Usage: sagad backup --to FILE [--db FILE | --addr URL]

Writes a consistent copy of the database: offline from the file, or online
from a running daemon, which goes on meanwhile. The copy is checked (bbolt's
check and the engine's invariants) before the command succeeds; it is a
database file sagad opens as it is.

Example:
  sagad backup --addr http://127.0.0.1:8080 --to /backups/sagad-2026-11-23.db

Flags:
`)
		fs.PrintDefaults()
	}
	if code, ok := parse(fs, args, c.stderr); !ok {
		return code
	}
	if *to == "" || fs.NArg() > 0 {
		fmt.Fprintln(c.stderr, "sagad backup: --to FILE is required, and no arguments are taken")
		return exitUsage
	}
	if _, err := os.Stat(*to); err == nil {
		fmt.Fprintf(c.stderr, "sagad backup: %s exists; choose a new file\n", *to)
		return exitUsage
	}
	start := time.Now()
	tmp := *to + ".partial"
	if err := c.copy(ctx, &t, tmp); err != nil {
		_ = os.Remove(tmp)
		return fail(c.stderr, "backup", err)
	}
	if err := recovery.CheckFile(tmp); err != nil {
		_ = os.Remove(tmp)
		return fail(c.stderr, "backup", errors.Wrap(err, "check the copy"))
	}
	if err := os.Rename(tmp, *to); err != nil {
		_ = os.Remove(tmp)
		return fail(c.stderr, "backup", err)
	}
	info, _ := os.Stat(*to)
	if t.json {
		printJSON(c.stdout, map[string]any{"file": *to, "bytes": info.Size(), "took": time.Since(start).String()})
		return exitOK
	}
	fmt.Fprintf(c.stdout, "%s: %d bytes, checked, in %s\n", *to, info.Size(), time.Since(start).Round(time.Millisecond))
	return exitOK
}

// copy writes the database to path: through the daemon, or from the file.
func (c *backupCommand) copy(ctx context.Context, t *target, path string) error {
	if t.addr != "" {
		cl, err := client.New(t.addr, t.token, nil)
		if err != nil {
			return err
		}
		f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			return errors.Wrap(err, "create the backup")
		}
		if _, err := cl.Backup(ctx, f); err != nil {
			_ = f.Close()
			return err
		}
		if err := f.Sync(); err != nil {
			_ = f.Close()
			return errors.Wrap(err, "sync the backup")
		}
		return errors.Wrap(f.Close(), "close the backup")
	}
	db, err := storage.Open(t.db, &storage.Options{ReadOnly: true, LockTimeout: 500 * time.Millisecond})
	if err != nil {
		if errors.Is(err, storage.ErrLocked) {
			return errors.WithHint(err, "a daemon holds the file: back it up through it with --addr")
		}
		return err
	}
	defer db.Close()
	return db.View(func(tx *storage.Tx) error { return errors.Wrap(tx.Bolt().CopyFile(path, 0o600), "copy") })
}

// compactCommand implements 'sagad compact'.
type compactCommand struct {
	stdout, stderr io.Writer
}

func (c *compactCommand) run(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("compact", flag.ContinueOnError)
	db := fs.String("db", "sagad.db", "database file (env SAGAD_DB)")
	addr := fs.String("addr", "", "refused: a running daemon's file cannot be compacted")
	asJSON := fs.Bool("json", false, "print JSON for scripts")
	fs.Usage = func() {
		fmt.Fprint(c.stderr, `Usage: sagad compact [--db FILE]

Rewrites the database file without its free pages, reclaiming the space that
pruned sagas and events left. bbolt files never shrink on their own. The
daemon must be stopped: the file is rewritten to a new file, checked, and
then put in place of the old one (kept as FILE.before-compact until the new
one is in place).

Example:
  sagad compact --db /var/lib/sagad/sagad.db

Flags:
`)
		fs.PrintDefaults()
	}
	if code, ok := parse(fs, args, c.stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintln(c.stderr, "sagad compact: no arguments are taken")
		return exitUsage
	}
	if *addr != "" {
		fmt.Fprintln(c.stderr, "sagad compact: compaction rewrites the file, so it works offline only: stop the daemon, then run sagad compact --db FILE")
		return exitUsage
	}
	before, after, err := compact(*db)
	if err != nil {
		return fail(c.stderr, "compact", err)
	}
	if *asJSON {
		printJSON(c.stdout, map[string]any{"file": *db, "bytes_before": before, "bytes_after": after})
		return exitOK
	}
	fmt.Fprintf(c.stdout, "%s: %d bytes, was %d\n", *db, after, before)
	return exitOK
}

// compact rewrites path and returns its sizes before and after.
func compact(path string) (int64, int64, error) {
	info, err := os.Stat(path)
	if err != nil {
		return 0, 0, errors.Wrap(err, "stat")
	}
	// Opening through storage checks the file and takes the lock: a running
	// daemon makes this fail at once.
	src, err := storage.Open(path, &storage.Options{LockTimeout: 500 * time.Millisecond})
	if err != nil {
		if errors.Is(err, storage.ErrLocked) {
			return 0, 0, errors.WithHint(err, "stop the daemon first: a live file cannot be compacted")
		}
		return 0, 0, err
	}
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".compact")
	_ = os.Remove(tmp)
	dst, err := bbolt.Open(tmp, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		_ = src.Close()
		return 0, 0, errors.Wrap(err, "create the compacted file")
	}
	err = bbolt.Compact(dst, src.Bolt(), 64<<20)
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if cerr := src.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(tmp)
		return 0, 0, errors.Wrap(err, "compact")
	}
	if err := recovery.CheckFile(tmp); err != nil {
		_ = os.Remove(tmp)
		return 0, 0, errors.Wrap(err, "check the compacted file")
	}
	old := path + ".before-compact"
	if err := os.Rename(path, old); err != nil {
		_ = os.Remove(tmp)
		return 0, 0, errors.Wrap(err, "set the old file aside")
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Rename(old, path)
		return 0, 0, errors.Wrap(err, "put the compacted file in place")
	}
	_ = os.Remove(old)
	ninfo, err := os.Stat(path)
	if err != nil {
		return 0, 0, errors.Wrap(err, "stat")
	}
	return info.Size(), ninfo.Size(), nil
}
