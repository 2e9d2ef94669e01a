package storage

import (
	"encoding/base64"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"
)

// The hot path encodes a saga record and its log entries on every
// transition. These appenders write the same JSON that encoding/json would
// for the struct tags in records.go (encoding/json still decodes it, and
// FuzzEncodeSaga holds the two together) at a fraction of the cost of
// reflection.

func appendSaga(b []byte, s *Saga) []byte {
	b = append(b, '{')
	b = appendStr(b, "definition", s.Definition, false)
	b = appendStr(b, "fingerprint", s.Fingerprint, false)
	b = appendStr(b, "status", string(s.Status), false)
	if len(s.Input) > 0 {
		b = append(b, `,"input":`...)
		b = append(b, s.Input...)
	}
	if len(s.Data) > 0 {
		b = append(b, `,"data":{`...)
		keys := make([]string, 0, len(s.Data))
		for k := range s.Data {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for i, k := range keys {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, k)
			b = append(b, ':')
			if v := s.Data[k]; len(v) > 0 {
				b = append(b, v...)
			} else {
				b = append(b, "null"...)
			}
		}
		b = append(b, '}')
	}
	b = append(b, `,"steps":`...)
	if s.Steps == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		for i := range s.Steps {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendStep(b, &s.Steps[i])
		}
		b = append(b, ']')
	}
	b = appendStr(b, "idempotency_key", s.IdempotencyKey, true)
	b = appendStr(b, "error", s.Error, true)
	if len(s.ErrorEnc) > 0 {
		b = append(b, `,"error_enc":"`...)
		b = base64.StdEncoding.AppendEncode(b, s.ErrorEnc)
		b = append(b, '"')
	}
	b = appendTime(b, "created_at", s.CreatedAt, false)
	b = appendTime(b, "updated_at", s.UpdatedAt, false)
	b = appendTime(b, "deadline", s.Deadline, true)
	b = appendTime(b, "wake_at", s.WakeAt, true)
	b = appendStr(b, "parked", s.Parked, true)
	b = append(b, `,"log_seq":`...)
	b = strconv.AppendUint(b, uint64(s.LogSeq), 10)
	return append(b, '}')
}

func appendStep(b []byte, s *Step) []byte {
	b = append(b, '{')
	b = appendStr(b, "name", s.Name, false)
	b = appendStr(b, "status", string(s.Status), false)
	b = appendStr(b, "phase", string(s.Phase), true)
	if s.InFlight {
		b = append(b, `,"in_flight":true`...)
	}
	b = appendInt(b, "attempts", int64(s.Attempts))
	b = appendTime(b, "phase_started", s.PhaseStarted, true)
	b = appendInt(b, "action_attempts", int64(s.ActionAttempts))
	if s.FallbackUsed {
		b = append(b, `,"fallback_used":true`...)
	}
	b = appendStr(b, "error", s.Error, true)
	return append(b, '}')
}

func appendLog(b []byte, e *LogEntry) []byte {
	b = append(b, `{"seq":`...)
	b = strconv.AppendUint(b, uint64(e.Seq), 10)
	b = appendTime(b, "at", e.At, false)
	b = appendStr(b, "event", string(e.Event), false)
	b = appendStr(b, "step", e.Step, true)
	b = appendStr(b, "phase", string(e.Phase), true)
	b = appendInt(b, "attempt", int64(e.Attempt))
	b = appendStr(b, "status", string(e.Status), true)
	b = appendInt(b, "duration", int64(e.Duration))
	b = appendStr(b, "error", e.Error, true)
	b = appendTime(b, "next", e.Next, true)
	b = appendStr(b, "note", e.Note, true)
	return append(b, '}')
}

// appendStr appends ,"key":"value"; with omitEmpty an empty value is left
// out. The first field of an object follows '{' and gets no comma.
func appendStr(b []byte, key, v string, omitEmpty bool) []byte {
	if omitEmpty && v == "" {
		return b
	}
	b = appendKey(b, key)
	return appendString(b, v)
}

// appendInt appends ,"key":n, leaving out zero (omitempty).
func appendInt(b []byte, key string, n int64) []byte {
	if n == 0 {
		return b
	}
	b = appendKey(b, key)
	return strconv.AppendInt(b, n, 10)
}

func appendTime(b []byte, key string, t time.Time, omitZero bool) []byte {
	if omitZero && t.IsZero() {
		return b
	}
	b = appendKey(b, key)
	b = append(b, '"')
	b = t.AppendFormat(b, time.RFC3339Nano)
	return append(b, '"')
}

func appendKey(b []byte, key string) []byte {
	if len(b) > 0 && b[len(b)-1] != '{' {
		b = append(b, ',')
	}
	b = append(b, '"')
	b = append(b, key...)
	return append(b, '"', ':')
}

const hex = "0123456789abcdef"

// appendString appends s as a JSON string, escaping as encoding/json does
// (invalid UTF-8 becomes U+FFFD).
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
