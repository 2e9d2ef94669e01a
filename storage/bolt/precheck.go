package bolt

import (
	"encoding/binary"
	"hash/fnv"
	"io"
	"os"
	"runtime/debug"
	"time"

	"github.com/cockroachdb/errors"
	"github.com/sagad/sagad/storage"
	"go.etcd.io/bbolt"
)

// bbolt's on-disk meta page (go.etcd.io/bbolt/internal/common.Meta), as
// written on little-endian machines: after a 16-byte page header come
// magic, version, page size, flags (4 bytes each), the root bucket (16),
// the freelist page (8), the high-water page id (8), the txid (8) and an
// FNV-64a checksum of everything before it.
const (
	boltMagic      = 0xED0CDAED
	boltPageHeader = 16
	boltMetaSum    = 56 // bytes covered by the checksum
)

// precheck refuses a file that bbolt would crash on rather than report: a
// file shorter than its own meta page says it is (a truncated copy, a disk
// that filled up) makes bbolt read past its memory map. It reads both meta
// pages and keeps the newest valid one; a file with no valid meta page is
// left to bbolt, which reports it as invalid.
func precheck(path string) error {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return errors.Wrapf(err, "storage: open %s", path)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || st.Size() == 0 {
		return errors.Wrapf(err, "storage: stat %s", path)
	}
	var best struct {
		txid, pages uint64
		pageSize    uint32
		ok          bool
	}
	for _, off := range []int64{0, -1} {
		if off < 0 {
			if !best.ok {
				// The second meta page sits one page in; without a valid
				// first page, try the common page size.
				off = 4096
			} else {
				off = int64(best.pageSize)
			}
		}
		buf := make([]byte, boltPageHeader+boltMetaSum+8)
		if _, err := f.ReadAt(buf, off); err != nil && err != io.EOF {
			continue
		}
		m := buf[boltPageHeader:]
		if binary.LittleEndian.Uint32(m) != boltMagic {
			continue
		}
		h := fnv.New64a()
		h.Write(m[:boltMetaSum])
		if h.Sum64() != binary.LittleEndian.Uint64(m[boltMetaSum:]) {
			continue
		}
		txid := binary.LittleEndian.Uint64(m[48:])
		if !best.ok || txid > best.txid {
			best.txid, best.pages, best.pageSize, best.ok = txid, binary.LittleEndian.Uint64(m[40:]),
				binary.LittleEndian.Uint32(m[8:]), true
		}
	}
	if !best.ok {
		return nil
	}
	if need := int64(best.pages) * int64(best.pageSize); st.Size() < need {
		return errors.WithHint(errors.Mark(errors.Newf("storage: %s is truncated: %d bytes, but its meta page records %d pages of %d bytes (%d bytes)",
			path, st.Size(), best.pages, best.pageSize, need), storage.ErrCorrupt),
			"restore the file from a backup; sagad never writes to a file it cannot read")
	}
	return nil
}

// scan reads, in this goroutine, every page of every bucket tree, so that a
// damaged page is reported as ErrCorrupt rather than crash the process:
// bbolt checks pages with assertions that panic, and its read-write open
// (which, with NoFreelistSync, walks every page to rebuild the free list)
// does so on a goroutine of its own, where no caller can recover. A read
// past the end of the mapping is a fault, made a panic here too. A file
// that does not open read-only at once (locked by another process, not a
// bbolt file) is left to the real open to report.
func scan(path string) (err error) {
	if st, serr := os.Stat(path); serr != nil || st.Size() == 0 {
		return nil
	}
	b, berr := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true, Timeout: time.Millisecond})
	if berr != nil {
		return nil
	}
	defer b.Close()
	tx, berr := b.Begin(false)
	if berr != nil {
		return nil
	}
	defer func() { _ = tx.Rollback() }()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = errors.WithHint(errors.Mark(errors.Newf("storage: %s is damaged: %v", path, r), storage.ErrCorrupt),
				"restore the file from a backup; sagad never writes to a file it cannot read")
		}
	}()
	return tx.ForEach(func(_ []byte, b *bbolt.Bucket) error {
		_ = b.Stats() // visits every branch and leaf page, nested buckets included
		return nil
	})
}
