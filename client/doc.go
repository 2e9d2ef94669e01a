// Package client is a Go client for the sagad daemon's HTTP API: register
// declarative definitions, start sagas and wait for them, inspect, list,
// abort and retry them, and look at the outbox. It depends on the standard
// library and cockroachdb/errors only, so programs that talk to a daemon do
// not pull in the engine.
//
// The types in this package are the API's wire format.
package client
