// Package steps provides ready-made step functions for saga definitions:
// typed Go functions that decode the saga's input and encode their output
// (Typed), and a step that does nothing (Noop). Calls to remote
// participants over HTTP are in transport/httpstep.
//
// A step function here knows nothing about storage or scheduling; it only
// turns a saga.Call into a side effect and a JSON result.
package steps
