package main

import (
	"context"
	"os"
	"strings"

	"github.com/cockroachdb/errors"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// newTracerProvider returns the OpenTelemetry tracer provider sagad serve
// traces sagas with, configured by the standard environment variables:
// nil (no tracing, nothing exported) unless OTEL_TRACES_EXPORTER is otlp
// or an OTLP endpoint is set (OTEL_EXPORTER_OTLP_ENDPOINT,
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT); OTEL_SDK_DISABLED=true or
// OTEL_TRACES_EXPORTER=none turn it off. Spans go out over OTLP/HTTP
// (protobuf), in batches (OTEL_BSP_*), sampled as OTEL_TRACES_SAMPLER
// says, from a resource named by OTEL_SERVICE_NAME (default "sagad") and
// OTEL_RESOURCE_ATTRIBUTES. The exporter reads its own variables
// (headers, timeout, compression, certificates).
func newTracerProvider(ctx context.Context) (*sdktrace.TracerProvider, error) {
	env := func(k string) string { return strings.TrimSpace(os.Getenv(k)) }
	if strings.EqualFold(env("OTEL_SDK_DISABLED"), "true") {
		return nil, nil
	}
	exporter := strings.ToLower(env("OTEL_TRACES_EXPORTER"))
	switch exporter {
	case "none":
		return nil, nil
	case "":
		if env("OTEL_EXPORTER_OTLP_ENDPOINT") == "" && env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") == "" {
			return nil, nil
		}
	case "otlp":
	default:
		return nil, errors.WithHint(errors.Newf("OTEL_TRACES_EXPORTER=%q: sagad exports traces over otlp only", exporter),
			"set OTEL_TRACES_EXPORTER=otlp (or none), and OTEL_EXPORTER_OTLP_ENDPOINT to the collector's OTLP/HTTP address")
	}
	protocol := env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
	if protocol == "" {
		protocol = env("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	if protocol != "" && protocol != "http/protobuf" {
		return nil, errors.WithHint(errors.Newf("OTEL_EXPORTER_OTLP_PROTOCOL=%q: sagad exports over http/protobuf only", protocol),
			"point OTEL_EXPORTER_OTLP_ENDPOINT at the collector's OTLP/HTTP port (4318) and unset the protocol")
	}
	exp, err := otlptracehttp.New(ctx)
	if err != nil {
		return nil, errors.Wrap(err, "opentelemetry: OTLP exporter")
	}
	// Later options win: OTEL_SERVICE_NAME over the default name.
	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", "sagad"), attribute.String("service.version", readVersion().Version)),
		resource.WithTelemetrySDK(), resource.WithHost(), resource.WithFromEnv())
	if err != nil {
		return nil, errors.Wrap(err, "opentelemetry: resource (OTEL_RESOURCE_ATTRIBUTES)")
	}
	return sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res)), nil
}

// otlpEndpoint is the OTLP endpoint the environment names, for the log.
func otlpEndpoint() string {
	if e := os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"); e != "" {
		return e
	}
	if e := os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT"); e != "" {
		return e
	}
	return "http://localhost:4318 (the default)"
}

// setGlobalTracing makes tp the global provider, with the W3C trace-context
// and baggage propagators, for the libraries sagad runs.
func setGlobalTracing(tp *sdktrace.TracerProvider) {
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
}
