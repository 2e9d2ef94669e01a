package engine

import (
	"testing"

	"go.opentelemetry.io/otel"
)

// TestUnsetGlobalProvider: the global provider of a program that set none
// is recognised, so the engine starts no span for it (see tracerFor); if
// OpenTelemetry renames its type, this fails and the engine falls back to
// non-recording spans.
func TestUnsetGlobalProvider(t *testing.T) {
	_, unset := tracerFor(nil)
	if unset == nil || unset != otel.GetTracerProvider() {
		t.Fatalf("the unset global provider (%T) is not recognised", otel.GetTracerProvider())
	}
}
