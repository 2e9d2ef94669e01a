// Package bolttest damages sagad's bbolt files on purpose, for tests of
// what the engine and the tools do with a damaged database: a record cut
// short, an index entry lost. It opens the file itself (close the store
// first) and knows the file's layout, which package bolt keeps to itself.
package bolttest

import (
	"github.com/cockroachdb/errors"
	"github.com/oklog/ulid/v2"
	"go.etcd.io/bbolt"
)

// The buckets this package edits, as storage/bolt names them.
var (
	bucketSagas  = []byte("sagas")
	bucketStatus = []byte("status")
)

// TruncateSaga cuts the stored record of saga id to its first keep bytes.
// The first 17 are the record's fixed header (status, wake time, log head):
// keep at least that many to damage the body only.
func TruncateSaga(path string, id ulid.ULID, keep int) error {
	return update(path, func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketSagas)
		v := b.Get(id[:])
		if v == nil {
			return errors.Newf("bolttest: %s: no saga %s", path, id)
		}
		if keep < 0 || keep > len(v) {
			return errors.Newf("bolttest: %s: saga %s is %d bytes, cannot keep %d", path, id, len(v), keep)
		}
		return b.Put(id[:], append([]byte(nil), v[:keep]...))
	})
}

// Unindex deletes saga id's entry in the status index, whatever its
// status: the saga is stored but no longer listed by status.
func Unindex(path string, id ulid.ULID) error {
	return update(path, func(tx *bbolt.Tx) error {
		v := tx.Bucket(bucketSagas).Get(id[:])
		if len(v) == 0 {
			return errors.Newf("bolttest: %s: no saga %s", path, id)
		}
		key := append([]byte{v[0]}, id[:]...) // status code + id
		st := tx.Bucket(bucketStatus)
		if st.Get(key) == nil {
			return errors.Newf("bolttest: %s: saga %s is not in the status index", path, id)
		}
		return st.Delete(key)
	})
}

func update(path string, fn func(*bbolt.Tx) error) error {
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: 0})
	if err != nil {
		return errors.Wrapf(err, "bolttest: open %s", path)
	}
	if err := db.Update(fn); err != nil {
		_ = db.Close()
		return err
	}
	return errors.Wrapf(db.Close(), "bolttest: close %s", path)
}
