package bolt

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/cockroachdb/errors"
	"github.com/oklog/ulid/v2"
	"github.com/sagad/sagad/storage"
	"go.etcd.io/bbolt"
)

// CheckOptions configures Check. A nil *CheckOptions checks the file's own
// invariants only.
type CheckOptions struct {
	// Definition, when set, validates each stored version of a declarative
	// definition (the daemon's parser): one it refuses is a problem of kind
	// definition-invalid. storage does not know the format of definitions.
	Definition func(name string, spec []byte) error
}

// Problem is one inconsistency Check found (see storage.Problem).
type Problem = storage.Problem

// Check verifies a database: bbolt's page-level consistency check, then the
// engine's invariants: every status-index entry names a stored saga with that
// status, every saga is indexed under its status, every due-index entry names
// a saga with that wake time and every saga with a wake time is in the due
// index, every idempotency key names a saga that carries it, and every
// saga's log chain is whole and every entry in it decodes; every outbox
// event decodes and is filed under exactly one known status, every outbox
// status-index entry names a stored event and carries a value of the right
// length, and the stored outbox counts equal the index entries per status;
// every stored declarative definition parses; every abort request names a
// saga that has not finished. It returns the problems it
// found (nil when there are none).
func (db *DB) Check(opts *CheckOptions) ([]Problem, error) {
	var problems []Problem
	add := func(kind, format string, args ...any) {
		problems = append(problems, Problem{Kind: kind, Detail: fmt.Sprintf(format, args...)})
	}
	err := db.View(func(stx *Tx) error {
		tx := stx.tx
		for err := range tx.Check() {
			add("bbolt", "%v", err)
		}
		if err := checkOutbox(stx, add); err != nil {
			return err
		}
		if opts != nil && opts.Definition != nil {
			checkDefinitions(stx, opts.Definition, add)
		}
		sagas, status, due, idem := tx.Bucket(bucketSagas), tx.Bucket(bucketStatus),
			tx.Bucket(bucketDue), tx.Bucket(bucketIdem)
		if sagas == nil || status == nil || due == nil || idem == nil {
			add("bucket-missing", "a required bucket is missing")
			return nil
		}
		logs := tx.Bucket(bucketLog)
		err := sagas.ForEach(func(k, v []byte) error {
			h, ok := DecodeHeader(v)
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
			rec, err := DecodeSaga(k, v)
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
			h, ok := DecodeHeader(sagas.Get(k[1:]))
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
			h, ok := DecodeHeader(sagas.Get(k[8:]))
			if !ok || h.Wake != int64(binary.BigEndian.Uint64(k[:8])) {
				add("due-stale", "due index entry for saga %x does not match its record", k[8:])
			}
			return nil
		})
		if err != nil {
			return err
		}
		err = idem.ForEach(func(k, v []byte) error {
			if sagas.Get(v) == nil {
				add("idem-dangling", "idempotency key %q names saga %x, which does not exist", k, v)
			}
			return nil
		})
		if err != nil {
			return err
		}
		aborts := tx.Bucket(bucketAborts)
		if aborts == nil {
			return nil
		}
		// An abort request is written for a running saga and deleted in the
		// commit that acts on it: one left on a finished saga was accepted
		// and never acted on.
		return aborts.ForEach(func(k, _ []byte) error {
			v := sagas.Get(k)
			if v == nil {
				add("abort-dangling", "abort request names saga %x, which does not exist", k)
				return nil
			}
			if rec, err := DecodeSaga(k, v); err == nil && rec.Status.Finished() {
				add("abort-unapplied", "saga %x ended %s with an abort request that was never acted on", k, rec.Status)
			}
			return nil
		})
	})
	return problems, errors.Wrap(err, "storage: check")
}

