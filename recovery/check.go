package recovery

import (
	"bytes"
	"encoding/binary"
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
		logs := tx.Bucket([]byte("log"))
		err := sagas.ForEach(func(k, v []byte) error {
			h, ok := storage.DecodeHeader(v)
			if len(k) != 16 || !ok {
				add("saga-malformed", "saga key %x: key %d bytes, value %d bytes", k, len(k), len(v))
				return nil
			}
			if status.Get(append([]byte{h.Status}, k...)) == nil {
				add("saga-not-indexed", "saga %x (status code %d) is missing from the status index", k, h.Status)
			}
			if h.Wake != 0 {
				if due.Get(append(binary.BigEndian.AppendUint64(nil, uint64(h.Wake)), k...)) == nil {
					add("saga-not-due", "saga %x has a wake time but is missing from the due index", k)
				}
			}
			checkLog(logs, k, h.LogHead, add)
			rec, err := storage.DecodeSaga(k, v)
			if err != nil {
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
			h, ok := storage.DecodeHeader(sagas.Get(k[1:]))
			switch {
			case sagas.Get(k[1:]) == nil:
				add("index-missing-saga", "status index entry names saga %x, which does not exist", k[1:])
			case !ok:
				// Reported as saga-malformed above.
			case h.Status != k[0]:
				add("index-wrong-status", "status index files saga %x under code %d, its record says %d", k[1:], k[0], h.Status)
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
			h, ok := storage.DecodeHeader(sagas.Get(k[8:]))
			if !ok || h.Wake != int64(binary.BigEndian.Uint64(k[:8])) {
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

// checkLog walks a saga's log chain from its head: every entry must exist,
// belong to the saga and point to an older entry.
func checkLog(logs *bbolt.Bucket, id []byte, head uint64, add func(kind, format string, args ...any)) {
	if logs == nil {
		return
	}
	for n := 0; head != 0; n++ {
		v := logs.Get(binary.BigEndian.AppendUint64(nil, head))
		switch {
		case v == nil:
			add("log-missing", "saga %x: log entry %d is missing", id, head)
			return
		case len(v) < 24 || !bytes.Equal(v[8:24], id):
			add("log-foreign", "saga %x: log entry %d belongs to another saga", id, head)
			return
		}
		next := binary.BigEndian.Uint64(v)
		if next >= head {
			add("log-cycle", "saga %x: log entry %d points forward to %d", id, head, next)
			return
		}
		head = next
	}
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
