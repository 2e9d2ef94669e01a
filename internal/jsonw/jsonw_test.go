package jsonw_test

import (
	"encoding/json"
	"testing"

	"github.com/sagad/sagad/internal/jsonw"
)

func TestAppendString(t *testing.T) {
	for _, s := range []string{
		"", "plain", `quote " and \ backslash`, "tab\tnew\nline\rcr\b\f", "\x00\x1f control",
		"<html> & co", "é ü 日本", "\u2028\u2029 separators", "bad \xff utf-8 \xc3",
	} {
		want, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		if got := jsonw.AppendString([]byte("x"), s); string(got) != "x"+string(want) {
			t.Errorf("AppendString(%q) = %s, want %s", s, got[1:], want)
		}
	}
}

// FuzzAppendString checks that AppendString writes what encoding/json
// writes, for any string.
func FuzzAppendString(f *testing.F) {
	f.Add("a\"b\\c\n<>&\u2028\xff")
	f.Fuzz(func(t *testing.T, s string) {
		want, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		if got := jsonw.AppendString(nil, s); string(got) != string(want) {
			t.Fatalf("AppendString(%q) = %s, want %s", s, got, want)
		}
	})
}

func TestEqual(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{`{"a":1,"b":[1,2]}`, ` { "b" : [1, 2], "a": 1 } `, true},
		{`{"a":1}`, `{"a":1.0}`, false},
		{`{"a":1}`, `{"a":2}`, false},
		{``, `null`, true},
		{``, ``, true},
		{`{`, `{`, true},
		{`{`, `{ `, false},
		{`"x"`, `"y"`, false},
	} {
		if got := jsonw.Equal(json.RawMessage(tc.a), json.RawMessage(tc.b)); got != tc.want {
			t.Errorf("Equal(%q, %q) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
}
