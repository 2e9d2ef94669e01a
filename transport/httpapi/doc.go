// Package httpapi is the sagad daemon's HTTP API: declarative definitions,
// sagas (start, wait, inspect, list, log, abort, retry), the outbox, health,
// readiness and metrics. Every error is an RFC 9457 problem document
// (application/problem+json), unknown routes and methods included. The
// OpenAPI 3 document (GET /v1/openapi.json) describes every route.
//
// The wire types are those of package client. The package does not import
// Prometheus: the daemon passes its metrics handler in Config.
package httpapi
