// Package steps provides ready-made step functions for saga definitions:
// typed Go functions that decode the saga's input and encode their output
// (Typed), and, in later packages of this module, calls to remote
// participants over HTTP and AMQP.
//
// A step function here knows nothing about storage or scheduling; it only
// turns a saga.Call into a side effect and a JSON result.
package steps