// checkOutbox verifies the outbox: every record decodes and is filed under
// exactly one known status in the status index; every index entry names a
// stored record, has a known status code and a value of the right length
// (empty for new, a unix-nano time for the others); and the counts in meta
// equal the index entries per status. A database without the outbox buckets
// (written before the outbox existed) has an empty outbox.
//
// Records are decoded through Tx.OutboxGet, which also needs the
// index: a record that is in no status index is reported as such, and its
// bytes are not decoded.
func checkOutbox(stx *Tx, add func(kind, format string, args ...any)) error {
	tx := stx.tx
	events, idx := tx.Bucket(bucketOutbox), tx.Bucket(bucketOutboxStatus)
	// entries counts the index entries per status, in OutboxStatuses
	// (code) order.
	entries := make([]int64, len(storage.OutboxStatuses))
	// status names a status code: storage numbers OutboxStatuses from 1.
	status := func(code byte) (storage.OutboxStatus, bool) {
		if code == 0 || int(code) > len(storage.OutboxStatuses) {
			return "", false
		}
		return storage.OutboxStatuses[code-1], true
	}
	if idx != nil {
		err := idx.ForEach(func(k, v []byte) error {
			if len(k) != 17 {
				add("outbox-index-malformed", "outbox status index key %x", k)
				return nil
			}
			id := k[1:]
			s, known := status(k[0])
			if known {
				entries[k[0]-1]++
			}
			wantLen := 8
			if s == storage.OutboxNew {
				wantLen = 0
			}
			switch {
			case events == nil || events.Get(id) == nil:
				add("outbox-index-missing-event", "outbox status index entry (code %d) names event %x, which does not exist", k[0], id)
			case !known:
				add("outbox-index-bad-code", "outbox status index files event %x under unknown status code %d", id, k[0])
			case len(v) != wantLen:
				add("outbox-index-bad-value", "outbox status index entry for event %x (%s) has a %d-byte value, want %d", id, s, len(v), wantLen)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	if events != nil {
		err := events.ForEach(func(k, v []byte) error {
			if len(k) != 16 {
				add("outbox-malformed", "outbox key %x: key %d bytes, value %d bytes", k, len(k), len(v))
				return nil
			}
			var in []string
			if idx != nil {
				for code, s := range storage.OutboxStatuses {
					if idx.Get(append([]byte{byte(code + 1)}, k...)) != nil {
						in = append(in, string(s))
					}
				}
			}
			if len(in) == 0 {
				// OutboxGet cannot read an event without a status.
				add("outbox-not-indexed", "outbox event %x is missing from the outbox status index", k)
				return nil
			}
			if len(in) > 1 {
				add("outbox-indexed-twice", "outbox event %x is in the outbox status index under %d statuses (%s), want one", k, len(in), strings.Join(in, ", "))
			}
			var id ulid.ULID
			copy(id[:], k)
			if _, err := stx.OutboxGet(id); err != nil {
				add("outbox-malformed", "outbox event %x: %v", k, err)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	var stored []byte
	if meta := tx.Bucket(bucketMeta); meta != nil {
		stored = meta.Get(keyOutboxCounts)
	}
	switch {
	case stored == nil:
		stored = make([]byte, 8*len(storage.OutboxStatuses)) // no counts yet: all zero
	case len(stored) != 8*len(storage.OutboxStatuses):
		add("outbox-counts-malformed", "meta outbox_counts is %d bytes, want %d (a big-endian uint64 per status)", len(stored), 8*len(storage.OutboxStatuses))
		return nil
	}
	for i, s := range storage.OutboxStatuses {
		if n := int64(binary.BigEndian.Uint64(stored[8*i:])); n != entries[i] {
			add("outbox-counts", "outbox counts say %d %s events, the outbox status index holds %d", n, s, entries[i])
		}
	}
	return nil
}

// checkLog walks a saga's log chain from its head: every record must exist,
// belong to the saga and point to an older record, and every entry in it
// must decode (DecodeLogRecord, as Tx.LogList decodes it);
// each entry that does not is a problem of its own.
func checkLog(logs *bbolt.Bucket, id []byte, head uint64, add func(kind, format string, args ...any)) {
	if logs == nil {
		return
	}
	for head != 0 {
		v := logs.Get(binary.BigEndian.AppendUint64(nil, head))
		switch {
		case v == nil:
			add("log-missing", "saga %x: log entry %d is missing", id, head)
			return
		case len(v) < logHeaderLen || !bytes.Equal(v[8:logHeaderLen], id):
			add("log-foreign", "saga %x: log entry %d belongs to another saga", id, head)
			return
		}
		_, errs := DecodeLogRecord(v)
		for _, err := range errs {
			add("log-undecodable", "saga %x: log entry %d does not decode: %v", id, head, err)
		}
		next := binary.BigEndian.Uint64(v)
		if next >= head {
			add("log-cycle", "saga %x: log entry %d points forward to %d", id, head, next)
			return
		}
		head = next
	}
}

// checkDefinitions validates every stored version of every declarative
// definition, as the daemon does when it loads them: one that does not
// validate is skipped and its sagas park.
func checkDefinitions(stx *Tx, validate func(name string, spec []byte) error, add func(kind, format string, args ...any)) {
	stx.DefinitionList(func(sd *storage.StoredDefinition) bool {
		if err := validate(sd.Name, sd.Spec); err != nil {
			add("definition-invalid", "definition %q version %q does not parse: %v", sd.Name, sd.Version, err)
		}
		return true
	})
}

// CheckFile opens the database at path, checks it and closes it. It returns
// an error marked ErrInconsistent listing every problem, or nil.
func CheckFile(path string, opts *CheckOptions) error {
	db, err := Open(path, &Options{ReadOnly: true})
	if err != nil {
		return err
	}
	defer db.Close()
	problems, err := db.Check(opts)
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
	return errors.Mark(errors.Newf("storage: %s: %d problems:%s", path, len(problems), b.String()), ErrInconsistent)
}
