package recovery

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/cockroachdb/errors"
	"go.etcd.io/bbolt"

	"github.com/sagad/sagad/storage"
)

// ErrInconsistent marks the error Check returns when it finds problems.
var ErrInconsistent = errors.New("recovery: database is inconsistent")

// Problem is one inconsistency Check found.
type Problem struct {
	// Kind is a short code: "bbolt", "index-missing-saga", "saga-not-indexed", ...
	Kind string `json:"kind"`
	// Detail says exactly what is wrong and where.
	Detail string `json:"detail"`
}

// Check verifies a database: bbolt's page-level consistency check, then the
// engine's invariants: every status-index entry names a stored saga with that
// status, every saga is indexed under its status, every due-index entry names
// a saga with that wake time and every saga with a wake time is in the due
// index, and every idempotency key names a saga that carries it. It returns
// the problems it found (nil when there are none).
func Check(db *storage.DB) ([]Problem, error) {
	var problems []Problem
	add := func(kind, format string, args ...any) {
		problems = append(problems, Problem{Kind: kind, Detail: fmt.Sprintf(format, args...)})
	}
	err := db.Bolt().View(func(tx *bbolt.Tx) error {
		for err := range tx.Check() {
			add("bbolt", "%v", err)
		}
		sagas, status, due, idem := tx.Bucket([]byte("sagas")), tx.Bucket([]byte("status")),
			tx.Bucket([]byte("due")), tx.Bucket([]byte("idem"))
		if sagas == nil || status == nil || due == nil || idem == nil {
			add("bucket-missing", "a required bucket is missing")
			return nil
		}
		err := sagas.ForEach(func(k, v []byte) error {
			if len(k) != 16 || len(v) < 9 {
				add("saga-malformed", "saga key %x: key %d bytes, value %d bytes", k, len(k), len(v))
				return nil
			}
			if status.Get(append([]byte{v[0]}, k...)) == nil {
				add("saga-not-indexed", "saga %x (status code %d) is missing from the status index", k, v[0])
			}
			if wake := binary.BigEndian.Uint64(v[1:9]); wake != 0 {
				if due.Get(append(binary.BigEndian.AppendUint64(nil, wake), k...)) == nil {
					add("saga-not-due", "saga %x has a wake time but is missing from the due index", k)
				}
			}
			var rec struct {
				IdempotencyKey string `json:"idempotency_key"`
			}
			if err := json.Unmarshal(v[9:], &rec); err != nil {
				add("saga-malformed", "saga %x: %v", k, err)
			} else if rec.IdempotencyKey != "" && !bytes.Equal(idem.Get([]byte(rec.IdempotencyKey)), k) {
				add("idem-missing", "saga %x: idempotency key %q does not name it", k, rec.IdempotencyKey)
			}
			return nil
		})
		if err != nil {
			return err
		}
		err = status.ForEach(func(k, _ []byte) error {
			if len(k) != 17 {
				add("index-malformed", "status index key %x", k)
				return nil
			}
			v := sagas.Get(k[1:])
			switch {
			case v == nil:
				add("index-missing-saga", "status index entry names saga %x, which does not exist", k[1:])
			case v[0] != k[0]:
				add("index-wrong-status", "status index files saga %x under code %d, its record says %d", k[1:], k[0], v[0])
			}
			return nil
		})
		if err != nil {
			return err
		}
		err = due.ForEach(func(k, _ []byte) error {
			if len(k) != 24 {
				add("due-malformed", "due index key %x", k)
				return nil
			}
			v := sagas.Get(k[8:])
			if v == nil || !bytes.Equal(v[1:9], k[:8]) {
				add("due-stale", "due index entry for saga %x does not match its record", k[8:])
			}
			return nil
		})
		if err != nil {
			return err
		}
		return idem.ForEach(func(k, v []byte) error {
			if sagas.Get(v) == nil {
				add("idem-dangling", "idempotency key %q names saga %x, which does not exist", k, v)
			}
			return nil
		})
	})
	return problems, errors.Wrap(err, "recovery: check")
}

// CheckFile opens the database at path, checks it and closes it. It returns
// an error marked ErrInconsistent listing every problem, or nil.
func CheckFile(path string) error {
	db, err := storage.Open(path, &storage.Options{ReadOnly: true})
	if err != nil {
		return err
	}
	defer db.Close()
	problems, err := Check(db)
	if err != nil {
		return err
	}
	if len(problems) == 0 {
		return nil
	}
	var b strings.Builder
	for _, p := range problems {
		fmt.Fprintf(&b, "\n  %s: %s", p.Kind, p.Detail)
	}
	return errors.Mark(errors.Newf("recovery: %s: %d problems:%s", path, len(problems), b.String()), ErrInconsistent)
}
