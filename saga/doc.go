// Package saga defines sagas: named, ordered lists of steps, each with an
// action, an optional compensation, a retry policy, a per-attempt timeout, an
// optional fallback and an optional circuit breaker.
//
// A Definition is pure data plus the functions a step runs. It knows nothing
// about storage, scheduling or transports: the engine package runs
// definitions, the steps package provides ready-made step functions, and
// this package only describes and validates them.
//
// Steps return a permanent error (see Permanent) to say "do not retry";
// every other error, including a context deadline, is retried according to
// the step's RetryPolicy.
package saga
