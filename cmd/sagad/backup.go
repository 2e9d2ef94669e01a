package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/cockroachdb/errors"

	"github.com/sagad/sagad/client"
	"github.com/sagad/sagad/recovery"
	"github.com/sagad/sagad/storage/bolt"
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
		return exitFailed
	}
	start := time.Now()
	tmp := *to + ".partial"
	// copy removes what it wrote if it fails, and nothing else: a partial
	// file that exists already is another backup's (or an interrupted
	// one's), and is left alone.
	if err := c.copy(ctx, &t, tmp); err != nil {
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
	if err := syncDir(filepath.Dir(*to)); err != nil {
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

// copy writes the database to path, through the daemon or from the file,
// and syncs it. path must not exist: copy creates it (O_EXCL), so that two
// backups to the same file cannot write into each other's copy. If the
// copy fails, copy removes path only if it created it.
func (c *backupCommand) copy(ctx context.Context, t *target, path string) (err error) {
	var (
		write func(f *os.File) error
		done  = func() {}
	)
	if t.addr != "" {
		cl, err := client.New(t.addr, t.token, cliHTTPClient())
		if err != nil {
			return err
		}
		write = func(f *os.File) error { _, err := cl.Backup(ctx, f); return err }
	} else {
		if err := fileOnly("backup", t.db, "back PostgreSQL up with its own tools, such as pg_dump --schema=sagad, or back up through a node with --addr"); err != nil {
			return err
		}
		if err := existingDB(t.db); err != nil {
			return err
		}
		db, err := bolt.Open(t.db, &bolt.Options{ReadOnly: true, LockTimeout: 500 * time.Millisecond})
		if err != nil {
			if errors.Is(err, bolt.ErrLocked) {
				return errors.WithHint(err, "a daemon holds the file: back it up through it with --addr")
			}
			return err
		}
		done = func() { _ = db.Close() }
		write = func(f *os.File) error {
			_, err := db.Backup(f)
			return err
		}
	}
	defer done()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return errors.WithHint(errors.Wrap(err, "create the backup"),
			"another backup is writing this file, or one was interrupted: if none is running, remove it")
	}
	if err != nil {
		return errors.Wrap(err, "create the backup")
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(path)
		}
	}()
	if err := write(f); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return errors.Wrap(err, "sync the backup")
	}
	return errors.Wrap(f.Close(), "close the backup")
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
daemon must be stopped: the file is rewritten to a new file beside it,
checked, and then put in place of the old one in one rename. The old file
is not kept: take a backup first (sagad backup) if you want one.

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

// compact rewrites path and returns its sizes before and after. The old
// file stays open, and so locked, until the new one has replaced it in one
// rename: a daemon that starts meanwhile fails to open it instead of
// writing to a file about to be replaced, and no instant leaves the path
// without a database.
func compact(path string) (int64, int64, error) {
	if err := fileOnly("compact", path, "PostgreSQL reclaims space itself (autovacuum): there is nothing to compact"); err != nil {
		return 0, 0, err
	}
	if err := existingDB(path); err != nil {
		return 0, 0, err
	}
	info, err := os.Stat(path)
	if err != nil {
		return 0, 0, errors.Wrap(err, "stat")
	}
	src, err := bolt.Open(path, &bolt.Options{LockTimeout: 500 * time.Millisecond})
	if err != nil {
		if errors.Is(err, bolt.ErrLocked) {
			return 0, 0, errors.WithHint(err, "stop the daemon first: a live file cannot be compacted")
		}
		return 0, 0, err
	}
	defer src.Close()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".compact")
	_ = os.Remove(tmp)
	err = src.CompactTo(tmp, info.Mode().Perm())
	if err == nil {
		err = errors.Wrap(recovery.CheckFile(tmp), "check the compacted file")
	}
	if err == nil {
		err = sameOwner(tmp, info)
	}
	if err == nil {
		err = errors.Wrap(os.Rename(tmp, path), "put the compacted file in place")
	}
	if err != nil {
		_ = os.Remove(tmp)
		return 0, 0, errors.Wrap(err, "compact")
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return 0, 0, err
	}
	ninfo, err := os.Stat(path)
	if err != nil {
		return 0, 0, errors.Wrap(err, "stat")
	}
	return info.Size(), ninfo.Size(), nil
}

// sameOwner gives path the mode and (when this process may) the owner of
// the file described by like, so a daemon running as another user can
// still open it.
func sameOwner(path string, like os.FileInfo) error {
	if err := os.Chmod(path, like.Mode().Perm()); err != nil {
		return errors.Wrap(err, "set the file mode")
	}
	if st, ok := like.Sys().(*syscall.Stat_t); ok {
		if err := os.Chown(path, int(st.Uid), int(st.Gid)); err != nil && !errors.Is(err, os.ErrPermission) {
			return errors.Wrap(err, "set the file owner")
		}
	}
	return nil
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return errors.Wrap(err, "open the directory")
	}
	defer d.Close()
	return errors.Wrap(d.Sync(), "sync the directory")
}
