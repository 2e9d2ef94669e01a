package bolt

import (
	"encoding/binary"

	"github.com/cockroachdb/errors"
	"github.com/oklog/ulid/v2"

	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
)

// statusCodes maps statuses to the one-byte codes used in keys and headers.
var statusCodes = map[saga.Status]byte{
	saga.StatusRunning:      1,
	saga.StatusCompensating: 2,
	saga.StatusCompleted:    3,
	saga.StatusCompensated:  4,
	saga.StatusFailed:       5,
	saga.StatusResolved:     6,
	saga.StatusPaused:       7,
}

// headerLen is the fixed prefix of a stored saga: status code (1 byte),
// wake time (8, unix nanos) and the key of its newest log entry (8), so
// index and log maintenance read the old values without decoding JSON.
const headerLen = 17

// Header is the fixed prefix of a stored saga record.
type Header struct {
	Status byte
	// Wake is the wake time in unix nanoseconds; 0 for none.
	Wake int64
	// LogHead is the key of the saga's newest log entry; 0 for none.
	LogHead uint64
}

// DecodeHeader parses the header of a stored saga value. It returns false
// when the value is too short to hold one.
func DecodeHeader(v []byte) (Header, bool) {
	if len(v) < headerLen {
		return Header{}, false
	}
	return Header{Status: v[0], Wake: int64(binary.BigEndian.Uint64(v[1:])), LogHead: binary.BigEndian.Uint64(v[9:])}, true
}

// logHeaderLen is the fixed prefix of a stored log entry: the key of the
// saga's previous entry (8 bytes, 0 for none) and the saga's id (16).
const logHeaderLen = 24

// Encoded is a saga record encoded for storage. Encode outside the write
// transaction (EncodeSaga) to keep the committer's work short.
type Encoded struct {
	ID     ulid.ULID
	status byte
	wake   int64
	value  []byte
}

// EncodeSaga encodes s for SagaPut.
func EncodeSaga(s *storage.Saga) (*Encoded, error) {
	code, ok := statusCodes[s.Status]
	if !ok {
		return nil, errors.Newf("storage: saga %s: unknown status %q", s.ID, s.Status)
	}
	var wake int64 // 0: none; a wake-up before 1970 is due, as 1 ns is
	if !s.WakeAt.IsZero() {
		wake = int64(max(stamp(s.WakeAt), 1))
	}
	buf := make([]byte, headerLen, 512)
	buf[0] = code
	binary.BigEndian.PutUint64(buf[1:], uint64(wake))
	return &Encoded{ID: s.ID, status: code, wake: wake, value: appendSaga(buf, s)}, nil
}

// DecodeSaga decodes a stored saga record: key is the saga's id, value the
// stored bytes. It fails with ErrCorrupt on anything malformed.
func DecodeSaga(key, value []byte) (*storage.Saga, error) { return decodeSaga(key, value) }

// EncodedLog is a log entry encoded for SagaPut.
type EncodedLog struct {
	value []byte // logHeaderLen bytes, filled in by SagaPut, then JSON
}

// EncodeLog encodes e for SagaPut.
func EncodeLog(e *storage.LogEntry) EncodedLog {
	return EncodedLog{value: appendLog(make([]byte, logHeaderLen, 192), e)}
}

func statusKey(code byte, id ulid.ULID) []byte {
	k := make([]byte, 17)
	k[0] = code
	copy(k[1:], id[:])
	return k
}

func dueKey(wake int64, id ulid.ULID) []byte {
	k := make([]byte, 24)
	binary.BigEndian.PutUint64(k, uint64(wake))
	copy(k[8:], id[:])
	return k
}
