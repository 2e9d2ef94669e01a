package httpstep_test

import (
	"encoding/json"
	"testing"

	"github.com/cockroachdb/errors"

	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/transport/httpstep"
)

// FuzzParse checks that Parse never panics, that every error it returns is
// marked saga.ErrInvalidDefinition, and that every spec it accepts builds a
// valid definition and re-parses from its canonical JSON to the same
// version.
func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		exampleSpec,
		oneStep(""),
		oneStep(`"method": "PUT", "timeout": "1m30s", "headers": {"Authorization": "Bearer t", "X-A": "\u00e9"}`),
		oneStep(`"retry": {"max_attempts": -1, "initial_interval": "1ms", "max_interval": "1s", "multiplier": 1.5, "max_elapsed": "1h"}`),
		`{"steps": [
			{"name": "a", "action": {"url": "http://x/a"}, "compensation": {"url": "http://x/a/undo"}},
			{"name": "b", "action": {"url": "https://x:8443/b?q=1"}, "pivot": true, "circuit_breaker": {"name": "b", "half_open_requests": 2}},
			{"name": "c", "action": {"url": "http://x/c"}, "fallback": {"url": "http://y/c", "method": "DELETE"}}],
		 "timeout": "0s", "events": {}}`,
		`{"steps": [{"name": "a", "action": null}]}`,
		oneStep(`"timeout": 2`),
		oneStep(`"timeout": "2x"`),
		oneStep(`"headers": {"Idempotency-Key": "k"}`),
		oneStep("") + " x",
		`{"steps": [{"name": "a", "action": {"url": "http://x/a"}}], "steps": []}`,
		`[]`, `null`, ``, `{`, `{"steps": {}}`,
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, input string) {
		spec, err := httpstep.Parse("fuzz", []byte(input))
		if err != nil {
			if !errors.Is(err, saga.ErrInvalidDefinition) {
				t.Fatalf("error %q is not marked saga.ErrInvalidDefinition", err)
			}
			return
		}
		def, err := spec.Definition("fuzz", nil)
		if err != nil {
			t.Fatalf("accepted spec does not build: %v", err)
		}
		if err := def.Validate(); err != nil {
			t.Fatalf("accepted spec builds an invalid definition: %v", err)
		}
		canon, err := json.Marshal(spec)
		if err != nil {
			t.Fatalf("marshal accepted spec: %v", err)
		}
		again, err := httpstep.Parse("fuzz", canon)
		if err != nil {
			t.Fatalf("canonical JSON %s does not re-parse: %v", canon, err)
		}
		def2, err := again.Definition("fuzz", nil)
		if err != nil {
			t.Fatalf("re-parsed spec does not build: %v", err)
		}
		if def2.Version != def.Version {
			t.Fatalf("version %s after re-parsing %s, was %s", def2.Version, canon, def.Version)
		}
		if canon2, _ := json.Marshal(again); string(canon2) != string(canon) {
			t.Fatalf("canonical JSON changed on re-parse:\n%s\n%s", canon, canon2)
		}
	})
}
