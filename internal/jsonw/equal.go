package jsonw

import (
	"bytes"
	"encoding/json"
	"reflect"
)

// Equal reports whether two JSON documents hold the same value: spacing and
// the order of object members do not matter, numbers compare as written
// (1.0 is not 1). An empty document is null; invalid JSON equals only the
// same bytes.
func Equal(a, b json.RawMessage) bool {
	if bytes.Equal(a, b) {
		return true
	}
	va, oka := decode(a)
	vb, okb := decode(b)
	return oka && okb && reflect.DeepEqual(va, vb)
}

func decode(raw json.RawMessage) (any, bool) {
	if len(raw) == 0 {
		return nil, true
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	return v, dec.Decode(&v) == nil
}
