package bolt

import (
	"io"
	"os"
	"time"

	"github.com/cockroachdb/errors"
	"go.etcd.io/bbolt"
)

// Backup writes a consistent copy of the database file to w, inside one
// read transaction (writers go on meanwhile), and returns its size. Write
// to a local file: the transaction lasts as long as w takes.
func (db *DB) Backup(w io.Writer) (int64, error) {
	var n int64
	err := db.bolt.View(func(tx *bbolt.Tx) error {
		var err error
		n, err = tx.WriteTo(w)
		return err
	})
	return n, errors.Wrap(err, "storage: backup")
}

// BackupSize returns the size Backup would write now, without copying.
func (db *DB) BackupSize() (int64, error) {
	var n int64
	err := db.bolt.View(func(tx *bbolt.Tx) error { n = tx.Size(); return nil })
	return n, errors.Wrap(err, "storage: backup size")
}

// CompactTo writes a compacted copy of the database to a new file at path
// (mode perm): every record rewritten into fresh pages, without the free
// pages the file has gathered. path must not exist.
func (db *DB) CompactTo(path string, perm os.FileMode) error {
	if _, err := os.Stat(path); err == nil {
		return errors.Newf("storage: compact: %s exists", path)
	}
	dst, err := bbolt.Open(path, perm, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		return errors.Wrap(err, "storage: compact: create the compacted file")
	}
	err = bbolt.Compact(dst, db.bolt, 64<<20)
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	return errors.Wrap(err, "storage: compact")
}
